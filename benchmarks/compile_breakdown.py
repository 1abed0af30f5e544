"""Where a cold llvm build of one network spends its time, stage by stage, in one process.

    python benchmarks/compile_breakdown.py examples/fcn8s.conv --top 10

Prints the front end (parse, passes, weights), building the LLVM IR in Python (``lower_graph``),
then LLVM's work summed over the modules (parse, ``codegen.optimize``, ``emit_object``; CPU
seconds, all in this process, where a real build spreads them over the cores) and the modules
that take longest. No code cache is read or written.
"""

from __future__ import annotations

import argparse
import time

import llvmlite.binding as llvm

import convdsl
from convdsl.api import backend_graph
from convdsl.backends.llvm import codegen
from convdsl.backends.llvm.lower import lower_graph
from convdsl.backends.llvm.target import host_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a .conv file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=8, help="slowest modules to list")
    parser.add_argument("--shape", default="", metavar="H=224,W=224",
                        help="input sizes of a network written for any size")  # fmt: skip
    args = parser.parse_args()

    start = time.perf_counter()
    sizes = {k: int(v) for k, v in (item.split("=") for item in args.shape.split(",") if item)}
    net = convdsl.compile_file(args.file, backend="numpy", sizes=sizes)
    graph = backend_graph(net.graph, "llvm")
    front = time.perf_counter() - start
    target = host_target()
    texts: list[str] = []
    start = time.perf_counter()
    lower_graph(graph, target.lanes, args.threads, on_module=texts.append)
    lowering = time.perf_counter() - start
    lines = sum(text.count("\n") for text in texts)
    print(f"front end {front:.2f} s, lowering {lowering:.2f} s: ", end="")
    print(f"{len(texts)} modules, {lines} lines")

    machine = codegen.target_machine(target.triple, target.cpu, target.features)
    rows = []
    for text in texts:
        begin = time.process_time()
        module = llvm.parse_assembly(text)
        module.triple, module.data_layout = machine.triple, str(machine.target_data)
        parsed = time.process_time()
        codegen.optimize(module, machine, light=codegen.wants_light(text))
        optimized = time.process_time()
        machine.emit_object(module)
        done = time.process_time()
        name = text.split("define", 1)[-1].split("(", 1)[0].split("@")[-1]
        rows.append((done - begin, parsed - begin, optimized - parsed, done - optimized, name))
    total = [sum(row[i] for row in rows) for i in range(4)]
    print("LLVM CPU {:.2f} s: parse {:.2f}, optimize {:.2f}, code generation {:.2f}".format(*total))
    for row in sorted(rows, reverse=True)[: args.top]:
        print("  {:.3f} s (parse {:.3f}, optimize {:.3f}, codegen {:.3f})  {}".format(*row))


if __name__ == "__main__":
    main()
