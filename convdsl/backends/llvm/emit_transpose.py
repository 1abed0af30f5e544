"""Transposed convolution as a gather: no zero-stuffed input is ever built.

Output ``y`` on an axis receives input ``i`` through tap ``t`` when ``y = i*s + t*d - before``,
i.e. when ``y + before - t*d`` is a multiple of the stride ``s`` and its quotient ``i`` is inside
the input. Outer-axis taps are unrolled with one uniform check of that condition; last-axis taps
load with a lane mask (contiguously for stride 1, lane by lane otherwise). Positions added by
``output_padding`` see no tap and hold the bias. Weights are ``[C, O/groups, *K]``.
"""

from __future__ import annotations

from llvmlite import ir

from convdsl.backends.llvm import emit_transpose_phase
from convdsl.backends.llvm.emit_conv import conv_block, conv_setup, flat_tap, maybe
from convdsl.backends.llvm.emit_elementwise import ACTIVATIONS
from convdsl.backends.llvm.kernel import KernelBuilder, Point
from convdsl.backends.llvm.loops import (
    fma,
    for_range,
    gep,
    i64,
    isplat,
    lane_ids,
    loop_nest,
    masked_gather,
    masked_load,
    splat,
)
from convdsl.ir.graph import Node


def _source(
    b: ir.IRBuilder, position: ir.Value, shift: int, step: int, size: int, lanes: int
) -> tuple[ir.Value, ir.Value]:
    """Input index ``(position + shift) / step`` and whether it exists (divisible, inside);
    scalar when ``lanes == 0``, per lane otherwise."""

    def const(value: int) -> ir.Value:
        return isplat(b, i64(value), lanes) if lanes else i64(value)

    shifted = b.add(position, const(shift))
    # Floor division and a non-negative check keep negative positions out.
    nonneg = b.icmp_signed(">=", shifted, const(0))
    safe = b.select(nonneg, shifted, const(0))
    index = b.udiv(safe, const(step))
    exact = b.icmp_signed("==", b.urem(safe, const(step)), const(0))
    inside = b.icmp_signed("<", index, const(size))
    return index, b.and_(b.and_(nonneg, exact), inside)


def emit_conv_transpose(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    b = k.builder
    a = node.attrs
    lanes = point.lanes
    c = conv_setup(k, node, point, "tacc")
    sizes, strides, kernel, taps = c.sizes, c.strides, c.kernel, c.taps
    group_in, per_group = c.group_in, c.per_group
    accumulators, first_channel, x_entry = c.accumulators, c.first_channel, c.x_entry
    local = b.urem(point.c, i64(per_group))
    weight = k.param(node.param("weight"))
    last = len(kernel) - 1
    positions = b.add(isplat(b, point.w, lanes), lane_ids(lanes))
    with loop_nest(b, kernel[:-1], name="ttap") as outer_list:
        outer = tuple(outer_list)
        condition = None
        row_offset: ir.Value = i64(0)
        for axis, (out_index, tap) in enumerate(zip(point.outer, outer, strict=True)):
            shifted = b.sub(out_index, b.mul(tap, i64(a["dilation"][axis])))
            index, ok = _source(b, shifted, a["pads"][axis][0], a["stride"][axis], sizes[axis], 0)
            condition = ok if condition is None else b.and_(condition, ok)
            row_offset = b.add(row_offset, b.mul(index, i64(strides[axis + 1])))
        flat_outer = flat_tap(b, outer, kernel)
        with maybe(b, condition):
            for tap in range(kernel[-1]):
                shift = a["pads"][last][0] - tap * a["dilation"][last]
                index, mask = _source(b, positions, shift, a["stride"][last], sizes[last], lanes)
                with for_range(b, 0, group_in, name="tci") as ci:
                    channel = b.add(first_channel, ci)
                    row = gep(b, x_entry, b.add(b.mul(channel, i64(strides[0])), row_offset))
                    if a["stride"][last] == 1:
                        start = b.add(point.w, i64(shift))
                        xv = masked_load(b, gep(b, row, start), mask, lanes)
                    else:
                        xv = masked_gather(b, row, index, mask, lanes)
                    # weight[c, o_local + j, tap]
                    base = b.mul(b.add(b.mul(ci, i64(per_group)), local), i64(taps))
                    base = b.add(base, b.mul(first_channel, i64(per_group * taps)))
                    for j, acc in enumerate(accumulators):
                        offset = b.add(base, b.add(flat_outer, i64(j * taps + tap)))
                        w = b.load(gep(b, weight, offset))
                        b.store(fma(b, xv, splat(b, w, lanes), b.load(acc)), acc)
    results = [b.load(acc) for acc in accumulators]
    if a["bias"]:
        bias = k.param(node.param("bias"))
        results = [
            b.fadd(r, splat(b, b.load(gep(b, bias, b.add(point.c, i64(j)))), lanes))
            for j, r in enumerate(results)
        ]
    activation = ACTIVATIONS[a["activation"]]
    return [activation(b, r, a) for r in results]


EMITTERS = {f"conv_transpose{r}d": emit_conv_transpose for r in (1, 2, 3)}
BLOCKS = {name: conv_block for name in EMITTERS}
# Alone (or as one step of a part-by-part fused kernel) the op runs split by output phase.
KERNELS = emit_transpose_phase.KERNELS
