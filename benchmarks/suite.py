"""Issue 4's benchmark suite: every workload through the ``convdsl bench`` harness, one table.

    python benchmarks/suite.py                 # median of 15 runs after 3 warm-ups
    python benchmarks/suite.py --quick         # 3 runs after 1 warm-up, for a first look
    python benchmarks/suite.py --only L1,N1 --threads 1

Layers L1-L9 and the 3-D encoder-decoder N5 live in ``benchmarks/suite/*.conv``; N1-N4 are
``examples/`` (FCN-8s at batch 1 and 8, ESPCN, WaveNet, MobileNet). Each workload times the
NumPy interpreter, the LLVM backend, PyTorch CPU and ONNX Runtime (the last two when installed)
in this process on the same inputs and weights. The table ends with the geometric means of the
llvm/onnxruntime and llvm/numpy time ratios (below 1 means LLVM is faster).

For a fair NumPy baseline, run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (they force
OpenBLAS onto another kernel set; neither is set on the machine these numbers come from).
Benchmarks time a shared machine: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from convdsl.bench import BACKENDS, BenchResult, bench_file, machine, parse_backends

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "suite"
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True, slots=True)
class Workload:
    id: str
    what: str
    file: Path
    batch: int = 1
    sizes: tuple[tuple[str, int], ...] = ()  # input sizes of a network written for any size


FCN_SIZES = (("H", 224), ("W", 224))

WORKLOADS = (
    Workload("L1", "conv2d 3x3 s1 same 64->64 @56x56", SUITE / "l1_conv3x3.conv"),
    Workload("L2", "conv2d 3x3 s2 same 128->256 @56x56", SUITE / "l2_conv3x3_s2.conv"),
    Workload("L3", "conv2d 1x1 256->256 @28x28", SUITE / "l3_conv1x1.conv"),
    Workload("L4", "depthwise 3x3 same 128ch @56x56", SUITE / "l4_depthwise.conv"),
    Workload("L5", "conv2d 3x3 dilation 4 same 64->64 @64x64", SUITE / "l5_dilated.conv"),
    Workload("L6", "conv1d k3 dil 8 causal 64->64 L=16384", SUITE / "l6_conv1d_causal.conv"),
    Workload("L7", "conv3d 3x3x3 same 16->32 @32^3", SUITE / "l7_conv3d.conv"),
    Workload("L8", "conv_transpose2d k4 s2 p1 64->32 @56x56", SUITE / "l8_transposed.conv"),
    Workload("L9", "bilinear x2 256ch @28x28 + skip add", SUITE / "l9_upscale_add.conv"),
    Workload("N1", "FCN-8s 3x224x224, batch 1", EXAMPLES / "fcn8s.conv", sizes=FCN_SIZES),
    Workload(
        "N1b8", "FCN-8s 3x224x224, batch 8", EXAMPLES / "fcn8s.conv", batch=8, sizes=FCN_SIZES
    ),
    Workload("N2", "ESPCN r=3 3x64x64", EXAMPLES / "espcn.conv"),
    Workload(
        "N3", "WaveNet 10 layers, 32ch, L=16000", EXAMPLES / "wavenet.conv", sizes=(("L", 16000),)
    ),
    Workload("N4", "MobileNet-v1-style 3x224x224", EXAMPLES / "mobilenet.conv"),
    Workload("N5", "3-D encoder-decoder 1x64^3", SUITE / "n5_volume.conv"),
)


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _ms(result: BenchResult, backend: str) -> float | None:
    row = next((r for r in result.rows if r.backend == backend), None)
    return row.ms if row is not None and row.ok else None


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_lines(results: list[tuple[Workload, BenchResult]]) -> list[str]:
    """A markdown table: ms per backend, LLVM GFLOP/s, time ratios, LLVM's max difference."""
    lines = [
        "| id | workload | numpy ms | llvm ms | torch ms | onnxruntime ms | llvm GFLOP/s "
        "| llvm/ort | llvm/numpy | llvm max diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    vs_ort, vs_numpy = [], []
    for workload, result in results:
        ms = {b: _ms(result, b) for b in BACKENDS}
        llvm = next((r for r in result.rows if r.backend == "llvm" and r.ok), None)
        llvm_ms, ort_ms, numpy_ms = ms["llvm"], ms["onnxruntime"], ms["numpy"]
        ort_ratio = llvm_ms / ort_ms if llvm_ms and ort_ms else None
        numpy_ratio = llvm_ms / numpy_ms if llvm_ms and numpy_ms else None
        vs_ort += [ort_ratio] if ort_ratio else []
        vs_numpy += [numpy_ratio] if numpy_ratio else []
        gflops = llvm.gflops if llvm and result.macs else None
        lines.append(
            f"| {workload.id} | {workload.what} | {_cell(ms['numpy'], '.2f')} "
            f"| {_cell(ms['llvm'], '.3f')} | {_cell(ms['torch'], '.3f')} "
            f"| {_cell(ms['onnxruntime'], '.3f')} | {_cell(gflops, '.1f')} "
            f"| {_cell(ort_ratio, '.2f')} | {_cell(numpy_ratio, '.4f')} "
            f"| {_cell(llvm.max_diff if llvm else None, '.1e')} |"
        )
    lines.append(
        f"| | **geometric mean** | | | | | | **{_cell(geomean(vs_ort), '.2f')}** "
        f"| **{_cell(geomean(vs_numpy), '.4f')}** | |"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs after 1 warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="comma-separated workload ids, e.g. L1,N1")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args(argv)
    runs, warmup = (3, 1) if args.quick else (15, 3)
    backends = parse_backends(args.backends)
    chosen = [w for w in WORKLOADS if not args.only or w.id in args.only.split(",")]
    results = []
    for workload in chosen:
        print(f"{workload.id}: {workload.what} ...", file=sys.stderr, flush=True)
        result = bench_file(workload.file, batch=workload.batch, runs=runs, warmup=warmup,
                            threads=args.threads, backends=backends,
                            sizes=dict(workload.sizes))  # fmt: skip
        for row in result.rows:
            if not row.ok:
                print(f"  {row.backend}: {row.status}", file=sys.stderr)
        results.append((workload, result))
    m = machine()
    print(f"machine: {m.cpu} ({m.llvm_cpu}), {m.cores} cores, {m.lanes} fp32 lanes; "
          f"threads {args.threads}; median of {runs} runs after {warmup} warm-up\n")  # fmt: skip
    print("\n".join(table_lines(results)))
    command = shlex.join(["python", "benchmarks/suite.py", *(argv or sys.argv[1:])])
    print(f"\ncommand: {command}")


if __name__ == "__main__":
    main()
