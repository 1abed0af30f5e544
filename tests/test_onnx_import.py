"""ONNX import: one-node models for every op and attribute form, small CNNs and models exported
by ``torch.onnx.export``, run by onnxruntime (the oracle) and by the imported network on both
backends; refusals pinned by message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import convdsl
from convdsl.interop.onnx_import import compile_onnx, import_onnx

RNG = np.random.default_rng(0)
BACKENDS = ("numpy", "llvm")


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make_model(
    nodes: Sequence[Any],
    inputs: dict[str, Sequence[Any]],
    outputs: dict[str, int],
    inits: dict[str, Any] | None = None,
    opset: int = 17,
    dtype: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, dtype, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, dtype, [None] * r) for n, r in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def one_node(
    op: str,
    shape: Sequence[Any],
    inits: dict[str, Any] | None = None,
    extra: Sequence[str] = (),
    opset: int = 17,
    **attrs: Any,
) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", *extra], ["y"], name="n", **attrs)
    return make_model([node], {"x": shape}, {"y": len(shape)}, inits, opset)


def expected_outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def check(
    model: onnx.ModelProto,
    feeds: Sequence[dict[str, np.ndarray]],
    backends: Sequence[str] = BACKENDS,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> str:
    """Import ``model``; every feed gives onnxruntime's outputs on every backend."""
    source, weights = import_onnx(model)
    for backend in backends:
        net = convdsl.compile_string(source, "imported.conv", weights=weights, backend=backend)
        for feed in feeds:
            expected = expected_outputs(model, feed)
            got = net(**feed)
            assert set(got) == set(expected), source
            for name, value in expected.items():
                assert got[name].shape == value.shape, (name, backend, source)
                np.testing.assert_allclose(
                    got[name], value, rtol=rtol, atol=atol, err_msg=f"{name} on {backend}\n{source}"
                )
    return source


def feed(shape: Sequence[int], name: str = "x") -> dict[str, np.ndarray]:
    return {name: rand(*shape)}


# ---- one node per op and attribute form -------------------------------------------------------

W3 = rand(6, 4, 3, 3)
CONV_CASES = {
    "plain": dict(inits={"w": W3}, extra=["w"]),
    "bias_pads_stride": dict(
        inits={"w": W3, "b": rand(6)}, extra=["w", "b"], pads=[1, 0, 2, 1], strides=[2, 1]
    ),
    "same_upper": dict(inits={"w": W3}, extra=["w"], auto_pad="SAME_UPPER", strides=[2, 2]),
    "same_lower": dict(inits={"w": rand(6, 4, 4, 4)}, extra=["w"], auto_pad="SAME_LOWER"),
    "valid_dilated": dict(inits={"w": W3}, extra=["w"], auto_pad="VALID", dilations=[2, 1]),
    "groups": dict(inits={"w": rand(6, 2, 3, 3)}, extra=["w"], group=2, pads=[1, 1, 1, 1]),
    "depthwise": dict(
        inits={"w": rand(8, 1, 3, 3), "b": rand(8)}, extra=["w", "b"], group=4, pads=[1, 1, 1, 1]
    ),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case: str) -> None:
    attrs = dict(CONV_CASES[case])
    model = one_node("Conv", ["N", 4, 9, 11], attrs.pop("inits"), attrs.pop("extra"), **attrs)
    check(model, [feed((2, 4, 9, 11))])


def test_conv_1d_and_3d() -> None:
    check(
        one_node("Conv", ["N", 3, 17], {"w": rand(5, 3, 4)}, ["w"], pads=[2, 1]), [feed((1, 3, 17))]
    )
    check(
        one_node("Conv", [1, 2, 5, 6, 7], {"w": rand(3, 2, 2, 3, 3)}, ["w"], strides=[1, 2, 2]),
        [feed((1, 2, 5, 6, 7))],
    )


TRANSPOSE_CASES = {
    "pads": dict(strides=[2, 2], pads=[1, 1, 1, 1]),
    "asymmetric_output_padding": dict(strides=[2, 2], pads=[0, 1, 1, 0], output_padding=[1, 1]),
    "output_shape": dict(strides=[2, 2], output_shape=[10, 10]),
    "output_shape_upper": dict(strides=[2, 2], output_shape=[10, 10], auto_pad="SAME_UPPER"),
    "output_shape_larger": dict(strides=[2, 2], output_shape=[12, 12]),
    "same_upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same_lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "same_short_kernel": dict(strides=[3, 3], auto_pad="SAME_UPPER"),
    "dilated_groups": dict(strides=[1, 2], dilations=[2, 1], group=2),
}


@pytest.mark.parametrize("case", sorted(TRANSPOSE_CASES))
def test_conv_transpose(case: str) -> None:
    attrs = TRANSPOSE_CASES[case]
    w = rand(4, 3, 3, 3) if "group" not in attrs else rand(4, 2, 3, 3)
    model = one_node(
        "ConvTranspose",
        [2, 4, 5, 5],
        {"w": w, "b": rand(w.shape[1] * attrs.get("group", 1))},
        ["w", "b"],
        **attrs,
    )
    check(model, [feed((2, 4, 5, 5))])


def test_batch_norm() -> None:
    inits = {"s": rand(5), "b": rand(5), "m": rand(5), "v": np.abs(rand(5)) + 0.5}
    model = one_node(
        "BatchNormalization", ["N", 5, 4, 3], inits, ["s", "b", "m", "v"], epsilon=1e-3
    )
    check(model, [feed((3, 5, 4, 3))])


ACTIVATIONS = {
    "Relu": {},
    "Sigmoid": {},
    "Tanh": {},
    "HardSwish": {},
    "Softplus": {},
    "Mish": {},
    "LeakyRelu": {"alpha": 0.2},
    "Elu": {"alpha": 0.7},
    "Selu": {},
    "Selu_custom": {"alpha": 1.5, "gamma": 2.0},
    "HardSigmoid": {},
    "HardSigmoid_torch": {"alpha": 1 / 6, "beta": 0.5},
    "Gelu": {},
    "Gelu_tanh": {"approximate": "tanh"},
}


@pytest.mark.parametrize("case", sorted(ACTIVATIONS))
def test_activation(case: str) -> None:
    op = case.split("_")[0]
    opset = 20 if op == "Gelu" else 18
    model = one_node(op, ["N", 3, 5, 7], opset=opset, **ACTIVATIONS[case])
    check(model, [{"x": rand(2, 3, 5, 7, scale=3)}])


@pytest.mark.parametrize(
    "bounds", [(0.0, 6.0), (-0.5, 0.5), (0.0, None), (None, 0.25), (None, None)]
)
def test_clip(bounds: tuple[float | None, float | None]) -> None:
    inits = {k: np.float32(v) for k, v in zip(("lo", "hi"), bounds, strict=True) if v is not None}
    extra = ["lo" if bounds[0] is not None else "", "hi" if bounds[1] is not None else ""]
    check(one_node("Clip", ["N", 2, 4, 4], inits, extra), [{"x": rand(2, 2, 4, 4, scale=4)}])


def test_clip_opset_10_attributes() -> None:
    model = one_node("Clip", ["N", 2, 4, 4], opset=10, min=-1.0, max=2.0)
    check(model, [{"x": rand(1, 2, 4, 4, scale=3)}])


@pytest.mark.parametrize("slope_shape", [(4, 1, 1), (1,), (1, 4, 1, 1)])
def test_prelu(slope_shape: tuple[int, ...]) -> None:
    model = one_node("PRelu", ["N", 4, 3, 3], {"s": rand(*slope_shape)}, ["s"])
    check(model, [feed((2, 4, 3, 3))])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("constant", ["scalar", "per_channel", "per_channel_4d", "first"])
def test_arithmetic_with_constants(op: str, constant: str) -> None:
    value = {
        "scalar": np.float32(1.5),
        "per_channel": rand(3, 1, 1) + 2,
        "per_channel_4d": rand(1, 3, 1, 1) + 2,
        "first": np.float32(-2.5),
    }[constant]
    inputs = ["c", "x"] if constant == "first" else ["x", "c"]
    node = helper.make_node(op, inputs, ["y"], name="n")
    model = make_model([node], {"x": ["N", 3, 4, 5]}, {"y": 4}, {"c": value})
    check(model, [{"x": rand(2, 3, 4, 5) + 0.1}])


def test_arithmetic_of_tensors_broadcasts() -> None:
    node = helper.make_node("Mul", ["x", "g"], ["y"])
    model = make_model([node], {"x": ["N", 3, 4, 5], "g": ["N", 3, 1, 1]}, {"y": 4})
    check(model, [{"x": rand(2, 3, 4, 5), "g": rand(2, 3, 1, 1)}])


POOL_CASES = {
    "max": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "max_ceil": ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "max_dilated": ("MaxPool", dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 1, 0, 2])),
    "max_same_upper": ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "max_same_lower": ("MaxPool", dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER")),
    "avg": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "avg_include_pad": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    ),
    "avg_ceil": ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "avg_ceil_include_pad": (
        "AveragePool",
        dict(
            kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, pads=[1, 1, 1, 1], count_include_pad=1
        ),
    ),
    "avg_same_upper": (
        "AveragePool",
        dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    ),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool(case: str) -> None:
    op, attrs = POOL_CASES[case]
    check(one_node(op, ["N", 3, 8, 9], **attrs), [feed((2, 3, 8, 9))])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op: str) -> None:
    check(one_node(op, ["N", 3, "H", "W"]), [feed((2, 3, 5, 6)), feed((1, 3, 1, 9))])


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_concat(axis: int) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Concat", ["x", "r", "x"], ["y"], axis=axis),
    ]
    check(make_model(nodes, {"x": ["N", 2, 3, 4]}, {"y": 4}), [feed((2, 2, 3, 4))])


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode: str) -> None:
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    inits: dict[str, Any] = {"p": pads, "v": np.float32(-1.5)}
    model = one_node(
        "Pad", ["N", 2, 5, 6], inits, ["p", "v"] if mode == "constant" else ["p"], mode=mode
    )
    check(model, [feed((2, 2, 5, 6))])


def test_pad_axes_opset_18_and_attribute_form_opset_10() -> None:
    inits = {"p": np.array([1, 2, 3, 0], np.int64), "a": np.array([2, 3], np.int64)}
    check(one_node("Pad", ["N", 2, 5, 6], inits, ["p", "", "a"], opset=18), [feed((1, 2, 5, 6))])
    model = one_node("Pad", ["N", 2, 5, 6], opset=10, pads=[0, 0, 1, 1, 0, 0, 0, 2], value=2.0)
    check(model, [feed((1, 2, 5, 6))])


RESIZE_CASES = {
    "nearest_half_pixel": dict(scales=[1, 1, 2, 3]),
    "nearest_asymmetric_floor": dict(
        scales=[1, 1, 2, 2], coordinate_transformation_mode="asymmetric", nearest_mode="floor"
    ),
    "nearest_align_corners_ceil": dict(
        scales=[1, 1, 1.5, 2], nearest_mode="ceil", coordinate_transformation_mode="align_corners"
    ),
    "nearest_prefer_ceil_down": dict(scales=[1, 1, 0.5, 0.75], nearest_mode="round_prefer_ceil"),
    "linear_half_pixel": dict(scales=[1, 1, 2, 2], mode="linear"),
    "linear_pytorch_half_pixel_sizes": dict(
        sizes=[2, 3, 1, 13], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"
    ),
    "linear_align_corners": dict(
        scales=[1, 1, 2, 1.5], mode="linear", coordinate_transformation_mode="align_corners"
    ),
    "cubic": dict(scales=[1, 1, 2, 2], mode="cubic"),
    "cubic_exclude_outside": dict(
        scales=[1, 1, 1.5, 0.5], mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5
    ),
    "cubic_asymmetric_sizes": dict(
        sizes=[2, 3, 9, 4], mode="cubic", coordinate_transformation_mode="asymmetric"
    ),
}


@pytest.mark.parametrize("case", sorted(RESIZE_CASES))
def test_resize(case: str) -> None:
    attrs = dict(RESIZE_CASES[case])
    inits: dict[str, Any] = {}
    extra = ["", "", ""]
    if "scales" in attrs:
        inits["s"] = np.array(attrs.pop("scales"), np.float32)
        extra[1] = "s"
    else:
        inits["z"] = np.array(attrs.pop("sizes"), np.int64)
        extra = ["", "", "z"]
    model = one_node("Resize", [2, 3, 6, 5], inits, extra, opset=19, **attrs)
    check(model, [feed((2, 3, 6, 5))])


def test_resize_axes_opset_18() -> None:
    inits = {"s": np.array([3.0, 2.0], np.float32)}
    model = one_node(
        "Resize", ["N", 2, "H", "W"], inits, ["", "s"], opset=18, axes=[2, 3], mode="linear"
    )
    check(model, [feed((1, 2, 4, 5)), feed((2, 2, 3, 3))])


@pytest.mark.parametrize("op_opset", [("Upsample", 9), ("Resize", 10)])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_and_resize_10(op_opset: tuple[str, int], mode: str) -> None:
    op, opset = op_opset
    inits = {"s": np.array([1, 1, 2, 3], np.float32)}
    check(one_node(op, ["N", 2, 4, 5], inits, ["s"], opset=opset, mode=mode), [feed((2, 2, 4, 5))])


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode: str) -> None:
    check(one_node("DepthToSpace", ["N", 8, 3, 4], blocksize=2, mode=mode), [feed((2, 8, 3, 4))])


def test_space_to_depth() -> None:
    check(one_node("SpaceToDepth", ["N", 3, 4, 6], blocksize=2), [feed((2, 3, 4, 6))])


SLICE_CASES = {
    "channels": ([1], [3], [1], [1]),
    "spatial_steps": ([1, -1], [2**63 - 1, -(2**63)], [2, 3], [2, -2]),
    "negative_start": ([-3], [2**63 - 1], [-1], None),
    "two_axes_default_axes": ([0, 0, 1, 0], [2**63 - 1, 3, 5, 3], None, None),
}


@pytest.mark.parametrize("case", sorted(SLICE_CASES))
def test_slice(case: str) -> None:
    starts, ends, axes, steps = SLICE_CASES[case]
    inits: dict[str, Any] = {"s": np.array(starts, np.int64), "e": np.array(ends, np.int64)}
    extra = ["s", "e"]
    if axes is not None:
        inits["a"] = np.array(axes, np.int64)
        extra.append("a")
    if steps is not None:
        inits["t"] = np.array(steps, np.int64)
        extra.append("t")
    check(one_node("Slice", ["N", 4, 6, 7], inits, extra), [feed((2, 4, 6, 7))])


@pytest.mark.parametrize("form", ["input_13", "attribute_11", "equal", "num_outputs_18_uneven"])
def test_split(form: str) -> None:
    outs = ["a", "b", "c"]
    inits: dict[str, Any] = {}
    if form == "input_13":
        node, opset = helper.make_node("Split", ["x", "s"], outs, axis=1), 13
        inits["s"] = np.array([1, 3, 2], np.int64)
    elif form == "attribute_11":
        node, opset = helper.make_node("Split", ["x"], outs, axis=-1, split=[2, 2, 3]), 11
    elif form == "equal":
        node, opset = helper.make_node("Split", ["x"], outs, axis=1), 13
    else:
        node, opset = helper.make_node("Split", ["x"], outs, axis=3, num_outputs=3), 18
    relu = helper.make_node("Relu", ["b"], ["rb"])
    model = make_model([node, relu], {"x": ["N", 6, 5, 7]}, {"a": 4, "rb": 4, "c": 4}, inits, opset)
    check(model, [feed((2, 6, 5, 7))])


def test_softmax_and_identity_and_dropout() -> None:
    nodes = [
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"]),
        helper.make_node("Softmax", ["d"], ["y"], axis=1),
    ]
    check(make_model(nodes, {"x": ["N", 5, 3, 4]}, {"y": 4}), [feed((2, 5, 3, 4))])
    old = one_node("Softmax", ["N", 5, 1, 1], opset=11, axis=1)
    check(old, [feed((3, 5, 1, 1))])


def test_constants_fold_into_arguments() -> None:
    """A Constant node, a Cast and a Concat computing a Resize's scales; a Mul of constants."""
    nodes = [
        helper.make_node(
            "Constant", [], ["one"], value=numpy_helper.from_array(np.ones(2, np.float64))
        ),
        helper.make_node("Constant", [], ["two"], value_floats=[2.0, 3.0]),
        helper.make_node("Cast", ["one"], ["one32"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["one32", "two"], ["scales"], axis=0),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Mul", ["k", "k"], ["k2"]),
        helper.make_node("Add", ["r", "k2"], ["y"]),
    ]
    model = make_model(nodes, {"x": ["N", 2, 3, 3]}, {"y": 4}, {"k": np.float32(1.5)})
    source = check(model, [feed((1, 2, 3, 3))])
    assert "upscale(x, [2, 3]" in source and "+ 2.25" in source


# ---- small CNNs ----------------------------------------------------------------------------------


def conv_node(
    x: str,
    y: str,
    name: str,
    inits: dict[str, Any],
    cin: int,
    cout: int,
    k: int = 3,
    group: int = 1,
    **attrs: Any,
) -> Any:
    inits[f"{name}.weight"] = rand(cout, cin // group, k, k, scale=0.3)
    inits[f"{name}.bias"] = rand(cout, scale=0.1)
    pads = [k // 2] * 4
    return helper.make_node(
        "Conv",
        [x, f"{name}.weight", f"{name}.bias"],
        [y],
        name=name,
        pads=pads,
        group=group,
        **attrs,
    )


def bn_node(x: str, y: str, name: str, inits: dict[str, Any], c: int) -> Any:
    inits.update(
        {
            f"{name}.weight": rand(c) + 1,
            f"{name}.bias": rand(c),
            f"{name}.running_mean": rand(c),
            f"{name}.running_var": np.abs(rand(c)) + 0.5,
        }
    )
    roles = ("weight", "bias", "running_mean", "running_var")
    return helper.make_node(
        "BatchNormalization", [x, *(f"{name}.{r}" for r in roles)], [y], name=name
    )


def test_resnet_block_with_batch_norm_and_skip() -> None:
    inits: dict[str, Any] = {}
    nodes = [
        conv_node("x", "c1", "layer1.0.conv1", inits, 8, 8),
        bn_node("c1", "b1", "layer1.0.bn1", inits, 8),
        helper.make_node("Relu", ["b1"], ["r1"], name="/layer1/layer1.0/relu/Relu"),
        conv_node("r1", "c2", "layer1.0.conv2", inits, 8, 8),
        bn_node("c2", "b2", "layer1.0.bn2", inits, 8),
        helper.make_node("Add", ["b2", "x"], ["s"], name="/layer1/layer1.0/Add"),
        helper.make_node("Relu", ["s"], ["y"], name="/layer1/layer1.0/relu_1/Relu"),
    ]
    model = make_model(nodes, {"x": ["batch", 8, "height", "width"]}, {"y": 4}, inits)
    source = check(model, [feed((2, 8, 6, 7)), feed((1, 8, 9, 4))])
    assert 'name="layer1.0.conv1"' in source and "input x: f32[batch, 8, height, width]" in source
    assert ": [batch, 8, height, width]" in source


def test_mobilenet_block() -> None:
    inits: dict[str, Any] = {}
    six = {"lo": np.float32(0), "hi": np.float32(6)}
    inits.update(six)
    nodes = [
        conv_node("x", "e", "expand", inits, 4, 12, k=1),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"]),
        conv_node("e6", "d", "dw", inits, 12, 12, group=12, strides=[2, 2]),
        helper.make_node("HardSwish", ["d"], ["dh"]),
        conv_node("dh", "y", "project", inits, 12, 6, k=1),
    ]
    model = make_model(nodes, {"x": ["N", 4, "H", "W"]}, {"y": 4}, inits)
    source = check(model, [feed((2, 4, 8, 8)), feed((1, 4, 7, 5))])
    assert "depthwise2d(" in source and "relu6(" in source


def test_fcn_with_conv_transpose_and_resize() -> None:
    inits: dict[str, Any] = {
        "up.weight": rand(6, 3, 4, 4, scale=0.3),
        "scales": np.array([1, 1, 2, 2], np.float32),
    }
    nodes = [
        conv_node("x", "c", "enc", inits, 3, 6, strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node(
            "ConvTranspose", ["r", "up.weight"], ["u"], name="up", strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Resize", ["r", "", "scales"], ["z"], mode="linear"),
        conv_node("z", "z3", "side", inits, 6, 3, k=1),
        helper.make_node("Add", ["u", "z3"], ["y"]),
    ]
    model = make_model(nodes, {"x": ["N", 3, "H", "W"]}, {"y": 4}, inits)
    check(model, [feed((1, 3, 8, 8)), feed((2, 3, 12, 6))])


# ---- models exported from PyTorch ----------------------------------------------------------------


def torch_model(
    module: Any, shape: tuple[int, ...], dynamic: dict[int, str], opset: int = 17
) -> onnx.ModelProto:
    import io

    import torch

    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        torch.randn(*shape),
        buffer,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        opset_version=opset,
        dynamic_axes={"x": dynamic, "y": dynamic},
    )
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_small_unet() -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1)
            )
            self.down = nn.MaxPool2d(2)
            self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.PReLU(8), nn.ELU())
            self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e = self.enc(x)
            m = self.up(self.mid(self.down(e)))
            u = nn.functional.interpolate(m, scale_factor=1.0, mode="nearest")
            return torch.softmax(self.head(torch.cat([e, u], dim=1)), dim=1)

    net = Net()
    with torch.no_grad():
        net.enc[1].running_mean.uniform_(-1, 1)
        net.enc[1].running_var.uniform_(0.5, 2)
    model = torch_model(net, (1, 3, 8, 8), {0: "batch", 2: "height", 3: "width"})
    source = check(model, [feed((2, 3, 8, 8)), feed((1, 3, 6, 10))])
    assert "input x: f32[batch, 3, height, width]" in source


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_upsampling_and_activations() -> None:
    import torch
    from torch import nn

    torch.manual_seed(1)
    module = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.Hardswish(),
        nn.Upsample(scale_factor=2, mode="bilinear"),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.SiLU(),
        nn.Hardsigmoid(),
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
        nn.PixelShuffle(2),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Tanh(),
    )
    model = torch_model(module, (1, 2, 8, 8), {0: "N", 2: "H", 3: "W"})
    check(model, [feed((2, 2, 8, 8)), feed((1, 2, 6, 12))])


# ---- the command line, files, refusals -----------------------------------------------------------


def test_cli_import_writes_conv_and_weights_that_run(tmp_path: Any) -> None:
    from convdsl import cli

    inits: dict[str, Any] = {}
    nodes = [
        conv_node("input", "c", "features.0", inits, 3, 4),
        bn_node("c", "output", "features.1", inits, 4),
    ]
    model = make_model(nodes, {"input": ["N", 3, 6, 6]}, {"output": 4}, inits)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    conv, npz = tmp_path / "net.conv", tmp_path / "net.npz"
    assert cli.main(["import", str(path), "-o", str(conv), "--weights", str(npz)]) == 0
    assert cli.main(["run", str(conv), "--weights", str(npz), "--backend", "numpy"]) == 0
    assert cli.main(["import", str(path), "-o", str(conv), "--weights", str(npz)]) == 2
    assert cli.main(["import", str(path), "-o", str(conv), "--weights", str(npz), "--force"]) == 0
    x = rand(2, 3, 6, 6)
    net = convdsl.compile_file(conv, weights=npz, backend="numpy")
    expected = expected_outputs(model, {"input": x})["output"]
    np.testing.assert_allclose(net(input_1=x)["output_1"], expected, rtol=1e-4, atol=1e-5)


def test_compile_onnx_from_a_path(tmp_path: Any) -> None:
    model = one_node("Relu", ["N", 2, 3])
    onnx.save(model, tmp_path / "m.onnx")
    net = compile_onnx(tmp_path / "m.onnx", backend="numpy")
    x = rand(1, 2, 3)
    np.testing.assert_array_equal(net(x=x)["y"], np.maximum(x, 0))


def refusal(model: Any) -> str:
    with pytest.raises(convdsl.ConvdslError) as info:
        import_onnx(model)
    return str(info.value)


REFUSALS = {
    "unsupported_op": (
        one_node("LpNormalization", ["N", 2, 3, 3]),
        "node 'n' (LpNormalization): this op type is not supported",
    ),
    "resize_mode": (
        one_node(
            "Resize",
            ["N", 2, 3, 3],
            {"s": np.array([1, 1, 2, 2], np.float32)},
            ["", "s"],
            coordinate_transformation_mode="tf_crop_and_resize",
        ),
        "node 'n' (Resize): attribute 'coordinate_transformation_mode' = "
        "'tf_crop_and_resize': convdsl's upscale has",
    ),
    "antialias": (
        one_node(
            "Resize",
            ["N", 2, 4, 4],
            {"s": np.array([1, 1, 0.5, 0.5], np.float32)},
            ["", "s"],
            opset=18,
            mode="linear",
            antialias=1,
        ),
        "node 'n' (Resize): attribute 'antialias' = 1: only 0 is supported",
    ),
    "avg_dilation": (
        one_node("AveragePool", ["N", 2, 6, 6], opset=19, kernel_shape=[2, 2], dilations=[2, 2]),
        "node 'n' (AveragePool): attribute 'dilations' = [2, 2]: "
        "convdsl's average pool has no dilation",
    ),
    "softmax_axis": (one_node("Softmax", ["N", 2, 3, 3]), "node 'n' (Softmax): attribute 'axis'"),
    "pad_wrap": (
        one_node(
            "Pad",
            ["N", 2, 3, 3],
            {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)},
            ["p"],
            opset=19,
            mode="wrap",
        ),
        "node 'n' (Pad): attribute 'mode' = 'wrap'",
    ),
    "constant_map": (
        make_model(
            [helper.make_node("Add", ["x", "c"], ["y"], name="n")],
            {"x": ["N", 2, 3, 3]},
            {"y": 4},
            {"c": rand(1, 1, 3, 3)},
        ),
        "node 'n' (Add): input 1 is a constant of shape [1, 1, 3, 3]",
    ),
    "flatten_axis": (
        make_model(
            [helper.make_node("Flatten", ["x"], ["y"], name="n", axis=2)],
            {"x": ["N", 2, 3, 3]},
            {"y": 2},
        ),
        "node 'n' (Flatten): attribute 'axis' = 2: convdsl's flatten keeps the batch axis",
    ),
    "dynamic_weight": (
        make_model(
            [helper.make_node("Conv", ["x", "w"], ["y"], name="n")],
            {"x": ["N", 2, 3, 3], "w": [2, 2, 1, 1]},
            {"y": 4},
        ),
        "node 'n' (Conv): input 'W' is computed by the graph",
    ),
    "custom_domain": (
        make_model(
            [helper.make_node("Relu", ["x"], ["y"], name="n", domain="com.example")],
            {"x": ["N", 2, 3]},
            {"y": 3},
        ),
        "not a valid ONNX model",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_node_op_and_attribute(case: str) -> None:
    model, message = REFUSALS[case]
    assert message in refusal(model)


def test_bad_files(tmp_path: Any) -> None:
    truncated = tmp_path / "t.onnx"
    data = one_node("Relu", ["N", 2, 3]).SerializeToString()
    truncated.write_bytes(data[: len(data) // 2])
    assert "not an ONNX model" in refusal(truncated)
    assert "no such file" in refusal(tmp_path / "missing.onnx")
    huge = one_node("Conv", ["N", 2, 3, 3], {"w": rand(1, 2, 1, 1)}, ["w"])
    huge.graph.initializer[0].dims[:] = [2**30, 2**30, 1, 1]
    assert "too small for the declared shape" in refusal(huge)  # onnx's checker
    lying = one_node("Conv", ["N", 2, 3, 3], {"w": rand(1, 2, 1, 1)}, ["w"])
    lying.graph.initializer[0].dims[:] = [4, 2, 1, 1]
    assert "too small for the declared shape" in refusal(lying)


def test_external_data_is_read_only_inside_the_model_directory(tmp_path: Any) -> None:
    model = one_node("Conv", ["N", 2, 3, 3], {"w": rand(4, 2, 1, 1)}, ["w"])
    onnx.save(
        model,
        tmp_path / "m.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    check_external = import_onnx(tmp_path / "m.onnx")
    assert check_external.weights["n.weight"].shape == (4, 2, 1, 1)
    (tmp_path / "m.data").unlink()
    assert "external data file 'm.data' does not exist" in refusal(tmp_path / "m.onnx")
    escaping = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for entry in escaping.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../secret.data"
    onnx.save(escaping, tmp_path / "e.onnx")
    assert "outside the model's directory" in refusal(tmp_path / "e.onnx")


def test_cli_refusal_exits_2_without_a_partial_file(tmp_path: Any, capsys: Any) -> None:
    from convdsl import cli

    path = tmp_path / "m.onnx"
    onnx.save(one_node("LpNormalization", ["N", 2, 3, 3]), path)
    assert cli.main(["import", str(path), "-o", str(tmp_path / "net.conv")]) == 2
    assert "(LpNormalization): this op type is not supported" in capsys.readouterr().err
    assert not list(tmp_path.glob("net*")) and len(list(tmp_path.iterdir())) == 1


def test_symbolic_network_checks(tmp_path: Any, capsys: Any) -> None:
    from convdsl import cli

    model = one_node("MaxPool", ["N", 3, "H", "W"], kernel_shape=[2, 2], strides=[2, 2])
    source, _ = import_onnx(model)
    assert ": [N, 3, H//2, W//2]" in source
    assert convdsl.compile_string(source, backend="numpy").sizes == ["H", "W"]
    onnx.save(model, tmp_path / "m.onnx")
    assert cli.main(["import", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.conv")]) == 0
    assert not (tmp_path / "m.npz").exists()  # no parameters: no weights file
    capsys.readouterr()
    assert cli.main(["check", str(tmp_path / "m.conv")]) == 0
    assert "outputs: y: f32[N,3,H//2,W//2]" in capsys.readouterr().out


# ---- the documentation ---------------------------------------------------------------------------


def test_docs_examples_run_and_show_real_output(tmp_path: Any, monkeypatch: Any) -> None:
    """docs/onnx_import.md: its python block runs, and the text shown for it is the import."""
    from pathlib import Path

    from test_docs import code_blocks

    blocks = code_blocks(Path(__file__).resolve().parents[1] / "docs" / "onnx_import.md")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {"__name__": "__docs__"}
    (python,) = [b for b in blocks if b.lang == "python"]
    exec(compile(python.text, python.where, "exec"), scope)
    shown = [b.text for b in blocks if b.lang == "text" and b.text.startswith("# Imported")]
    assert shown == [scope["source"]]
