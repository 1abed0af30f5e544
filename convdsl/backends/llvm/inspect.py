"""What the llvm backend generates, for people reading it: ``convdsl ir FILE --llvm / --asm``.

``llvm_ir`` is the code exactly as ``lower`` builds it (before LLVM's optimizer): one module per
distinct kernel, its worker function named ``kernel{index}_{layer}`` after the first kernel of
that shape in ``graph.nodes`` and its output, then the entry module with ``run``, which lists
which function computes which layer. ``kernel_assembly`` compiles only the modules of the
kernels named ``kernel`` (a layer name like ``conv3`` or ``pool3.h_2``, or ``kernel5``) and returns
their assembly; a layer computed by another layer's function is found under that function.
"""

from __future__ import annotations

from convdsl.backends.llvm.jit import assembly
from convdsl.backends.llvm.lower import lower_graph
from convdsl.backends.llvm.target import host_target
from convdsl.diagnostics import error
from convdsl.ir.graph import Graph, Node


def llvm_ir(graph: Graph, threads: int) -> str:
    return lower_graph(graph, host_target().lanes, threads).llvm_ir


def kernel_assembly(graph: Graph, threads: int, kernel: str) -> str:
    target = host_target()
    lowered = lower_graph(graph, target.lanes, threads)
    labels = [worker.label for worker in lowered.workers]
    chosen = [
        worker.name
        for worker in lowered.workers
        if kernel in (worker.label, *worker.label.split("_", 1), *_layers(worker.node))
    ]
    if not chosen:
        raise error(
            f"--asm {kernel}: no kernel of that name",
            hint=f"the kernels are: {', '.join(labels)}",
        )
    by_name = {module.name: module for module in lowered.kernels}
    texts = []
    for name in dict.fromkeys(chosen):
        users = [worker.label for worker in lowered.workers if worker.name == name]
        shared = f" (computes {', '.join(users)})" if len(users) > 1 else ""
        text = _function_text(assembly(by_name[name], target), name)
        texts.append(f"# ---- {name}{shared}\n{text}")
    return "".join(texts)


def _layers(node: Node) -> list[str]:
    """The layer names a kernel computes (every part of a fused one)."""
    return [node.name, *(part.name for part in node.parts)]


def _function_text(assembly: str, name: str) -> str:
    """The lines of ``name``'s body, from its label to its ``.Lfunc_end`` marker."""
    start = assembly.index(f"\n{name}:") + 1
    end = assembly.index(".Lfunc_end", start)
    end = assembly.index("\n", end) + 1
    return assembly[start:end]
