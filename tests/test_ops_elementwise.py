"""Elementwise ops, activations, softmax and batch norm in .conv against torch; the symbolic
batch; float64 networks end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_rejected, compile_and_run, compile_net, randn, tt

ACTIVATIONS = [
    # (.conv call on x, torch reference)
    ("relu(x)", F.relu),
    ("relu6(x)", F.relu6),
    ("leaky_relu(x)", lambda x: F.leaky_relu(x, 0.01)),
    ("leaky_relu(x, alpha=0.2)", lambda x: F.leaky_relu(x, 0.2)),
    ("leaky_relu(x, alpha=2)", lambda x: F.leaky_relu(x, 2.0)),
    ("elu(x)", F.elu),
    ("elu(x, alpha=0.5)", lambda x: F.elu(x, 0.5)),
    ("sigmoid(x)", torch.sigmoid),
    ("tanh(x)", torch.tanh),
    ("gelu(x)", F.gelu),
    ("gelu(x, approximate=none)", F.gelu),
    ("gelu(x, approximate=tanh)", lambda x: F.gelu(x, approximate="tanh")),
    ("silu(x)", F.silu),
    ("hard_sigmoid(x)", F.hardsigmoid),
    ("hard_swish(x)", F.hardswish),
    ("softmax(x)", lambda x: torch.softmax(x, dim=1)),
]


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 17, 2, 3), (1, 3, 2, 1, 4)], ids=str)
@pytest.mark.parametrize(("expr", "fn"), ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation(expr: str, fn, shape) -> None:
    rng = np.random.default_rng(20)
    # Wide range, both signs, and the kinks of relu6 / hard_sigmoid exactly.
    x = (randn(rng, shape) * 4).astype(np.float32)
    x.flat[:6] = [-3.0, 3.0, 0.0, 6.0, -20.0, 20.0]
    dims = ", ".join(map(str, shape[1:]))
    out, _ = compile_and_run(f"input x: f32[N, {dims}]\noutput y = {expr}\n", {"x": x})
    assert_close(out["y"], fn(tt(x)))


def test_softmax_is_over_channels_only() -> None:
    x = randn(np.random.default_rng(21), (3, 5, 4, 3)) * 10
    out, _ = compile_and_run("input x: f32[N, 5, 4, 3]\noutput y = softmax(x)\n", {"x": x})
    np.testing.assert_allclose(out["y"].sum(axis=1), 1.0, rtol=1e-5)
    assert_close(out["y"], torch.softmax(tt(x), dim=1))


def test_binary_ops_and_operators() -> None:
    rng = np.random.default_rng(22)
    a, b = randn(rng, (3, 5, 4, 1)), randn(rng, (3, 5, 4, 1))
    src = """
    input a: f32[N, 5, 4, 1]
    input b: f32[N, 5, 4, 1]
    output s = add(a, b)
    output p = mul(a, b)
    output s2 = a + b
    output p2 = a * b
    output mixed = a + b * a + mul(b, b)   # * binds tighter than +
    """
    out, _ = compile_and_run(src, {"a": a, "b": b})
    ta, tb = tt(a), tt(b)
    assert_close(out["s"], ta + tb)
    assert_close(out["p"], ta * tb)
    assert_close(out["s2"], ta + tb)
    assert_close(out["p2"], ta * tb)
    assert_close(out["mixed"], ta + tb * ta + tb * tb)


def test_add_rejects_shapes_that_do_not_broadcast() -> None:
    src = "input a: f32[1, 5, 4, 4]\ninput b: f32[1, 3, 4, 4]\noutput y = a + b\n"
    assert_rejected(src, 3)


@pytest.mark.parametrize("shape", [(1, 3, 7), (3, 17, 2, 3), (1, 1, 2, 1, 3)], ids=str)
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_batch_norm_matches_torch(shape, eps) -> None:
    rng = np.random.default_rng(23)
    x = randn(rng, shape)
    dims = ", ".join(map(str, shape[1:]))
    call = "batch_norm(x)" if eps is None else f"batch_norm(x, eps={eps})"
    out, net = compile_and_run(f"input x: f32[N, {dims}]\noutput y = {call}\n", {"x": x})
    w = {
        role: tt(net.weights[f"y.{role}"])
        for role in ("weight", "bias", "running_mean", "running_var")
    }
    assert all(t.shape == (shape[1],) for t in w.values())
    assert float(w["running_mean"].abs().max()) > 0  # random stats, not the identity init
    ref = F.batch_norm(
        tt(x),
        w["running_mean"],
        w["running_var"],
        w["weight"],
        w["bias"],
        training=False,
        eps=1e-5 if eps is None else eps,
    )
    assert_close(out["y"], ref)


SYMBOLIC_NET = """
input x: f32[N, 3, 9, 8]
c = conv2d(x, 5, kernel=3, stride=2, padding=same, activation=silu)
b = batch_norm(c)
d = depthwise2d(b, kernel=3, multiplier=2, padding=1)
u = conv_transpose2d(d, 4, kernel=4, stride=2, padding=1)
p = max_pool2d(u, kernel=2)
output g = global_avg_pool(p)
output s = softmax(upscale(p, 2, mode=bilinear))
"""


def test_symbolic_batch_gives_per_sample_results() -> None:
    net = compile_net(SYMBOLIC_NET)
    assert net.inputs["x"].shape == ("N", 3, 9, 8)
    x = randn(np.random.default_rng(24), (4, 3, 9, 8))
    batched = net(x=x)
    assert batched["s"].shape == (4, 4, 10, 8)
    for i in range(4):
        single = net(x=x[i : i + 1])
        for name in ("g", "s"):
            np.testing.assert_allclose(single[name][0], batched[name][i], rtol=1e-6, atol=1e-7)


F64_NET = """
input x: f64[N, 3, 7, 6]
input y: f64[N, 2, 14, 12]
c = conv2d(x, 4, kernel=3, padding=same, groups=1, activation=gelu)
t = conv_transpose2d(c, 2, kernel=3, stride=2, padding=same)
m = mul(t, y)
b = batch_norm(m)
e = elu(b, alpha=0.7) + y
a = avg_pool2d(e, kernel=3, stride=2, padding=1)
output out = concat(a, upscale(x, 1), crop(e, like=a, offset=center))
"""


def test_float64_network_matches_torch_in_float64() -> None:
    rng = np.random.default_rng(25)
    x, y = rng.standard_normal((3, 3, 7, 6)), rng.standard_normal((3, 2, 14, 12))
    out, net = compile_and_run(F64_NET, {"x": x, "y": y})
    assert all(p.dtype.numpy == np.float64 for p in net.params.values())
    w = {name: tt(a) for name, a in net.weights.items()}
    assert all(a.dtype == np.float64 for a in net.weights.values())
    c = F.gelu(F.conv2d(tt(x), w["c.weight"], w["c.bias"], padding=1))
    # Keras same, kernel 3 stride 2: crop total 1, all of it after (full 15 x 13 -> 14 x 12).
    t = F.conv_transpose2d(c, w["t.weight"], w["t.bias"], stride=2)[:, :, :14, :12]
    m = t * tt(y)
    b = F.batch_norm(
        m, w["b.running_mean"], w["b.running_var"], w["b.weight"], w["b.bias"], training=False
    )
    e = F.elu(b, 0.7) + tt(y)
    a = F.avg_pool2d(e, 3, 2, 1, count_include_pad=False)
    ho, wo = a.shape[2:]
    cropped = e[:, :, (14 - ho) // 2 : (14 - ho) // 2 + ho, (12 - wo) // 2 : (12 - wo) // 2 + wo]
    ref = torch.cat([a, tt(x), cropped], dim=1)
    assert out["out"].dtype == np.float64
    assert_close(out["out"], ref, np.float64)


F64_OPS = [
    # (.conv expression on x: f64[N, 4, 5, 6], torch reference from (x, weights))
    (  # same, stride 2: H 5 pads (1, 1), W 6 pads (0, 1)
        "conv2d(x, 3, kernel=3, stride=2, padding=same, activation=gelu)",
        lambda x, w: F.gelu(F.conv2d(F.pad(x, (0, 1, 1, 1)), w["y.weight"], w["y.bias"], stride=2)),
    ),
    (
        "depthwise2d(x, kernel=[3, 2], multiplier=2, dilation=[1, 2], padding=[[1, 1], [0, 2]])",
        lambda x, w: F.conv2d(
            F.pad(x, (0, 2, 1, 1)), w["y.weight"], w["y.bias"], dilation=(1, 2), groups=4
        ),
    ),
    (
        "max_pool2d(x, kernel=3, stride=2, padding=1, ceil_mode=true)",
        lambda x, w: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
    ),
    (
        "avg_pool2d(x, kernel=2, stride=1, padding=1, include_pad=true)",
        lambda x, w: F.avg_pool2d(x, 2, 1, 1, count_include_pad=True),
    ),
    ("gelu(x)", lambda x, w: F.gelu(x)),
    ("gelu(x, approximate=tanh)", lambda x, w: F.gelu(x, approximate="tanh")),
    ("sigmoid(x) + tanh(x)", lambda x, w: torch.sigmoid(x) + torch.tanh(x)),
    ("silu(x) * hard_swish(x)", lambda x, w: F.silu(x) * F.hardswish(x)),
    ("elu(x) + hard_sigmoid(x)", lambda x, w: F.elu(x) + F.hardsigmoid(x)),
    ("softmax(x)", lambda x, w: torch.softmax(x, dim=1)),
    (
        "upscale(x, 2, mode=bilinear, align_corners=true)",
        lambda x, w: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True),
    ),
    ("pad(x, [[1, 2], [3, 0]], mode=reflect)", lambda x, w: F.pad(x, (3, 0, 1, 2), mode="reflect")),
    ("pixel_shuffle(x, 2)", lambda x, w: torch.pixel_shuffle(x, 2)),
    ("global_avg_pool(x)", lambda x, w: x.mean(dim=(2, 3), keepdim=True)),
]


@pytest.mark.parametrize(("expr", "fn"), F64_OPS, ids=[e for e, _ in F64_OPS])
def test_float64_ops(expr: str, fn) -> None:
    x = np.random.default_rng(26).standard_normal((3, 4, 5, 6)) * 3
    out, net = compile_and_run(f"input x: f64[N, 4, 5, 6]\noutput y = {expr}\n", {"x": x})
    assert_close(out["y"], fn(tt(x), {name: tt(a) for name, a in net.weights.items()}), np.float64)
