"""Kernels that move pixels without mixing channels: upscale, pixel shuffle, pad and crop.

Upscaling is separable, one axis after the other: nearest is a gather of the source rows,
linear a gather of two plus a lerp, cubic a weighted sum of four. ``pad`` with all-zero
widths and ``crop`` return views of the input.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import numpy as np

from convdsl.ir import resample
from convdsl.ir.geometry import Pads

_COPY_PAD_MODES: dict[str, Literal["reflect", "edge"]] = {"reflect": "reflect", "replicate": "edge"}


def upscale(
    x: np.ndarray,
    *,
    factors: tuple[Fraction, ...],
    mode: str,
    coordinate: str,
    nearest: str = "floor",
    cubic_coeff: float = -0.75,
    exclude_outside: bool = False,
) -> np.ndarray:
    """Resize every spatial axis by its factor (output per input element) with ``mode``
    ``nearest``, ``linear`` or ``cubic``; see ``convdsl.ir.resample`` for the coordinate maps.

    >>> upscale(np.array([[[0.0, 4.0]]]), factors=(Fraction(2),), mode="linear",
    ...         coordinate="half_pixel")[0, 0]
    array([0., 1., 3., 4.])
    """
    out = x
    for axis, factor in enumerate(factors, start=2):
        m = resample.axis_map(out.shape[axis], factor, coordinate)
        if mode == "nearest":
            out = out.take(resample.nearest_indices(m, nearest), axis=axis)
        elif mode == "linear":
            lo, hi, weight = resample.linear_taps(m)
            w = weight.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
            out = (1 - w) * out.take(lo, axis=axis) + w * out.take(hi, axis=axis)
        elif mode == "cubic":
            out = _weighted_axis(out, axis, *resample.cubic_taps(m, cubic_coeff, exclude_outside))
        else:
            raise ValueError(f"unknown upscale mode {mode!r}")
    return out


def _weighted_axis(
    x: np.ndarray, axis: int, indices: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    shape = (-1,) + (1,) * (x.ndim - 1 - axis)
    total = np.zeros(1, dtype=x.dtype)
    for tap in range(indices.shape[1]):
        w = weights[:, tap].astype(x.dtype).reshape(shape)
        total = total + w * x.take(indices[:, tap], axis=axis)
    return total


def pixel_shuffle(x: np.ndarray, *, factor: int, order: str) -> np.ndarray:
    """``[N, C*r*r, H, W] -> [N, C, H*r, W*r]``.

    ``crd`` reads channel ``(c*r + i)*r + j`` (PyTorch ``pixel_shuffle``); ``dcr`` reads
    ``(i*r + j)*C + c`` (TensorFlow ``depth_to_space``), for sub-pixel ``(i, j)``.
    """
    n, channels, h, w = x.shape
    r = factor
    c = channels // (r * r)
    if order == "crd":
        blocks = x.reshape(n, c, r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    elif order == "dcr":
        blocks = x.reshape(n, r, r, c, h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        raise ValueError(f"unknown pixel_shuffle order {order!r}")
    return blocks.reshape(n, c, h * r, w * r)


def pad(x: np.ndarray, *, pads: Pads, mode: str, value: float = 0.0) -> np.ndarray:
    """Pad the spatial axes: ``zero`` (the constant ``value``), ``reflect`` (mirror, edge not
    repeated) or ``replicate`` (repeat the edge). Nothing to pad returns ``x`` itself.

    >>> pad(np.array([[[1.0, 2.0, 3.0]]]), pads=((2, 1),), mode="reflect")[0, 0]
    array([3., 2., 1., 2., 3., 2.])
    """
    if mode != "zero" and mode not in _COPY_PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}")
    if all(before == 0 and after == 0 for before, after in pads):
        return x
    widths = ((0, 0), (0, 0), *pads)
    if mode == "zero":
        return np.pad(x, widths, mode="constant", constant_values=value)
    return np.pad(x, widths, mode=_COPY_PAD_MODES[mode])


def crop(x: np.ndarray, *, starts: tuple[int, ...], sizes: tuple[int, ...]) -> np.ndarray:
    """The spatial box ``[start, start + size)`` on every axis, as a view."""
    box = tuple(slice(start, start + size) for start, size in zip(starts, sizes, strict=True))
    return x[(slice(None), slice(None), *box)]
