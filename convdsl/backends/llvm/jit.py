"""JIT compilation of an llvmlite module for the host CPU (MCJIT, LLVM opt level 3).

LLVM's native target is initialized once per process; ``llvm.initialize()`` must not be called
(it raises in llvmlite >= 0.50). The engine owns the compiled code: keep the ``Jit`` object
alive as long as any function address taken from it is in use.
"""

from __future__ import annotations

from functools import cache

import llvmlite.binding as llvm
from llvmlite import ir

from convdsl.backends.llvm import object_cache
from convdsl.backends.llvm.target import Target, host_target


@cache
def initialize() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()


def target_machine(target: Target | None = None) -> llvm.TargetMachine:
    """A target machine for ``target`` (the host by default) at opt level 3."""
    target = target or host_target()
    machine = llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3, reloc="default", codemodel="jitdefault"
    )
    return machine


def optimize(module: llvm.ModuleRef, machine: llvm.TargetMachine) -> None:
    """Run LLVM's O3 module pipeline (new pass manager) over ``module`` in place."""
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)


class Jit:
    """One compiled module: ``address(name)`` gives a function's entry point.

    With ``cache`` (the default), the machine code comes from the on-disk cache when this
    module text was compiled for this target before (``object_cache``); ``cached`` says so.
    """

    def __init__(self, module: ir.Module, target: Target | None = None, cache: bool = True) -> None:
        initialize()
        self.target = target or host_target()
        self.machine = target_machine(self.target)
        module.triple = self.target.triple
        module.data_layout = str(self.machine.target_data)
        self.llvm_ir = str(module)
        key = object_cache.cache_key(self.llvm_ir, self.target) if cache else None
        code = object_cache.load(key) if key else None
        self.cached = code is not None
        if code is not None:
            self.module = llvm.parse_assembly("")
            self.engine = llvm.create_mcjit_compiler(self.module, self.machine)
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(code))
            self.engine.finalize_object()
            return
        parsed = llvm.parse_assembly(self.llvm_ir)
        parsed.verify()
        optimize(parsed, self.machine)
        self.module = parsed
        self.engine = llvm.create_mcjit_compiler(parsed, self.machine)
        compiled: list[bytes] = []
        self.engine.set_object_cache(lambda _module, data: compiled.append(data))
        self.engine.finalize_object()
        self.engine.run_static_constructors()
        if key and compiled:
            object_cache.store(key, compiled[0])

    def address(self, name: str) -> int:
        return int(self.engine.get_function_address(name))

    def assembly(self) -> str:
        if self.cached:
            raise ValueError("the machine code came from the cache: compile with cache=False")
        return str(self.machine.emit_assembly(self.module))
