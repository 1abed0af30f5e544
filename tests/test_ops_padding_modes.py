"""Padding variants: ``padding=same_lower`` (ONNX ``auto_pad=SAME_LOWER``) for convolutions,
depthwise convolutions and pools against onnxruntime and against PyTorch with the explicit
asymmetric padding; transposed ``padding=same`` with ``output_padding`` (Keras
``Conv2DTranspose``) against PyTorch with the equivalent crop; both on the llvm backend
against the interpreter; and the refusals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch.nn.functional as F
from conftest import assert_close, call, compile_and_run, input_decl, per_axis, randn, tt
from onnx import TensorProto, helper, numpy_helper
from test_diagnostics import Golden, compile_error
from test_llvm_backend import compile_both, run_native
from test_ops_transpose import reference as transpose_reference

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


# ---- onnxruntime: one-node models --------------------------------------------------------


def run_onnx(
    op: str, x: np.ndarray, initializers: dict[str, np.ndarray], **attrs: Any
) -> np.ndarray:
    """``op`` of ``x`` (and the initializers, in order) in onnxruntime, opset 18."""
    names = ["X", *initializers]
    node = helper.make_node(op, names, ["Y"], **attrs)
    dtype = TensorProto.DOUBLE if x.dtype == np.float64 else TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info("X", dtype, list(x.shape))],
        [helper.make_tensor_value_info("Y", dtype, [None] * x.ndim)],
        [numpy_helper.from_array(array, name) for name, array in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"X": x})[0])


def onnx_same_lower(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """ONNX Conv ``auto_pad=SAME_LOWER`` for one axis, from the operator spec: output
    ``ceil(n / s)``, the total padding split with the extra element at the beginning."""
    total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
    return total - total // 2, total // 2


def onnx_padding(sizes, kernel, stride, dilation) -> dict[str, Any]:
    """``auto_pad=SAME_LOWER``, or where onnxruntime refuses it the spec's pads written out:
    with dilation ("Dilation not supported for AutoPadType::SAME_LOWER") and, in pools, where
    the window is shorter than the stride's overhang (it computes a negative padding there
    instead of 0: "padding values must be non-negative")."""
    overhang = any(
        (math.ceil(n / s) - 1) * s + k < n for n, k, s in zip(sizes, kernel, stride, strict=True)
    )
    if all(d == 1 for d in dilation) and not overhang:
        return {"auto_pad": "SAME_LOWER"}
    pads = [onnx_same_lower(*axis) for axis in zip(sizes, kernel, stride, dilation, strict=True)]
    return {"pads": [before for before, _ in pads] + [after for _, after in pads]}


# ---- same_lower: convolutions ----------------------------------------------------------------

CONV_CASES = [
    # (shape, out_channels (None: depthwise), kernel, stride, dilation)
    ((2, 3, 7, 8), 4, 3, 2, 1),
    ((1, 1, 6, 9), 3, (2, 4), (2, 3), 1),  # even kernels: odd totals on both axes
    ((1, 3, 5, 5), 17, 3, 3, 2),
    ((1, 17, 1, 4), 1, (1, 2), 1, 1),  # a 1-high input, stride 1 even kernel
    ((2, 3, 11), 2, 4, 2, 3),
    ((1, 2, 4, 5, 6), 3, (2, 3, 2), (1, 2, 3), (2, 1, 1)),
    ((2, 3, 8, 7), None, 4, 2, 1),
    ((1, 4, 9), None, 2, 3, 2),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_same_lower_conv_matches_onnxruntime_and_torch(case) -> None:
    shape, out_channels, kernel, stride, dilation = case
    rank, rng = len(shape) - 2, np.random.default_rng(1)
    depthwise = out_channels is None
    op = f"depthwise{rank}d" if depthwise else f"conv{rank}d"
    args = (kernel,) if depthwise else (out_channels, kernel)
    src = (
        f"{input_decl('x', shape)}\n"
        f"output y = "
        f"{call(op, 'x', *args, stride=stride, dilation=dilation, padding='same_lower')}\n"
    )
    x = randn(rng, shape)
    out, net = compile_and_run(src, {"x": x})
    w, b = net.weights["y.weight"], net.weights["y.bias"]
    ks, ss, ds = (per_axis(v, rank) for v in (kernel, stride, dilation))
    groups = shape[1] if depthwise else 1
    want = run_onnx(
        "Conv",
        x,
        {"W": w, "B": b},
        kernel_shape=list(ks),
        strides=list(ss),
        dilations=list(ds),
        group=groups,
        **onnx_padding(shape[2:], ks, ss, ds),
    )
    assert_close(out["y"], want)
    assert out["y"].shape[2:] == tuple(math.ceil(n / s) for n, s in zip(shape[2:], ss, strict=True))
    # PyTorch with the spec's pads written out (F.pad takes the last axis first).
    pads = [onnx_same_lower(n, k, s, d) for n, k, s, d in zip(shape[2:], ks, ss, ds, strict=True)]
    padded = F.pad(tt(x), [v for pair in reversed(pads) for v in pair])
    ref = TORCH_CONV[rank](padded, tt(w), tt(b), ss, 0, ds, groups)
    assert_close(out["y"], ref)


# ---- same_lower: pools -----------------------------------------------------------------------

POOL_CASES = [
    # (shape, kernel, stride, dilation)
    ((2, 3, 7, 8), 2, 2, 1),
    ((1, 1, 5, 6), (3, 2), (2, 3), 1),
    ((1, 17, 9, 4), 4, 3, 1),
    ((1, 3, 1, 5), (1, 2), 1, 1),
    ((2, 2, 10), 3, 2, 2),
    ((1, 3, 4, 5, 3), 2, (1, 2, 2), 1),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_same_lower_pools_match_onnxruntime(case, kind: str) -> None:
    shape, kernel, stride, dilation = case
    rank, rng = len(shape) - 2, np.random.default_rng(2)
    kw: dict[str, Any] = {"stride": stride, "padding": "same_lower"}
    if kind == "max":
        kw["dilation"] = dilation
    else:
        dilation = 1  # avg_pool has none (nor has ONNX AveragePool before opset 19)
    src = f"{input_decl('x', shape)}\noutput y = {call(f'{kind}_pool{rank}d', 'x', kernel, **kw)}\n"
    x = randn(rng, shape)
    out, _ = compile_and_run(src, {"x": x})
    ks, ss, ds = (per_axis(v, rank) for v in (kernel, stride, dilation))
    attrs = {"kernel_shape": list(ks), "strides": list(ss), **onnx_padding(shape[2:], ks, ss, ds)}
    if kind == "max":
        attrs["dilations"] = list(ds)
    else:
        attrs["count_include_pad"] = 0  # convdsl's default, include_pad=false
    want = run_onnx("MaxPool" if kind == "max" else "AveragePool", x, {}, **attrs)
    assert_close(out["y"], want)
    if kind == "max":  # PyTorch, the padding written out as -inf
        pads = [onnx_same_lower(*a) for a in zip(shape[2:], ks, ss, ds, strict=True)]
        padded = F.pad(tt(x), [v for pair in reversed(pads) for v in pair], value=-math.inf)
        assert_close(out["y"], TORCH_MAX[rank](padded, ks, ss, 0, ds))


def test_same_lower_differs_from_same_only_where_the_total_is_odd() -> None:
    """n=6, k=4, s=1: total 3; same pads (1, 2), same_lower (2, 1); k=3: total 2, both (1, 1)."""
    src = """
input x: f32[N, 1, 6]
output a = conv1d(x, 1, kernel=4, padding=same)
output b = conv1d(x, 1, kernel=4, padding=same_lower)
output c = conv1d(x, 1, kernel=3, padding=same_lower)
"""
    _, net = compile_and_run(src, {"x": np.zeros((1, 1, 6), np.float32)})
    pads = {node.name: node.attrs["pads"] for node in net.graph.nodes}
    assert pads == {"a": ((1, 2),), "b": ((2, 1),), "c": ((1, 1),)}


# ---- Keras transposed same with output_padding -----------------------------------------------


def keras_transpose_same(n: int, k: int, s: int, d: int, op: int) -> tuple[int, int, int]:
    """(output length, crop before, crop after or minus the extension) of Keras
    ``Conv2DTranspose(padding="same", output_padding=op)`` on one axis.

    The length is Keras' ``conv_utils.deconv_output_length`` with ``output_padding`` given:
    ``(n - 1)*s + ek - 2*(ek // 2) + op`` (``ek`` the dilated kernel). TensorFlow computes the
    layer as the gradient of a ``same`` convolution over an input of that length, whose
    padding before is ``total // 2`` with ``total = max((n - 1)*s + ek - length, 0)``, so output
    ``i`` is position ``i + before`` of the uncropped transposed convolution.
    """
    ek = k + (k - 1) * (d - 1)
    length = (n - 1) * s + ek - 2 * (ek // 2) + op
    full = (n - 1) * s + ek
    before = max(full - length, 0) // 2
    return length, before, full - before - length


TRANSPOSE_CASES = [
    # (shape, out_channels, kernel, stride, dilation, output_padding)
    ((1, 3, 5), 2, 3, 2, 1, 1),
    ((2, 2, 4), 3, 4, 2, 1, 1),
    ((1, 1, 6), 1, 2, 3, 1, 2),  # kernel < stride
    ((1, 3, 5), 2, 1, 2, 1, 1),  # kernel 1 < stride: the tail holds only the bias
    ((1, 2, 4), 2, 3, 2, 2, 1),  # dilation
    ((1, 17, 1), 3, 2, 2, 1, 1),  # size 1
    ((1, 2, 7), 3, 5, 3, 1, 0),  # output_padding=0 given: (n-1)*s + 1, not n*s
    ((2, 3, 3, 4), 4, (3, 2), (3, 2), (2, 1), (2, 1)),
    ((1, 2, 2, 3, 2), 2, (2, 3, 1), (2, 1, 3), 1, (1, 0, 2)),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_transpose_same_with_output_padding_matches_keras_via_torch(case) -> None:
    shape, out_channels, kernel, stride, dilation, output_padding = case
    rank, rng = len(shape) - 2, np.random.default_rng(3)
    op = f"conv_transpose{rank}d"
    text = call(
        op,
        "x",
        out_channels,
        kernel,
        stride=stride,
        dilation=dilation,
        padding="same",
        output_padding=output_padding,
    )
    src = f"{input_decl('x', shape)}\noutput y = {text}\n"
    x = randn(rng, shape)
    out, net = compile_and_run(src, {"x": x})
    axes = [
        keras_transpose_same(n, k, s, d, p)
        for n, k, s, d, p in zip(
            shape[2:],
            *(per_axis(v, rank) for v in (kernel, stride, dilation, output_padding)),
            strict=True,
        )
    ]
    assert out["y"].shape == (shape[0], out_channels, *(length for length, _, _ in axes))
    pads = tuple((before, max(after, 0)) for _, before, after in axes)
    extension = tuple(max(-after, 0) for _, _, after in axes)
    ref = transpose_reference(
        x,
        net.weights["y.weight"],
        net.weights["y.bias"],
        per_axis(stride, rank),
        per_axis(dilation, rank),
        pads,
        extension,
        1,
    )
    assert_close(out["y"], ref)


def test_transpose_same_without_output_padding_is_still_n_times_s() -> None:
    src = (
        "input x: f32[N, 2, 5]\n"
        "output y = conv_transpose1d(x, 2, kernel=4, stride=3, padding=same)\n"
    )
    _, net = compile_and_run(src, {"x": np.zeros((1, 2, 5), np.float32)})
    assert net.outputs["y"].shape == ("N", 2, 15)


# ---- the llvm backend ------------------------------------------------------------------------

LLVM_NET = """
input x: {dtype}[N, 3, 9, 10]
input s: {dtype}[N, 17, 7]
a = conv2d(x, 5, kernel=4, stride=2, dilation=[1, 2], padding=same_lower, activation=relu)
b = depthwise2d(x, kernel=2, stride=3, padding=same_lower)
c = max_pool2d(x, 4, stride=3, padding=same_lower)
d = avg_pool2d(x, [2, 3], stride=2, padding=same_lower)
e = conv_transpose2d(a, 4, kernel=3, stride=2, padding=same, output_padding=1)
f = conv_transpose1d(s, 3, kernel=2, stride=3, dilation=2, padding=same, output_padding=2)
g = conv1d(s, 2, kernel=2, padding=same_lower)
output a
output b
output c
output d
output e
output f
output g
"""


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_padding_modes_on_llvm_match_the_interpreter(dtype: str) -> None:
    net, native = compile_both(LLVM_NET.format(dtype=dtype))
    rtol, atol = (1e-4, 1e-5) if dtype == "f32" else (1e-10, 1e-12)
    for batch in (1, 3):
        inputs = net.random_inputs(0, batch)
        want, got = net(**inputs), run_native(net, native, inputs)
        for name, expected in want.items():
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(got[name], expected, rtol, atol * scale, err_msg=name)


# ---- refusals --------------------------------------------------------------------------------

GOLDENS = [
    Golden(
        "same_lower_transposed",
        """
        input x: f32[N, 3, 8, 8]
        output y = conv_transpose2d(x, 4, kernel=3, stride=2, padding=same_lower)
        """,
        (
            "net.conv:2:63: error: conv_transpose2d: padding=same_lower is not defined for "
            "transposed convolutions",
            "   2 | output y = conv_transpose2d(x, 4, kernel=3, stride=2, padding=same_lower)",
            "     |                                                               ^~~~~~~~~~",
            "  hint: padding=same is Keras' Conv2DTranspose; explicit [before, after] pairs "
            "crop the output unevenly",
        ),
    ),
    Golden(
        "same_output_padding_stride",
        """
        input x: f32[N, 3, 8]
        output y = conv_transpose1d(x, 4, kernel=3, stride=2, padding=same, output_padding=2)
        """,
        (
            "net.conv:2:84: error: conv_transpose1d: output_padding 2 must be smaller than the "
            "stride 2 with padding=same (as in Keras)",
            "   2 | output y = conv_transpose1d(x, 4, kernel=3, stride=2, padding=same, "
            "output_padding=2)",
            "     |                                                                            "
            "        ^",
        ),
    ),
    Golden(
        "same_lower_typo",
        """
        input x: f32[N, 3, 8, 8]
        output y = max_pool2d(x, 2, padding=same_lowr)
        """,
        (
            "net.conv:2:37: error: max_pool2d: padding: expected valid, same, same_lower, "
            "causal, an integer, a list per axis, or a list of [before, after] pairs; found "
            "'same_lowr'",
            "   2 | output y = max_pool2d(x, 2, padding=same_lowr)",
            "     |                                     ^~~~~~~~~",
            "  hint: did you mean 'same_lower'?",
        ),
    ),
]


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda g: g.name)
def test_padding_mode_diagnostics(golden: Golden) -> None:
    assert str(compile_error(golden.source)) == "\n".join(golden.expected)
