"""The walk of a kernel anchored by a convolution (or a dense layer): the choice between phase
rows, a flattened plane and plain rows; per work item, per chunk of input channels, the row's
register tiles as ``conv_schedule`` plans them (unmasked inside, masked on the borders, border
tiles found at run time for ``dilation_stacks``); then the epilogue (bias, activation, the fused
parts after the anchor, the store), unrolled over the tile or, when costly, looped.
A convolution of a single position is a matrix-vector product instead.
"""

from __future__ import annotations

import dataclasses
import math

from llvmlite import ir

from convdsl.backends.llvm import emit_broadcast, emit_conv_tile, emit_elementwise
from convdsl.backends.llvm.conv_schedule import (
    blocks_first,
    conv_schedule,
    flat_plane,
    flat_pointwise,
    interior_range,
    one_position,
    row_segments,
)
from convdsl.backends.llvm.dispatch import MASKED_TAIL, emit_point, parts
from convdsl.backends.llvm.emit_conv_tile import RowTiles, interior_tiles, runtime_interior
from convdsl.backends.llvm.kernel import KernelBuilder, Point
from convdsl.backends.llvm.loops import (
    I32,
    entry_alloca,
    fma,
    for_range,
    fsplat,
    gep,
    i64,
    load_vec,
    splat,
    unflatten,
    vec_type,
)
from convdsl.ir.graph import Graph, Node
from convdsl.ir.ops import OPS, FusionClass
from convdsl.ir.types import PhaseRows


class ConvKernels:
    """Emits the kernels anchored by a convolution of ``graph``, split between ``threads``;
    ``dilation_stacks`` and ``channel_stacks`` (``conv_schedule``) name the anchors whose
    kernels read their last-axis dilation or input channel count at run time."""

    def __init__(
        self,
        graph: Graph,
        threads: int,
        dilation_stacks: frozenset[int],
        channel_stacks: frozenset[int],
    ) -> None:
        self.graph = graph
        self.threads = threads
        self.dilation_stacks = dilation_stacks
        self.channel_stacks = channel_stacks

    def emit(self, k: KernelBuilder, node: Node) -> None:
        """A kernel anchored by a convolution, walked as ``conv_schedule`` says: per work item
        (batch entry, outer indices, a group of channel blocks), per chunk of input channels,
        per register tile of the row, per channel block. An input stored as phase rows
        (strided convolutions) needs no lane masks."""
        b = k.builder
        anchor = parts(node)[0]
        if one_position(self.graph, anchor):
            self._channel_vector_kernel(k, node, anchor)
            return
        phase_rows = isinstance(self.graph.type_of(anchor.inputs[0]).layout, PhaseRows)
        # An index map among the parts (a crop or slice of another input) addresses its
        # input by row and column, which a flattened plane does not keep; an operand broadcast
        # on some spatial axes only needs the rows (``emit_broadcast``).
        moves = any(OPS[p.op].fusion is not FusionClass.ELEMENTWISE for p in parts(node)[1:])
        rows = phase_rows or moves or not emit_broadcast.flattens(self.graph, node)
        flat = None if rows else flat_pointwise(self.graph, anchor, k.lanes)
        if flat is not None:
            anchor, k.flat = flat, True
        elif anchor.output not in self.dilation_stacks and not rows:
            k.plane = flat_plane(self.graph, anchor, k.lanes)
            k.flat = k.plane is not None
        out_type = self.graph.type_of(node.output)
        sizes = k.spatial(node.output)
        width = sizes[-1]
        plane = k.plane is not None
        plan = conv_schedule(self.graph, anchor, sizes, k.lanes, self.threads, plane)
        groups = out_type.channels // plan.block // plan.group
        per_batch = groups * math.prod(sizes[:-1])
        group_in = self.graph.type_of(anchor.inputs[0]).channels // anchor.attrs["groups"]
        chunks = -(-group_in // plan.chunk)
        chunked = chunks > 1
        k.runtime_channels = anchor.output in self.channel_stacks
        if k.runtime_channels:
            channels_in, chunk_count = k.integer("group_in", group_in), k.integer("chunks", chunks)
        else:
            channels_in, chunk_count = i64(group_in), i64(chunks)
        in_size = k.spatial(anchor.inputs[0])[-1]
        runtime = k.runtime_dilation = anchor.output in self.dilation_stacks
        if runtime:  # the border tiles are found at run time: the grid of tiles only
            lo, hi = 0, width
            inside = runtime_interior(k, anchor, in_size, k.lanes)
        elif k.plane is not None:  # every load masked (``emit_conv_tile``): one tile shape
            lo, hi = 0, width
        else:
            lo, hi = (0, width) if phase_rows else interior_range(anchor, in_size, k.lanes)
        segments = row_segments(width, lo, hi, plan.vectors, k.lanes)
        blocks_outer = not runtime and blocks_first(self.graph, anchor, plan, k.flat)
        masked_tail = all(p.op in MASKED_TAIL for p in parts(node))
        with (
            k.items(b.mul(k.batch, i64(per_batch)), name="item") as item,
            for_range(b, 0, chunk_count, name="chunk") as chunk,
        ):
            n, *outer, group = unflatten(b, item, (*sizes[:-1], groups))
            ci_lo = b.mul(chunk, i64(plan.chunk))
            ci_hi = b.add(ci_lo, i64(plan.chunk))
            ci_hi = b.select(b.icmp_signed("<", ci_hi, channels_in), ci_hi, channels_in)
            resume = (b.icmp_signed(">", chunk, i64(0)), node.output) if chunked else None
            finished = b.icmp_signed("==", chunk, b.sub(chunk_count, i64(1)))

            def finish(point: Point, sums: list[list[ir.Value]]) -> None:
                self._finish_tile(k, node, anchor, point, sums, finished, chunked)

            start = Point(n, i64(0), 0, tuple(outer), i64(0), 0)
            row = RowTiles(k, anchor, plan, start, group, (ci_lo, ci_hi), resume, finish)
            for segment in segments:
                lanes, masked, stop = k.lanes, segment.masked, segment.stop
                if segment.valid is not None and not masked_tail:
                    # a tail some part cannot mask: one element at a time
                    lanes, masked, stop = 1, (True,), width
                step = len(masked) * lanes
                valid = segment.valid if lanes > 1 else None
                shape = (lanes, valid)
                if blocks_outer:
                    # Each block's weights stay in L1 while it walks the segment's tiles;
                    # the chunk's input rows come from L2 once per block.
                    for channels in row.blocks(len(masked)):
                        with for_range(b, segment.start, stop, step, name="w") as w:
                            row.tile(w, masked, shape, channels)
                elif not runtime:
                    with for_range(b, segment.start, stop, step, name="w") as w:
                        row.tiles(w, masked, shape)
                elif valid is not None or lanes == 1 or stop - segment.start == step:
                    with for_range(b, segment.start, stop, step, name="w") as w:
                        row.tiles(w, (True,) * len(masked), shape)
                else:
                    # The interior tiles (the most: no masks), then the border tiles of both
                    # ends in one loop: with a loop per end, the bigger function made LLVM
                    # rematerialize the epilogue's constants every iteration (10-30% slower).
                    first, end = interior_tiles(b, segment.start, stop, step, lanes, inside)
                    with for_range(b, first, end, step, name="w") as w:
                        row.tiles(w, (False,) * len(masked), shape)
                    left = b.sub(first, i64(segment.start))
                    border = b.add(left, b.sub(i64(stop), end))
                    with for_range(b, 0, border, step, name="border") as offset:
                        after = b.add(end, b.sub(offset, left))
                        before = b.add(i64(segment.start), offset)
                        w = b.select(b.icmp_signed("<", offset, left), before, after)
                        row.tiles(w, (True,) * len(masked), shape)

    def _channel_vector_kernel(self, k: KernelBuilder, node: Node, anchor: Node) -> None:
        """A pointwise convolution of a single position (a classifier head after global
        pooling, a squeeze-and-excitation gate): a matrix-vector product, vectorized along
        the output channels (a vector along positions would use one lane of eight). A work
        item is a batch entry and a block of output channels; per input channel, one load of
        the block's packed weights and one broadcast input, over four accumulators."""
        b = k.builder
        channels = self.graph.type_of(anchor.inputs[0]).channels
        out_channels = anchor.attrs["out_channels"]
        block = next(d for d in range(k.lanes, 0, -1) if out_channels % d == 0)
        blocks = out_channels // block
        weight = k.packed_param(anchor.param("weight"), block)
        rank = len(self.graph.type_of(node.output).spatial)
        accumulators = [entry_alloca(b, vec_type(block, k.element), f"gemv{u}") for u in range(4)]
        with k.items(b.mul(k.batch, i64(blocks)), name="item") as item:
            n, out_block = unflatten(b, item, (blocks,))
            x = k.entry(anchor.inputs[0], n)  # one position: channel ci is element ci
            rows = gep(b, weight, b.mul(out_block, i64(channels * block)))
            for acc in accumulators:
                b.store(fsplat(0.0, block, k.element), acc)

            def step(ci: ir.Value, acc: ir.Value) -> None:
                xs = splat(b, b.load(gep(b, x, ci)), block)
                ws = load_vec(b, gep(b, rows, b.mul(ci, i64(block))), block)
                b.store(fma(b, ws, xs, b.load(acc)), acc)

            main = channels // 4 * 4
            with for_range(b, 0, main, 4, name="ci") as ci:
                for u, acc in enumerate(accumulators):
                    step(b.add(ci, i64(u)), acc)
            for ci in range(main, channels):
                step(i64(ci), accumulators[0])
            total = b.load(accumulators[0])
            for acc in accumulators[1:]:
                total = b.fadd(total, b.load(acc))
            lanes = [
                b.shuffle_vector(total, total, ir.Constant(ir.VectorType(I32, 1), [j]))
                for j in range(block)
            ]
            channel = b.mul(out_block, i64(block))
            point = Point(n, channel, block, (i64(0),) * (rank - 1), i64(0), 1)
            (finished,) = emit_conv_tile.finish_tile(k, anchor, point, [lanes])
            emit_point(k, node, point, {anchor.output: finished})

    def _finish_tile(
        self,
        k: KernelBuilder,
        node: Node,
        anchor: Node,
        point: Point,
        sums: list[list[ir.Value]],
        finished: ir.Value,
        chunked: bool,
    ) -> None:
        """After the last chunk: bias, activation, the fused parts, the store, vector by vector;
        after an earlier one: store the partial sums into the output."""
        b = k.builder

        at = emit_conv_tile.tile_vectors(b, point, len(sums))

        def done() -> None:
            if costly_epilogue(node, anchor) and len(sums) * point.block > 1:
                self._looped_epilogue(k, node, anchor, point, sums)
                return
            results = emit_conv_tile.finish_tile(k, anchor, point, sums)
            for where, vectors in zip(at, results, strict=True):
                emit_point(k, node, where, {anchor.output: vectors})

        if not chunked:
            done()
            return
        with b.if_else(finished) as (then, otherwise):
            with then:
                done()
            with otherwise:
                for where, vectors in zip(at, sums, strict=True):
                    k.store(node.output, where, vectors)

    def _looped_epilogue(
        self, k: KernelBuilder, node: Node, anchor: Node, point: Point, sums: list[list[ir.Value]]
    ) -> None:
        """The epilogue of a tile, one vector of one channel at a time in a loop: emitted once
        (twice with a partial last vector) instead of once per vector and channel of the tile.
        For polynomial activations (WaveNet's tanh and sigmoid) that is most of the kernel's
        code; the tile's sums wait in a stack slot (L1) meanwhile."""
        b = k.builder
        full = len(sums) - (point.valid is not None)
        runs = [(0, full, None), (full, len(sums), point.valid)]
        vectors = ir.ArrayType(vec_type(point.lanes, k.element), len(sums) * point.block)
        stash = entry_alloca(b, vectors)
        for v, row in enumerate(sums):
            for j, value in enumerate(row):
                b.store(
                    value,
                    b.gep(stash, [ir.Constant(I32, 0), ir.Constant(I32, v * point.block + j)]),
                )
        for first, stop, valid in runs:
            if stop == first:
                continue
            lo, hi = first * point.block, stop * point.block
            with for_range(b, lo, hi, name="epilogue") as index:
                v = b.udiv(index, i64(point.block))
                j = b.urem(index, i64(point.block))
                one = dataclasses.replace(
                    point,
                    c=b.add(point.c, j),
                    block=1,
                    w=b.add(point.w, b.mul(v, i64(point.lanes))),
                    valid=valid,
                )
                value = b.load(b.gep(stash, [ir.Constant(I32, 0), index]))
                (finished,) = emit_conv_tile.finish_tile(k, anchor, one, [[value]])
                emit_point(k, node, one, {anchor.output: finished})


def costly_epilogue(node: Node, anchor: Node) -> bool:
    """Whether a conv kernel's epilogue (the anchor's activation, the fused parts after it)
    expands to long code per vector: then it is looped, not unrolled, over the tile."""
    ops = {anchor.attrs.get("activation", "none"), *(part.op for part in parts(node)[1:])}
    elementwise = all(part.op in emit_elementwise.EMITTERS for part in parts(node)[1:])
    return elementwise and bool(ops & emit_elementwise.COSTLY)
