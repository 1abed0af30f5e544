"""Structural invariants of a graph; a violation is a compiler bug, never a user error.

Checked: every op is in the op table; values are written exactly once, by a node or as a graph
input; nodes read only values written earlier (the node list is a schedule); outputs name
existing values; and once any value is typed, all are, with every parameter a node needs declared.
"""

from __future__ import annotations

from collections.abc import Iterator

from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Graph
from convdsl.ir.ops import OPS


def verify(graph: Graph, after_pass: str = "the front end") -> None:
    """Raise ``InternalError`` naming ``after_pass`` if ``graph`` breaks an invariant."""
    problems = list(_problems(graph))
    if problems:
        raise InternalError(f"the IR is invalid after {after_pass}: " + "; ".join(problems[:5]))


def _problems(graph: Graph) -> Iterator[str]:
    written: set[int] = set()
    for value in graph.inputs:
        if value not in graph.values:
            yield f"graph input %{value} is not a value"
        written.add(value)
    typed = any(v.type is not None for v in graph.values.values())
    for node in graph.nodes:
        if node.op not in OPS:
            yield f"node {node.name} has unknown op {node.op}"
        for value in node.inputs:
            if value not in written:
                yield f"node {node.name} reads %{value} before it is written"
        for value in node.outputs:
            if value in written:
                yield f"value %{value} is written twice (again by {node.name})"
            if value not in graph.values:
                yield f"node {node.name} writes unknown value %{value}"
            written.add(value)
    for name, value in graph.outputs:
        if value not in written:
            yield f"output {name} reads unwritten value %{value}"
    if typed:
        for info in graph.values.values():
            if info.type is None and info.id in written:
                yield f"value %{info.name} is untyped in a typed graph"
        owners = {node.name for node in graph.nodes}
        for param in graph.params.values():
            if param.name.rsplit(".", 1)[0] not in owners:
                yield f"parameter {param.name} belongs to no node"
