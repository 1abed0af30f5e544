"""Direct convolution as a register tile (1-D/2-D/3-D, grouped, depthwise, strided, dilated).

A tile is ``block`` output channels times ``vectors`` native vectors of consecutive outputs on
the last spatial axis: ``block * vectors`` accumulators (about 12, so that with the input
vectors and one broadcast weight the tile stays in AVX2's 16 registers without spills). The
channels are in one group, or span whole groups when groups are small (depthwise: 4 channels of
4 groups), each loading its own group's input: a depthwise tile of one channel had too few
accumulators to hide the FMA latency.
For every valid outer tap (a runtime range per axis, so rows near a border simply run fewer taps)
and every input channel of the group, the taps on the last axis are unrolled: each loads
``vectors`` input vectors and broadcasts ``block`` weights, then ``block * vectors`` FMAs.
Dilation only spaces the tap offsets; a stride > 1 on the last axis reads its input stored as
phase rows (``PhaseRows``, made by ``emit_relayout``), where a vector's lanes are consecutive
again. Tiles on the border of the last axis (``masked``) load with lane masks computed once per
tile, so padding reads nothing (phase rows hold the padding as zeros and need no masks).
A 2-D convolution over narrow rows may walk its flattened plane instead (``Plane``): all its
taps are then taps of one row at fixed offsets, every load masked by its tap's row and column.

Weights are repacked at bind time as ``[O/block, Cg, taps, block]`` (``kernel.pack_weight``;
a last block of fewer channels is ``[Cg, taps, rest]``): the ``block`` weights that meet one
input vector are adjacent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llvmlite import ir

from convdsl.backends.llvm.conv_schedule import ConvSchedule, Plane
from convdsl.backends.llvm.emit_elementwise import ACTIVATIONS
from convdsl.backends.llvm.emit_relayout import tap_offset
from convdsl.backends.llvm.kernel import KernelBuilder, Point
from convdsl.backends.llvm.loops import (
    I32,
    entry_alloca,
    fma,
    for_range,
    fsplat,
    gep,
    i64,
    load_vec,
    masked_load,
    splat,
    splat_i32,
    vec_type,
    wide_mask,
)
from convdsl.backends.llvm.strided import strided_load
from convdsl.ir.graph import Node
from convdsl.ir.types import PhaseRows


def tap_range(
    b: ir.IRBuilder, start: ir.Value, kernel: int, dilation: int, size: int
) -> tuple[ir.Value, ir.Value]:
    """``[lo, hi)`` of the taps ``t < kernel`` with ``0 <= start + t * dilation < size``."""
    zero = i64(0)
    ahead = b.sub(zero, start)  # taps before this one read index < 0
    lo = b.select(
        b.icmp_signed("<=", start, zero),
        b.sdiv(b.add(ahead, i64(dilation - 1)), i64(dilation)),
        zero,
    )
    room = b.sub(i64(size - 1), start)
    hi = b.add(b.sdiv(room, i64(dilation)), i64(1))
    hi = b.select(b.icmp_signed("<", room, zero), zero, hi)
    hi = b.select(b.icmp_signed("<", hi, i64(kernel)), hi, i64(kernel))
    return lo, hi


def load_row(
    b: ir.IRBuilder,
    at: ir.Value,
    lanes: int,
    mask: ir.Value | None,
    step: int = 1,
    checked: bool = False,
) -> ir.Value:
    """``lanes`` positions of a row from ``at``, ``step`` elements apart (channels last;
    ``checked``: in a bounds-checked build, ``strided_load``)."""
    if step != 1:
        return strided_load(b, at, step, lanes, mask, checked)
    return load_vec(b, at, lanes) if mask is None else masked_load(b, at, mask, lanes)


def emit_conv_tile(
    k: KernelBuilder,
    node: Node,
    point: Point,
    masked: tuple[bool, ...],
    channels: tuple[ir.Value, ir.Value],
    resume: tuple[ir.Value, int] | None = None,
    pack: int | None = None,
) -> list[list[ir.Value]]:
    """``sums[v][j]``: output channel ``point.c + j`` at the ``point.lanes`` positions from
    ``point.w + v * point.lanes``, summed over the group's input channels ``[lo, hi)`` of
    ``channels`` (no bias or activation: ``finish_tile``), for ``len(masked)`` vectors; those
    with ``masked[v]`` load with lane masks (they touch the border). ``resume = (flag, value)``:
    where ``flag`` is set, start from the partial sums stored in ``value`` at the point instead
    of zero. An input stored as phase rows (strided convolutions) is read as such. ``pack``:
    the block the weights are packed by (``kernel.pack_weight``), if not ``point.block`` (the
    narrower last block of a schedule whose block does not divide the channels)."""
    vectors = len(masked)
    b = k.builder
    a = node.attrs
    lanes, block = point.lanes, point.block
    x_type = k.type_of(node.inputs[0])
    sizes = k.spatial(node.inputs[0])
    kernel = a["kernel"]
    taps, last = math.prod(kernel), len(kernel) - 1
    groups = a["groups"]
    group_in = x_type.channels // groups
    per_group = a["out_channels"] // groups
    dilation, before = a["dilation"][last], a["pads"][last][0]
    # How input rows are stored: dense (stride 1 on the last axis), or as phase rows
    # (``emit_relayout``). ``first`` is the tile's element of tap 0 in a row, ``reach[t]`` how
    # far tap t is from it; either way a vector's lanes are consecutive elements.
    layout = x_type.layout
    step = 1  # elements from one position of a row to the next: C if stored channels last
    if not isinstance(layout, PhaseRows):
        assert a["stride"][last] == 1, "strided convolutions read phase rows (choose-layouts)"
        strides = k.strides(node.inputs[0])
        channel_stride, outer_strides, step = strides[0], strides[1:-1], strides[-1]
        if k.plane is not None:  # the flattened plane: every tap one offset along the row
            first = point.w
            reach: list[int | ir.Value] = list(k.plane.offsets)
        elif k.runtime_dilation:  # conv_schedule.dilation_stacks
            spacing = k.integer("dilation", dilation)
            first = b.sub(point.w, k.integer("pad", before))
            reach = [b.mul(spacing, i64(t)) for t in range(kernel[-1])]
        else:
            first = b.sub(point.w, i64(before))
            reach = [tap * dilation for tap in range(kernel[-1])]
    else:
        row_elements = layout.stride * layout.length
        channel_stride = math.prod(sizes[:-1]) * row_elements
        outer_strides = tuple(
            math.prod(sizes[axis + 1 : -1]) * row_elements for axis in range(last)
        )
        first = b.sub(point.w, i64(layout.first))
        reach = [tap_offset(layout, tap * dilation - before) for tap in range(kernel[-1])]
    x_entry = k.entry(node.inputs[0], point.n)

    # The channel count as the kernel knows it: a constant, or read at run time.
    channels_in = k.integer("group_in", group_in) if k.runtime_channels else i64(group_in)
    weight = k.packed_param(node.param("weight"), pack or block)
    weight = gep(b, weight, b.mul(point.c, b.mul(channels_in, i64(taps))))  # blocks before c
    # A tile's channels are in one group, or (depthwise and small groups) span whole groups:
    # channel j then reads input group ``first_group + j // per_group``.
    spans = max(1, block // per_group)
    first_group = b.udiv(point.c, i64(per_group))
    x_groups = [
        gep(b, x_entry, b.mul(b.add(first_group, i64(t)), b.mul(channels_in, i64(channel_stride))))
        for t in range(spans)
    ]

    # Lane masks of every (tap, vector) load, once per tile (phase rows need none).
    masks: dict[tuple[int, int], ir.Value] = {}
    row_taps = len(reach)  # taps along the row: the whole kernel on a flattened plane
    for v in range(vectors):
        if k.plane is not None:
            masks.update(plane_masks(b, k.plane, b.add(point.w, i64(v * lanes)), lanes, v))
            continue
        for tap in range(row_taps if masked[v] and not isinstance(layout, PhaseRows) else 0):
            start = b.add(first, _offset(b, reach[tap], v * lanes))
            masks[tap, v] = wide_mask(b, start, lanes, sizes[-1])

    accumulators = [
        [entry_alloca(b, vec_type(lanes, k.element), f"acc{j}_{v}") for v in range(vectors)]
        for j in range(block)
    ]
    for row in accumulators:
        for acc in row:
            b.store(fsplat(0.0, lanes, k.element), acc)
    if resume is not None:
        flag, partial = resume
        with b.if_then(flag):
            for v, at in enumerate(tile_vectors(b, point, vectors)):
                for j, value in enumerate(k.operand_at(partial, at)):
                    b.store(value, accumulators[j][v])

    def outer_taps(axis: int, row: ir.Value, tap_flat: ir.Value) -> None:
        """Loop over the valid taps of outer axis ``axis``, then deeper axes, then channels."""
        if axis == last:
            channel_loop(row, tap_flat)
            return
        start = b.sub(b.mul(point.outer[axis], i64(a["stride"][axis])), i64(a["pads"][axis][0]))
        d = a["dilation"][axis]
        lo, hi = tap_range(b, start, kernel[axis], d, sizes[axis])
        with for_range(b, lo, hi, name=f"tap{axis}") as tap:
            index = b.add(start, b.mul(tap, i64(d)))
            outer_taps(
                axis + 1,
                b.add(row, b.mul(index, i64(outer_strides[axis]))),
                b.add(tap_flat, b.mul(tap, i64(math.prod(kernel[axis + 1 :])))),
            )

    # Taps whose vectors coincide (dilation 4 on 8 lanes: taps 0 and 2 both load the
    # vectors at 8 and 16) run one after the other: LLVM loads such a vector once, and with
    # a tap between the two uses it kept it on the stack (L5 spilled 10 vectors per channel).
    tap_order = sorted(
        range(row_taps),
        key=lambda t: (reach[t] % lanes if isinstance(reach[t], int) else 0, t),
    )

    def channel_loop(row: ir.Value, tap_flat: ir.Value) -> None:
        start = first if step == 1 else b.mul(first, i64(step))
        row_bases = [gep(b, x_group, b.add(row, start)) for x_group in x_groups]
        weight_base = gep(b, weight, b.mul(tap_flat, i64(block)))
        with for_range(b, channels[0], channels[1], name="ci") as ci:
            x_rows = [gep(b, base, b.mul(ci, i64(channel_stride))) for base in row_bases]
            w_row = gep(b, weight_base, b.mul(ci, i64(taps * block)))
            values = [[b.load(acc) for acc in row_accs] for row_accs in accumulators]
            for tap in tap_order:
                xs = [
                    [
                        load_row(
                            b,
                            _at(b, x_row, reach[tap], v * lanes, step),
                            lanes,
                            masks.get((tap, v)),
                            step,
                            k.addresses.bounds,
                        )
                        for v in range(vectors)
                    ]
                    for x_row in x_rows
                ]
                for j in range(block):
                    w = splat(b, b.load(gep(b, w_row, tap * block + j)), lanes)
                    x = xs[j // per_group if spans > 1 else 0]
                    for v in range(vectors):
                        values[j][v] = fma(b, x[v], w, values[j][v])
            for row_accs, row_values in zip(accumulators, values, strict=True):
                for acc, value in zip(row_accs, row_values, strict=True):
                    b.store(value, acc)

    if k.plane is None:
        outer_taps(0, i64(0), i64(0))
    else:
        channel_loop(i64(0), i64(0))

    return [[b.load(accumulators[j][v]) for j in range(block)] for v in range(vectors)]


def plane_masks(
    b: ir.IRBuilder, plane: Plane, start: ir.Value, lanes: int, v: int
) -> dict[tuple[int, int], ir.Value]:
    """``{(tap, v): mask}`` for the vector of output positions ``start + [0, lanes)`` of a
    flattened plane: a lane loads tap ``t`` where its tap's row and column are inside the
    input (so every load stays inside the input plane, also for lanes past the last position,
    whose sums are never stored). Row and column tests are made once per distinct offset."""
    index = b.add(
        splat_i32(b, b.trunc(start, I32), lanes),
        ir.Constant(ir.VectorType(I32, lanes), list(range(lanes))),
    )

    def splat(value: int) -> ir.Constant:
        return ir.Constant(index.type, [value] * lanes)

    column = b.urem(index, splat(plane.width))
    rows = {}  # row offset r: the input row of the lane's tap is in [0, height)
    for r in set(plane.rows):
        moved = b.add(index, splat(r * plane.width))
        rows[r] = b.and_(
            b.icmp_signed(">=", moved, splat(0)),
            b.icmp_signed("<", moved, splat(plane.height * plane.width)),
        )
    cols = {}
    for c in set(plane.cols):
        moved = b.add(column, splat(c))
        cols[c] = b.and_(
            b.icmp_signed(">=", moved, splat(0)), b.icmp_signed("<", moved, splat(plane.width))
        )
    return {
        (t, v): b.and_(rows[r], cols[c])
        for t, (r, c) in enumerate(zip(plane.rows, plane.cols, strict=True))
    }


def runtime_interior(
    k: KernelBuilder, node: Node, in_size: int, lanes: int
) -> tuple[ir.Value, ir.Value]:
    """``conv_schedule.interior_range`` computed from the dilation and padding read at run
    time (``conv_schedule.dilation_stacks``)."""
    b = k.builder
    a = node.attrs
    before = k.integer("pad", a["pads"][-1][0])
    reach = b.mul(k.integer("dilation", a["dilation"][-1]), i64(a["kernel"][-1] - 1))
    hi = b.add(b.sub(b.add(i64(in_size), before), reach), i64(1 - lanes))
    return before, b.select(b.icmp_signed("<", hi, before), before, hi)


def interior_tiles(
    b: ir.IRBuilder,
    start: int,
    stop: int,
    step: int,
    lanes: int,
    inside: tuple[ir.Value, ir.Value],
) -> tuple[ir.Value, ir.Value]:
    """The run of tiles ``range(start, stop, step)`` whose every vector starts in ``inside``
    (``[lo, hi)``, known at run time), as two tile starts ``[first, end)``."""
    lo, hi = inside
    count = (stop - start) // step

    def tile_start(index: ir.Value) -> ir.Value:
        index = b.select(b.icmp_signed("<", index, i64(0)), i64(0), index)
        index = b.select(b.icmp_signed(">", index, i64(count)), i64(count), index)
        return b.add(i64(start), b.mul(index, i64(step)))

    # first: the first tile with start >= lo; end: past the last whose last vector is < hi
    first = tile_start(b.sdiv(b.add(b.sub(lo, i64(start)), i64(step - 1)), i64(step)))
    room = b.sub(hi, i64(start + step - lanes))  # tiles i with i * step < room
    room = b.select(b.icmp_signed("<", room, i64(0)), i64(0), room)
    end = tile_start(b.sdiv(b.add(room, i64(step - 1)), i64(step)))
    end = b.select(b.icmp_signed("<", end, first), first, end)
    return first, end


def _offset(b: ir.IRBuilder, reach: int | ir.Value, offset: int) -> ir.Value:
    return i64(reach + offset) if isinstance(reach, int) else b.add(reach, i64(offset))


def _at(
    b: ir.IRBuilder, row: ir.Value, reach: int | ir.Value, offset: int, step: int = 1
) -> ir.Value:
    """``&row[(reach + offset) * step]``: one constant offset when ``reach`` is known."""
    if isinstance(reach, int):
        return gep(b, row, (reach + offset) * step)
    scaled = reach if step == 1 else b.mul(reach, i64(step))
    return gep(b, gep(b, row, scaled), offset * step)


def tile_vectors(b: ir.IRBuilder, point: Point, count: int) -> list[Point]:
    """The points of a tile's ``count`` vectors from ``point``; a partial vector
    (``point.valid``) is the last."""
    return [
        dataclasses.replace(
            point,
            w=b.add(point.w, i64(v * point.lanes)),
            valid=point.valid if v == count - 1 else None,
        )
        for v in range(count)
    ]


def finish_tile(
    k: KernelBuilder, node: Node, point: Point, sums: list[list[ir.Value]]
) -> list[list[ir.Value]]:
    """Bias and activation on finished sums (``sums[v][j]`` as ``emit_conv_tile`` made them)."""
    b = k.builder
    a = node.attrs
    activation = ACTIVATIONS[a["activation"]]
    shifts: list[ir.Value | None] = [None] * point.block
    if a["bias"]:
        bias = k.param(node.param("bias"))
        shifts = [
            splat(b, b.load(gep(b, bias, b.add(point.c, i64(j)))), point.lanes)
            for j in range(point.block)
        ]
    return [
        [
            activation(b, value if shift is None else b.fadd(value, shift), a)
            for value, shift in zip(row, shifts, strict=True)
        ]
        for row in sums
    ]


TILE_EMITTERS = {
    **{f"conv{r}d": emit_conv_tile for r in (1, 2, 3)},
    **{f"depthwise{r}d": emit_conv_tile for r in (1, 2, 3)},
}


@dataclass
class RowTiles:
    """The register tiles of one work item and chunk of input channels (``lower``): ``point``
    holds the batch entry and outer indices, ``group`` the item's group of channel blocks;
    ``finish`` applies the epilogue to a tile's sums and stores them."""

    k: KernelBuilder
    anchor: Node
    plan: ConvSchedule
    point: Point
    group: ir.Value
    channels: tuple[ir.Value, ir.Value]  # this chunk's input channels [lo, hi)
    resume: tuple[ir.Value, int] | None
    finish: Callable[[Point, list[list[ir.Value]]], None]

    def blocks(self, vectors: int) -> Iterator[tuple[ir.Value, int, int]]:
        """``(first channel, block, pack)`` of the item's blocks for tiles of ``vectors``
        vectors, inside a loop over its full blocks, then of a narrower last block if any;
        ``pack`` is the block the weights are packed by."""
        b = self.k.builder
        out_channels = self.anchor.attrs["out_channels"]
        pack, rest = self.plan.tile_blocks(out_channels, vectors)
        count = self.plan.group if pack == self.plan.block else out_channels // pack
        with for_range(b, 0, count, name="block") as index:
            first = b.mul(self.group, i64(self.plan.group))  # 0 where items are whole rows
            yield b.mul(b.add(first, index), i64(pack)), pack, pack
        if rest:
            yield i64(out_channels - rest), rest, pack

    def tiles(self, w: ir.Value, masked: tuple[bool, ...], shape: tuple[int, int | None]) -> None:
        """Every block's tile at ``w``; ``shape`` is ``(lanes, valid)``."""
        for channels in self.blocks(len(masked)):
            self.tile(w, masked, shape, channels)

    def tile(
        self,
        w: ir.Value,
        masked: tuple[bool, ...],
        shape: tuple[int, int | None],
        channels: tuple[ir.Value, int, int],
    ) -> None:
        """The tile at ``w`` of one ``(first channel, block, pack)`` from ``blocks``; an input
        stored as phase rows needs no masks."""
        (lanes, valid), (channel, block, pack) = shape, channels
        if isinstance(self.k.type_of(self.anchor.inputs[0]).layout, PhaseRows):
            masked = (False,) * len(masked)
        point = dataclasses.replace(
            self.point, c=channel, block=block, w=w, lanes=lanes, valid=valid
        )
        emit = TILE_EMITTERS[self.anchor.op]
        self.finish(
            point, emit(self.k, self.anchor, point, masked, self.channels, self.resume, pack)
        )
