"""Convolution and transposed convolution kernels (zero padding, PyTorch weight layouts).

``conv`` is im2col plus one (group-batched) matmul, except when every group reads a single input
channel (depthwise, any multiplier), where a loop over kernel taps of shifted slices times
per-channel weights avoids building columns that are mostly the input repeated ``k**d`` times.
``conv_transpose`` multiplies each input pixel by the whole kernel in one matmul over input
channels and scatter-adds the resulting columns tap by tap; no zero-stuffed input is ever built.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from convdsl.backends.numpy.windows import im2col_view, pad_spatial, tap_slices
from convdsl.ir.geometry import Pads, conv_output_size, conv_transpose_output_size


def conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
    groups: int,
) -> np.ndarray:
    """Grouped, strided, dilated convolution; ``w`` is ``[O, C // groups, *K]``.

    >>> conv(np.ones((1, 1, 4)), np.ones((1, 1, 3)), None,
    ...      stride=(1,), dilation=(1,), pads=((1, 1),), groups=1)[0, 0]
    array([2., 3., 3., 2.])
    """
    kernel = w.shape[2:]
    out_sizes = tuple(
        conv_output_size(n, k, s, d, before, after)
        for n, k, s, d, (before, after) in zip(
            x.shape[2:], kernel, stride, dilation, pads, strict=True
        )
    )
    xp = pad_spatial(x, pads)
    if w.shape[1] == 1:
        out = _depthwise(xp, w, stride, dilation, out_sizes)
    else:
        out = _im2col_matmul(xp, w, groups, stride, dilation, out_sizes)
    if b is not None:
        out += _per_channel(b, len(kernel))
    return out.astype(x.dtype, copy=False)


def _depthwise(
    xp: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out_sizes: tuple[int, ...],
) -> np.ndarray:
    """One input channel per group: output channel ``c*m + j`` reads input channel ``c``."""
    n, c = xp.shape[:2]
    kernel = w.shape[2:]
    multiplier = w.shape[0] // c
    dtype = np.result_type(xp, w)
    weights = w.reshape(c, multiplier, *kernel)
    out = np.zeros((n, c, multiplier, *out_sizes), dtype=dtype)
    term = np.empty_like(out)
    broadcast = (1, c, multiplier) + (1,) * len(kernel)
    for taps, index in tap_slices(kernel, stride, dilation, out_sizes):
        tap: tuple[slice | int, ...] = (slice(None), slice(None), *taps)
        tap_weight = weights[tap].reshape(broadcast)
        np.multiply(xp[index][:, :, None], tap_weight, out=term)
        out += term
    return out.reshape(n, c * multiplier, *out_sizes)


def _im2col_matmul(
    xp: np.ndarray,
    w: np.ndarray,
    groups: int,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    out_sizes: tuple[int, ...],
) -> np.ndarray:
    n = xp.shape[0]
    out_channels, group_channels = w.shape[:2]
    kernel = w.shape[2:]
    rank = len(kernel)
    windows = im2col_view(xp, kernel, stride, dilation, out_sizes)
    # Columns [N, G, C/G * K, P] so the matmul lands directly in [N, O, P] order.
    channels_taps_first = (0, 1, *range(2 + rank, 2 + 2 * rank), *range(2, 2 + rank))
    windows = windows.transpose(channels_taps_first)
    column_shape = (groups, group_channels * math.prod(kernel), math.prod(out_sizes))
    weights = w.reshape(groups, out_channels // groups, -1)
    out = np.empty((n, groups, out_channels // groups, column_shape[2]), np.result_type(xp, w))
    # The columns are k**d times the input: build them a few batch entries at a time so a large
    # batch does not allocate (and stream through) gigabytes of columns at once.
    chunk = max(1, COLUMN_BYTES // (math.prod(column_shape) * xp.itemsize))
    for start in range(0, n, chunk):
        columns = windows[start : start + chunk].reshape(-1, *column_shape)
        np.matmul(weights, columns, out=out[start : start + chunk])
    return out.reshape(n, out_channels, *out_sizes)


COLUMN_BYTES = 64 << 20
"""The most im2col column bytes ``conv`` builds at once (at least one batch entry's worth)."""


def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
    output_padding: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    """Transposed convolution; ``w`` is ``[C, O // groups, *K]``.

    The full result (``geometry.conv_transpose_full_size`` per axis) is cropped by ``(before,
    after)`` and then extended by ``output_padding`` at the end, where only the bias lands.

    >>> conv_transpose(np.ones((1, 1, 2)), np.ones((1, 1, 2)), None, stride=(2,),
    ...                dilation=(1,), pads=((1, 0),), output_padding=(1,), groups=1)[0, 0]
    array([1., 1., 1., 0.])
    """
    n, c = x.shape[:2]
    sizes = x.shape[2:]
    kernel = w.shape[2:]
    group_out = w.shape[1]
    out_sizes = tuple(
        conv_transpose_output_size(size, k, s, d, before, after, extra)
        for size, k, s, d, (before, after), extra in zip(
            sizes, kernel, stride, dilation, pads, output_padding, strict=True
        )
    )
    # Every input pixel times the whole kernel: columns [N, G, O/G, *K, *sizes].
    weights = w.reshape(groups, c // groups, -1).transpose(0, 2, 1)
    pixels = x.reshape(n, groups, c // groups, math.prod(sizes))
    columns = np.matmul(weights, pixels).reshape(n, groups, group_out, *kernel, *sizes)
    out = np.zeros((n, groups, group_out, *out_sizes), dtype=columns.dtype)
    everything = (slice(None),) * 3
    for taps in itertools.product(*(range(k) for k in kernel)):
        placed = _transpose_tap(taps, sizes, stride, dilation, pads, out_sizes)
        if placed is not None:
            dst, src = placed
            out[(*everything, *dst)] += columns[(*everything, *taps, *src)]
    out = out.reshape(n, groups * group_out, *out_sizes)
    if b is not None:
        out += _per_channel(b, len(kernel))
    return out.astype(x.dtype, copy=False)


def _transpose_tap(
    taps: tuple[int, ...],
    sizes: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: Pads,
    out_sizes: tuple[int, ...],
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Output and input slices of one tap, or None if the crop removes all of its positions.

    Input ``i`` reaches full-result position ``t*d + i*s``, i.e. output ``t*d + i*s - before``.
    """
    dst, src = [], []
    for t, size, s, d, (before, _), out_size in zip(
        taps, sizes, stride, dilation, pads, out_sizes, strict=True
    ):
        offset = t * d - before
        first = max(0, -(offset // s))
        last = min(size - 1, (out_size - 1 - offset) // s)
        if first > last:
            return None
        start = offset + first * s
        dst.append(slice(start, start + (last - first) * s + 1, s))
        src.append(slice(first, last + 1))
    return tuple(dst), tuple(src)


def _per_channel(v: np.ndarray, rank: int) -> np.ndarray:
    """``[C]`` shaped to broadcast against ``[N, C, *spatial]``."""
    return v.reshape((1, -1) + (1,) * rank)
