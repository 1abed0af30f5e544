"""Shape inference and checking over the whole graph.

Expects: a graph from the front end (inputs typed, every other value untyped, attributes as
written). Guarantees: every value typed; every node's attributes resolved by its op's shape rule
(explicit per-axis ``pads``, ``stride``...); shape-only inputs (``crop(like=...)``) dropped;
``params`` lists each parameter's shape; every shape annotation verified. All errors in the graph
are reported together; a node whose inputs failed is skipped, so one mistake is reported once.

Symbolic sizes (an input ``f32[N, 3, H, W]``): the rules compute with size expressions
(``convdsl.ir.symbolic``). A rule's test that holds for some sizes and not others (``out < 1``,
two branches' shapes equal) takes the branch that succeeds, and the condition for that branch
becomes one of the graph's ``constraints``, with the layer's span; a rule that fails on every
branch is an error for every size. The limits of ``convdsl.ir.limits`` that depend on sizes are
checked when the graph is specialized.
"""

from __future__ import annotations

from dataclasses import replace

from convdsl.diagnostics import Diagnostic, DiagnosticSink, Span, call_notes
from convdsl.ir import limits
from convdsl.ir.boundary import output_layout_problems
from convdsl.ir.graph import Attrs, CallSite, Expectation, Graph, Node, Param, SizeConstraint
from convdsl.ir.ops import OPS
from convdsl.ir.shape_rules import Inferred, ShapeError, check_limits
from convdsl.ir.symbolic import Assumptions, Cond, Domain, Ratio, SymbolicError, assuming
from convdsl.ir.types import AXIS_NAMES, Dim, TensorType, format_shape


def infer_shapes(graph: Graph) -> Graph:
    sink = DiagnosticSink()
    types: dict[int, TensorType | None] = {v.id: v.type for v in graph.values.values()}
    nodes: list[Node] = []
    params: dict[str, Param] = {}
    held: list[tuple[Node, int]] = []  # each layer's arrays: elements of one batch entry
    domain = Domain()
    constraints: list[SizeConstraint] = []
    for node in graph.nodes:
        known = [types[v] for v in node.inputs]
        in_types = [t for t in known if t is not None]
        if len(in_types) < len(known):
            continue  # an input failed already; its error has been reported
        try:
            inferred, needs = _infer(node, in_types, domain)
        except ShapeError as err:
            sink.diagnostics.append(_diagnostic(node, err))
            continue
        if needs:
            found = _record(needs, node.op, node.span, node.call_sites, domain, constraints)
            if found is not None:
                sink.diagnostics.append(found)
                continue
        if not any(t.is_symbolic for t in (*in_types, *inferred.outputs)):
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
        _check_expectation(expectation, types.get(expectation.value), sink, domain, constraints)
    sink.diagnostics.extend(output_layout_problems(graph, types))
    sink.raise_if_errors()
    values = {vid: replace(value, type=types[vid]) for vid, value in graph.values.items()}
    written = graph if graph.is_symbolic else None
    return replace(
        graph,
        values=values,
        nodes=tuple(nodes),
        params=params,
        constraints=tuple(constraints),
        written=written,
    )


MAX_BRANCHES = 64
"""Branch combinations tried per layer before its first error is reported."""


def _infer(node: Node, in_types: list[TensorType], domain: Domain) -> tuple[Inferred, list[Cond]]:
    """The layer's rule, and the conditions on the sizes its result needs (none when every
    size is fixed). Undecided conditions are tried False first, then True (backtracking)."""
    choices: list[bool] = []
    first_error: ShapeError | None = None
    for _ in range(MAX_BRANCHES):
        # Decided over all sizes, not only those earlier layers allow: each layer's condition
        # is recorded in its own terms (``specialize.essential`` drops the implied ones).
        assumptions = Assumptions(Domain(), choices)
        try:
            with assuming(assumptions):
                inferred = OPS[node.op].infer(node.attrs, in_types)
                if not any(t.is_symbolic for t in (*in_types, *inferred.outputs)):
                    check_limits(inferred, in_types)
            return inferred, assumptions.constraints()
        except SymbolicError as err:
            raise ShapeError(
                f"this layer's output size cannot be written in terms of the input sizes ({err})",
                hint="give the input fixed sizes, or check one size with --shape",
            ) from None
        except ShapeError as err:
            first_error = first_error or err
            made = [value for _, value in assumptions.made]
            while made and made[-1]:
                made.pop()
            if not made:
                break
            choices = [*made[:-1], True]
    assert first_error is not None
    raise first_error


def _record(
    needs: list[Cond],
    what: str,
    span: Span,
    call_sites: tuple[CallSite, ...],
    domain: Domain,
    constraints: list[SizeConstraint],
) -> Diagnostic | None:
    """Add a layer's conditions to the constraints; an error when no size is left."""
    for cond in needs:
        constraints.append(SizeConstraint(cond, what, span, call_sites))
        domain.constraints.append(cond)
    if not any(domain.empty(cond.symbols()) for cond in needs):
        return None
    return Diagnostic(
        f"{what}: no input size satisfies every constraint: this needs "
        f"{' and '.join(str(c) for c in needs)}, which no size allowed by the layers before "
        "it meets",
        span,
        notes=call_notes((site.block, site.span) for site in call_sites),
    )


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
    expectation: Expectation,
    found: TensorType | None,
    sink: DiagnosticSink,
    domain: Domain,
    constraints: list[SizeConstraint],
) -> None:
    if found is None:
        return
    dims = expectation.dims
    notes = call_notes((site.block, site.span) for site in expectation.call_sites)
    needs: list[Cond] = []
    matches = len(dims) == found.rank
    if matches:
        assumptions = Assumptions(Domain(), [True] * len(dims))
        with assuming(assumptions):
            matches = all(
                _dim_matches(want, got) for want, got in zip(dims, found.shape, strict=True)
            )
        needs = assumptions.constraints()
    if not matches:
        sink.diagnostics.append(
            Diagnostic(
                f"shape annotation does not hold: expected {format_shape(dims)}, found "
                f"{format_shape(found.shape)}",
                expectation.span,
                hint=_differences(dims, found),
                notes=notes,
            )
        )
    elif needs:
        problem = _record(
            needs, "shape annotation", expectation.span, expectation.call_sites, domain, constraints
        )
        if problem is not None:
            sink.diagnostics.append(problem)


def _dim_matches(want: Dim | Ratio, got: Dim) -> bool:
    if isinstance(want, Ratio):
        return not isinstance(got, str) and bool(want.matches(got))
    if want == "_":
        return True
    if isinstance(want, str) or isinstance(got, str):
        return want == got
    return bool(want == got)


def _differences(dims: tuple[Dim | Ratio, ...], found: TensorType) -> str | None:
    """'H is 14, not 16; W is 14, not 16' for an annotation of the right rank."""
    if len(dims) != found.rank:
        return f"the value has {found.rank} dims, the annotation {len(dims)}"
    names = ("batch", "channels", *AXIS_NAMES.get(found.spatial_rank, ()))
    wrong = [
        f"{names[axis] if axis < len(names) else f'dim {axis}'} is {got}, not {want}"
        for axis, (want, got) in enumerate(zip(dims, found.shape, strict=True))
        if not _dim_matches(want, got)
    ]
    return "; ".join(wrong)
