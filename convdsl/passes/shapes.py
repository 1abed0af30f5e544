"""Shape inference and checking over the whole graph.

Expects: a graph from the front end (inputs typed, every other value untyped, attributes as
written). Guarantees: every value typed; every node's attributes resolved by its op's shape rule
(explicit per-axis ``pads``, ``stride``...); shape-only inputs (``crop(like=...)``) dropped;
``params`` lists each parameter's shape; every shape annotation verified. All errors in the graph
are reported together; a node whose inputs failed is skipped, so one mistake is reported once.
"""

from __future__ import annotations

from dataclasses import replace

from convdsl.diagnostics import Diagnostic, DiagnosticSink, Span, call_notes
from convdsl.ir import limits
from convdsl.ir.graph import Attrs, Expectation, Graph, Node, Param
from convdsl.ir.ops import OPS
from convdsl.ir.shape_rules import Inferred, ShapeError, check_limits
from convdsl.ir.types import AXIS_NAMES, Dim, TensorType, format_shape


def infer_shapes(graph: Graph) -> Graph:
    sink = DiagnosticSink()
    types: dict[int, TensorType | None] = {v.id: v.type for v in graph.values.values()}
    nodes: list[Node] = []
    params: dict[str, Param] = {}
    held: list[tuple[Node, int]] = []  # each layer's arrays: elements of one batch entry
    for node in graph.nodes:
        known = [types[v] for v in node.inputs]
        in_types = [t for t in known if t is not None]
        if len(in_types) < len(known):
            continue  # an input failed already; its error has been reported
        try:
            inferred = OPS[node.op].infer(node.attrs, in_types)
            check_limits(inferred, in_types)
        except ShapeError as err:
            sink.diagnostics.append(_diagnostic(node, err))
            continue
        held.append((node, limits.entry_elements(inferred.attrs, in_types, inferred.outputs)))
        for value, out_type in zip(node.outputs, inferred.outputs, strict=True):
            types[value] = out_type
        resolved = _resolved(node, inferred)
        nodes.append(resolved)
        for spec in inferred.params:
            name = resolved.param(spec.role)
            dtype = in_types[0].dtype
            params[name] = Param(name, spec.shape, dtype, spec.init, spec.fan_in, node.span)
    _check_network_size([graph.type_of(v) for v in graph.inputs], held, sink)
    for expectation in graph.expectations:
        _check_expectation(expectation, types.get(expectation.value), sink)
    sink.raise_if_errors()
    values = {vid: replace(value, type=types[vid]) for vid, value in graph.values.items()}
    return replace(graph, values=values, nodes=tuple(nodes), params=params)


def _check_network_size(
    inputs: list[TensorType], held: list[tuple[Node, int]], sink: DiagnosticSink
) -> None:
    """Report the layer at which one batch entry's arrays pass ``limits.MAX_NETWORK_ELEMENTS``."""
    total = sum(t.stored_elements for t in inputs)
    for node, elements in held:
        total += elements
        problem = limits.network_problem(total)
        if problem is not None:
            notes = call_notes((site.block, site.span) for site in node.call_sites)
            sink.diagnostics.append(
                Diagnostic(f"{node.op}: {problem}", node.span, hint=limits.HINT, notes=notes)
            )
            return


def _diagnostic(node: Node, err: ShapeError) -> Diagnostic:
    """The error at the argument it is about, in the words the user wrote the operands in."""
    span = node.arg_spans.get(err.arg, node.span) if err.arg else node.span
    hint = err.hint
    if hint is not None:
        for arg in ("x", "y"):
            hint = hint.replace("{" + arg + "}", _source_text(node.arg_spans.get(arg)) or arg)
    return Diagnostic(
        f"{node.op}: {err.message}",
        span,
        hint=hint,
        notes=call_notes((site.block, site.span) for site in node.call_sites),
    )


def _source_text(span: Span | None) -> str | None:
    if span is None or span.end_line != span.line:
        return None
    return span.source.line(span.line)[span.column - 1 : span.end_column - 1] or None


def _resolved(node: Node, inferred: Inferred) -> Node:
    inputs = node.inputs if inferred.keep_inputs is None else node.inputs[: inferred.keep_inputs]
    params = Attrs({spec.role: f"{node.name}.{spec.role}" for spec in inferred.params})
    return replace(node, attrs=inferred.attrs, inputs=inputs, params=params)


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
        sink.diagnostics.append(
            Diagnostic(
                f"shape annotation does not hold: expected {format_shape(dims)}, found "
                f"{format_shape(found.shape)}",
                expectation.span,
                hint=_differences(dims, found),
                notes=call_notes((site.block, site.span) for site in expectation.call_sites),
            )
        )


def _differences(dims: tuple[Dim, ...], found: TensorType) -> str | None:
    """'H is 14, not 16; W is 14, not 16' for an annotation of the right rank."""
    if len(dims) != found.rank:
        return f"the value has {found.rank} dims, the annotation {len(dims)}"
    names = ("batch", "channels", *AXIS_NAMES.get(found.spatial_rank, ()))
    wrong = [
        f"{names[axis] if axis < len(names) else f'dim {axis}'} is {got}, not {want}"
        for axis, (want, got) in enumerate(zip(dims, found.shape, strict=True))
        if want != "_" and want != got
    ]
    return "; ".join(wrong)
