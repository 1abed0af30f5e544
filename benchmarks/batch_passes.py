"""Time one network at a batch size in passes of different sizes (``entry.images_per_pass``).

    python benchmarks/batch_passes.py examples/mobilenet.conv --batch 8
    python benchmarks/batch_passes.py examples/quickstart.conv --batch 64 --pass-mib 1,2,4

Builds the network once per setting of ``entry.PASS_BYTES`` (every kernel over the whole
batch; one image per pass; passes of each ``--pass-mib``), in one process with the same weights
and inputs (code cache off), checks that every build gives the same bits, then runs them in
turn, one call each per round, so a busy moment of this shared machine slows all alike; prints
the images per pass and the minimum and median ms of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import convdsl
from convdsl.api import backend_graph
from convdsl.backends.llvm import entry
from convdsl.backends.llvm.executable import LlvmExecutable
from convdsl.ir.derived import materialize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a .conv file")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pass-mib", default="2,4,8", help="comma-separated pass sizes, MiB")
    args = parser.parse_args()

    os.environ["CONVDSL_CACHE_DIR"] = "off"  # each setting compiled as it is set
    net = convdsl.compile_file(args.file, backend="numpy")
    graph = backend_graph(net.graph, "llvm")
    params = materialize(graph, net.weights)
    settings = {"whole batch": 1 << 62, "one image": 0}
    settings.update({f"{mib} MiB": int(float(mib) * 2**20) for mib in args.pass_mib.split(",")})
    default = entry.PASS_BYTES
    builds = {}
    try:
        for name, limit in settings.items():
            entry.PASS_BYTES = limit
            builds[name] = LlvmExecutable(graph, params, threads=args.threads)
    finally:
        entry.PASS_BYTES = default
    ids = {graph.values[v].name: v for v in graph.inputs}
    inputs = {ids[k]: v for k, v in net.random_inputs(0, args.batch).items()}
    first = None
    for name, build in builds.items():
        outputs = build.run(inputs)
        first = first or outputs
        if any(not np.array_equal(outputs[v], first[v]) for v in first):
            raise SystemExit(f"{name}: outputs differ from the whole batch's")
    times: dict[str, list[float]] = {name: [] for name in builds}
    for _ in range(args.rounds):
        for name, build in builds.items():
            start = time.perf_counter()
            build.run(inputs)
            times[name].append(1e3 * (time.perf_counter() - start))
    print(f"{args.file}: batch {args.batch}, {args.threads} threads, {args.rounds} rounds")
    for name, build in builds.items():
        per_pass = min(args.batch, build._lowered.per_pass)
        ms = times[name]
        print(
            f"{name:12s} {per_pass:4d} per pass  min {min(ms):9.3f} ms  "
            f"median {statistics.median(ms):9.3f} ms"
        )


if __name__ == "__main__":
    main()
