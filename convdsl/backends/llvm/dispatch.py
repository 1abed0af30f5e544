"""Which emitter lowers each op: the dispatch tables (``EMITTERS`` per point, ``TILE_EMITTERS``
per register tile, ``KERNELS`` per whole kernel, ``BLOCKS``), the check that a graph has an
emitter for every op (``check_lowerable``), and the emission of a kernel's parts at one output
point (``emit_point``), where a crash becomes an ``InternalError`` naming the op and its line.

The tables are the ones ``lower`` reads (and tests patch): one dict object each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from llvmlite import ir

from convdsl.backends.llvm import (
    emit_axis,
    emit_broadcast,
    emit_conv_tile,
    emit_data,
    emit_elementwise,
    emit_flatten,
    emit_pool,
    emit_relayout,
    emit_resample,
    emit_transpose,
)
from convdsl.backends.llvm.kernel import KernelBuilder, Point
from convdsl.backends.llvm.loops import i64
from convdsl.diagnostics import ConvdslError, InternalError, error
from convdsl.ir.graph import RELAYOUT, Graph, Node
from convdsl.ir.ops import OPS, FusionClass
from convdsl.ir.types import PhaseRows

Emitter = Callable[[KernelBuilder, Node, Point], list[ir.Value]]
BlockRule = Callable[[Graph, Node], int]

EMITTERS: dict[str, Emitter] = {
    **emit_elementwise.EMITTERS,
    **emit_pool.EMITTERS,
    **emit_data.EMITTERS,
    **emit_resample.EMITTERS,
    **emit_axis.EMITTERS,  # after emit_data: its concat takes every axis
    **emit_transpose.EMITTERS,
    **emit_flatten.EMITTERS,
}
BLOCKS: dict[str, BlockRule] = {**emit_transpose.BLOCKS}
# Ops with a whole-kernel emitter, used when the op runs alone (not inside a fused kernel).
KERNELS: dict[str, Callable[[KernelBuilder, Node], None]] = {
    **emit_data.KERNELS,
    **emit_transpose.KERNELS,
    **emit_flatten.KERNELS,
    RELAYOUT: emit_relayout.relayout_kernel,
}
# Ops computed as a register tile of several vectors, rows walked by ``row_segments``.
# A dense layer is a convolution over no spatial axes: of one position, so ``conv_kernel``
# computes it as a matrix-vector product (``one_position``), never as register tiles.
TILE_EMITTERS = {**emit_conv_tile.TILE_EMITTERS, "dense": emit_conv_tile.emit_conv_tile}
# Ops whose emitters are safe on a tail point (``Point.valid``): their own loads are
# bounds-masked (windows) or masked through ``KernelBuilder.operand`` (elementwise).
MASKED_TAIL = {*emit_conv_tile.TILE_EMITTERS, *emit_transpose.EMITTERS, *emit_elementwise.EMITTERS}


def parts(node: Node) -> tuple[Node, ...]:
    return node.parts if node.is_fused else (node,)


def check_lowerable(graph: Graph) -> None:
    """Raise a ``ConvdslError`` for the first op this backend cannot lower. A graph with
    symbolic sizes (not yet specialized, so without layouts or memory plan) is checked op by
    op."""
    if graph.is_symbolic:
        for node in graph.nodes:
            _check_op(node)
        return
    if graph.memory is None:
        raise InternalError("the llvm backend needs a memory plan (compile at -O2)")
    for node in graph.nodes:
        refused = emit_broadcast.batch_problem(graph, node)
        if refused is not None:
            raise error(refused[1], refused[0].span)
        for part in parts(node):
            _check_op(part)
            emit_axis.check_batch_axis(part)
            strided = part.op in TILE_EMITTERS and any(s > 1 for s in part.attrs["stride"][-1:])
            if strided and not isinstance(graph.type_of(part.inputs[0]).layout, PhaseRows):
                raise InternalError(f"{part.name} reads a dense input: run choose-layouts")


def _check_op(part: Node) -> None:
    if part.op not in EMITTERS and part.op not in TILE_EMITTERS and part.op != RELAYOUT:
        raise error(f"llvm backend cannot lower {part.op} yet", part.span)


def emit_point(k: KernelBuilder, node: Node, point: Point, made: dict | None = None) -> None:
    """Emit the kernel's parts at ``point`` and store its output; ``made`` holds values
    already computed at the point (a register tile's results), whose parts are skipped."""
    k.local = dict(made or {})
    for part in parts(node):
        if part.output in k.local:
            continue
        try:
            k.local[part.output] = _emit(k, part, point)
        except (ConvdslError, InternalError):
            raise
        except Exception as exc:
            where = f" in fused kernel '{node.name}'" if node.is_fused else ""
            raise InternalError(
                f"llvm backend failed lowering {part.op} '{part.name}'{where}: "
                f"{type(exc).__name__}: {exc}",
                part.span,
            ) from exc
    k.store(node.output, point, k.local[node.output])
    k.local = {}


def _emit(k: KernelBuilder, part: Node, point: Point) -> list[ir.Value]:
    """``part`` at ``point``; an index map (a crop or slice of another input in a conv's
    kernel) computes one channel at a time, so a block of channels is emitted channel by
    channel."""
    if point.block == 1 or OPS[part.op].fusion is FusionClass.ELEMENTWISE:
        return EMITTERS[part.op](k, part, point)
    vectors = []
    for j in range(point.block):
        one = dataclasses.replace(point, c=k.builder.add(point.c, i64(j)), block=1)
        vectors += EMITTERS[part.op](k, part, one)
    return vectors
