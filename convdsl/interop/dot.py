"""A graph as Graphviz DOT text: the picture ``convdsl graph`` draws.

One box per layer (op, name, output shape, source line), an ellipse per input and a double
octagon per output, edges labeled with the shape of the value they carry, and each fused
kernel (``-O2``) a cluster around its parts. Only text is written: no Graphviz needed to make
it, ``dot -Tsvg net.dot -o net.svg`` to draw it.

>>> from convdsl.passes.pipeline import compile_source           # doctest: +SKIP
>>> print(to_dot(compile_source(source, opt_level=2)))           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator

from convdsl.ir.boundary import caller_order
from convdsl.ir.graph import Graph, Node


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def layers(graph: Graph) -> list[Node]:
    """Every layer drawn: the nodes, and the parts of each fused kernel in their place."""
    return [part for node in graph.nodes for part in (node.parts if node.is_fused else (node,))]


def to_dot(graph: Graph) -> str:
    """``graph`` (typed) as a ``digraph`` in DOT."""
    ids = {id(node): f"n{i}" for i, node in enumerate(layers(graph))}
    producer: dict[int, str] = {v: f"in{i}" for i, v in enumerate(graph.inputs)}
    for node in layers(graph):
        for value in node.outputs:
            producer[value] = ids[id(node)]
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=TB;",
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']  # fmt: skip
    for i, value in enumerate(graph.inputs):
        shape = caller_order(graph.type_of(value).shape, value in graph.channels_last_inputs)
        label = f"input {graph.values[value].name}\n{_shape(shape)}"
        lines.append(f"  in{i} [shape=ellipse, style=filled, fillcolor=lightblue, "
                     f"label={_quote(label)}];")  # fmt: skip
    kernel = 0
    for node in graph.nodes:
        if node.is_fused:
            lines.append(f"  subgraph cluster_{kernel} {{")
            lines.append(f"    label={_quote(f'fused kernel {node.name}')}; style=dashed;")
            lines += [f"  {line}" for part in node.parts for line in _box(graph, part, ids)]
            lines.append("  }")
            kernel += 1
        else:
            lines += _box(graph, node, ids)
    for node in layers(graph):
        for value in node.inputs:
            if value in producer:
                lines.append(_edge(graph, producer[value], ids[id(node)], value))
    for i, (name, value) in enumerate(graph.outputs):
        last = name in graph.channels_last_outputs
        label = f"output {name}\n{_shape(caller_order(graph.type_of(value).shape, last))}"
        lines.append(f"  out{i} [shape=doubleoctagon, style=filled, fillcolor=palegreen, "
                     f"label={_quote(label)}];")  # fmt: skip
        if value in producer:
            lines.append(_edge(graph, producer[value], f"out{i}", value))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _box(graph: Graph, node: Node, ids: dict[int, str]) -> Iterator[str]:
    shapes = [_value_shape(graph, v) for v in node.outputs]
    label = f"{node.op} {node.name}\n{' '.join(shapes)}\nline {node.span.line}"
    yield f"  {ids[id(node)]} [shape=box, label={_quote(label)}];"


def _edge(graph: Graph, tail: str, head: str, value: int) -> str:
    return f"  {tail} -> {head} [label={_quote(_value_shape(graph, value))}];"


def _value_shape(graph: Graph, value: int) -> str:
    held = graph.values.get(value)
    return "?" if held is None or held.type is None else _shape(held.type.shape)


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
