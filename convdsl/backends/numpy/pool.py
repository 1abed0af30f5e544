"""Pooling kernels: windowed max and average, and their global forms.

Windows are walked tap by tap (``k**d`` strided slices, each covering every output pixel); the
padded input is grown at the end when ``ceil_mode`` needs a partial last window. Max pooling
pads with ``-inf``; average pooling sums zeros and divides by a separable per-window count.
"""

from __future__ import annotations

import numpy as np

from convdsl.backends.numpy.windows import pad_spatial, tap_slices, window_extent_pads
from convdsl.ir.geometry import Pads, pool_output_size


def max_pool(
    x: np.ndarray,
    *,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
    ceil_mode: bool = False,
) -> np.ndarray:
    """Max over each (dilated) window; padding never wins.

    >>> max_pool(np.array([[[1.0, 3.0, 2.0]]]), kernel=(2,), stride=(2,), dilation=(1,),
    ...          pads=((0, 0),), ceil_mode=True)[0, 0]
    array([3., 2.])
    """
    out_sizes = _out_sizes(x, kernel, stride, dilation, pads, ceil_mode)
    grown = window_extent_pads(x.shape[2:], kernel, stride, dilation, pads, out_sizes)
    xp = pad_spatial(x, grown, value=-np.inf)
    taps = tap_slices(kernel, stride, dilation, out_sizes)
    _, first = next(taps)
    out = xp[first].copy()
    for _, index in taps:
        np.maximum(out, xp[index], out=out)
    return out


def avg_pool(
    x: np.ndarray,
    *,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pads: Pads,
    ceil_mode: bool = False,
    include_pad: bool = False,
) -> np.ndarray:
    """Mean over each window.

    ``include_pad=False`` divides by the real elements in the window (TF ``same``, PyTorch
    ``count_include_pad=False``); ``include_pad=True`` by the elements inside the padded input,
    so a ceil-mode window hanging past the padded end is not charged for the overhang.

    >>> avg_pool(np.array([[[2.0, 4.0]]]), kernel=(2,), stride=(1,), pads=((1, 0),),
    ...          include_pad=True)[0, 0]
    array([1., 3.])
    """
    dilation = (1,) * len(kernel)
    out_sizes = _out_sizes(x, kernel, stride, dilation, pads, ceil_mode)
    grown = window_extent_pads(x.shape[2:], kernel, stride, dilation, pads, out_sizes)
    xp = pad_spatial(x, grown)
    out = np.zeros(x.shape[:2] + out_sizes, dtype=x.dtype)
    for _, index in tap_slices(kernel, stride, dilation, out_sizes):
        out += xp[index]
    counts = np.ones((), dtype=x.dtype)
    for axis, (n, k, s, (before, after), o) in enumerate(
        zip(x.shape[2:], kernel, stride, pads, out_sizes, strict=True)
    ):
        lo, hi = (0, before + n + after) if include_pad else (before, before + n)
        starts = np.arange(o) * s
        count = np.minimum(starts + k, hi) - np.maximum(starts, lo)
        # A window made only of padding (rejected by the shape checker) averages to 0, not nan.
        count = np.maximum(count, 1).astype(x.dtype)
        counts = counts * count.reshape((-1,) + (1,) * (len(kernel) - 1 - axis))
    out /= counts
    return out


def global_avg_pool(x: np.ndarray) -> np.ndarray:
    """Mean over all spatial axes, kept as size-1 axes: ``[N, C, 1, ...]``."""
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


def global_max_pool(x: np.ndarray) -> np.ndarray:
    """Max over all spatial axes, kept as size-1 axes: ``[N, C, 1, ...]``."""
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


def _out_sizes(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
    ceil_mode: bool,
) -> tuple[int, ...]:
    return tuple(
        pool_output_size(n, k, s, d, before, after, ceil_mode)
        for n, k, s, d, (before, after) in zip(
            x.shape[2:], kernel, stride, dilation, pads, strict=True
        )
    )
