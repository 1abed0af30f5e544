"""Throughput of one compiled network called from several Python threads at once.

    python benchmarks/concurrent_calls.py examples/quickstart.conv examples/espcn.conv
    python benchmarks/concurrent_calls.py examples/mobilenet.conv --callers 4 --threads 1,2

For each network and each ``--threads`` (the llvm backend's own threads per call), makes the
same number of calls three ways, in rounds that alternate them so a busy moment of this shared
machine slows all alike: ``serial`` (one caller, one call after another), ``pool`` (``--callers``
Python threads calling the one ``Network`` at once; each call runs in an arena of its own, as
the backend does) and ``lock`` (the same callers, every call behind one lock: what serializing
the calls would give). Every result is checked against the serial result of its input. Prints
calls per second, median and spread over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import convdsl

Call = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def calls_per_second(call: Call, inputs: list[dict[str, np.ndarray]], callers: int,
                     per_caller: int, expected: list[dict[str, np.ndarray]]) -> float:  # fmt: skip
    """Calls per second of ``callers`` threads making ``per_caller`` calls each."""
    wrong: list[str] = []

    def work(caller: int) -> None:
        for i in range(per_caller):
            k = (caller + i) % len(inputs)
            got = call(inputs[k])
            if any(not np.array_equal(got[n], expected[k][n]) for n in got):
                wrong.append(f"caller {caller} call {i}")

    threads = [threading.Thread(target=work, args=(c,)) for c in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if wrong:
        raise SystemExit(f"{len(wrong)} wrong results, first: {wrong[0]}")
    return callers * per_caller / elapsed


def _serialized(net: convdsl.Network) -> Call:
    """``net`` with every call behind one lock."""
    lock = threading.Lock()

    def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with lock:
            return net(inputs)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help=".conv files")
    parser.add_argument("--callers", type=int, default=4, help="Python threads calling at once")
    parser.add_argument("--threads", default="1,2", help="llvm threads per call, comma-separated")
    parser.add_argument("--seconds", type=float, default=0.5, help="per way and round, about")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    print(f"{'network':<12} {'thr':>3} {'way':<6} {'calls/s median':>15} {'min-max':>17}")
    for path in args.files:
        for threads in (int(t) for t in args.threads.split(",")):
            net = convdsl.compile_file(path, threads=threads)
            inputs = [net.random_inputs(seed=s, batch=args.batch) for s in range(4)]
            expected = [net(x) for x in inputs]
            locked = _serialized(net)

            started = time.perf_counter()
            net(inputs[0])
            per_call = max(time.perf_counter() - started, 1e-5)
            per_caller = max(2, int(args.seconds / per_call / args.callers))
            ways: dict[str, tuple[Call, int]] = {
                "serial": (net, 1),
                "pool": (net, args.callers),
                "lock": (locked, args.callers),
            }
            rates: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(args.rounds):
                for way, (call, callers) in ways.items():
                    count = per_caller * args.callers // callers
                    rates[way].append(calls_per_second(call, inputs, callers, count, expected))
            for way, values in rates.items():
                spread = f"{min(values):.0f}-{max(values):.0f}"
                print(f"{path.stem:<12} {threads:>3} {way:<6} "
                      f"{statistics.median(values):>15.0f} {spread:>17}")  # fmt: skip


if __name__ == "__main__":
    main()
