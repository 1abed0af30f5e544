"""Windowed max and average pooling, and the global pools.

Same point model and window walk as ``emit_conv`` (outer taps unrolled behind one bounds check,
last-axis taps as masked row loads), with one channel per point. Max fills padded lanes with
``-inf`` so padding never wins; average fills with 0 and divides by the per-window count of
``numpy.pool.avg_pool`` (real elements, or elements inside the padded input with
``include_pad``), computed per lane on the last axis and per point on the others.
"""

from __future__ import annotations

import itertools
import math

from llvmlite import ir

from convdsl.backends.llvm.emit_conv import lane_mask, load_row, maybe, outer_taps
from convdsl.backends.llvm.kernel import KernelBuilder, Point, spatial_of, strides_of
from convdsl.backends.llvm.loops import (
    concat,
    entry_alloca,
    fconst,
    for_range,
    fsplat,
    gep,
    i64,
    isplat,
    lane_ids,
    load_vec,
    loop_nest,
    masked_load,
    pick,
    splat,
    vec_type,
    wide_mask,
)
from convdsl.ir.graph import Node

NEG_INF = float("-inf")
UNROLLED_TAPS = 27  # windows up to this many taps are emitted tap by tap (3x3x3)


def _window(k: KernelBuilder, node: Node, point: Point, fill: float, combine: str) -> ir.Value:
    """The window reduction (``maxnum`` or ``fadd``) of the point's single channel."""
    b = k.builder
    a = dict(node.attrs)
    a.setdefault("dilation", (1,) * len(a["kernel"]))
    x = node.inputs[0]
    sizes, strides = spatial_of(k.type_of(x)), strides_of(k.type_of(x))
    lanes = point.lanes
    acc = entry_alloca(b, vec_type(lanes, k.element), "window")
    b.store(fsplat(fill, lanes, k.element), acc)
    base = gep(b, k.entry(x, point.n), b.mul(point.c, i64(strides[0])))
    kernel = a["kernel"]
    last = len(kernel) - 1
    step, dilation, before = a["stride"][last], a["dilation"][last], a["pads"][last][0]

    def row(outer: tuple[ir.Value, ...]) -> None:
        condition, row_offset = outer_taps(k, point, outer, a, sizes, strides[1:])
        with maybe(b, condition):
            window = (kernel[-1], step, dilation, before, sizes[-1])
            for xv in _row_taps(k, gep(b, base, row_offset), point, window, fill):
                current = b.load(acc)
                b.store(_max(b, current, xv) if combine == "max" else b.fadd(current, xv), acc)

    if math.prod(kernel) <= UNROLLED_TAPS:  # LLVM's unroller is off (codegen.py)
        for taps in itertools.product(*(range(size) for size in kernel[:-1])):
            row(tuple(i64(tap) for tap in taps))
    else:
        with loop_nest(b, kernel[:-1], name="ptap") as outer:
            row(tuple(outer))
    return b.load(acc)


def _max(b: ir.IRBuilder, current: ir.Value, x: ir.Value) -> ir.Value:
    """``max(current, x)`` propagating NaN as NumPy and PyTorch do (``llvm.maxnum`` drops it):
    ``vmaxps`` keeps ``current`` when either is NaN, then a NaN ``x`` is taken."""
    larger = b.select(b.fcmp_ordered(">", x, current), x, current)
    return b.select(b.fcmp_unordered("uno", x, x), x, larger)


def _row_taps(
    k: KernelBuilder,
    row: ir.Value,
    point: Point,
    window: tuple[int, int, int, int, int],
    fill: float,
) -> list[ir.Value]:
    """The point's inputs for every last-axis tap of the window (``kernel, step, dilation,
    before, size``): lane ``l`` of tap ``t`` is ``row[(w + l) * step + t * dilation -
    before]``, ``fill`` outside the row. With a stride, the span all taps cover is loaded as
    whole vectors and each tap picked from it with a shuffle, not gathered lane by lane.
    Where the whole span is inside the row (all but the row's ends), the loads are plain."""
    b = k.builder
    kernel, step, dilation, before, size = window
    lanes = point.lanes
    first = b.sub(b.mul(point.w, i64(step)), i64(before))
    if lanes == 1:
        return _taps(k, row, first, window, lanes, fill, masked=True)
    span = -(-((lanes - 1) * step + (kernel - 1) * dilation + 1) // lanes) * lanes
    inside = b.and_(
        b.icmp_signed(">=", first, i64(0)), b.icmp_signed("<=", b.add(first, i64(span)), i64(size))
    )
    with b.if_else(inside) as (interior, border):
        with interior:
            plain = _taps(k, row, first, window, lanes, fill, masked=False)
            plain_block = b.block
        with border:
            masked = _taps(k, row, first, window, lanes, fill, masked=True)
            masked_block = b.block
    taps = []
    for fast, slow in zip(plain, masked, strict=True):
        tap = b.phi(fast.type)
        tap.add_incoming(fast, plain_block)
        tap.add_incoming(slow, masked_block)
        taps.append(tap)
    return taps


def _taps(
    k: KernelBuilder,
    row: ir.Value,
    first: ir.Value,
    window: tuple[int, int, int, int, int],
    lanes: int,
    fill: float,
    masked: bool,
) -> list[ir.Value]:
    """``_row_taps`` from ``first``, the element of lane 0 of tap 0, with lane masks or
    (``masked=False``: the span is inside the row) without."""
    b = k.builder
    kernel, step, dilation, _, size = window
    if step == 1 or lanes == 1:
        taps = []
        for tap in range(kernel):
            start = b.add(first, i64(tap * dilation))
            if not masked:
                taps.append(load_vec(b, gep(b, row, start), lanes))
                continue
            index, mask = lane_mask(k, start, step, size, lanes)
            taps.append(load_row(k, row, start, index, mask, step, lanes, fill))
        return taps
    span = (lanes - 1) * step + (kernel - 1) * dilation + 1
    parts = []
    for offset in range(0, span, lanes):
        start = b.add(first, i64(offset))
        at = gep(b, row, start)
        if masked:
            parts.append(masked_load(b, at, wide_mask(b, start, lanes, size), lanes, fill))
        else:
            parts.append(load_vec(b, at, lanes))
    wide = concat(b, parts, fill)
    return [
        pick(b, wide, [tap * dilation + lane * step for lane in range(lanes)])
        for tap in range(kernel)
    ]


def emit_max_pool(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    return [_window(k, node, point, NEG_INF, "max")]


def emit_avg_pool(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    b = k.builder
    a = node.attrs
    total = _window(k, node, point, 0.0, "add")
    sizes = spatial_of(k.type_of(node.inputs[0]))
    count: ir.Value = i64(1)
    for axis, out_index in enumerate(point.outer):
        count = b.mul(count, _count(b, out_index, axis, a, sizes[axis]))
    last = len(sizes) - 1
    lanes_index = b.add(isplat(b, point.w, point.lanes), lane_ids(point.lanes))
    per_lane = b.mul(isplat(b, count, point.lanes), _count(b, lanes_index, last, a, sizes[last]))
    return [b.fdiv(total, b.sitofp(per_lane, vec_type(point.lanes, k.element)))]


def _count(b: ir.IRBuilder, out_index: ir.Value, axis: int, attrs, size: int) -> ir.Value:  # type: ignore[no-untyped-def]
    """Elements of window ``out_index`` on ``axis`` that count (scalar or per-lane i64)."""
    before, after = attrs["pads"][axis]
    lo, hi = (-before, size + after) if attrs["include_pad"] else (0, size)
    lanes = out_index.type.count if isinstance(out_index.type, ir.VectorType) else 0

    def const(value: int) -> ir.Value:
        return isplat(b, i64(value), lanes) if lanes else i64(value)

    start = b.sub(b.mul(out_index, const(attrs["stride"][axis])), const(before))
    end = b.add(start, const(attrs["kernel"][axis]))
    end = b.select(b.icmp_signed("<", end, const(hi)), end, const(hi))
    start = b.select(b.icmp_signed(">", start, const(lo)), start, const(lo))
    count = b.sub(end, start)
    return b.select(b.icmp_signed(">", count, const(1)), count, const(1))


def _global(k: KernelBuilder, node: Node, point: Point, kind: str) -> list[ir.Value]:
    """Reduce every spatial position of the point's channel, ``lanes`` at a time."""
    b = k.builder
    x = node.inputs[0]
    x_type = k.type_of(x)
    plane = strides_of(x_type)[0]
    lanes = k.lanes
    fill = NEG_INF if kind == "max" else 0.0
    acc = entry_alloca(b, vec_type(lanes, k.element), "global")
    b.store(fsplat(fill, lanes, k.element), acc)
    tail = entry_alloca(b, k.element, "tail")
    b.store(fconst(fill, k.element), tail)
    base = gep(b, k.entry(x, point.n), b.mul(point.c, i64(plane)))
    main = plane - plane % lanes

    def combine(x: ir.Value, y: ir.Value) -> ir.Value:
        return _max(b, x, y) if kind == "max" else b.fadd(x, y)

    with for_range(b, 0, main, lanes, name="g") as i:
        b.store(combine(b.load(acc), load_vec(b, gep(b, base, i), lanes)), acc)
    with for_range(b, main, plane, name="gt") as i:
        b.store(combine(b.load(tail), b.load(gep(b, base, i))), tail)
    vector = b.load(acc)
    result = b.load(tail)
    for lane in range(lanes):
        result = combine(result, b.extract_element(vector, ir.Constant(ir.IntType(32), lane)))
    if kind == "avg":
        result = b.fdiv(result, fconst(float(plane), k.element))
    return [splat(b, result, point.lanes)]


def emit_global_avg_pool(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    return _global(k, node, point, "avg")


def emit_global_max_pool(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    return _global(k, node, point, "max")


EMITTERS = {
    **{f"max_pool{r}d": emit_max_pool for r in (1, 2, 3)},
    **{f"avg_pool{r}d": emit_avg_pool for r in (1, 2, 3)},
    "global_avg_pool": emit_global_avg_pool,
    "global_max_pool": emit_global_max_pool,
}
