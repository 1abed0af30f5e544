"""Pooling kernels against torch.nn.functional."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convdsl.backends.numpy.pool import avg_pool, global_avg_pool, global_max_pool, max_pool
from convdsl.ir.geometry import pool_output_size, same_padding

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

TORCH_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
TORCH_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
MAX_SIDE = {1: 10, 2: 7, 3: 5}


def assert_matches(got: np.ndarray, ref: torch.Tensor, dtype: type) -> None:
    expected = ref.detach().numpy()
    assert got.dtype == dtype
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    rtol, atol = (1e-10, 1e-10) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale)


def torch_pad_arg(pads: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    return tuple(v for before, after in reversed(pads) for v in (before, after))


@st.composite
def pool_cases(draw: st.DrawFn, dilated: bool) -> dict:
    """Attributes PyTorch accepts: symmetric padding of at most half the kernel."""
    rank = draw(st.integers(1, 3))
    axes = []
    for _ in range(rank):
        n = draw(st.integers(1, MAX_SIDE[rank]))
        k, s = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        d = draw(st.integers(1, 3)) if dilated else 1
        p = draw(st.integers(0, k // 2))
        axes.append((n, k, s, d, p))
    ceil_mode = draw(st.booleans())
    for n, k, s, d, p in axes:
        assume(pool_output_size(n, k, s, d, p, p, ceil_mode) >= 1)
    return {
        "n": draw(st.integers(1, 2)),
        "c": draw(st.sampled_from([1, 3, 5])),
        "axes": axes,
        "ceil_mode": ceil_mode,
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _input(case: dict) -> np.ndarray:
    spatial = tuple(a[0] for a in case["axes"])
    rng = np.random.default_rng(case["seed"])
    return rng.standard_normal((case["n"], case["c"], *spatial)).astype(case["dtype"])


@settings(max_examples=60, deadline=None)
@given(pool_cases(dilated=True))
def test_max_pool_property(case: dict) -> None:
    x = _input(case)
    _, kernel, stride, dilation, pad = zip(*case["axes"], strict=True)
    got = max_pool(
        x,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        pads=tuple((p, p) for p in pad),
        ceil_mode=case["ceil_mode"],
    )
    ref = TORCH_MAX[x.ndim - 2](
        torch.from_numpy(x), kernel, stride, pad, dilation, ceil_mode=case["ceil_mode"]
    )
    assert_matches(got, ref, case["dtype"])


@settings(max_examples=60, deadline=None)
@given(pool_cases(dilated=False), st.booleans())
def test_avg_pool_property(case: dict, include_pad: bool) -> None:
    x = _input(case)
    spatial, kernel, stride, _, pad = zip(*case["axes"], strict=True)
    # avg_pool3d (unlike 1d/2d and max_pool3d) rejects inputs smaller than the kernel.
    assume(len(spatial) < 3 or all(n >= k for n, k in zip(spatial, kernel, strict=True)))
    got = avg_pool(
        x,
        kernel=kernel,
        stride=stride,
        pads=tuple((p, p) for p in pad),
        ceil_mode=case["ceil_mode"],
        include_pad=include_pad,
    )
    ref = TORCH_AVG[x.ndim - 2](
        torch.from_numpy(x),
        kernel,
        stride,
        pad,
        ceil_mode=case["ceil_mode"],
        count_include_pad=include_pad,
    )
    assert_matches(got, ref, case["dtype"])


POOL_CASES = [
    # (N, C, spatial, kernel, stride, pads) with asymmetric pads torch cannot express directly
    (1, 3, (7,), (3,), (2,), ((0, 1),)),
    (3, 1, (6, 5), (2, 3), (3, 1), ((1, 0), (2, 1))),
    (1, 17, (1, 4), (1, 2), (1, 2), ((0, 0), (0, 1))),
    (1, 5, (4, 3, 5), (2, 2, 3), (1, 2, 2), ((1, 0), (0, 1), (1, 1))),
    (1, 2, (5, 5), (5, 5), (1, 1), ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_asymmetric_padding(case, dtype: type) -> None:
    n, c, spatial, kernel, stride, pads = case
    x: np.ndarray = np.random.default_rng(4).standard_normal((n, c, *spatial)).astype(dtype)
    dilation = (1,) * len(spatial)
    got = max_pool(x, kernel=kernel, stride=stride, dilation=dilation, pads=pads)
    padded = F.pad(torch.from_numpy(x), torch_pad_arg(pads), value=-float("inf"))
    assert_matches(got, TORCH_MAX[len(spatial)](padded, kernel, stride), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool_asymmetric_padding(case, dtype: type) -> None:
    """Excluding padding = window sum over zero-padded x / window sum over zero-padded ones."""
    n, c, spatial, kernel, stride, pads = case
    x: np.ndarray = np.random.default_rng(5).standard_normal((n, c, *spatial)).astype(dtype)
    pool = TORCH_AVG[len(spatial)]
    padded = F.pad(torch.from_numpy(x), torch_pad_arg(pads))
    mask = F.pad(torch.ones_like(torch.from_numpy(x)), torch_pad_arg(pads))
    real = avg_pool(x, kernel=kernel, stride=stride, pads=pads, include_pad=False)
    assert_matches(real, pool(padded, kernel, stride) / pool(mask, kernel, stride), dtype)
    padded_too = avg_pool(x, kernel=kernel, stride=stride, pads=pads, include_pad=True)
    assert_matches(padded_too, pool(padded, kernel, stride), dtype)


@pytest.mark.parametrize(
    ("spatial", "kernel", "stride"),
    [((7,), (3,), (2,)), ((6, 5), (2, 3), (2, 2)), ((5, 4, 3), (3, 2, 2), (2, 3, 1))],
)
def test_tf_same_avg_pool_counts_only_real_elements(spatial, kernel, stride) -> None:
    pads = tuple(same_padding(n, k, s, 1) for n, k, s in zip(spatial, kernel, stride, strict=True))
    x = np.ones((1, 2, *spatial), dtype=np.float32)
    got = avg_pool(x, kernel=kernel, stride=stride, pads=pads, include_pad=False)
    np.testing.assert_array_equal(got, np.ones_like(got))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3, 7), (3, 5, 4, 1), (1, 17, 2, 3, 4), (2, 1, 1, 1)])
def test_global_pools(shape: tuple[int, ...], dtype: type) -> None:
    x: np.ndarray = np.random.default_rng(6).standard_normal(shape).astype(dtype)
    xt = torch.from_numpy(x)
    spatial = tuple(range(2, x.ndim))
    assert_matches(global_avg_pool(x), xt.mean(dim=spatial, keepdim=True), dtype)
    assert_matches(global_max_pool(x), xt.amax(dim=spatial, keepdim=True), dtype)
