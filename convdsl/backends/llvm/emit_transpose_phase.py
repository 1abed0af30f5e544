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
outer-axis phases are looked up at run time in small constant tables. On the last axis every
phase is computed at once: ``lanes`` consecutive ``q`` of each phase for each channel of the
block, in registers (one input vector per distinct shift ``e_t`` feeds every tap that reads
it), then interleaved with shuffles into ``s * lanes`` contiguous outputs. Positions that no
tap reaches (``output_padding``, or crops) get the bias.
Weights are ``[C, O/groups, *K]``; bias and activation are applied before the store
(``Store``): into the output, or in a fused kernel (a skip-add after the upsampling) through
the fused parts first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir

from convdsl.backends.llvm.emit_elementwise import ACTIVATIONS
from convdsl.backends.llvm.kernel import KernelBuilder, Point, spatial_of, strides_of
from convdsl.backends.llvm.loops import (
    I32,
    I64,
    concat,
    entry_alloca,
    fma,
    for_range,
    fsplat,
    gep,
    i64,
    load_vec,
    masked_load,
    pick,
    splat,
    vec_type,
    wide_mask,
)
from convdsl.ir.graph import Node

# Stores one output vector (its point: one channel, ``lanes`` positions).
Store = Callable[[Point, ir.Value], None]
MAX_BLOCK = 8  # output channels per work item
# Accumulators (block x last-axis stride) stay in registers next to the inputs and a weight.
MAX_ACCUMULATORS = 12


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


def transpose_block(per_group: int, stride: int) -> int:
    """The largest divisor of the channels of a group with ``block * stride`` accumulators
    (every last-axis phase of every channel of the block) within ``MAX_ACCUMULATORS``."""
    limit = max(1, min(MAX_BLOCK, MAX_ACCUMULATORS // stride))
    return next(b for b in range(limit, 0, -1) if per_group % b == 0)


def pack_transposed(weight: np.ndarray, block: int, dtype: np.dtype) -> np.ndarray:
    """``[C, O/groups, *K]`` -> ``[O/groups/block, taps, C, block]`` (contiguous, of ``dtype``):
    for one tap, a group's input channels times a block of outputs are adjacent."""
    channels, per_group = weight.shape[:2]
    blocks = weight.reshape(channels, per_group // block, block, -1)
    return np.ascontiguousarray(blocks.transpose(1, 3, 0, 2), dtype=dtype)


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


def conv_transpose_kernel(k: KernelBuilder, node: Node, store: Store | None = None) -> None:
    """The whole kernel of transposed conv ``node``; ``store``: how each output vector is
    stored (default: into ``node``'s output)."""
    if store is None:

        def store(point: Point, vector: ir.Value) -> None:
            k.store(node.output, point, [vector])

    b = k.builder
    a = node.attrs
    x = node.inputs[0]
    x_type, y_type = k.type_of(x), k.type_of(node.output)
    in_sizes, in_strides = spatial_of(x_type), strides_of(x_type)
    out_sizes = spatial_of(y_type)
    kernel = tuple(a["kernel"])
    rank = len(kernel)
    taps = math.prod(kernel)
    groups = a["groups"]
    group_in = x_type.channels // groups
    per_group = a["out_channels"] // groups
    block = transpose_block(per_group, a["stride"][-1])
    lanes = k.lanes
    axes = [
        phases(a["stride"][axis], a["dilation"][axis], a["pads"][axis][0], kernel[axis])
        for axis in range(rank)
    ]
    outer_sizes = out_sizes[:-1]
    per_batch = a["out_channels"] // block * math.prod(outer_sizes)
    items = b.mul(k.batch, i64(per_batch))
    weight = packed_transposed(k, node.param("weight"), block)
    bias = k.param(node.param("bias")) if a["bias"] else None
    activation = ACTIVATIONS[a["activation"]]
    accumulators = [
        entry_alloca(b, vec_type(lanes, k.element), f"pacc{j}")
        for j in range(block * a["stride"][-1])
    ]
    tables = []
    for axis in range(rank - 1):
        table, _, _ = axes[axis]
        flat = [v for ph in table for v in (ph.t0, ph.e0, ph.count)]
        tables.append(_table(b, flat))
    with k.items(items, name="titem") as item:
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
            else fsplat(0.0, lanes, k.element)
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
            Point(n, channel, 1, tuple(outer), i64(0), lanes),
            store,
        )
        context.row(out_sizes[-1])


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
    item: Point  # the item's batch entry, first channel and outer indices
    store: Store  # where an output vector goes (module doc)
    # Set by ``row``: per last-axis phase its (tap, input shift) pairs; the distinct shifts.
    reads: list[list[tuple[int, int]]] = field(default_factory=list)
    shifts: list[int] = field(default_factory=list)

    def row(self, out_width: int) -> None:
        """Every output of this item's row: ``lanes`` consecutive ``q`` of every last-axis
        phase at once (all taps of the last axis per input channel), interleaved in registers
        into ``stride * lanes`` contiguous outputs."""
        table, dt, de = self.axes[-1]
        stride = len(table)
        lanes = self.lanes
        self.reads = [[(ph.t0 + m * dt, ph.e0 - m * de) for m in range(ph.count)] for ph in table]
        self.shifts = sorted({e for reads in self.reads for _, e in reads})
        counts = [len(range(p, out_width, stride)) for p in range(stride)]
        if self.shifts:
            lo = -self.shifts[0]
            hi = self.in_sizes[-1] - lanes - self.shifts[-1]
        else:
            lo, hi = 0, min(counts)  # nothing is read: every vector is interior
        b = self.k.builder
        for start, stop, interior in _segments(min(counts), lanes, lo, hi):
            with for_range(b, start, stop, lanes, name="tq") as q:
                self.vector(q, interior, None)
        # The last vector of the shortest phase, if partial, and any longer phase's extra q.
        for q0 in range(min(counts) // lanes * lanes, max(counts), lanes):
            self.vector(i64(q0), False, out_width - stride * q0)

    def vector(self, q: ir.Value, interior: bool, valid: int | None) -> None:
        """Outputs ``s*q .. s*(q + lanes) - 1`` of the block's channels (phase ``p`` lane ``l``
        is output ``p + s*(q + l)``); with ``valid``, only the first ``valid`` are stored."""
        b = self.k.builder
        lanes = self.lanes
        for acc in self.accumulators:
            b.store(fsplat(0.0, lanes, self.k.element), acc)
        self._outer_taps(0, i64(0), i64(0), q, interior)
        stride = self.node.attrs["stride"][-1]
        for j in range(self.block):
            values = [
                self.activation(  # type: ignore[operator]
                    b,
                    b.fadd(b.load(self.accumulators[p * self.block + j]), self.biases[j]),
                    self.node.attrs,
                )
                for p in range(stride)
            ]
            for index, chunk in enumerate(interleave(b, values)):
                left = lanes if valid is None else min(lanes, valid - index * lanes)
                if left <= 0:
                    continue
                w = b.add(b.mul(q, i64(stride)), i64(index * lanes))
                c = b.add(self.item.c, i64(j))
                tail = None if left == lanes else left
                self.store(Point(self.item.n, c, 1, self.item.outer, w, lanes, tail), chunk)

    def _outer_taps(
        self,
        axis: int,
        x_offset: ir.Value,
        w_offset: ir.Value,
        q: ir.Value,
        interior: bool,
    ) -> None:
        """Loop over the valid taps of outer axis ``axis`` (then deeper axes, then the last)."""
        b = self.k.builder
        if axis == len(self.looked):
            self._last_taps(x_offset, w_offset, q, interior)
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
                    interior,
                )

    def _last_taps(
        self, x_offset: ir.Value, w_offset: ir.Value, q: ir.Value, interior: bool
    ) -> None:
        """Per input channel: one vector per distinct input shift, then every last-axis tap
        of every phase (phase ``p``'s accumulators are ``p * block .. p * block + block - 1``)."""
        b = self.k.builder
        lanes = self.lanes
        width = self.in_sizes[-1]
        per_tap = self.channels * self.block
        rows, masks = {}, {}
        for e in self.shifts:
            start = b.add(q, i64(e))
            rows[e] = gep(b, self.x_entry, b.add(x_offset, start))
            if not interior:
                masks[e] = wide_mask(b, start, lanes, width)
        w0 = gep(b, self.weight, b.add(self.w_base, b.mul(w_offset, i64(per_tap))))
        with for_range(b, 0, self.group_in, name="tci") as ci:
            inputs = {}
            for e, row0 in rows.items():
                row = gep(b, row0, b.mul(ci, i64(self.in_strides[0])))
                inputs[e] = (
                    load_vec(b, row, lanes) if interior else masked_load(b, row, masks[e], lanes)
                )
            weights = gep(b, w0, b.mul(ci, i64(self.block)))
            for p, reads in enumerate(self.reads):
                for tap, e in reads:
                    for j in range(self.block):
                        acc = self.accumulators[p * self.block + j]
                        w = b.load(gep(b, weights, tap * per_tap + j))
                        b.store(fma(b, inputs[e], splat(b, w, lanes), b.load(acc)), acc)


def interleave(b: ir.IRBuilder, vectors: list[ir.Value]) -> list[ir.Value]:
    """``s`` vectors of ``lanes`` -> the ``s * lanes`` values ``vectors[p][l]`` in the order
    ``l * s + p``, as ``s`` vectors of ``lanes``: shuffles, no scalar stores."""
    stride, lanes = len(vectors), vectors[0].type.count
    if stride == 1:
        return vectors
    wide = concat(b, vectors)
    return [
        pick(
            b, wide, [(o % stride) * lanes + o // stride for o in range(i * lanes, (i + 1) * lanes)]
        )
        for i in range(stride)
    ]


KERNELS = {f"conv_transpose{r}d": conv_transpose_kernel for r in (1, 2, 3)}
