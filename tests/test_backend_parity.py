"""The llvm backend selected through the API and the CLI agrees with the numpy backend.

Every example network runs on both backends with the same (random, non-trivial) weights and
inputs; the interpreter is the reference, itself tested against PyTorch. LLVM compiles take
seconds for the big examples, so each compiled network is shared by the tests of this module.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import random_weights
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_optimizer_differential import networks
from test_optimizer_differential import random_weights as weights_far_from_identity

import convdsl
from convdsl import cli
from convdsl.api import BACKENDS, Network
from convdsl.backends.llvm import entry

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.conv"))
TWO_BATCHES = {"quickstart", "espcn"}


def assert_agrees(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert got.keys() == ref.keys()
    for name, expected in ref.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype
        atol = 1e-5 * float(np.abs(expected).max())
        np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=atol, err_msg=name)


def example_weights(net: Network, seed: int) -> dict[str, np.ndarray]:
    """The network's own initialization (it keeps activations of these deep nets near 1, so
    float32 rounding stays far below the tolerance), with every bias and every batch norm made
    non-trivial: the init makes biases zero and batch norm the identity."""
    rng = np.random.default_rng(seed)
    weights = dict(net.weights)
    for name in net.params:
        if name.endswith(".running_var"):
            layer = name.removesuffix(".running_var")
            weights[name] = rng.uniform(0.5, 2.0, weights[name].shape)
            weights[f"{layer}.running_mean"] = rng.normal(0, 0.1, weights[name].shape)
            weights[f"{layer}.weight"] = rng.uniform(0.8, 1.2, weights[name].shape)
    for name, array in weights.items():
        if name.endswith(".bias"):
            weights[name] = rng.normal(0, 0.1, array.shape)
    return {name: array.astype(np.float32) for name, array in weights.items()}


SIZES = {"fcn8s": {"H": 96, "W": 64}, "wavenet": {"L": 3000}}
"""Sizes for the examples written for any size (both networks stay symbolic: each specializes)."""


@pytest.fixture(scope="module", params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
def pair(request: pytest.FixtureRequest) -> tuple[Network, Network]:
    """(llvm, numpy) networks of one example, bound to the same random weights."""
    numpy_net = convdsl.compile_file(request.param, seed=3, backend="numpy")
    weights = example_weights(numpy_net, seed=3)
    numpy_net.set_weights(weights)
    return convdsl.compile_file(request.param, backend="llvm", weights=weights), numpy_net


def test_every_example_agrees_with_the_interpreter(pair: tuple[Network, Network]) -> None:
    native, reference = pair
    assert (native.backend, reference.backend) == ("llvm", "numpy")
    batches = (1, 2) if native.name in TWO_BATCHES else (1,)
    for batch in batches:
        inputs = reference.random_inputs(seed=batch, batch=batch, sizes=SIZES.get(native.name))
        assert_agrees(native(inputs), reference(inputs))


MAX_ROUNDS = 20


def test_every_example_called_from_four_threads_at_once_gives_the_serial_results(
    pair: tuple[Network, Network],
) -> None:
    """What a web server or a data loader does: one compiled network called from several
    threads at once, each call with its own input; every result is the one the same call gives
    alone (bit for bit: a call's arithmetic does not depend on what runs beside it)."""
    native, _ = pair
    batches = (1, 2) if native.name in TWO_BATCHES else (1,)
    sizes = SIZES.get(native.name)
    inputs = [
        native.random_inputs(seed=s, batch=batches[s % len(batches)], sizes=sizes) for s in range(6)
    ]
    expected = [native(x) for x in inputs]
    calls = 12 if native.name in TWO_BATCHES else 4
    start = threading.Barrier(4)

    def caller(index: int) -> list[str]:
        start.wait()  # every caller starts at once: their calls overlap
        wrong = []
        for call in range(calls):
            k = (index + call) % len(inputs)
            got = native(inputs[k])
            wrong += [f"{name} of input {k}" for name in got
                      if not np.array_equal(got[name], expected[k][name])]  # fmt: skip
        return wrong

    executable = native._for_sizes(sizes or {})[1]
    # A round's calls may all run one after the other on a busy machine (quickstart's take
    # microseconds): rounds repeat until two calls were seen at once, each round checked.
    for _ in range(MAX_ROUNDS):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            wrong = [w for found in pool.map(caller, range(4)) for w in found]
        assert not wrong, f"{len(wrong)} of {4 * calls} results differ, e.g. {wrong[0]}"
        if len(executable.arenas.sizes) >= 2:  # the calls did run at once
            break
    assert len(executable.arenas.sizes) >= 2, f"no two calls overlapped in {MAX_ROUNDS} rounds"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=networks(),
    batch=st.sampled_from([1, 3]),
    seed=st.integers(0, 3),
    one_image=st.booleans(),
)
def test_random_networks_agree_with_the_interpreter(
    text: str, batch: int, seed: int, one_image: bool
) -> None:
    """The optimizer's random networks (skips into add, mul and concat, pads, crops, pools,
    upscales, strided and transposed convs, tiny odd planes, values read twice or also
    outputs), compiled for llvm: fused kernels, layouts and the memory plan as it makes them;
    the batch run over at once or, as big networks do, one image per pass. Bounds-checked: an
    access outside its buffer fails with the kernel's name instead of corrupting memory."""
    reference = convdsl.compile_string(text, "random.conv", backend="numpy")
    weights = weights_far_from_identity(reference, seed)
    reference.set_weights(weights)
    with one_image_per_pass(one_image):
        native = convdsl.compile_string(
            text, "random.conv", backend="llvm", weights=weights, bounds_check=True
        )
    inputs = reference.random_inputs(seed=seed, batch=batch)
    assert_agrees(native(inputs), reference(inputs))


@contextlib.contextmanager
def one_image_per_pass(yes: bool) -> Iterator[None]:
    """Compile with every network run one image per pass (``entry.PASS_BYTES`` 0) or as the
    constant says, the code cache off (its records do not know the constant)."""
    saved = entry.PASS_BYTES, os.environ.get("CONVDSL_CACHE_DIR")
    entry.PASS_BYTES = 0 if yes else saved[0]
    os.environ["CONVDSL_CACHE_DIR"] = "off"
    try:
        yield
    finally:
        entry.PASS_BYTES = saved[0]
        if saved[1] is None:
            del os.environ["CONVDSL_CACHE_DIR"]
        else:
            os.environ["CONVDSL_CACHE_DIR"] = saved[1]


@pytest.mark.parametrize("opt_level", [0, 1])
def test_llvm_below_o2_chooses_layouts_and_plans_memory_itself(opt_level: int) -> None:
    path = REPO / "examples" / "quickstart.conv"
    reference = convdsl.compile_file(path, opt_level=opt_level, backend="numpy")
    assert reference.graph.memory is None  # the pipeline did not plan it at this level
    weights = random_weights(reference, seed=1)
    reference.set_weights(weights)
    native = convdsl.compile_file(path, backend="llvm", opt_level=opt_level, weights=weights)
    assert native.graph.memory is not None
    # the same kernels, plus the conversion of the strided conv's input to phase rows
    ops = [n.op for n in native.graph.nodes if n.op != "relayout"]
    assert ops == [n.op for n in reference.graph.nodes]
    assert [n.op for n in native.graph.nodes].count("relayout") == 1
    inputs = reference.random_inputs(seed=5, batch=2)
    assert_agrees(native(inputs), reference(inputs))


def test_batch_norm_at_o0_on_llvm_runs_unfolded() -> None:
    src = """
    input x: f32[N, 3, 9, 9]
    c = conv2d(x, 4, kernel=3, stride=2, bias=false)
    output y = relu(batch_norm(c))
    """
    reference = convdsl.compile_string(src, opt_level=0, backend="numpy")
    weights = random_weights(reference, seed=2)
    native = convdsl.compile_string(src, backend="llvm", opt_level=0, weights=weights)
    assert "batch_norm" in [n.op for n in native.graph.nodes]
    reference.set_weights(weights)
    inputs = reference.random_inputs(seed=0, batch=3)
    assert_agrees(native(inputs), reference(inputs))


def test_one_thread_equals_two_threads_bit_for_bit() -> None:
    path = REPO / "examples" / "espcn.conv"
    one = convdsl.compile_file(path, backend="llvm", threads=1, seed=4)
    two = convdsl.compile_file(path, backend="llvm", threads=2, seed=4)
    assert (one.threads, two.threads) == (1, 2)
    inputs = one.random_inputs(seed=7, batch=3)
    a, b = one(inputs), two(inputs)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_set_weights_rebinds_the_llvm_network() -> None:
    src = "input x: f32[N, 2, 12]\noutput y = conv1d(x, 3, kernel=3, padding=same)\n"
    native = convdsl.compile_string(src, backend="llvm")
    reference = convdsl.compile_string(src, backend="numpy")
    inputs = reference.random_inputs(seed=1, batch=2)
    before = native(inputs)["y"]
    weights = random_weights(reference, seed=9)
    native.set_weights(weights)
    reference.set_weights(weights)
    after = native(inputs)
    assert not np.allclose(after["y"], before)
    assert_agrees(after, reference(inputs))


def test_unknown_backend_lists_the_backends() -> None:
    with pytest.raises(convdsl.ConvdslError) as caught:
        convdsl.compile_string("input x: f32[N, 1, 4]\noutput y = relu(x)\n", backend="cuda")
    assert str(caught.value.diagnostics[0].message) == (
        "unknown backend 'cuda'; expected one of llvm, numpy"
    )
    assert BACKENDS == ("llvm", "numpy")


def test_llvm_is_the_default_backend(capsys: pytest.CaptureFixture[str]) -> None:
    net = convdsl.compile_string("input x: f32[N, 1, 4]\noutput y = relu(x)\n")
    assert (net.backend, net.threads) == ("llvm", len(os.sched_getaffinity(0)))
    assert type(net._executable).__name__ == "LlvmExecutable"
    assert cli.main(["run", "--help"]) == 0
    assert "(default llvm:" in " ".join(capsys.readouterr().out.split())


def test_bad_thread_count_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    src = "input x: f32[N, 1, 4]\noutput y = relu(x)\n"
    with pytest.raises(convdsl.ConvdslError, match="threads must be a positive integer"):
        convdsl.compile_string(src, threads=0)
    with pytest.raises(convdsl.ConvdslError, match="threads must be at most 256, found 10000"):
        convdsl.compile_string(src, threads=10000)
    path = str(REPO / "examples" / "quickstart.conv")
    assert cli.main(["run", path, "--threads", "10000"]) == 2
    assert "--threads: expected at most 256, found 10000" in capsys.readouterr().err


def test_the_thread_count_comes_from_the_environment_or_the_affinity_mask(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = "input x: f32[N, 1, 4]\noutput y = relu(x)\n"
    monkeypatch.delenv("CONVDSL_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})  # taskset -c 0,3,5
    assert convdsl.compile_string(src, backend="numpy").threads == 3
    monkeypatch.setenv("CONVDSL_NUM_THREADS", "1")
    assert convdsl.compile_string(src).threads == 1
    assert convdsl.compile_string(src, threads=2).threads == 2  # the argument wins
    for bad in ("0", "many", "257"):
        monkeypatch.setenv("CONVDSL_NUM_THREADS", bad)
        with pytest.raises(convdsl.ConvdslError, match=f"CONVDSL_NUM_THREADS={bad}: expected "
                                                       "an integer from 1 to 256"):  # fmt: skip
            convdsl.compile_string(src)
    assert cli.main(["run", str(REPO / "examples" / "quickstart.conv")]) == 2
    assert "error: CONVDSL_NUM_THREADS=257: expected" in capsys.readouterr().err
    assert cli.main(["run", str(REPO / "examples" / "quickstart.conv"), "--threads", "1"]) == 0


def test_f64_on_llvm_agrees_with_numpy_in_double() -> None:
    src = (
        "input x: f64[N, 2, 9]\n"
        "output y = softmax(conv1d(x, 5, kernel=3, padding=same, activation=gelu))\n"
    )
    reference = convdsl.compile_string(src, backend="numpy")
    reference.set_weights(random_weights(reference, seed=1))
    native = convdsl.compile_string(src, "f.conv", backend="llvm", weights=reference.weights)
    inputs = reference.random_inputs(seed=1, batch=3)
    got, want = native(inputs)["y"], reference(inputs)["y"]
    assert got.dtype == want.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_cli_check_for_llvm_compiles_no_native_code(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking is instant: the llvm backend's layouts and plan are made, nothing is built."""
    from convdsl.backends.llvm import codegen, lower

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("check built native code")

    monkeypatch.setattr(lower, "lower_graph", refuse)
    monkeypatch.setattr(codegen, "compile_object", refuse)
    path = REPO / "examples" / "fcn8s.conv"
    assert cli.main(["check", str(path), "--backend", "llvm", "-O0", "--threads", "1"]) == 0
    assert capsys.readouterr().out.startswith("network fcn8s\n")
    assert cli.main(["check", str(path), "--shape", "H=224,W=224", "--threads", "1"]) == 0
    assert "[N,21,224,224]" in capsys.readouterr().out
    assert cli.main(["check", str(path), "--threads", "300"]) == 2


def test_cli_checks_and_runs_f64_on_llvm_as_on_numpy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "f64.conv"
    path.write_text("input x: f64[N, 2, 4]\noutput y = relu(conv1d(x, 3, kernel=3))\n")
    assert cli.main(["check", str(path)]) == 0
    numpy_check = capsys.readouterr()
    assert cli.main(["check", str(path), "--backend", "llvm"]) == 0
    assert capsys.readouterr() == numpy_check
    for backend in ("numpy", "llvm"):
        args = ["--batch", "2", "--backend", backend, "--output", str(tmp_path / f"{backend}.npz")]
        assert cli.main(["run", str(path), *args]) == 0
    with np.load(tmp_path / "llvm.npz") as got, np.load(tmp_path / "numpy.npz") as ref:
        assert got["y"].dtype == ref["y"].dtype == np.float64
        np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-10, atol=1e-12)


def test_cli_run_llvm_output_equals_numpy(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    example = str(REPO / "examples" / "espcn.conv")
    commands = [
        ["run", example, "--batch", "2", "--backend", "llvm", "--output", "llvm.npz"],
        ["run", example, "--batch", "2", "--backend", "numpy", "--output", "numpy.npz"],
        ["run", example, "--backend", "tpu"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "convdsl", *args],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for args in commands
    ]
    (llvm_out, _), _, (_, bad_err) = (p.communicate(timeout=120) for p in procs)
    assert [p.returncode for p in procs] == [0, 0, 2]
    assert "invalid choice: 'tpu' (choose from 'llvm', 'numpy')" in bad_err
    assert llvm_out.endswith("wrote 1 output(s) to llvm.npz\n")
    with np.load(tmp_path / "llvm.npz") as got, np.load(tmp_path / "numpy.npz") as ref:
        assert_agrees(dict(got), dict(ref))
