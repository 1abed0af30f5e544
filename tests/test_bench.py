"""The benchmark harness: the IR -> PyTorch converter against the interpreter, and ``convdsl bench``
returning and printing rows. Nothing here asserts a time."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import convdsl
from convdsl import bench
from convdsl.api import backend_graph
from convdsl.backends.llvm.executable import LlvmExecutable
from convdsl.backends.numpy.interpreter import NumpyExecutable
from convdsl.bench_torch import TorchNetwork
from convdsl.cli import main
from convdsl.ir.derived import materialize

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.conv"))
TINY = "input x: f32[N, 3, 10, 10]\noutput y = relu(conv2d(x, 4, kernel=3, padding=same))\n"


SIZES = {"fcn8s": {"H": 64, "W": 96}, "wavenet": {"L": 500}}  # written for any size


def converted_matches_interpreter(source: str, name: str, batch: int = 1) -> None:
    sizes = SIZES.get(Path(name).stem)
    net = convdsl.compile_string(source, name, opt_level=0, backend="numpy", sizes=sizes)
    inputs = net.random_inputs(seed=3, batch=batch)
    want = net(inputs)
    module = TorchNetwork(net.graph, net.weights)
    with torch.inference_mode():
        got = module(*(torch.from_numpy(inputs[n]) for n in net.graph.input_names()))
    assert len(got) == len(want)
    for (out, _), tensor in zip(net.graph.outputs, got, strict=True):
        scale = float(np.abs(want[out]).max())
        np.testing.assert_allclose(tensor.numpy(), want[out], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_converter_reproduces_every_example(path: Path) -> None:
    converted_matches_interpreter(path.read_text(), str(path))


# The converter paths the examples do not reach: asymmetric pads, hand-padded windows, orders.
CASES = {
    "conv_same_even_kernel": "input x: f32[N, 2, 9, 8]\n"
    "output y = conv2d(x, 3, kernel=[4, 2], stride=[2, 1], padding=same, activation=gelu)",
    "conv1d_causal_groups": "input x: f32[N, 4, 20]\n"
    "output y = conv1d(x, 6, kernel=3, dilation=2, padding=causal, groups=2, activation=silu)",
    "depthwise3d": "input x: f32[N, 3, 6, 7, 5]\n"
    "output y = depthwise3d(x, kernel=3, multiplier=2, padding=[[2, 0], [1, 1], [0, 1]])",
    "transpose_asymmetric": "input x: f32[N, 3, 5, 6]\n"
    "output y = conv_transpose2d(x, 4, kernel=3, stride=2, padding=[[1, 0], [0, 2]], "
    "output_padding=1, activation=hard_swish)",
    "transpose_same_1d": "input x: f32[N, 2, 7]\n"
    "output y = conv_transpose1d(x, 3, kernel=4, stride=3, padding=same, dilation=2)",
    "max_pool_ceil_asymmetric": "input x: f32[N, 2, 11, 9]\n"
    "output y = max_pool2d(x, 3, stride=2, padding=[[2, 0], [1, 1]], ceil_mode=true)",
    "max_pool_native_ceil": "input x: f32[N, 2, 10]\n"
    "output y = max_pool1d(x, 3, stride=2, padding=1, ceil_mode=true, dilation=1)",
    "avg_pool_include_pad": "input x: f32[N, 2, 9, 10]\n"
    "output y = avg_pool2d(x, 3, stride=2, padding=[[2, 0], [1, 1]], ceil_mode=true, "
    "include_pad=true)",
    "avg_pool_exclude_pad": "input x: f32[N, 2, 7, 7, 6]\n"
    "output y = avg_pool3d(x, 2, stride=2, padding=1, ceil_mode=true)",
    "movement": "input x: f32[N, 8, 5, 6]\n"
    "a = pixel_shuffle(x, 2, order=dcr)\n"
    "b = pad(a, [[1, 2], [0, 3]], mode=reflect)\n"
    "c = pad(b, 1, mode=replicate)\n"
    "d = pad(c, [[0, 1], [2, 0]], value=0.5)\n"
    "output y = crop(d, size=[9, 11], offset=center)",
    "upscale_modes": "input x: f32[N, 2, 3, 4, 2]\n"
    "a = upscale(x, [2, 1, 3])\n"
    "output y = upscale(a, 2, mode=trilinear, align_corners=true)\n"
    "output z = upscale(x, 3, mode=linear)",
    "activations": "input x: f32[N, 4, 6]\n"
    "a = elu(leaky_relu(x, alpha=0.2), alpha=0.5)\n"
    "b = gelu(a, approximate=tanh) * hard_sigmoid(x)\n"
    "c = concat(b, tanh(x), relu6(x))\n"
    "d = batch_norm(c, eps=0.01)\n"
    "output y = softmax(d)\n"
    "output z = global_avg_pool(d) * global_max_pool(d)",
}


@pytest.mark.parametrize("name", CASES)
def test_converter_reproduces_op_variants(name: str) -> None:
    converted_matches_interpreter(CASES[name], f"{name}.conv", batch=2)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.conv"
    path.write_text(TINY)
    return path


def test_bench_returns_rows_for_numpy_and_llvm(tiny: Path) -> None:
    result = bench.bench_file(tiny, runs=2, warmup=0, backends=("numpy", "llvm"), batch=2)
    assert [row.backend for row in result.rows] == ["numpy", "llvm"]
    assert all(row.ok for row in result.rows)
    assert result.macs == 4 * 3 * 9 * 10 * 10
    for row in result.rows:
        assert row.ms is not None and math.isfinite(row.ms) and row.ms > 0
        assert row.gflops == pytest.approx(2 * result.macs * 2 / row.ms / 1e6)
        assert row.max_diff is not None and row.max_diff < 1e-4
    assert result.row("numpy").speedup == 1.0 and result.row("numpy").max_diff == 0.0
    numpy_ms, llvm = result.row("numpy").ms, result.row("llvm")
    assert numpy_ms is not None and llvm.ms is not None
    assert llvm.speedup == pytest.approx(numpy_ms / llvm.ms)
    assert result.machine.lanes in (4, 8, 16) and result.machine.cores >= 1


def test_the_numpy_row_times_the_interpreter(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    interpreter_run = NumpyExecutable.run

    def counted(self: NumpyExecutable, inputs: dict) -> dict:  # type: ignore[type-arg]
        runs.append(self)
        return interpreter_run(self, inputs)

    monkeypatch.setattr(NumpyExecutable, "run", counted)
    bench.bench_file(tiny, runs=3, warmup=2, backends=("numpy",))
    assert len(runs) == 1 + 2 + 3  # the reference outputs, the warm-ups, the timed runs


def test_profile_times_every_kernel_in_run_order(tmp_path: Path) -> None:
    path = tmp_path / "p.conv"
    path.write_text(
        "input x: f32[N, 3, 12, 12]\n"
        "a = relu(conv2d(x, 8, kernel=3, stride=2, padding=same))\n"
        "output y = upscale(a, 2, mode=bilinear) + conv2d(x, 8, kernel=1)\n"
    )
    result = bench.bench_file(path, runs=3, warmup=1, backends=("llvm",), batch=2, profile=True)
    kernels = result.kernels
    graph = convdsl.compile_file(path, backend="llvm").graph
    # every kernel appears, the strided conv after the conversion of its input to phase rows
    assert [k.role for k in kernels] == ["relayout", "conv2d+relu", "upscale", "conv2d+add"]
    assert [k.layer for k in kernels] == [node.name for node in graph.nodes]
    assert all(k.ms > 0 for k in kernels)
    conv = kernels[1]
    assert conv.macs == 2 * 8 * 3 * 9 * 6 * 6 and conv.line == 2
    assert conv.gflops == pytest.approx(2 * conv.macs / conv.ms / 1e6)
    assert kernels[0].macs == 0  # a copy: reported in GB/s only
    lines = bench.report_lines(result)
    table = lines[lines.index(next(line for line in lines if line.startswith("llvm kernels"))) :]
    assert table[1].split()[:5] == ["ms", "share", "GFLOP/s", "GB/s", "kernel"]
    assert len(table) == 3 + len(kernels)


def test_kernel_profile_is_in_milliseconds_within_the_run(tmp_path: Path) -> None:
    """Each run's kernel times, added up, fit in the wall time of that run (the entry times
    each worker inside the call): a unit error (ns or us for ms) could not. No comparison
    between two timings of different runs, which a busy machine would make flaky."""
    net = convdsl.compile_string(
        "input x: f32[N, 8, 40, 40]\noutput y = relu(conv2d(x, 16, kernel=3, padding=same))"
    )
    graph = backend_graph(net.graph, "llvm")
    native = LlvmExecutable(graph, materialize(graph, net.weights), threads=2, profile=True)
    (x,) = graph.inputs
    inputs = {x: net.random_inputs(seed=0, batch=2)["x"]}
    native.run(inputs)
    native.kernel_profile()
    for _ in range(3):
        start = time.perf_counter()
        native.run(inputs)
        wall_ms = 1e3 * (time.perf_counter() - start)
        kernels_ms = sum(ms for _, ms in native.kernel_profile())
        assert 0 < kernels_ms <= wall_ms


def test_bench_torch_row_matches_interpreter(tiny: Path) -> None:
    result = bench.bench_file(tiny, runs=1, warmup=0, backends=("numpy", "torch"))
    torch_row = result.row("torch")
    assert torch_row.ok and torch_row.max_diff is not None and torch_row.max_diff < 1e-4


def test_a_missing_package_is_reported_not_raised(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    result = bench.bench_file(tiny, runs=1, warmup=0, backends=("numpy", "onnxruntime"))
    status = result.row("onnxruntime").status
    # onnx itself may be missing too on a fresh machine; onnxruntime must be named either way.
    assert status.startswith("not installed (onnxruntime") and status.endswith(" missing)")
    assert result.row("onnxruntime").ms is None
    lines = bench.report_lines(result)
    assert any(line.split()[:3] == ["onnxruntime", "not", "installed"] for line in lines)


def test_report_table_has_a_row_per_backend() -> None:
    m = bench.Machine("Some CPU", 2, "znver3", 8)
    rows = (
        bench.Row("numpy", "ok", 10.0, 2.0, 1.0, 0.0, None),
        bench.Row("llvm", "ok", 0.5, 40.0, 20.0, 3e-6, 0.25),
        bench.Row("torch", "not installed"),
    )
    result = bench.BenchResult("n.conv", 1, 2, 15, 3, 10**7, m, rows)
    lines = bench.report_lines(result)
    assert lines[0] == "network n.conv  batch 1  0.020 GFLOP per run"
    assert lines[1] == "machine Some CPU (znver3), 2 cores, 8 fp32 lanes"
    assert lines[4].split() == ["backend", "median", "ms", "GFLOP/s", "vs", "numpy",
                                "max", "|diff|", "setup", "s"]  # fmt: skip
    assert lines[7].split() == ["llvm", "0.500", "40.0", "20.00x", "3.0e-06", "0.25"]
    assert lines[8].split() == ["torch", "not", "installed"]


def test_cli_bench_prints_the_table(tiny: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "convdsl", "bench", str(tiny), "--runs", "2"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"network {tiny}  batch 1")
    assert "threads 2" in lines[2] and "median of 2 runs" in lines[2]
    backends = [line.split()[0] for line in lines[6:]]
    assert backends == ["numpy", "llvm", "torch", "onnxruntime"]


def test_cli_bench_unknown_backend_is_a_user_error(
    tiny: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", str(tiny), "--backends", "numpy,tensorflow"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'tensorflow'" in err
    assert "numpy, llvm, torch, onnxruntime" in err


def test_cli_bench_rejects_zero_runs(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(tiny), "--runs", "0"]) == 2
    assert "expected an integer >= 1" in capsys.readouterr().err


def load_suite() -> object:
    spec = importlib.util.spec_from_file_location("suite", ROOT / "benchmarks" / "suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["suite"] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


def test_suite_files_compile_to_the_issue_shapes() -> None:
    suite = load_suite()
    assert [w.id for w in suite.WORKLOADS] == [  # type: ignore[attr-defined]
        *(f"L{i}" for i in range(1, 10)),
        "N1",
        "N1b8",
        "N2",
        "N3",
        "N4",
        "N5",
    ]
    for workload in suite.WORKLOADS:  # type: ignore[attr-defined]
        convdsl.compile_file(workload.file, opt_level=0, backend="numpy")
    l2 = convdsl.compile_file(
        ROOT / "benchmarks/suite/l2_conv3x3_s2.conv", opt_level=0, backend="numpy"
    )
    assert l2.outputs["y"].shape == ("N", 256, 28, 28)


def test_suite_table_geometric_means() -> None:
    suite = load_suite()
    m = bench.Machine("cpu", 2, "x", 8)

    def result(llvm_ms: float, ort_ms: float) -> bench.BenchResult:
        rows = (
            bench.Row("numpy", "ok", 100.0, 1.0, 1.0, 0.0),
            bench.Row("llvm", "ok", llvm_ms, 5.0, 100.0 / llvm_ms, 1e-6, 0.1),
            bench.Row("onnxruntime", "ok", ort_ms, 5.0, 100.0 / ort_ms, 1e-6, 0.1),
        )
        return bench.BenchResult("f", 1, 2, 1, 0, 1, m, rows)

    w = suite.WORKLOADS[0]  # type: ignore[attr-defined]
    lines = suite.table_lines([(w, result(2.0, 1.0)), (w, result(1.0, 2.0))])  # type: ignore[attr-defined]
    cells = [c.strip() for c in lines[-1].split("|")]
    assert cells[8:10] == ["**1.00**", "**0.0141**"]  # geomean(2, 0.5); geomean(0.02, 0.01)
    assert [c.strip() for c in lines[2].split("|")][5] == "-"  # torch not run


def test_parse_backends_keeps_order_and_drops_repeats() -> None:
    assert bench.parse_backends("llvm, numpy,llvm") == ("llvm", "numpy")
    with pytest.raises(convdsl.ConvdslError, match="no backend named"):
        bench.parse_backends(" , ")
