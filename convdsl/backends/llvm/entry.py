"""The entry function: one native call runs the whole network.

::

    void run(float** inputs, float** outputs, i8* arena, float** params, i64 batch)

fills each kernel call's table of addresses (``kernel.BoundAddresses``: its values' entry-0
addresses and per-entry strides in the arena laid out by ``graph.memory``, its parameters'
addresses), calls the workers in order, each through ``GOMP_parallel`` (``parallel``) unless
there is one thread. A graph output's kernel writes the caller's ``outputs[i]`` (dense
``[B, C, ...]``) itself (``direct_outputs``); any other output is copied there from its arena
slot at the end. The tables' pointers are typed ``float*``; an f64
value's or parameter's is cast to ``double*``. With profiling, the wall time of every call
is added up in the global ``PROFILE``.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from convdsl.backends.llvm.kernel import (
    RUN_FIELDS,
    ArenaAddresses,
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
from convdsl.backends.llvm.parallel import WORKER_TYPE, call_parallel
from convdsl.ir.graph import Graph, Node

ENTRY = "run"
RUN_TYPE = ir.FunctionType(
    VOID, [F32P.as_pointer(), F32P.as_pointer(), PTR, F32P.as_pointer(), I64]
)
PROFILE = "kernel_ns"  # with profiling: i64 nanoseconds spent in each worker, summed over runs
DIRECT_OUTPUTS = True  # see ``direct_outputs``


@dataclass(frozen=True)
class Worker:
    """One call of an outlined kernel function, in the order the entry makes them."""

    name: str  # the function: shared by kernels that print the same
    node: Node  # the node (or part of a fused node) it computes
    role: str  # its ops: "conv2d+relu", "relayout"
    bindings: tuple[tuple[str, int | str], ...] = ()  # its table (``BoundAddresses``)
    label: str = ""  # the call's own name, ``kernel{index}_{layer}`` (``name`` if it is first)
    position: tuple[int, int | None] = (0, None)  # graph.nodes index, part index if a part


def build_entry(
    module: ir.Module,
    graph: Graph,
    workers: list[Worker],
    param_index: dict[str, int],
    scratch: dict[int, tuple[int, int]],
    threads: int,
    profile: bool,
) -> None:
    """Add the entry function ``run`` to ``module``, calling ``workers`` in order."""
    run = ir.Function(module, RUN_TYPE, ENTRY)
    frame_pointer(run)
    b = ir.IRBuilder(run.append_basic_block("entry"))
    fields = dict(zip(RUN_FIELDS, run.args, strict=True))
    direct = direct_outputs(graph)
    arena = ArenaAddresses(graph, b, fields, param_index, scratch, direct)
    functions = {
        name: ir.Function(module, WORKER_TYPE, name)
        for name in dict.fromkeys(worker.name for worker in workers)
    }
    tables = [_table(b, arena, worker) for worker in workers]
    clock = _Clock(b, len(workers)) if profile else None
    for index, (worker, table) in enumerate(zip(workers, tables, strict=True)):
        started = clock.now() if clock else None
        function = functions[worker.name]
        if threads == 1:
            b.call(function, [table])
        else:
            call_parallel(b, function, table, ir.Constant(I32, threads))
        if clock and started is not None:
            clock.add(index, started)
    _copy_outputs(b, graph, arena, fields["outputs"], fields["batch"], direct)
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


def _table(b: ir.IRBuilder, arena: ArenaAddresses, worker: Worker) -> ir.Value:
    """The words ``worker`` reads its addresses from (``BoundAddresses``)."""
    words = [arena.batch]
    for kind, key in worker.bindings:
        if kind == "value":
            assert isinstance(key, int)
            base, per_entry = arena.value(key)
            words += [b.ptrtoint(base, I64), per_entry]
        elif kind == "int":
            assert isinstance(key, str)
            words.append(i64(int(key.partition("=")[2])))
        else:
            assert isinstance(key, str)
            words.append(b.ptrtoint(arena.param(key), I64))
    table = b.alloca(ir.ArrayType(I64, len(words)), name=f"{worker.name}.table")
    for index, word in enumerate(words):
        b.store(word, b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, index)]))
    return b.bitcast(table, PTR)


def _copy_outputs(
    b: ir.IRBuilder,
    graph: Graph,
    arena: ArenaAddresses,
    outputs: ir.Value,
    batch: ir.Value,
    direct: dict[int, int],
) -> None:
    for slot, (_, value) in enumerate(graph.outputs):
        if value in direct:
            continue
        elements = entry_elements(graph.type_of(value))
        entry_bytes = elements * itemsize(graph, value)
        # the outputs table is float**: an f64 output's pointer is cast
        target = cast_pointer(b, b.load(b.gep(outputs, [i64(slot)])), value_element(graph, value))
        base, per_entry = arena.value(value)
        with for_range(b, 0, batch, name="copy") as n:
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
