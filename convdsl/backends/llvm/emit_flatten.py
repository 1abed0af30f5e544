"""``flatten``: ``[N, C, *S] -> [N, C*prod(S)]``, a copy in the same memory order.

A batch entry of a dense ``[C, *S]`` value is already its ``C*prod(S)`` features in order, so
feature ``f`` of the output is element ``f`` of the input's entry. Alone, flatten copies each
entry in vectors, the entries' features split between the threads in spans of
``SPAN_VECTORS`` vectors; inside a fused kernel (an elementwise op reading it) it is the load
of the point's features. (``dense`` needs no emitter of its own: it is a convolution over no
spatial axes, which ``lower`` computes as a matrix-vector product.)
"""

from __future__ import annotations

from llvmlite import ir

from convdsl.backends.llvm.kernel import KernelBuilder, Point, valid_mask
from convdsl.backends.llvm.loops import (
    for_range,
    gep,
    i64,
    load_vec,
    masked_load,
    masked_store,
    store_vec,
    unflatten,
)
from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Node

SPAN_VECTORS = 64
"""Vectors of features one work item copies: a VGG head's 25088 features are 49 items of f32
on AVX2, enough to share between threads, each long enough to stream."""


def _source(k: KernelBuilder, node: Node) -> int:
    x = node.inputs[0]
    if k.type_of(x).layout is not None:
        raise InternalError(f"flatten '{node.name}' reads a value stored as phase rows")
    return x


def emit_flatten(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """The point's features, loaded from the same offsets of the input's entry."""
    b = k.builder
    first = gep(b, k.entry(_source(k, node), point.n), k.offset(node.output, point.c, (), point.w))
    stride = k.strides(node.output)[0]
    pointers = [first, *(gep(b, first, j * stride) for j in range(1, point.block))]
    if point.valid is not None:
        mask = valid_mask(point)
        return [masked_load(b, at, mask, point.lanes) for at in pointers]
    return [load_vec(b, at, point.lanes) for at in pointers]


def flatten_kernel(k: KernelBuilder, node: Node) -> None:
    """Every entry's features copied in vectors; the last item copies the tail masked."""
    b = k.builder
    x, out = _source(k, node), node.output
    features, lanes = k.type_of(out).channels, k.lanes
    span = SPAN_VECTORS * lanes
    spans = -(-features // span)
    whole = features // lanes * lanes  # features in whole vectors
    with k.items(b.mul(k.batch, i64(spans)), name="item") as item:
        n, index = unflatten(b, item, (spans,))
        source, target = k.entry(x, n), k.entry(out, n)
        start = b.mul(index, i64(span))
        stop = b.add(start, i64(span))
        stop = b.select(b.icmp_signed("<", stop, i64(whole)), stop, i64(whole))
        with for_range(b, start, stop, lanes, name="copy") as at:
            store_vec(b, load_vec(b, gep(b, source, at), lanes), gep(b, target, at))
        if whole < features:
            tail = Point(n, i64(whole), 1, (), i64(0), lanes, valid=features - whole)
            mask = valid_mask(tail)
            with b.if_then(b.icmp_signed("==", index, i64(spans - 1))):
                vector = masked_load(b, gep(b, source, whole), mask, lanes)
                masked_store(b, vector, gep(b, target, whole), mask)


EMITTERS = {"flatten": emit_flatten}
KERNELS = {"flatten": flatten_kernel}
