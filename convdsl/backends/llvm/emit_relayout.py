"""The ``relayout`` kernel: a value copied into phase rows (``PhaseRows``, chosen by the
``choose-layouts`` pass for the input of a convolution with stride ``s > 1`` on the last axis),
or between dense and channels-last storage (``ChannelsLast``, ``passes.boundary``).

Phase ``p`` of a row holds ``x[j * s + p]`` for ``j`` in ``[first, first + length)``, zero
where ``j * s + p`` falls outside the row. The convolution's tap ``t`` with ``t * d - pad = q *
s + p`` then reads phase row ``p`` at ``w + q`` (``tap_offset``): consecutive elements, no
shuffle, and no lane masks either (the zeros are the padding, and every row is long enough for
the whole vectors of the last tile). The copy is one pass over the input: one (masked at the
row's ends) load of ``lanes * s`` inputs makes one vector of every phase.
"""

from __future__ import annotations

import dataclasses
import math

from llvmlite import ir

from convdsl.backends.llvm.kernel import KernelBuilder, Point, spatial_of
from convdsl.backends.llvm.loops import (
    I1,
    I32,
    for_range,
    gep,
    i64,
    load_vec,
    masked_load,
    masked_store,
    store_vec,
    unflatten,
    wide_mask,
)
from convdsl.backends.llvm.strided import strided_load
from convdsl.ir.graph import Node
from convdsl.ir.types import PhaseRows


def tap_offset(layout: PhaseRows, offset: int) -> int:
    """Where input ``w * s + offset`` is, counted from element ``w - first`` of phase row 0:
    phase ``offset mod s``, ``offset // s`` further along."""
    q, p = divmod(offset, layout.stride)
    return p * layout.length + q


def relayout_kernel(k: KernelBuilder, node: Node) -> None:
    """Copy every input row of ``node`` into its output's phase rows, or convert between
    dense and channels-last (``convert_kernel``)."""
    if not isinstance(k.type_of(node.output).layout, PhaseRows):
        convert_kernel(k, node)
        return
    phase_rows_kernel(k, node)


def convert_kernel(k: KernelBuilder, node: Node) -> None:
    """A value copied between dense and channels-last storage, one row of one channel at a
    time: vectors of consecutive positions, loaded or stored ``C`` elements apart on the
    channels-last side (``KernelBuilder.operand_at``, ``store``)."""
    b = k.builder
    source, target = node.inputs[0], node.output
    out_type = k.type_of(target)
    sizes = spatial_of(out_type)
    channels = out_type.channels
    rows = channels * math.prod(sizes[:-1])
    with k.items(b.mul(k.batch, i64(rows)), name="row") as item:
        n, *outer, channel = unflatten(b, item, (*sizes[:-1], channels))
        row = Point(n, channel, 1, tuple(outer), i64(0), k.lanes)
        whole = sizes[-1] // k.lanes * k.lanes
        if whole:
            with for_range(b, 0, whole, k.lanes, name="w") as w:
                point = dataclasses.replace(row, w=w)
                k.store(target, point, k.operand_at(source, point))
        if whole < sizes[-1]:
            point = dataclasses.replace(row, w=i64(whole), valid=sizes[-1] - whole)
            k.store(target, point, k.operand_at(source, point))


def phase_rows_kernel(k: KernelBuilder, node: Node) -> None:
    """Copy every input row of ``node`` into its output's phase rows; an input stored
    channels-last is read ``C`` elements apart (``strided``), still in one pass."""
    b = k.builder
    source, target = node.inputs[0], node.output
    layout = k.type_of(target).layout
    assert isinstance(layout, PhaseRows), "relayout to phase rows"
    in_type = k.type_of(source)
    width = spatial_of(in_type)[-1]
    rows = in_type.stored_elements // width
    step = k.strides(source)[-1]  # C for a channels-last input
    outer = rows // in_type.channels
    lanes, s = k.lanes, layout.stride
    vectors, tail = divmod(layout.length, lanes)  # a row's whole vectors, then a partial one
    # Vector v loads inputs from (first + v * lanes) * s on: inside the row for v in [lo, hi).
    lo = min(vectors, -(layout.first // lanes))
    hi = max(lo, min(vectors, (width - layout.first * s) // (lanes * s)))
    picks = [
        ir.Constant(ir.VectorType(I32, lanes), [p + lane * s for lane in range(lanes)])
        for p in range(s)
    ]
    with k.items(b.mul(k.batch, i64(rows)), name="row") as item:
        n, row = unflatten(b, item, (rows,))
        if step == 1:
            row_in = gep(b, k.entry(source, n), b.mul(row, i64(width)))
        else:  # row (c, o) of a channels-last input starts at o * width * C + c
            channel, within = b.udiv(row, i64(outer)), b.urem(row, i64(outer))
            first_in = b.add(b.mul(within, i64(width * step)), channel)
            row_in = gep(b, k.entry(source, n), first_in)
        row_out = gep(b, k.entry(target, n), b.mul(row, i64(s * layout.length)))

        def copy(vector: ir.Value, masked: bool, stored: int = lanes) -> None:
            start = b.mul(b.add(b.mul(vector, i64(lanes)), i64(layout.first)), i64(s))
            at = gep(b, row_in, start if step == 1 else b.mul(start, i64(step)))
            mask = wide_mask(b, start, lanes * s, width) if masked else None
            if step != 1:
                wide = strided_load(b, at, step, lanes * s, mask, k.addresses.bounds)
            elif mask is not None:
                wide = masked_load(b, at, mask, lanes * s)
            else:
                wide = load_vec(b, at, lanes * s)
            undefined = ir.Constant(wide.type, ir.Undefined)
            keep = ir.Constant(ir.VectorType(I1, lanes), [e < stored for e in range(lanes)])
            for p in range(s):
                phase = b.shuffle_vector(wide, undefined, picks[p])
                offset = b.add(b.mul(vector, i64(lanes)), i64(p * layout.length))
                if stored == lanes:
                    store_vec(b, phase, gep(b, row_out, offset))
                else:
                    masked_store(b, phase, gep(b, row_out, offset), keep)

        for start, stop, masked in ((0, lo, True), (lo, hi, False), (hi, vectors, True)):
            if stop > start:
                with for_range(b, start, stop, name="v") as vector:
                    copy(vector, masked)
        if tail:
            copy(i64(vectors), True, tail)
