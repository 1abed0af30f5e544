"""The benchmark harness behind ``convdsl bench``: one network, several backends, side by side.

``bench_file`` compiles a ``.conv`` file once and times, in this process, on the same seeded
inputs and the same weights: the NumPy interpreter, the LLVM backend and, when installed,
PyTorch CPU and ONNX Runtime running the network converted from the IR (``bench_torch``). Each
backend gets ``warmup`` untimed runs, then ``runs`` timed ones; a row holds the median, GFLOP/s
(2 * MACs * batch / time), the speedup over the interpreter and the largest absolute difference
of any output from the interpreter's. The rows are data, so tests check them without timing.

>>> result = bench_file("examples/quickstart.conv", runs=1, warmup=0, backends=("numpy",))
>>> [(row.backend, row.status) for row in result.rows]
[('numpy', 'ok')]
"""

from __future__ import annotations

import importlib.util
import io
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convdsl.api import Network, compile_file, resolve_threads
from convdsl.diagnostics import error
from convdsl.ir.cost import graph_macs, node_macs, node_traffic

if TYPE_CHECKING:  # torch is imported only when a torch or onnxruntime row is asked for
    from convdsl.bench_torch import TorchNetwork

BACKENDS = ("numpy", "llvm", "torch", "onnxruntime")
Outputs = dict[str, np.ndarray]
Runner = Callable[[], Outputs]


class Unavailable(Exception):
    """A backend that cannot run here; the message says why (e.g. 'not installed')."""


@dataclass(frozen=True, slots=True)
class Row:
    """One backend's result. ``status`` is "ok" or why it has no numbers."""

    backend: str
    status: str
    ms: float | None = None  # median over the timed runs
    gflops: float | None = None
    speedup: float | None = None  # NumPy interpreter time / this time
    max_diff: float | None = None  # max |output - interpreter output| over every output
    setup_s: float | None = None  # compile / convert / export before the first run

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str
    cores: int
    llvm_cpu: str
    lanes: int  # fp32 vector lanes the LLVM backend generates for


@dataclass(frozen=True, slots=True)
class KernelRow:
    """One native kernel of the llvm backend, from a profiled build (``bench_file(profile=)``):
    median wall time per run and what it computes."""

    kernel: str  # the generated function
    role: str  # its ops ("conv2d+batch_norm+relu", "relayout")
    layer: str
    line: int
    ms: float
    macs: int  # per run; 0 for data movement
    bytes: int  # activations read and written per run

    @property
    def gflops(self) -> float:
        return 2 * self.macs / self.ms / 1e6 if self.ms > 0 else 0.0

    @property
    def gbytes(self) -> float:
        return self.bytes / self.ms / 1e6 if self.ms > 0 else 0.0


@dataclass(frozen=True, slots=True)
class BenchResult:
    file: str
    batch: int
    threads: int
    runs: int
    warmup: int
    macs: int  # per batch entry
    machine: Machine
    rows: tuple[Row, ...]
    kernels: tuple[KernelRow, ...] = ()  # with profile=True

    def row(self, backend: str) -> Row:
        return next(r for r in self.rows if r.backend == backend)


def parse_backends(text: str) -> tuple[str, ...]:
    """``"numpy,llvm"`` -> ``("numpy", "llvm")``; an unknown name is a user error."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        problem = f"unknown backend '{unknown[0]}'" if unknown else "no backend named"
        raise error(
            f"--backends: {problem}; expected a comma-separated list of {', '.join(BACKENDS)}"
        )
    return names


def machine() -> Machine:
    from convdsl.backends.llvm.target import host_target

    target = host_target()
    return Machine(_cpu_model(), os.cpu_count() or 1, target.cpu, target.lanes)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_file(
    path: str | Path,
    *,
    batch: int = 1,
    runs: int = 15,
    warmup: int = 3,
    threads: int | None = None,
    backends: Sequence[str] = BACKENDS,
    seed: int = 0,
    profile: bool = False,
    sizes: Mapping[str, int] | None = None,
) -> BenchResult:
    """Time ``backends`` on the network in ``path``; the NumPy interpreter is always the
    reference for differences and speedups, so it runs even when not listed. ``profile``: also
    time every native kernel of the llvm backend (a separate build with timers around each
    kernel call, run ``runs`` times after the warm-ups)."""
    if runs < 1 or warmup < 0 or batch < 1:
        raise error("--runs and --batch must be >= 1, --warmup >= 0")
    threads = resolve_threads(threads)
    net = compile_file(path, seed=seed, backend="numpy", sizes=sizes)  # the reference row
    if net.sizes:
        names = ",".join(f"{name}=..." for name in net.sizes)
        raise error("timing needs the input sizes", hint=f"give them: --shape {names}")
    inputs = net.random_inputs(seed=seed, batch=batch)
    reference = net(inputs)
    macs = graph_macs(net.graph)
    numpy_ms = _time(lambda: net(inputs), runs, warmup)
    rows = []
    for name in backends:
        if name == "numpy":
            rows.append(_row(name, numpy_ms, numpy_ms, 0.0, None, macs * batch))
            continue
        rows.append(_bench_backend(name, path, net, inputs, reference, threads, runs, warmup,
                                   numpy_ms, macs * batch))  # fmt: skip
    kernels = profile_llvm(net, inputs, threads, runs, warmup) if profile else ()
    return BenchResult(
        str(path), batch, threads, runs, warmup, macs, machine(), tuple(rows), kernels
    )


def profile_llvm(
    net: Network, inputs: Mapping[str, np.ndarray], threads: int, runs: int, warmup: int
) -> tuple[KernelRow, ...]:
    """Median wall time of every llvm kernel over ``runs`` runs, in the order they run (the
    median, like the backends' rows: one stalled run on a busy machine does not move it)."""
    from convdsl.api import backend_graph
    from convdsl.backends.llvm.executable import LlvmExecutable
    from convdsl.ir.derived import materialize

    graph = backend_graph(net.graph, "llvm")
    native = LlvmExecutable(graph, materialize(graph, net.weights), threads, profile=True)
    ids = {graph.values[v].name: v for v in graph.inputs}
    arrays = {ids[name]: array for name, array in inputs.items()}
    batch = max(array.shape[0] for array in inputs.values())
    for _ in range(warmup):
        native.run(arrays)
    native.kernel_profile()
    per_run = []
    for _ in range(runs):
        native.run(arrays)
        per_run.append([ms for _, ms in native.kernel_profile()])
    workers = [worker for worker, _ in native.kernel_profile()]
    rows = []
    for worker, samples in zip(workers, zip(*per_run, strict=True), strict=True):
        ms = statistics.median(samples)
        traffic = sum(node_traffic(graph, worker.node))
        macs = node_macs(graph, worker.node)
        span = worker.node.span
        rows.append(KernelRow(worker.name, worker.role, worker.node.name, span.line,
                              ms, macs * batch, traffic * batch))  # fmt: skip
    return tuple(rows)


def _bench_backend(
    name: str,
    path: str | Path,
    net: Network,
    inputs: Mapping[str, np.ndarray],
    reference: Outputs,
    threads: int,
    runs: int,
    warmup: int,
    numpy_ms: float,
    macs: int,
) -> Row:
    for module in _IMPORTS[name]:  # imported first: "setup s" is compile/convert/export only
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    time.sleep(0.1)  # lets the previous backend's worker threads stop spinning
    start = time.perf_counter()
    try:
        run = PREPARE[name](path, net, inputs, threads)
    except Unavailable as exc:
        return Row(name, str(exc))
    setup_s = time.perf_counter() - start
    diff = max_abs_diff(run(), reference)
    return _row(name, _time(run, runs, warmup), numpy_ms, diff, setup_s, macs)


def _row(
    name: str, ms: float, numpy_ms: float, diff: float, setup_s: float | None, macs: int
) -> Row:
    gflops = 2 * macs / ms / 1e6 if ms > 0 else float("inf")
    return Row(name, "ok", ms, gflops, numpy_ms / ms if ms > 0 else None, diff, setup_s)


def max_abs_diff(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> float:
    return max((float(np.abs(got[k] - want[k]).max(initial=0.0)) for k in want), default=0.0)


def _time(run: Runner, runs: int, warmup: int) -> float:
    """Median milliseconds of ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# ---- backends: each prepares a runner that maps the network's inputs to named outputs -----


def _prepare_llvm(
    path: str | Path, net: Network, inputs: Mapping[str, np.ndarray], threads: int
) -> Runner:
    native = compile_file(
        path, backend="llvm", threads=threads, weights=net.weights, sizes=net.fixed_sizes
    )
    return lambda: native(inputs)


def _torch_module(path: str | Path, net: Network) -> TorchNetwork:
    """The -O0 graph (ops as written) as a PyTorch module with the network's weights."""
    from convdsl.bench_torch import TorchNetwork

    graph = compile_file(
        path, backend="numpy", opt_level=0, weights=net.weights, sizes=net.fixed_sizes
    ).graph
    return TorchNetwork(graph, net.weights).eval()


def _ordered(net: Network, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return [inputs[net.graph.values[v].name] for v in net.graph.inputs]


def _prepare_torch(
    path: str | Path, net: Network, inputs: Mapping[str, np.ndarray], threads: int
) -> Runner:
    if importlib.util.find_spec("torch") is None:
        raise Unavailable("not installed")
    import torch

    torch.set_num_threads(threads)
    module = _torch_module(path, net)
    args = [torch.from_numpy(a) for a in _ordered(net, inputs)]
    names = [name for name, _ in net.graph.outputs]

    def run() -> Outputs:
        with torch.inference_mode():
            results = module(*args)
        return {name: t.numpy() for name, t in zip(names, results, strict=True)}

    return run


def _prepare_onnxruntime(
    path: str | Path, net: Network, inputs: Mapping[str, np.ndarray], threads: int
) -> Runner:
    missing = [m for m in ("onnxruntime", "torch", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise Unavailable(f"not installed ({', '.join(missing)} missing)")
    import onnxruntime
    import torch

    arrays = _ordered(net, inputs)
    input_names = [net.graph.values[v].name for v in net.graph.inputs]
    output_names = [name for name, _ in net.graph.outputs]
    buffer = io.BytesIO()
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's constant-folding chatter
            torch.onnx.export(
                _torch_module(path, net),
                tuple(torch.from_numpy(a) for a in arrays),
                buffer,  # type: ignore[arg-type]  # a file object works (and is documented)
                input_names=input_names,
                output_names=output_names,
                opset_version=17,
                dynamo=False,
            )
    except Exception as exc:  # the exporter's own dependencies or an op it cannot export
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
        raise Unavailable(f"unavailable (torch.onnx.export failed: {reason})") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        buffer.getvalue(), options, providers=["CPUExecutionProvider"]
    )
    feed = dict(zip(input_names, arrays, strict=True))

    def run() -> Outputs:
        return dict(zip(output_names, session.run(output_names, feed), strict=True))

    return run


_IMPORTS = {
    "llvm": ("llvmlite.binding",),
    "torch": ("torch",),
    "onnxruntime": ("torch", "onnx", "onnxruntime"),
}
PREPARE: dict[str, Callable[[str | Path, Network, Mapping[str, np.ndarray], int], Runner]] = {
    "llvm": _prepare_llvm,
    "torch": _prepare_torch,
    "onnxruntime": _prepare_onnxruntime,
}


# ---- the report ----------------------------------------------------------------------------


def report_lines(result: BenchResult) -> list[str]:
    """The header (network, machine, threads) and one table row per backend."""
    from convdsl.commands.tables import format_table

    m = result.machine
    rows = []
    for r in result.rows:
        if not r.ok:
            rows.append((r.backend, r.status, "", "", "", ""))
            continue
        setup = "" if r.setup_s is None else f"{r.setup_s:.2f}"
        rows.append((r.backend, f"{r.ms:.3f}", f"{r.gflops:.1f}", f"{r.speedup:.2f}x",
                     f"{r.max_diff:.1e}", setup))  # fmt: skip
    header = ("backend", "median ms", "GFLOP/s", "vs numpy", "max |diff|", "setup s")
    table = format_table(header, rows, (False, True, True, True, True, True))
    return [
        f"network {result.file}  batch {result.batch}  "
        f"{2 * result.macs * result.batch / 1e9:.3f} GFLOP per run",
        f"machine {m.cpu} ({m.llvm_cpu}), {m.cores} cores, {m.lanes} fp32 lanes",
        f"threads {result.threads} (llvm, torch, onnxruntime); median of {result.runs} runs "
        f"after {result.warmup} warm-up",
        "",
        *table,
        *(profile_lines(result.kernels) if result.kernels else []),
    ]


def profile_lines(kernels: Sequence[KernelRow]) -> list[str]:
    """The llvm kernels, slowest first: median ms per run, share, GFLOP/s, GB/s, what and where."""
    from convdsl.commands.tables import format_table

    total = sum(k.ms for k in kernels) or 1.0
    rows = [
        (f"{k.ms:.3f}", f"{100 * k.ms / total:.1f}%", f"{k.gflops:.1f}" if k.macs else "",
         f"{k.gbytes:.1f}", k.role, f"{k.layer} (line {k.line})", k.kernel)
        for k in sorted(kernels, key=lambda k: -k.ms)
    ]  # fmt: skip
    header = ("ms", "share", "GFLOP/s", "GB/s", "kernel", "layer", "function")
    return [
        "",
        f"llvm kernels, median of the timed runs (sum {total:.3f} ms; GB/s counts activations "
        "read and written once):",
        *format_table(header, rows, (True, True, True, True, False, False, False)),
    ]
