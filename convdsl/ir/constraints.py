"""Which input sizes a network written for any size accepts, in words.

Shape inference over symbolic sizes records, per layer, the conditions its result needs
(``Graph.constraints``). Here they become what ``check`` prints: per size name a lower bound and
a set of residues (``H >= 32 and H % 32 < 8``: what floors, strides and crops make), and the
few constraints that decide it (``essential``: the others are implied). Each single-size
condition is evaluated at every size up to ``DENSE`` and over two periods at ``LARGE``, as a
boolean vector; conditions on several sizes are shown as written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from convdsl.ir.graph import Graph, SizeConstraint
from convdsl.ir.symbolic import Cond, Domain, Expr, decide

DENSE = 2**16
"""Every size up to this one is looked at (a sample of 65536 is a few milliseconds)."""
LARGE = 2**24
MAX_PERIOD = 4096


def describe(graph: Graph) -> str:
    """The sizes the constraints allow, per size name: ``H >= 32 and H % 32 < 8``; conditions
    on several sizes at once follow as they are written."""
    conds = [c.cond for c in graph.constraints]
    parts = []
    for name in graph.size_names():
        mine = [c for c in conds if c.symbols() == {name}]
        if mine:
            parts.append(_describe_one(name, mine))
    parts += [str(c) for c in conds if len(c.symbols()) > 1]
    return ", ".join(parts)


def describe_cond(cond: Cond) -> str:
    """One condition in the words of ``describe`` (``H % 32 < 8``) when it is on one size."""
    names = cond.symbols()
    return _describe_one(next(iter(names)), [cond]) if len(names) == 1 else str(cond)


def essential(constraints: Sequence[SizeConstraint]) -> list[SizeConstraint]:
    """The constraints not implied by the others, in source order. The weakest (allowing the
    most sizes) go first, so ``H % 32 == 0`` stays rather than ``H % 32 < 8`` and ``H % 8 == 0``
    which together say the same; of equal ones the first (where the limit arises) stays."""
    kept = list(constraints)
    names = {name for c in constraints if len(c.cond.symbols()) == 1 for name in c.cond.symbols()}
    for name in sorted(names):
        mine = [c for c in constraints if c.cond.symbols() == {name}]
        sizes = _sample(_period([c.cond for c in mine]))
        holds = [np.asarray(c.cond.holds({name: sizes}), dtype=bool) for c in mine]
        fails = np.sum([~h for h in holds], axis=0)
        order = sorted(range(len(mine)), key=lambda i: (-holds[i].mean(), -i))
        for i in order:
            if not np.any((fails == 1) & ~holds[i]):  # the others hold only where it does
                kept.remove(mine[i])
                fails -= ~holds[i]
    multi = [c for c in kept if len(c.cond.symbols()) > 1]
    for constraint in multi:  # conditions on several sizes: by the sampler of the checker
        others = [c.cond for c in kept if c is not constraint]
        if decide(constraint.cond, Domain(others)) is True:
            kept.remove(constraint)
    return kept


def _period(conds: Sequence[Cond]) -> int:
    period = math.lcm(1, *(c.diff.period() for c in conds if isinstance(c.diff, Expr)))
    return min(period, MAX_PERIOD)


def _sample(period: int) -> np.ndarray:
    base = LARGE // period * period
    return np.concatenate(
        [
            np.arange(1, DENSE + 1, dtype=np.int64),
            np.arange(base, base + 2 * period, dtype=np.int64),
        ]
    )


def _describe_one(name: str, conds: list[Cond]) -> str:
    """``H >= 32 and H % 32 < 8`` when the sizes allowed are a lower bound and a set of
    residues, else the conditions as they are."""
    period = _period(conds)
    sizes = _sample(period)
    allowed = np.ones(sizes.size, dtype=bool)
    for cond in conds:
        allowed &= np.asarray(cond.holds({name: sizes}), dtype=bool)
    as_written = " and ".join(str(c) for c in conds)
    if not allowed[:DENSE].any():
        return as_written + f" (no {name} up to {DENSE} meets it)"
    lowest = int(sizes[allowed][0])
    residues = sorted({int(v) % period for v in sizes[DENSE:][allowed[DENSE:]]})
    dense = sizes[:DENSE]
    above = dense >= lowest
    predicted = np.isin(dense[above] % period, residues)
    if not residues or not np.array_equal(predicted, allowed[:DENSE][above]):
        return as_written
    first = next(v for v in range(1, period + 1) if v % period in residues)
    words = [f"{name} >= {lowest}"] if lowest > first else []
    return " and ".join(words + _residue_words(name, residues, period))


def _residue_words(name: str, residues: list[int], period: int) -> list[str]:
    if len(residues) == period:
        return []
    for step in sorted(d for d in range(2, period + 1) if period % d == 0):
        first = residues[0]
        if residues == list(range(first, period, step)) and first < step:
            return [f"{name} % {step} == {first}"]
    if residues == list(range(residues[0], residues[-1] + 1)):
        if residues[0] == 0:
            return [f"{name} % {period} < {residues[-1] + 1}"]
        return [f"{residues[0]} <= {name} % {period} <= {residues[-1]}"]
    listed = ", ".join(str(r) for r in residues)
    return [f"{name} % {period} in {{{listed}}}"]
