"""Specialization: a network written for any input size, made concrete for one.

Expects: the untyped graph of the front end whose inputs have symbolic sizes (``H``, ``W``),
and a size for each name. Guarantees: the same graph with every input size and every
annotation's size expression replaced by its value, ready for the whole pipeline (shape
inference then checks it with ints, as for a network written with those sizes). The batch stays
symbolic. ``describe`` says which sizes a network accepts, from the constraints that shape
inference over symbolic sizes recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from convdsl.diagnostics import ConvdslError, Diagnostic, DiagnosticSink
from convdsl.ir import limits
from convdsl.ir.graph import Expectation, Graph, SizeConstraint
from convdsl.ir.symbolic import Cond, Domain, Expr, Ratio, decide, substitute
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


# ---- which sizes a network accepts -------------------------------------------------------------


def describe(graph: Graph) -> str:
    """The sizes the constraints allow, per size name: ``H >= 32 and H % 32 < 8``; conditions
    on several sizes at once are listed as they are."""
    parts: list[str] = []
    conds = [c.cond for c in graph.constraints]
    single = {name: [c for c in conds if c.symbols() == {name}] for name in graph.size_names()}
    for name, mine in single.items():
        if mine:
            parts.append(_describe_one(name, mine))
    parts += [str(c) for c in conds if len(c.symbols()) > 1]
    return ", ".join(p for p in parts if p)


def describe_cond(cond: Cond) -> str:
    """One condition in the words of ``describe`` (``H % 32 < 8``) when it is on one size."""
    names = cond.symbols()
    return _describe_one(next(iter(names)), [cond]) if len(names) == 1 else str(cond)


def essential(constraints: tuple[SizeConstraint, ...]) -> list[SizeConstraint]:
    """The constraints not implied by the others, in source order. The weakest (allowing the
    most sizes) go first, so ``H % 32 == 0`` stays rather than ``H % 32 < 8`` and ``H % 8 == 0``
    which together say the same; of equal ones the first (where the limit arises) stays."""
    kept = list(constraints)
    order = sorted(enumerate(constraints), key=lambda item: (-_share(item[1].cond), -item[0]))
    for _, constraint in order:
        others = [c.cond for c in kept if c is not constraint]
        if decide(constraint.cond, Domain(others)) is True:
            kept.remove(constraint)
    return kept


def _share(cond: Cond) -> float:
    """The fraction of sample sizes ``cond`` allows."""
    period = cond.diff.period() if isinstance(cond.diff, Expr) else 1
    sample = Domain().points(cond.symbols(), period)
    size = next(iter(sample.values())).size if sample else 1
    return float(np.mean(cond.holds(sample))) if size else 1.0


def _describe_one(name: str, conds: list[Cond]) -> str:
    """``H >= 32 and H % 32 < 8`` when the sizes allowed are a lower bound and a set of
    residues (what floors and strides make), else the conditions as they are."""
    period = math.lcm(1, *(c.diff.period() for c in conds if isinstance(c.diff, Expr)))
    sample = Domain().points(frozenset({name}), period)[name]
    allowed = Domain(list(conds)).points(frozenset({name}), period)[name]
    if allowed.size == 0:
        return f"no {name} ({' and '.join(str(c) for c in conds)})"
    lowest = int(allowed.min())
    large_start = int(sample.max()) - 2 * period + 1
    residues = sorted({int(v) % period for v in allowed if v >= large_start})
    small = sample[(sample >= lowest) & (sample < large_start)]
    predicted = np.isin(small % period, residues)
    if not residues or not np.array_equal(predicted, np.isin(small, allowed)):
        return " and ".join(str(c) for c in conds)
    first = next(v for v in range(1, period + 1) if v % period in residues)
    words = [f"{name} >= {lowest}"] if lowest > first else []
    return " and ".join(words + _residue_words(name, residues, period))


def _residue_words(name: str, residues: list[int], period: int) -> list[str]:
    if len(residues) == period:
        return []
    for step in sorted(d for d in range(2, period + 1) if period % d == 0):
        first = residues[0]
        if residues == list(range(first, period, step)) and first < step:
            return [f"{name} % {step} == {first}"] if first else [f"{name} % {step} == 0"]
    if residues == list(range(residues[0], residues[-1] + 1)):
        if residues[0] == 0:
            return [f"{name} % {period} < {residues[-1] + 1}"]
        return [f"{residues[0]} <= {name} % {period} <= {residues[-1]}"]
    listed = ", ".join(str(r) for r in residues)
    return [f"{name} % {period} in {{{listed}}}"]
