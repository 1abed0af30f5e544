"""The IR's text form, as printed by ``convdsl ir``.

One line per value::

    %image: f32[N,3,224,224] = input                                   # fcn.conv:3
    %c1: f32[N,64,224,224] = conv2d(%image) kernel=[3,3] pads=[[1,1],[1,1]] ...  # fcn.conv:5

A fused kernel prints its parts indented under it. A parameter a pass rewired (``weight=...``)
is shown on its node; derived parameters are listed with their recipe after the declared ones.
"""

from __future__ import annotations

from typing import Any

from convdsl.diagnostics import Span
from convdsl.ir.graph import Graph, Node
from convdsl.ir.types import format_shape


def print_graph(graph: Graph, show_locations: bool = True) -> str:
    lines = [f"network {graph.name}"]
    for value_id in graph.inputs:
        value = graph.values[value_id]
        declared = graph.channels_last_inputs.get(value_id)
        layout = f" {declared.word}" if declared is not None else ""
        text = f"  %{value.name}: {value.type} = input{layout}"
        lines.append(_with_location(text, value.span, show_locations))
    for node in graph.nodes:
        lines.append(_with_location("  " + format_node(graph, node), node.span, show_locations))
        for part in node.parts:
            lines.append(
                _with_location("      " + format_node(graph, part), part.span, show_locations)
            )
    if graph.params:
        lines.append("params")
        for param in graph.params.values():
            lines.append(
                f"  {param.name}: {param.dtype.value}{format_shape(param.shape)} init={param.init}"
            )
    if graph.derived:
        lines.append("derived")
        for derived in graph.derived.values():
            lines.append(
                f"  {derived.name}: {derived.dtype.value}{format_shape(derived.shape)} = "
                f"{derived.recipe}({', '.join(derived.sources)})"
            )
    lines.append("outputs")
    for name, value_id in graph.outputs:
        declared = graph.channels_last_outputs.get(name)
        layout = f" {declared.word}" if declared is not None else ""
        lines.append(f"  {name} = %{graph.values[value_id].name}{layout}")
    return "\n".join(lines) + "\n"


def format_node(graph: Graph, node: Node) -> str:
    outs = ", ".join(
        f"%{graph.values[v].name}" + (f": {graph.values[v].type}" if graph.values[v].type else "")
        for v in node.outputs
    )
    ins = ", ".join(f"%{graph.values[v].name}" for v in node.inputs)
    attrs = [f"{key}={format_attr(value)}" for key, value in node.attrs.items()]
    attrs += [
        f"param.{role}={name}"
        for role, name in node.params.items()
        if name != f"{node.name}.{role}"  # only what a pass rewired; the rest is implied
    ]
    if node.is_fused:
        attrs.insert(0, f"parts={len(node.parts)}")
    return f"{outs} = {node.op}({ins})" + (" " + " ".join(attrs) if attrs else "")


def format_attr(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(format_attr(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value)


def _with_location(text: str, span: Span | None, show: bool) -> str:
    if not show or span is None:
        return text
    return f"{text:<72}  # {span.source.name}:{span.line}"
