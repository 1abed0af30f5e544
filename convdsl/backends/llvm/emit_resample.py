"""``upscale``: nearest, linear and cubic resizing by any factor.

One channel per point. Each axis maps its output index to input taps and weights with the
integer maps of ``convdsl.ir.resample`` (a scalar on the outer axes, an ``i64`` vector on the
last): nearest rounds ``(A*x + B) / C`` by floor division, linear and cubic split ``(a*x + b)
/ c`` into a floor and a fraction, which becomes a weight in double precision, rounded to the
kernel's dtype as the interpreter rounds it. The output sums every combination of the axes'
taps, each gathered lane by lane; vectors whose lanes read a fixed pattern of one input row
segment (integer factors on the last axis, see ``row_patterns``) load whole rows and shuffle.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from llvmlite import ir

from convdsl.backends.llvm.emit_data import gather, lane_index
from convdsl.backends.llvm.kernel import KernelBuilder, Point, spatial_of
from convdsl.backends.llvm.loops import (
    F64,
    I1,
    I32,
    I64,
    element_of,
    entry_alloca,
    fconst,
    fma,
    fsplat,
    gep,
    i64,
    load_vec,
    masked_load,
    splat,
    vec_type,
)
from convdsl.ir import resample
from convdsl.ir.graph import Node

Tap = tuple[ir.Value, ir.Value | None]
"""An input index on one axis and its weight (None: the only tap, weight 1)."""

MAX_ROW_PATTERNS = 8
"""More distinct lane patterns than this along a row are gathered instead (code size)."""


def axis_maps(k: KernelBuilder, node: Node) -> list[resample.AxisMap]:
    sizes = spatial_of(k.type_of(node.inputs[0]))
    coordinate = node.attrs["coordinate"]
    factors: tuple[Fraction, ...] = node.attrs["factors"]
    return [resample.axis_map(n, f, coordinate) for n, f in zip(sizes, factors, strict=True)]


def emit_upscale(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """Output vectors whose lanes read a fixed pattern of one input row segment blend whole
    rows and shuffle; the others gather lane by lane."""
    b = k.builder
    patterns = row_patterns(k, node, point)
    if isinstance(point.w, ir.Constant):  # a tail vector: its start is known
        start = point.w.constant
        for (first, end), pattern in patterns:
            if first <= start < end:
                return [_upscale_row(k, node, point, pattern)]
        return [_upscale_gathered(k, node, point)]
    if not patterns:
        return [_upscale_gathered(k, node, point)]
    result = entry_alloca(b, vec_type(point.lanes, k.element), "upscaled")
    done = b.append_basic_block("upscaled")
    for (first, end), pattern in patterns:
        inside = b.and_(
            b.icmp_signed(">=", point.w, i64(first)), b.icmp_signed("<", point.w, i64(end))
        )
        with b.if_then(inside):
            b.store(_upscale_row(k, node, point, pattern), result)
            b.branch(done)
    b.store(_upscale_gathered(k, node, point), result)
    b.branch(done)
    b.position_at_end(done)
    return [b.load(result)]


# ---- one axis: output index -> taps --------------------------------------------------------


def _ints(like: ir.Value, value: int) -> ir.Value:
    """The i64 constant ``value`` shaped like ``like`` (a scalar or a vector)."""
    if isinstance(like.type, ir.VectorType):
        return ir.Constant(ir.VectorType(I64, like.type.count), [value] * like.type.count)
    return i64(value)


def _doubles(like: ir.Value, value: float) -> ir.Value:
    """The double constant ``value`` shaped like ``like``."""
    if isinstance(like.type, ir.VectorType):
        return ir.Constant(ir.VectorType(F64, like.type.count), [value] * like.type.count)
    return ir.Constant(F64, value)


def _clamp(b: ir.IRBuilder, value: ir.Value, low: int, high: int) -> ir.Value:
    value = b.select(b.icmp_signed("<", value, _ints(value, low)), _ints(value, low), value)
    return b.select(b.icmp_signed(">", value, _ints(value, high)), _ints(value, high), value)


def _affine(b: ir.IRBuilder, index: ir.Value, a: int, offset: int) -> ir.Value:
    return b.add(b.mul(index, _ints(index, a)), _ints(index, offset))


def _floor_div(b: ir.IRBuilder, num: ir.Value, c: int) -> ir.Value:
    """``floor(num / c)`` for ``c > 0`` (``sdiv`` truncates toward zero)."""
    quotient = b.sdiv(num, _ints(num, c))
    below = b.icmp_signed("<", b.srem(num, _ints(num, c)), _ints(num, 0))
    return b.select(below, b.sub(quotient, _ints(num, 1)), quotient)


def _fraction(b: ir.IRBuilder, num: ir.Value, lo: ir.Value, c: int) -> ir.Value:
    """``(num - lo*c) / c`` in double precision (exact integers, one rounding)."""
    rest = b.sub(num, b.mul(lo, _ints(lo, c)))
    double = ir.VectorType(F64, num.type.count) if isinstance(num.type, ir.VectorType) else F64
    return b.fdiv(b.sitofp(rest, double), _doubles(num, float(c)))


def _rounded(k: KernelBuilder, weight: ir.Value) -> ir.Value:
    """A double weight in the kernel's dtype, rounded as the interpreter's ``astype``."""
    if element_of(weight.type) == k.element:
        return weight
    lanes = weight.type.count if isinstance(weight.type, ir.VectorType) else 0
    return k.builder.fptrunc(weight, vec_type(lanes, k.element) if lanes else k.element)


def _one_minus(b: ir.IRBuilder, weight: ir.Value) -> ir.Value:
    if isinstance(weight.type, ir.VectorType):
        one: ir.Value = fsplat(1.0, weight.type.count, weight.type.element)
    else:
        one = fconst(1.0, weight.type)
    return b.fsub(one, weight)


def axis_taps(k: KernelBuilder, node: Node, index: ir.Value, m: resample.AxisMap) -> list[Tap]:
    """The input taps (clamped into ``[0, n-1]``) and weights of output ``index`` on one axis,
    as the interpreter's tables (``resample.nearest_indices``, ``linear_taps``,
    ``cubic_taps``) give them."""
    b = k.builder
    a = node.attrs
    last = m.size - 1
    if a["mode"] == "nearest":
        r = resample.nearest_map(m, a["nearest"])
        return [(_clamp(b, _floor_div(b, _affine(b, index, r.a, r.b), r.c), 0, last), None)]
    if a["mode"] == "linear":
        num = _clamp(b, _affine(b, index, m.a, m.b), 0, last * m.c)
        lo = b.sdiv(num, _ints(num, m.c))  # num >= 0
        hi = b.select(b.icmp_signed("<", lo, _ints(lo, last)), b.add(lo, _ints(lo, 1)), lo)
        weight = _rounded(k, _fraction(b, num, lo, m.c))
        return [(lo, _one_minus(b, weight)), (hi, weight)]
    num = _affine(b, index, m.a, m.b)
    lo = _floor_div(b, num, m.c)
    t = _fraction(b, num, lo, m.c)
    weights = list(_cubic_weights(b, t, a["cubic_coeff"]))
    taps = [b.add(lo, _ints(lo, shift)) for shift in (-1, 0, 1, 2)]
    if a["exclude_outside"]:
        zero = _doubles(t, 0.0)
        for i, tap in enumerate(taps):
            inside = b.and_(
                b.icmp_signed(">=", tap, _ints(tap, 0)), b.icmp_signed("<=", tap, _ints(tap, last))
            )
            weights[i] = b.select(inside, weights[i], zero)
        total = b.fadd(b.fadd(b.fadd(weights[0], weights[1]), weights[2]), weights[3])
        weights = [b.fdiv(w, total) for w in weights]
    return [(_clamp(b, tap, 0, last), _rounded(k, w)) for tap, w in zip(taps, weights, strict=True)]


def _cubic_weights(b: ir.IRBuilder, t: ir.Value, coeff: float) -> tuple[ir.Value, ...]:
    """``resample.cubic_weights`` in double precision, operation for operation."""

    def const(value: float) -> ir.Value:
        return _doubles(t, value)

    def near(d: ir.Value) -> ir.Value:
        inner = b.fsub(b.fmul(const(coeff + 2), d), const(coeff + 3))
        return b.fadd(b.fmul(b.fmul(inner, d), d), const(1.0))

    def far(d: ir.Value) -> ir.Value:
        inner = b.fadd(
            b.fmul(b.fsub(b.fmul(const(coeff), d), const(5 * coeff)), d), const(8 * coeff)
        )
        return b.fsub(b.fmul(inner, d), const(4 * coeff))

    one, two = const(1.0), const(2.0)
    return far(b.fadd(t, one)), near(t), near(b.fsub(one, t)), far(b.fsub(two, t))


# ---- gathering every tap -------------------------------------------------------------------


def _upscale_gathered(k: KernelBuilder, node: Node, point: Point) -> ir.Value:
    b = k.builder
    indices = [*point.outer, lane_index(k, point)]
    axes = [
        axis_taps(k, node, index, m) for index, m in zip(indices, axis_maps(k, node), strict=True)
    ]
    total: ir.Value | None = None
    for combination in itertools.product(*axes):
        value = gather(
            k, node.inputs[0], point.n, point.c, [i for i, _ in combination], point.lanes
        )
        weight: ir.Value | None = None
        for _, w in combination:
            if w is None:
                continue
            if not isinstance(w.type, ir.VectorType):
                w = splat(b, w, point.lanes)
            weight = w if weight is None else b.fmul(weight, w)
        term = value if weight is None else b.fmul(weight, value)
        total = term if total is None else b.fadd(total, term)
    assert total is not None
    return total


# ---- whole rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RowPattern:
    """Where the lanes of an output vector starting at ``w`` read on the last axis: a load of
    ``lanes`` input elements from ``w / factor + shift`` (only the first ``inside`` exist),
    then lane ``l`` takes element ``lo[l]`` (and, linear mode, ``hi[l]`` weighted
    ``weight[l]``)."""

    factor: int
    shift: int
    inside: int
    lo: tuple[int, ...]
    hi: tuple[int, ...] | None = None
    weight: tuple[float, ...] | None = None


def row_patterns(
    k: KernelBuilder, node: Node, point: Point
) -> list[tuple[tuple[int, int], RowPattern]]:
    """``[((first, end), pattern)]``: vector starts ``w`` in ``[first, end)`` (multiples of the
    vector width) share ``pattern``. Empty (gather every lane) unless the last axis grows by an
    integer factor that divides the lanes, with nearest or linear mode and a coordinate map
    that repeats with the factor (not ``align_corners``), in few enough patterns."""
    a = node.attrs
    lanes, factor = point.lanes, a["factors"][-1]
    m = axis_maps(k, node)[-1]
    if (
        lanes == 1
        or factor.denominator != 1
        or lanes % factor.numerator
        or a["mode"] == "cubic"
        or a["coordinate"] == "align_corners"
    ):
        return []
    f = int(factor)
    if a["mode"] == "nearest":
        lo = resample.nearest_indices(m, a["nearest"])
        hi = weight = None
    else:
        lo, hi, fraction = resample.linear_taps(m)
        weight = fraction.astype(k.dtype.numpy)
    groups: list[tuple[tuple[int, int], RowPattern]] = []
    for w in range(0, m.length, lanes):
        span = slice(w, min(w + lanes, m.length))
        first = int(lo[span].min())
        if (int(lo[span].max()) if hi is None else int(hi[span].max())) - first >= lanes:
            return []  # the lanes reach further than one load
        pattern = RowPattern(
            f,
            first - w // f,
            min(lanes, m.size - first),
            _full_vector(lo[span] - first, lanes),
            None if hi is None else _full_vector(hi[span] - first, lanes),
            None if weight is None else _full_vector(weight[span], lanes),
        )
        if groups and groups[-1][1] == pattern and groups[-1][0][1] == w:
            groups[-1] = ((groups[-1][0][0], w + lanes), pattern)
        else:
            groups.append(((w, w + lanes), pattern))
    return groups if len(groups) <= MAX_ROW_PATTERNS else []


def _full_vector(values: np.ndarray, lanes: int) -> tuple:  # type: ignore[type-arg]
    """``values`` as Python numbers, padded to ``lanes`` with the first (a tail vector's lanes
    past the row's end compute something harmless and are not stored)."""
    picked = values.tolist()
    return tuple(picked + picked[:1] * (lanes - len(picked)))


def _upscale_row(k: KernelBuilder, node: Node, point: Point, pattern: RowPattern) -> ir.Value:
    """The output vector at ``point`` from whole input rows: blend the source rows of the outer
    axes (their taps, see ``axis_taps``), load ``lanes`` elements of it, shuffle them into
    lanes."""
    b = k.builder
    x = node.inputs[0]
    lanes = point.lanes
    start = b.add(b.udiv(point.w, i64(pattern.factor)), i64(pattern.shift))
    base = k.entry(x, point.n)
    outer = [
        axis_taps(k, node, index, m)
        for index, m in zip(point.outer, axis_maps(k, node)[:-1], strict=True)
    ]
    mask = ir.Constant(ir.VectorType(I1, lanes), [e < pattern.inside for e in range(lanes)])
    blended: ir.Value | None = None
    for combination in itertools.product(*outer):
        at = gep(b, base, k.offset(x, point.c, tuple(i for i, _ in combination), start))
        row = load_vec(b, at, lanes) if pattern.inside == lanes else masked_load(b, at, mask, lanes)
        weight: ir.Value | None = None
        for _, w in combination:
            if w is not None:
                weight = w if weight is None else b.fmul(weight, w)
        if weight is not None:
            row = b.fmul(row, splat(b, weight, lanes))
        blended = row if blended is None else b.fadd(blended, row)
    assert blended is not None
    undefined = ir.Constant(blended.type, ir.Undefined)

    def pick(sources: tuple[int, ...]) -> ir.Value:
        order = ir.Constant(ir.VectorType(I32, lanes), list(sources))
        return b.shuffle_vector(blended, undefined, order)

    if pattern.hi is None or pattern.weight is None:
        return pick(pattern.lo)
    numpy = k.dtype.numpy.type  # 1 - weight rounded as the interpreter rounds it
    weight_hi = ir.Constant(vec_type(lanes, k.element), list(pattern.weight))
    weight_lo = ir.Constant(
        vec_type(lanes, k.element), [float(1 - numpy(v)) for v in pattern.weight]
    )
    return fma(b, pick(pattern.hi), weight_hi, b.fmul(pick(pattern.lo), weight_lo))


EMITTERS = {"upscale": emit_upscale}
