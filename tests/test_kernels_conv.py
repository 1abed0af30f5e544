"""conv and conv_transpose against torch.nn.functional, the oracle for the interpreter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convdsl.backends.numpy.conv import conv, conv_transpose
from convdsl.ir.geometry import (
    conv_output_size,
    conv_transpose_output_size,
    same_padding,
)

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def randn(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def assert_matches(got: np.ndarray, ref: torch.Tensor, dtype: type) -> None:
    expected = ref.detach().numpy()
    assert got.dtype == dtype
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    rtol, atol = (1e-10, 1e-10) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale)


def torch_pad_arg(pads: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """F.pad lists (before, after) from the last axis backwards."""
    return tuple(v for before, after in reversed(pads) for v in (before, after))


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def t_or_none(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else torch.from_numpy(a)


def torch_conv(x, w, b, stride, dilation, pads, groups) -> torch.Tensor:
    """Reference conv; asymmetric padding goes through an explicit F.pad."""
    xt = F.pad(t(x), torch_pad_arg(pads))
    return TORCH_CONV[x.ndim - 2](xt, t(w), t_or_none(b), stride, 0, dilation, groups)


def run_conv(x, w, b, stride, dilation, pads, groups) -> np.ndarray:
    return conv(x, w, b, stride=stride, dilation=dilation, pads=pads, groups=groups)


# ---- conv: hand-picked adversarial shapes ------------------------------------------------

CONV_CASES = [
    # (N, C, O, groups, spatial, kernel, stride, dilation, pads)
    (1, 3, 5, 1, (7,), (3,), (1,), (1,), ((1, 1),)),
    (3, 5, 4, 1, (9,), (2,), (3,), (2,), ((0, 1),)),  # stride > kernel, dilation with stride
    (1, 6, 6, 3, (8, 7), (3, 3), (2, 1), (1, 2), ((1, 2), (2, 0))),  # C=6 groups=3
    (1, 6, 9, 3, (5, 5), (5, 5), (1, 1), (1, 1), ((0, 0), (0, 0))),  # kernel == input
    (3, 17, 3, 1, (1, 6), (1, 3), (1, 2), (1, 1), ((0, 0), (1, 1))),  # 1-wide axis
    (1, 1, 1, 1, (5, 6), (2, 3), (4, 4), (1, 1), ((0, 0), (0, 0))),  # stride > kernel
    (1, 4, 2, 2, (4, 5, 3), (2, 3, 1), (1, 2, 1), (2, 1, 1), ((1, 0), (1, 1), (0, 2))),
    (3, 3, 5, 1, (3, 3, 3), (3, 3, 3), (1, 1, 1), (1, 1, 1), ((1, 1), (1, 1), (1, 1))),
    (1, 5, 7, 1, (1, 1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1), ((0, 0), (0, 0), (0, 0))),
    (1, 1, 5, 1, (6, 5), (3, 2), (1, 1), (1, 1), ((1, 1), (0, 1))),  # one in-channel: tap path
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_torch(case, bias: bool, dtype: type) -> None:
    n, c, o, groups, spatial, kernel, stride, dilation, pads = case
    rng = np.random.default_rng(0)
    x = randn(rng, (n, c, *spatial), dtype)
    w = randn(rng, (o, c // groups, *kernel), dtype)
    b = randn(rng, (o,), dtype) if bias else None
    got = run_conv(x, w, b, stride, dilation, pads, groups)
    assert_matches(got, torch_conv(x, w, b, stride, dilation, pads, groups), dtype)


@pytest.mark.parametrize("multiplier", [1, 2, 3])
@pytest.mark.parametrize(
    ("c", "spatial", "kernel", "stride", "dilation", "pads"),
    [
        (5, (11,), (3,), (2,), (1,), ((1, 1),)),
        (3, (7, 6), (3, 3), (1, 2), (2, 1), ((2, 2), (0, 1))),
        (17, (5, 5), (5, 5), (1, 1), (1, 1), ((2, 2), (2, 2))),
        (1, (4, 5), (2, 2), (3, 3), (1, 1), ((0, 0), (0, 0))),
        (4, (4, 3, 5), (3, 1, 2), (1, 1, 2), (1, 1, 2), ((1, 1), (0, 0), (1, 0))),
    ],
)
def test_depthwise_conv_with_multiplier(c, spatial, kernel, stride, dilation, pads, multiplier):
    rng = np.random.default_rng(1)
    x = randn(rng, (3, c, *spatial), np.float32)
    w = randn(rng, (c * multiplier, 1, *kernel), np.float32)
    b = randn(rng, (c * multiplier,), np.float32)
    got = run_conv(x, w, b, stride, dilation, pads, c)
    assert_matches(got, torch_conv(x, w, b, stride, dilation, pads, c), np.float32)


@pytest.mark.parametrize(
    ("spatial", "kernel", "stride", "dilation"),
    [
        ((7,), (3,), (1,), (1,)),
        ((7,), (4,), (2,), (1,)),  # even kernel: the extra pad goes after
        ((8, 9), (2, 4), (2, 3), (1, 1)),
        ((5, 6), (3, 3), (2, 2), (2, 1)),
        ((1, 4), (3, 2), (1, 3), (1, 1)),
        ((5, 4, 3), (2, 3, 4), (3, 1, 2), (1, 2, 1)),
    ],
)
def test_tf_same_padding(spatial, kernel, stride, dilation) -> None:
    pads = tuple(
        same_padding(n, k, s, d)
        for n, k, s, d in zip(spatial, kernel, stride, dilation, strict=True)
    )
    rng = np.random.default_rng(2)
    x = randn(rng, (1, 3, *spatial), np.float32)
    w = randn(rng, (4, 3, *kernel), np.float32)
    got = run_conv(x, w, None, stride, dilation, pads, 1)
    assert got.shape[2:] == tuple(math.ceil(n / s) for n, s in zip(spatial, stride, strict=True))
    padded = F.pad(t(x), torch_pad_arg(pads))
    ref = TORCH_CONV[len(spatial)](padded, t(w), None, stride, 0, dilation)
    assert_matches(got, ref, np.float32)


# ---- conv: hypothesis --------------------------------------------------------------------

MAX_SIDE = {1: 9, 2: 6, 3: 4}


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    rank = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    axes = []
    for _ in range(rank):
        n = draw(st.integers(1, MAX_SIDE[rank]))
        k, s, d = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        before, after = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        assume(conv_output_size(n, k, s, d, before, after) >= 1)
        axes.append((n, k, s, d, (before, after)))
    return {
        "n": draw(st.integers(1, 2)),
        "c": groups * draw(st.integers(1, 3)),
        "o": groups * draw(st.integers(1, 3)),
        "groups": groups,
        "axes": axes,
        "bias": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_conv_property(case: dict) -> None:
    spatial, kernel, stride, dilation, pads = zip(*case["axes"], strict=True)
    rng = np.random.default_rng(case["seed"])
    dtype, groups = case["dtype"], case["groups"]
    x = randn(rng, (case["n"], case["c"], *spatial), dtype)
    w = randn(rng, (case["o"], case["c"] // groups, *kernel), dtype)
    b = randn(rng, (case["o"],), dtype) if case["bias"] else None
    got = run_conv(x, w, b, stride, dilation, pads, groups)
    assert_matches(got, torch_conv(x, w, b, stride, dilation, pads, groups), dtype)


# ---- conv_transpose ----------------------------------------------------------------------


def reference_conv_transpose(x, w, b, stride, dilation, pads, output_padding, groups):
    """The definition: torch's uncropped result, cropped by (before, after), then extended by
    output_padding with zeros, plus the bias everywhere."""
    full = TORCH_CONV_T[x.ndim - 2](t(x), t(w), None, stride, 0, 0, groups, dilation)
    index = [slice(None), slice(None)]
    grow = []
    for axis, ((before, after), extra) in enumerate(
        zip(pads, output_padding, strict=True), start=2
    ):
        size = full.shape[axis]
        wanted = size - before - after + extra
        # The crop may leave nothing of the full result (before >= size): all bias then.
        kept = max(0, min(before + wanted, size) - before)
        index.append(slice(before, before + kept))
        grow.append(wanted - kept)
    ref = full[tuple(index)]
    ref = F.pad(ref, torch_pad_arg(tuple((0, g) for g in grow)))
    if b is not None:
        ref = ref + t(b).reshape((1, -1) + (1,) * (x.ndim - 2))
    return ref


def run_conv_transpose(x, w, b, stride, dilation, pads, output_padding, groups) -> np.ndarray:
    return conv_transpose(
        x,
        w,
        b,
        stride=stride,
        dilation=dilation,
        pads=pads,
        output_padding=output_padding,
        groups=groups,
    )


CONV_T_CASES = [
    # (N, C, O, groups, spatial, kernel, stride, dilation, symmetric pad, output_padding)
    (1, 3, 5, 1, (5,), (3,), (2,), (1,), (1,), (1,)),
    (3, 6, 6, 3, (4, 3), (3, 2), (2, 3), (1, 1), (1, 0), (1, 2)),  # C=6 groups=3
    (1, 5, 1, 1, (1, 4), (1, 3), (1, 2), (1, 2), (0, 2), (0, 1)),  # 1-wide, dilation
    (1, 4, 8, 4, (3, 3), (2, 2), (2, 2), (1, 1), (0, 0), (0, 0)),  # depthwise-like
    (1, 2, 3, 1, (3,), (2,), (4,), (1,), (0,), (3,)),  # stride > kernel
    (1, 2, 2, 1, (3,), (3,), (1,), (3,), (0,), (2,)),  # output_padding < dilation
    (3, 3, 4, 1, (2, 3, 2), (3, 2, 2), (2, 1, 3), (1, 2, 1), (1, 1, 0), (1, 1, 2)),
    (1, 17, 3, 1, (2, 2), (2, 2), (1, 1), (1, 1), (0, 0), (0, 0)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_T_CASES)
def test_conv_transpose_matches_torch(case, dtype: type) -> None:
    n, c, o, groups, spatial, kernel, stride, dilation, pad, output_padding = case
    rng = np.random.default_rng(3)
    x = randn(rng, (n, c, *spatial), dtype)
    w = randn(rng, (c, o // groups, *kernel), dtype)
    b = randn(rng, (o,), dtype)
    pads = tuple((p, p) for p in pad)
    got = run_conv_transpose(x, w, b, stride, dilation, pads, output_padding, groups)
    ref = TORCH_CONV_T[len(spatial)](
        t(x), t(w), t_or_none(b), stride, pad, output_padding, groups, dilation
    )
    assert_matches(got, ref, dtype)


@st.composite
def conv_transpose_cases(draw: st.DrawFn, symmetric: bool) -> dict:
    rank = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 3))
    axes = []
    for _ in range(rank):
        n = draw(st.integers(1, MAX_SIDE[rank] - 1))
        k, s, d = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        before = draw(st.integers(0, 3))
        after = before if symmetric else draw(st.integers(0, 3))
        # PyTorch only accepts output_padding < max(stride, dilation).
        extra = draw(st.integers(0, max(s, d) - 1 if symmetric else 3))
        assume(conv_transpose_output_size(n, k, s, d, before, after, extra) >= 1)
        axes.append((n, k, s, d, (before, after), extra))
    return {
        "n": draw(st.integers(1, 2)),
        "c": groups * draw(st.integers(1, 3)),
        "o": groups * draw(st.integers(1, 3)),
        "groups": groups,
        "axes": axes,
        "bias": draw(st.booleans()),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _transpose_inputs(case: dict):
    spatial, kernel, stride, dilation, pads, output_padding = zip(*case["axes"], strict=True)
    rng = np.random.default_rng(case["seed"])
    dtype, groups = case["dtype"], case["groups"]
    x = randn(rng, (case["n"], case["c"], *spatial), dtype)
    w = randn(rng, (case["c"], case["o"] // groups, *kernel), dtype)
    b = randn(rng, (case["o"],), dtype) if case["bias"] else None
    return x, w, b, stride, dilation, pads, output_padding, groups


@settings(max_examples=60, deadline=None)
@given(conv_transpose_cases(symmetric=False))
def test_conv_transpose_asymmetric_crop_property(case: dict) -> None:
    args = _transpose_inputs(case)
    got = run_conv_transpose(*args)
    assert_matches(got, reference_conv_transpose(*args), case["dtype"])


@settings(max_examples=40, deadline=None)
@given(conv_transpose_cases(symmetric=True))
def test_conv_transpose_symmetric_property(case: dict) -> None:
    x, w, b, stride, dilation, pads, output_padding, groups = _transpose_inputs(case)
    got = run_conv_transpose(x, w, b, stride, dilation, pads, output_padding, groups)
    padding = tuple(before for before, _ in pads)
    ref = TORCH_CONV_T[x.ndim - 2](
        t(x), t(w), t_or_none(b), stride, padding, output_padding, groups, dilation
    )
    assert_matches(got, ref, case["dtype"])
