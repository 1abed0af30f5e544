"""The suite timed on a quiet machine and beside a competing CPU-bound process, convdsl (llvm)
and ONNX Runtime side by side.

    python benchmarks/contention.py                  # every workload of benchmarks/suite.py
    python benchmarks/contention.py --only L1,L3,N2 --runs 35

For each workload both runners are prepared (same network, inputs, weights and threads), then
timed in two states, quiet and loaded, in alternating blocks so a busy moment of this shared
machine hits both: ``loaded`` starts a process that spins on one core (pinned to the last CPU
this process may use) and stops it after the block. Each block is ``--runs`` timed calls after
3 warm-ups. Prints median and p90 ms per runner and state, then the ratios the issue sets
targets on: llvm/ort contended (median; target <= 1.0 geomean, no row > 1.5) and llvm
contended/quiet (target <= 2 on every row).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable

from suite import WORKLOADS

from convdsl.api import compile_file, resolve_threads
from convdsl.bench import PREPARE, Unavailable, machine


def _spin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while True:
        pass


class Competitor:
    """A CPU-bound process pinned to one core, while the ``with`` block runs."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.process: multiprocessing.Process | None = None

    def __enter__(self) -> Competitor:
        self.process = multiprocessing.Process(target=_spin, args=(self.cpu,), daemon=True)
        self.process.start()
        time.sleep(0.05)  # it is spinning before the first timed call
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.join()


def times_ms(run: Callable[[], object], runs: int) -> list[float]:
    for _ in range(3):
        run()
    found = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        found.append(1e3 * (time.perf_counter() - start))
    return found


def p90(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, math.ceil(0.9 * len(values)) - 1)]


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated workload ids, e.g. L1,N2")
    parser.add_argument("--runs", type=int, default=35, help="timed calls per block")
    parser.add_argument("--rounds", type=int, default=2, help="quiet/loaded block pairs")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    threads = resolve_threads(args.threads)
    cpu = max(os.sched_getaffinity(0))
    chosen = [w for w in WORKLOADS if not args.only or w.id in args.only.split(",")]
    header = ("| id | llvm quiet | llvm loaded | ort quiet | ort loaded | llvm/ort loaded "
              "| llvm loaded/quiet |")  # fmt: skip
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    vs_ort, slowdowns = [], []
    for workload in chosen:
        print(f"{workload.id}: {workload.what} ...", file=sys.stderr, flush=True)
        net = compile_file(workload.file, backend="numpy", sizes=dict(workload.sizes))
        inputs = net.random_inputs(seed=0, batch=workload.batch)
        runners = {}
        for name in ("llvm", "onnxruntime"):
            try:
                runners[name] = PREPARE[name](workload.file, net, inputs, threads)
            except Unavailable as exc:
                print(f"  {name}: {exc}", file=sys.stderr)
        timed: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for state in ("quiet", "loaded"):
                for name, run in runners.items():
                    if state == "loaded":
                        with Competitor(cpu):
                            found = times_ms(run, args.runs)
                    else:
                        found = times_ms(run, args.runs)
                    timed.setdefault((name, state), []).extend(found)
                    time.sleep(0.1)  # ONNX Runtime's threads stop spinning
        cells = {key: (statistics.median(v), p90(v)) for key, v in timed.items()}

        def cell(name: str, state: str, cells: dict = cells) -> str:
            found = cells.get((name, state))
            return "-" if found is None else f"{found[0]:.3f} / {found[1]:.3f}"

        llvm_loaded = cells.get(("llvm", "loaded"), (math.nan,))[0]
        ort_loaded = cells.get(("onnxruntime", "loaded"), (math.nan,))[0]
        llvm_quiet = cells.get(("llvm", "quiet"), (math.nan,))[0]
        vs_ort.append(llvm_loaded / ort_loaded)
        slowdowns.append(llvm_loaded / llvm_quiet)
        lines.append(
            f"| {workload.id} | {cell('llvm', 'quiet')} | {cell('llvm', 'loaded')} "
            f"| {cell('onnxruntime', 'quiet')} | {cell('onnxruntime', 'loaded')} "
            f"| {vs_ort[-1]:.2f} | {slowdowns[-1]:.2f} |"
        )
    lines.append(f"| **geomean** | | | | | **{geomean(vs_ort):.2f}** "
                 f"| **{geomean(slowdowns):.2f}** |")  # fmt: skip
    m = machine()
    print(f"machine: {m.cpu} ({m.llvm_cpu}), {m.cores} cores; threads {threads}; competitor "
          f"pinned to CPU {cpu}; ms median / p90 of {args.rounds} x {args.runs} calls per "
          f"state\n")  # fmt: skip
    print("\n".join(lines))
    command = shlex.join(["python", "benchmarks/contention.py", *(argv or sys.argv[1:])])
    print(f"\ncommand: {command}")


if __name__ == "__main__":
    main()
