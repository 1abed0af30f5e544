"""Pointwise and per-channel kernels: activations, inference batch norm, add/sub/mul/div
(broadcasting as NumPy does), concat, softmax.

All keep the input dtype. Anything with an ``exp`` is written so that large ``|x|`` neither
overflows nor warns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from convdsl.backends.numpy.special import erf


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 6)


def leaky_relu(x: np.ndarray, *, alpha: float) -> np.ndarray:
    return np.where(x >= 0, x, x * alpha)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` via ``exp(-|x|)``, which never overflows."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def gelu(x: np.ndarray, *, approximate: str) -> np.ndarray:
    """``x * Phi(x)``: exact with ``erf`` (``approximate='none'``) or PyTorch's ``tanh`` form.

    >>> round(float(gelu(np.array([1.0]), approximate="none")[0]), 6)
    0.841345
    """
    if approximate == "none":
        # erf is evaluated in float64, so the exact form is exact for float32 too.
        wide = x.astype(np.float64)
        return (0.5 * wide * (1.0 + erf(wide * math.sqrt(0.5)))).astype(x.dtype)
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1 + np.tanh(inner))
    raise ValueError(f"unknown gelu approximation {approximate!r}")


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    """PyTorch ``hardsigmoid``: ``relu6(x + 3) / 6``."""
    return np.clip(x + 3, 0, 6) / 6


def hard_swish(x: np.ndarray) -> np.ndarray:
    return x * hard_sigmoid(x)


def elu(x: np.ndarray, *, alpha: float) -> np.ndarray:
    # expm1 of min(x, 0): the positive branch is never exponentiated, so it cannot overflow.
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def clip(x: np.ndarray, *, min: float | None, max: float | None) -> np.ndarray:
    """``torch.clamp``: NaN stays NaN; with ``min > max`` every element is ``max``."""
    if min is not None:
        x = np.maximum(x, np.asarray(min, x.dtype))
    if max is not None:
        x = np.minimum(x, np.asarray(max, x.dtype))
    return x


SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def selu(x: np.ndarray) -> np.ndarray:
    """PyTorch's (and ONNX's) ``selu``: ``scale * elu(x, alpha)``."""
    return (SELU_SCALE * elu(x, alpha=SELU_ALPHA)).astype(x.dtype)


def softplus(x: np.ndarray, *, beta: float, threshold: float) -> np.ndarray:
    """PyTorch's ``softplus``: ``x`` where ``beta * x > threshold``, else
    ``log1p(exp(beta * x)) / beta`` (its exp never sees more than the threshold)."""
    scaled = x * np.asarray(beta, x.dtype)
    below = np.log1p(np.exp(np.minimum(scaled, np.asarray(threshold, x.dtype)))) / beta
    return np.where(scaled > threshold, x, below.astype(x.dtype))


def mish(x: np.ndarray) -> np.ndarray:
    """PyTorch's ``mish``: ``x * tanh(log1p(exp(x)))``, with no threshold (an ``exp`` that
    overflows gives ``tanh(inf) = 1``)."""
    with np.errstate(over="ignore"):
        return x * np.tanh(np.log1p(np.exp(x)))


def prelu(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``x`` where ``x >= 0``, else the slope of its channel (or the one shared slope) times
    ``x``, as ``torch.nn.functional.prelu``."""
    slopes = weight.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, x * slopes)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the channel axis, shifted by the channel max."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batch_norm(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    *,
    eps: float,
) -> np.ndarray:
    """Inference batch norm, folded to one per-channel scale and shift."""
    scale = weight.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    shift = bias - mean * scale
    channel = (-1,) + (1,) * (x.ndim - 2)
    return x * scale.astype(x.dtype).reshape(channel) + shift.astype(x.dtype).reshape(channel)


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a - b


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * b


def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b``; dividing by a zero element gives inf or NaN as in PyTorch, silently."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def concat(xs: Sequence[np.ndarray]) -> np.ndarray:
    """Join along the channel axis."""
    return np.concatenate(xs, axis=1)
