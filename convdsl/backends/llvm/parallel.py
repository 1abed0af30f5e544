"""The threading runtime: a small pool of threads of convdsl's own, in generated code.

Each kernel is an *outlined worker* ``void worker(i8* table)``. Its work is a flat range of
items (batch entries x rows x channel blocks) cut into chunks; every thread running the worker
takes the next chunk with one atomic add on a counter in the kernel's table (``work_chunks``)
until none is left, so a thread that runs takes what a descheduled one has not started. The
entry calls ``convdsl_parallel(worker, table, threads)`` (``call_parallel``): it posts the job
to the pool, runs the worker on the calling thread too, and waits only for the threads that
joined the job to finish their chunk, never for a thread that has not woken up yet (which
finds the job closed and goes back to sleep). Idle pool threads spin for ``SPIN_CYCLES``
(kernels, and calls made in a loop, follow each other within microseconds) and then sleep on
a futex, so a busy machine loses no core to them for long. ``threads=1`` runs every worker
directly, with no pool at all.

One pool per compiled network, started on its first parallel call, holds ``threads - 1``
threads; a call made while another call of the same network holds the pool runs its kernels
on its own thread. ``convdsl_pool_stop`` ends the threads (the executable calls it before its
code is freed). Why not libgomp's ``GOMP_parallel``, as before: its static equal shares and
its barrier wait for every thread of the team, so one descheduled thread stalled every kernel
(ESPCN at 2 threads with one core busy: 23 ms against 0.9 at 1 thread), and its waiting
threads spin on the core another process needs. Linux-only (futex); x86-64 and AArch64.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from llvmlite import ir

from convdsl.backends.llvm.loops import I32, I64, PTR, VOID, i64

WORKER_TYPE = ir.FunctionType(VOID, [PTR, I64])  # (table, side): 0 the caller, 1 the pool
PARALLEL = "convdsl_parallel"
PARALLEL_TYPE = ir.FunctionType(VOID, [WORKER_TYPE.as_pointer(), PTR, I32])
STOP = "convdsl_pool_stop"
MAX_POOL = 256  # pool threads at most (``api.MAX_THREADS``)
SPIN_CYCLES = 200_000  # how long an idle pool thread spins before it sleeps (TSC cycles)
SPINS = 2000  # pauses instead, where there is no cycle counter to read (AArch64)
CHUNKS_PER_THREAD = 4  # a kernel's items are cut into about threads x this many chunks
FUTEX = {"x86_64": 202, "aarch64": 98}  # the futex syscall's number
FUTEX_WAIT, FUTEX_WAKE = 128, 129  # FUTEX_PRIVATE_FLAG | FUTEX_WAIT, FUTEX_WAKE


def call_parallel(
    builder: ir.IRBuilder, worker: ir.Function, data: ir.Value, threads: ir.Value
) -> None:
    """Run ``worker(data)`` on up to ``threads`` (i32) threads and wait for it to finish."""
    module = builder.module
    try:
        parallel = module.get_global(PARALLEL)
    except KeyError:
        parallel = ir.Function(module, PARALLEL_TYPE, PARALLEL)
    builder.call(parallel, [worker, builder.bitcast(data, PTR), threads])


def chunks(threads: int) -> int:
    """How many chunks a kernel's work is cut into on ``threads`` threads."""
    return threads * CHUNKS_PER_THREAD if threads > 1 else 1


@contextmanager
def work_chunks(
    b: ir.IRBuilder, total: ir.Value, counter: ir.Value, parts: ir.Value, side: ir.Value
) -> Iterator[tuple[ir.Value, ir.Value]]:
    """Chunks ``[lo, hi)`` of ``range(total)``, ``parts`` of them, taken one after the other
    until none is left: the body is emitted once, in a loop. ``counter`` (an ``i64*`` set to 0
    before the kernel runs) counts the chunks taken from the front in its low 32 bits and from
    the back in its high ones; the caller (``side`` 0) takes from the front, the pool (1) from
    the back. One atomic add takes a chunk: it is ours if fewer than ``parts`` were taken
    before it. So with two threads each computes the same half call after call, as a static
    split would (its data still in its own cache), unless one is late and the other takes
    more."""
    size = b.sdiv(b.add(total, b.sub(parts, i64(1))), parts)
    size = b.select(b.icmp_signed(">", size, i64(0)), size, i64(1))
    back = b.icmp_signed("!=", side, i64(0))
    step = b.select(back, i64(1 << 32), i64(1))
    head, body, done = (b.append_basic_block(n) for n in ("chunk.take", "chunk.body", "chunk.done"))
    b.branch(head)
    b.position_at_end(head)
    taken = b.atomic_rmw("add", counter, step, "monotonic", name="chunk.taken")
    front, behind = b.and_(taken, i64(0xFFFFFFFF)), b.lshr(taken, i64(32))
    mine = b.select(back, b.sub(b.sub(parts, i64(1)), behind), front, name="chunk")
    b.cbranch(b.icmp_signed("<", b.add(front, behind), parts), body, done)
    b.position_at_end(body)
    lo = b.mul(mine, size)
    lo = b.select(b.icmp_signed("<", lo, total), lo, total, name="chunk.lo")
    hi = b.add(lo, size)
    hi = b.select(b.icmp_signed("<", hi, total), hi, total, name="chunk.hi")
    yield lo, hi
    b.branch(head)
    b.position_at_end(done)


def runtime(triple: str) -> ir.Module:
    """``convdsl_parallel``, the pool threads' loop and ``convdsl_pool_stop``, for ``triple``."""
    return _Runtime(triple).module


class _Runtime:
    """The pool's globals and functions. A job is open while ``generation`` is odd: a thread
    joins it by adding itself to ``active`` and seeing the same odd generation again."""

    def __init__(self, triple: str) -> None:
        arch = triple.split("-")[0]
        self.futex_number = FUTEX.get(arch, FUTEX["x86_64"])
        self.x86 = arch == "x86_64"
        self.module = module = ir.Module(name="convdsl_pool")
        self.generation = self._global("convdsl_pool_generation", I32)  # the futex word
        self.active = self._global("convdsl_pool_active", I64)
        self.sleepers = self._global("convdsl_pool_sleepers", I64)
        self.owner = self._global("convdsl_pool_owner", I64)
        self.started = self._global("convdsl_pool_started", I64)
        self.stop = self._global("convdsl_pool_stopping", I64)
        self.job_function = self._global("convdsl_pool_function", WORKER_TYPE.as_pointer())
        self.job_data = self._global("convdsl_pool_data", PTR)
        self.threads = self._global("convdsl_pool_threads", ir.ArrayType(I64, MAX_POOL))
        self.syscall = ir.Function(module, ir.FunctionType(I64, [I64], var_arg=True), "syscall")
        self.sched_yield = ir.Function(module, ir.FunctionType(I32, []), "sched_yield")
        thread_main_type = ir.FunctionType(PTR, [PTR])
        self.create = ir.Function(
            module,
            ir.FunctionType(I32, [I64.as_pointer(), PTR, thread_main_type.as_pointer(), PTR]),
            "pthread_create",
        )
        self.join = ir.Function(
            module, ir.FunctionType(I32, [I64, PTR.as_pointer()]), "pthread_join"
        )
        self.thread_main = ir.Function(module, thread_main_type, "convdsl_pool_thread")
        self._thread_main()
        self._parallel()
        self._stop()

    def _global(self, name: str, ty: ir.Type) -> ir.GlobalVariable:
        variable = ir.GlobalVariable(self.module, ty, name)
        variable.initializer = ir.Constant(ty, None)
        variable.align = 64  # each on a cache line of its own
        return variable

    def _pause(self, b: ir.IRBuilder) -> None:
        if self.x86:
            try:
                pause = self.module.get_global("llvm.x86.sse2.pause")
            except KeyError:
                pause = ir.Function(self.module, ir.FunctionType(VOID, []), "llvm.x86.sse2.pause")
            b.call(pause, [])

    def _clock(self, b: ir.IRBuilder, otherwise: ir.Value) -> ir.Value:
        """The time-stamp counter on x86, else ``otherwise`` (a count of pauses)."""
        if not self.x86:
            return otherwise
        try:
            counter = self.module.get_global("llvm.readcyclecounter")
        except KeyError:
            counter = ir.Function(self.module, ir.FunctionType(I64, []), "llvm.readcyclecounter")
        return b.call(counter, [])

    def _spinning(self, b: ir.IRBuilder, started: ir.Value) -> ir.Value:
        """Whether a spin that began at ``started`` (``_clock``) should go on."""
        if not self.x86:
            return b.icmp_signed("<", started, i64(SPINS))
        return b.icmp_unsigned("<", b.sub(self._clock(b, i64(0)), started), i64(SPIN_CYCLES))

    def _futex(self, b: ir.IRBuilder, operation: int, value: ir.Value) -> None:
        word = b.bitcast(self.generation, PTR)
        b.call(self.syscall, [i64(self.futex_number), word, i64(operation), value, i64(0)])

    def _load(self, b: ir.IRBuilder, variable: ir.Value) -> ir.Value:
        return b.load_atomic(variable, "seq_cst", variable.type.pointee.width // 8)

    def _store(self, b: ir.IRBuilder, value: ir.Value, variable: ir.Value) -> None:
        b.store_atomic(value, variable, "seq_cst", value.type.width // 8)

    def _thread_main(self) -> None:
        """Wait for an open job not yet seen (spin, then sleep on the futex), join it, run
        its worker, leave; until ``convdsl_pool_stop``."""
        f = self.thread_main
        b = ir.IRBuilder(f.append_basic_block("entry"))
        seen = b.alloca(I32, name="seen")
        spins = b.alloca(I64, name="spins")
        b.store(ir.Constant(I32, 0), seen)
        wait, check, idle, sleep, join, run, leave, finish = _blocks(
            f, "wait", "check", "idle", "sleep", "join", "run", "leave", "finish"
        )
        b.branch(wait)
        b.position_at_end(wait)
        b.store(self._clock(b, i64(0)), spins)
        b.branch(check)
        b.position_at_end(check)
        stopping = b.icmp_signed("!=", self._load(b, self.stop), i64(0))
        generation = self._load(b, self.generation)
        open_ = b.icmp_unsigned("==", b.and_(generation, ir.Constant(I32, 1)), ir.Constant(I32, 1))
        new = b.and_(open_, b.icmp_unsigned("!=", generation, b.load(seen)))
        with b.if_then(stopping):
            b.branch(finish)
        b.cbranch(new, join, idle)
        b.position_at_end(idle)
        started = b.load(spins)
        if not self.x86:  # no clock: count the pauses
            b.store(b.add(started, i64(1)), spins)
        with b.if_then(self._spinning(b, started)):
            self._pause(b)
            b.branch(check)
        b.branch(sleep)
        b.position_at_end(sleep)
        b.atomic_rmw("add", self.sleepers, i64(1), "seq_cst")
        self._futex(b, FUTEX_WAIT, b.zext(generation, I64))  # returns at once if it changed
        b.atomic_rmw("sub", self.sleepers, i64(1), "seq_cst")
        b.branch(wait)
        b.position_at_end(join)
        b.atomic_rmw("add", self.active, i64(1), "seq_cst")
        same = b.icmp_unsigned("==", self._load(b, self.generation), generation)
        b.cbranch(same, run, leave)
        b.position_at_end(run)
        b.store(generation, seen)
        function = b.load_atomic(self.job_function, "seq_cst", 8)
        b.call(function, [b.load_atomic(self.job_data, "seq_cst", 8), i64(1)])
        b.branch(leave)
        b.position_at_end(leave)
        b.atomic_rmw("sub", self.active, i64(1), "seq_cst")
        b.branch(wait)
        b.position_at_end(finish)
        b.ret(ir.Constant(PTR, None))

    def _parallel(self) -> None:
        """``convdsl_parallel(worker, data, threads)``: the worker alone with one thread or
        when the pool is busy; else post the job, run it here too, close it, wait for the
        threads that joined."""
        f = ir.Function(self.module, PARALLEL_TYPE, PARALLEL)
        worker, data, threads = f.args
        b = ir.IRBuilder(f.append_basic_block("entry"))
        alone, pool, done = _blocks(f, "alone", "pool", "done")
        single = b.icmp_signed("<=", threads, ir.Constant(I32, 1))
        with b.if_then(single):
            b.call(worker, [data, i64(0)])
            b.ret_void()
        taken = b.cmpxchg(self.owner, i64(0), i64(1), "seq_cst", "seq_cst")
        b.cbranch(b.extract_value(taken, 1), pool, alone)
        b.position_at_end(alone)
        b.call(worker, [data, i64(0)])
        b.ret_void()
        b.position_at_end(pool)
        wanted = b.sext(b.sub(threads, ir.Constant(I32, 1)), I64)
        wanted = b.select(b.icmp_signed("<", wanted, i64(MAX_POOL)), wanted, i64(MAX_POOL))
        started = b.load(self.started)
        with b.if_then(b.icmp_signed("<", started, wanted)):
            self._start_threads(b, wanted)
        b.store_atomic(worker, self.job_function, "seq_cst", 8)
        b.store_atomic(data, self.job_data, "seq_cst", 8)
        b.atomic_rmw("add", self.generation, ir.Constant(I32, 1), "seq_cst")  # open: odd
        with b.if_then(b.icmp_signed(">", self._load(b, self.sleepers), i64(0))):
            self._futex(b, FUTEX_WAKE, i64(MAX_POOL))
        b.call(worker, [data, i64(0)])
        b.atomic_rmw("add", self.generation, ir.Constant(I32, 1), "seq_cst")  # closed: even
        self._wait_idle(b, f)
        self._store(b, i64(0), self.owner)
        b.branch(done)
        b.position_at_end(done)
        b.ret_void()

    def _start_threads(self, b: ir.IRBuilder, wanted: ir.Value) -> None:
        """Create pool threads from the count started so far to ``wanted``; when one cannot be
        created, stop trying (the jobs then have fewer helpers, never fewer items done)."""
        f = b.function
        head, body, end = _blocks(f, "start.head", "start.body", "start.end")
        b.branch(head)
        b.position_at_end(head)
        index = b.load(self.started)
        b.cbranch(b.icmp_signed("<", index, wanted), body, end)
        b.position_at_end(body)
        slot = b.gep(self.threads, [i64(0), index])
        failed = b.call(self.create, [slot, ir.Constant(PTR, None), self.thread_main,
                                      ir.Constant(PTR, None)])  # fmt: skip
        b.store(b.add(index, i64(1)), self.started)
        with b.if_then(b.icmp_signed("!=", failed, ir.Constant(I32, 0))):
            b.store(i64(0), slot)  # nothing to join
            b.store(wanted, self.started)  # stop trying: the process is out of threads
        b.branch(head)
        b.position_at_end(end)

    def _wait_idle(self, b: ir.IRBuilder, f: ir.Function) -> None:
        """Until no thread is inside the job: pause, and after a while yield the core (a
        thread that joined may have been descheduled mid-chunk)."""
        head, spin, end = _blocks(f, "idle.head", "idle.spin", "idle.end")
        before = b.block
        started = self._clock(b, i64(0))
        b.branch(head)
        b.position_at_end(head)
        count = b.phi(I64, name="spins")
        count.add_incoming(started, before)
        busy = b.icmp_signed("!=", self._load(b, self.active), i64(0))
        b.cbranch(busy, spin, end)
        b.position_at_end(spin)
        with b.if_else(self._spinning(b, count)) as (then, otherwise):
            with then:
                self._pause(b)
            with otherwise:
                b.call(self.sched_yield, [])
        count.add_incoming(count if self.x86 else b.add(count, i64(1)), b.block)
        b.branch(head)
        b.position_at_end(end)

    def _stop(self) -> None:
        """``convdsl_pool_stop()``: wake every pool thread to end and join them."""
        f = ir.Function(self.module, ir.FunctionType(VOID, []), STOP)
        b = ir.IRBuilder(f.append_basic_block("entry"))
        self._store(b, i64(1), self.stop)
        b.atomic_rmw("add", self.generation, ir.Constant(I32, 2), "seq_cst")
        self._futex(b, FUTEX_WAKE, i64(MAX_POOL))
        head, body, end = _blocks(f, "join.head", "join.body", "join.end")
        b.branch(head)
        b.position_at_end(head)
        index = b.phi(I64, name="index")
        index.add_incoming(i64(0), f.entry_basic_block)
        b.cbranch(b.icmp_signed("<", index, b.load(self.started)), body, end)
        b.position_at_end(body)
        thread = b.load(b.gep(self.threads, [i64(0), index]))
        with b.if_then(b.icmp_signed("!=", thread, i64(0))):
            b.call(self.join, [thread, ir.Constant(PTR.as_pointer(), None)])
        index.add_incoming(b.add(index, i64(1)), b.block)
        b.branch(head)
        b.position_at_end(end)
        b.store(i64(0), self.started)
        self._store(b, i64(0), self.stop)
        b.ret_void()


def _blocks(function: ir.Function, *names: str) -> list[ir.Block]:
    return [function.append_basic_block(name) for name in names]
