"""The shape rule of ``upscale``: output size from factors or sizes, and the resolved
interpolation attributes every backend reads.

Resolved attributes: ``factors`` (per axis, a ``Fraction``: output elements per input element,
the scale of the coordinate map), ``mode`` (``nearest``, ``linear`` or ``cubic``),
``coordinate`` (one of ``resample.COORDINATES``), and only where they apply ``nearest`` (the
rounding, mode nearest) and ``cubic_coeff``, ``exclude_outside`` (mode cubic). Sizes come
from ``geometry.resize_output_size``; the coordinate maps from ``convdsl.ir.resample``.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from convdsl.ir import geometry, limits
from convdsl.ir.graph import Attrs
from convdsl.ir.shape_rules import Inferred, ShapeError, _bounded, _expect_spatial, per_axis
from convdsl.ir.types import TensorType, format_shape

MODES = (
    "nearest",
    "nearest_exact",
    "linear",
    "bilinear",
    "trilinear",
    "cubic",
    "bicubic",
)
"""``mode=`` keywords: PyTorch's names (``nearest_exact`` is its ``nearest-exact``); the
``bi``/``tri`` spellings insist on 2-D / 3-D inputs."""

_RANK_OF_MODE = {"bilinear": 2, "trilinear": 3, "bicubic": 2}
_BASE_MODE = {
    "nearest_exact": "nearest",
    "bilinear": "linear",
    "trilinear": "linear",
    "bicubic": "cubic",
}

DEFAULT_CUBIC_COEFF = -0.75
"""PyTorch's ``bicubic`` (and ONNX's default ``cubic_coeff_a``); TensorFlow uses -0.5."""


def upscale(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    _expect_spatial(x, "upscale")
    written = attrs["mode"]
    wanted = _RANK_OF_MODE.get(written)
    if wanted is not None and wanted != x.spatial_rank:
        raise ShapeError(
            f"mode={written} is for {wanted}-D inputs; this input is {x.spatial_rank}-D "
            f"{format_shape(x.shape)}",
            arg="mode",
            hint=f"mode={_BASE_MODE[written]} interpolates along every spatial axis of any rank",
        )
    mode = _BASE_MODE.get(written, written)
    spatial, factors = _sizes(attrs, x)
    resolved: dict[str, Any] = {
        "factors": factors,
        "mode": mode,
        "coordinate": _coordinate(attrs, written),
    }
    if mode == "nearest":
        resolved["nearest"] = _rounding(attrs, written)
    elif attrs["nearest"] is not None:
        raise ShapeError(
            f"nearest={attrs['nearest']} chooses how mode=nearest rounds; mode={written} "
            "interpolates and does not round",
            arg="nearest",
        )
    for name, default in (("cubic_coeff", DEFAULT_CUBIC_COEFF), ("exclude_outside", False)):
        if mode == "cubic":
            resolved[name] = default if attrs[name] is None else attrs[name]
        elif attrs[name] is not None:
            raise ShapeError(f"{name} applies only to mode=cubic", arg=name)
    out = x.with_shape((x.batch, x.channels, *spatial))
    _bounded(limits.dims_problem(out), "factor" if attrs["size"] is None else "size")
    return Inferred((out,), Attrs(resolved))


def _sizes(attrs: Attrs, x: TensorType) -> tuple[tuple[int, ...], tuple[Fraction, ...]]:
    """Output sizes and the per-axis scales of the coordinate map (output per input)."""
    rank = x.spatial_rank
    if attrs["factor"] is not None and attrs["size"] is not None:
        raise ShapeError("give a factor or size=[...], not both", arg="size")
    if attrs["size"] is not None:
        sizes = per_axis(attrs["size"], rank, "size", 1)
        return sizes, tuple(Fraction(o, n) for o, n in zip(sizes, x.spatial, strict=True))
    if attrs["factor"] is None:
        raise ShapeError("needs a factor (upscale(x, 2)) or an output size=[...]")
    value = attrs["factor"]
    written = value if isinstance(value, tuple) else (value,) * rank
    factors = _factors(written, rank)
    sizes = tuple(
        geometry.resize_output_size(n, f) for n, f in zip(x.spatial, factors, strict=True)
    )
    for axis, (n, f, size) in enumerate(zip(x.spatial, factors, sizes, strict=True)):
        if size < 1:
            raise ShapeError(
                f"factor {written[axis]} leaves nothing of axis {x.axis_name(axis)}: "
                f"floor({n} * {f}) = {size}",
                arg="factor",
            )
    if attrs["recompute_scale"]:  # PyTorch recompute_scale_factor=True: map by the sizes
        factors = tuple(Fraction(o, n) for o, n in zip(sizes, x.spatial, strict=True))
    return sizes, factors


def _factors(values: tuple[Any, ...], rank: int) -> tuple[Fraction, ...]:
    if len(values) != rank:
        raise ShapeError(
            f"factor: expected one number or {rank} (one per spatial axis), found {len(values)}",
            arg="factor",
        )
    return tuple(exact_factor(v) for v in values)


def exact_factor(value: int | float) -> Fraction:
    """``value`` as a fraction ``p/q`` with ``p, q <= MAX_EXTENT``: an integer as it is, a
    float as the simplest such fraction whose nearest double it is (``1.5`` is 3/2, ``0.1``
    is 1/10, ``2/3`` is 2/3), so that output sizes ``n * p // q`` are exact."""
    if value <= 0:
        raise ShapeError(f"factor: expected positive numbers, found {value}", arg="factor")
    if isinstance(value, int):
        _bounded(limits.size_problem("factor", value), "factor")
        return Fraction(value)
    if value > limits.MAX_EXTENT:
        _bounded(limits.size_problem("factor", int(value)), "factor")
    simple = Fraction(value).limit_denominator(limits.MAX_EXTENT)
    if simple == 0 or float(simple) != value:
        raise ShapeError(
            f"factor {value} is not a ratio p/q of integers up to 2**24",
            arg="factor",
            hint="give the output size=[...] instead",
        )
    return simple


def _coordinate(attrs: Attrs, mode: str) -> str:
    coordinate = attrs["coordinate"]
    if attrs["align_corners"]:
        if mode in ("nearest", "nearest_exact"):
            raise ShapeError(
                "align_corners applies only to linear and cubic modes (as in PyTorch)",
                arg="align_corners",
                hint="ONNX's nearest with aligned corners is coordinate=align_corners",
            )
        if coordinate not in (None, "align_corners"):
            raise ShapeError(
                f"align_corners=true and coordinate={coordinate} disagree",
                arg="align_corners",
                hint="align_corners=true is coordinate=align_corners",
            )
        return "align_corners"
    if mode == "nearest_exact" and coordinate is not None:
        raise ShapeError(
            "mode=nearest_exact is coordinate=half_pixel with nearest=round_prefer_ceil",
            arg="coordinate",
            hint="write mode=nearest to choose the coordinate transform and the rounding",
        )
    if coordinate is not None:
        return str(coordinate)
    return "asymmetric" if mode == "nearest" else "half_pixel"


def _rounding(attrs: Attrs, mode: str) -> str:
    if mode == "nearest_exact":
        if attrs["nearest"] is not None:
            raise ShapeError(
                "mode=nearest_exact rounds half up (nearest=round_prefer_ceil)",
                arg="nearest",
                hint="write mode=nearest to choose the rounding",
            )
        return "round_prefer_ceil"
    return "floor" if attrs["nearest"] is None else str(attrs["nearest"])
