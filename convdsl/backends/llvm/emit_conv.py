"""Window geometry shared by the conv-like emitters (pools, transposed conv, conv tiles).

A point is a block of output channels (all in one group) times ``lanes`` consecutive outputs on
the last spatial axis. Taps on the outer axes are guarded by one uniform bounds check per point
(padding reads nothing); taps on the last axis load the input row with a lane mask that zeroes
padded positions, contiguously for stride 1 and lane by lane otherwise. Dilation only spaces the
tap offsets. The convolution itself is ``emit_conv_tile`` (a register tile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from convdsl.backends.llvm.kernel import KernelBuilder, Point, spatial_of, strides_of
from convdsl.backends.llvm.loops import (
    entry_alloca,
    fsplat,
    gep,
    i64,
    isplat,
    lane_ids,
    masked_gather,
    masked_load,
    vec_type,
)
from convdsl.ir.graph import Graph, Node


def conv_block(graph: Graph, node: Node) -> int:
    """Output channels per point: 4, 2 or 1, dividing the channels of a group."""
    per_group = node.attrs["out_channels"] // node.attrs["groups"]
    return next(block for block in (4, 2, 1) if per_group % block == 0)


def lane_mask(
    k: KernelBuilder, first: ir.Value, step: int, size: int, lanes: int
) -> tuple[ir.Value, ir.Value]:
    """Per-lane indices ``first + l * step`` and the mask of those inside ``[0, size)``."""
    b = k.builder
    steps = b.mul(lane_ids(lanes), isplat(b, i64(step), lanes))
    index = b.add(isplat(b, first, lanes), steps)
    inside = b.and_(
        b.icmp_signed(">=", index, isplat(b, i64(0), lanes)),
        b.icmp_signed("<", index, isplat(b, i64(size), lanes)),
    )
    return index, inside


def load_row(
    k: KernelBuilder,
    row: ir.Value,
    first: ir.Value,
    index: ir.Value,
    mask: ir.Value,
    step: int,
    lanes: int,
    fill: float = 0.0,
) -> ir.Value:
    """Masked lanes of ``row[first + l * step]`` (``fill`` where the mask is off)."""
    if step == 1:
        return masked_load(k.builder, gep(k.builder, row, first), mask, lanes, fill)
    return masked_gather(k.builder, row, index, mask, lanes, fill)


def outer_taps(
    k: KernelBuilder,
    point: Point,
    taps: tuple[ir.Value, ...],
    attrs: dict,
    sizes: tuple[int, ...],
    strides: tuple[int, ...],
) -> tuple[ir.Value | None, ir.Value]:
    """For (runtime) taps on the outer axes: the condition that they are all inside the input
    (None if there are no outer axes) and the element offset of the input row they select."""
    b = k.builder
    condition: ir.Value | None = None
    offset: ir.Value = i64(0)
    for axis, (out_index, tap) in enumerate(zip(point.outer, taps, strict=True)):
        before = attrs["pads"][axis][0]
        start = b.mul(out_index, i64(attrs["stride"][axis]))
        index = b.add(b.add(start, b.mul(tap, i64(attrs["dilation"][axis]))), i64(-before))
        inside = b.and_(
            b.icmp_signed(">=", index, i64(0)), b.icmp_signed("<", index, i64(sizes[axis]))
        )
        condition = inside if condition is None else b.and_(condition, inside)
        offset = b.add(offset, b.mul(index, i64(strides[axis])))
    return condition, offset


def flat_tap(b: ir.IRBuilder, taps: tuple[ir.Value, ...], kernel: tuple[int, ...]) -> ir.Value:
    """Row-major index of the outer taps in the weight's kernel dims (times the last dim)."""
    flat: ir.Value = i64(0)
    for axis, tap in enumerate(taps):
        flat = b.add(flat, b.mul(tap, i64(math.prod(kernel[axis + 1 :]))))
    return flat


@dataclass(frozen=True)
class ConvSetup:
    """What every direct (and transposed) conv emitter computes first for one point."""

    sizes: tuple[int, ...]
    strides: tuple[int, ...]
    kernel: tuple[int, ...]
    taps: int
    group_in: int
    per_group: int
    accumulators: list[ir.Value]
    first_channel: ir.Value
    x_entry: ir.Value


def conv_setup(k: KernelBuilder, node: Node, point: Point, prefix: str) -> ConvSetup:
    """Input geometry, zeroed accumulators (one vector per output channel of the block) and
    the first input channel of the point's group."""
    b = k.builder
    x = node.inputs[0]
    x_type = k.type_of(x)
    groups = node.attrs["groups"]
    group_in = x_type.channels // groups
    per_group = node.attrs["out_channels"] // groups
    accumulators = [
        entry_alloca(b, vec_type(point.lanes, k.element), f"{prefix}{j}")
        for j in range(point.block)
    ]
    for acc in accumulators:
        b.store(fsplat(0.0, point.lanes, k.element), acc)
    group = b.udiv(point.c, i64(per_group))
    return ConvSetup(
        sizes=spatial_of(x_type),
        strides=strides_of(x_type),
        kernel=node.attrs["kernel"],
        taps=math.prod(node.attrs["kernel"]),
        group_in=group_in,
        per_group=per_group,
        accumulators=accumulators,
        first_channel=b.mul(group, i64(group_in)),
        x_entry=k.entry(x, point.n),
    )


class maybe:
    """``builder.if_then(condition)``, or nothing when the condition is always true."""

    def __init__(self, builder: ir.IRBuilder, condition: ir.Value | None) -> None:
        self.builder, self.condition = builder, condition
        self.context = builder.if_then(condition) if condition is not None else None

    def __enter__(self) -> None:
        if self.context is not None:
            self.context.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
