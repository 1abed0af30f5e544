"""The IR's text form, as printed by ``convdsl ir``.

One line per value::

    %image: f32[N,3,224,224] = input                                   # fcn.conv:3
    %c1: f32[N,64,224,224] = conv2d(%image) kernel=[3,3] pads=[[1,1],[1,1]] ...  # fcn.conv:5

Parameters are listed after the layers, outputs last.
"""

from __future__ import annotations

from typing import Any

from convdsl.ir.graph import Graph, Node
from convdsl.ir.types import format_shape


def print_graph(graph: Graph, show_locations: bool = True) -> str:
    lines = [f"network {graph.name}"]
    for value_id in graph.inputs:
        value = graph.values[value_id]
        lines.append(
            _with_location(f"  %{value.name}: {value.type} = input", value.span, show_locations)
        )
    for node in graph.nodes:
        lines.append(_with_location("  " + format_node(graph, node), node.span, show_locations))
    if graph.params:
        lines.append("params")
        for param in graph.params.values():
            lines.append(
                f"  {param.name}: {param.dtype.value}{format_shape(param.shape)} init={param.init}"
            )
    lines.append("outputs")
    for name, value_id in graph.outputs:
        lines.append(f"  {name} = %{graph.values[value_id].name}")
    return "\n".join(lines) + "\n"


def format_node(graph: Graph, node: Node) -> str:
    outs = ", ".join(
        f"%{graph.values[v].name}" + (f": {graph.values[v].type}" if graph.values[v].type else "")
        for v in node.outputs
    )
    ins = ", ".join(f"%{graph.values[v].name}" for v in node.inputs)
    attrs = " ".join(f"{key}={format_attr(value)}" for key, value in node.attrs.items())
    return f"{outs} = {node.op}({ins})" + (f" {attrs}" if attrs else "")


def format_attr(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(format_attr(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value)


def _with_location(text: str, span: Any, show: bool) -> str:
    if not show or span is None:
        return text
    return f"{text:<72}  # {span.source.name}:{span.line}"
