"""JIT linking of compiled modules for the host CPU (MCJIT).

``Jit`` takes llvmlite modules, finds each one's machine code in the on-disk cache
(``object_cache``) or compiles the missing ones (``codegen``, on every core), and links them in
one engine. The engine owns the code: keep the ``Jit`` object alive as long as any function
address taken from it is in use.
"""

from __future__ import annotations

from collections.abc import Sequence

import llvmlite.binding as llvm
from llvmlite import ir

from convdsl.backends.llvm import codegen, object_cache
from convdsl.backends.llvm.target import Target, host_target

initialize = codegen.initialize


def target_machine(target: Target | None = None) -> llvm.TargetMachine:
    """A target machine for ``target`` (the host by default) at opt level 3."""
    target = target or host_target()
    return codegen.target_machine(target.triple, target.cpu, target.features)


def assembly(module: ir.Module, target: Target | None = None) -> str:
    """The optimized assembly of ``module`` for ``target`` (the host by default)."""
    target = target or host_target()
    machine = target_machine(target)
    module.triple = target.triple
    module.data_layout = str(machine.target_data)
    return str(machine.emit_assembly(codegen.optimized(str(module), machine)))


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
        machine = target_machine(self.target)
        texts = []
        for module in modules:
            module.triple = self.target.triple
            module.data_layout = str(machine.target_data)
            texts.append(str(module))
        self.llvm_ir = "\n".join(texts)
        keys = [object_cache.cache_key(text, self.target) if cache else None for text in texts]
        found = [object_cache.load(key) if key else None for key in keys]
        missing = [i for i, code in enumerate(found) if code is None]
        compiled = codegen.compile_objects(
            [texts[i] for i in missing], self.target.triple, self.target.cpu, self.target.features
        )
        objects = dict(zip(missing, compiled, strict=True))
        for index, code in objects.items():
            key = keys[index]
            if key:
                object_cache.store(key, code)
        self.compiled = len(missing)
        self.cached = not missing
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine)
        for index, cached in enumerate(found):
            code = cached if cached is not None else objects[index]
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(code))
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        return int(self.engine.get_function_address(name))
