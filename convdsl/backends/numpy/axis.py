"""Kernels that move data along one axis: concat, slice (and split's parts), space to depth.

A slice returns a view of its input; the others copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def concat(xs: Sequence[np.ndarray], *, axis: int) -> np.ndarray:
    """Join along ``axis`` (channels are axis 1)."""
    return np.concatenate(xs, axis=axis)


def slice_axis(x: np.ndarray, *, axis: int, start: int, step: int, size: int) -> np.ndarray:
    """Elements ``start + i*step`` (``i < size``) of ``axis``, as a view.

    >>> slice_axis(np.arange(6.0).reshape(1, 6), axis=1, start=4, step=-2, size=3)[0]
    array([4., 2., 0.])
    """
    stop: int | None = start + size * step
    if stop is not None and stop < 0:
        stop = None  # a negative step that runs through index 0 (-1 would mean the last)
    return x[(slice(None),) * axis + (slice(start, stop, step),)]


def space_to_depth(x: np.ndarray, *, factor: int, order: str) -> np.ndarray:
    """``[N, C, H*r, W*r] -> [N, C*r*r, H, W]``, the inverse of ``pixel_shuffle``.

    Input pixel ``(c, h*r + i, w*r + j)`` goes to channel ``c*r*r + i*r + j`` (``crd``, PyTorch
    ``pixel_unshuffle``) or ``(i*r + j)*C + c`` (``dcr``, ONNX ``SpaceToDepth``).
    """
    n, c, height, width = x.shape
    r = factor
    h, w = height // r, width // r
    blocks = x.reshape(n, c, h, r, w, r)
    if order == "crd":
        moved = blocks.transpose(0, 1, 3, 5, 2, 4)
    elif order == "dcr":
        moved = blocks.transpose(0, 3, 5, 1, 2, 4)
    else:
        raise ValueError(f"unknown space_to_depth order {order!r}")
    return moved.reshape(n, c * r * r, h, w)
