"""Shape inference and checking over the whole graph.

Expects: a graph from the front end (inputs typed, every other value untyped, attributes as
written). Guarantees: every value typed; every node's attributes resolved by its op's shape rule
(explicit per-axis ``pads``, ``stride``...); shape-only inputs (``crop(like=...)``) dropped;
``params`` lists each parameter's shape; every shape annotation verified. All errors in the graph
are reported together; a node whose inputs failed is skipped, so one mistake is reported once.
"""

from __future__ import annotations

from dataclasses import replace

from convdsl.diagnostics import DiagnosticSink
from convdsl.ir.graph import Expectation, Graph, Node, Param
from convdsl.ir.ops import OPS
from convdsl.ir.shape_rules import Inferred, ShapeError
from convdsl.ir.types import TensorType, format_shape


def infer_shapes(graph: Graph) -> Graph:
    sink = DiagnosticSink()
    types: dict[int, TensorType | None] = {v.id: v.type for v in graph.values.values()}
    nodes: list[Node] = []
    params: dict[str, Param] = {}
    for node in graph.nodes:
        in_types = [types[v] for v in node.inputs]
        if any(t is None for t in in_types):
            continue  # an input failed already; its error has been reported
        try:
            inferred = OPS[node.op].infer(node.attrs, in_types)
        except ShapeError as err:
            span = node.arg_spans.get(err.arg, node.span) if err.arg else node.span
            sink.error(f"{node.op}: {err.message}", span, err.hint)
            continue
        for value, out_type in zip(node.outputs, inferred.outputs, strict=True):
            types[value] = out_type
        nodes.append(_resolved(node, inferred))
        for spec in inferred.params:
            name = node.param(spec.role)
            dtype = in_types[0].dtype  # type: ignore[union-attr]
            params[name] = Param(name, spec.shape, dtype, spec.init, spec.fan_in, node.span)
    for expectation in graph.expectations:
        _check_expectation(expectation, types.get(expectation.value), sink)
    sink.raise_if_errors()
    values = {
        vid: replace(value, type=types[vid]) for vid, value in graph.values.items()
    }
    return replace(graph, values=values, nodes=tuple(nodes), params=params)


def _resolved(node: Node, inferred: Inferred) -> Node:
    inputs = node.inputs if inferred.keep_inputs is None else node.inputs[: inferred.keep_inputs]
    return replace(node, attrs=inferred.attrs, inputs=inputs)


def _check_expectation(
    expectation: Expectation, found: TensorType | None, sink: DiagnosticSink
) -> None:
    if found is None:
        return
    dims = expectation.dims
    matches = len(dims) == found.rank and all(
        want == "_" or want == got for want, got in zip(dims, found.shape, strict=True)
    )
    if not matches:
        sink.error(
            f"shape annotation does not hold: expected {format_shape(dims)}, found "
            f"{format_shape(found.shape)}",
            expectation.span,
        )

