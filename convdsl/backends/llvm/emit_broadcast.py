"""Operands that broadcast (``convdsl.ir.elementwise_rules``): read in place, never expanded.

An operand of add/sub/mul/div may be smaller than the output: size 1 on some axes where the
output is larger. At a point of the output it is read with stride 0 on those axes: batch entry
0, channel 0, index 0 on an outer spatial axis, and on the last axis one element splat over
the point's lanes. So a ``[N, C, 1, 1]`` gate costs one load per channel of a point, whatever
the size of the map it scales, and nothing of full size is ever written.

A kernel walking flattened planes (``KernelBuilder.flat``) sees every value as one row per
channel: an operand broadcast on all spatial axes or on none reads right that way, one
broadcast on only some does not, so such a kernel keeps its rows (``flattens``).

A batch-1 operand broadcast over a batch of N is read from the caller's array when it is a
graph input; a computed one belongs to another batch group of the entry (``entry``), whose
arena is gone when this one runs, so the backend refuses it (``batch_problem``).
"""

from __future__ import annotations

from llvmlite import ir

from convdsl.backends.llvm.kernel import KernelBuilder, Point, spatial_of, valid_mask
from convdsl.backends.llvm.loops import gep, i64, load_vec, masked_load, splat
from convdsl.ir.graph import Graph, Node
from convdsl.ir.ops import OPS, FusionClass


def operand(k: KernelBuilder, value: int, point: Point, out: int) -> list[ir.Value]:
    """``value`` at ``point`` of the kernel's output ``out``: computed by an earlier part, or
    loaded from memory, with stride 0 on every axis where it is 1 and ``out`` is not."""
    if value in k.local or k.type_of(value).shape == k.type_of(out).shape:
        return k.operand(value, point)
    b = k.builder
    small, full = k.type_of(value), k.type_of(out)
    sizes, full_sizes = k.spatial(value), k.spatial(out)
    strides = k.strides(value)
    n = point.n if small.batch == full.batch else i64(0)
    at = i64(0)
    for index, size, full_size, stride in zip(
        point.outer, sizes[:-1], full_sizes[:-1], strides[1:-1], strict=True
    ):
        if size == full_size:
            at = b.add(at, b.mul(index, i64(stride)))
    lanes_broadcast = sizes[-1] != full_sizes[-1]
    if not lanes_broadcast:
        at = b.add(at, point.w)
    first = gep(b, k.entry(value, n), at)
    vectors = []
    for j in range(point.block):
        if small.channels == full.channels:
            channel = b.add(point.c, i64(j))
            where = gep(b, first, b.mul(channel, i64(strides[0])))
        else:
            where = first
        if lanes_broadcast:
            vectors.append(splat(b, b.load(where), point.lanes))
        elif point.valid is not None:
            vectors.append(masked_load(b, where, valid_mask(point), point.lanes))
        else:
            vectors.append(load_vec(b, where, point.lanes))
    return vectors


def _broadcast_reads(graph: Graph, node: Node) -> list[tuple[Node, int]]:
    """Each (part, input) of ``node`` whose input is smaller than the part's output."""
    parts = node.parts if node.is_fused else (node,)
    return [
        (part, value)
        for part in parts
        if part.op in OPS and OPS[part.op].fusion is FusionClass.ELEMENTWISE
        for value in part.inputs
        if graph.type_of(value).shape != graph.type_of(part.output).shape
    ]


def flattens(graph: Graph, node: Node) -> bool:
    """Whether every broadcast operand of ``node`` reads right over flattened planes: its
    spatial sizes all 1, or all those of the output (module doc)."""
    for part, value in _broadcast_reads(graph, node):
        sizes = spatial_of(graph.type_of(value))
        full = spatial_of(graph.type_of(part.output))
        if sizes != full and any(size != 1 for size in sizes):
            return False
    return True


def batch_problem(graph: Graph, node: Node) -> tuple[Node, str] | None:
    """The first part of ``node`` that broadcasts a computed batch-1 value over a larger
    batch, and why this backend cannot (module doc); None if there is none."""
    for part, value in _broadcast_reads(graph, node):
        small, full = graph.type_of(value), graph.type_of(part.output)
        if small.batch != full.batch and value not in graph.inputs:
            return part, (
                f"llvm backend cannot broadcast the computed batch-{small.batch} value "
                f"%{graph.values[value].name} {small} over batch {full.batch} yet; "
                "only a network input can be broadcast over the batch"
            )
    return None
