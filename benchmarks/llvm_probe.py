"""Probe the LLVM backend on one network on 1 and 2 threads, against the NumPy interpreter.

    python benchmarks/llvm_probe.py                                   # L1: 3x3 conv 64->64 @56
    python benchmarks/llvm_probe.py benchmarks/suite/l2_conv3x3_s2.conv --runs 40

Prints the compile time (code cache off), the largest difference from the interpreter, and the
minimum and median ms and GFLOP/s (2 x MACs as ``convdsl check`` counts them) of ``--runs``
runs after a warm-up, for the interpreter and the LLVM backend on 1 and 2 threads, side by
side in one process, batch 1. On a shared machine the minimum is the steadier number for
comparing two versions of a kernel; the full harness with PyTorch and ONNX Runtime is
``convdsl bench`` / ``benchmarks/suite.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

import convdsl
from convdsl.backends.llvm.executable import LlvmExecutable
from convdsl.ir.cost import graph_macs
from convdsl.ir.derived import materialize

L1 = "input x: f32[N, 64, 56, 56]\noutput y = conv2d(x, 64, kernel=3, padding=same)\n"


def times_ms(run: Callable[[], object], runs: int) -> tuple[float, float]:
    """(minimum, median) milliseconds of ``runs`` calls after one warm-up."""
    run()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        samples.append(1e3 * (time.perf_counter() - start))
    return min(samples), statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", help="a .conv file (default: L1)")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    os.environ["CONVDSL_CACHE_DIR"] = "off"  # time the compile, not the cache
    net = (  # the graph and weights only
        convdsl.compile_file(args.file, backend="numpy")
        if args.file
        else convdsl.compile_string(L1, "l1", backend="numpy")
    )
    params = materialize(net.graph, net.weights)
    start = time.perf_counter()
    one = LlvmExecutable(net.graph, params, threads=1)
    print(f"compile: {time.perf_counter() - start:.2f} s")
    two = LlvmExecutable(net.graph, params, threads=2)
    inputs = net.random_inputs(seed=0)
    ids = {net.graph.values[v].name: v for v in net.graph.inputs}
    arrays = {ids[name]: array for name, array in inputs.items()}
    want = net(inputs)
    got = two.run(arrays)
    diff = max(float(np.abs(got[v] - want[name]).max()) for name, v in net.graph.outputs)
    print(f"max |llvm - numpy| = {diff:.2e}")
    flop = 2 * graph_macs(net.graph)
    for name, run in [
        ("numpy", lambda: net(inputs)),
        ("llvm 1 thread", lambda: one.run(arrays)),
        ("llvm 2 threads", lambda: two.run(arrays)),
    ]:
        best, median = times_ms(run, args.runs)
        rates = f"{flop / best / 1e6:6.1f} / {flop / median / 1e6:6.1f} GFLOP/s" if flop else ""
        print(f"{name:15s} min {best:8.3f} ms  median {median:8.3f} ms  {rates}")


if __name__ == "__main__":
    main()
