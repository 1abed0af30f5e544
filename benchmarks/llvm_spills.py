"""List the hot loops of the llvm backend's kernels that move vectors to or from the stack.

    python benchmarks/llvm_spills.py examples/*.conv benchmarks/suite/*.conv

Compiles every kernel module of each network for this CPU, cuts each basic block of the
assembly at its own backward jump (the loop body), and prints the loops with at least
``--fmas`` FMAs and two weight broadcasts (a convolution's channel loop) that have at least
two ``vmovaps``/``vmovups`` to or from ``(%rsp)``/``(%rbp)``: vectors LLVM spilled or keeps
on the stack. A mask reloaded once per iteration shows as one or two; ten or more is a real
spill (session 6 found L5's dilated taps that way: LLVM had merged the loads two taps share
and kept them on the stack across the tap between). No timing: the code alone.
"""

from __future__ import annotations

import argparse
import re

import convdsl
from convdsl.api import backend_graph
from convdsl.backends.llvm.jit import assembly
from convdsl.backends.llvm.lower import lower_graph
from convdsl.backends.llvm.target import host_target

LABEL = re.compile(r"^\.?[A-Za-z0-9_]+:")
STACK_MOVE = re.compile(r"vmov(aps|ups|apd|upd)\s+.*\((%rsp|%rbp)\)")


def loops(text: str) -> list[list[str]]:
    """Each labelled block cut at a jump back to its own label (blocks that are no loop
    are left out)."""
    blocks: list[list[str]] = []
    for line in text.split("\n"):
        if LABEL.match(line):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    found = []
    for block in blocks:
        label = re.escape(block[0].rstrip(":"))
        end = next(
            (i for i, line in enumerate(block) if re.search(rf"\bj\w+\s+{label}$", line)), None
        )
        if end is not None:
            found.append(block[: end + 1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help=".conv files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fmas", type=int, default=12, help="FMAs that make a loop hot")
    args = parser.parse_args()
    target = host_target()
    for path in args.files:
        graph = backend_graph(convdsl.compile_file(path, backend="numpy").graph, "llvm")
        for module in lower_graph(graph, target.lanes, args.threads).kernels:
            for body in loops(assembly(module, target)):
                fmas = sum("vfmadd" in line for line in body)
                broadcasts = sum("vbroadcasts" in line for line in body)
                moves = sum(bool(STACK_MOVE.search(line)) for line in body)
                if fmas >= args.fmas and broadcasts >= 2 and moves >= 2:
                    print(f"{path}  {module.name}  {body[0]}  {fmas} FMAs, {moves} stack moves")


if __name__ == "__main__":
    main()
