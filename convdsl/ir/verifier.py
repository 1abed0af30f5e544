"""Structural invariants of a graph; a violation is a compiler bug, never a user error.

Checked: every op is in the op table (or is a fused kernel whose parts are, or a ``relayout``
that only changes how its input is stored); values are written
exactly once, by a node or as a graph input; nodes read only values written earlier (the node
list is a schedule); a fused kernel's parts read only its inputs and earlier parts, and only its
output escapes it; outputs name existing values; once any value is typed, all written values
are, and every parameter a node reads is declared or derived (from parameters that exist).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from convdsl.diagnostics import InternalError
from convdsl.ir.graph import RELAYOUT, Graph, Node
from convdsl.ir.ops import OPS


def verify(graph: Graph, after_pass: str = "the front end") -> None:
    """Raise ``InternalError`` naming ``after_pass`` if ``graph`` breaks an invariant."""
    problems = list(_problems(graph))
    if not problems and graph.memory is not None:
        from convdsl.passes.memory import plan_problems  # the plan's rules live with its pass

        problems = [f"memory plan: {problem}" for problem in plan_problems(graph)]
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
        yield from _node_problems(node)
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
        yield from _typed_problems(graph, written)


def _node_problems(node: Node) -> Iterator[str]:
    if not node.is_fused:
        if node.op not in OPS and node.op != RELAYOUT:
            yield f"node {node.name} has unknown op {node.op}"
        if node.parts:
            yield f"node {node.name} ({node.op}) has parts but is not fused"
        return
    if not node.parts:
        yield f"fused kernel {node.name} has no parts"
    available = set(node.inputs)
    for part in node.parts:
        if part.is_fused or part.op not in OPS:
            yield f"fused kernel {node.name} has an invalid part {part.name} ({part.op})"
        for value in part.inputs:
            if value not in available:
                yield f"part {part.name} of {node.name} reads %{value}, not an input of the kernel"
        available.update(part.outputs)
    if len(node.outputs) != 1 or node.outputs[0] != node.parts[-1].output:
        yield f"fused kernel {node.name} must output its last part's value"


def _typed_problems(graph: Graph, written: set[int]) -> Iterator[str]:
    internal = {p.output for n in graph.nodes if n.is_fused for p in n.parts} - {
        n.output for n in graph.nodes
    }
    for info in graph.values.values():
        if info.type is None and (info.id in written or info.id in internal):
            yield f"value %{info.name} is untyped in a typed graph"
    known = set(graph.params)
    for derived in graph.derived.values():
        for source in derived.sources:
            if source not in known:
                yield f"derived parameter {derived.name} reads unknown {source}"
        known.add(derived.name)
    for node in graph.nodes:
        for part in node.parts or (node,):
            for role, name in part.params.items():
                if name not in known:
                    yield f"node {part.name} reads unknown parameter {name} as {role}"
    for node in graph.nodes:
        if node.op == RELAYOUT:
            given, stored = graph.type_of(node.inputs[0]), graph.type_of(node.output)
            if stored.layout == given.layout or replace(stored, layout=given.layout) != given:
                yield f"relayout {node.name} changes more than the layout: {given} -> {stored}"
    reads_outside = {v for n in graph.nodes for v in n.inputs} | {v for _, v in graph.outputs}
    for node in graph.nodes:
        for part in node.parts[:-1]:
            if part.output in reads_outside:
                yield f"value %{part.output} escapes fused kernel {node.name}"
