"""Lower a typed, optimized, memory-planned graph to LLVM modules: one per distinct kernel,
and the entry module whose ``run`` calls them in order (``entry``).

A kernel (a node, or a fused node's parts) is a loop over output points (``kernel.Point``): the
flat range of (batch, channel block, outer spatial index) work items is split between threads,
and the last spatial axis is walked one vector at a time, then the tail. A kernel anchored by a
convolution walks its rows in register tiles of several vectors (``TILE_EMITTERS``,
``row_segments``): unmasked where every tap is inside the input, masked on the borders; the
fused parts after the anchor then run once per vector of the tile. A fused kernel
that does not fit the point model (an anchor followed by pixel_shuffle or crop) runs part by
part, its internal values in scratch slots after the planned arena.

A kernel computes in its output's dtype (``KernelBuilder.dtype``): f32 and f64 kernels are
the same code over ``<lanes x float>`` or ``<lanes/2 x double>`` (one register either way).

Every part's op must have an emitter here; anything else is a ``ConvdslError`` naming the op and
its line. A crash while emitting one op is an ``InternalError`` naming that op and line.
"""

from __future__ import annotations

import dataclasses
import gc
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from llvmlite import ir

from convdsl.backends.llvm import (
    bounds,
    codegen,
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
    emit_transpose_phase,
    kernel_reuse,
)
from convdsl.backends.llvm.conv_schedule import (
    blocks_first,
    channel_stacks,
    conv_schedule,
    dilation_stacks,
    flat_plane,
    flat_pointwise,
    interior_range,
    lane_steps,
    one_position,
    row_segments,
)
from convdsl.backends.llvm.emit_conv_tile import RowTiles, interior_tiles, runtime_interior
from convdsl.backends.llvm.entry import Worker, build_entry, frame_pointer, images_per_pass
from convdsl.backends.llvm.kernel import (
    BoundAddresses,
    KernelBuilder,
    Point,
    entry_elements,
    itemsize,
    kernel_lanes,
    spatial_of,
)
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
from convdsl.backends.llvm.parallel import WORKER_TYPE
from convdsl.diagnostics import ConvdslError, InternalError, error
from convdsl.ir.graph import RELAYOUT, Graph, Node
from convdsl.ir.ops import OPS, FusionClass, is_channel_concat
from convdsl.ir.types import DType, PhaseRows

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
# Ops whose emitters are safe on a tail point (``Point.valid``): their own loads are
# bounds-masked (windows) or masked through ``KernelBuilder.operand`` (elementwise).
# Ops computed as a register tile of several vectors, rows walked by ``row_segments``.
# A dense layer is a convolution over no spatial axes: of one position, so ``_conv_kernel``
# computes it as a matrix-vector product (``one_position``), never as register tiles.
TILE_EMITTERS = {**emit_conv_tile.TILE_EMITTERS, "dense": emit_conv_tile.emit_conv_tile}
# A transposed conv anchoring a fused kernel is split by output phase like one alone, the
# fused parts applied to each output vector (``emit_transpose_phase.Store``).
PHASE_EPILOGUES = True
# Find a kernel that would print the same as one already built by its signature, without
# building it (``kernel_reuse``); off, every kernel is built and compared by its text.
REUSE = True
MASKED_TAIL = {*emit_conv_tile.TILE_EMITTERS, *emit_transpose.EMITTERS, *emit_elementwise.EMITTERS}


def light_pipeline(module: ir.Module) -> None:
    """Have LLVM optimize ``module`` (a convolution kernel) with the light pipeline
    (``codegen.TILE_PIPELINE``)."""
    module.add_named_metadata(codegen.TILE_PIPELINE, [ir.MetaDataString(module, "O1 + gvn")])


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


def fits_point_model(graph: Graph, node: Node) -> bool:
    """Whether a fused kernel runs as one loop over output points: every part has the
    kernel's output shape, and only elementwise parts read values made inside the kernel.
    Other kernels (an anchor followed by pixel_shuffle or crop) run part by part, their
    internal values in scratch slots after the planned arena."""
    made: set[int] = set()
    out_shape = graph.type_of(node.output).shape
    for part in node.parts:
        elementwise = OPS[part.op].fusion is FusionClass.ELEMENTWISE
        if graph.type_of(part.output).shape != out_shape:
            return False
        if not elementwise and made.intersection(part.inputs):
            return False
        made.add(part.output)
    return True


class ModuleBuilder:
    """Builds one module per distinct kernel, then the entry module that calls them."""

    def __init__(
        self,
        graph: Graph,
        lanes: int,
        threads: int,
        profile: bool = False,
        on_module: Callable[[str], None] | None = None,
        bounds_check: bool = False,
    ) -> None:
        check_lowerable(graph)
        self.graph = graph
        self.bounds_check = bounds_check
        self.sites: dict[str, tuple[bounds.Site, ...]] = {}  # kernel function -> its checks
        self.on_module = on_module
        self.lanes = lanes  # the target's float lanes; a kernel's follow its dtype
        self.threads = threads
        self.profile = profile
        self.workers: list[Worker] = []
        self.kernels: list[ir.Module] = []
        self.functions: dict[str, str] = {}  # kernel module text (name left out) -> function
        self.built: dict[tuple, kernel_reuse.Built] = {}  # signature key -> its kernel
        self.module = ir.Module(name=graph.name)  # the entry module
        names = [*graph.params, *graph.derived]
        self.param_index = {name: index for index, name in enumerate(names)}
        self.packings: dict[str, tuple[str, int]] = {}  # packed parameter -> (source, block)
        self.scratch: dict[int, tuple[int, int]] = {}  # value -> (offset, size) per batch entry
        self.per_pass = 1  # images per pass of the entry, set once every kernel is built
        assert graph.memory is not None
        self.arena_bytes = graph.memory.arena_bytes  # planned arena plus scratch, per entry
        self.dilation_stacks = dilation_stacks(graph)
        self.channel_stacks = channel_stacks(graph, lanes)

    def build(self) -> ir.Module:
        for index, node in enumerate(self.graph.nodes):
            if self._copy_free(node):
                continue
            if node.is_fused and not fits_point_model(self.graph, node):
                for step, part in enumerate(node.parts):
                    if part.output != node.output:
                        self._add_scratch(part.output)
                    self._kernel(part, f"{index}_{step}", (index, step))
            else:
                self._kernel(node, str(index), (index, None))
        self.per_pass = images_per_pass(self.arena_bytes)  # the scratch is known now
        if self.bounds_check:
            self._add_module(bounds.runtime())
        build_entry(
            self.module,
            self.graph,
            self.workers,
            self.param_index,
            self.scratch,
            self.threads,
            self.profile,
            self.per_pass,
            self.bounds_check,
        )
        if self.on_module:
            self.on_module(str(self.module))
        return self.module

    # ---- kernels ----------------------------------------------------------------------------

    def _copy_free(self, node: Node) -> bool:
        """A concat whose inputs the memory plan already placed in its slices."""
        channels = is_channel_concat(node.op, node.attrs)
        return channels and all(self._in_slice(node, v) for v in node.inputs)

    def _in_slice(self, concat: Node, value: int) -> bool:
        """Whether the memory plan placed input ``value`` of ``concat`` in its slice."""
        assert self.graph.memory is not None
        return _shares_into(self.graph.memory, value, concat.output)

    def _add_scratch(self, value: int) -> None:
        size = entry_elements(self.graph.type_of(value)) * itemsize(self.graph, value)
        size += -size % 64
        self.scratch[value] = (self.arena_bytes, size)
        self.arena_bytes += size

    def _kernel(self, node: Node, tag: str, position: tuple[int, int | None]) -> None:
        """The worker that computes ``node``, in a module of its own; a kernel that prints
        the same as an earlier one (same shapes and attributes) reuses that one's function,
        found without building it where the signatures match (``kernel_reuse``)."""
        name = f"kernel{tag}_{_ident(node.name)}"
        signature = kernel_reuse.signature(self.graph, node, self._reading) if REUSE else None
        built = self.built.get(signature.key) if signature else None
        if signature and built:
            bindings = kernel_reuse.remapped(built, signature, self._add_packing)
            if bindings is not None:
                worker = Worker(built.function, node, _describe(node), bindings, name, position)
                self.workers.append(worker)
                return
        module = ir.Module(name=name)
        worker = ir.Function(module, WORKER_TYPE, name)
        worker.attributes.add("nounwind")
        frame_pointer(worker)
        prologue = worker.append_basic_block("prologue")
        builder = ir.IRBuilder(worker.append_basic_block("body"))
        addresses = BoundAddresses(
            self.graph, builder, worker.args[0], prologue, self.bounds_check, worker.args[1]
        )
        ir.IRBuilder(prologue).branch(builder.block)
        k = self._kernel_builder(builder, addresses, self.graph.type_of(node.output).dtype)
        try:
            if node.op in KERNELS:
                KERNELS[node.op](k, node)
            else:
                self._points(k, node)
        except ConvdslError:
            raise
        except Exception as exc:
            raise InternalError(
                f"llvm backend failed lowering {node.op} '{node.name}': "
                f"{type(exc).__name__}: {exc}",
                node.span,
            ) from exc
        builder.ret_void()
        sites = bounds.instrument(worker, addresses.extents()) if self.bounds_check else ()
        if parts(node)[0].op in TILE_EMITTERS:
            light_pipeline(module)
        text = str(module)
        shape = text.replace(f'"{name}"', '"KERNEL"')  # the code, whatever its name
        if shape not in self.functions:
            self.functions[shape] = name
            self.sites[name] = sites
            self._add_module(module, text)
        bindings = tuple(addresses.bindings)
        function = self.functions[shape]
        self.workers.append(Worker(function, node, _describe(node), bindings, name, position))
        if signature is not None:
            self.built.setdefault(signature.key, kernel_reuse.Built(function, signature, bindings))

    def _add_module(self, module: ir.Module, text: str | None = None) -> None:
        self.kernels.append(module)
        if self.on_module:
            self.on_module(text or str(module))

    def _reading(self, part: Node) -> tuple[bool, bool]:
        """What of ``part`` the kernel reads at run time (``kernel_reuse.signature``)."""
        return part.output in self.dilation_stacks, part.output in self.channel_stacks

    def _add_packing(self, name: str, source: str, block: int) -> None:
        """Declare the repacked parameter ``name`` (as ``KernelBuilder.packed_param`` does)."""
        if name not in self.param_index:
            self.param_index[name] = len(self.param_index)
        self.packings[name] = (source, block)

    def _kernel_builder(
        self, builder: ir.IRBuilder, addresses: BoundAddresses, dtype: DType
    ) -> KernelBuilder:
        """A kernel computing in ``dtype``, with as many lanes as fill one register of it."""
        lanes = kernel_lanes(self.lanes, dtype)
        return KernelBuilder(
            self.graph,
            builder,
            dtype,
            lanes,
            addresses,
            self.param_index,
            self.packings,
        )

    def _points(self, k: KernelBuilder, node: Node) -> None:
        b = k.builder
        out_type = self.graph.type_of(node.output)
        anchor = parts(node)[0]
        if anchor.op in TILE_EMITTERS:
            self._conv_kernel(k, node)
            return
        if is_channel_concat(node.op, node.attrs):
            self._concat_kernel(k, node)
            return
        if (
            PHASE_EPILOGUES
            and anchor.op in emit_transpose_phase.KERNELS
            and all(part.op in emit_elementwise.EMITTERS for part in parts(node)[1:])
        ):
            # Split by output phase, each output vector through the fused parts: the point
            # loop's transposed conv gathers lane by lane (FCN-8s's upscore2 + add: 8 GFLOP/s).
            def store(point: Point, vector: ir.Value) -> None:
                self._point(k, node, point, {anchor.output: [vector]})

            emit_transpose_phase.conv_transpose_kernel(k, anchor, store)
            return
        block = BLOCKS[anchor.op](self.graph, anchor) if anchor.op in BLOCKS else 1
        sizes = spatial_of(out_type)
        outer_sizes = sizes[:-1]
        blocks = out_type.channels // block
        per_batch = blocks * math.prod(outer_sizes)
        total = b.mul(k.batch, i64(per_batch))
        with k.items(total, name="item") as item:
            n, *outer, channel_block = unflatten(b, item, (*outer_sizes, blocks))
            channel = b.mul(channel_block, i64(block))
            self._row(k, node, Point(n, channel, block, tuple(outer), i64(0), 1))

    def _concat_kernel(self, k: KernelBuilder, node: Node) -> None:
        """A concat copies the inputs the memory plan did not place in their slices (a skip
        also read elsewhere), each split between the threads, row by row."""
        b = k.builder
        outer_sizes = spatial_of(self.graph.type_of(node.output))[:-1]
        start = 0
        for value in node.inputs:
            channels = self.graph.type_of(value).channels
            if not self._in_slice(node, value):
                rows = b.mul(k.batch, i64(channels * math.prod(outer_sizes)))
                with k.items(rows, name="copy") as item:
                    n, *outer, channel = unflatten(b, item, (*outer_sizes, channels))
                    point = Point(n, b.add(channel, i64(start)), 1, tuple(outer), i64(0), 1)
                    self._row(k, node, point)
            start += channels

    def _row(self, k: KernelBuilder, node: Node, row: Point) -> None:
        """One output row: vectors, then the tail (one masked vector, or single elements)."""
        b = k.builder
        width = spatial_of(self.graph.type_of(node.output))[-1]
        masked_tail = all(p.op in MASKED_TAIL for p in parts(node))
        for start, stop, lanes in lane_steps(width, (k.lanes, 1)):
            if lanes == 1 and masked_tail:
                # One vector with the lanes past the row's end masked off, not a scalar loop.
                point = dataclasses.replace(row, w=i64(start), lanes=k.lanes)
                self._point(k, node, dataclasses.replace(point, valid=stop - start))
                continue
            with for_range(b, start, stop, lanes, name=f"w{lanes}") as w:
                point = dataclasses.replace(row, w=w, lanes=lanes)
                self._point(k, node, point)

    def _conv_kernel(self, k: KernelBuilder, node: Node) -> None:
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
            self._point(k, node, point, {anchor.output: finished})

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
                self._point(k, node, where, {anchor.output: vectors})

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
                self._point(k, node, one, {anchor.output: finished})

    def _point(self, k: KernelBuilder, node: Node, point: Point, made: dict | None = None) -> None:
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


def costly_epilogue(node: Node, anchor: Node) -> bool:
    """Whether a conv kernel's epilogue (the anchor's activation, the fused parts after it)
    expands to long code per vector: then it is looped, not unrolled, over the tile."""
    ops = {anchor.attrs.get("activation", "none"), *(part.op for part in parts(node)[1:])}
    elementwise = all(part.op in emit_elementwise.EMITTERS for part in parts(node)[1:])
    return elementwise and bool(ops & emit_elementwise.COSTLY)


def _shares_into(plan, value: int, container: int) -> bool:  # type: ignore[no-untyped-def]
    buffer = plan.buffers.get(value)
    while buffer is not None and buffer.shares is not None:
        if buffer.shares == container:
            return True
        buffer = plan.buffers[buffer.shares]
    return False


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Python's cycle collector paused: llvmlite builds many small objects that refer to each
    other, and the collector scanning them again and again as modules grow took 20-30% of
    lowering time (FCN-8s 0.53-0.60 -> 0.40-0.44 s, WaveNet 1.15-1.19 -> 0.85-0.99). Their
    cycles are collected once it runs again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _describe(node: Node) -> str:
    return "+".join(part.op for part in parts(node))


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


@dataclass(frozen=True)
class Lowered:
    """The modules and what running them needs: ``kernels`` (one module per distinct kernel)
    and ``entry`` (the ``run`` function calling them); ``params[i]`` is the name of ``float**
    params`` entry ``i`` (declared, derived, then packed copies made by ``packings``: name ->
    (source, block)), and the arena bytes per batch entry (the plan's, plus scratch for
    unfused parts); the entry runs a batch in passes of ``per_pass`` images, in an arena of one
    pass (``entry.images_per_pass``). A lowering read back from ``lowering_cache`` has no
    modules: ``entry`` is None and ``kernels`` empty."""

    entry: ir.Module | None
    kernels: tuple[ir.Module, ...]
    params: tuple[str, ...]
    packings: dict[str, tuple[str, int]]
    arena_bytes: int
    workers: tuple[Worker, ...]
    per_pass: int
    sites: dict[str, tuple[bounds.Site, ...]] = dataclasses.field(default_factory=dict)

    @property
    def modules(self) -> tuple[ir.Module, ...]:
        """Every module to compile and link: the kernels, then the entry."""
        assert self.entry is not None, "a lowering read from the cache has no modules"
        return (*self.kernels, self.entry)

    @property
    def llvm_ir(self) -> str:
        """Every module's text, in that order."""
        return "\n".join(str(module) for module in self.modules)


def lower_graph(
    graph: Graph,
    lanes: int,
    threads: int,
    profile: bool = False,
    on_module: Callable[[str], None] | None = None,
    bounds_check: bool = False,
) -> Lowered:
    """Lower ``graph`` (the entry function: ``entry``); with ``profile``,
    the entry also adds up each worker's wall time in the global ``PROFILE``; with
    ``bounds_check`` every kernel's loads and stores are checked (``bounds``). ``on_module``
    gets the text of each module as soon as it is built (``jit.Build.add``: compiling starts
    while the next is built): every distinct kernel, then the entry."""
    builder = ModuleBuilder(graph, lanes, threads, profile, on_module, bounds_check)
    with _no_cyclic_gc():
        entry = builder.build()
    names = sorted(builder.param_index, key=builder.param_index.__getitem__)
    return Lowered(
        entry,
        tuple(builder.kernels),
        tuple(names),
        builder.packings,
        builder.arena_bytes,
        tuple(builder.workers),
        builder.per_pass,
        builder.sites,
    )
