"""Keras weights through ``convdsl.interop.keras``: each layer class built in Keras (3, on its
torch backend), run on channels-last data, and compared with the convdsl layer given the
converted weights, on both backends. Keras computes the expected values; convdsl's formulas
never do.
"""

from __future__ import annotations

import os

os.environ["KERAS_BACKEND"] = "torch"  # before keras is imported: torch is installed, TF is not

from typing import Any

import keras
import numpy as np
import pytest

import convdsl
from convdsl.diagnostics import ConvdslError
from convdsl.interop.keras import convert_layer, keras_weights

# keras's own arrays predate NumPy 2's copy keyword
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BACKENDS = ["numpy", "llvm"]
LAYOUT = {1: "nwc", 2: "nhwc", 3: "ndhwc"}


def test_keras_runs_on_torch() -> None:
    assert keras.backend.backend() == "torch"


def randomized(layer: Any, x: np.ndarray, seed: int) -> np.ndarray:
    """``layer`` built on ``x``, given random weights (batch-norm variances small and
    positive, so that the epsilon matters), and its output on ``x``."""
    layer(x)
    rng = np.random.default_rng(seed)
    arrays = []
    for variable, array in zip(layer.weights, layer.get_weights(), strict=True):
        if "variance" in variable.name:
            arrays.append(rng.uniform(1e-3, 2e-2, array.shape).astype(array.dtype))
        else:
            arrays.append(rng.standard_normal(array.shape).astype(array.dtype))
    layer.set_weights(arrays)
    return np.asarray(keras.ops.convert_to_numpy(layer(x)))


def check(layer: Any, x: np.ndarray, statement: str, backend: str, seed: int = 0) -> None:
    """The convdsl network ``output y: <layout> = <statement>`` with ``layer``'s converted
    weights equals ``layer`` on ``x``."""
    expected = randomized(layer, x, seed)
    rank = x.ndim - 2
    dims = ", ".join(map(str, x.shape))
    layout = f"{LAYOUT[rank]} " if rank else ""
    declared = f": {LAYOUT[rank]}" if rank else ""
    net = convdsl.compile_string(
        f"input x: {layout}f32[{dims}]\noutput y{declared} = {statement}",
        backend=backend,
        weights=keras_weights(layer, names={layer.name: "y"}),
    )
    got = net(x=x)["y"]
    assert got.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1.0)
    assert np.abs(got - expected).max() <= 1e-4 * scale


def data(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CONVS = [  # (Keras layer, its input, the convdsl statement)
    (lambda: keras.layers.Conv1D(5, 3, strides=2, padding="same"), (2, 17, 3),
     "conv1d(x, 5, kernel=3, stride=2, padding=same)"),
    (lambda: keras.layers.Conv1D(4, 3, dilation_rate=2, use_bias=False), (1, 11, 1),
     "conv1d(x, 4, kernel=3, dilation=2, bias=false)"),
    (lambda: keras.layers.Conv2D(4, (3, 5), strides=(2, 1), padding="same"), (2, 9, 11, 17),
     "conv2d(x, 4, kernel=[3, 5], stride=[2, 1], padding=same)"),
    (lambda: keras.layers.Conv2D(3, 3, dilation_rate=2, activation="relu"), (1, 9, 8, 3),
     "conv2d(x, 3, kernel=3, dilation=2, activation=relu)"),
    (lambda: keras.layers.Conv2D(6, 3, groups=3, padding="same"), (1, 7, 7, 3),
     "conv2d(x, 6, kernel=3, groups=3, padding=same)"),
    (lambda: keras.layers.Conv3D(2, 3, strides=2, padding="same"), (1, 7, 5, 6, 3),
     "conv3d(x, 2, kernel=3, stride=2, padding=same)"),
    (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same"),
     (2, 9, 9, 3), "depthwise2d(x, kernel=3, multiplier=2, stride=2, padding=same)"),
    (lambda: keras.layers.DepthwiseConv2D(3, dilation_rate=2), (1, 9, 7, 17),
     "depthwise2d(x, kernel=3, dilation=2)"),
    (lambda: keras.layers.DepthwiseConv2D(1, depth_multiplier=3, use_bias=False), (1, 3, 3, 1),
     "depthwise2d(x, kernel=1, multiplier=3, bias=false)"),
    (lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=2, padding="same"), (2, 13, 3),
     "depthwise1d(x, kernel=3, multiplier=2, padding=same)"),
    (lambda: keras.layers.Conv1DTranspose(4, 3, strides=2), (1, 7, 3),
     "conv_transpose1d(x, 4, kernel=3, stride=2)"),
    (lambda: keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same"), (2, 5, 7, 3),
     "conv_transpose2d(x, 5, kernel=3, stride=2, padding=same)"),
    (lambda: keras.layers.Conv2DTranspose(17, 4, strides=2, padding="same"), (1, 4, 3, 1),
     "conv_transpose2d(x, 17, kernel=4, stride=2, padding=same)"),
    (lambda: keras.layers.Conv2DTranspose(3, 3, dilation_rate=2), (1, 5, 5, 3),
     "conv_transpose2d(x, 3, kernel=3, dilation=2)"),
    (lambda: keras.layers.Conv3DTranspose(2, 3, strides=2, padding="same"), (1, 3, 4, 5, 3),
     "conv_transpose3d(x, 2, kernel=3, stride=2, padding=same)"),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("make", "shape", "statement"), CONVS, ids=[c[2] for c in CONVS])
def test_conv_layers(make: Any, shape: tuple[int, ...], statement: str, backend: str) -> None:
    check(make(), data(*shape), statement, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 5, 7, 17), (1, 9, 3), (1, 3, 4, 5, 1)])
def test_batch_norm_needs_keras_epsilon(shape: tuple[int, ...], backend: str) -> None:
    check(keras.layers.BatchNormalization(), data(*shape), "batch_norm(x, eps=0.001)", backend)
    with pytest.raises(AssertionError):  # convdsl's default eps is PyTorch's 1e-5
        check(keras.layers.BatchNormalization(), data(*shape), "batch_norm(x)", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_without_center_or_scale(backend: str) -> None:
    layer = keras.layers.BatchNormalization(center=False, scale=False, epsilon=0.01)
    check(layer, data(2, 4, 4, 3), "batch_norm(x, eps=0.01)", backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("features", "units"), [(17, 3), (1, 1), (3, 17)])
def test_dense(features: int, units: int, backend: str) -> None:
    layer = keras.layers.Dense(units, activation="relu")
    check(layer, data(4, features), f"dense(x, {units}, activation=relu)", backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_whole_model_by_names(backend: str) -> None:
    model = keras.Sequential(
        [
            keras.Input((11, 9, 3)),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem"),
            keras.layers.BatchNormalization(name="stem_bn"),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw"),
            keras.layers.Conv2D(5, 1, activation="relu", name="pw"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, name="dense_out"),
        ]
    )
    x = data(2, 11, 9, 3)
    expected = randomized(model, x, seed=4)
    net = convdsl.compile_string(
        """
input x: nhwc f32[N, 11, 9, 3]
stem = conv2d(x, 8, kernel=3, stride=2, padding=same, bias=false)
bn = batch_norm(stem, eps=0.001)
dw = depthwise2d(relu(bn), kernel=3, multiplier=2, padding=same)
pw = conv2d(dw, 5, kernel=1, activation=relu)
output logits = dense(flatten(global_avg_pool(pw)), 3)
""",
        backend=backend,
        weights=keras_weights(model, names={"stem_bn": "bn", "dense_out": "logits"}),
    )
    got = net(x=x)["logits"]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_layer_arrays_by_list_and_by_name_agree() -> None:
    rng = np.random.default_rng(0)
    kernel, bias = rng.standard_normal((3, 3, 4, 2)), rng.standard_normal(8)
    listed = convert_layer("DepthwiseConv2D", [kernel, bias], "dw")
    named = convert_layer("DepthwiseConv2D", {"kernel": kernel, "bias": bias}, "dw")
    assert listed.keys() == named.keys() == {"dw.weight", "dw.bias"}
    assert np.array_equal(listed["dw.weight"], named["dw.weight"])
    # output channel c*m + j is filter j of input channel c
    assert np.array_equal(listed["dw.weight"][2 * 2 + 1, 0], kernel[:, :, 2, 1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: convert_layer("SeparableConv2D", [np.zeros(1)], "sep"),
         "Keras layer 'sep': the class SeparableConv2D is not converted"),
        (lambda: convert_layer("Conv2D", [np.zeros((3, 3, 4)), np.zeros(4)], "c"),
         "Keras layer 'c' (Conv2D): the kernel has shape [3, 3, 4], expected 4 dims"),
        (lambda: convert_layer("BatchNormalization", [np.ones(3)] * 2, "bn"),
         "Keras layer 'bn' (BatchNormalization): 2 arrays, expected 4"),
        (lambda: convert_layer("Dense", {"kernal": np.zeros((2, 2))}, "d"),
         "Keras layer 'd' (Dense): unknown weight kernal"),
        (lambda: keras_weights({"a": ("Dense", [np.zeros((2, 2))]),
                                "b": ("Dense", [np.zeros((2, 2))])}, names={"b": "a"}),
         "two Keras layers give the parameter 'a.weight'"),
        (lambda: keras_weights([1, 2]), "expected a Keras model or layer"),
    ],
)  # fmt: skip
def test_bad_layers_are_refused(call: Any, message: str) -> None:
    with pytest.raises(ConvdslError) as caught:
        call()
    assert message in str(caught.value)
