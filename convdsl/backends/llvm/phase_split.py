"""Strided convolutions read a phase-split copy of their input.

With stride ``s > 1`` on the last axis, output ``w`` at tap ``t`` reads input ``w * s + t * d -
pad``: lanes of one output vector are ``s`` apart in memory. Loading ``lanes * s`` elements and
shuffling every ``s``-th out costs registers the 12-accumulator tile does not have (it spilled:
31-47 GFLOP/s on one thread for a 3x3 stride-2 conv). Instead a small kernel before the
convolution copies every input row once into ``s`` *phase rows*, phase ``p`` holding ``x[j * s +
p]`` for ``j`` in ``[first, first + length)``, zero where ``j * s + p`` falls outside the row.
Tap ``t`` with ``t * d - pad = q * s + p`` then reads phase row ``p`` at ``w + q``: consecutive
elements, no shuffle, and no lane masks either (the zeros are the padding, and every row is
``length`` long, a whole number of vectors past the last tile).

The copy lives in a staging region after the planned arena that every strided conv of the
network reuses (one conv at a time reads it); per batch entry it is ``[rows, s, length]``, rows
being the input's channels times its outer spatial positions. It costs one pass over the input,
small against the convolution that then runs at stride-1 speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from convdsl.backends.llvm.kernel import KernelBuilder, spatial_of
from convdsl.backends.llvm.loops import (
    I32,
    for_range,
    gep,
    i64,
    load_vec,
    masked_load,
    store_vec,
    unflatten,
    wide_mask,
)
from convdsl.backends.llvm.parallel import thread_share
from convdsl.ir.graph import Graph, Node


@dataclass(frozen=True)
class PhaseSplit:
    """The phase-split copy of one strided convolution's input (module docstring)."""

    stride: int  # s: phases per input row
    first: int  # j of a phase row's element 0 (<= 0: the padding before the row)
    length: int  # elements per phase row, a multiple of the vector width
    rows: int  # input rows per batch entry: channels x outer spatial positions
    width: int  # input row length

    @property
    def entry_elements(self) -> int:
        return self.rows * self.stride * self.length

    def tap(self, offset: int) -> int:
        """Element offset, from a phase row's element ``w - first``, of input ``w * s +
        offset``: phase ``offset mod s``, ``offset // s`` further along."""
        q, p = divmod(offset, self.stride)
        return p * self.length + q


def phase_split(graph: Graph, node: Node, lanes: int) -> PhaseSplit | None:
    """The copy ``node`` (a convolution) reads, or ``None`` for stride 1 on the last axis."""
    a = node.attrs
    stride = a["stride"][-1]
    if stride == 1:
        return None
    in_type = graph.type_of(node.inputs[0])
    in_sizes = spatial_of(in_type)
    width = spatial_of(graph.type_of(node.output))[-1]
    dilation = a.get("dilation", (1,) * len(a["kernel"]))[-1]
    shifts = [(t * dilation - a["pads"][-1][0]) // stride for t in range(a["kernel"][-1])]
    first = min(0, shifts[0])
    # Tiles read whole vectors: up to the row's width rounded up to a vector, plus the reach.
    reach = -(-width // lanes) * lanes + shifts[-1] - first
    length = -(-reach // lanes) * lanes
    rows = in_type.channels * math.prod(in_sizes[:-1])
    return PhaseSplit(stride, first, length, rows, in_sizes[-1])


def split_kernel(k: KernelBuilder, node: Node, split: PhaseSplit) -> None:
    """Copy every input row of ``node`` into its phase rows in the staging region:
    one (masked at the row's ends) load of ``lanes * s`` inputs makes a vector of every phase."""
    b = k.builder
    lanes, s = k.lanes, split.stride
    vectors = split.length // lanes
    # Vectors whose wide load lies inside the row, unmasked; masked ones before and after.
    # Vector v loads inputs from (first + v * lanes) * s on: inside the row for v in [lo, hi).
    lo = min(vectors, -(split.first // lanes))
    hi = max(lo, min(vectors, (split.width - split.first * s) // (lanes * s)))
    picks = [
        ir.Constant(ir.VectorType(I32, lanes), [p + lane * s for lane in range(lanes)])
        for p in range(s)
    ]
    first, last = thread_share(b, b.mul(k.batch, i64(split.rows)))
    with for_range(b, first, last, name="row") as item:
        n, row = unflatten(b, item, (split.rows,))
        source = gep(b, k.entry(node.inputs[0], n), b.mul(row, i64(split.width)))
        target = gep(b, k.staging(split.entry_elements, n), b.mul(row, i64(s * split.length)))

        def copy(vector: ir.Value, masked: bool) -> None:
            start = b.mul(b.add(b.mul(vector, i64(lanes)), i64(split.first)), i64(s))
            at = gep(b, source, start)
            if masked:
                wide = masked_load(b, at, wide_mask(b, start, lanes * s, split.width), lanes * s)
            else:
                wide = load_vec(b, at, lanes * s)
            undefined = ir.Constant(wide.type, ir.Undefined)
            for p in range(s):
                phase = b.shuffle_vector(wide, undefined, picks[p])
                offset = b.add(b.mul(vector, i64(lanes)), i64(p * split.length))
                store_vec(b, phase, gep(b, target, offset))

        for start, stop, masked in ((0, lo, True), (lo, hi, False), (hi, vectors, True)):
            if stop > start:
                with for_range(b, start, stop, name="v") as vector:
                    copy(vector, masked)
