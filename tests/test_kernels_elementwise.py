"""Activations, batch norm, softmax and the n-ary kernels against torch.nn.functional."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from convdsl.backends.numpy import elementwise as ew

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def assert_matches(got: np.ndarray, ref: torch.Tensor, dtype: type, atol: float = 1e-5) -> None:
    expected = ref.detach().numpy()
    assert got.dtype == dtype
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    rtol, atol = (1e-10, 1e-10) if dtype == np.float64 else (1e-4, atol)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale)


def sample(dtype: type, shape: tuple[int, ...] = (2, 5, 3, 4), seed: int = 11) -> np.ndarray:
    """Normal values, plus extremes that overflow a naive exp."""
    x = 4 * np.random.default_rng(seed).standard_normal(shape)
    flat = x.reshape(-1)
    extremes = [0.0, -0.0, 1e4, -1e4, 88.8, -88.8, 710.0, -710.0][: flat.size]
    flat[: len(extremes)] = extremes
    return x.astype(dtype)


def randn(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


Pair = tuple[Callable[[np.ndarray], np.ndarray], Callable[[torch.Tensor], torch.Tensor]]
ACTIVATIONS: dict[str, Pair] = {
    "relu": (ew.relu, F.relu),
    "relu6": (ew.relu6, F.relu6),
    "leaky_relu": (lambda x: ew.leaky_relu(x, alpha=0.1), lambda x: F.leaky_relu(x, 0.1)),
    "sigmoid": (ew.sigmoid, torch.sigmoid),
    "tanh": (ew.tanh, torch.tanh),
    "gelu": (lambda x: ew.gelu(x, approximate="none"), lambda x: F.gelu(x)),
    "gelu_tanh": (
        lambda x: ew.gelu(x, approximate="tanh"),
        lambda x: F.gelu(x, approximate="tanh"),
    ),
    "silu": (ew.silu, F.silu),
    "hard_sigmoid": (ew.hard_sigmoid, F.hardsigmoid),
    "hard_swish": (ew.hard_swish, F.hardswish),
    "elu": (lambda x: ew.elu(x, alpha=0.7), lambda x: F.elu(x, 0.7)),
    "softmax": (ew.softmax, lambda x: F.softmax(x, dim=1)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_torch(name: str, dtype: type) -> None:
    ours, theirs = ACTIVATIONS[name]
    # gelu_tanh cubes x: keep it where float32 does not overflow, as any tanh-form user would.
    x = sample(dtype) if name != "gelu_tanh" else sample(dtype).clip(-1e3, 1e3)
    assert_matches(ours(x), theirs(torch.from_numpy(x)), dtype)


@pytest.mark.parametrize("shape", [(1, 1, 5), (3, 17, 1, 2), (1, 3, 2, 2, 3)])
def test_activations_any_rank(shape: tuple[int, ...]) -> None:
    x = sample(np.float32, shape)
    for ours, theirs in ACTIVATIONS.values():
        if ours is not ACTIVATIONS["gelu_tanh"][0]:
            assert_matches(ours(x), theirs(torch.from_numpy(x)), np.float32)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-30, 30, allow_nan=False, width=64), min_size=1, max_size=64))
def test_exact_gelu_to_1e_6(values: list[float]) -> None:
    x = np.array(values, dtype=np.float64).reshape(1, -1, 1)
    got = ew.gelu(x, approximate="none")
    np.testing.assert_allclose(got, F.gelu(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-6)


def test_exact_gelu_dense_float64() -> None:
    """The erf behind exact GELU, on a fine grid across all of its approximation intervals."""
    x = np.linspace(-10, 10, 200_001).reshape(1, -1, 1)
    got = ew.gelu(x, approximate="none")
    np.testing.assert_allclose(got, F.gelu(torch.from_numpy(x)).numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3, 5), (3, 5, 2, 3), (2, 1, 2, 3, 2), (1, 17, 1, 1)])
def test_batch_norm(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(12)
    c = shape[1]
    x, weight, bias, mean = (randn(rng, size, dtype) for size in (shape, (c,), (c,), (c,)))
    var = np.abs(randn(rng, (c,), dtype)) + 0.1
    got = ew.batch_norm(x, weight, bias, mean, var, eps=1e-3)
    xt, wt, bt, mt, vt = (torch.from_numpy(a) for a in (x, weight, bias, mean, var))
    ref = F.batch_norm(xt, mt, vt, weight=wt, bias=bt, eps=1e-3)
    assert_matches(got, ref, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_mul_concat(dtype: type) -> None:
    a, b = sample(dtype, seed=13), sample(dtype, seed=14)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    assert_matches(ew.add(a, b), ta + tb, dtype)
    assert_matches(ew.mul(a, b), ta * tb, dtype)
    parts = [sample(dtype, (2, c, 3, 4), seed=c) for c in (1, 3, 5)]
    joined = torch.cat([torch.from_numpy(p) for p in parts], dim=1)
    assert_matches(ew.concat(parts), joined, dtype)


def test_softmax_is_stable_for_huge_logits() -> None:
    x = np.array([[[1e30], [1e30 - 1e24], [-1e30]]], dtype=np.float32)
    got = ew.softmax(x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
