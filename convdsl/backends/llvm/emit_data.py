"""Data movement and channel reductions: crop, pad, concat, pixel shuffle, softmax.

One channel per point. Each output lane's source position is an index map evaluated per axis:
a scalar on the outer axes, an ``i64`` vector on the last (``lane_index``). Contiguous maps
(crop, concat, zero pad) load rows directly; the others gather lane by lane. ``upscale`` is
in ``emit_resample``.
"""

from __future__ import annotations

import dataclasses
import math

from llvmlite import ir

from convdsl.backends.llvm.emit_elementwise import exp
from convdsl.backends.llvm.kernel import KernelBuilder, Point, spatial_of, strides_of
from convdsl.backends.llvm.loops import (
    I1,
    all_true,
    binary_intrinsic,
    entry_alloca,
    for_range,
    fsplat,
    gep,
    i64,
    isplat,
    lane_ids,
    masked_gather,
    masked_load,
    unflatten,
    vec_type,
)
from convdsl.ir.graph import Node


def lane_index(k: KernelBuilder, point: Point) -> ir.Value:
    """The last-axis output index of every lane: ``w + l``."""
    return k.builder.add(isplat(k.builder, point.w, point.lanes), lane_ids(point.lanes))


def _const(b: ir.IRBuilder, like: ir.Value, value: int) -> ir.Value:
    if isinstance(like.type, ir.VectorType):
        return isplat(b, i64(value), like.type.count)
    return i64(value)


def gather(
    k: KernelBuilder,
    value: int,
    n: ir.Value,
    channel: ir.Value,
    indices: list[ir.Value],
    lanes: int,
) -> ir.Value:
    """``value[n, channel, *indices]``: ``indices[-1]`` (and ``channel`` if a vector) per lane."""
    b = k.builder
    strides = strides_of(k.type_of(value))
    offset = b.mul(channel, _const(b, channel, strides[0]))
    if not isinstance(offset.type, ir.VectorType):
        offset = isplat(b, offset, lanes)
    for index, stride in zip(indices, strides[1:], strict=True):
        term = b.mul(index, _const(b, index, stride))
        offset = b.add(
            offset, term if isinstance(term.type, ir.VectorType) else isplat(b, term, lanes)
        )
    return masked_gather(b, k.entry(value, n), offset, all_true(lanes), lanes)


def emit_crop(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    b = k.builder
    starts = node.attrs["starts"]
    outer = tuple(b.add(o, i64(s)) for o, s in zip(point.outer, starts[:-1], strict=True))
    shifted = Point(point.n, point.c, 1, outer, b.add(point.w, i64(starts[-1])), point.lanes)
    return k.operand_at(node.inputs[0], shifted)


def emit_concat(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    b = k.builder
    result = entry_alloca(b, vec_type(point.lanes, k.element), "concat")
    start = 0
    for value in node.inputs:
        channels = k.type_of(value).channels
        inside = b.and_(
            b.icmp_signed(">=", point.c, i64(start)),
            b.icmp_signed("<", point.c, i64(start + channels)),
        )
        with b.if_then(inside):
            moved = Point(point.n, b.sub(point.c, i64(start)), 1, point.outer, point.w, point.lanes)
            b.store(k.operand_at(value, moved)[0], result)
        start += channels
    return [b.load(result)]


def emit_pad(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    b = k.builder
    a = node.attrs
    x = node.inputs[0]
    sizes = spatial_of(k.type_of(x))
    indices = [*point.outer, lane_index(k, point)]
    if a["mode"] == "zero":
        return [_zero_pad(k, x, point, a["pads"], sizes, a["value"])]
    mapped = [
        _edge(b, b.sub(index, _const(b, index, before)), size, a["mode"])
        for index, (before, _), size in zip(indices, a["pads"], sizes, strict=True)
    ]
    return [gather(k, x, point.n, point.c, mapped, point.lanes)]


def _edge(b: ir.IRBuilder, index: ir.Value, size: int, mode: str) -> ir.Value:
    """Map an index outside ``[0, size)`` back inside: mirror (``reflect``) or clamp."""
    zero, last = _const(b, index, 0), _const(b, index, size - 1)
    if mode == "reflect":
        index = b.select(b.icmp_signed("<", index, zero), b.sub(zero, index), index)
        return b.select(
            b.icmp_signed(">", index, last), b.sub(_const(b, index, 2 * (size - 1)), index), index
        )
    index = b.select(b.icmp_signed("<", index, zero), zero, index)
    return b.select(b.icmp_signed(">", index, last), last, index)


def _zero_pad(k: KernelBuilder, x: int, point: Point, pads, sizes, value: float) -> ir.Value:  # type: ignore[no-untyped-def]
    """Rows inside the input load with a lane mask filled with ``value``; rows outside are all
    ``value`` (their clamped address is read, then discarded)."""
    b = k.builder
    inside: ir.Value = ir.Constant(I1, 1)
    outer = []
    for index, (before, _), size in zip(point.outer, pads[:-1], sizes[:-1], strict=True):
        source = b.sub(index, i64(before))
        ok = b.and_(b.icmp_signed(">=", source, i64(0)), b.icmp_signed("<", source, i64(size)))
        inside = b.and_(inside, ok)
        outer.append(b.select(ok, source, i64(0)))
    first = b.sub(point.w, i64(pads[-1][0]))
    lanes = b.add(isplat(b, first, point.lanes), lane_ids(point.lanes))
    mask = b.and_(
        b.icmp_signed(">=", lanes, isplat(b, i64(0), point.lanes)),
        b.icmp_signed("<", lanes, isplat(b, i64(sizes[-1]), point.lanes)),
    )
    strides = strides_of(k.type_of(x))
    offset = b.mul(point.c, i64(strides[0]))
    for index, stride in zip(outer, strides[1:-1], strict=True):
        offset = b.add(offset, b.mul(index, i64(stride)))
    row = gep(b, k.entry(x, point.n), offset)
    loaded = masked_load(b, gep(b, row, first), mask, point.lanes, value)
    return b.select(inside, loaded, fsplat(value, point.lanes, k.element))


def emit_pixel_shuffle(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    b = k.builder
    r = node.attrs["factor"]
    x = node.inputs[0]
    out_channels = k.type_of(node.output).channels
    (oh,) = point.outer
    ow = lane_index(k, point)
    i, ih = b.urem(oh, i64(r)), b.udiv(oh, i64(r))
    j, iw = b.urem(ow, _const(b, ow, r)), b.udiv(ow, _const(b, ow, r))
    lanes = point.lanes
    if node.attrs["order"] == "crd":
        base = b.mul(b.add(b.mul(point.c, i64(r)), i), i64(r))
        channel = b.add(isplat(b, base, lanes), j)
    else:
        row = b.mul(i, i64(r))
        channel = b.add(
            b.mul(b.add(isplat(b, row, lanes), j), _const(b, j, out_channels)),
            isplat(b, point.c, lanes),
        )
    return [gather(k, x, point.n, channel, [ih, iw], lanes)]


def emit_softmax(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """``exp(x_c - max) / sum exp(x_j - max)`` over the channels at the point's position."""
    b = k.builder
    x = node.inputs[0]
    channels = k.type_of(x).channels
    lanes = point.lanes
    top = entry_alloca(b, vec_type(lanes, k.element), "max")
    total = entry_alloca(b, vec_type(lanes, k.element), "sum")
    b.store(fsplat(float("-inf"), lanes, k.element), top)
    b.store(fsplat(0.0, lanes, k.element), total)

    def at(channel: ir.Value) -> ir.Value:
        moved = Point(point.n, channel, 1, point.outer, point.w, lanes)
        return k.operand_at(x, moved)[0]

    with for_range(b, 0, channels, name="sm") as channel:
        b.store(binary_intrinsic(b, "maxnum", b.load(top), at(channel)), top)
    peak = b.load(top)
    with for_range(b, 0, channels, name="se") as channel:
        b.store(b.fadd(b.load(total), exp(b, b.fsub(at(channel), peak))), total)
    mine = exp(b, b.fsub(at(point.c), peak))
    return [b.fdiv(mine, b.load(total))]


EMITTERS = {
    "crop": emit_crop,
    "concat": emit_concat,
    "pad": emit_pad,
    "pixel_shuffle": emit_pixel_shuffle,
    "softmax": emit_softmax,
}


# Vectors of positions per work item: a few lines of every channel, which stay in L2 for the
# second and third pass (WaveNet's [256, 16000] softmax: 3.9 ms with 8, 4.7 with 2, on 2
# threads; 2-D planes did as well with 2 as with 8).
SOFTMAX_VECTORS = 8


def softmax_kernel(k: KernelBuilder, node: Node) -> None:
    """A whole unfused softmax kernel in three passes over the channels (max, exp and sum,
    scale), so each element costs O(1) rather than the point model's O(channels). A work item
    is ``SOFTMAX_VECTORS`` vectors of positions, so a 1-D signal (WaveNet's ``[256, 16000]``
    logits) is shared by all threads instead of being one row for one thread (7.7 -> 3.9 ms
    in WaveNet's profile)."""
    b = k.builder
    x, out = node.inputs[0], node.output
    x_type = k.type_of(x)
    channels = x_type.channels
    sizes = spatial_of(x_type)
    width, lanes = sizes[-1], k.lanes
    span = SOFTMAX_VECTORS * lanes
    columns = -(-width // span)
    per_batch = math.prod(sizes[:-1]) * columns
    with k.items(b.mul(k.batch, i64(per_batch)), name="item") as item:
        n, *outer, column = unflatten(b, item, (*sizes[:-1], columns))
        start = b.mul(column, i64(span))

        def points(count: int) -> list[Point]:
            """The vectors of ``count`` positions from ``start`` (the last maybe partial)."""
            return [
                Point(
                    n,
                    i64(0),
                    1,
                    tuple(outer),
                    b.add(start, i64(v)),
                    lanes,
                    valid=count - v if count - v < lanes else None,
                )
                for v in range(0, count, lanes)
            ]

        tail = width - (columns - 1) * span
        if tail == span:
            _softmax_columns(k, x, out, points(span), channels)
        else:
            last = b.icmp_signed("==", column, i64(columns - 1))
            with b.if_else(last) as (then, otherwise):
                with then:
                    _softmax_columns(k, x, out, points(tail), channels)
                with otherwise:
                    _softmax_columns(k, x, out, points(span), channels)


def _softmax_columns(
    k: KernelBuilder, x: int, out: int, points: list[Point], channels: int
) -> None:
    """Softmax over the channels at every vector of ``points``, side by side."""
    b = k.builder
    lanes = points[0].lanes
    tops = [entry_alloca(b, vec_type(lanes, k.element), "max") for _ in points]
    totals = [entry_alloca(b, vec_type(lanes, k.element), "sum") for _ in points]
    for top, total in zip(tops, totals, strict=True):
        b.store(fsplat(float("-inf"), lanes, k.element), top)
        b.store(fsplat(0.0, lanes, k.element), total)

    def at(point: Point, channel: ir.Value) -> Point:
        return dataclasses.replace(point, c=channel)

    with for_range(b, 0, channels, name="smax") as c:
        for point, top in zip(points, tops, strict=True):
            value = k.operand_at(x, at(point, c))[0]
            b.store(binary_intrinsic(b, "maxnum", b.load(top), value), top)
    peaks = [b.load(top) for top in tops]
    with for_range(b, 0, channels, name="sexp") as c:
        for point, peak, total in zip(points, peaks, totals, strict=True):
            e = exp(b, b.fsub(k.operand_at(x, at(point, c))[0], peak))
            k.store(out, at(point, c), [e])
            b.store(b.fadd(b.load(total), e), total)
    scales = [b.fdiv(fsplat(1.0, lanes, k.element), b.load(total)) for total in totals]
    with for_range(b, 0, channels, name="sdiv") as c:
        for point, scale in zip(points, scales, strict=True):
            value = k.operand_at(out, at(point, c))[0]
            k.store(out, at(point, c), [b.fmul(value, scale)])


KERNELS = {"softmax": softmax_kernel}
