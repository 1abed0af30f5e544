"""The threading runtime: libgomp's ``GOMP_parallel`` called from generated code.

Each kernel is an *outlined worker* ``void worker(i8* data)``. The entry function calls
``GOMP_parallel(worker, data, threads, 0)``, which runs the worker on ``threads`` threads (the
caller is thread 0) and returns when all are done: a barrier per kernel. Inside, a worker asks
``omp_get_thread_num`` / ``omp_get_num_threads`` for its id and the team size and takes one
contiguous share of the kernel's flat range of work items (``thread_share``). libgomp keeps its
thread pool alive between calls, so a kernel costs one wake-up, not a thread creation.

Where libgomp is missing (macOS, a minimal container without GCC's runtime), the same code
links against ``serial_runtime``: one-thread stand-ins for those three functions, with a
warning, so the backend still runs, on one thread.
"""

from __future__ import annotations

import ctypes.util
import warnings
from functools import cache

import llvmlite.binding as llvm
from llvmlite import ir

from convdsl.backends.llvm.loops import I32, I64, PTR, VOID, i64

WORKER_TYPE = ir.FunctionType(VOID, [PTR])
GOMP_TYPE = ir.FunctionType(VOID, [WORKER_TYPE.as_pointer(), PTR, I32, I32])
_CANDIDATES = ("libgomp.so.1", "libgomp.so")


@cache
def load_libgomp() -> str | None:
    """Make libgomp's symbols visible to the JIT (once per process); returns the library
    used, or None (with a warning) if there is none: then link ``serial_runtime``."""
    names = [*_CANDIDATES]
    found = ctypes.util.find_library("gomp")
    if found:
        names.insert(0, found)
    for name in names:
        try:
            llvm.load_library_permanently(name)
        except RuntimeError:
            continue
        return name
    warnings.warn(
        "libgomp (GCC's OpenMP runtime) was not found, so the llvm backend runs on one "
        "thread; install it (Debian/Ubuntu: apt install libgomp1) for --threads to count",
        stacklevel=2,
    )
    return None


def serial_runtime() -> ir.Module:
    """``GOMP_parallel`` (calls the worker once, on this thread), ``omp_get_thread_num``
    (0) and ``omp_get_num_threads`` (1): what generated code calls, without libgomp."""
    module = ir.Module(name="serial_runtime")
    for name, value in (("omp_get_thread_num", 0), ("omp_get_num_threads", 1)):
        function = ir.Function(module, ir.FunctionType(I32, []), name)
        ir.IRBuilder(function.append_basic_block()).ret(ir.Constant(I32, value))
    gomp = ir.Function(module, GOMP_TYPE, "GOMP_parallel")
    b = ir.IRBuilder(gomp.append_basic_block())
    b.call(gomp.args[0], [gomp.args[1]])
    b.ret_void()
    return module


def _declare(module: ir.Module, name: str, ty: ir.FunctionType) -> ir.Function:
    try:
        return module.get_global(name)
    except KeyError:
        return ir.Function(module, ty, name)


def call_parallel(
    builder: ir.IRBuilder, worker: ir.Function, data: ir.Value, threads: ir.Value
) -> None:
    """Run ``worker(data)`` on ``threads`` (i32) threads and wait for all of them."""
    gomp = _declare(builder.module, "GOMP_parallel", GOMP_TYPE)
    builder.call(gomp, [worker, builder.bitcast(data, PTR), threads, ir.Constant(I32, 0)])


def thread_share(builder: ir.IRBuilder, total: ir.Value) -> tuple[ir.Value, ir.Value]:
    """This thread's ``[lo, hi)`` of ``range(total)``: equal contiguous chunks, in thread order."""
    module = builder.module
    get_id = _declare(module, "omp_get_thread_num", ir.FunctionType(I32, []))
    get_count = _declare(module, "omp_get_num_threads", ir.FunctionType(I32, []))
    tid = builder.sext(builder.call(get_id, []), I64)
    count = builder.sext(builder.call(get_count, []), I64)
    chunk = builder.sdiv(builder.add(total, builder.sub(count, i64(1))), count)
    lo = builder.mul(tid, chunk)
    hi = builder.mul(builder.add(tid, i64(1)), chunk)
    lo = builder.select(builder.icmp_signed("<", lo, total), lo, total)
    hi = builder.select(builder.icmp_signed("<", hi, total), hi, total)
    return lo, hi
