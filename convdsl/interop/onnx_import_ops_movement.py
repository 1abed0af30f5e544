"""ONNX ops that move or resample data: Concat, Pad, Resize, Upsample, DepthToSpace,
SpaceToDepth, Slice and Split.

Their sizes, scales, pads and bounds must be constants (initializers, Constant nodes or
folded from them): the language takes them as compile-time arguments. Older opsets' forms
(attributes instead of inputs: Pad and Clip before 11, Slice before 10, Split before 13;
Resize-10 and Upsample with ONNX Runtime's asymmetric coordinates) are read in their own terms.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from convdsl.interop.onnx_import_program import Raw, call, number, per_axis
from convdsl.ir.limits import MAX_EXTENT

if TYPE_CHECKING:
    from convdsl.interop.onnx_import_graph import Importer, OnnxNode


def concat(im: Importer, node: OnnxNode) -> None:
    parts = [im.tensor(node, i) for i in range(len(node.inputs))]
    if len(parts) == 1:
        im.alias(node, parts[0])
        return
    axis = int(node.attr("axis", 1)) % parts[0].rank
    im.define(node, "concat", *(Raw(p.var) for p in parts), axis=None if axis == 1 else axis)


PAD_MODES = {"constant": None, "reflect": Raw("reflect"), "edge": Raw("replicate")}


def pad(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    mode = node.attr("mode", "constant")
    if mode not in PAD_MODES:
        raise im.refuse(node, "expected constant, reflect or edge", "mode")
    if im.opset < 11:
        pads = [int(p) for p in node.attr("pads", [])]
        value = float(node.attr("value", 0.0))
    else:
        given = im.const(node, 1, "pads")
        if given is None:
            raise im.refuse(node, "input 'pads' is missing")
        pads = [int(p) for p in given.ravel()]
        constant = im.const(node, 2, "constant_value")
        value = 0.0 if constant is None or constant.size == 0 else float(constant.ravel()[0])
        axes = im.const(node, 3, "axes")
        if axes is not None:
            pads = _on_axes(im, node, pads, [int(a) for a in axes.ravel()], x.rank)
    if len(pads) != 2 * x.rank:
        raise im.refuse(node, f"expected {2 * x.rank} pads (begin and end of each axis)")
    if any(p < 0 for p in pads):
        raise im.refuse(node, "negative pads (cropping) are not supported")
    if pads[0] or pads[1] or pads[x.rank] or pads[x.rank + 1]:
        raise im.refuse(node, "pads on the batch or channel axis are not supported")
    if not math.isfinite(value):
        raise im.refuse(node, f"the pad value {value} is not supported")
    before, after = pads[2 : x.rank], pads[x.rank + 2 :]
    if not any(before) and not any(after):
        im.alias(node, x)
        return
    amounts = (
        per_axis(before)
        if before == after
        else [[b, a] for b, a in zip(before, after, strict=True)]
    )
    value_arg = value if mode == "constant" and value != 0 else None
    im.define(node, "pad", Raw(x.var), amounts, mode=PAD_MODES[mode], value=value_arg)


def _on_axes(
    im: Importer, node: OnnxNode, pads: list[int], axes: list[int], rank: int
) -> list[int]:
    if len(pads) != 2 * len(axes):
        raise im.refuse(node, f"{len(pads)} pads for {len(axes)} axes")
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis % rank] = pads[i]
        full[axis % rank + rank] = pads[i + len(axes)]
    return full


# ---- Resize and Upsample -------------------------------------------------------------------

COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def resize(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    if im.opset < 11:  # Resize-10: inputs (X, scales), asymmetric coordinates
        _resize_legacy(im, node, x.rank, im.const(node, 1, "scales"))
        return
    for attribute, default in (("antialias", 0), ("keep_aspect_ratio_policy", "stretch")):
        if node.attr(attribute, default) != default:
            raise im.refuse(node, f"only {default!r} is supported", attribute)
    coordinate = node.attr("coordinate_transformation_mode", "half_pixel")
    if coordinate not in COORDINATES:
        raise im.refuse(node, f"convdsl's upscale has {', '.join(COORDINATES)}",
                        "coordinate_transformation_mode")  # fmt: skip
    mode = node.attr("mode", "nearest")
    kwargs: dict[str, Any] = {"coordinate": Raw(coordinate)}
    if mode == "nearest":
        nearest = node.attr("nearest_mode", "round_prefer_floor")
        if nearest not in NEAREST:
            raise im.refuse(node, f"expected one of {', '.join(NEAREST)}", "nearest_mode")
        kwargs["nearest"] = Raw(nearest)
    elif mode == "cubic":
        kwargs["cubic_coeff"] = float(node.attr("cubic_coeff_a", -0.75))
        kwargs["exclude_outside"] = True if node.attr("exclude_outside", 0) else None
    elif mode != "linear":
        raise im.refuse(node, "expected nearest, linear or cubic", "mode")
    axes = node.attr("axes")
    axes = list(range(x.rank)) if axes is None else [int(a) % x.rank for a in axes]
    scales = im.const(node, 2, "scales")
    sizes = im.const(node, 3, "sizes")
    scales = None if scales is None or scales.size == 0 else scales
    if (scales is None) == (sizes is None):
        raise im.refuse(node, "give exactly one of the inputs 'scales' and 'sizes'")
    if scales is not None:
        factor = _spatial(im, node, scales.ravel().tolist(), axes, x.rank, 1.0, "scales")
        _upscale(im, node, x.var, Raw(_factor_text(factor, im)), Raw(mode), kwargs)
        return
    assert sizes is not None
    full = _spatial_sizes(im, node, [int(s) for s in sizes.ravel()], axes, x.rank)
    kwargs["size"] = per_axis(full)
    _upscale(im, node, x.var, None, Raw(mode), kwargs)


def _spatial(im: Importer, node: OnnxNode, values: list[float], axes: list[int], rank: int,
             one: float, what: str) -> list[float]:  # fmt: skip
    """The spatial entries of per-axis values given for ``axes``; batch and channels must
    stay unchanged (``one``)."""
    if len(values) != len(axes):
        raise im.refuse(node, f"{len(values)} values in '{what}' for {len(axes)} axes")
    full = [one] * rank
    for axis, value in zip(axes, values, strict=True):
        full[axis] = value
    if full[0] != one or full[1] != one:
        raise im.refuse(node, f"'{what}' resizes the batch or channel axis")
    if any(not math.isfinite(v) or v <= 0 for v in full[2:]):
        raise im.refuse(node, f"'{what}' must be positive and finite")
    return full[2:]


def _spatial_sizes(im: Importer, node: OnnxNode, sizes: list[int], axes: list[int],
                   rank: int) -> list[int]:  # fmt: skip
    shape = im.static_shape(node.inputs[0]) or (None,) * rank
    wanted = [-1] * rank
    for axis, size in zip(axes, sizes, strict=False):
        wanted[axis] = size
    for axis in (0, 1):
        if wanted[axis] != -1 and wanted[axis] != shape[axis]:
            raise im.refuse(node, "'sizes' resizes the batch or channel axis (or fixes a "
                            "dynamic batch)")  # fmt: skip
    spatial = [w if w != -1 else shape[a] for a, w in enumerate(wanted)][2:]
    if any(s is None for s in spatial):
        raise im.refuse(node, "'sizes' leaves out a dynamic spatial axis")
    return [int(s) for s in spatial]  # type: ignore[arg-type]


def _factor_text(factor: list[float], im: Importer) -> str:
    texts = [number(f, im.dtype) for f in factor]
    return texts[0] if len(set(texts)) == 1 else "[" + ", ".join(texts) + "]"


def _upscale(im: Importer, node: OnnxNode, var: str, factor: Raw | None, mode: Raw,
             kwargs: dict[str, Any]) -> None:  # fmt: skip
    args = (Raw(var),) if factor is None else (Raw(var), factor)
    im.define(node, "upscale", *args, mode=mode, **kwargs)


def _resize_legacy(im: Importer, node: OnnxNode, rank: int, scales: np.ndarray | None) -> None:
    """Resize-10 and Upsample: asymmetric coordinates; nearest reads floor(x / scale)."""
    x = im.tensor(node)
    if scales is None:
        scales_attr = node.attr("scales")
        if scales_attr is None:
            raise im.refuse(node, "input 'scales' is missing")
        scales = np.asarray(scales_attr, dtype=np.float32)
    factor = _spatial(im, node, scales.ravel().tolist(), list(range(rank)), rank, 1.0, "scales")
    mode = node.attr("mode", "nearest")
    if mode == "nearest":
        if any(f < 1 for f in factor):
            raise im.refuse(node, "nearest downscaling before opset 11 rounds in a way convdsl's "
                            "upscale has no mode for", "mode")  # fmt: skip
        kwargs: dict[str, Any] = {"coordinate": Raw("asymmetric"), "nearest": Raw("floor")}
    elif mode in ("linear", "bilinear"):
        kwargs = {"coordinate": Raw("asymmetric")}
        mode = "linear"
    else:
        raise im.refuse(node, "expected nearest or linear", "mode")
    _upscale(im, node, x.var, Raw(_factor_text(factor, im)), Raw(mode), kwargs)


def upsample(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    scales = im.const(node, 1, "scales") if len(node.inputs) > 1 else None
    _resize_legacy(im, node, x.rank, scales)


# ---- depth and space ------------------------------------------------------------------------


def depth_to_space(im: Importer, node: OnnxNode) -> None:
    x = _four_d(im, node)
    mode = node.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise im.refuse(node, "expected DCR or CRD", "mode")
    factor = int(node.attr("blocksize", 0))
    im.define(node, "pixel_shuffle", Raw(x), factor, order=Raw(mode.lower()))


def space_to_depth(im: Importer, node: OnnxNode) -> None:
    x = _four_d(im, node)
    factor = int(node.attr("blocksize", 0))
    im.define(node, "space_to_depth", Raw(x), factor, order=Raw("dcr"))


def _four_d(im: Importer, node: OnnxNode) -> str:
    x = im.tensor(node)
    if x.rank != 4:
        raise im.refuse(node, f"convdsl's version takes 4-D inputs, found {x.rank}-D")
    return x.var


# ---- Slice and Split ------------------------------------------------------------------------


def slice_(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    if im.opset < 10:
        starts, ends = node.attr("starts", []), node.attr("ends", [])
        axes, steps = node.attr("axes"), None
    else:
        starts, ends, axes, steps = (
            None if (v := im.const(node, i, what)) is None else v.ravel().tolist()
            for i, what in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))
        )
        if starts is None or ends is None:
            raise im.refuse(node, "inputs 'starts' and 'ends' are required")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise im.refuse(node, "starts, ends, axes and steps differ in length")
    text = x.var
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        step = int(step)
        if step == 0:
            raise im.refuse(node, "a step of 0")
        first, stop = (
            _bound(im, node, int(start), step, True),
            _bound(im, node, int(end), step, False),
        )
        if step == 1 and first in (None, 0) and stop is None:
            continue  # the whole axis
        text = call("slice", Raw(text), axis=int(axis) % x.rank, start=first, end=stop,
                    step=None if step == 1 else step)  # fmt: skip
    if text == x.var:
        im.alias(node, x)
    else:
        im.define_expr(node, text)


def _bound(im: Importer, node: OnnxNode, value: int, step: int, start: bool) -> int | None:
    """A slice bound; beyond any size (``INT64_MAX`` from exporters) it means "to the end" in
    the direction of ``step`` (None), or an empty slice, which is refused."""
    if abs(value) < MAX_EXTENT:
        return value
    open_end = (value > 0) == (step > 0)  # past the end the step walks towards
    if start == open_end:
        raise im.refuse(node, f"the slice is empty ({'start' if start else 'end'} {value})")
    return None


def split(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    axis = int(node.attr("axis", 0)) % x.rank
    count = len(node.outputs)
    if im.opset < 13:
        given = node.attr("split")
        sizes = None if given is None else [int(s) for s in given]
    else:
        array = im.const(node, 1, "split")
        sizes = None if array is None else [int(s) for s in array.ravel()]
    if count == 1:
        im.alias(node, x)
        return
    parts = None
    if sizes is None:
        dim = (im.static_shape(node.inputs[0]) or (None,) * x.rank)[axis]
        chunk = -(-dim // count) if dim is not None else None
        if dim is not None and chunk is not None and dim % count:  # opset 18's uneven split
            sizes = [chunk] * (count - 1) + [dim - chunk * (count - 1)]
        else:
            parts = count
    args = (Raw(x.var),) if sizes is None else (Raw(x.var), sizes)
    text = call("split", *args, parts=parts, axis=None if axis == 1 else axis)
    im.define_many(node, text)


CONVERTERS = {
    "Concat": concat,
    "Pad": pad,
    "Resize": resize,
    "Upsample": upsample,
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
    "Slice": slice_,
    "Split": split,
}
