"""Kernels that move pixels without mixing channels: upscale, pixel shuffle, pad and crop.

Upscaling is separable: nearest is one broadcast copy, linear is a gather of the two source
rows plus a lerp per axis. ``pad`` with all-zero widths and ``crop`` return views of the input.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from convdsl.ir.geometry import Pads

_COPY_PAD_MODES: dict[str, Literal["reflect", "edge"]] = {"reflect": "reflect", "replicate": "edge"}


def upscale(
    x: np.ndarray, *, factors: tuple[int, ...], mode: str, align_corners: bool = False
) -> np.ndarray:
    """Upsample every spatial axis by an integer factor; ``mode`` is ``nearest`` or ``linear``.

    >>> upscale(np.array([[[0.0, 4.0]]]), factors=(2,), mode="linear")[0, 0]
    array([0., 1., 3., 4.])
    """
    if mode == "nearest":
        return _nearest(x, factors)
    if mode != "linear":
        raise ValueError(f"unknown upscale mode {mode!r}")
    out = x
    for axis, factor in enumerate(factors, start=2):
        out = _linear_axis(out, axis, factor, align_corners)
    return out


def _nearest(x: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """``out[i] = in[i // f]`` on every axis, as one broadcast copy."""
    n, c = x.shape[:2]
    sizes = x.shape[2:]
    split = [d for size in sizes for d in (size, 1)]
    stretched = [d for size, f in zip(sizes, factors, strict=True) for d in (size, f)]
    out = np.broadcast_to(x.reshape(n, c, *split), (n, c, *stretched))
    return out.reshape(n, c, *(size * f for size, f in zip(sizes, factors, strict=True)))


def _linear_axis(x: np.ndarray, axis: int, factor: int, align_corners: bool) -> np.ndarray:
    size = x.shape[axis]
    out_size = size * factor
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        src = dst * ((size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(dst)
    else:
        # Half-pixel centres; PyTorch clamps the left edge to 0 instead of extrapolating.
        src = np.maximum((dst + 0.5) / factor - 0.5, 0.0)
    lo = np.floor(src).astype(np.intp)
    hi = np.minimum(lo + 1, size - 1)
    weight = (src - lo).astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
    return (1 - weight) * x.take(lo, axis=axis) + weight * x.take(hi, axis=axis)


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
