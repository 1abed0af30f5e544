"""The entry function: one native call runs the whole network.

::

    void run(float** inputs, float** outputs, i8* arena, float** params, i64* batches)

fills each kernel call's table of addresses (``kernel.BoundAddresses``: its values' entry-0
addresses and per-entry strides in the arena laid out by ``graph.memory``, its parameters'
addresses), calls the workers in order, each through ``GOMP_parallel`` (``parallel``) unless
there is one thread. A graph output's kernel writes the caller's ``outputs[i]`` (dense
``[B, C, ...]``) itself (``direct_outputs``); any other output is copied there from its arena
slot at the end. The tables' pointers are typed ``float*``; an f64
value's or parameter's is cast to ``double*``. With profiling, the wall time of every call
is added up in the global ``PROFILE``.

A batch runs in passes of as many images as ``PASS_BYTES`` of arena hold
(``images_per_pass``): every kernel on the pass's images, their outputs copied out, then the
next pass, in an arena of one pass that they all reuse. What a kernel writes is then still in
the caches when the next kernel reads it, as at batch 1, however big the batch; a small
network still gives its threads many images per call.

A network may have several batch sizes: no op mixes two batch dims, so its values fall into
*batch groups*, one per batch dim (``batch_groups``): a symbol such as ``N`` or ``M``, whose
size ``batches[i]`` the caller passes (``batch_symbols`` orders them), or a fixed size. The
groups share no value, so each runs as a network of its own, one after the other: its kernels
in passes over its own images, its outputs copied out. The arena holds any group's pass, since
between groups nothing in it is live (every output is in the caller's array by then).
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from convdsl.backends.llvm.bounds import declare_globals as bounds_globals
from convdsl.backends.llvm.kernel import (
    RUN_FIELDS,
    ArenaAddresses,
    BoundAddresses,
    Images,
    batch_symbols,
    entry_elements,
    itemsize,
    value_element,
)
from convdsl.backends.llvm.loops import (
    F32P,
    I32,
    I64,
    PTR,
    VOID,
    cast_pointer,
    for_range,
    gep,
    i64,
    intrinsic,
)
from convdsl.backends.llvm.parallel import WORKER_TYPE, call_parallel, chunks
from convdsl.ir.graph import Graph, Node
from convdsl.ir.types import Dim

ENTRY = "run"
RUN_TYPE = ir.FunctionType(
    VOID, [F32P.as_pointer(), F32P.as_pointer(), PTR, F32P.as_pointer(), I64.as_pointer()]
)
PROFILE = "kernel_ns"  # with profiling: i64 nanoseconds spent in each worker, summed over runs
DIRECT_OUTPUTS = True  # see ``direct_outputs``
PASS_BYTES = 2 << 20  # the arena one pass over the batch may take (``images_per_pass``)


@dataclass(frozen=True)
class Worker:
    """One call of an outlined kernel function, in the order the entry makes them."""

    name: str  # the function: shared by kernels that print the same
    node: Node  # the node (or part of a fused node) it computes
    role: str  # its ops: "conv2d+relu", "relayout"
    bindings: tuple[tuple[str, int | str], ...] = ()  # its table (``BoundAddresses``)
    label: str = ""  # the call's own name, ``kernel{index}_{layer}`` (``name`` if it is first)
    position: tuple[int, int | None] = (0, None)  # graph.nodes index, part index if a part


def images_per_pass(arena_bytes: int) -> int:
    """How many images ``run`` computes per pass over the kernels, given the arena of one: as many
    as ``PASS_BYTES`` hold (the two cores' L2 here), at least one. Min ms of 10-40 interleaved
    runs (``benchmarks/batch_passes.py``), 2 threads, every kernel over the whole batch vs
    passes of one image vs 2 MiB: MobileNet batch 8 87.8 / 76.1 / 76.0, U-Net batch 8 25.9 /
    23.2 / 23.2 (2 per pass), the 3-D U-Net batch 4 26.4 / 23.9 / 23.9, the quickstart (0.15
    MiB) batch 64 2.63 / 2.23 / 1.84 (13 per pass), batch 16 0.45 / 0.53 / 0.46; passes of 4 or
    8 MiB were slower than 2 on all of these. WaveNet batch 4: 273 -> 157 ms in passes of one
    image."""
    return max(1, PASS_BYTES // max(1, arena_bytes))


def worker_batch(graph: Graph, worker: Worker) -> Dim:
    """The batch dim of the images ``worker`` computes: its node's output's."""
    return graph.type_of(worker.node.outputs[0]).batch


def batch_groups(graph: Graph, workers: list[Worker]) -> dict[Dim, list[int]]:
    """The indices of each batch dim's workers, in run order, the dims in the order their
    first worker runs (then the dims only an output has: an input passed through)."""
    groups: dict[Dim, list[int]] = {}
    for index, worker in enumerate(workers):
        groups.setdefault(worker_batch(graph, worker), []).append(index)
    for _, value in graph.outputs:
        groups.setdefault(graph.type_of(value).batch, [])
    return groups


def build_entry(
    module: ir.Module,
    graph: Graph,
    workers: list[Worker],
    param_index: dict[str, int],
    scratch: dict[int, tuple[int, int]],
    threads: int,
    profile: bool,
    per_pass: int,
    bounds: bool = False,
) -> None:
    """Add the entry function ``run`` to ``module``, calling ``workers`` in order, batch group
    by batch group (``batch_groups``), in passes of ``per_pass`` images (``images_per_pass``)."""
    run = ir.Function(module, RUN_TYPE, ENTRY)
    frame_pointer(run)
    b = ir.IRBuilder(run.append_basic_block("entry"))
    fields = dict(zip(RUN_FIELDS, run.args, strict=True))
    direct = direct_outputs(graph)
    functions = {
        name: ir.Function(module, WORKER_TYPE, name)
        for name in dict.fromkeys(worker.name for worker in workers)
    }
    tables = [
        b.alloca(ir.ArrayType(I64, 1 + _table_size(worker, bounds)), name=f"{worker.name}.table")
        for worker in workers
    ]
    clock = _Clock(b, len(workers)) if profile else None
    running = bounds_globals(module)[1] if bounds else None

    def call_workers(arena: ArenaAddresses, group: list[int]) -> None:
        for index in group:
            worker, table = workers[index], tables[index]
            _fill_table(b, table, arena, worker, bounds, threads)
            if running is not None:
                b.store(i64(index), running)
            started = clock.now() if clock else None
            function, words = functions[worker.name], b.bitcast(table, PTR)
            if threads == 1:
                b.call(function, [words, i64(0)])
            else:
                call_parallel(b, function, words, ir.Constant(I32, threads))
            if clock and started is not None:
                clock.add(index, started)

    symbols = batch_symbols(graph)
    for dim, group in batch_groups(graph, workers).items():
        if isinstance(dim, int):
            batch: ir.Value = i64(dim)
        else:
            batch = b.load(b.gep(fields["batches"], [i64(symbols.index(dim))]), name=dim)
        with for_range(b, 0, batch, per_pass, name="pass") as first:
            left = b.sub(batch, first)
            count = b.select(b.icmp_signed("<", left, i64(per_pass)), left, i64(per_pass))
            images = Images(first, count)
            arena = ArenaAddresses(graph, b, fields, param_index, scratch, direct, images)
            call_workers(arena, group)
            _copy_outputs(b, graph, arena, fields["outputs"], direct, dim)
    b.ret_void()


def direct_outputs(graph: Graph) -> dict[int, int]:
    """Graph outputs that their kernel writes straight into the caller's array (value ->
    output slot) instead of into an arena slot copied out at the end (a pass over the output
    on one thread, after the last kernel): every output listed once, not a graph input, and
    with no other value's bytes inside its slot (a concat's slices written in place).
    An output written in place over a dead input qualifies: that input stays in the arena."""
    plan = graph.memory
    if not DIRECT_OUTPUTS or plan is None:
        return {}
    containers = {buffer.shares for buffer in plan.buffers.values()}
    listed = [value for _, value in graph.outputs]
    return {
        value: slot
        for slot, value in enumerate(listed)
        if listed.count(value) == 1
        and value not in graph.inputs
        and value in plan.buffers
        and value not in containers
    }


def frame_pointer(function: ir.Function) -> None:
    """Keep a frame pointer: spills then go to slots addressed off an aligned frame (see the
    LLVM backend issue: misaligned 512-bit spills made one kernel 1.9x slower)."""
    # llvmlite only accepts enum attributes by name; this string attribute is printed verbatim.
    set.add(function.attributes, '"frame-pointer"="all"')


def _table_size(worker: Worker, bounds: bool) -> int:
    """The words of ``worker``'s table after the batch size (``BoundAddresses``)."""
    return sum(BoundAddresses.words_of(kind, bounds) for kind, _ in worker.bindings)


def _fill_table(
    b: ir.IRBuilder,
    table: ir.Value,
    arena: ArenaAddresses,
    worker: Worker,
    bounds: bool,
    threads: int,
) -> None:
    """Store the words ``worker`` reads its addresses from (``BoundAddresses``) in ``table``."""
    words = [arena.batch]
    for kind, key in worker.bindings:
        if kind == "value":
            assert isinstance(key, int)
            base, per_entry = arena.value(key)
            words += [b.ptrtoint(base, I64), per_entry]
            words += arena.extent(key) if bounds else ()
        elif kind == "int":
            assert isinstance(key, str)
            words.append(i64(int(key.partition("=")[2])))
        elif kind == "counter":
            words += [i64(0), i64(chunks(threads))]  # no work item taken yet; how to cut it
        else:
            assert isinstance(key, str)
            words.append(b.ptrtoint(arena.param(key), I64))
            words += [arena.param_end(key)] if bounds else []
    for index, word in enumerate(words):
        b.store(word, b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, index)]))


def _copy_outputs(
    b: ir.IRBuilder,
    graph: Graph,
    arena: ArenaAddresses,
    outputs: ir.Value,
    direct: dict[int, int],
    dim: Dim,
) -> None:
    """Copy the graph outputs of batch dim ``dim`` that a kernel did not write in place from
    their arena slots into the caller's arrays, for the images of ``arena``'s pass."""
    for slot, (_, value) in enumerate(graph.outputs):
        if value in direct or graph.type_of(value).batch != dim:
            continue
        elements = entry_elements(graph.type_of(value))
        entry_bytes = elements * itemsize(graph, value)
        # the outputs table is float**: an f64 output's pointer is cast
        target = cast_pointer(b, b.load(b.gep(outputs, [i64(slot)])), value_element(graph, value))
        target = gep(b, target, b.mul(arena.images.first, i64(elements)))
        base, per_entry = arena.value(value)
        with for_range(b, 0, arena.batch, name="copy") as n:
            dst = b.bitcast(gep(b, target, b.mul(n, i64(elements))), PTR)
            src = b.bitcast(gep(b, base, b.mul(n, per_entry)), PTR)
            intrinsic(
                b,
                "llvm.memcpy.p0.p0.i64",
                VOID,
                [dst, src, i64(entry_bytes), ir.Constant(ir.IntType(1), 0)],
            )


class _Clock:
    """Wall-clock time of every worker call (``clock_gettime(CLOCK_MONOTONIC)``), added up
    in the global ``PROFILE`` array that the caller reads and resets."""

    def __init__(self, b: ir.IRBuilder, count: int) -> None:
        self.b = b
        timespec = ir.LiteralStructType([I64, I64])
        self.gettime = ir.Function(
            b.module, ir.FunctionType(I32, [I32, timespec.as_pointer()]), "clock_gettime"
        )
        self.spec = b.alloca(timespec, name="timespec")
        self.totals = ir.GlobalVariable(b.module, ir.ArrayType(I64, count), PROFILE)
        self.totals.initializer = ir.Constant(self.totals.value_type, [0] * count)

    def now(self) -> ir.Value:
        b = self.b
        b.call(self.gettime, [ir.Constant(I32, 1), self.spec])
        seconds = b.load(b.gep(self.spec, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
        nanos = b.load(b.gep(self.spec, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
        return b.add(b.mul(seconds, i64(1_000_000_000)), nanos)

    def add(self, index: int, started: ir.Value) -> None:
        b = self.b
        slot = b.gep(self.totals, [ir.Constant(I32, 0), ir.Constant(I32, index)])
        b.store(b.add(b.load(slot), b.sub(self.now(), started)), slot)
