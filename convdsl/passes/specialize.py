"""Specialization: a network written for any input size, made concrete for one.

Expects: the untyped graph of the front end whose inputs have symbolic sizes (``H``, ``W``),
and a size for each name. Guarantees: the same graph with every input size and every
annotation's size expression replaced by its value, ready for the whole pipeline (shape
inference then checks it with ints, as for a network written with those sizes). The batch stays
symbolic. ``explain`` words an error at those sizes with the constraints shape inference over
symbolic sizes recorded (``convdsl.ir.constraints``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from convdsl.diagnostics import ConvdslError, Diagnostic, DiagnosticSink
from convdsl.ir import limits
from convdsl.ir.constraints import describe, describe_cond
from convdsl.ir.graph import Expectation, Graph, SizeConstraint
from convdsl.ir.symbolic import Expr, Ratio, substitute
from convdsl.ir.types import Dim, TensorType


def specialize(untyped: Graph, sizes: Mapping[str, int]) -> Graph:
    """``untyped`` with the input sizes bound to ``sizes`` (which must name every one)."""
    values = dict(untyped.values)
    for v in untyped.inputs:
        declared = values[v].type
        assert declared is not None
        shape = tuple(_bind(d, sizes) for d in declared.shape)
        values[v] = replace(values[v], type=TensorType(shape, declared.dtype))
    expectations = tuple(
        Expectation(e.value, tuple(_bind_annotation(d, sizes) for d in e.dims), e.span,
                    e.call_sites)
        for e in untyped.expectations
    )  # fmt: skip
    return replace(untyped, values=values, expectations=expectations)


def _bind(dim: Dim, sizes: Mapping[str, int]) -> Dim:
    return substitute(dim, sizes) if isinstance(dim, Expr) else dim


def _bind_annotation(dim: Dim | Ratio, sizes: Mapping[str, int]) -> Dim | Ratio:
    return dim.substitute(sizes) if isinstance(dim, Ratio) else _bind(dim, sizes)


def check_sizes(names: list[str], sizes: Mapping[str, int]) -> None:
    """Every size name bound to an integer from 1 to ``limits.MAX_EXTENT``."""
    sink = DiagnosticSink()
    if not names and sizes:
        sink.error("the network has no input sizes to set: its inputs have fixed shapes")
        sink.raise_if_errors()
    for name in names:
        if name not in sizes:
            sink.error(f"size {name} is not given", hint=f"give it, e.g. --shape {name}=224")
    for name, value in sizes.items():
        if name not in names:
            known = ", ".join(names) or "none"
            sink.error(f"unknown size '{name}': the network's input sizes are {known}")
        elif isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            sink.error(f"size {name} must be a positive integer, found {value!r}")
        elif (problem := limits.size_problem(f"size {name}", int(value))) is not None:
            sink.error(problem, hint=limits.HINT)
    sink.raise_if_errors()


def explain(err: ConvdslError, graph: Graph, sizes: Mapping[str, int]) -> ConvdslError:
    """``err`` from checking the network specialized to ``sizes``, each message saying the
    sizes and, where a recorded constraint of that layer fails, the constraint."""
    bound = ", ".join(f"{name}={value}" for name, value in sizes.items())
    diagnostics = []
    for diag in err.diagnostics:
        broken = [c for c in graph.constraints if _same_place(c, diag) and not _holds(c, sizes)]
        hint = diag.hint
        if broken:
            needs = " and ".join(describe_cond(c.cond) for c in broken)
            accepted = describe(graph)
            hint = f"this layer needs {needs}" + (f"; the network accepts {accepted}"
                                                   if accepted else "")  # fmt: skip
        diagnostics.append(replace(diag, message=f"with {bound}: {diag.message}", hint=hint))
    return ConvdslError(diagnostics)


def _same_place(constraint: SizeConstraint, diag: Diagnostic) -> bool:
    span = diag.span
    return span is not None and constraint.span.line <= span.line <= constraint.span.end_line


def _holds(constraint: SizeConstraint, sizes: Mapping[str, int]) -> bool:
    return bool(constraint.cond.holds(dict(sizes)))
