"""Transposed convolution split by output phase: a whole-kernel emitter (no per-lane validity).

On an axis with stride ``s``, dilation ``d`` and ``before`` cropped positions, output ``o``
receives input ``i`` through tap ``t`` when ``o + before = i*s + t*d``. Write ``o = p + s*q``
with the *phase* ``p = o mod s``: the valid taps are those with ``t*d ≡ p + before (mod s)``,
the same for every output of that phase, and the input index is ``i = q + e_t`` with the
constant ``e_t = (p + before - t*d) / s``. So one phase of the output is a plain stride-1
correlation over ``q`` with a few taps: no tap is walked that contributes nothing, and the
input row is read contiguously (masked only near its ends). Valid taps of a phase form an
arithmetic progression (tap step ``s/g``, input step ``-d/g``, ``g = gcd(s, d)``).

A work item is (batch entry, block of output channels, output index on every outer axis);
outer-axis phases are looked up at run time in small constant tables. The last axis is unrolled
per phase at compile time; ``lanes`` consecutive ``q`` of one phase are computed in registers
(one input vector feeds a block of output channels) and stored at stride ``s`` (contiguously
when ``s == 1``). Positions that no tap reaches (``output_padding``, or crops) get the bias.
Weights are ``[C, O/groups, *K]``; bias and activation are applied before the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from convdsl.backends.llvm.emit_elementwise import ACTIVATIONS
from convdsl.backends.llvm.kernel import KernelBuilder, spatial_of, strides_of
from convdsl.backends.llvm.loops import (
    I1,
    I32,
    I64,
    entry_alloca,
    fma,
    for_range,
    fsplat,
    gep,
    i64,
    isplat,
    lane_ids,
    load_vec,
    masked_load,
    masked_store,
    splat,
    store_vec,
    vec_type,
)
from convdsl.backends.llvm.parallel import thread_share
from convdsl.ir.graph import Node

MAX_BLOCK = 8  # output channels per work item: accumulators + input + weight fit 16 registers


@dataclass(frozen=True)
class Phase:
    """The taps of one output phase on one axis: tap ``t0 + m*dt`` reads input ``q + e0 -
    m*de`` for ``m < count``."""

    t0: int
    e0: int
    count: int


def phases(
    stride: int, dilation: int, before: int, kernel: int
) -> tuple[tuple[Phase, ...], int, int]:
    """Per phase ``p in range(stride)``, its taps; and the steps ``(dt, de)``."""
    g = math.gcd(stride, dilation)
    dt, de = stride // g, dilation // g
    table = []
    for p in range(stride):
        taps = [t for t in range(kernel) if (p + before - t * dilation) % stride == 0]
        if not taps:
            table.append(Phase(0, 0, 0))
            continue
        t0 = taps[0]
        assert taps == list(range(t0, kernel, dt))
        table.append(Phase(t0, (p + before - t0 * dilation) // stride, len(taps)))
    return tuple(table), dt, de


def transpose_block(per_group: int) -> int:
    """The largest divisor of the channels of a group up to ``MAX_BLOCK``."""
    return next(b for b in range(MAX_BLOCK, 0, -1) if per_group % b == 0)


def pack_transposed(weight: np.ndarray, block: int) -> np.ndarray:
    """``[C, O/groups, *K]`` -> ``[O/groups/block, taps, C, block]`` (contiguous float32): for
    one tap, a group's input channels times a block of outputs are adjacent."""
    channels, per_group = weight.shape[:2]
    blocks = weight.reshape(channels, per_group // block, block, -1)
    return np.ascontiguousarray(blocks.transpose(1, 3, 0, 2), dtype=np.float32)


def packed_transposed(k: KernelBuilder, name: str, block: int) -> ir.Value:
    """``float*`` to ``pack_transposed(name, block)``, made by the executable at bind time."""
    key = f"{name}@tpack{block}"
    if key not in k.param_index:
        k.param_index[key] = len(k.param_index)
        k.packings[key] = (name, block)
    return k.param(key)


def _table(b: ir.IRBuilder, values: list[int]) -> ir.Value:
    """A private constant ``i64`` array in the module; returns its ``i64*``."""
    module = b.module
    ty = ir.ArrayType(I64, len(values))
    table = ir.GlobalVariable(module, ty, module.get_unique_name("tphase"))
    table.global_constant = True
    table.linkage = "private"
    table.initializer = ir.Constant(ty, values)
    return b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, 0)])


def _segments(count: int, lanes: int, lo: int, hi: int) -> list[tuple[int, int, bool]]:
    """Cover the full vectors ``range(0, count // lanes * lanes, lanes)`` with runs ``(start,
    stop, interior)``, interior where ``lo <= q <= hi`` (every tap reads inside the row)."""
    full = count // lanes * lanes
    first = min(full, -(-max(lo, 0) // lanes) * lanes)
    last = min(hi, full - lanes)  # the last interior start
    inner = max(0, (last - first) // lanes + 1) if last >= first else 0
    middle = first + inner * lanes
    runs = [(0, first, False), (first, middle, True), (middle, full, False)]
    return [run for run in runs if run[1] > run[0]]


def conv_transpose_kernel(k: KernelBuilder, node: Node) -> None:
    b = k.builder
    a = node.attrs
    x = node.inputs[0]
    x_type, y_type = k.type_of(x), k.type_of(node.output)
    in_sizes, in_strides = spatial_of(x_type), strides_of(x_type)
    out_sizes, out_strides = spatial_of(y_type), strides_of(y_type)
    kernel = tuple(a["kernel"])
    rank = len(kernel)
    taps = math.prod(kernel)
    groups = a["groups"]
    group_in = x_type.channels // groups
    per_group = a["out_channels"] // groups
    block = transpose_block(per_group)
    lanes = k.lanes
    axes = [
        phases(a["stride"][axis], a["dilation"][axis], a["pads"][axis][0], kernel[axis])
        for axis in range(rank)
    ]
    outer_sizes = out_sizes[:-1]
    per_batch = a["out_channels"] // block * math.prod(outer_sizes)
    lo, hi = thread_share(b, b.mul(k.batch, i64(per_batch)))
    weight = packed_transposed(k, node.param("weight"), block)
    bias = k.param(node.param("bias")) if a["bias"] else None
    activation = ACTIVATIONS[a["activation"]]
    accumulators = [entry_alloca(b, vec_type(lanes), f"pacc{j}") for j in range(block)]
    tables = []
    for axis in range(rank - 1):
        table, _, _ = axes[axis]
        flat = [v for ph in table for v in (ph.t0, ph.e0, ph.count)]
        tables.append(_table(b, flat))
    with for_range(b, lo, hi, name="titem") as item:
        n = b.udiv(item, i64(per_batch))
        rest = b.urem(item, i64(per_batch))
        outer: list[ir.Value] = []
        for size in reversed(outer_sizes):
            outer.insert(0, b.urem(rest, i64(size)))
            rest = b.udiv(rest, i64(size))
        channel = b.mul(rest, i64(block))  # first output channel of the block
        group = b.udiv(channel, i64(per_group))
        first_in = b.mul(group, i64(group_in))
        x_entry = gep(b, k.entry(x, n), b.mul(first_in, i64(in_strides[0])))
        # packed [O/g/block, taps, C, block]: (c, ob*block + j, t) at ((ob*taps + t)*C + c)*block+j
        o_block = b.udiv(b.urem(channel, i64(per_group)), i64(block))
        w_base = b.add(
            b.mul(o_block, i64(taps * x_type.channels * block)), b.mul(first_in, i64(block))
        )
        y_row = b.mul(channel, i64(out_strides[0]))
        for axis, o in enumerate(outer):
            y_row = b.add(y_row, b.mul(o, i64(out_strides[axis + 1])))
        y_row = gep(b, k.entry(node.output, n), y_row)
        # Outer-axis phase of this item: (t0, e0, count) per axis, and q.
        looked: list[tuple[ir.Value, ir.Value, ir.Value, ir.Value]] = []
        for axis, o in enumerate(outer):
            stride = a["stride"][axis]
            p = b.urem(o, i64(stride))
            q = b.udiv(o, i64(stride))
            at = b.mul(p, i64(3))
            t0, e0, count = (b.load(gep_i64(b, tables[axis], b.add(at, i64(f)))) for f in range(3))
            looked.append((t0, b.add(q, e0), count, q))
        biases = [
            splat(b, b.load(gep(b, bias, b.add(channel, i64(j)))), lanes)
            if bias is not None
            else fsplat(0.0, lanes)
            for j in range(block)
        ]
        context = _Context(
            k,
            node,
            accumulators,
            biases,
            activation,
            x_entry,
            weight,
            w_base,
            y_row,
            looked,
            axes,
            in_sizes,
            in_strides,
            kernel,
            group_in,
            per_group,
            taps,
            lanes,
            x_type.channels,
            block,
        )
        last_table, _, _ = axes[-1]
        stride = a["stride"][-1]
        for p, phase in enumerate(last_table):
            count = len(range(p, out_sizes[-1], stride))
            if count == 0:
                continue
            context.phase_row(p, phase, count)


def gep_i64(b: ir.IRBuilder, base: ir.Value, index: ir.Value) -> ir.Value:
    return b.gep(base, [index])


@dataclass
class _Context:
    """Everything one work item's last-axis phases need (built once per item)."""

    k: KernelBuilder
    node: Node
    accumulators: list[ir.Value]
    biases: list[ir.Value]
    activation: object
    x_entry: ir.Value  # first input channel of the group, this batch entry
    weight: ir.Value
    w_base: ir.Value  # weight offset of (first_in, channel, tap 0)
    y_row: ir.Value  # output (channel, *outer, 0)
    looked: list[tuple[ir.Value, ir.Value, ir.Value, ir.Value]]  # (t0, q + e0, count, q)
    axes: list[tuple[tuple[Phase, ...], int, int]]
    in_sizes: tuple[int, ...]
    in_strides: tuple[int, ...]
    kernel: tuple[int, ...]
    group_in: int
    per_group: int
    taps: int
    lanes: int
    channels: int  # input channels (all groups): the packed weight's third dim
    block: int

    def phase_row(self, p: int, phase: Phase, count: int) -> None:
        """Every output of last-axis phase ``p`` in this item's row: ``count`` of them."""
        b = self.k.builder
        _, dt, de = self.axes[-1]
        width = self.in_sizes[-1]
        lanes = self.lanes
        reads = [(phase.t0 + m * dt, phase.e0 - m * de) for m in range(phase.count)]
        if reads:
            lo = -min(e for _, e in reads)
            hi = width - lanes - max(e for _, e in reads)
        else:
            lo, hi = 0, count  # nothing is read: every vector is interior
        for start, stop, interior in _segments(count, lanes, lo, hi):
            with for_range(b, start, stop, lanes, name=f"tq{p}") as q:
                self.vector(p, q, reads, interior, lanes)
        tail = count % lanes
        if tail:
            self.vector(p, i64(count - tail), reads, False, tail)

    def vector(
        self, p: int, q: ir.Value, reads: list[tuple[int, int]], interior: bool, valid: int
    ) -> None:
        """``lanes`` outputs ``p + s*(q + l)`` of the block's channels (only ``l < valid``
        stored)."""
        b = self.k.builder
        lanes = self.lanes
        for acc in self.accumulators:
            b.store(fsplat(0.0, lanes), acc)
        self._outer_taps(0, i64(0), i64(0), q, reads, interior)
        stride = self.node.attrs["stride"][-1]
        out = gep(b, self.y_row, b.add(b.mul(q, i64(stride)), i64(p)))
        for j, acc in enumerate(self.accumulators):
            value = self.activation(b, b.fadd(b.load(acc), self.biases[j]), self.node.attrs)  # type: ignore[operator]
            row = gep(b, out, j * self._out_channel_stride())
            if stride == 1:
                if valid == lanes:
                    store_vec(b, value, row)
                else:
                    mask = ir.Constant(
                        ir.VectorType(I1, lanes), [lane < valid for lane in range(lanes)]
                    )
                    masked_store(b, value, row, mask)
                continue
            for lane in range(valid):
                element = b.extract_element(value, ir.Constant(I32, lane))
                b.store(element, gep(b, row, lane * stride))

    def _out_channel_stride(self) -> int:
        return strides_of(self.k.type_of(self.node.output))[0]

    def _outer_taps(
        self,
        axis: int,
        x_offset: ir.Value,
        w_offset: ir.Value,
        q: ir.Value,
        reads: list[tuple[int, int]],
        interior: bool,
    ) -> None:
        """Loop over the valid taps of outer axis ``axis`` (then deeper axes, then the last)."""
        b = self.k.builder
        if axis == len(self.looked):
            self._last_taps(x_offset, w_offset, q, reads, interior)
            return
        t0, first, count, _ = self.looked[axis]
        _, dt, de = self.axes[axis]
        tap_stride = math.prod(self.kernel[axis + 1 :])
        with for_range(b, 0, count, name=f"to{axis}") as m:
            index = b.sub(first, b.mul(m, i64(de)))
            inside = b.and_(
                b.icmp_signed(">=", index, i64(0)),
                b.icmp_signed("<", index, i64(self.in_sizes[axis])),
            )
            with b.if_then(inside):
                tap = b.add(t0, b.mul(m, i64(dt)))
                self._outer_taps(
                    axis + 1,
                    b.add(x_offset, b.mul(index, i64(self.in_strides[axis + 1]))),
                    b.add(w_offset, b.mul(tap, i64(tap_stride))),
                    q,
                    reads,
                    interior,
                )

    def _last_taps(
        self,
        x_offset: ir.Value,
        w_offset: ir.Value,
        q: ir.Value,
        reads: list[tuple[int, int]],
        interior: bool,
    ) -> None:
        b = self.k.builder
        lanes = self.lanes
        width = self.in_sizes[-1]
        per_tap = self.channels * self.block
        for tap, e in reads:
            start = b.add(q, i64(e))
            if not interior:
                index = b.add(isplat(b, start, lanes), lane_ids(lanes))
                mask = b.and_(
                    b.icmp_signed(">=", index, isplat(b, i64(0), lanes)),
                    b.icmp_signed("<", index, isplat(b, i64(width), lanes)),
                )
            row0 = gep(b, self.x_entry, b.add(x_offset, start))
            tap_offset = b.mul(b.add(w_offset, i64(tap)), i64(per_tap))
            w0 = gep(b, self.weight, b.add(self.w_base, tap_offset))
            with for_range(b, 0, self.group_in, name="tci") as ci:
                row = gep(b, row0, b.mul(ci, i64(self.in_strides[0])))
                xv = load_vec(b, row, lanes) if interior else masked_load(b, row, mask, lanes)
                weights = gep(b, w0, b.mul(ci, i64(self.block)))
                for j, acc in enumerate(self.accumulators):
                    w = b.load(gep(b, weights, j))
                    b.store(fma(b, xv, splat(b, w, lanes), b.load(acc)), acc)


KERNELS = {f"conv_transpose{r}d": conv_transpose_kernel for r in (1, 2, 3)}
