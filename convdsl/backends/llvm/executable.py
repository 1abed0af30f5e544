"""``LlvmExecutable``: a graph compiled to native code, bound to its parameters.

Same interface as ``NumpyExecutable``: ``run({value id: array}) -> {value id: array}``. At
construction the graph is lowered (``lower``), JIT-compiled for the host (``jit``) and the
weights (declared and derived, ``convdsl.ir.derived.materialize``) are made contiguous arrays of
their parameter's dtype once, plus the repacked conv weights the kernels asked for
(``kernel.pack_weight``). Each run allocates only the outputs and takes an arena (64-byte
aligned) from a pool (``ArenaPool``); it makes ONE native call, through ctypes, which releases
the GIL. Calls from several threads at once are safe: each runs in an arena of its own, which
goes back to the pool when the call returns, so the pool holds as many arenas as calls ever
ran at once (measured against one lock around the call: see docs/api.md). The
kernel that computes a graph output writes it into the (64-byte aligned) output array itself,
unless the memory plan shares its slot (then the generated code copies it out at the end).
Inputs are passed as they are (C-contiguous, of their value's dtype, element-aligned): the
kernels assume no more alignment than one element's.

>>> import numpy as np, convdsl
>>> from convdsl.ir.derived import materialize
>>> net = convdsl.compile_string('input x: f32[N, 2, 9]\\noutput y = relu(conv1d(x, 3, kernel=3))')
>>> native = LlvmExecutable(net.graph, materialize(net.graph, net.weights), threads=1)
>>> x = np.random.default_rng(0).standard_normal((2, 2, 9)).astype(np.float32)
>>> (x_id,), ((_, y_id),) = net.graph.inputs, net.graph.outputs
>>> bool(np.allclose(native.run({x_id: x})[y_id], net(x=x)["y"], rtol=1e-4, atol=1e-5))
True
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from convdsl.backends.llvm import bounds, lowering_cache
from convdsl.backends.llvm.emit_transpose_phase import pack_transposed
from convdsl.backends.llvm.entry import ENTRY, PROFILE, Worker
from convdsl.backends.llvm.jit import Build, Jit
from convdsl.backends.llvm.kernel import batch_symbols, pack_weight, param_dtype
from convdsl.backends.llvm.lower import lower_graph
from convdsl.backends.llvm.target import host_target
from convdsl.ir.graph import Graph
from convdsl.ir.types import bind_shape

Array = np.ndarray
_RUN = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p
)
ALIGNMENT = 64


def aligned_empty(nbytes: int, alignment: int = ALIGNMENT) -> Array:
    """A byte array of ``nbytes`` whose data pointer is ``alignment``-aligned."""
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start : start + nbytes]


def aligned_array(shape: tuple[int, ...], dtype: np.dtype) -> Array:
    """An uninitialized array whose data is ``ALIGNMENT``-aligned: kernels write graph outputs
    straight into it (``entry.direct_outputs``), with vector stores that then split no cache
    line."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    return aligned_empty(nbytes).view(dtype).reshape(shape)


class ArenaPool:
    """Arenas for calls that may run at once: ``take`` hands one no running call uses (the
    largest free one, grown if it is too small, or a new one), ``give`` returns it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[Array] = []

    def take(self, nbytes: int) -> Array:
        with self._lock:
            arena = self._free.pop() if self._free else None
        if arena is None or arena.nbytes < nbytes:
            arena = aligned_empty(nbytes)
        return arena

    def give(self, arena: Array) -> None:
        with self._lock:
            self._free.append(arena)
            self._free.sort(key=lambda free: free.nbytes)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The bytes of each arena not in use (once calls are done: as many as ever ran at
        once), smallest first."""
        with self._lock:
            return tuple(arena.nbytes for arena in self._free)


@dataclass(frozen=True)
class _Bound:
    """Parameter arrays and the table of their addresses, replaced as one by ``bind`` so a
    call running meanwhile keeps the arrays its table points at."""

    arrays: list[Array]
    table: Array


class LlvmExecutable:
    """A graph compiled by the llvm backend, bound to its parameters."""

    def __init__(
        self,
        graph: Graph,
        params: Mapping[str, Array],
        threads: int = 2,
        profile: bool = False,
        bounds_check: bool = False,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, found {threads}")
        if threads > 1 and not sys.platform.startswith("linux"):
            warnings.warn(
                f"the llvm backend's threads need Linux (futex); running on one thread, not "
                f"{threads}",
                stacklevel=3,
            )
            threads = 1
        self.graph = graph
        self.threads = threads
        self.target = host_target()
        self.profile = profile
        self.bounds_check = bounds_check
        key = lowering_cache.lowering_key(graph, self.target, threads, profile, bounds_check)
        found = lowering_cache.load(key, graph) if key else None
        if found is not None:  # no LLVM IR to build: the record has what running needs
            self._lowered, objects = found
            self.jit = Jit(objects, "", 0, self.target)
        else:
            build = Build(self.target)
            try:
                self._lowered = lower_graph(
                    graph, self.target.lanes, threads, profile, build.add, bounds_check
                )
            except BaseException:
                build.abandon()
                raise
            self.jit = build.link()
            if key:
                lowering_cache.store(key, self._lowered, build.keys)
        # the runtime's threads end before the engine (and the code they run) goes
        weakref.finalize(self, self.jit.stop_threads)
        self._arena_per_entry = self._lowered.arena_bytes
        self._run = _RUN(self.jit.address(ENTRY))
        self._profile = None
        if profile:
            count = len(self._lowered.workers)
            address = self.jit.engine.get_global_value_address(PROFILE)
            self._profile = (ctypes.c_int64 * count).from_address(address)
        self._fault = None
        if bounds_check:
            address = self.jit.engine.get_global_value_address(bounds.FAULT)
            self._fault = (ctypes.c_int64 * 6).from_address(address)
        self._symbols = batch_symbols(graph)
        self._groups = {graph.type_of(v).batch for v in graph.inputs}  # every value's is one
        self.arenas = ArenaPool()
        self.bind(params)

    def bind(self, params: Mapping[str, Array]) -> None:
        """Use new parameter arrays (same names and shapes) without recompiling: the generated
        code reads parameters through a pointer table, so only the packing is redone."""
        arrays = dict(params)
        dtypes = {name: param_dtype(self.graph, name).numpy for name in self._lowered.params}
        for name, (source, block) in self._lowered.packings.items():
            packer = pack_transposed if name.endswith(f"@tpack{block}") else pack_weight
            arrays[name] = packer(arrays[source], block, dtypes[name])
        bound = [_aligned(arrays[n], dtypes[n]) for n in self._lowered.params]
        table = _pointer_table(bound)
        if self.bounds_check:  # the entry finds each parameter's bytes after the addresses
            table = _with_sizes(table, bound)
        self._bound = _Bound(bound, table)

    def kernel_profile(self) -> list[tuple[Worker, float]]:
        """``(worker, ms)`` per kernel, in run order: wall time summed over the runs since the
        last call (compiled with ``profile=True``), then the counters restart from zero."""
        if self._profile is None:
            raise ValueError("compiled without profile=True")
        times = [ns / 1e6 for ns in self._profile]
        ctypes.memset(self._profile, 0, ctypes.sizeof(self._profile))
        return list(zip(self._lowered.workers, times, strict=True))

    @property
    def llvm_ir(self) -> str:
        """The LLVM IR of every module (built again if the lowering came from the cache)."""
        if not self.jit.llvm_ir:
            lanes, threads = self.target.lanes, self.threads
            return lower_graph(
                self.graph, lanes, threads, self.profile, None, self.bounds_check
            ).llvm_ir
        return self.jit.llvm_ir

    def run(self, inputs: Mapping[int, Array]) -> dict[int, Array]:
        """Value id -> array for the graph inputs; returns value id -> array for the outputs,
        each as its type stores it (``[N, *spatial, C]`` for a ``ChannelsLast`` one)."""
        arrays = [_aligned(inputs[v], self.graph.type_of(v).dtype.numpy) for v in self.graph.inputs]
        bindings: dict[str, int] = {}
        for value, array in zip(self.graph.inputs, arrays, strict=True):
            for dim, size in zip(self.graph.type_of(value).stored_shape, array.shape, strict=True):
                if isinstance(dim, str):
                    bindings[dim] = size
        types = [self.graph.type_of(v) for _, v in self.graph.outputs]
        outputs = [
            aligned_array(bind_shape(t.stored_shape, bindings), t.dtype.numpy) for t in types
        ]
        sizes = [d if isinstance(d, int) else bindings[str(d)] for d in self._groups]
        images = min(max(sizes, default=1), self._lowered.per_pass)
        bound = self._bound  # one read: ``bind`` from another thread replaces it whole
        arena = self.arenas.take(self._arena_per_entry * images)
        batches = [bindings[s] for s in self._symbols]
        input_table, output_table = _pointer_table(arrays), _pointer_table(outputs)
        if self.bounds_check:  # the bytes of each array follow the addresses (``bounds``)
            batches.append(arena.nbytes)
            input_table = _with_sizes(input_table, arrays)
            output_table = _with_sizes(output_table, outputs)
        batch_table = np.array(batches or [0], dtype=np.int64)
        try:
            self._run(
                input_table.ctypes.data,
                output_table.ctypes.data,
                arena.ctypes.data,
                bound.table.ctypes.data,
                batch_table.ctypes.data,
            )
        finally:
            self.arenas.give(arena)
        if self._fault is not None and self._fault[0]:
            fault, self._fault[0] = list(self._fault), 0
            lowered = self._lowered
            raise bounds.fault_error(fault, lowered.workers, lowered.sites, self.graph)
        return {v: out for (_, v), out in zip(self.graph.outputs, outputs, strict=True)}


def _aligned(array: Array, dtype: np.dtype) -> Array:
    """``array`` as C-contiguous ``dtype`` at an address aligned to its element (copied only
    if it is not already)."""
    return np.require(array, dtype=dtype, requirements=["C", "A", "E"])


def _pointer_table(arrays: list[Array]) -> Array:
    return np.array([a.ctypes.data for a in arrays] or [0], dtype=np.uintp)


def _with_sizes(table: Array, arrays: list[Array]) -> Array:
    """A table of ``arrays``' addresses followed by their bytes (bounds-checked builds)."""
    return np.concatenate([table[: len(arrays)], np.array([a.nbytes for a in arrays], np.uintp)])
