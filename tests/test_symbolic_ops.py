"""Every op on symbolic input sizes, against the same program written with fixed sizes.

For each op a small program over ``x: f32[N, C, H, W]`` (or ``[N, C, L]``, ``[N, C, D, H, W]``)
exercises its size arithmetic: strides, ceil mode, ``same``/``same_lower`` padding, non-integer
resize factors, slices with negative bounds. ``check`` must accept it symbolically; at several
sizes, including odd ones and ones a layer refuses, the specialized network must agree with the
fixed-size program: accepted at the same sizes, with the same output shapes and the same numbers
(interpreter). A new op must add a program here (``test_every_op_has_a_program``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import convdsl
from convdsl.ir.ops import OPS
from convdsl.ir.types import bind_shape

X2 = "input x: f32[N, 3, H, W]\n"
X1 = "input x: f32[N, 3, L]\n"
X3 = "input x: f32[N, 2, D, H, W]\n"

PROGRAMS: dict[str, str] = {
    "conv1d": X1 + "output y = conv1d(x, 4, kernel=3, stride=2, padding=same)",
    "depthwise1d": X1 + "output y = depthwise1d(x, kernel=3, dilation=2, padding=causal)",
    "conv_transpose1d": X1 + "output y = conv_transpose1d(x, 2, kernel=3, stride=2, padding=1)",
    "max_pool1d": X1 + "output y = max_pool1d(x, 3, stride=2, ceil_mode=true)",
    "avg_pool1d": X1 + "output y = avg_pool1d(x, 2, padding=1, include_pad=true)",
    "conv2d": X2 + "output y = conv2d(x, 4, kernel=[3, 2], stride=[2, 3], padding=same_lower)",
    "depthwise2d": X2 + "output y = depthwise2d(x, kernel=3, multiplier=2, stride=2)",
    "conv_transpose2d": X2
    + "output y = conv_transpose2d(x, 2, kernel=3, stride=2, padding=same, output_padding=1)",
    "max_pool2d": X2 + "output y = max_pool2d(x, 3, stride=2, padding=1, ceil_mode=true)",
    "avg_pool2d": X2 + "output y = avg_pool2d(x, [2, 3], stride=[2, 1], padding=same)",
    "conv3d": X3 + "output y = conv3d(x, 2, kernel=2, stride=2)",
    "depthwise3d": X3 + "output y = depthwise3d(x, kernel=3, padding=same)",
    "conv_transpose3d": X3 + "output y = conv_transpose3d(x, 2, kernel=2, stride=2)",
    "max_pool3d": X3 + "output y = max_pool3d(x, 2, ceil_mode=true)",
    "avg_pool3d": X3 + "output y = avg_pool3d(x, 2, stride=1)",
    "add": X2 + "output y = x + conv2d(x, 3, kernel=3, padding=same)",
    "sub": X2 + "output y = max_pool2d(x, 2) - avg_pool2d(x, 2)",
    "mul": X2 + "output y = x * global_avg_pool(x)",
    "div": X2 + "output y = x / (2 + sigmoid(crop(x, size=[1, 1])))",
    "relu": X2 + "output y = relu(x)",
    "relu6": X2 + "output y = relu6(x)",
    "leaky_relu": X2 + "output y = leaky_relu(x, alpha=0.2)",
    "elu": X2 + "output y = elu(x)",
    "sigmoid": X2 + "output y = sigmoid(x)",
    "tanh": X2 + "output y = tanh(x)",
    "gelu": X2 + "output y = gelu(x, approximate=tanh)",
    "silu": X2 + "output y = silu(x)",
    "hard_sigmoid": X2 + "output y = hard_sigmoid(x)",
    "hard_swish": X2 + "output y = hard_swish(x)",
    "clip": X2 + "output y = clip(x, min=-0.5, max=0.5)",
    "selu": X2 + "output y = selu(x)",
    "softplus": X2 + "output y = softplus(x, beta=2)",
    "mish": X2 + "output y = mish(x)",
    "prelu": X2 + "output y = prelu(x)",
    "softmax": X2 + "output y = softmax(x)",
    "batch_norm": X2 + "output y = batch_norm(x)",
    "global_avg_pool": X2 + "output y = global_avg_pool(x)",
    "global_max_pool": X1 + "output y = global_max_pool(x)",
    "concat": X2 + "output y = concat(x, max_pool2d(x, 2, stride=1, padding=same), axis=3)",
    "slice": X2 + "output y = slice(x, axis=2, start=1, end=-1, step=2)",
    "split": X2 + "a, b = split(x, parts=2, axis=3)\noutput y = a + b",
    "upscale": X2 + "output y = upscale(x, [1.5, 0.5], mode=linear)",
    "pixel_shuffle": "input x: f32[N, 8, H, W]\noutput y = pixel_shuffle(x, 2)",
    "space_to_depth": X2 + "output y = space_to_depth(x, 2)",
    "pad": X2 + "output y = pad(x, [[1, 0], [2, 3]], mode=reflect)",
    "crop": X2 + "output y = crop(x, size=[3, 2], offset=center)",
    "flatten": X2 + "output y = relu(flatten(max_pool2d(x, 2)))",
    "dense": X2 + "output y = dense(flatten(global_avg_pool(x)), 5, activation=relu)",
}
SIZES = {
    1: [(3,), (4,), (7,), (12,), (1,)],
    2: [(3, 4), (4, 6), (7, 12), (12, 8), (1, 5)],
    3: [(3, 4, 5), (4, 4, 6), (2, 7, 12), (8, 2, 2), (1, 1, 3)],
}
"""Sizes per number of size names: odd, even, 1, and pairs that differ."""


def test_every_op_has_a_program() -> None:
    assert sorted(PROGRAMS) == sorted(OPS)


def fixed(text: str, sizes: dict[str, int]) -> str:
    for name, value in sizes.items():
        text = re.sub(rf"\b{name}\b", str(value), text)
    return text


@pytest.mark.parametrize("op", sorted(PROGRAMS))
def test_op_on_symbolic_sizes_agrees_with_fixed_sizes(op: str) -> None:
    text = PROGRAMS[op]
    net = convdsl.compile_string(text, f"{op}.conv", backend="numpy", seed=1)
    names = net.sizes
    assert names, "the program must have symbolic sizes"
    accepted = 0
    for i, values in enumerate(SIZES[len(names)]):
        sizes = dict(zip(names, values, strict=True))
        try:
            reference = convdsl.compile_string(fixed(text, sizes), backend="numpy", seed=1)
        except convdsl.ConvdslError:
            with pytest.raises(convdsl.ConvdslError, match="with "):
                net.specialize(**sizes)
            continue
        accepted += 1
        inputs = reference.random_inputs(seed=i, batch=2)
        want = reference(inputs)["y"]
        got = net(inputs)["y"]
        assert got.shape == want.shape, sizes
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert bind_shape(net.outputs["y"].shape, {"N": 2, **sizes}) == want.shape
    assert accepted >= 2
