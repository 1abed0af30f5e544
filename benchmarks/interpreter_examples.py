"""Time the NumPy interpreter on every example network.

    python benchmarks/interpreter_examples.py [--runs 7] [--batch 1] [examples/*.conv ...]

Prints, per example: median wall time over ``--runs`` runs after one warm-up, MACs per batch
entry, and GFLOP/s (2 * MACs * batch / time). For a fair NumPy baseline run it with
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset (``env -u OPENBLAS_CORETYPE -u
OPENBLAS_L2_SIZE python benchmarks/...``); the script reports which are set.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import convdsl
from convdsl.ir.cost import graph_macs

REPO = Path(__file__).resolve().parents[1]


def time_network(path: Path, runs: int, batch: int) -> tuple[float, int]:
    net = convdsl.compile_file(path, backend="numpy")
    inputs = net.random_inputs(seed=0, batch=batch)
    net(inputs)  # warm-up: first-touch allocation, BLAS thread start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        net(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), graph_macs(net.graph)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    files = args.files or sorted((REPO / "examples").glob("*.conv"))
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"numpy {np.__version__}, python {sys.version.split()[0]}, OpenBLAS env: {env or 'unset'}"
    )
    print(f"{'network':<16} {'ms':>10} {'GMAC':>8} {'GFLOP/s':>8}")
    for path in files:
        seconds, macs = time_network(path, args.runs, args.batch)
        gflops = 2 * macs * args.batch / seconds / 1e9
        print(f"{path.stem:<16} {seconds * 1e3:>10.2f} {macs / 1e9:>8.3f} {gflops:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
