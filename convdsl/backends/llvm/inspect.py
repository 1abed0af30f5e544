"""What the llvm backend generates, for people reading it: ``convdsl ir FILE --llvm / --asm``.

``llvm_ir`` is the module exactly as ``lower`` builds it (before LLVM's optimizer): one worker
function per kernel, named ``kernel{index}_{layer}`` after the kernel's position in
``graph.nodes`` and its output, plus the entry ``run``. ``kernel_assembly`` JIT-compiles the
module for the host and returns the assembly of the workers whose name contains ``kernel`` (a
layer name like ``conv3``, or ``kernel5``).
"""

from __future__ import annotations

import re

from convdsl.backends.llvm.jit import Jit
from convdsl.backends.llvm.lower import lower_graph
from convdsl.backends.llvm.parallel import load_libgomp
from convdsl.backends.llvm.target import host_target
from convdsl.diagnostics import error
from convdsl.ir.graph import Graph


def llvm_ir(graph: Graph, threads: int) -> str:
    target = host_target()
    module = lower_graph(graph, target.lanes, threads).module
    module.triple = target.triple
    return str(module)


def kernel_names(module_text: str) -> list[str]:
    return re.findall(r"^define [^@]*@\"?(kernel[\w.]*)\"?\(", module_text, flags=re.MULTILINE)


def kernel_assembly(graph: Graph, threads: int, kernel: str) -> str:
    load_libgomp()
    target = host_target()
    module = lower_graph(graph, target.lanes, threads).module
    names = kernel_names(str(module))
    chosen = [name for name in names if kernel in (name, *name.split("_", 1))]
    if not chosen:
        raise error(
            f"--asm {kernel}: no kernel of that name",
            hint=f"the kernels are: {', '.join(names)}",
        )
    assembly = Jit(module, target, cache=False).assembly()
    return "".join(_function_text(assembly, name) for name in chosen)


def _function_text(assembly: str, name: str) -> str:
    """The lines of ``name``'s body, from its label to its ``.Lfunc_end`` marker."""
    start = assembly.index(f"\n{name}:") + 1
    end = assembly.index(".Lfunc_end", start)
    end = assembly.index("\n", end) + 1
    return f"# ---- {name}\n{assembly[start:end]}"
