"""JIT compilation of llvmlite modules for the host CPU (MCJIT, LLVM opt level 3).

LLVM's native target is initialized once per process; ``llvm.initialize()`` must not be called
(it raises in llvmlite >= 0.50). The engine owns the compiled code: keep the ``Jit`` object
alive as long as any function address taken from it is in use.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def compile_object(llvm_ir: str, machine: llvm.TargetMachine) -> bytes:
    """Machine code (an object file) for one module's text: parsed, verified, optimized."""
    parsed = llvm.parse_assembly(llvm_ir)
    parsed.verify()
    optimize(parsed, machine)
    return bytes(machine.emit_object(parsed))


def assembly(module: ir.Module, target: Target | None = None) -> str:
    """The optimized assembly of ``module`` for ``target`` (the host by default)."""
    initialize()
    target = target or host_target()
    machine = target_machine(target)
    module.triple = target.triple
    module.data_layout = str(machine.target_data)
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    optimize(parsed, machine)
    return str(machine.emit_assembly(parsed))


class Jit:
    """Modules compiled and linked in one engine: ``address(name)`` gives a function's entry.

    Each module is compiled on its own (a module may call functions another defines), so
    with ``cache`` (the default) each one's machine code comes from the on-disk cache when the
    same module text was compiled for this target before (``object_cache``): a network whose
    one layer changed recompiles that layer's kernel only. ``cached`` says every module was a
    hit, ``compiled`` how many were not.
    """

    def __init__(
        self, modules: Sequence[ir.Module], target: Target | None = None, cache: bool = True
    ) -> None:
        initialize()
        self.target = target or host_target()
        self.machine = target_machine(self.target)
        texts = []
        for module in modules:
            module.triple = self.target.triple
            module.data_layout = str(self.machine.target_data)
            texts.append(str(module))
        self.llvm_ir = "\n".join(texts)
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.machine)
        self.compiled = 0
        for text in texts:
            key = object_cache.cache_key(text, self.target) if cache else None
            code = object_cache.load(key) if key else None
            if code is None:
                code = compile_object(text, self.machine)
                self.compiled += 1
                if key:
                    object_cache.store(key, code)
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(code))
        self.engine.finalize_object()
        self.cached = self.compiled == 0

    def address(self, name: str) -> int:
        return int(self.engine.get_function_address(name))
