"""Shape rules of the ops that move data along one axis: concat, slice, split and
space_to_depth.

Resolved attributes name the axis by its non-negative index and give explicit bounds, so a
backend never sees a negative axis, an ``end`` past the axis or a ``parts`` count: a slice (and
each output of a split) is ``axis``, ``start`` (the first index read), ``step`` and ``size``
(how many). The clamping rules of ONNX ``Slice`` are in ``geometry.slice_range``.
"""

from __future__ import annotations

from collections.abc import Sequence

from convdsl.ir import geometry, limits
from convdsl.ir.graph import Attrs
from convdsl.ir.shape_rules import Inferred, ShapeError
from convdsl.ir.shape_rules import _expect_rank as expect_rank
from convdsl.ir.types import Dim, TensorType, format_shape


def axis_index(axis: int, x: TensorType) -> int:
    """``axis`` counted from the end when negative (as in PyTorch and NumPy)."""
    if not -x.rank <= axis < x.rank:
        raise ShapeError(
            f"axis {axis} is out of range for the rank-{x.rank} tensor {format_shape(x.shape)} "
            f"(expected {-x.rank} to {x.rank - 1})",
            arg="axis",
        )
    return axis + x.rank if axis < 0 else axis


def _axis_name(axis: int, x: TensorType) -> str:
    if axis == 0:
        return "the batch axis"
    if axis == 1:
        return "channels"
    return f"{x.axis_name(axis - 2)} (axis {axis})"


def _fixed_batch(x: TensorType, index: int | None = None) -> int:
    """The batch of ``x``, which an op along the batch axis needs as a number."""
    batch = x.batch
    if not isinstance(batch, int):
        which = "" if index is None else f" (input {index})"
        raise ShapeError(
            f"along the batch axis (axis 0) the batch size must be a number, found the "
            f"symbolic batch '{batch}'{which}",
            arg="axis",
            hint="declare the input with a number for its batch, e.g. f32[2, ...]",
        )
    return batch


def concat(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    if len(inputs) < 2:
        raise ShapeError(f"expected at least 2 tensors, found {len(inputs)}", arg="xs")
    first = inputs[0]
    axis = axis_index(attrs["axis"], first)
    along = _axis_name(axis, first)
    for i, x in enumerate(inputs[1:], start=2):
        others_match = x.rank == first.rank and all(
            a == b for d, (a, b) in enumerate(zip(x.shape, first.shape, strict=True)) if d != axis
        )
        if not others_match:
            joins = "all but channels (concat joins along channels)"
            if axis != 1:
                joins = f"all dims but {along}, the concat axis"
            raise ShapeError(
                f"inputs must match in {joins}: input 1 "
                f"is {format_shape(first.shape)}, input {i} is {format_shape(x.shape)}",
                hint="crop, pad or upscale one of them first",
            )
        if x.dtype != first.dtype:
            raise ShapeError(
                f"dtypes differ: input 1 is {first.dtype.value}, input {i} is {x.dtype.value}"
            )
    if axis == 0:
        joined: Dim = sum(_fixed_batch(x, i) for i, x in enumerate(inputs, start=1))
    else:
        joined = sum(x.shape[axis] for x in inputs)  # type: ignore[misc]
    out = first.with_shape((*first.shape[:axis], joined, *first.shape[axis + 1 :]))
    return Inferred((out,), Attrs(axis=axis))


def _bounded(problem: str | None, arg: str) -> None:
    if problem is not None:
        raise ShapeError(problem, arg=arg, hint=limits.HINT)


def _sliced(x: TensorType, axis: int, start: int, step: int, size: int) -> Inferred:
    out = x.with_shape((*x.shape[:axis], size, *x.shape[axis + 1 :]))
    return Inferred((out,), Attrs(axis=axis, start=start, step=step, size=size))


def _length(x: TensorType, axis: int) -> int:
    """The axis' size: an int, or a size expression (which computes like one)."""
    return _fixed_batch(x) if axis == 0 else x.shape[axis]  # type: ignore[return-value]


def slice_(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    axis = axis_index(attrs["axis"], x)
    n = _length(x, axis)
    start, end, step = attrs["start"], attrs["end"], attrs["step"]
    if step == 0:
        raise ShapeError("step: expected a non-zero integer, found 0", arg="step")
    for name, value in (("start", start), ("end", end), ("step", step)):
        if value is not None:
            _bounded(limits.size_problem(name, abs(value)), name)
    first, size = geometry.slice_range(n, start, end, step)
    if size < 1:
        shown = f"{'' if start is None else start}:{'' if end is None else end}:{step}"
        raise ShapeError(
            f"slice [{shown}] of {_axis_name(axis, x)}, of size {n}, is empty",
            arg="end" if end is not None else "start",
            hint="start and end are clamped to the axis as in ONNX Slice; negative values "
            "count from its end",
        )
    return _sliced(x, axis, first, step, size)


def split(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    """One output of a split: ``attrs["index"]`` (set by the front end, which makes one node per
    output) picks it."""
    x = inputs[0]
    axis = axis_index(attrs["axis"], x)
    n = _length(x, axis)
    sizes, parts = attrs["sizes"], attrs["parts"]
    if (sizes is None) == (parts is None):
        raise ShapeError("give the sizes of the parts or parts=COUNT, one of them", arg="sizes")
    if parts is not None:
        if parts < 1:
            raise ShapeError(f"parts: expected a positive integer, found {parts}", arg="parts")
        if n % parts != 0:
            raise ShapeError(
                f"parts={parts} does not divide {_axis_name(axis, x)} of size {n}",
                arg="parts",
                hint="give the sizes of the parts as a list to split unevenly",
            )
        sizes = (n // parts,) * parts
    else:
        if isinstance(sizes, int):
            raise ShapeError(
                f"sizes: expected a list of sizes, found the integer {sizes}",
                arg="sizes",
                hint=f"parts={sizes} splits into {sizes} equal parts; [a, b, ...] gives sizes",
            )
        if any(size < 1 for size in sizes):
            raise ShapeError(f"sizes: expected positive sizes, found {list(sizes)}", arg="sizes")
        if sum(sizes) != n:
            raise ShapeError(
                f"sizes {list(sizes)} add up to {sum(sizes)}, but {_axis_name(axis, x)} of "
                f"{format_shape(x.shape)} has {n}",
                arg="sizes",
            )
    index = attrs["index"]
    return _sliced(x, axis, sum(sizes[:index]), 1, sizes[index])


def space_to_depth(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    r = attrs["factor"]
    expect_rank(x, 4, "space_to_depth")
    if r < 1:
        raise ShapeError(f"factor: expected a positive integer, found {r}", arg="factor")
    _bounded(limits.size_problem("factor", r), "factor")
    for axis, n in enumerate(x.spatial):
        if n % r != 0:
            raise ShapeError(
                f"factor {r} must divide the spatial sizes, found {n} on axis "
                f"{x.axis_name(axis)} of {format_shape(x.shape)}",
                arg="factor",
                hint="crop or pad the input to a multiple of the factor first",
            )
    h, w = x.spatial
    out = x.with_shape((x.batch, x.channels * r * r, h // r, w // r))
    _bounded(limits.dims_problem(out), "factor")
    return Inferred((out,), attrs)
