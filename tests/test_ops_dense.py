"""Classifier heads: ``flatten`` and ``dense`` against PyTorch (``nn.Flatten``, ``nn.Linear`` with
the same weights, loaded by their state_dict names), the llvm backend against the interpreter,
rank-2 values ``[N, F]`` through softmax, batch norm (``BatchNorm1d``) and elementwise ops,
sizes that are symbolic, and the diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_close, compile_net, tt
from test_bench import converted_matches_interpreter

import convdsl
from convdsl.ir.cost import graph_macs
from convdsl.passes.fusion import plan_fusion

DTYPES = {"f32": np.float32, "f64": np.float64}


def sample(shape: tuple[int, ...], dtype: type, seed: int = 50) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def dims(shape: tuple[int, ...]) -> str:
    return ", ".join(map(str, shape))


def linear(net: convdsl.Network, layer: str, dtype: type = np.float64) -> torch.nn.Linear:
    """A ``torch.nn.Linear`` holding ``layer``'s weights, loaded through Linear's own
    state_dict names (``weight`` [out, in], ``bias`` [out])."""
    weight = net.weights[f"{layer}.weight"]
    out_features, in_features = weight.shape
    bias = f"{layer}.bias" in net.weights
    module = torch.nn.Linear(in_features, out_features, bias=bias).to(
        torch.float64 if dtype == np.float64 else torch.float32
    )
    state = {name: torch.from_numpy(net.weights[f"{layer}.{name}"]) for name in ("weight", "bias")
             if f"{layer}.{name}" in net.weights}  # fmt: skip
    module.load_state_dict(state, strict=True)
    return module


def both(src: str, seed: int = 0) -> tuple[convdsl.Network, convdsl.Network]:
    """The interpreter (random weights) and the llvm backend with the same weights."""
    ref = compile_net(src, seed)
    native = convdsl.compile_string(src, backend="llvm", threads=2)
    native.set_weights(dict(ref.weights))
    return ref, native


def assert_llvm_agrees(src: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ref, native = both(src)
    want, got = ref(**inputs), native(**inputs)
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype, name
        tolerance = 2e-5 if expected.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got[name], expected, rtol=tolerance, atol=tolerance)
    return want


# ---- flatten + dense against PyTorch ----------------------------------------------------------

# Input shapes (batch left out) whose flattened features are 1, 3, 17 and 33.
FEATURE_MAPS = [(1, 1, 1), (3, 1), (17,), (1, 3, 11), (3, 1, 11, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("out_features", [1, 5, 17])
@pytest.mark.parametrize("shape", FEATURE_MAPS, ids=str)
def test_flatten_dense_matches_torch(
    shape: tuple[int, ...], out_features: int, batch: int, dtype: str
) -> None:
    src = (
        f"input x: {dtype}[N, {dims(shape)}]\n"
        "f = flatten(x)\n"
        f"output fc = dense(f, {out_features})\n"
    )
    x = sample((batch, *shape), DTYPES[dtype])
    ref, native = both(src)
    torch_dtype = torch.float64 if dtype == "f64" else torch.float32
    model = torch.nn.Sequential(torch.nn.Flatten(), linear(ref, "fc", DTYPES[dtype]))
    with torch.inference_mode():
        expected = model(torch.from_numpy(x).to(torch_dtype))
    got = ref(x=x)["fc"]
    assert got.shape == (batch, out_features)
    assert_close(got, expected, DTYPES[dtype])
    tolerance = 2e-5 if dtype == "f32" else 1e-12
    np.testing.assert_allclose(native(x=x)["fc"], got, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 2, 3, 2), (1, 5, 1, 4), (3, 7, 13, 11)], ids=str)
def test_flatten_keeps_pytorch_order(shape: tuple[int, ...]) -> None:
    """Element (c, *s) of each entry lands at its C-order index, as torch.flatten(x, 1)."""
    src = f"input x: f32[N, {dims(shape[1:])}]\noutput y = flatten(x)\noutput z = flatten(x) * 2\n"
    x = sample(shape, np.float32)
    out = assert_llvm_agrees(src, {"x": x})
    assert_close(out["y"], torch.flatten(tt(x), 1))
    assert_close(out["z"], torch.flatten(tt(x), 1) * 2)


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "hard_swish", "mish"])
def test_dense_activation_epilogue_matches_torch(activation: str) -> None:
    src = f"input v: f32[N, 33]\noutput y = dense(v, 17, activation={activation})\n"
    v = sample((3, 33), np.float32)
    out = assert_llvm_agrees(src, {"v": v})
    net = compile_net(src)
    fn = {
        "relu": torch.relu,
        "gelu": torch.nn.functional.gelu,
        "tanh": torch.tanh,
        "hard_swish": torch.nn.functional.hardswish,
        "mish": torch.nn.functional.mish,
    }[activation]
    with torch.inference_mode():
        assert_close(out["y"], fn(linear(net, "y")(tt(v))))


def test_dense_without_bias_has_only_a_weight() -> None:
    src = "input v: f64[N, 3]\noutput y = dense(v, 2, bias=false)\n"
    net = compile_net(src)
    assert set(net.weights) == {"y.weight"}
    v = sample((4, 3), np.float64)
    out = assert_llvm_agrees(src, {"v": v})
    with torch.inference_mode():
        assert_close(out["y"], linear(net, "y")(tt(v)), np.float64)


def test_dense_counts_its_weights_and_macs_as_linear() -> None:
    graph = compile_net("input v: f32[N, 1024]\noutput y = dense(v, 1000)\n").graph
    layer = torch.nn.Linear(1024, 1000)
    assert sum(int(np.prod(p.shape)) for p in graph.params.values()) == sum(
        p.numel() for p in layer.parameters()
    )
    assert graph_macs(graph) == 1024 * 1000  # one multiply-add per weight


# ---- heads ------------------------------------------------------------------------------------

MOBILENET_HEAD = """\
input x: {dtype}[N, 17, 7, 5]
pooled = global_avg_pool(x)
features = flatten(pooled)
logits = dense(features, 33)
output probs = softmax(logits)
"""

VGG_HEAD = """\
input x: {dtype}[N, 8, 7, 7]
f = flatten(x)
fc1 = dense(f, 33, activation=relu)
output fc2 = dense(fc1, 17)
"""


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 5])
def test_mobilenet_style_head_matches_torch(batch: int, dtype: str) -> None:
    src = MOBILENET_HEAD.format(dtype=dtype)
    x = sample((batch, 17, 7, 5), DTYPES[dtype])
    out = assert_llvm_agrees(src, {"x": x})
    net = compile_net(src)
    model = torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        linear(net, "logits"),
        torch.nn.Softmax(dim=1),
    )
    with torch.inference_mode():
        assert_close(out["probs"], model(tt(x)), DTYPES[dtype])
    assert out["probs"].shape == (batch, 33)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 5])
def test_vgg_style_head_matches_torch(batch: int, dtype: str) -> None:
    src = VGG_HEAD.format(dtype=dtype)
    x = sample((batch, 8, 7, 7), DTYPES[dtype])
    out = assert_llvm_agrees(src, {"x": x})
    net = compile_net(src)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), linear(net, "fc1"), torch.nn.ReLU(), linear(net, "fc2")
    )
    with torch.inference_mode():
        assert_close(out["fc2"], model(tt(x)), DTYPES[dtype])


def test_dense_epilogue_and_following_elementwise_ops_fuse() -> None:
    src = "input v: f32[N, 17]\nd = dense(v, 9)\noutput y = relu(d) * 2\n"
    (group,) = plan_fusion(convdsl.compile_string(src, opt_level=0).graph).groups
    assert group.members[0] == "d" and len(group.members) == 3


# ---- rank-2 values through the other ops ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("features", [1, 3, 17, 33])
def test_softmax_batch_norm_and_elementwise_on_features_match_torch(
    features: int, dtype: str
) -> None:
    src = (
        f"input v: {dtype}[N, {features}]\n"
        f"input s: {dtype}[1, {features}]\n"
        "output p = softmax(v)\n"
        "output b = batch_norm(v, eps=0.001)\n"
        "output e = sigmoid(v) * s - v / 2\n"
        "output c = concat(v, relu(v))\n"
    )
    np_dtype = DTYPES[dtype]
    v, s = sample((5, features), np_dtype), sample((1, features), np_dtype, seed=51)
    out = assert_llvm_agrees(src, {"v": v, "s": s})
    net = compile_net(src)
    bn = torch.nn.BatchNorm1d(features, eps=0.001).double().eval()
    bn.load_state_dict(
        {role: torch.from_numpy(net.weights[f"b.{role}"]).double()
         for role in ("weight", "bias", "running_mean", "running_var")},
        strict=False,
    )  # fmt: skip
    with torch.inference_mode():
        assert_close(out["p"], torch.softmax(tt(v), dim=1), np_dtype)
        assert_close(out["b"], bn(tt(v)), np_dtype)
    assert_close(out["e"], torch.sigmoid(tt(v)) * tt(s) - tt(v) / 2, np_dtype)
    assert_close(out["c"], torch.cat([tt(v), torch.relu(tt(v))], dim=1), np_dtype)


def test_batch_norm_after_dense_folds_into_it() -> None:
    src = "input v: f64[N, 17]\nd = dense(v, 9, bias=false)\noutput y = relu(batch_norm(d))\n"
    net = compile_net(src)
    assert [n.op for n in convdsl.compile_string(src).graph.nodes] == ["fused"]
    assert "d.weight@y.batch_norm" in str(convdsl.compile_string(src).graph.derived)
    v = sample((5, 17), np.float64)
    out = assert_llvm_agrees(src, {"v": v})
    bn = torch.nn.BatchNorm1d(9).double().eval()
    bn.load_state_dict(
        {role: torch.from_numpy(net.weights[f"y.batch_norm.{role}"])
         for role in ("weight", "bias", "running_mean", "running_var")},
        strict=False,
    )  # fmt: skip
    with torch.inference_mode():
        assert_close(out["y"], torch.relu(bn(linear(net, "d")(tt(v)))), np.float64)


def test_the_torch_converter_reproduces_flatten_and_dense() -> None:
    converted_matches_interpreter(
        "input x: f32[N, 3, 4, 5]\nf = flatten(x)\nh = dense(f, 7, activation=silu)\n"
        "output y = dense(h, 3, bias=false)\n",
        "dense.conv",
        batch=2,
    )


# ---- symbolic sizes ---------------------------------------------------------------------------

ANY_SIZE = """\
input x: f32[N, 3, H, W]
c = conv2d(x, 8, kernel=3, stride=2, padding=same, activation=relu)
features = flatten(global_avg_pool(c))
output logits = dense(features, 5)
output map = flatten(c)
"""


def test_any_size_head_checks_and_matches_the_fixed_network() -> None:
    net = convdsl.compile_string(ANY_SIZE, backend="numpy", opt_level=0)
    assert net.outputs["logits"].shape == ("N", 5)
    assert str(net.outputs["map"].shape[1]) == "8*ceil(H/2)*ceil(W/2)"
    native = convdsl.compile_string(ANY_SIZE, backend="llvm")
    native.set_weights(dict(net.weights))
    for h, w in [(1, 1), (5, 8), (9, 3)]:
        fixed = convdsl.compile_string(
            ANY_SIZE.replace("H, W", f"{h}, {w}"), backend="numpy", opt_level=0
        )
        fixed.set_weights(dict(net.weights))
        assert fixed.outputs["map"].shape == ("N", 8 * -(-h // 2) * -(-w // 2))
        x = sample((2, 3, h, w), np.float32)
        want = fixed(x=x)
        for got in (net(x=x), native(x=x)):
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6)


def test_check_runs_on_an_any_size_head(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "head.conv"
    path.write_text(ANY_SIZE)
    from convdsl.cli import main

    assert main(["check", str(path)]) == 0


# ---- diagnostics ------------------------------------------------------------------------------


def first_lines(src: str) -> list[str]:
    with pytest.raises(convdsl.ConvdslError) as info:
        convdsl.compile_string(src, "net.conv", backend="numpy")
    return str(info.value).splitlines()


def test_dense_on_a_feature_map_is_refused_at_its_input() -> None:
    lines = first_lines("input x: f32[N, 8, 4, 4]\noutput y = dense(x, 10)\n")
    assert lines[:3] == [
        "net.conv:2:18: error: dense: expected features [N, F] (rank 2), found [N,8,4,4] (rank 4)",
        "   2 | output y = dense(x, 10)",
        "     |                  ^",
    ]
    assert "flatten(x)" in lines[3]


def test_dense_on_symbolic_features_is_refused_at_check_time() -> None:
    lines = first_lines("input x: f32[N, 64, H, W]\nf = flatten(x)\noutput y = dense(f, 10)\n")
    assert lines[:3] == [
        "net.conv:3:18: error: dense: needs a fixed number of input features; found 64*H*W",
        "   3 | output y = dense(f, 10)",
        "     |                  ^",
    ]
    assert "give the input fixed sizes or put a global pool before flatten" in lines[3]


def test_batch_norm_on_symbolic_features_is_refused() -> None:
    lines = first_lines("input x: f32[N, 2, L]\noutput y = batch_norm(flatten(x))\n")
    assert lines[0] == (
        "net.conv:2:23: error: batch_norm: needs a fixed number of channels; found 2*L"
    )


@pytest.mark.parametrize("count", ["0", "-3"])
def test_out_features_must_be_positive(count: str) -> None:
    lines = first_lines(f"input v: f32[N, 4]\noutput y = dense(v, {count})\n")
    assert lines[0] == (
        f"net.conv:2:21: error: dense: out_features: expected a positive integer, found {count}"
    )


def test_a_conv_on_features_names_what_takes_them() -> None:
    lines = first_lines("input v: f32[N, 4]\noutput y = conv1d(v, 3, kernel=1)\n")
    assert lines[0] == (
        "net.conv:2:19: error: conv1d: expected a 1-D input [N, C, L] (rank 3), found [N,4] "
        "(rank 2)"
    )
    assert "dense" in lines[3] and "[N, F] holds features" in lines[3]


def test_a_global_pool_on_features_is_refused() -> None:
    lines = first_lines("input v: f32[N, 4]\noutput y = global_avg_pool(v)\n")
    assert lines[0].startswith("net.conv:2:28: error: global_avg_pool: expected a tensor with")


def test_flatten_past_the_size_limit_names_the_features() -> None:
    lines = first_lines("input x: f32[N, 64, 1024, 512]\noutput y = flatten(x)\n")
    assert lines[0] == (
        "net.conv:2:20: error: flatten: the output [N,33554432] is too large: features is "
        "33554432, at most 16777216 (2**24)"
    )
