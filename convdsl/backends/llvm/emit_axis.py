"""Data movement along one axis: slice (and split's parts), concat along any axis but the
batch, space to depth.

Each is an index map evaluated at an output point (one channel, a scalar index per outer axis,
a vector of lanes on the last): a slice on channels or an outer axis moves the point and loads
a row, as ``crop`` does; a unit-step slice on the last axis loads the shifted row; the other
maps on the last axis gather lane by lane, their indices clamped into the input so the lanes
past a row's end read something harmless. A concat along channels is ``emit_data``'s.
The batch axis is refused (``check_batch_axis``): every kernel computes its own images, one
batch group at a time (``entry``).
"""

from __future__ import annotations

import dataclasses

from llvmlite import ir

from convdsl.backends.llvm import emit_data
from convdsl.backends.llvm.emit_data import gather, lane_index
from convdsl.backends.llvm.kernel import KernelBuilder, Point, spatial_of
from convdsl.backends.llvm.loops import entry_alloca, i64, isplat, vec_type
from convdsl.diagnostics import error
from convdsl.ir.graph import Node

AXIS_OPS = ("slice", "split", "concat")


def check_batch_axis(node: Node) -> None:
    """A ``ConvdslError`` for an op along the batch axis, which this backend cannot run."""
    if node.op in AXIS_OPS and node.attrs.get("axis") == 0:
        raise error(
            f"llvm backend cannot lower {node.op} along the batch axis (axis 0) yet",
            node.span,
            hint="the numpy backend runs it",
        )


def _clamp(b: ir.IRBuilder, index: ir.Value, size: int) -> ir.Value:
    """A lane index vector kept inside ``[0, size)`` (lanes past a row's end)."""
    zero, last = isplat(b, i64(0), index.type.count), isplat(b, i64(size - 1), index.type.count)
    index = b.select(b.icmp_signed("<", index, zero), zero, index)
    return b.select(b.icmp_signed(">", index, last), last, index)


def _on_axis(point: Point, axis: int, index: ir.Value) -> Point:
    """``point`` with the scalar index of ``axis`` (channels or an outer axis) replaced."""
    if axis == 1:
        return dataclasses.replace(point, c=index, block=1)
    outer = list(point.outer)
    outer[axis - 2] = index
    return dataclasses.replace(point, outer=tuple(outer), block=1)


def emit_slice(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """Output index ``i`` on ``axis`` reads input index ``start + i*step``."""
    b = k.builder
    a = node.attrs
    x = node.inputs[0]
    axis, start, step = a["axis"], a["start"], a["step"]
    last = k.type_of(x).rank - 1
    if axis < last:
        index = point.c if axis == 1 else point.outer[axis - 2]
        moved = b.add(b.mul(index, i64(step)), i64(start))
        return k.operand_at(x, _on_axis(point, axis, moved))
    if step == 1:
        return k.operand_at(x, dataclasses.replace(point, w=b.add(point.w, i64(start)), block=1))
    lanes = _clamp(b, lane_index(k, point), a["size"])
    source = b.add(
        b.mul(lanes, isplat(b, i64(step), point.lanes)), isplat(b, i64(start), point.lanes)
    )
    return [gather(k, x, point.n, point.c, [*point.outer, source], point.lanes)]


def emit_concat(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """Along channels, ``emit_data.emit_concat``; along an outer axis, the input whose range
    holds the point's index, read at the index minus the range's start; along the last axis,
    each input gathered at its lanes (indices clamped into it) and chosen lane by lane."""
    axis = node.attrs["axis"]
    if axis == 1:
        return emit_data.emit_concat(k, node, point)
    b = k.builder
    last = k.type_of(node.output).rank - 1
    result = entry_alloca(b, vec_type(point.lanes, k.element), "concat")
    start = 0
    if axis < last:
        index = point.outer[axis - 2]
        for value in node.inputs:
            size = int(k.type_of(value).shape[axis])
            inside = b.and_(
                b.icmp_signed(">=", index, i64(start)),
                b.icmp_signed("<", index, i64(start + size)),
            )
            with b.if_then(inside):
                moved = _on_axis(point, axis, b.sub(index, i64(start)))
                b.store(k.operand_at(value, moved)[0], result)
            start += size
        return [b.load(result)]
    lanes = lane_index(k, point)
    chosen: ir.Value | None = None
    for value in node.inputs:
        size = spatial_of(k.type_of(value))[-1]
        shifted = b.sub(lanes, isplat(b, i64(start), point.lanes))
        loaded = gather(
            k, value, point.n, point.c, [*point.outer, _clamp(b, shifted, size)], point.lanes
        )
        if chosen is None:
            chosen = loaded
        else:
            mine = b.icmp_signed(">=", lanes, isplat(b, i64(start), point.lanes))
            chosen = b.select(mine, loaded, chosen)
        start += size
    assert chosen is not None
    return [chosen]


def emit_space_to_depth(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """Output ``(c_out, h, w)`` reads input ``(c, h*r + i, w*r + j)``: ``c_out = c*r*r + i*r
    + j`` (``crd``) or ``(i*r + j)*C + c`` (``dcr``)."""
    b = k.builder
    r = node.attrs["factor"]
    x = node.inputs[0]
    in_channels = k.type_of(x).channels
    (oh,) = point.outer
    if node.attrs["order"] == "crd":
        channel = b.udiv(point.c, i64(r * r))
        i, j = b.urem(b.udiv(point.c, i64(r)), i64(r)), b.urem(point.c, i64(r))
    else:
        channel = b.urem(point.c, i64(in_channels))
        phase = b.udiv(point.c, i64(in_channels))
        i, j = b.udiv(phase, i64(r)), b.urem(phase, i64(r))
    lanes = point.lanes
    ow = _clamp(b, lane_index(k, point), spatial_of(k.type_of(node.output))[-1])
    iw = b.add(b.mul(ow, isplat(b, i64(r), lanes)), isplat(b, j, lanes))
    ih = b.add(b.mul(oh, i64(r)), i)
    return [gather(k, x, point.n, channel, [ih, iw], lanes)]


EMITTERS = {
    "slice": emit_slice,
    "split": emit_slice,  # one part of a split: its rule resolves it to a slice
    "concat": emit_concat,
    "space_to_depth": emit_space_to_depth,
}
