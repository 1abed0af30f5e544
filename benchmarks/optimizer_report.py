"""What the optimizer buys on every example network: kernels, activation traffic, planned
memory, and NumPy-interpreter time at -O0 against -O2.

    python benchmarks/optimizer_report.py [--runs 9] [--batch 1] [examples/*.conv ...]

Kernel counts are the nodes just before and just after fusion (and at -O0, before folding);
traffic is the activation bytes every kernel reads and writes per batch entry
(``convdsl.ir.cost.graph_traffic``) at -O0 and at -O2; memory is the -O2 plan's arena, the
naive one-buffer-per-value total and the liveness lower bound, per batch entry. Times are
medians over ``--runs`` runs of each level after one warm-up of each, the two levels
alternating (which goes first alternates too), so drift in the machine affects both alike.
Both levels run with the same declared weights. For a fair NumPy baseline run it with
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` unset (``env -u OPENBLAS_CORETYPE -u
OPENBLAS_L2_SIZE python benchmarks/...``); the script reports which are set.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import convdsl
from convdsl.api import Network, read_source
from convdsl.ir.cost import graph_traffic
from convdsl.passes.pipeline import compile_source
from convdsl.passes.report import PipelineTrace, build_report

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20


@dataclass(frozen=True)
class Row:
    name: str
    kernels_o0: int
    kernels_before: int
    kernels_after: int
    traffic_o0: tuple[int, int]  # (read, written) bytes per batch entry
    traffic_o2: tuple[int, int]
    arena: int
    naive: int
    lower_bound: int
    seconds_o0: float
    seconds_o2: float


def measure(path: Path, runs: int, batch: int) -> Row:
    trace = PipelineTrace()
    optimized = compile_source(read_source(path), opt_level=2, after=trace)
    report = build_report(trace, opt_level=2)
    plain = trace.steps[0].after
    assert report.fusion_plan is not None and report.memory is not None
    reference = Network(plain, backend="numpy")
    fast = Network(optimized, backend="numpy", weights=reference.weights)
    seconds_o0, seconds_o2 = time_side_by_side(reference, fast, runs, batch)
    return Row(
        name=path.stem,
        kernels_o0=len(plain.nodes),
        kernels_before=report.fusion_plan.kernels_before,
        kernels_after=report.fusion_plan.kernels_after,
        traffic_o0=graph_traffic(plain),
        traffic_o2=graph_traffic(optimized),
        arena=report.memory.arena_bytes,
        naive=report.memory.naive_bytes,
        lower_bound=report.memory.lower_bound_bytes,
        seconds_o0=seconds_o0,
        seconds_o2=seconds_o2,
    )


def time_side_by_side(a: Network, b: Network, runs: int, batch: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b`` on the same inputs, runs interleaved."""
    inputs = a.random_inputs(seed=0, batch=batch)
    a(inputs), b(inputs)  # warm-up: first-touch allocation, BLAS thread start
    times: dict[int, list[float]] = {0: [], 1: []}
    for run in range(runs):
        order = (0, 1) if run % 2 == 0 else (1, 0)
        for which in order:
            net = (a, b)[which]
            start = time.perf_counter()
            net(inputs)
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def mib(count: int) -> str:
    return f"{count / MIB:.2f}"


def table(rows: list[Row]) -> list[str]:
    header = [
        "network",
        "kernels -O0",
        "kernels before → after fusion",
        "written MiB -O0 → -O2",
        "read MiB -O0 → -O2",
        "arena MiB",
        "naive MiB",
        "lower bound MiB",
        "ms -O0",
        "ms -O2",
        "-O0 / -O2",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r.name,
            str(r.kernels_o0),
            f"{r.kernels_before} → {r.kernels_after}",
            f"{mib(r.traffic_o0[1])} → {mib(r.traffic_o2[1])}",
            f"{mib(r.traffic_o0[0])} → {mib(r.traffic_o2[0])}",
            mib(r.arena),
            mib(r.naive),
            mib(r.lower_bound),
            f"{r.seconds_o0 * 1e3:.2f}",
            f"{r.seconds_o2 * 1e3:.2f}",
            f"{r.seconds_o0 / r.seconds_o2:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def machine() -> str:
    """``lscpu``'s model name and the CPU count, the versions that matter, the BLAS env."""
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        names = [ln.split(":", 1)[1] for ln in lscpu.splitlines() if ln.startswith("Model name")]
        model = names[0].strip() if names else ""
    except (OSError, subprocess.CalledProcessError):
        pass
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return (
        f"{model or 'unknown CPU'}, {os.cpu_count()} cores; numpy {np.__version__}, "
        f"python {sys.version.split()[0]}, convdsl {convdsl.__version__}; "
        f"OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE: {env or 'unset'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--runs", type=int, default=9, help="timed runs per level (>= 7)")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    if args.runs < 7:
        parser.error("--runs must be at least 7")
    files = args.files or sorted((REPO / "examples").glob("*.conv"))
    rows = [measure(path, args.runs, args.batch) for path in files]
    command = shlex.join(["python", "benchmarks/optimizer_report.py", *(argv or sys.argv[1:])])
    print(f"Command: `{command}` (batch {args.batch}, median of {args.runs} runs per level)")
    print(f"Machine: {machine()}")
    print("Bytes are per batch entry.")
    print()
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
