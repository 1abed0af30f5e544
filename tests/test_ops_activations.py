"""clip, selu, softplus, mish and prelu against PyTorch (the interpreter), the llvm backend
against the interpreter (alone, as conv epilogues and fused after a conv), their diagnostics,
and every op's implementation in every backend and in the PyTorch converter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, compile_net, tt
from test_bench import converted_matches_interpreter

import convdsl
from convdsl import bench_torch
from convdsl.backends.llvm import lower
from convdsl.backends.numpy.interpreter import OP_FUNCTIONS
from convdsl.ir.ops import OPS
from convdsl.passes.fusion import plan_fusion

ACTIVATIONS = [
    # (.conv call on x, torch reference on a float64 tensor)
    ("clip(x, min=-1, max=2)", lambda x: torch.clamp(x, -1.0, 2.0)),
    ("clip(x, min=0.1)", lambda x: torch.clamp(x, min=0.1)),
    ("clip(x, max=-0.5)", lambda x: torch.clamp(x, max=-0.5)),
    ("clip(x, 0, 6)", lambda x: torch.clamp(x, 0.0, 6.0)),
    ("clip(x, min=3, max=1)", lambda x: torch.clamp(x, 3.0, 1.0)),  # min > max: all max
    ("selu(x)", F.selu),
    ("softplus(x)", F.softplus),
    ("softplus(x, beta=2)", lambda x: F.softplus(x, beta=2.0)),
    ("softplus(x, beta=0.5, threshold=3)", lambda x: F.softplus(x, beta=0.5, threshold=3.0)),
    ("mish(x)", F.mish),
]

# Kinks and thresholds exactly, either side of them, and large |x|.
SPECIAL = [0.0, -0.0, 1e-7, -1e-7, 1.0, -1.0, 2.0, 3.0, 6.0, 10.0, 20.0, 19.999, 20.001, 6.0001]
SPECIAL += [-20.0, -30.0, 40.0, 80.0, -80.0, 100.0, -100.0, 1e4, -1e4, 0.1, -0.5, 0.5]


def sample(shape: tuple[int, ...], dtype: type, seed: int = 30) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape) * 6
    flat = x.reshape(-1)
    flat[: len(SPECIAL)] = SPECIAL[: flat.size]
    return x.astype(dtype)


def source(shape: tuple[int, ...], expr: str, dtype: str = "f32") -> str:
    return f"input x: {dtype}[N, {', '.join(map(str, shape[1:]))}]\noutput y = {expr}\n"


def run_both(src: str, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The output ``y`` of the interpreter and of the llvm backend, same weights."""
    ref = compile_net(src)
    native = convdsl.compile_string(src, backend="llvm", threads=1)
    native.set_weights(dict(ref.weights))
    return ref(**inputs)["y"], native(**inputs)["y"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("expr", "fn"), ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_matches_torch(expr: str, fn, dtype) -> None:
    shape = (2, 3, 5, 7)
    x = sample(shape, dtype)
    name = "f32" if dtype == np.float32 else "f64"
    out = compile_net(source(shape, expr, name))(x=x)["y"]
    assert_close(out, fn(tt(x)), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("expr", "fn"), ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_matches_torch_in_its_own_dtype(expr: str, fn, dtype) -> None:
    """Against PyTorch computing in the same dtype (its float32 rounding, not float64's)."""
    shape = (1, 17, 3, 11)
    x = sample(shape, dtype, seed=31)
    name = "f32" if dtype == np.float32 else "f64"
    out = compile_net(source(shape, expr, name))(x=x)["y"]
    ref = fn(torch.from_numpy(x)).numpy()
    assert out.dtype == ref.dtype
    tolerance = 2e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, ref, rtol=tolerance, atol=tolerance)


def test_clip_keeps_nan_and_inf_like_torch() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 0.5, -3.0], np.float32).reshape(1, 1, 5)
    for expr, fn in ACTIVATIONS[:5]:
        src = source(x.shape, expr)
        for got in run_both(src, {"x": x}):
            np.testing.assert_array_equal(got, fn(torch.from_numpy(x)).numpy(), err_msg=expr)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("channels", [1, 3, 17])
def test_prelu_matches_torch_with_the_same_weights(channels: int, shared: bool) -> None:
    shape = (2, channels, 4, 5)
    x = sample(shape, np.float32)
    call = "prelu(x, shared=true)" if shared else "prelu(x)"
    net = compile_net(source(shape, call))
    weight = net.weights["y.weight"]
    assert weight.shape == ((1,) if shared else (channels,))
    assert np.all(weight != 0.25)  # random slopes (conftest), not the init
    assert_close(net(x=x)["y"], F.prelu(tt(x), tt(weight)))


def test_prelu_starts_with_torch_s_slope() -> None:
    net = convdsl.compile_string(source((1, 3, 2, 2), "prelu(x)"), backend="numpy")
    torch_slope = torch.nn.PReLU(num_parameters=3).weight.detach().numpy()
    np.testing.assert_array_equal(net.weights["y.weight"], torch_slope)
    assert net.params["y.weight"].shape == (3,)


@pytest.mark.parametrize("activation", ["selu", "softplus", "mish"])
def test_conv_epilogue_activation_matches_torch(activation: str) -> None:
    shape = (2, 3, 6, 7)
    x = sample(shape, np.float32)
    net = compile_net(source(shape, f"conv2d(x, 5, kernel=3, activation={activation})"))
    w = {role: tt(net.weights[f"y.{role}"]) for role in ("weight", "bias")}
    fn = {"selu": F.selu, "softplus": F.softplus, "mish": F.mish}[activation]
    assert_close(net(x=x)["y"], fn(F.conv2d(tt(x), w["weight"], w["bias"])))


LLVM_CASES = [
    *(expr for expr, _ in ACTIVATIONS),
    "prelu(x)",
    "prelu(x, shared=true)",
    "conv2d(x, 5, kernel=3, padding=same, activation=selu)",
    "conv2d(x, 5, kernel=1, activation=softplus)",
    "conv2d(x, 17, kernel=[3, 1], activation=mish)",
    "depthwise2d(x, kernel=3, padding=1, activation=mish)",
    "prelu(conv2d(x, 5, kernel=3, padding=same))",
    "prelu(conv2d(x, 3, kernel=1), shared=true) + x",
    "clip(conv2d(x, 5, kernel=[2, 1]), min=-0.5, max=0.5)",
    "softplus(conv2d(x, 4, kernel=3, stride=2, padding=same), beta=3, threshold=2)",
    "mish(selu(conv_transpose2d(x, 4, kernel=4, stride=2, padding=1)))",
]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("width", [1, 13])
@pytest.mark.parametrize("expr", LLVM_CASES)
def test_llvm_agrees_with_the_interpreter(expr: str, width: int, dtype: str) -> None:
    shape = (2, 3, 5, width)
    x = sample(shape, np.float32 if dtype == "f32" else np.float64, seed=32)
    if "conv" in expr:
        x = x / 4  # keep conv outputs near the kinks rather than far past them
    ref, got = run_both(source(shape, expr, dtype), {"x": x})
    rtol, atol = (2e-5, 1e-6) if dtype == "f32" else (1e-12, 1e-13)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("op", ["selu(c)", "softplus(c)", "mish(c)", "prelu(c)", "clip(c, 0, 1)"])
def test_elementwise_op_after_a_conv_fuses_into_it(op: str) -> None:
    src = f"input x: f32[N, 3, 8, 8]\nc = conv2d(x, 4, kernel=3)\noutput y = {op}\n"
    graph = convdsl.compile_string(src, backend="numpy", opt_level=0).graph
    (group,) = plan_fusion(graph).groups
    assert group.members == ("c", "y")


def test_every_op_is_implemented_in_every_backend_and_the_converter() -> None:
    llvm = {*lower.EMITTERS, *lower.TILE_EMITTERS, *lower.KERNELS}
    for op in OPS:
        assert op in OP_FUNCTIONS, f"the interpreter has no {op}"
        assert op in llvm, f"the llvm backend has no {op}"
        assert op in bench_torch.OP_FUNCTIONS, f"the PyTorch converter has no {op}"
    for activation in OPS["conv2d"].arg("activation").choices:
        assert activation in bench_torch.ACTIVATIONS


def test_the_torch_converter_reproduces_the_new_ops() -> None:
    src = (
        "input x: f32[N, 3, 6, 5]\n"
        "input g: f32[N, 3, 1, 1]\n"
        "a = conv2d(x, 3, kernel=3, padding=same, activation=mish)\n"
        "b = clip(a, min=-0.2, max=0.3) + selu(a) - softplus(a, beta=2, threshold=1)\n"
        "c = prelu(b) * g / 3 + prelu(x, shared=true)\n"
        "output y = 1 - c / (g * g + 1) - -x\n"
    )
    converted_matches_interpreter(src, "new_ops.conv", batch=2)


# ---- diagnostics ----------------------------------------------------------------------------


def compile_error(src: str) -> str:
    with pytest.raises(convdsl.ConvdslError) as info:
        convdsl.compile_string(src, "net.conv", backend="numpy")
    return str(info.value)


def test_clip_without_bounds_is_refused_at_the_call() -> None:
    err = compile_error("input x: f32[N, 3, 4, 4]\noutput y = clip(x)\n")
    assert err.splitlines() == [
        "net.conv:2:12: error: clip: expected min=, max= or both",
        "   2 | output y = clip(x)",
        "     |            ^~~~~~~",
        "  hint: clip(x, min=0, max=6) is relu6(x)",
    ]


def test_clip_bound_that_is_not_a_number_is_refused_at_the_bound() -> None:
    err = compile_error("input x: f32[N, 3, 4, 4]\noutput y = clip(x, min=x)\n")
    assert err.splitlines()[:3] == [
        "net.conv:2:24: error: clip: min: expected a number, found a tensor",
        "   2 | output y = clip(x, min=x)",
        "     |" + " " * 24 + "^",
    ]


def test_softplus_beta_must_be_positive() -> None:
    err = compile_error("input x: f32[N, 3, 4, 4]\noutput y = softplus(x, beta=-1)\n")
    assert err.splitlines() == [
        "net.conv:2:29: error: softplus: beta: expected a positive number, found -1.0",
        "   2 | output y = softplus(x, beta=-1)",
        "     |" + " " * 29 + "^~",
    ]


def test_prelu_shared_must_be_a_bool() -> None:
    err = compile_error("input x: f32[N, 3, 4, 4]\noutput y = prelu(x, shared=1)\n")
    assert err.splitlines()[0] == (
        "net.conv:2:28: error: prelu: shared: expected true or false, found 1"
    )
