"""Vectors of elements a fixed stride apart: how kernels read and write channels-last data.

A value stored channels-last (``ChannelsLast``) keeps the positions of one channel ``C``
elements apart, so a vector of consecutive positions is a strided load: a hardware gather
(``llvm.masked.gather``) where the stride is wide, one load of the whole span and a shuffle
where it is short (the span's loads are whole vectors; a gather is one per lane on AMD Zen).
Stores scatter (``llvm.masked.scatter``: one store per lane, as AVX2 has no scatter).
"""

from __future__ import annotations

from llvmlite import ir

from convdsl.backends.llvm.loops import (
    I1,
    I32,
    I64,
    VOID,
    element_of,
    element_size,
    fsplat,
    gep,
    intrinsic,
    load_vec,
    masked_load,
    masked_store,
    pick,
    suffix,
)

SHUFFLED_STRIDES = 4
"""The widest stride read as one load of the span and a shuffle (``strided_load``); wider
strides gather. Chosen by ``benchmarks/channels_last.py``."""


def strided_load(
    b: ir.IRBuilder,
    at: ir.Value,
    step: int,
    lanes: int,
    mask: ir.Value | None = None,
    checked: bool = False,
) -> ir.Value:
    """``at[l * step]`` for ``l < lanes``; where ``mask`` is given, only its lanes are read
    (the others are 0 and their addresses never touched). ``checked``: for the bounds-checked
    build (``bounds``), which checks loads and masked loads, one masked load per lane."""
    if checked:
        element = element_of(at.type)
        result: ir.Value = fsplat(0.0, lanes, element)
        for lane in range(lanes):
            one = masked_load(b, gep(b, at, lane * step), _lane_mask(b, mask, lane), 1)
            value = b.extract_element(one, ir.Constant(I32, 0))
            result = b.insert_element(result, value, ir.Constant(I32, lane))
        return result
    if mask is None and step <= SHUFFLED_STRIDES:
        span = load_vec(b, at, (lanes - 1) * step + 1)  # no element past the last lane's
        return pick(b, span, [lane * step for lane in range(lanes)])
    element = element_of(at.type)
    full = ir.Constant(ir.VectorType(I1, lanes), [True] * lanes)
    return intrinsic(
        b,
        f"llvm.masked.gather.{suffix(ir.VectorType(element, lanes))}.v{lanes}p0",
        ir.VectorType(element, lanes),
        [
            _addresses(b, at, step, lanes),
            ir.Constant(I32, element_size(element)),
            full if mask is None else mask,
            fsplat(0.0, lanes, element),
        ],
    )


def strided_store(
    b: ir.IRBuilder,
    vector: ir.Value,
    at: ir.Value,
    step: int,
    mask: ir.Value | None = None,
    checked: bool = False,
) -> None:
    """``at[l * step] = vector[l]`` for every lane ``l`` (where ``mask`` is set); ``checked``
    as for ``strided_load``."""
    lanes = vector.type.count
    if checked:
        for lane in range(lanes):
            one = pick(b, vector, [lane])
            masked_store(b, one, gep(b, at, lane * step), _lane_mask(b, mask, lane))
        return
    full = ir.Constant(ir.VectorType(I1, lanes), [True] * lanes)
    intrinsic(
        b,
        f"llvm.masked.scatter.{suffix(vector.type)}.v{lanes}p0",
        VOID,
        [
            vector,
            _addresses(b, at, step, lanes),
            ir.Constant(I32, element_size(element_of(vector.type))),
            full if mask is None else mask,
        ],
    )


def _lane_mask(b: ir.IRBuilder, mask: ir.Value | None, lane: int) -> ir.Value:
    """``<1 x i1>``: lane ``lane`` of ``mask`` (set if there is no mask)."""
    if mask is None:
        return ir.Constant(ir.VectorType(I1, 1), [True])
    return b.shuffle_vector(mask, mask, ir.Constant(ir.VectorType(I32, 1), [lane]))


def _addresses(b: ir.IRBuilder, at: ir.Value, step: int, lanes: int) -> ir.Value:
    """The vector of pointers ``&at[l * step]``."""
    size = element_size(element_of(at.type))
    wide = ir.VectorType(I64, lanes)
    base = b.insert_element(
        ir.Constant(wide, ir.Undefined), b.ptrtoint(at, I64), ir.Constant(I32, 0)
    )
    base = b.shuffle_vector(base, base, ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))
    offsets = ir.Constant(wide, [lane * step * size for lane in range(lanes)])
    return b.inttoptr(b.add(base, offsets), ir.VectorType(at.type, lanes))
