"""Ops along one axis: concat along any axis (torch.cat), slice (NumPy slicing and onnxruntime
Slice), split (torch.split / torch.chunk, and a WaveNet gate), space_to_depth (PyTorch
pixel_unshuffle, onnxruntime SpaceToDepth) and pixel_shuffle's orders against onnxruntime
DepthToSpace; the llvm backend against the interpreter; and the diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, call, compile_and_run, input_decl, randn, tt
from test_diagnostics import Golden, compile_error
from test_llvm_backend import compile_both, run_native
from test_ops_padding_modes import run_onnx

import convdsl
from convdsl import ConvdslError

INT64_MAX, INT64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


# ---- concat ----------------------------------------------------------------------------------

CONCAT_CASES = [
    # (shapes, axis)
    (((2, 3, 5), (2, 3, 1), (2, 3, 4)), 2),
    (((2, 3, 5), (2, 3, 2)), -1),
    (((1, 17, 4, 3), (1, 17, 1, 3)), 2),
    (((1, 1, 4, 3), (1, 1, 4, 5), (1, 1, 4, 1)), 3),
    (((2, 3, 2, 3), (2, 3, 5, 3)), -2),
    (((1, 2, 3, 4, 5), (1, 2, 3, 4, 2)), 4),
    (((1, 2, 3, 4, 5), (1, 2, 1, 4, 5)), 2),
    (((2, 3, 4, 4), (2, 17, 4, 4)), -3),  # channels, counted from the end
]


@pytest.mark.parametrize("case", CONCAT_CASES, ids=str)
def test_concat_along_an_axis_matches_torch_cat(case) -> None:
    shapes, axis = case
    rng = np.random.default_rng(4)
    names = [f"x{i}" for i in range(len(shapes))]
    decls = "\n".join(input_decl(n, s) for n, s in zip(names, shapes, strict=True))
    src = f"{decls}\noutput y = concat({', '.join(names)}, axis={axis})\n"
    xs = {n: randn(rng, s) for n, s in zip(names, shapes, strict=True)}
    out, _ = compile_and_run(src, xs)
    assert_close(out["y"], torch.cat([tt(xs[n]) for n in names], dim=axis))


def test_concat_along_a_fixed_batch_matches_torch_cat() -> None:
    src = """
input a: f32[2, 3, 4]
input b: f32[1, 3, 4]
output y = concat(a, relu(b), a, axis=0)     : [5, 3, 4]
"""
    rng = np.random.default_rng(5)
    a, b = randn(rng, (2, 3, 4)), randn(rng, (1, 3, 4))
    out = convdsl.compile_string(src, backend="numpy")(a=a, b=b)
    assert_close(out["y"], torch.cat([tt(a), torch.relu(tt(b)), tt(a)]))


# ---- slice -----------------------------------------------------------------------------------

SLICE_CASES = [
    # (shape, axis, start, end, step); None: the argument left out
    ((2, 3, 9), 2, 2, 7, 1),
    ((2, 3, 9), -1, -4, None, 1),  # negative start counts from the end
    ((2, 3, 9), 2, 1, -1, 3),
    ((1, 17, 5), 1, 3, 100, 2),  # end past the axis: clamped
    ((1, 17, 5), 1, -100, 4, 5),  # start before the axis: clamped
    ((1, 3, 9), 2, None, None, -1),  # reversed
    ((1, 3, 9), 2, 7, 1, -2),
    ((1, 3, 9), 2, -2, -100, -3),  # end clamped to before the first element
    ((1, 3, 9), 2, 100, None, -4),  # start clamped to the last element
    ((1, 1, 1, 6), 3, 0, 1, 1),  # sizes 1
    ((1, 3, 4, 6), 2, 1, 3, 1),
    ((2, 3, 5, 6), -2, None, None, 2),
    ((1, 2, 3, 4, 5), 3, -1, 0, -1),
    ((1, 4, 2, 3, 4), 1, 1, None, 1),
]


def onnx_bound(value: int | None, default: int) -> int:
    return default if value is None else value


@pytest.mark.parametrize("case", SLICE_CASES, ids=str)
def test_slice_matches_numpy_and_onnxruntime(case) -> None:
    shape, axis, start, end, step = case
    rng = np.random.default_rng(6)
    kw = {k: v for k, v in {"start": start, "end": end, "step": step}.items() if v is not None}
    src = f"{input_decl('x', shape)}\noutput y = {call('slice', 'x', axis=axis, **kw)}\n"
    x = randn(rng, shape)
    out, _ = compile_and_run(src, {"x": x})
    np.testing.assert_array_equal(
        out["y"], x[(slice(None),) * (axis % x.ndim) + (slice(start, end, step),)]
    )
    forward = step > 0
    bounds = {
        "starts": np.array([onnx_bound(start, 0 if forward else INT64_MAX)], np.int64),
        "ends": np.array([onnx_bound(end, INT64_MAX if forward else INT64_MIN)], np.int64),
        "axes": np.array([axis], np.int64),
        "steps": np.array([step], np.int64),
    }
    np.testing.assert_array_equal(out["y"], run_onnx("Slice", x, bounds))


# ---- split -----------------------------------------------------------------------------------


def test_split_into_sizes_matches_torch_split() -> None:
    src = """
input x: f32[N, 17, 5, 3]
a, b, c = split(x, [3, 13, 1])
d, e = split(x, [1, 4], axis=-2)
output a
output b
output c
output d
output e
output f = concat(split(x, [2, 1], axis=3), axis=3)
"""
    x = randn(np.random.default_rng(7), (2, 17, 5, 3))
    out, net = compile_and_run(src, {"x": x})
    for names, parts in (
        ("abc", torch.split(tt(x), [3, 13, 1], 1)),
        ("de", torch.split(tt(x), [1, 4], 2)),
    ):
        for name, part in zip(names, parts, strict=True):
            assert_close(out[name], part)
    assert_close(out["f"], tt(x))
    layers = {node.name for node in net.graph.nodes}
    assert {"a", "b", "c", "d", "e"} <= layers  # each part is named after its variable


def test_split_into_parts_matches_torch_chunk() -> None:
    src = """
input x: f32[N, 3, 12]
p, q, r = split(x, parts=3, axis=2)
output p
output q
output r
output all = concat(split(x, parts=4, axis=-1), axis=2)
output one = concat(split(x, parts=1, axis=2), x)
"""
    x = randn(np.random.default_rng(8), (1, 3, 12))
    out, _ = compile_and_run(src, {"x": x})
    for name, part in zip("pqr", torch.chunk(tt(x), 3, 2), strict=True):
        assert_close(out[name], part)
    assert_close(out["all"], tt(x))
    assert_close(out["one"], torch.cat([tt(x), tt(x)], 1))


WAVENET_GATE = """
input x: f32[N, 8, 50]
h = conv1d(x, 32, kernel=2, dilation=4, padding=causal)   : [N, 32, 50]
filter, gate = split(h, parts=2)
z = tanh(filter) * sigmoid(gate)
output y = conv1d(z, 8, kernel=1) + x
"""


def test_wavenet_gate_from_one_conv_split_matches_torch() -> None:
    """The gated activation of WaveNet, ``tanh(W_f * x) * sigmoid(W_g * x)``, as one conv to 2C
    channels split in two (as in PyTorch WaveNet ports: ``torch.chunk(h, 2, dim=1)``)."""
    x = randn(np.random.default_rng(9), (2, 8, 50))
    out, net = compile_and_run(WAVENET_GATE, {"x": x})
    w = net.weights
    h = F.conv1d(F.pad(tt(x), [4, 0]), tt(w["h.weight"]), tt(w["h.bias"]), dilation=4)
    filt, gate = torch.chunk(h, 2, dim=1)
    z = torch.tanh(filt) * torch.sigmoid(gate)
    ref = F.conv1d(z, tt(w["y.lhs.weight"]), tt(w["y.lhs.bias"])) + tt(x)
    assert_close(out["y"], ref)


# ---- space_to_depth and pixel_shuffle orders -------------------------------------------------

S2D_CASES = [((2, 3, 4, 6), 2), ((1, 1, 3, 9), 3), ((1, 17, 2, 2), 2), ((2, 3, 5, 5), 1)]


@pytest.mark.parametrize("case", S2D_CASES, ids=str)
def test_space_to_depth_matches_pixel_unshuffle_and_onnx(case) -> None:
    shape, r = case
    src = f"""
{input_decl("x", shape)}
output by_crd = space_to_depth(x, {r})
output by_dcr = space_to_depth(x, {r}, order=dcr)
output back_crd = pixel_shuffle(space_to_depth(x, {r}), {r})
output back_dcr = pixel_shuffle(space_to_depth(x, {r}, order=dcr), {r}, order=dcr)
"""
    x = randn(np.random.default_rng(10), shape)
    out, _ = compile_and_run(src, {"x": x})
    np.testing.assert_array_equal(out["by_crd"], F.pixel_unshuffle(torch.from_numpy(x), r).numpy())
    np.testing.assert_array_equal(out["by_dcr"], run_onnx("SpaceToDepth", x, {}, blocksize=r))
    np.testing.assert_array_equal(out["back_crd"], x)
    np.testing.assert_array_equal(out["back_dcr"], x)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_pixel_shuffle_orders_match_onnx_depth_to_space(mode: str) -> None:
    x = randn(np.random.default_rng(11), (2, 18, 3, 4))
    src = f"{input_decl('x', x.shape)}\noutput y = pixel_shuffle(x, 3, order={mode.lower()})\n"
    out, _ = compile_and_run(src, {"x": x})
    np.testing.assert_array_equal(out["y"], run_onnx("DepthToSpace", x, {}, blocksize=3, mode=mode))


# ---- the llvm backend ------------------------------------------------------------------------

LLVM_NET = """
input x: {t}[N, 17, 6, 13]
input s: {t}[N, 3, 11]
input v: {t}[N, 2, 3, 4, 5]
h = conv2d(x, 6, kernel=3, padding=same)
f, g = split(h, parts=2)
output gate = tanh(f) * sigmoid(g)
output rows = concat(x, relu(x), axis=2)
output cols = concat(x, slice(x, axis=3, start=2, end=7), x, axis=-1)
output chans = concat(slice(x, axis=1, start=1, step=5), x)
output rev = slice(x, axis=3, step=-1)
output odd = slice(x, axis=2, start=-1, end=0, step=-2)
output strided = slice(x, axis=3, start=1, step=3)
output seq = concat(s, slice(s, axis=2, start=1, end=-1, step=2), axis=2)
output vol = concat(v, slice(v, axis=3, start=1, end=2), axis=3)
output volc = concat(v, v, axis=-1)
output s2d = space_to_depth(slice(x, axis=3, start=1), 3)
output s2d_dcr = space_to_depth(slice(x, axis=3, end=12), 2, order=dcr)
output one_part = concat(split(s, [11], axis=2), s)
output wide = conv2d(x, 17, kernel=1) + slice(concat(x, x, axis=3), axis=3, start=3, end=16)
output cropped = conv2d(x, 5, kernel=3, padding=same) + crop(slice(x, axis=1, end=5), size=[6, 13])
"""


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_axis_ops_on_llvm_match_the_interpreter(dtype: str) -> None:
    net, native = compile_both(LLVM_NET.format(t=dtype))
    rtol, atol = (1e-4, 1e-5) if dtype == "f32" else (1e-10, 1e-12)
    for batch in (1, 3):
        inputs = net.random_inputs(0, batch)
        want, got = net(**inputs), run_native(net, native, inputs)
        for name, expected in want.items():
            scale = max(1.0, float(np.abs(expected).max()))
            np.testing.assert_allclose(got[name], expected, rtol, atol * scale, err_msg=name)


def test_wavenet_gate_on_llvm_matches_the_interpreter() -> None:
    net, native = compile_both(WAVENET_GATE)
    inputs = net.random_inputs(1, 2)
    np.testing.assert_allclose(
        run_native(net, native, inputs)["y"], net(**inputs)["y"], rtol=1e-4, atol=1e-5
    )


def test_llvm_refuses_the_batch_axis() -> None:
    src = "input a: f32[2, 3, 4]\noutput y = concat(a, a, axis=0)\n"
    with pytest.raises(ConvdslError) as info:
        compile_both(src, name="b.conv")
    assert str(info.value).splitlines()[0] == (
        "b.conv:2:12: error: llvm backend cannot lower concat along the batch axis (axis 0) yet"
    )


# ---- diagnostics -----------------------------------------------------------------------------

GOLDENS = [
    Golden(
        "concat_axis_range",
        """
        input x: f32[N, 3, 8, 8]
        output y = concat(x, x, axis=4)
        """,
        (
            "net.conv:2:30: error: concat: axis 4 is out of range for the rank-4 tensor "
            "[N,3,8,8] (expected -4 to 3)",
            "   2 | output y = concat(x, x, axis=4)",
            "     |                              ^",
        ),
    ),
    Golden(
        "slice_axis_range",
        """
        input x: f32[N, 3, 8]
        output y = slice(x, axis=-4, start=1)
        """,
        (
            "net.conv:2:26: error: slice: axis -4 is out of range for the rank-3 tensor [N,3,8] "
            "(expected -3 to 2)",
            "   2 | output y = slice(x, axis=-4, start=1)",
            "     |                          ^~",
        ),
    ),
    Golden(
        "concat_symbolic_batch",
        """
        input x: f32[N, 3, 8]
        output y = concat(x, x, axis=0)
        """,
        (
            "net.conv:2:30: error: concat: along the batch axis (axis 0) the batch size must be "
            "a number, found the symbolic batch 'N' (input 1)",
            "   2 | output y = concat(x, x, axis=0)",
            "     |                              ^",
            "  hint: declare the input with a number for its batch, e.g. f32[2, ...]",
        ),
    ),
    Golden(
        "concat_axis_mismatch",
        """
        input x: f32[N, 3, 8, 8]
        input z: f32[N, 4, 8, 5]
        output y = concat(x, z, axis=-1)
        """,
        (
            "net.conv:3:12: error: concat: inputs must match in all dims but W (axis 3), the "
            "concat axis: input 1 is [N,3,8,8], input 2 is [N,4,8,5]",
            "   3 | output y = concat(x, z, axis=-1)",
            "     |            ^~~~~~~~~~~~~~~~~~~~~",
            "  hint: crop, pad or upscale one of them first",
        ),
    ),
    Golden(
        "slice_empty",
        """
        input x: f32[N, 3, 8]
        output y = slice(x, axis=2, start=5, end=-3)
        """,
        (
            "net.conv:2:42: error: slice: slice [5:-3:1] of L (axis 2), of size 8, is empty",
            "   2 | output y = slice(x, axis=2, start=5, end=-3)",
            "     |                                          ^~",
            "  hint: start and end are clamped to the axis as in ONNX Slice; negative values "
            "count from its end",
        ),
    ),
    Golden(
        "slice_step_zero",
        """
        input x: f32[N, 3, 8]
        output y = slice(x, axis=2, step=0)
        """,
        (
            "net.conv:2:34: error: slice: step: expected a non-zero integer, found 0",
            "   2 | output y = slice(x, axis=2, step=0)",
            "     |                                  ^",
        ),
    ),
    Golden(
        "split_sizes_sum",
        """
        input x: f32[N, 6, 8]
        a, b = split(x, [2, 3])
        output y = a
        """,
        (
            "net.conv:2:17: error: split: sizes [2, 3] add up to 5, but channels of [N,6,8] has 6",
            "   2 | a, b = split(x, [2, 3])",
            "     |                 ^~~~~~",
        ),
    ),
    Golden(
        "split_parts_divide",
        """
        input x: f32[N, 6, 8]
        a, b, c = split(x, parts=3, axis=2)
        output y = a
        """,
        (
            "net.conv:2:26: error: split: parts=3 does not divide L (axis 2) of size 8",
            "   2 | a, b, c = split(x, parts=3, axis=2)",
            "     |                          ^",
            "  hint: give the sizes of the parts as a list to split unevenly",
        ),
    ),
    Golden(
        "split_int_sizes",
        """
        input x: f32[N, 6, 8]
        output y = split(x, 3)
        """,
        (
            "net.conv:2:21: error: split: sizes: expected a list of sizes, found the integer 3",
            "   2 | output y = split(x, 3)",
            "     |                     ^",
            "  hint: parts=3 splits into 3 equal parts; [a, b, ...] gives sizes",
        ),
    ),
    Golden(
        "split_unpack",
        """
        input x: f32[N, 6, 8]
        a, b = split(x, parts=3)
        output y = a
        """,
        (
            "net.conv:2:1: error: cannot unpack 3 value(s) into 2 names",
            "   2 | a, b = split(x, parts=3)",
            "     | ^~~~~~~~~~~~~~~~~~~~~~~~",
        ),
    ),
    Golden(
        "space_to_depth_divide",
        """
        input x: f32[N, 3, 8, 9]
        output y = space_to_depth(x, 2)
        """,
        (
            "net.conv:2:30: error: space_to_depth: factor 2 must divide the spatial sizes, found "
            "9 on axis W of [N,3,8,9]",
            "   2 | output y = space_to_depth(x, 2)",
            "     |                              ^",
            "  hint: crop or pad the input to a multiple of the factor first",
        ),
    ),
]


@pytest.mark.parametrize("golden", GOLDENS, ids=lambda g: g.name)
def test_axis_op_diagnostics(golden: Golden) -> None:
    assert str(compile_error(golden.source)) == "\n".join(golden.expected)
