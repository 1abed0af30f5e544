"""Lower a typed, optimized, memory-planned graph to LLVM modules: one per distinct kernel,
and the entry module whose ``run`` calls them in order (``entry``).

A kernel (a node, or a fused node's parts) is a loop over output points (``kernel.Point``): the
flat range of (batch, channel block, outer spatial index) work items is split between threads,
and the last spatial axis is walked one vector at a time, then the tail. A kernel anchored by a
convolution walks its rows in register tiles of several vectors (``conv_kernel``): unmasked
where every tap is inside the input, masked on the borders; the fused parts after the anchor
then run once per vector of the tile. A fused kernel that does not fit the point model (an
anchor followed by pixel_shuffle or crop) runs part by part, its internal values in scratch
slots after the planned arena.

A kernel computes in its output's dtype (``KernelBuilder.dtype``): f32 and f64 kernels are
the same code over ``<lanes x float>`` or ``<lanes/2 x double>`` (one register either way).

Every part's op must have an emitter (``dispatch``); anything else is a ``ConvdslError``
naming the op and its line. A crash while emitting one op is an ``InternalError`` naming that
op and line.
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
    emit_elementwise,
    emit_transpose_phase,
    kernel_reuse,
)
from convdsl.backends.llvm.conv_kernel import ConvKernels
from convdsl.backends.llvm.conv_schedule import channel_stacks, dilation_stacks, lane_steps
from convdsl.backends.llvm.dispatch import (
    BLOCKS,
    KERNELS,
    MASKED_TAIL,
    TILE_EMITTERS,
    check_lowerable,
    emit_point,
    parts,
)
from convdsl.backends.llvm.dispatch import EMITTERS as EMITTERS
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
from convdsl.backends.llvm.loops import for_range, i64, unflatten
from convdsl.backends.llvm.parallel import WORKER_TYPE
from convdsl.diagnostics import ConvdslError, InternalError
from convdsl.ir.graph import Graph, Node
from convdsl.ir.ops import OPS, FusionClass, is_channel_concat
from convdsl.ir.types import DType

# A transposed conv anchoring a fused kernel is split by output phase like one alone, the
# fused parts applied to each output vector (``emit_transpose_phase.Store``).
PHASE_EPILOGUES = True
# Find a kernel that would print the same as one already built by its signature, without
# building it (``kernel_reuse``); off, every kernel is built and compared by its text.
REUSE = True


def light_pipeline(module: ir.Module) -> None:
    """Have LLVM optimize ``module`` (a convolution kernel) with the light pipeline
    (``codegen.TILE_PIPELINE``)."""
    module.add_named_metadata(codegen.TILE_PIPELINE, [ir.MetaDataString(module, "O1 + gvn")])


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
        self.convs = ConvKernels(graph, threads, self.dilation_stacks, self.channel_stacks)

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
            self.convs.emit(k, node)
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
                emit_point(k, node, point, {anchor.output: [vector]})

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
                emit_point(k, node, dataclasses.replace(point, valid=stop - start))
                continue
            with for_range(b, start, stop, lanes, name=f"w{lanes}") as w:
                point = dataclasses.replace(row, w=w, lanes=lanes)
                emit_point(k, node, point)


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
