"""Window views shared by the conv and pool kernels.

A sliding window over the spatial axes of a padded ``[N, C, *spatial]`` array is either a
strided view (``im2col_view``, for the BLAS path) or, tap by tap, a strided slice
(``tap_slices``, for depthwise conv and pooling). Neither copies; only ``pad_spatial`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convdsl.ir.geometry import Pads, conv_transpose_full_size, effective_kernel

Index = tuple[slice, ...]


def pad_spatial(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """Pad the spatial axes with a constant; returns ``x`` itself when there is nothing to pad."""
    if all(before == 0 and after == 0 for before, after in pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), *pads), mode="constant", constant_values=value)


def window_extent_pads(
    sizes: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
    out_sizes: tuple[int, ...],
) -> Pads:
    """``pads`` with the end grown so that ``out_sizes`` whole windows fit (ceil-mode pooling)."""
    grown = []
    for n, k, s, d, (before, after), o in zip(
        sizes, kernel, stride, dilation, pads, out_sizes, strict=True
    ):
        # o windows span exactly what a transposed conv spreads o pixels over.
        needed = conv_transpose_full_size(o, k, s, d)
        grown.append((before, max(after, needed - n - before)))
    return tuple(grown)


def tap_slices(
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out_sizes: tuple[int, ...],
) -> Iterator[tuple[tuple[int, ...], Index]]:
    """For every kernel tap, its index and the slice of the padded input it reads.

    The slice has shape ``[N, C, *out_sizes]``: tap ``t`` of output ``o`` reads ``o*s + t*d``.
    """
    for taps in itertools.product(*(range(k) for k in kernel)):
        spatial = tuple(
            slice(t * d, t * d + (o - 1) * s + 1, s)
            for t, s, d, o in zip(taps, stride, dilation, out_sizes, strict=True)
        )
        yield taps, (slice(None), slice(None), *spatial)


def im2col_view(
    xp: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out_sizes: tuple[int, ...],
) -> np.ndarray:
    """Strided view ``[N, C, *out_sizes, *kernel]`` of the windows over padded ``xp``; no copy."""
    rank = len(kernel)
    extents = tuple(effective_kernel(k, d) for k, d in zip(kernel, dilation, strict=True))
    view = sliding_window_view(xp, extents, axis=tuple(range(2, 2 + rank)))
    outputs = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_sizes, stride, strict=True))
    taps = tuple(slice(None, None, d) for d in dilation)
    return view[(slice(None), slice(None), *outputs, *taps)]
