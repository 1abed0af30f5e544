"""The ``relayout`` kernel: a value copied into phase rows (``PhaseRows``, chosen by the
``choose-layouts`` pass for the input of a convolution with stride ``s > 1`` on the last axis).

Phase ``p`` of a row holds ``x[j * s + p]`` for ``j`` in ``[first, first + length)``, zero
where ``j * s + p`` falls outside the row. The convolution's tap ``t`` with ``t * d - pad = q *
s + p`` then reads phase row ``p`` at ``w + q`` (``tap_offset``): consecutive elements, no
shuffle, and no lane masks either (the zeros are the padding, and every row is long enough for
the whole vectors of the last tile). The copy is one pass over the input: one (masked at the
row's ends) load of ``lanes * s`` inputs makes one vector of every phase.
"""

from __future__ import annotations

from llvmlite import ir

from convdsl.backends.llvm.kernel import KernelBuilder, spatial_of
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
from convdsl.ir.graph import Node
from convdsl.ir.types import PhaseRows


def tap_offset(layout: PhaseRows, offset: int) -> int:
    """Where input ``w * s + offset`` is, counted from element ``w - first`` of phase row 0:
    phase ``offset mod s``, ``offset // s`` further along."""
    q, p = divmod(offset, layout.stride)
    return p * layout.length + q


def relayout_kernel(k: KernelBuilder, node: Node) -> None:
    """Copy every input row of ``node`` into its output's phase rows."""
    b = k.builder
    source, target = node.inputs[0], node.output
    layout = k.type_of(target).layout
    assert layout is not None, "relayout to a dense value"
    in_type = k.type_of(source)
    width = spatial_of(in_type)[-1]
    rows = in_type.stored_elements // width
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
        row_in = gep(b, k.entry(source, n), b.mul(row, i64(width)))
        row_out = gep(b, k.entry(target, n), b.mul(row, i64(s * layout.length)))

        def copy(vector: ir.Value, masked: bool, stored: int = lanes) -> None:
            start = b.mul(b.add(b.mul(vector, i64(lanes)), i64(layout.first)), i64(s))
            at = gep(b, row_in, start)
            if masked:
                wide = masked_load(b, at, wide_mask(b, start, lanes * s, width), lanes * s)
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
