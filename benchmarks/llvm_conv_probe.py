"""Probe the LLVM backend on one 3x3 conv against the NumPy interpreter.

    python benchmarks/llvm_conv_probe.py

L1 of issue 4: conv2d 3x3 s1 same 64->64 at 56x56, batch 1. Prints compile time, the max
difference to the interpreter, and median ms / GFLOP/s of 15 runs after a warm-up for the
interpreter and the LLVM backend on 1 and 2 threads, measured side by side in one process.
The full benchmark harness (`convdsl bench`, ONNX Runtime and PyTorch columns) is issue 4's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

import convdsl
from convdsl.backends.llvm.executable import LlvmExecutable
from convdsl.ir.derived import materialize

SOURCE = "input x: f32[N, 64, 56, 56]\noutput y = conv2d(x, 64, kernel=3, padding=same)\n"
FLOP = 2 * 64 * 64 * 9 * 56 * 56


def median_ms(run: Callable[[], object], runs: int = 15) -> float:
    run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    net = convdsl.compile_string(SOURCE, "l1.conv")
    params = materialize(net.graph, net.weights)
    start = time.perf_counter()
    two = LlvmExecutable(net.graph, params, threads=2)
    one = LlvmExecutable(net.graph, params, threads=1)
    print(f"compile (two executables): {time.perf_counter() - start:.2f} s")
    x = np.random.default_rng(0).standard_normal((1, 64, 56, 56)).astype(np.float32)
    x_id, y_id = net.graph.inputs[0], net.graph.outputs[0][1]
    diff = np.abs(two.run({x_id: x})[y_id] - net(x=x)["y"]).max()
    print(f"max |llvm - numpy| = {diff:.2e}")
    for name, run in [
        ("numpy", lambda: net(x=x)),
        ("llvm 1 thread", lambda: one.run({x_id: x})),
        ("llvm 2 threads", lambda: two.run({x_id: x})),
    ]:
        ms = median_ms(run)
        print(f"{name:15s} {ms:8.2f} ms  {FLOP / ms / 1e6:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
