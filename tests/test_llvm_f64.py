"""f64 networks on the llvm backend: every op family and fused pattern, computed in double.

The reference is the NumPy interpreter, which runs f64 networks in float64. The tolerance, 1e-10
relative plus 1e-12 of the output's largest magnitude, is what double precision meets after
reordered sums and libm's transcendental functions, and about 1000 times tighter than a float
computation can meet (its rounding alone is ~6e-8 relative): an f64 network silently computed
in float fails these cases, and ``test_f64_is_computed_in_double_not_in_float`` shows it does.

The networks are the llvm backend tests' own (``test_llvm_backend``: adversarial shapes, every
code path of the emitters) with their tensors made f64, plus cases only f64 has: values where
float's polynomials would clamp, an f32 and an f64 part in one graph, inputs aligned to 4 bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pytest
from conftest import random_weights
from hypothesis import HealthCheck, given, settings
from test_llvm_backend import (
    CONVS,
    DATA,
    DATA_1D_3D,
    ELEMENTWISE,
    EXAMPLES,
    FUSED,
    OTHER_WIDTHS,
    PHASE_SPLIT,
    POOLS,
    POOLS_1D_3D,
    SOFTMAXES,
    TRANSPOSED,
    UPSCALE_ROWS,
    conv_configs,
    depthwise_configs,
    run_native,
)

import convdsl
from convdsl.backends.llvm import executable, lowering_cache
from convdsl.backends.llvm.executable import LlvmExecutable
from convdsl.backends.llvm.target import host_target
from convdsl.ir.derived import materialize

RTOL = 1e-10
ATOL = 1e-12  # times the output's largest magnitude


def f64(src: str) -> str:
    """The same network over f64 tensors."""
    return src.replace("f32[", "f64[")


def compile_double(src: str, seed: int = 0) -> tuple[convdsl.Network, LlvmExecutable]:
    """The interpreter's network with random weights (non-trivial biases and batch norms), and
    the same network compiled by the llvm backend."""
    net = convdsl.compile_string(src, backend="numpy")
    net.set_weights(random_weights(net, seed))
    return net, LlvmExecutable(net.graph, materialize(net.graph, net.weights), threads=2)


def assert_close_in_double(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name, expected in want.items():
        assert expected.dtype == np.float64, f"{name}: the reference itself must be double"
        assert got[name].dtype == np.float64 and got[name].shape == expected.shape, name
        bound = float(np.abs(expected).max()) or 1.0
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL * bound, err_msg=name)


def assert_double_matches(
    src: str, batches: tuple[int, ...] = (1, 3), seed: int = 0, scale: float = 1.0
) -> LlvmExecutable:
    """``src`` (f64) on the llvm backend agrees with the interpreter in double precision, and
    its code has no float vector in it."""
    net, native = compile_double(src, seed)
    for batch in batches:
        inputs = {k: v * scale for k, v in net.random_inputs(seed, batch).items()}
        assert_close_in_double(run_native(net, native, inputs), net(**inputs))
    assert "x float>" not in native.llvm_ir
    return native


# ---- every op family, as the f32 tests run them ---------------------------------------------

OPS = {
    **CONVS,
    **TRANSPOSED,
    "pools": POOLS,
    "pools_1d_3d": POOLS_1D_3D,
    "data": DATA,
    "data_1d_3d": DATA_1D_3D,
    "upscale_rows": UPSCALE_ROWS,
    "softmaxes": SOFTMAXES,
    **{f"phases_{name}": src for name, src in PHASE_SPLIT.items()},
}


@pytest.mark.parametrize("scale", [0.01, 1.0, 8.0, 30.0])
def test_elementwise_f64_matches_interpreter(scale: float) -> None:
    """Every activation, add, mul, batch norm. At scale 30 inputs reach |x| ~ 120, where
    float's exp would clamp (below -87.3) and where sigmoid and elu need exp's tiny results
    with full relative precision."""
    assert_double_matches(f64(ELEMENTWISE), scale=scale)


@pytest.mark.parametrize("src", OPS.values(), ids=OPS)
def test_op_f64_matches_interpreter(src: str) -> None:
    assert_double_matches(f64(src))


@pytest.mark.parametrize("src", FUSED.values(), ids=FUSED)
def test_fused_f64_kernels_match_interpreter(src: str) -> None:
    net = convdsl.compile_string(f64(src), backend="numpy")
    if "concat" not in src:
        assert any(node.is_fused for node in net.graph.nodes), "the pattern must actually fuse"
    assert_double_matches(f64(src))


# ---- cases of f64's own ---------------------------------------------------------------------

EXTRA = {
    # Every conv epilogue activation, and the costly ones looped over the tile (odd widths,
    # 17 input channels, blocks of 5 and 3 output channels).
    "conv_activations": (
        "input x: f64[N, 17, 5, 17]\n"
        "output a = conv2d(x, 5, kernel=3, padding=same, activation=gelu)\n"
        "output b = conv2d(x, 3, kernel=[1, 3], activation=sigmoid)\n"
        "output c = conv2d(x, 5, kernel=3, stride=2, padding=same, activation=tanh)\n"
        "output d = conv2d(x, 3, kernel=1, activation=silu)\n"
        "output e = conv2d(x, 5, kernel=3, padding=same, activation=hard_swish)\n"
        "output f = conv2d(x, 3, kernel=2, activation=relu6)\n"
        "output g = elu(conv2d(x, 5, kernel=3, padding=same), alpha=0.3)\n"
        "output h = gelu(conv2d(x, 3, kernel=3), approximate=tanh)\n"
        "output i = leaky_relu(conv2d(x, 17, kernel=1), alpha=0.1) + x"
    ),
    # Skip-adds fused into convs on 1-wide and 5-wide rows, three channels.
    "skip_add_narrow": (
        "input x: f64[N, 3, 1, 5]\ninput v: f64[N, 3, 17, 1]\n"
        "output y = relu(conv2d(x, 3, kernel=3, padding=same) + x)\n"
        "output z = conv2d(v, 3, kernel=[3, 1], padding=same, activation=tanh) + v"
    ),
    # Strides larger than the window, in convs and pools, on odd sizes.
    "stride_gt_window": (
        "input x: f64[N, 5, 7, 17]\n"
        "output a = conv2d(x, 3, kernel=2, stride=3)\n"
        "output b = max_pool2d(x, 2, stride=3)\n"
        "output c = avg_pool2d(x, [1, 2], stride=[2, 5])\n"
        "output d = depthwise2d(x, kernel=[1, 2], stride=[1, 4], multiplier=3)"
    ),
    # A matrix-vector product with 17 input channels after a global pool (a channel
    # vector kernel, blocks of the double lanes).
    "global_pool_head": (
        "input x: f64[N, 17, 5, 5]\n"
        "g = global_avg_pool(x)\n"
        "output y = softmax(conv2d(g, 10, kernel=1))\n"
        "output z = conv2d(global_max_pool(x), 3, kernel=1, activation=sigmoid)"
    ),
    # Batch norm unfused (after a pool, nothing to fold into), crop, pad, concat, 1-wide rows.
    "data_movement_narrow": (
        "input x: f64[N, 5, 9, 1]\n"
        "output a = batch_norm(max_pool2d(x, [3, 1], stride=[2, 1]), eps=0.01)\n"
        "p = pad(crop(x, size=[3, 1], offset=[0, 0]), [[1, 1], [0, 0]], value=-2.5)\n"
        "output b = concat(crop(x, size=[5, 1], offset=[2, 0]), p)\n"
        "output c = pad(x, [[1, 2], [2, 1]], mode=replicate)\n"
        "output d = upscale(x, [2, 3], mode=bilinear)"
    ),
}


@pytest.mark.parametrize("src", EXTRA.values(), ids=EXTRA)
def test_more_f64_networks_match_interpreter(src: str) -> None:
    assert_double_matches(src)


def test_softmax_of_a_wide_spread_keeps_double_precision() -> None:
    """Logits 240 apart: float's exp would clamp at -87.3, double's underflows at -745 only."""
    assert_double_matches(f64(SOFTMAXES), scale=30.0)


@pytest.mark.parametrize("example", ["quickstart", "espcn", "unet3d"])
def test_examples_in_f64_match_interpreter(example: str) -> None:
    assert_double_matches(f64((EXAMPLES / f"{example}.conv").read_text()), batches=(2,))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs().map(f64))
def test_random_f64_convs_match_interpreter(src: str) -> None:
    assert_double_matches(src, batches=(2,))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depthwise_configs().map(f64))
def test_random_f64_depthwise_convs_match_interpreter(src: str) -> None:
    assert_double_matches(src, batches=(2,))


def test_f64_is_computed_in_double_not_in_float() -> None:
    """A conv of fan-in 2304 on data exact in float: the f64 network agrees with the double
    reference to 1e-12, the f32 one (same data) only to ~1e-7. So the tolerance of this module
    tells the two apart, and f64 is not float in disguise."""
    src = "input x: f32[N, 256, 4, 19]\noutput y = conv2d(x, 8, kernel=3, padding=same)"
    single, double = (
        convdsl.compile_string(src, backend="numpy"),
        convdsl.compile_string(f64(src), backend="numpy"),
    )
    weights = {k: v.astype(np.float32) for k, v in random_weights(double, seed=1).items()}
    single.set_weights(weights)
    double.set_weights({k: v.astype(np.float64) for k, v in weights.items()})
    x = double.random_inputs(seed=1, batch=2)["x"].astype(np.float32)
    want = double(x=x.astype(np.float64))["y"]
    outputs = {}
    for net in (single, double):
        native = LlvmExecutable(net.graph, materialize(net.graph, net.weights), threads=2)
        outputs[net.graph.type_of(net.graph.inputs[0]).dtype.value] = run_native(
            net, native, {"x": x}
        )["y"]
    bound = float(np.abs(want).max())
    assert outputs["f32"].dtype == np.float32 and outputs["f64"].dtype == np.float64
    assert np.abs(outputs["f64"] - want).max() <= ATOL * bound
    assert np.abs(outputs["f32"] - want).max() > 1e-9 * bound  # float rounding shows
    np.testing.assert_allclose(outputs["f32"], want, rtol=1e-4, atol=1e-5 * bound)


def test_f32_and_f64_parts_of_one_graph_each_compute_in_their_dtype() -> None:
    """Each kernel computes in its output's dtype: the f32 part as float (matching the
    interpreter to float's tolerance), the f64 part as double."""
    src = (
        "input x: f32[N, 3, 9, 17]\ninput z: f64[N, 3, 9, 17]\n"
        "output a = tanh(conv2d(x, 5, kernel=3, padding=same)) + conv2d(x, 5, kernel=1)\n"
        "output b = tanh(conv2d(z, 5, kernel=3, padding=same)) + conv2d(z, 5, kernel=1)\n"
        "output c = softmax(upscale(x, 2, mode=bilinear))\n"
        "output d = softmax(upscale(z, 2, mode=bilinear))"
    )
    net, native = compile_double(src)
    ir_text = native.llvm_ir
    assert "x float>" in ir_text and "x double>" in ir_text
    inputs = net.random_inputs(seed=2, batch=2)
    got, want = run_native(net, native, inputs), net(**inputs)
    assert_close_in_double({k: got[k] for k in "bd"}, {k: want[k] for k in "bd"})
    for name in "ac":
        assert got[name].dtype == np.float32
        bound = float(np.abs(want[name]).max())
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * bound)


@pytest.mark.parametrize("lanes", [4, 16])
@pytest.mark.parametrize("src", OTHER_WIDTHS.values(), ids=OTHER_WIDTHS)
def test_f64_code_for_other_vector_widths_matches_interpreter(
    src: str, lanes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code an AVX-512 CPU gets (8 doubles a vector) and the one SSE and NEON get (2), run
    here through LLVM's legalization of those vector types: the same results."""
    other = dataclasses.replace(host_target(), lanes=lanes)
    monkeypatch.setattr(executable, "host_target", lambda: other)
    net, native = compile_double(f64(src))
    graph = net.graph
    rows = [graph.type_of(node.output).spatial[-1] for node in graph.nodes]
    if max(rows) >= lanes // 2:  # some kernel's rows have vectors of that width
        assert f"<{lanes // 2} x double>" in native.llvm_ir
    assert "x float>" not in native.llvm_ir
    inputs = net.random_inputs(seed=3, batch=2)
    assert_close_in_double(run_native(net, native, inputs), net(**inputs))


def test_f64_inputs_need_not_be_aligned_to_their_element() -> None:
    """An input 4 bytes past an 8-byte boundary is copied to an aligned one; one 8 bytes past
    a vector's boundary is used in place. Both give the right result."""
    net, native = compile_double("input x: f64[N, 3, 20]\noutput y = conv1d(x, 2, kernel=3)")
    values = np.random.default_rng(0).standard_normal((1, 3, 20))
    for offset in (4, 8):
        raw = np.zeros(3 * 20 * 8 + 64, np.uint8)
        start = -raw.ctypes.data % 64 + offset
        x = raw[start : start + 3 * 20 * 8].view(np.float64).reshape(1, 3, 20)
        x[...] = values
        assert x.ctypes.data % 8 == offset % 8
        assert_close_in_double(run_native(net, native, {"x": x}), net(x=values))


def test_f32_and_f64_versions_of_a_network_are_cached_apart() -> None:
    """The lowering cache's key holds the graph's dtypes (and the object cache's, the module
    text): the f64 network never runs code built for the f32 one, built first here."""
    src = "input x: f32[N, 4, 6, 11]\noutput y = relu(conv2d(x, 6, kernel=3, padding=same))"
    target = host_target()
    keys = set()
    for text in (src, f64(src)):
        net, native = compile_double(text)
        keys.add(lowering_cache.lowering_key(net.graph, target, 2, False))
        inputs = net.random_inputs(seed=0, batch=2)
        got, want = run_native(net, native, inputs), net(**inputs)
        assert got["y"].dtype == want["y"].dtype
    assert_close_in_double(got, want)  # the f64 one, built after the f32 one
    assert len(keys) == 2


@pytest.mark.parametrize("opt_level", [0, 1])
def test_f64_through_the_api_below_o2(opt_level: int) -> None:
    """Below -O2 the backend chooses layouts and plans memory itself; batch norm runs
    unfolded at -O0."""
    src = (
        "input x: f64[N, 3, 9, 17]\n"
        "a = batch_norm(conv2d(x, 5, kernel=3, stride=2, padding=same, bias=false))\n"
        "u = upscale(max_pool2d(a, 2, ceil_mode=true), 2)\n"
        "output y = relu(a) + crop(u, size=[5, 9], offset=[0, 0])"
    )
    reference = convdsl.compile_string(src, opt_level=opt_level, backend="numpy")
    reference.set_weights(random_weights(reference, seed=4))
    native = convdsl.compile_string(
        src, backend="llvm", opt_level=opt_level, weights=dict(reference.weights)
    )
    inputs = reference.random_inputs(seed=4, batch=2)
    assert_close_in_double(native(inputs), reference(inputs))
