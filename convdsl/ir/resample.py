"""Where a resized tensor reads its input: the coordinate transforms and rounding of ``upscale``,
as exact integer maps that every backend evaluates the same way.

On each spatial axis, output index ``x`` reads the *source coordinate* ``(a*x + b) / c`` of an
input of length ``n`` (integers, ``c > 0``; ``r = 1/factor`` is the input length per output
element, a ``Fraction``):

* ``half_pixel`` (ONNX; PyTorch ``align_corners=False``): ``(x + 1/2) * r - 1/2``
* ``pytorch_half_pixel`` (ONNX): the same, but ``0`` when the output length is 1
* ``align_corners`` (PyTorch ``align_corners=True``, ONNX): ``x * (n-1)/(out-1)``, ``0`` when
  ``out`` is 1
* ``asymmetric`` (ONNX; PyTorch ``nearest``): ``x * r``

Nearest rounds the coordinate to an input index, ``floor((A*x + B) / C)`` with integers again
(``nearest_map``), then clamps it into ``[0, n-1]``. Linear and cubic modes split it into
``floor`` and a fraction ``(a*x + b - floor*c) / c``. Integers keep every backend exact: no
float rounding moves a coordinate that lies on an integer (PyTorch and ONNX Runtime compute
these in float32 and sometimes do). With factors and sizes bounded by ``limits.MAX_EXTENT``,
``|A*x + B| < 2**52``: exact in ``int64`` and in ``float64``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from convdsl.ir import geometry

COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
"""Coordinate transforms, by their ONNX names."""

ROUNDINGS = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
"""How ``mode=nearest`` rounds a source coordinate, by ONNX's ``nearest_mode`` names."""


@dataclass(frozen=True, slots=True)
class AxisMap:
    """Output index ``x`` (of ``length``) reads source coordinate ``(a*x + b) / c`` of an
    input of length ``size``."""

    size: int
    length: int
    a: int
    b: int
    c: int


def axis_map(n: int, factor: Fraction, coordinate: str) -> AxisMap:
    """The source coordinate map of one axis of length ``n`` resized by ``factor`` (output
    elements per input element) to ``geometry.resize_output_size(n, factor)``."""
    out = geometry.resize_output_size(n, factor)
    r = 1 / factor
    p, q = r.numerator, r.denominator
    if coordinate == "asymmetric":
        return AxisMap(n, out, p, 0, q)
    if coordinate == "align_corners" or (coordinate == "pytorch_half_pixel" and out == 1):
        if out == 1:
            return AxisMap(n, out, 0, 0, 1)
        return AxisMap(n, out, n - 1, 0, out - 1)
    if coordinate in ("half_pixel", "pytorch_half_pixel"):
        return AxisMap(n, out, 2 * p, p - q, 2 * q)
    raise ValueError(f"unknown coordinate transform {coordinate!r}")


def nearest_map(m: AxisMap, rounding: str) -> AxisMap:
    """``(A, B, C)`` with ``floor((A*x + B) / C)`` the coordinate rounded as ``rounding`` says
    (``ceil(v) = floor(v + (c-1)/c)``, ties: ``round_prefer_ceil = floor(v + 1/2)``,
    ``round_prefer_floor = ceil(v - 1/2)``), before clamping into the input."""
    offset = {
        "floor": 0,
        "ceil": 2 * m.c - 2,
        "round_prefer_floor": m.c - 1,
        "round_prefer_ceil": m.c,
    }.get(rounding)
    if offset is None:
        raise ValueError(f"unknown nearest rounding {rounding!r}")
    return AxisMap(m.size, m.length, 2 * m.a, 2 * m.b + offset, 2 * m.c)


def cubic_weights(t: Any, coeff: float) -> tuple[Any, Any, Any, Any]:
    """Keys' cubic convolution weights of the taps ``floor-1 .. floor+2`` at fraction ``t`` (a
    number or an array) (PyTorch ``bicubic`` with ``coeff = -0.75``; ONNX ``cubic_coeff_a``)."""

    def near(d: Any) -> Any:  # |d| <= 1
        return ((coeff + 2) * d - (coeff + 3)) * d * d + 1

    def far(d: Any) -> Any:  # 1 < |d| < 2
        return ((coeff * d - 5 * coeff) * d + 8 * coeff) * d - 4 * coeff

    return far(t + 1), near(t), near(1 - t), far(2 - t)


# ---- the maps as tables, one row per output index -----------------------------------------


def _positions(m: AxisMap) -> np.ndarray:
    """``a*x + b`` for every output index ``x`` (exact in int64)."""
    return np.arange(m.length, dtype=np.int64) * m.a + m.b


def nearest_indices(m: AxisMap, rounding: str) -> np.ndarray:
    """Input index of every output index: the rounded coordinate, clamped into the input."""
    r = nearest_map(m, rounding)
    return np.clip(_positions(r) // r.c, 0, m.size - 1)


def linear_taps(m: AxisMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, weight of hi)`` per output index; the coordinate is clamped into
    ``[0, n-1]`` first (PyTorch clamps at 0, ONNX Runtime at both ends: the same values)."""
    num = np.clip(_positions(m), 0, (m.size - 1) * m.c)
    lo = num // m.c
    return lo, np.minimum(lo + 1, m.size - 1), (num - lo * m.c) / m.c


def cubic_taps(m: AxisMap, coeff: float, exclude_outside: bool) -> tuple[np.ndarray, np.ndarray]:
    """``[out, 4]`` input indices (taps ``floor-1 .. floor+2`` clamped into the input, as
    PyTorch reads them) and their weights; ``exclude_outside`` (ONNX) drops the taps outside
    the input and rescales the others to sum to 1."""
    num = _positions(m)
    lo = num // m.c
    weights = np.stack(cubic_weights((num - lo * m.c) / m.c, coeff), axis=1)
    taps = lo[:, None] + np.arange(-1, 3)
    if exclude_outside:
        weights = weights * ((taps >= 0) & (taps < m.size))
        weights = weights / weights.sum(axis=1, keepdims=True)
    return np.clip(taps, 0, m.size - 1), weights
