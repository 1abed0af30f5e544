"""The llvm backend against the NumPy interpreter (the reference), op by op and fused.

Every supported op runs on adversarial shapes (odd sizes, stride > kernel, dilation with stride,
1-wide dims, groups != channels, channel counts 1/3/5/17, batch 1 and 3) and must agree within
rtol 1e-4. Also: the threading runtime really uses two threads and gives the same bits as one,
unsupported ops are compile-time errors naming the op and its line, and target detection.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import itertools
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import example_sizes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llvmlite import ir

import convdsl
from convdsl.api import backend_graph
from convdsl.backends.llvm import codegen, executable, lower, object_cache
from convdsl.backends.llvm.conv_schedule import (
    CONV_OPS,
    blocks_first,
    conv_schedule,
    flat_plane,
    flat_pointwise,
    row_segments,
)
from convdsl.backends.llvm.entry import Worker
from convdsl.backends.llvm.executable import LlvmExecutable, aligned_empty
from convdsl.backends.llvm.jit import Jit
from convdsl.backends.llvm.loops import F32P, I64, VOID, for_range, gep, loop_nest
from convdsl.backends.llvm.parallel import WORKER_TYPE, call_parallel, work_chunks
from convdsl.backends.llvm.target import host_target, lanes_for
from convdsl.diagnostics import ConvdslError, InternalError
from convdsl.ir.derived import materialize
from convdsl.ir.graph import Graph

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def compile_both(
    src: str, threads: int = 2, name: str = "t.conv"
) -> tuple[convdsl.Network, LlvmExecutable]:
    net = convdsl.compile_string(src, name, backend="numpy")
    return net, LlvmExecutable(net.graph, materialize(net.graph, net.weights), threads=threads)


def run_native(net: convdsl.Network, native: LlvmExecutable, inputs: dict) -> dict[str, np.ndarray]:
    ids = {net.graph.values[v].name: v for v in net.graph.inputs}
    results = native.run({ids[name]: array for name, array in inputs.items()})
    return {name: results[v] for name, v in net.graph.outputs}


def assert_matches(
    src: str, batches: tuple[int, ...] = (1, 3), seed: int = 0, scale: float = 1.0
) -> None:
    net, native = compile_both(src)
    for batch in batches:
        inputs = {k: v * np.float32(scale) for k, v in net.random_inputs(seed, batch).items()}
        expected = net(**inputs)
        got = run_native(net, native, inputs)
        for name, want in expected.items():
            assert got[name].shape == want.shape, name
            scale = float(np.abs(want).max()) or 1.0
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


# ---- ops, one family per case ---------------------------------------------------------------

ELEMENTWISE = """
input x: f32[N, 5, 7, 9]
input y: f32[N, 5, 7, 9]
output a = relu(x)
output b = relu6(x)
output c = leaky_relu(x, alpha=0.2)
output d = sigmoid(x)
output e = tanh(x) + tanh(x * y)
output f = silu(x)
output g = hard_sigmoid(x)
output h = hard_swish(x)
output i = x + y
output j = x * y
output k = batch_norm(x, eps=0.001)
output l = elu(x, alpha=0.7)
output m = gelu(x) + gelu(y, approximate=tanh)
"""

CONVS = {
    "conv2d_same": "input x: f32[N, 3, 11, 13]\noutput y = conv2d(x, 17, kernel=3, padding=same)",
    # One position: a matrix-vector product along the output channels (blocks of 8, 7 and 3
    # channels; 1027 and 6 input channels, not multiples of the 4 accumulators), with fused
    # epilogues; and a grouped one, which keeps the general tile.
    "one_position": (
        "input x: f32[N, 1027, 1, 1]\n"
        "input s: f32[N, 6, 1]\n"
        "output a = conv2d(x, 1000, kernel=1)\n"
        "output b = relu6(conv2d(x, 21, kernel=1, activation=relu) + conv2d(x, 21, kernel=1))\n"
        "output c = conv1d(s, 3, kernel=1, activation=sigmoid, bias=false)\n"
        "output d = conv1d(s, 4, kernel=1, groups=2)"
    ),
    "conv2d_stride_gt_kernel": (
        "input x: f32[N, 5, 13, 17]\noutput y = conv2d(x, 4, kernel=2, stride=3, bias=false)"
    ),
    "conv2d_dilation_stride": (
        "input x: f32[N, 3, 19, 23]\n"
        "output y = conv2d(x, 5, kernel=[3, 2], stride=[2, 3], dilation=[3, 2], "
        "padding=[[2, 1], [0, 3]], activation=relu6)"
    ),
    "conv2d_groups": (
        "input x: f32[N, 6, 9, 10]\n"
        "output y = conv2d(x, 9, kernel=3, groups=3, padding=same, activation=silu)"
    ),
    "conv2d_1wide": (
        "input x: f32[N, 1, 1, 17]\noutput y = conv2d(x, 3, kernel=[1, 5], padding=same)"
    ),
    "conv2d_1x1_wide": (
        "input x: f32[N, 17, 5, 33]\noutput y = conv2d(x, 8, kernel=1, activation=tanh)"
    ),
    "conv1d_causal_dilated": (
        "input x: f32[N, 3, 37]\noutput y = conv1d(x, 5, kernel=3, dilation=4, padding=causal)"
    ),
    "conv1d_stride": (
        "input x: f32[N, 4, 29]\n"
        "output y = conv1d(x, 4, kernel=5, stride=3, padding=2, groups=2, activation=sigmoid)"
    ),
    "conv3d": (
        "input x: f32[N, 3, 5, 6, 9]\n"
        "output y = conv3d(x, 5, kernel=3, stride=[1, 2, 1], dilation=[2, 1, 1], padding=same)"
    ),
    "depthwise2d": (
        "input x: f32[N, 5, 12, 11]\n"
        "output y = depthwise2d(x, kernel=3, multiplier=2, stride=2, padding=same, "
        "activation=relu6)"
    ),
    "depthwise1d_dilated": (
        "input x: f32[N, 17, 40]\n"
        "output y = depthwise1d(x, kernel=3, dilation=5, padding=same, bias=false)"
    ),
    "conv2d_stride2_interior": (
        "input x: f32[N, 5, 7, 50]\noutput y = conv2d(x, 6, kernel=3, stride=2, padding=same)"
    ),
    "conv2d_wide_interior": (
        "input x: f32[N, 3, 4, 41]\n"
        "output y = conv2d(x, 4, kernel=[2, 5], dilation=[1, 3], padding=same)"
    ),
    "depthwise3d": (
        "input x: f32[N, 3, 4, 5, 10]\noutput y = depthwise3d(x, kernel=[1, 3, 3], padding=1)"
    ),
    # Register tiles (emit_conv_tile): rows of several tiles, a narrower tile and a partial
    # vector; padding wider than a vector; 12- and 8-channel blocks on narrow rows.
    "tile_rows_mixed": (
        "input x: f32[N, 5, 3, 61]\n"
        "output y = conv2d(x, 8, kernel=3, padding=same, activation=relu)"
    ),
    "tile_padding_wider_than_vector": (
        "input x: f32[N, 3, 2, 30]\noutput y = conv2d(x, 4, kernel=[1, 19], padding=same)"
    ),
    "tile_stride3_right_edge": (
        "input x: f32[N, 3, 4, 83]\n"
        "output y = conv2d(x, 6, kernel=[2, 4], stride=3, padding=[[1, 0], [2, 3]])"
    ),
    "tile_channel_blocks_12_8": (
        "input x: f32[N, 7, 7, 7]\n"
        "output a = conv2d(x, 24, kernel=3, padding=same)\n"
        "output b = conv2d(x, 16, kernel=3, stride=2, dilation=2, padding=same, groups=1)"
    ),
    # Stride > 1 on the last axis reads phase rows (relayout, emit_relayout): padding wider than
    # the stride, output rows one wide, stride > kernel with dilation, chunked channels with a
    # fused skip-add, two strided convs of different sizes, one reading the other's output.
    "split_pad_wider_than_stride": (
        "input x: f32[N, 3, 5, 29]\n"
        "output y = conv2d(x, 4, kernel=[3, 7], stride=[1, 2], padding=[[1, 1], [5, 2]])"
    ),
    "split_one_wide_output": (
        "input x: f32[N, 5, 4, 3]\noutput y = conv2d(x, 3, kernel=3, stride=4, padding=1)"
    ),
    "split_stride_gt_kernel_dilated": (
        "input x: f32[N, 3, 3, 71]\n"
        "output y = conv2d(x, 5, kernel=[1, 2], stride=[1, 5], dilation=[1, 3])"
    ),
    "split_chunked_fused_add": (
        "input x: f32[N, 40, 6, 26]\ninput s: f32[N, 8, 3, 13]\n"
        "output y = relu(conv2d(x, 8, kernel=3, stride=2, padding=same) + s)"
    ),
    "split_two_strided_convs": (
        "input x: f32[N, 3, 9, 33]\n"
        "a = conv2d(x, 5, kernel=3, stride=2, padding=same, activation=relu)\n"
        "output b = depthwise2d(a, kernel=3, multiplier=2, stride=3, padding=same)"
    ),
    "split_1d_3d": (
        "input x: f32[N, 4, 100]\ninput v: f32[N, 2, 3, 4, 19]\n"
        "output a = conv1d(x, 3, kernel=5, stride=4, padding=causal)\n"
        "output b = conv3d(v, 3, kernel=3, stride=2, padding=same)"
    ),
    # Pointwise convs over narrow rows walk the flattened plane (flat_pointwise): with a fused
    # epilogue and skip-add, grouped, 3-D, chunked input channels, a tail of one lane.
    "flat_pointwise_fused": (
        "input x: f32[N, 5, 6, 6]\ninput s: f32[N, 12, 6, 6]\n"
        "output y = relu6(batch_norm(conv2d(x, 12, kernel=1, bias=false))) + s"
    ),
    "flat_pointwise_grouped_3d": (
        "input x: f32[N, 6, 3, 4, 5]\noutput y = conv3d(x, 9, kernel=1, groups=3)"
    ),
    "flat_pointwise_chunked_tail": (
        "input x: f32[N, 100, 7, 7]\noutput y = conv2d(x, 8, kernel=1, activation=tanh)"
    ),
    # Tiles spanning whole groups (depthwise, small groups): each channel reads its own group.
    "tile_spans_groups_depthwise": (
        "input x: f32[N, 6, 9, 21]\n"
        "output y = depthwise2d(x, kernel=3, multiplier=2, padding=same, activation=relu)"
    ),
    "tile_spans_groups_grouped": (
        "input x: f32[N, 8, 5, 30]\ninput s: f32[N, 12, 5, 30]\n"
        "output y = conv2d(x, 12, kernel=[3, 5], groups=4, padding=same) + s"
    ),
    # Input channels in chunks (conv_schedule): partial sums wait in the output, the last
    # chunk adds bias and activation; a fused skip-add is read only after the last chunk.
    "chunked_channels_fused_add": (
        "input x: f32[N, 40, 5, 13]\ninput s: f32[N, 6, 5, 13]\n"
        "output y = relu(conv2d(x, 6, kernel=3, padding=same, activation=tanh) + s)"
    ),
    "chunked_channels_3d": (
        "input x: f32[N, 17, 3, 4, 11]\noutput y = conv3d(x, 4, kernel=3, padding=same)"
    ),
    "chunked_channels_pointwise_grouped": (
        "input x: f32[N, 202, 3, 9]\noutput y = conv2d(x, 4, kernel=1, groups=2)"
    ),
    "tile_rows_outside_input": (
        "input x: f32[N, 2, 3, 9]\noutput y = conv2d(x, 3, kernel=3, dilation=3, padding=4)"
    ),
}

POOLS = """
input x: f32[N, 3, 11, 13]
output a = max_pool2d(x, 3, stride=2, padding=1)
output b = avg_pool2d(x, [2, 3], stride=[3, 2], padding=1, ceil_mode=true)
output c = avg_pool2d(x, 3, stride=2, padding=1, include_pad=true, ceil_mode=true)
output d = max_pool2d(x, 2, stride=3, dilation=2, ceil_mode=true)
output e = global_avg_pool(x)
output f = global_max_pool(x)
output g = max_pool2d(global_avg_pool(x), 1) + global_max_pool(x)
"""

WIDE_POOLS = """
input x: f32[N, 3, 6, 61]
output a = max_pool2d(x, 2)
output b = max_pool2d(x, 3, stride=1, padding=1)
output c = avg_pool2d(x, 3, stride=2, padding=1)
output d = max_pool2d(x, 3, stride=2, dilation=2)
output e = global_max_pool(x)
"""


def test_pools_over_wide_rows_propagate_nan_like_the_interpreter() -> None:
    """Rows wide enough for plain loads inside and masked ones at the ends; a NaN in a window
    makes its max NaN, as in NumPy and PyTorch (``llvm.maxnum`` would drop it)."""
    net, native = compile_both(WIDE_POOLS)
    x = net.random_inputs(seed=4, batch=2)["x"]
    x[0, 1, 2, 30] = x[1, 2, 5, 60] = x[1, 0, 0, 0] = np.nan
    expected, got = net(x=x), run_native(net, native, {"x": x})
    for name, want in expected.items():
        assert np.isnan(want).any(), name
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


POOLS_1D_3D = """
input x: f32[N, 5, 19]
input v: f32[N, 3, 5, 6, 7]
output a = max_pool1d(x, 4, stride=3, padding=2, ceil_mode=true)
output b = avg_pool1d(x, 3, stride=1, padding=1)
output c = max_pool3d(v, 2)
output d = avg_pool3d(v, 3, stride=2, padding=1, ceil_mode=true)
output e = global_max_pool(v)
"""

DATA = """
input x: f32[N, 4, 5, 7]
output a = upscale(x, 2)
output b = upscale(x, 3, mode=bilinear)
output c = upscale(x, 2, mode=bilinear, align_corners=true)
output d = crop(x, size=[3, 4], offset=center)
output e = pad(x, [[1, 2], [3, 1]], value=1.5)
output f = pad(x, [[2, 1], [3, 2]], mode=reflect)
output g = pad(x, [[2, 1], [3, 2]], mode=replicate)
output h = concat(x, relu(x), x)
output i = pixel_shuffle(x, 2)
output j = pixel_shuffle(x, 2, order=dcr)
output k = softmax(x)
"""

# Softmax kernels (emit_data.softmax_kernel): work items of 8 vectors along the last axis, the
# last one partial or not; a 1-D signal longer than one item; a row shorter than a vector.
SOFTMAXES = """
input x: f32[N, 5, 3, 150]
input s: f32[N, 7, 200]
input u: f32[N, 3, 128]
input v: f32[N, 3, 2, 2, 3]
output a = softmax(x)
output b = softmax(s)
output c = softmax(u)
output d = softmax(v)
"""

# Upscale rows (emit_data.row_patterns): vectors on both edges, the interior, tails; factors
# 2, 4 and 8 (one pattern per vector), 3 (gathered), outer factors different from the last.
UPSCALE_ROWS = """
input x: f32[N, 3, 5, 29]
input t: f32[N, 2, 13]
input p: f32[N, 2, 3, 7]
input q: f32[N, 3, 2, 1]
input r: f32[N, 2, 4]
input v: f32[N, 2, 3, 4, 12]
input s: f32[N, 3, 10, 58]
output a = upscale(x, 2, mode=bilinear)
output b = upscale(t, 4, mode=linear)
output c = upscale(p, 8, mode=bilinear)
output d = upscale(x, 2)
output e = upscale(p, [3, 4])
output f = upscale(q, 2, mode=bilinear)
output g = upscale(r, 2, mode=linear)
output h = upscale(v, [2, 3, 2], mode=trilinear)
output i = upscale(p, [3, 2], mode=bilinear)
output j = relu(upscale(x, 2, mode=bilinear) + s)
"""

DATA_1D_3D = """
input x: f32[N, 3, 11]
input v: f32[N, 2, 3, 4, 5]
output a = upscale(x, 3, mode=linear)
output b = upscale(v, 2, mode=trilinear)
output c = upscale(v, [1, 2, 3])
output d = pad(x, [[4, 0]], mode=reflect)
output e = crop(v, size=[2, 2, 3], offset=[1, 0, 2])
output f = concat(v, v)
"""


@pytest.mark.parametrize("scale", [0.01, 1.0, 8.0])
def test_elementwise_matches_interpreter(scale: float) -> None:
    """Scales reach tanh near 0 (relative precision), the relu6 and hard_* kinks, saturation."""
    assert_matches(ELEMENTWISE, scale=scale)


def test_nan_stays_nan_through_every_activation_as_in_the_interpreter() -> None:
    """relu(NaN) is NaN in NumPy and PyTorch; an ordered compare-and-select made it 0."""
    net, native = compile_both(ELEMENTWISE)
    inputs = net.random_inputs(seed=5, batch=2)
    inputs["x"][0, 1, 2, 3] = inputs["x"][1, 4, 6, 8] = inputs["y"][1, 0, 0, 0] = np.nan
    expected, got = net(**inputs), run_native(net, native, inputs)
    for name, want in expected.items():
        assert np.isnan(want).any(), name
        np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(want), err_msg=name)
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)


TRANSPOSED = {
    "conv_transpose2d": (
        "input x: f32[N, 4, 5, 7]\n"
        "output a = conv_transpose2d(x, 6, kernel=4, stride=2, padding=1)\n"
        "output b = conv_transpose2d(x, 3, kernel=3, stride=[3, 2], dilation=[2, 1], "
        "padding=[[1, 2], [0, 1]], output_padding=[1, 1], activation=relu)\n"
        "output c = conv_transpose2d(x, 6, kernel=2, groups=2, bias=false)\n"
        "output d = conv_transpose2d(x, 4, kernel=3, stride=2, padding=same)"
    ),
    "conv_transpose1d_3d": (
        "input x: f32[N, 3, 17]\n"
        "input v: f32[N, 2, 3, 4, 5]\n"
        "output a = conv_transpose1d(x, 5, kernel=3, stride=4, dilation=2, output_padding=2)\n"
        "output b = conv_transpose3d(v, 4, kernel=2, stride=2)\n"
        "output c = conv_transpose1d(x, 6, kernel=5, padding=2, groups=3)"
    ),
}


@pytest.mark.parametrize(
    "src",
    [
        *CONVS.values(),
        *TRANSPOSED.values(),
        POOLS,
        POOLS_1D_3D,
        DATA,
        DATA_1D_3D,
        UPSCALE_ROWS,
        SOFTMAXES,
    ],
    ids=[
        *CONVS,
        *TRANSPOSED,
        "pools",
        "pools_1d_3d",
        "data",
        "data_1d_3d",
        "upscale_rows",
        "softmaxes",
    ],
)
def test_op_matches_interpreter(src: str) -> None:
    assert_matches(src)


# ---- fused kernels --------------------------------------------------------------------------

FUSED = {
    "conv_bn_relu": (
        "input x: f32[N, 3, 9, 10]\n"
        "output y = relu(batch_norm(conv2d(x, 5, kernel=3, padding=same, bias=false)))"
    ),
    "conv_skip_add": (
        "input x: f32[N, 4, 9, 11]\n"
        "a = conv2d(x, 4, kernel=3, padding=same)\n"
        "output y = relu(conv2d(a, 4, kernel=3, padding=same) + a)"
    ),
    "upscale_add": (
        "input x: f32[N, 3, 8, 10]\n"
        "d = conv2d(x, 3, kernel=3, stride=2, padding=same, activation=relu)\n"
        "output y = upscale(d, 2, mode=bilinear) + x"
    ),
    "gated": (
        "input x: f32[N, 4, 33]\n"
        "output y = tanh(conv1d(x, 4, kernel=2, padding=causal)) * "
        "sigmoid(conv1d(x, 4, kernel=2, padding=causal))"
    ),
    "softmax_epilogue": "input x: f32[N, 5, 3, 9]\noutput y = softmax(x) * x",
    "pool_epilogue": (
        "input x: f32[N, 3, 8, 9]\noutput y = relu(max_pool2d(x, 2)) * avg_pool2d(x, 2)"
    ),
    "conv_then_pixel_shuffle": (
        "input x: f32[N, 3, 5, 6]\n"
        "output y = pixel_shuffle(conv2d(x, 12, kernel=3, padding=same), 2)"
    ),
    # (a crop of a transposed conv folds into its padding instead: fold-crop)
    "conv_then_crop": (
        "input x: f32[N, 3, 6, 7]\n"
        "u = conv2d(x, 2, kernel=2, padding=3, bias=false)\n"
        "output y = crop(u, size=[7, 9], offset=center)"
    ),
    "concat_slices": (
        "input x: f32[N, 3, 7, 9]\n"
        "a = conv2d(x, 5, kernel=3, padding=same, activation=relu)\n"
        "b = conv2d(x, 3, kernel=1)\n"
        "output y = conv2d(concat(a, b), 2, kernel=1)"
    ),
}


@pytest.mark.parametrize("src", FUSED.values(), ids=FUSED.keys())
def test_fused_kernels_match_interpreter(src: str) -> None:
    net = convdsl.compile_string(src, backend="numpy")
    if "concat" not in src:
        assert any(node.is_fused for node in net.graph.nodes), "the pattern must actually fuse"
    assert_matches(src)


@pytest.mark.parametrize("example", ["quickstart", "espcn", "unet3d"])
def test_examples_match_interpreter(example: str) -> None:
    assert_matches((EXAMPLES / f"{example}.conv").read_text(), batches=(1,))


# ---- other vector widths ---------------------------------------------------------------------

OTHER_WIDTHS = {
    "elementwise": ELEMENTWISE,
    **CONVS,
    **TRANSPOSED,
    "pools": POOLS,
    "pools_1d_3d": POOLS_1D_3D,
    "data": DATA,
    "data_1d_3d": DATA_1D_3D,
    "upscale_rows": UPSCALE_ROWS,
    "softmaxes": SOFTMAXES,
    **FUSED,
}


@pytest.mark.parametrize("lanes", [4, 16])
@pytest.mark.parametrize("src", OTHER_WIDTHS.values(), ids=OTHER_WIDTHS)
def test_code_for_other_vector_widths_matches_interpreter(
    src: str, lanes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code an AVX-512 CPU gets (16 lanes) and the generic one SSE and NEON get (4), run
    here through LLVM's legalization of those vector types: the same results."""
    other = dataclasses.replace(host_target(), lanes=lanes)
    monkeypatch.setattr(executable, "host_target", lambda: other)
    net, native = compile_both(src)
    rows = [v.type.spatial[-1] for v in net.graph.values.values() if v.type and v.type.spatial]
    if max(rows) >= lanes:  # the generated code has that width
        assert f"<{lanes} x float>" in native.llvm_ir
    inputs = net.random_inputs(seed=3, batch=2)
    got = run_native(net, native, inputs)
    for name, want in net(**inputs).items():
        scale = float(np.abs(want).max()) or 1.0
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


# ---- threads --------------------------------------------------------------------------------


def test_two_threads_give_the_same_bits_as_one() -> None:
    src = (EXAMPLES / "quickstart.conv").read_text()
    net, one = compile_both(src, threads=1)
    two = LlvmExecutable(net.graph, materialize(net.graph, net.weights), threads=2)
    inputs = net.random_inputs(seed=3, batch=3)
    a, b = run_native(net, one, inputs), run_native(net, two, inputs)
    assert np.array_equal(a["out"], b["out"])
    assert "convdsl_parallel" in two.llvm_ir and "convdsl_parallel" not in one.llvm_ir


def chunk_owners(items: int, parts: int, threads: int, calls: int) -> list[np.ndarray]:
    """Run a worker that records, for each of ``items`` work items, which thread took it
    (``gettid``), ``calls`` times on ``threads`` threads, its items cut into ``parts``."""
    module = ir.Module()
    worker = ir.Function(module, WORKER_TYPE, "worker")
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    words = b.bitcast(worker.args[0], I64.as_pointer())  # [counter, out*]
    out = b.inttoptr(b.load(b.gep(words, [ir.Constant(I64, 1)])), I64.as_pointer())
    gettid = ir.Function(module, ir.FunctionType(ir.IntType(32), []), "gettid")
    total, count, side = ir.Constant(I64, items), ir.Constant(I64, parts), worker.args[1]
    with work_chunks(b, total, words, count, side) as (lo, hi), for_range(b, lo, hi) as i:
        b.store(b.sext(b.call(gettid, []), I64), b.gep(out, [i]))
    b.ret_void()
    entry = ir.Function(module, ir.FunctionType(VOID, [worker.args[0].type]), "entry")
    eb = ir.IRBuilder(entry.append_basic_block("entry"))
    call_parallel(eb, worker, entry.args[0], ir.Constant(ir.IntType(32), threads))
    eb.ret_void()
    jit = Jit.of([module])
    run = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(jit.address("entry"))
    found = []
    for _ in range(calls):
        owners = np.full(items, -1, np.int64)
        table = np.array([0, owners.ctypes.data], np.int64)
        run(table.ctypes.data)
        found.append(owners)
    jit.stop_threads()
    return found


def test_the_pool_runs_every_item_once_and_its_threads_share_them() -> None:
    """Every item is taken by exactly one thread, call after call; over many calls both the
    caller and the pool's thread take some (a job does not wait for a late thread, so any
    single call may be done by one)."""
    calls = chunk_owners(items=10_001, parts=8, threads=2, calls=200)
    assert all((owners > 0).all() for owners in calls)
    assert len({int(tid) for owners in calls for tid in np.unique(owners)}) == 2
    (alone,) = chunk_owners(items=37, parts=1, threads=1, calls=1)
    assert len(np.unique(alone)) == 1 and alone[0] == threading.get_native_id()


def test_off_linux_the_backend_runs_on_one_thread_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(executable.sys, "platform", "darwin")
    src = "input x: f32[N, 2, 9]\noutput y = conv1d(x, 3, kernel=3)\n"
    with pytest.warns(UserWarning, match="threads need Linux"):
        net = convdsl.compile_string(src, threads=2)
    assert net._executable.threads == 1
    assert "convdsl_parallel" not in net._executable.llvm_ir


def test_the_pool_threads_end_with_the_network() -> None:
    before = threading.active_count(), len(os.listdir("/proc/self/task"))
    src = "input x: f32[N, 8, 64, 64]\noutput y = conv2d(x, 8, kernel=3, padding=same)\n"
    net = convdsl.compile_string(src, threads=4)
    net(net.random_inputs(batch=2))
    assert len(os.listdir("/proc/self/task")) == before[1] + 3  # the caller is the fourth
    del net
    gc.collect()
    assert len(os.listdir("/proc/self/task")) == before[1]


# ---- loops and target -----------------------------------------------------------------------


def test_loop_nest_visits_every_index_in_order() -> None:
    module = ir.Module()
    fn = ir.Function(module, ir.FunctionType(VOID, [F32P]), "fill")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    with loop_nest(b, [3, 4]) as (i, j):
        flat = b.add(b.mul(i, ir.Constant(I64, 4)), j)
        b.store(b.sitofp(flat, ir.FloatType()), gep(b, fn.args[0], flat))
    with for_range(b, 12, 20, 3) as k:
        b.store(ir.Constant(ir.FloatType(), -1.0), gep(b, fn.args[0], k))
    b.ret_void()
    jit = Jit.of([module])
    out = np.zeros(20, np.float32)
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(jit.address("fill"))(out.ctypes.data)
    expected = np.concatenate([np.arange(12), [-1, 0, 0, -1, 0, 0, -1, 0]])
    assert out.tolist() == expected.tolist()


def test_lanes_follow_cpu_features() -> None:
    assert lanes_for("+avx,+avx2,+fma,+avx512f") == 16
    assert lanes_for("+avx,+avx2,-avx512f") == 8
    assert lanes_for("+sse4.2,-avx") == 4
    assert lanes_for("+neon,+fp-armv8") == 4
    target = host_target()
    assert target.lanes == lanes_for(target.features) and target.cpu


def test_arena_is_aligned_and_inputs_need_not_be() -> None:
    assert aligned_empty(1000).ctypes.data % 64 == 0
    net, native = compile_both("input x: f32[N, 3, 20]\noutput y = conv1d(x, 2, kernel=3)")
    raw = np.zeros(3 * 20 + 1, np.float32)[1:].reshape(1, 3, 20)  # 4 bytes past an allocation
    raw[...] = np.random.default_rng(0).standard_normal(raw.shape)
    np.testing.assert_allclose(run_native(net, native, {"x": raw})["y"], net(x=raw)["y"], rtol=1e-5)


# ---- errors ---------------------------------------------------------------------------------


def test_unlowerable_op_is_a_compile_error_naming_op_and_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONVDSL_CACHE_DIR", "off")  # lower for real, not from a record
    monkeypatch.delitem(lower.EMITTERS, "conv_transpose2d")
    src = (
        "input x: f32[N, 3, 8, 8]\na = relu(x)\n"
        "output y = conv_transpose2d(a, 4, kernel=2, stride=2)\n"
    )
    with pytest.raises(ConvdslError) as info:
        compile_both(src, name="up.conv")
    assert str(info.value).splitlines()[0] == (
        "up.conv:3:12: error: llvm backend cannot lower conv_transpose2d yet"
    )


def test_f64_tensors_run_in_double_and_agree_with_the_interpreter() -> None:
    """(Once a compile error.) Every op family in f64: ``test_llvm_f64``."""
    src = "input x: f64[N, 3, 8]\noutput y = tanh(conv1d(x, 3, kernel=3, padding=same)) + x\n"
    net, native = compile_both(src, name="d.conv")
    x = np.random.default_rng(0).standard_normal((2, 3, 8))
    got, want = run_native(net, native, {"x": x})["y"], net(x=x)["y"]
    assert got.dtype == want.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_emitter_crash_names_the_op_and_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(k, node, point):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("boom")

    monkeypatch.setenv("CONVDSL_CACHE_DIR", "off")  # lower for real, not from a record
    monkeypatch.setitem(lower.EMITTERS, "relu", broken)
    with pytest.raises(InternalError, match=r"relu 'y'.*ZeroDivisionError: boom") as info:
        compile_both("input x: f32[N, 2, 4]\noutput y = relu(x)\n", name="c.conv")
    assert "c.conv:2" in str(info.value)


@st.composite
def conv_configs(draw: st.DrawFn) -> str:
    rank = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2, 3]))
    channels = groups * draw(st.integers(1, 3))
    out = groups * draw(st.integers(1, 5))
    kernel, stride, dilation, sizes = draw(windows(rank, max_dilation=3, size=12, longer=24))
    padding = draw(st.sampled_from(["valid", "same", "explicit"]))
    if padding == "explicit":
        pads = [[draw(st.integers(0, 2)), draw(st.integers(0, 2))] for _ in range(rank)]
        padding = str(pads)
    op = draw(st.sampled_from(["conv", "conv_transpose"]))
    activation = draw(st.sampled_from(["none", "relu", "hard_swish"]))
    shape = ", ".join(str(s) for s in sizes)
    return (
        f"input x: f32[N, {channels}, {shape}]\n"
        f"output y = {op}{rank}d(x, {out}, kernel={kernel}, stride={stride}, dilation={dilation}, "
        f"padding={padding if op == 'conv' else 'valid'}, groups={groups}, activation={activation})"
    )


@st.composite
def windows(
    draw: st.DrawFn, rank: int, max_dilation: int, size: int, longer: int
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Kernel, stride and dilation per axis, and input sizes that fit the dilated kernel (up to
    ``size`` more positions, the last axis up to ``longer`` more again)."""
    kernel = [draw(st.integers(1, 4)) for _ in range(rank)]
    stride = [draw(st.integers(1, 3)) for _ in range(rank)]
    dilation = [draw(st.integers(1, max_dilation)) for _ in range(rank)]
    sizes = [
        draw(st.integers(1, size)) + (k - 1) * d for k, d in zip(kernel, dilation, strict=True)
    ]
    sizes[-1] += draw(st.integers(0, longer))
    return kernel, stride, dilation, sizes


@st.composite
def depthwise_configs(draw: st.DrawFn) -> str:
    """Depthwise convs: channel counts that tiles spanning 4 groups do not divide, multipliers,
    strides (phase rows) and dilations on 1-3 axes."""
    rank = draw(st.sampled_from([1, 2, 3]))
    channels, multiplier = draw(st.integers(1, 13)), draw(st.integers(1, 3))
    kernel, stride, dilation, sizes = draw(windows(rank, max_dilation=2, size=6, longer=30))
    padding = draw(st.sampled_from(["valid", "same", "1"]))
    shape = ", ".join(str(s) for s in sizes)
    return (
        f"input x: f32[N, {channels}, {shape}]\n"
        f"output y = depthwise{rank}d(x, kernel={kernel}, multiplier={multiplier}, "
        f"stride={stride}, dilation={dilation}, padding={padding}, activation=relu6)"
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(depthwise_configs())
def test_random_depthwise_convs_match_interpreter(src: str) -> None:
    assert_matches(src)


@given(st.integers(1, 300), st.integers(1, 4), st.integers(-3, 40), st.integers(0, 300))
def test_row_segments_cover_the_row_with_even_tiles(
    width: int, vectors: int, lo: int, hi: int
) -> None:
    lanes = 8
    tiles = []  # (start, vectors, masked, valid) of every tile, in order
    for segment in row_segments(width, lo, hi, vectors, lanes):
        size = len(segment.masked)
        for start in range(segment.start, segment.stop, size * lanes):
            tiles.append((start, size, segment.masked, segment.valid))
    count = -(-width // lanes)
    assert [t[0] for t in tiles] == list(
        itertools.accumulate([0] + [t[1] * lanes for t in tiles[:-1]])
    )
    assert sum(t[1] for t in tiles) == count
    sizes = [t[1] for t in tiles]
    # as few tiles as the width allows, as even as possible (no needless one-vector tile)
    assert len(tiles) == -(-count // vectors) and max(sizes) - min(sizes) <= 1
    for index, (start, size, masked, valid) in enumerate(tiles):
        end = start + size * lanes
        assert (valid is not None) == (index == len(tiles) - 1 and end > width)
        if valid is not None:
            assert valid == width - (end - lanes) and masked[-1]
        for v in range(size - (valid is not None)):
            assert masked[v] == (not lo <= start + v * lanes < hi)


def test_pointwise_convs_flatten_only_narrow_rows() -> None:
    def flattened(shape: str, kernel: int = 1) -> bool:
        src = f"input x: f32[N, 8, {shape}]\noutput y = conv2d(x, 8, kernel={kernel})"
        graph = convdsl.compile_string(src, backend="numpy").graph
        return flat_pointwise(graph, graph.nodes[0], lanes=8) is not None

    assert flattened("14, 14") and flattened("7, 7") and flattened("28, 28")
    assert not flattened("56, 56") and not flattened("5, 32") and not flattened("7, 7", 3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_random_convs_match_interpreter(src: str) -> None:
    assert_matches(src, batches=(2,))


REST_BLOCKS = {
    # rows of 4 vectors and 32 channels: 6 x 2 tiles and a last block of 2
    "conv2d 32 ch": "input x: f32[N, 48, 11, 31]\n"
    "output y = conv2d(x, 32, kernel=3, padding=same, activation=tanh)",
    # 17 channels, rows of 2 vectors (the second partial), 5 x 5 taps, chunked input channels
    "conv2d 17 ch": "input x: f32[N, 40, 9, 15]\n"
    "output y = relu(conv2d(x, 17, kernel=5, padding=2) + conv2d(x, 17, kernel=1))",
    # rows of one vector: 12 x 1 tiles and a last block of 8, batch norm and a skip fused
    "conv3d 20 ch": "input x: f32[N, 20, 2, 5, 7]\n"
    "output y = relu(batch_norm(conv3d(x, 20, kernel=3, padding=same, bias=false)) + x)",
    "conv1d": "input x: f32[N, 7, 9, 32]\noutput y = conv2d(x, 10, kernel=[1, 3], dilation=2)",
    "conv3d": "input x: f32[N, 5, 6, 7, 30]\n"
    "output y = conv3d(x, 14, kernel=3, padding=same, activation=sigmoid)",
    "strided": "input x: f32[N, 6, 20, 61]\noutput y = conv2d(x, 9, kernel=3, stride=2)",
    # rows of 7 vectors: 4 x 3 and 6 x 2 tiles; dilation 4 makes taps 0 and 2 share vectors
    "per-tile blocks": "input x: f32[N, 9, 10, 56]\n"
    "output y = conv2d(x, 16, kernel=3, dilation=4, padding=same, activation=relu)",
}


@pytest.mark.parametrize("src", REST_BLOCKS.values(), ids=REST_BLOCKS)
def test_tiles_with_a_narrower_last_block_match_interpreter(src: str) -> None:
    """Blocks that do not divide the channel count (``ConvSchedule.rest``): the last block's
    weights, partial sums, epilogue and stores."""
    graph = backend_graph(convdsl.compile_string(src, backend="numpy").graph, "llvm")
    anchor = next(p for n in graph.nodes for p in (n.parts or (n,))[:1] if p.op in CONV_OPS)
    sizes = graph.type_of(anchor.output).spatial
    plan = conv_schedule(graph, anchor, sizes, lanes=8, threads=2)
    assert plan.rest > 0 or plan.tile_blocks(anchor.attrs["out_channels"], 2)[1] > 0
    assert flat_plane(graph, anchor, lanes=8) is None  # rows, not one flat plane
    assert_matches(src)


FLAT_PLANES = {
    # rows of one vector (7 of 8 lanes): 4 x 3 tiles over 49 positions, 17 channels
    "7x7": "input x: f32[N, 5, 7, 7]\n"
    "output y = conv2d(x, 17, kernel=3, padding=same, activation=relu)",
    # 28 wide (32 lanes for 28 per row), dilation 2, 3 input channels
    "28 wide dilated": "input x: f32[N, 3, 9, 28]\n"
    "output y = conv2d(x, 6, kernel=3, dilation=2, padding=same)",
    # uneven padding: rows lose two (valid on rows), columns padded 1 left and 3 right
    "3x5 uneven": "input x: f32[N, 4, 11, 14]\n"
    "output y = conv2d(x, 5, kernel=[3, 5], padding=[[0, 0], [1, 3]], activation=tanh)",
    # depthwise with a multiplier, and groups of 3 channels
    "depthwise": "input x: f32[N, 5, 13, 13]\n"
    "output y = depthwise2d(x, kernel=3, multiplier=2, padding=same)",
    "grouped": "input x: f32[N, 9, 10, 10]\n"
    "output y = conv2d(x, 6, kernel=3, groups=3, padding=same)",
    # one column; a plane of 6 positions, less than a vector
    "1 wide": "input x: f32[N, 4, 17, 1]\noutput y = conv2d(x, 3, kernel=[3, 1], padding=same)",
    "2x3": "input x: f32[N, 3, 2, 3]\noutput y = conv2d(x, 4, kernel=3, padding=same)",
    # input channels in three chunks, a skip fused after the conv
    "chunked + skip": "input x: f32[N, 70, 6, 6]\ninput z: f32[N, 5, 6, 6]\n"
    "output y = relu(conv2d(x, 5, kernel=3, padding=same) + z)",
}


@st.composite
def plane_convs(draw: st.DrawFn) -> str:
    """2-D convs of stride 1 whose output rows are as wide as their input rows, the kind
    ``flat_plane`` may walk flat: rows 1-40 wide, kernels up to 5 x 5 dilated up to 3, uneven
    padding, groups, input channels past one chunk."""
    kernel = [draw(st.integers(1, 5)), draw(st.integers(1, 5))]
    dilation = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    reach = [(k - 1) * d for k, d in zip(kernel, dilation, strict=True)]
    left = draw(st.integers(0, reach[1]))
    rows = [draw(st.integers(0, 2)), draw(st.integers(0, 2))]
    lowest = max(1, reach[0] - sum(rows) + 1)  # one output row at least
    height = draw(st.integers(lowest, max(lowest, 12)))
    width = draw(st.integers(1, 40))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    channels = groups * draw(st.integers(1, 24))
    out = groups * draw(st.integers(1, 7))
    activation = draw(st.sampled_from(["none", "relu", "tanh"]))
    pads = [rows, [left, reach[1] - left]]
    return (
        f"input x: f32[N, {channels}, {height}, {width}]\n"
        f"output y = conv2d(x, {out}, kernel={kernel}, dilation={dilation}, padding={pads}, "
        f"groups={groups}, activation={activation})"
    )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plane_convs())
def test_random_plane_convs_match_interpreter(src: str) -> None:
    assert_matches(src, batches=(2,))


@pytest.mark.parametrize("src", FLAT_PLANES.values(), ids=FLAT_PLANES)
def test_narrow_planes_walked_flat_match_interpreter(src: str) -> None:
    """2-D convs whose rows waste vector lanes walk their flattened plane (``flat_plane``),
    every load masked by its tap's row and column: borders, uneven padding, dilation, groups,
    a last partial vector and planes smaller than one vector."""
    graph = backend_graph(convdsl.compile_string(src, backend="numpy").graph, "llvm")
    anchor = next(p for n in graph.nodes for p in (n.parts or (n,))[:1] if p.op in CONV_OPS)
    assert flat_plane(graph, anchor, lanes=8) is not None
    assert_matches(src, batches=(1, 2))


@st.composite
def blocked_convs(draw: st.DrawFn) -> str:
    """Ungrouped convs with enough rows for whole-row items: channel counts that 12, 8, 6 or 4
    do not divide, input channels past one chunk, rows of 1 to 12 vectors."""
    rank = draw(st.sampled_from([1, 2, 3]))
    rows = [draw(st.integers(1, 4)) for _ in range(rank - 1)]
    rows[-1:] = [max(rows[-1:] or [1]) * 8] if rank > 1 else []
    width = draw(st.integers(1, 96))
    kernel = draw(st.sampled_from([1, 3]))
    shape = ", ".join(str(size) for size in (*rows, width))
    channels, out = draw(st.integers(1, 70)), draw(st.integers(1, 40))
    return (
        f"input x: f32[N, {channels}, {shape}]\n"
        f"output y = conv{rank}d(x, {out}, kernel={kernel}, padding=same, activation=relu6)"
    )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocked_convs())
def test_random_channel_blocks_match_interpreter(src: str) -> None:
    assert_matches(src, batches=(2,))


def test_wide_rows_walked_block_by_block_match_interpreter() -> None:
    """Rows whose chunk of input overflows L1 are walked block by block over the tiles
    (``blocks_first``): here with three chunks of input channels (14, 14, 12), 46 output
    channels in blocks of 4 and a narrower last block of 2, bias and relu."""
    src = (
        "input x: f32[N, 40, 9, 200]\n"
        "output y = conv2d(x, 46, kernel=3, padding=same, activation=relu)"
    )
    graph = backend_graph(convdsl.compile_string(src, backend="numpy").graph, "llvm")
    (node,) = graph.nodes
    plan = conv_schedule(graph, node, (9, 200), lanes=8, threads=2)
    assert blocks_first(graph, node, plan, flat=False) and (plan.block, plan.rest) == (4, 2)
    assert plan.chunk == 14
    assert_matches(src, batches=(2,))


# ---- transposed convolution split by output phase -------------------------------------------

PHASE_SPLIT = {
    "stride2_kernels_1_2_5": (
        "input x: f32[N, 3, 6, 7]\n"
        "output a = conv_transpose2d(x, 4, kernel=1, stride=2)\n"
        "output b = conv_transpose2d(x, 4, kernel=2, stride=2, activation=relu)\n"
        "output c = conv_transpose2d(x, 5, kernel=5, stride=2, padding=[[2, 0], [1, 3]])"
    ),
    "stride3_kernels_2_3_7": (
        "input x: f32[N, 2, 5, 9]\n"
        "output a = conv_transpose2d(x, 3, kernel=2, stride=3, output_padding=2)\n"
        "output b = conv_transpose2d(x, 3, kernel=3, stride=3, padding=1)\n"
        "output c = conv_transpose2d(x, 6, kernel=[7, 4], stride=[3, 2], groups=2)"
    ),
    "stride8_kernels_4_8_16": (
        "input x: f32[N, 3, 4, 5]\n"
        "output a = conv_transpose2d(x, 2, kernel=4, stride=8, bias=false)\n"
        "output b = conv_transpose2d(x, 7, kernel=8, stride=8)\n"
        "output c = conv_transpose2d(x, 21, kernel=16, stride=8, padding=[[4, 3], [0, 5]])"
    ),
    "dilation_with_stride": (
        "input x: f32[N, 4, 5, 6]\n"
        "output a = conv_transpose2d(x, 4, kernel=3, stride=2, dilation=2, output_padding=1)\n"
        "output b = conv_transpose2d(x, 6, kernel=[3, 4], stride=[3, 4], dilation=[2, 6], "
        "groups=2, padding=[[1, 2], [3, 0]])\n"
        "output c = conv_transpose2d(x, 2, kernel=5, stride=3, dilation=3, activation=tanh)"
    ),
    "rank_1_and_3": (
        "input x: f32[N, 4, 29]\ninput v: f32[N, 2, 3, 4, 5]\n"
        "output a = conv_transpose1d(x, 6, kernel=7, stride=3, padding=[[2, 5]], groups=2)\n"
        "output b = conv_transpose1d(x, 3, kernel=2, stride=8, output_padding=5)\n"
        "output c = conv_transpose3d(v, 4, kernel=[3, 2, 5], stride=[2, 3, 2], "
        "dilation=[1, 2, 1])\n"
        "output d = conv_transpose3d(v, 2, kernel=4, stride=2, padding=1, output_padding=1)"
    ),
    "stride1_contiguous_stores": (
        "input x: f32[N, 3, 5, 21]\n"
        "output a = conv_transpose2d(x, 5, kernel=3, padding=[[0, 2], [2, 1]], groups=1)"
    ),
}


@pytest.mark.parametrize("src", PHASE_SPLIT.values(), ids=PHASE_SPLIT)
def test_transposed_conv_phases_match_interpreter(src: str) -> None:
    assert_matches(src)


PHASE_EPILOGUES = {
    # FCN-8s's skip: x2 up, add the skip, partial last vectors (7 -> 14 of 8 lanes)
    "upscore_add": "input x: f32[N, 5, 7, 7]\ninput s: f32[N, 3, 14, 14]\n"
    "output y = conv_transpose2d(x, 3, kernel=4, stride=2, padding=1, bias=false) + s",
    # stride 3 with output_padding (positions no tap reaches), groups, then add and relu
    "stride3_groups_relu": "input x: f32[N, 4, 5, 6]\ninput s: f32[N, 6, 17, 20]\n"
    "output y = relu(conv_transpose2d(x, 6, kernel=3, stride=3, groups=2, output_padding=[2, "
    "2]) + s)",
    # 1-D with dilation and a gated product; 3-D as in the encoder-decoder N5
    "rank_1_gate": "input x: f32[N, 3, 13]\ninput g: f32[N, 2, 27]\n"
    "output y = conv_transpose1d(x, 2, kernel=3, stride=2, dilation=2, padding=1) * sigmoid(g)",
    "rank_3_add": "input v: f32[N, 6, 3, 4, 5]\ninput s: f32[N, 5, 6, 8, 10]\n"
    "output y = conv_transpose3d(v, 5, kernel=2, stride=2, activation=relu) + s",
}


@pytest.mark.parametrize("src", PHASE_EPILOGUES.values(), ids=PHASE_EPILOGUES)
def test_transposed_convs_with_fused_parts_split_by_phase_match_interpreter(src: str) -> None:
    """A transposed conv anchoring a fused kernel runs split by output phase, each output
    vector through the fused parts (``emit_transpose_phase.Store``), not lane by lane."""
    net = convdsl.compile_string(src, backend="numpy")
    lowered = lower.lower_graph(net.graph, host_target().lanes, threads=2)
    (worker,) = [w for w in lowered.workers if w.node.is_fused]
    assert any(kind == "param" and "@tpack" in str(key) for kind, key in worker.bindings)
    assert_matches(src, batches=(1, 2))


def test_a_concat_copies_only_the_inputs_not_in_their_slices() -> None:
    """A U-Net / N5 decoder step: the upsampled ``u`` (its crop folded into the transposed
    conv) is written straight into its slice of the concat, at the concat's batch stride;
    the skip ``s``, also read by the pool, is copied by the concat kernel."""
    src = (
        "input x: f32[N, 3, 6, 11]\n"
        "s = relu(conv2d(x, 4, kernel=3, padding=same))\n"
        "u = conv_transpose2d(max_pool2d(s, 2, ceil_mode=true), 5, kernel=2, stride=2)\n"
        "output y = conv2d(concat(crop(u, like=s), s), 3, kernel=3, padding=same)"
    )
    graph = convdsl.compile_string(src, backend="numpy").graph
    assert graph.memory is not None
    shares = {graph.values[v].name: b.shares for v, b in graph.memory.buffers.items()}
    assert shares["y.concat.crop"] is not None and shares["s"] is None
    lowered = lower.lower_graph(graph, host_target().lanes, threads=2)
    assert [w.node.op for w in lowered.workers].count("concat") == 1
    assert_matches(src, batches=(1, 3))


def test_upscore8_runs_phase_split_with_packed_weights() -> None:
    src = "input x: f32[N, 21, 28, 28]\noutput y = conv_transpose2d(x, 21, kernel=16, stride=8)"
    net = convdsl.compile_string(src, "u.conv", backend="numpy")
    lowered = lower.lower_graph(net.graph, host_target().lanes, threads=2)
    # stride 8: eight phase accumulators per output channel, so one channel per block
    assert lowered.packings == {"y.weight@tpack1": ("y.weight", 1)}
    assert_matches(src, batches=(1,))


def test_one_position_convs_are_matrix_vector_products() -> None:
    net = convdsl.compile_string(CONVS["one_position"], backend="numpy")
    lowered = lower.lower_graph(net.graph, host_target().lanes, threads=2)
    by_vector = {w.node.name for w in lowered.workers if "gemv" in _module_of(lowered, w)}
    assert by_vector == {"a", "b.add.lhs", "b.add.rhs", "c"}  # not the grouped d


def _module_of(lowered: lower.Lowered, worker: Worker) -> str:
    return next(str(m) for m in lowered.kernels if m.name == worker.name)


def test_costly_epilogues_are_looped_over_the_tile_and_agree() -> None:
    # Gated activations as in WaveNet, on rows with a partial last vector (37, 19), 5 and 7
    # output channels (blocks that do not divide), and 100 input channels (two chunks: the
    # epilogue runs only after the last).
    src = (
        "input x: f32[N, 100, 37]\n"
        "input v: f32[N, 3, 6, 19]\n"
        "f = conv1d(x, 5, kernel=2, dilation=4, padding=causal)\n"
        "g = conv1d(x, 5, kernel=2, dilation=4, padding=causal)\n"
        "output z = tanh(f) * sigmoid(g)\n"
        "output w = conv2d(v, 7, kernel=3, padding=same, activation=silu)"
    )
    net = convdsl.compile_string(src, "gated.conv", backend="numpy")
    lowered = lower.lower_graph(net.graph, host_target().lanes, threads=2)
    looped = [m.name for m in lowered.kernels if "epilogue" in str(m)]
    assert len(looped) == 3  # tanh, sigmoid * tanh, conv2d + silu
    assert_matches(src, batches=(1, 2))


def test_kernels_of_the_same_shape_share_one_function_with_their_own_addresses() -> None:
    src = (
        "input x: f32[N, 8, 12, 12]\n"
        "a = relu(conv2d(x, 8, kernel=3, padding=same))\n"
        "b = relu(conv2d(a, 8, kernel=3, padding=same))\n"
        "output y = relu(conv2d(b, 8, kernel=3, padding=same))"
    )
    net = convdsl.compile_string(src, "same.conv", backend="numpy")
    lowered = lower.lower_graph(net.graph, host_target().lanes, threads=2)
    labels = ["kernel0_a_conv2d", "kernel1_b_conv2d", "kernel2_y_conv2d"]
    assert [w.label for w in lowered.workers] == labels
    assert {w.name for w in lowered.workers} == {"kernel0_a_conv2d"}
    assert [m.name for m in lowered.kernels] == ["kernel0_a_conv2d"]
    assert_matches(src, batches=(1, 2))


@pytest.mark.parametrize("example", sorted(p.stem for p in EXAMPLES.glob("*.conv")))
def test_kernels_reused_by_signature_lower_as_if_built(
    example: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel found by its signature (``kernel_reuse``) instead of built changes nothing:
    the same modules, parameter table, packings and worker tables as building every one."""
    path = EXAMPLES / f"{example}.conv"
    graph = backend_graph(convdsl.compile_file(path, sizes=example_sizes(path)).graph, "llvm")
    reused = lower.lower_graph(graph, host_target().lanes, threads=2)
    monkeypatch.setattr(lower, "REUSE", False)
    built = lower.lower_graph(graph, host_target().lanes, threads=2)
    assert reused.workers == built.workers
    assert (reused.params, reused.packings) == (built.params, built.packings)
    assert [str(m) for m in reused.modules] == [str(m) for m in built.modules]


def test_a_reused_kernel_gets_its_own_values_and_parameters() -> None:
    """Three identical convs (and their packed weights), two with a fused skip: the second
    and third take the first's function without being built, each with its own table."""
    src = (
        "input x: f32[N, 6, 9, 13]\n"
        "a = relu(conv2d(x, 6, kernel=3, padding=same) + x)\n"
        "b = relu(conv2d(a, 6, kernel=3, padding=same) + a)\n"
        "output y = conv2d(b, 6, kernel=3, padding=same)"
    )
    graph = backend_graph(convdsl.compile_string(src, backend="numpy").graph, "llvm")
    lowered = lower.lower_graph(graph, host_target().lanes, threads=2)
    first, second, third = lowered.workers
    assert first.name == second.name != third.name and len(lowered.kernels) == 2
    for worker in (first, second):
        conv = worker.node.parts[0]
        params = {key for kind, key in worker.bindings if kind == "param"}
        (packed,) = params - {conv.params["bias"]}
        assert lowered.packings[packed][0] == conv.params["weight"]
        values = {key for kind, key in worker.bindings if kind == "value"}
        assert values == {*worker.node.inputs, worker.node.output}
    assert_matches(src, batches=(1, 2))


def test_convs_differing_only_in_dilation_share_one_function() -> None:
    """WaveNet's stack: the dilation and padding of the last axis are read at run time, and
    the border tiles found at run time, so dilations 2..32 are one kernel; dilation 1 keeps
    its own (constant offsets). Rows of 101 (interior tiles, borders of 1-4 tiles on either
    side, a partial last vector) and a 2-D conv too short for any interior tile must match
    the interpreter."""
    layers = "".join(
        f"h{d} = tanh(conv1d(h{d // 2}, 6, kernel=2, dilation={d}, padding=causal))\n"
        for d in (2, 4, 8, 16, 32)
    )
    src = (
        "input x: f32[N, 6, 101]\n"
        "input x2: f32[N, 3, 5, 11]\n"
        "h1 = tanh(conv1d(x, 6, kernel=2, padding=causal))\n"
        f"{layers}"
        "output y = h32\n"
        "output s5 = conv1d(x, 4, kernel=3, dilation=5, padding=same)\n"
        "output s17 = conv1d(x, 4, kernel=3, dilation=17, padding=same)\n"
        "output z = conv2d(x2, 5, kernel=3, dilation=[2, 7], padding=same)"
    )
    net = convdsl.compile_string(src, "dilated.conv", backend="numpy")
    lowered = lower.lower_graph(net.graph, host_target().lanes, threads=2)
    names = {w.node.name: w.name for w in lowered.workers}  # fused conv1d+tanh nodes
    stack = {names[f"h{d}.conv1d"] for d in (2, 4, 8, 16, 32)}
    assert len(stack) == 1 and names["h1.conv1d"] not in stack
    assert names["s5"] == names["s17"]  # borders on both sides: right ones found at run time
    assert len(lowered.kernels) == 4  # h1, the stack, s5 and s17, z
    assert_matches(src, batches=(1, 2))


def test_chunked_convs_differing_only_in_input_channels_share_one_function() -> None:
    """A 3x3 conv walks its input channels in chunks of at most 32: with two chunks or more
    the channel count is read at run time, so 64 and 95 channels (chunks of 32, the last of
    95 ragged: 31) are one kernel; 17 channels (one chunk) keep their own."""
    src = (
        "input x: f32[N, 64, 9, 11]\n"
        "input u: f32[N, 95, 9, 11]\n"
        "input v: f32[N, 17, 9, 11]\n"
        "output y = conv2d(x, 5, kernel=3, padding=same, activation=relu)\n"
        "output z = conv2d(u, 5, kernel=3, padding=same, activation=relu)\n"
        "output w = conv2d(v, 5, kernel=3, padding=same, activation=relu)"
    )
    net = convdsl.compile_string(src, "channels.conv", backend="numpy")
    lowered = lower.lower_graph(net.graph, host_target().lanes, threads=2)
    names = {w.node.name: w.name for w in lowered.workers}
    assert names["y"] == names["z"] != names["w"]
    assert len(lowered.kernels) == 2
    assert_matches(src, batches=(1, 2))


# ---- compiling on every core (codegen) --------------------------------------------------------

SEVERAL_KERNELS = (
    "input x: f32[N, 3, 17, 19]\n"
    "a = relu(conv2d(x, 5, kernel=3, padding=same))\n"
    "b = max_pool2d(a, 2)\n"
    "c = conv2d(b, 6, kernel=3, stride=2, dilation=1, padding=same)\n"
    "output y = upscale(c, 2, mode=bilinear)"
)


def _module_texts(src: str) -> list[str]:
    net = convdsl.compile_string(src, backend="numpy")
    target = host_target()
    modules = lower.lower_graph(net.graph, target.lanes, threads=2).modules
    for module in modules:
        module.triple = target.triple
    return [str(module) for module in modules]


def test_helper_processes_compile_the_same_code_as_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = host_target()
    texts = _module_texts(SEVERAL_KERNELS)
    machine = codegen.target_machine(target.triple, target.cpu, target.features)
    alone = [codegen.compile_object(text, machine) for text in texts]
    monkeypatch.setattr(codegen, "PARALLEL_LINES", 0)
    monkeypatch.setattr(codegen, "_cores", lambda: 3)  # two helpers, even on one core
    compiler = codegen.Compiler(target.triple, target.cpu, target.features)
    for text in texts:
        compiler.add(text)
    assert compiler.helpers is not None and len(compiler.helpers) == 2
    assert all(helper.indices for helper in compiler.helpers) and compiler.ours
    assert compiler.objects() == alone


def test_convolution_kernels_take_the_light_pipeline_and_compute_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Conv kernels are marked for LLVM's light pipeline (``codegen.TILE_PIPELINE``), the pool,
    upscale, relayout and entry modules are not; the code computes the same bits either way
    (no pass reassociates floating point without fast-math flags)."""
    texts = _module_texts(SEVERAL_KERNELS)
    modules = {text.split('"', 2)[1]: codegen.wants_light(text) for text in texts}
    assert modules == {
        "kernel0_a_conv2d": True,  # conv2d + relu
        "kernel1_b": False,  # max_pool2d
        "kernel2_b_phases2": False,  # relayout for the strided conv
        "kernel3_c": True,
        "kernel4_y": False,  # bilinear upscale
        "network": False,  # the entry
    }
    monkeypatch.setenv("CONVDSL_CACHE_DIR", "off")
    net = convdsl.compile_string(SEVERAL_KERNELS, backend="numpy")
    inputs = net.random_inputs(seed=1, batch=2)
    outputs = []
    for light in (True, False):
        monkeypatch.setattr(codegen, "LIGHT_TILES", light)
        native = LlvmExecutable(net.graph, materialize(net.graph, net.weights), threads=2)
        outputs.append(run_native(net, native, inputs)["y"])
    np.testing.assert_array_equal(*outputs)


def test_a_failing_helper_costs_time_not_the_result(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(codegen, "PARALLEL_LINES", 0)
    monkeypatch.setattr(codegen, "_cores", lambda: 2)
    monkeypatch.setattr(codegen.sys, "executable", "/bin/false")  # exits 1, reads nothing
    assert_matches(SEVERAL_KERNELS, batches=(2,))


def test_a_failed_lowering_leaves_no_helper_running(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVDSL_CACHE_DIR", "off")
    monkeypatch.setattr(codegen, "PARALLEL_LINES", 0)
    monkeypatch.setattr(codegen, "_cores", lambda: 2)
    started: list[codegen._Helper] = []
    real_start = codegen._Helper.start

    def start(header: str) -> codegen._Helper | None:
        helper = real_start(header)
        started.append(helper)  # type: ignore[arg-type]
        return helper

    def broken(k, node, point):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(codegen._Helper, "start", staticmethod(start))
    monkeypatch.setitem(lower.EMITTERS, "max_pool2d", broken)  # the second kernel fails
    with pytest.raises(InternalError, match="max_pool2d"):
        compile_both("input x: f32[N, 3, 8, 8]\noutput y = max_pool2d(relu(conv2d(x, 4, 3)), 2)")
    assert started and all(helper.process.poll() is not None for helper in started)


# ---- the compiled-code cache (object_cache) -------------------------------------------------

CACHED = (
    "input x: f32[N, 5, 9, 11]\noutput y = relu(conv2d(x, 6, kernel=3, stride=2, padding=same))"
)


def cached_network(cache: str, monkeypatch: pytest.MonkeyPatch) -> tuple[convdsl.Network, dict]:
    """``CACHED`` compiled with the code cache at ``cache``, and its materialized params."""
    monkeypatch.setenv("CONVDSL_CACHE_DIR", cache)
    net = convdsl.compile_string(CACHED, backend="numpy")
    return net, materialize(net.graph, net.weights)


def test_a_second_build_loads_the_cached_code_and_computes_the_same_bits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, params = cached_network(str(tmp_path), monkeypatch)
    first = LlvmExecutable(net.graph, params, threads=2, profile=True)
    assert first.jit.compiled == 3  # relayout kernel, conv kernel, entry
    assert len(list(tmp_path.glob("*.o"))) == 3  # one entry per module
    second = LlvmExecutable(net.graph, params, threads=2, profile=True)
    other_threads = LlvmExecutable(net.graph, params, threads=1)
    assert not first.jit.cached and second.jit.cached and not other_threads.jit.cached
    # Only the entry differs with one thread (it calls the kernels without the pool).
    assert other_threads.jit.compiled == 1 and len(list(tmp_path.glob("*.o"))) == 4
    x = net.random_inputs(seed=1, batch=3)["x"]
    (x_id,), ((_, y_id),) = net.graph.inputs, net.graph.outputs
    np.testing.assert_array_equal(second.run({x_id: x})[y_id], first.run({x_id: x})[y_id])
    np.testing.assert_allclose(second.run({x_id: x})[y_id], net(x=x)["y"], rtol=1e-4, atol=1e-5)
    assert all(ms > 0 for _, ms in second.kernel_profile())  # globals resolve in cached code


def test_a_damaged_cache_entry_is_a_miss_and_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, params = cached_network(str(tmp_path), monkeypatch)
    LlvmExecutable(net.graph, params, threads=2)
    entry = max(tmp_path.glob("*.o"), key=lambda path: path.stat().st_size)  # the conv's
    good = entry.read_bytes()
    for damaged in (good[: len(good) // 2], good[:32] + b"\0" * (len(good) - 32), b""):
        entry.write_bytes(damaged)
        rebuilt = LlvmExecutable(net.graph, params, threads=2)
        assert rebuilt.jit.compiled == 1 and entry.read_bytes() == good
        x = net.random_inputs(seed=2)["x"]
        (x_id,), ((_, y_id),) = net.graph.inputs, net.graph.outputs
        np.testing.assert_allclose(
            rebuilt.run({x_id: x})[y_id], net(x=x)["y"], rtol=1e-4, atol=1e-5
        )


def test_a_cached_build_needs_no_lowering_and_runs_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, params = cached_network(str(tmp_path), monkeypatch)
    first = LlvmExecutable(net.graph, params, threads=2, profile=True)
    assert len(list(tmp_path.glob("*.json"))) == 1

    def no_lowering(*args: object, **kwargs: object) -> None:
        raise AssertionError("lowered again")

    monkeypatch.setattr(executable, "lower_graph", no_lowering)
    second = LlvmExecutable(net.graph, params, threads=2, profile=True)
    x = net.random_inputs(seed=4, batch=2)["x"]
    (x_id,), ((_, y_id),) = net.graph.inputs, net.graph.outputs
    np.testing.assert_array_equal(second.run({x_id: x})[y_id], first.run({x_id: x})[y_id])
    assert [w.label for w, _ in second.kernel_profile()] == [
        w.label for w, _ in first.kernel_profile()
    ]
    with pytest.raises(AssertionError, match="lowered again"):
        LlvmExecutable(net.graph, params, threads=1)  # another thread count: another record


def test_a_damaged_or_orphaned_lowering_record_is_a_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, params = cached_network(str(tmp_path), monkeypatch)
    LlvmExecutable(net.graph, params, threads=2)
    (record,) = tmp_path.glob("*.json")
    good = record.read_bytes()
    x = net.random_inputs(seed=5)["x"]
    (x_id,), ((_, y_id),) = net.graph.inputs, net.graph.outputs
    want = net(x=x)["y"]
    for damaged in (good[:40], good[:32] + b"{}", b""):
        record.write_bytes(damaged)
        rebuilt = LlvmExecutable(net.graph, params, threads=2)
        np.testing.assert_allclose(rebuilt.run({x_id: x})[y_id], want, rtol=1e-4, atol=1e-5)
        assert record.read_bytes() == good  # written again after lowering
    for code in tmp_path.glob("*.o"):  # the record's object files gone: lowered again
        code.unlink()
    rebuilt = LlvmExecutable(net.graph, params, threads=2)
    assert rebuilt.jit.compiled == 3
    np.testing.assert_allclose(rebuilt.run({x_id: x})[y_id], want, rtol=1e-4, atol=1e-5)


def test_editing_one_layer_recompiles_only_its_kernel_and_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(tmp_path))
    source = (
        "input x: f32[N, 5, 20, 20]\n"
        "a = relu(conv2d(x, 8, kernel=3, padding=same))\n"
        "b = max_pool2d(a, 2)\n"
        "output y = conv2d(b, {}, kernel=3, padding=same)"
    )
    before = LlvmExecutable(*_graph_and_params(source.format(4)), threads=2)
    edited, params = _graph_and_params(source.format(6))
    after = LlvmExecutable(edited, params, threads=2)
    assert before.jit.compiled == 4  # conv+relu, pool, conv, entry
    assert after.jit.compiled == 2  # the edited conv and the entry: the others were cached


def _graph_and_params(source: str) -> tuple[Graph, dict]:
    net = convdsl.compile_string(source, backend="numpy")
    return net.graph, materialize(net.graph, net.weights)


def test_the_cache_is_trimmed_least_recently_used_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convdsl.backends.llvm import object_cache

    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CONVDSL_CACHE_MAX_MB", str(3500 / 2**20))  # 3500 bytes
    monkeypatch.setattr(object_cache, "_trimmed", {tmp_path})  # no trimming while filling
    for key, suffix, stamp in [("a", ".o", 100), ("b", ".o", 200), ("c", ".json", 300)]:
        object_cache.store(key, b"x" * 968, suffix=suffix)  # 1000 bytes with the checksum
        os.utime(tmp_path / f"{key}{suffix}", (stamp, stamp))
    (tmp_path / "crashed.tmp").write_bytes(b"z" * 1000)
    assert object_cache.load("a") is not None  # a hit: a is now the most recently used
    monkeypatch.setattr(object_cache, "_trimmed", set())
    object_cache.store("d", b"y" * 968)  # 5000 bytes > 3500: down to 2800, oldest first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.o", "d.o"]


@pytest.mark.parametrize("setting", ["lots", "-5", "nan"])
def test_a_bad_cache_limit_is_a_warning_and_the_default(
    setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from convdsl.backends.llvm import object_cache

    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CONVDSL_CACHE_MAX_MB", setting)
    monkeypatch.setattr(object_cache, "_trimmed", set())
    with pytest.warns(UserWarning, match=f"CONVDSL_CACHE_MAX_MB='{setting}' is not a number"):
        object_cache.store("k", b"data")
    assert object_cache.load("k") == b"data"


@pytest.mark.parametrize("setting", ["off", "", "file"])
def test_the_cache_can_be_off_or_unusable(
    setting: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory would go")
    cache = str(blocker / "cache") if setting == "file" else setting
    net, params = cached_network(cache, monkeypatch)
    for _ in range(2):
        native = LlvmExecutable(net.graph, params, threads=2)
        assert not native.jit.cached
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_directory"]


def test_no_home_directory_means_no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from convdsl.backends.llvm import object_cache

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("CONVDSL_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert object_cache.cache_dir() is None
    net = convdsl.compile_string(CACHED, backend="numpy")
    assert not LlvmExecutable(net.graph, materialize(net.graph, net.weights)).jit.cached


def test_object_cache_key_follows_how_code_is_generated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change to codegen.py (its passes, its code model) must not be served objects that the
    old one compiled: its text is part of every key."""
    text = "define void @f() {\n  ret void\n}\n"
    target = host_target()
    before = object_cache.cache_key(text, target)
    assert object_cache.cache_key(text, target) == before  # deterministic
    edited = tmp_path / "codegen.py"
    edited.write_text(Path(codegen.__file__).read_text() + "\n# another pipeline\n")
    monkeypatch.setattr(codegen, "__file__", str(edited))
    object_cache._codegen_digest.cache_clear()
    try:
        assert object_cache.cache_key(text, target) != before
    finally:
        object_cache._codegen_digest.cache_clear()
