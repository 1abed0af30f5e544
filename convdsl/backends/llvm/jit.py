"""JIT compilation for the host CPU: modules to machine code (``Build``), linked (``Jit``).

The engine owns the code: keep the ``Jit`` object alive as long as any function address taken
from it is in use.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from functools import cache

import llvmlite.binding as llvm
from llvmlite import ir

from convdsl.backends.llvm import codegen, object_cache, parallel
from convdsl.backends.llvm.target import Target, host_target


def target_machine(target: Target | None = None) -> llvm.TargetMachine:
    """A target machine for ``target`` (the host by default) at opt level 3."""
    target = target or host_target()
    return codegen.target_machine(target.triple, target.cpu, target.features)


def assembly(module: ir.Module, target: Target | None = None) -> str:
    """The optimized assembly of ``module`` for ``target`` (the host by default)."""
    machine = target_machine(target)
    return str(machine.emit_assembly(codegen.optimized(str(module), machine)))


class Build:
    """Modules handed over one at a time (``add``, e.g. by ``lower_graph`` as it builds them),
    each found in the on-disk cache (``object_cache``) or compiled on every core while the
    next is built (``codegen.Compiler``); ``link`` waits for them and links the ``Jit``.

    Each module is compiled on its own (a module may call functions another defines), so a
    network whose one layer changed recompiles that layer's kernel and the entry only.
    """

    def __init__(self, target: Target | None = None) -> None:
        self.target = target or host_target()
        self.texts: list[str] = []
        self.keys: list[str] = []  # each module's object_cache key
        self.found: list[bytes | None] = []
        self.missing: list[int] = []
        self.compiler = codegen.Compiler(self.target.triple, self.target.cpu, self.target.features)

    def add(self, llvm_ir: str) -> None:
        key = object_cache.cache_key(llvm_ir, self.target)
        code = object_cache.load(key)  # None when the cache is off (CONVDSL_CACHE_DIR=off)
        if code is None:
            self.missing.append(len(self.texts))
            self.compiler.add(llvm_ir)
        self.texts.append(llvm_ir)
        self.keys.append(key)
        self.found.append(code)

    def abandon(self) -> None:
        """Give up (building the modules failed): stop any helper process."""
        self.compiler.abandon()

    def link(self) -> Jit:
        compiled = dict(zip(self.missing, self.compiler.objects(), strict=True))
        objects = []
        for index, (key, code) in enumerate(zip(self.keys, self.found, strict=True)):
            if code is None:
                code = compiled[index]
                object_cache.store(key, code)
            objects.append(code)
        return Jit(objects, "\n".join(self.texts), len(self.missing), self.target)


class Jit:
    """Object files linked in one engine: ``address(name)`` gives a function's entry point.
    ``compiled`` says how many modules were compiled (not found in the cache), ``cached``
    that none was. Each engine has a threading runtime of its own (``parallel``): call
    ``stop_threads`` before the engine goes."""

    def __init__(
        self, objects: Sequence[bytes], llvm_ir: str, compiled: int, target: Target
    ) -> None:
        self.llvm_ir = llvm_ir
        self.compiled = compiled
        self.cached = compiled == 0
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine(target))
        objects = [*objects, _runtime_object(target, parallel.SPIN_CYCLES)]
        for code in objects:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(code))
        self.engine.finalize_object()

    @classmethod
    def of(cls, modules: Sequence[ir.Module], target: Target | None = None) -> Jit:
        """``modules`` compiled (or found in the cache) and linked."""
        build = Build(target)
        for module in modules:
            build.add(str(module))
        return build.link()

    def address(self, name: str) -> int:
        return int(self.engine.get_function_address(name))

    def stop_threads(self) -> None:
        """End the threading runtime's threads (before the code they run is freed)."""
        ctypes.CFUNCTYPE(None)(self.address(parallel.STOP))()


@cache
def _runtime_object(target: Target, spin_cycles: int) -> bytes:
    """The threading runtime, compiled once per process (and setting of its spin)."""
    return codegen.compile_object(str(parallel.runtime(target.triple)), target_machine(target))
