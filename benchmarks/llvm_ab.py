"""A/B-test settings of the llvm backend on one network, interleaved in one process.

    python benchmarks/llvm_ab.py benchmarks/suite/l5_dilated.conv \\
        --variant "" --variant "conv_schedule.CHUNK_ROWS=48" --threads 1 --runs 40

Each ``--variant`` is a comma-separated list of ``module.NAME=value`` assignments to constants
of ``convdsl.backends.llvm`` modules, or of ``convdsl.passes`` modules written
``passes.module.NAME=value`` (``""``: as they are), applied while that variant is compiled
(code cache off; a variant setting a pass constant compiles the network again, same weights)
and undone after (a constant another module imported by name keeps its value there: set it
where it is read):

    python benchmarks/llvm_ab.py benchmarks/suite/n5_volume.conv \
        --variant "" --variant "passes.memory.PARTIAL_CONCATS=False" --threads 1

The variants then run in turn, one call each per
round, so a busy moment of this shared machine slows all of them alike; prints the minimum and
median ms and GFLOP/s of each, and the largest difference of its outputs from the first's.
On this machine single runs of a kernel move by up to 2x: the minimum of interleaved rounds is
the number to compare.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import statistics
import time

import numpy as np

import convdsl
from convdsl.backends.llvm.executable import LlvmExecutable
from convdsl.ir.cost import graph_macs
from convdsl.ir.derived import materialize
from convdsl.ir.graph import Graph


def parse_variant(text: str) -> list[tuple[object, str, object]]:
    """``"module.NAME=value,..."`` -> ``[(module, NAME, value)]`` (values as Python literals)."""
    settings = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        target, _, value = item.partition("=")
        module_name, _, name = target.rpartition(".")
        package = "convdsl" if module_name.startswith("passes.") else "convdsl.backends.llvm"
        module = importlib.import_module(f"{package}.{module_name}")
        if not hasattr(module, name):
            raise SystemExit(f"{target}: no such constant in {package}.{module_name}")
        settings.append((module, name, ast.literal_eval(value)))
    return settings


def build(path: str, net: convdsl.Network, text: str, threads: int) -> Variant:
    """The variant ``text`` of ``net`` (compiled again from ``path`` if it sets a pass)."""
    settings = parse_variant(text)
    saved = [(module, name, getattr(module, name)) for module, name, _ in settings]
    try:
        for module, name, value in settings:
            setattr(module, name, value)
        if any(module.__name__.startswith("convdsl.passes") for module, _, _ in settings):
            net = convdsl.compile_file(path, backend="numpy")  # the same seeded weights
        params = materialize(net.graph, net.weights)
        return net.graph, LlvmExecutable(net.graph, params, threads=threads)
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


Variant = tuple[Graph, LlvmExecutable]


def run(variant: Variant, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs by name for inputs by name."""
    graph, native = variant
    ids = {graph.values[v].name: v for v in graph.inputs}
    results = native.run({ids[name]: array for name, array in inputs.items()})
    return {name: results[v] for name, v in graph.outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="a .conv file")
    parser.add_argument("--variant", action="append", default=[], help="module.NAME=value,...")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    variants = args.variant or [""]
    os.environ["CONVDSL_CACHE_DIR"] = "off"  # every variant compiled as it is set
    net = convdsl.compile_file(args.file, backend="numpy")  # graph and weights only
    built = [build(args.file, net, text, args.threads) for text in variants]
    inputs = net.random_inputs(seed=0)
    outputs = [run(variant, inputs) for variant in built]  # also the warm-up
    times: list[list[float]] = [[] for _ in built]
    for _ in range(args.runs):
        for variant, samples in zip(built, times, strict=True):
            start = time.perf_counter()
            run(variant, inputs)
            samples.append(1e3 * (time.perf_counter() - start))
    flops = 2 * graph_macs(net.graph)
    print(f"{args.file}: {flops / 1e9:.3f} GFLOP, {args.threads} threads, {args.runs} rounds")
    for text, samples, result in zip(variants, times, outputs, strict=True):
        diff = max(float(np.abs(result[v] - outputs[0][v]).max()) for v in result)
        best, middle = min(samples), statistics.median(samples)
        print(
            f"{text or '(as is)':<40} min {best:8.3f} ms  median {middle:8.3f} ms  "
            f"{flops / best / 1e6:7.1f} GFLOP/s  diff {diff:.1e}"
        )


if __name__ == "__main__":
    main()
