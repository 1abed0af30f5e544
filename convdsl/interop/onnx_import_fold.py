"""Folding ONNX nodes whose inputs are all constants (shape plumbing, scaled constants).

Exporters leave small constant computations in graphs (``Cast``, ``Unsqueeze`` and ``Concat``
of a Resize's scales, a ``Div`` of a constant by a constant). Only ops whose result is no
larger than their inputs, or a broadcast of them checked against the limit first, are folded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from convdsl.interop.onnx_import_load import MAX_TENSOR_ELEMENTS, require_onnx, tensor_array

Folder = Callable[[dict[str, Any], list[Any]], list[np.ndarray]]


def _arith(op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Folder:
    def run(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
        a, b = xs[0], xs[1]
        shape = np.broadcast_shapes(a.shape, b.shape)
        if math.prod(shape) > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"the broadcast shape {list(shape)} is too large")
        result = op(a, b)
        return [np.asarray(result).astype(np.result_type(a, b), copy=False)]

    return run


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if np.any(b == 0):
            raise ValueError("integer division by zero")
        return np.trunc(a / b).astype(np.result_type(a, b))  # ONNX integer Div truncates
    return np.divide(a, b)


def _cast(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    onnx = require_onnx()
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if dtype.kind not in "fiub":
        raise ValueError(f"a cast to {dtype} is not supported")
    return [xs[0].astype(dtype)]


def _axes(attrs: dict[str, Any], xs: list[Any]) -> list[int] | None:
    if len(xs) > 1 and xs[1] is not None:
        return [int(a) for a in np.asarray(xs[1]).ravel()]
    axes = attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _squeeze(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    axes = _axes(attrs, xs)
    x = xs[0]
    return [np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(axes))]


def _unsqueeze(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    axes = _axes(attrs, xs) or []
    x = xs[0]
    rank = x.ndim + len(axes)
    return [np.expand_dims(x, axis=tuple(sorted(a % rank for a in axes)))]


def _reshape(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    x, shape = xs[0], [int(d) for d in np.asarray(xs[1]).ravel()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 and i < x.ndim else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def _concat(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    return [np.concatenate([x for x in xs if x is not None], axis=int(attrs.get("axis", 0)))]


def _unary(op: Callable[[np.ndarray], np.ndarray]) -> Folder:
    return lambda attrs, xs: [np.asarray(op(xs[0])).astype(xs[0].dtype, copy=False)]


def _shape(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    dims = list(xs[0].shape)
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return [np.array(dims[start : None if end is None else int(end)], dtype=np.int64)]


def _gather(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    return [np.take(xs[0], xs[1].astype(np.int64), axis=int(attrs.get("axis", 0)))]


def _constant(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    if "value" in attrs:
        return [tensor_array(attrs["value"], "a Constant node's value")]
    scalars = {
        "value_float": np.float32,
        "value_int": np.int64,
        "value_floats": np.float32,
        "value_ints": np.int64,
    }
    for key, dtype in scalars.items():
        if key in attrs:
            return [np.array(attrs[key], dtype=dtype)]
    raise ValueError(f"its value kind ({', '.join(attrs) or 'none'}) is not supported")


MAX_FILLED = 2**20
"""The most elements a ConstantOfShape is folded to (exporters fill small shape vectors)."""


def _constant_of_shape(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    shape = [int(d) for d in np.asarray(xs[0]).ravel()]
    if any(d < 0 for d in shape) or math.prod(shape) > MAX_FILLED:
        raise ValueError(f"the shape {shape} is negative or too large to fill")
    value = attrs.get("value")
    fill = (
        tensor_array(value, "ConstantOfShape's value")
        if value is not None
        else np.zeros(1, np.float32)
    )
    return [np.full(shape, fill.ravel()[0], dtype=fill.dtype)]


def _slice(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    x = xs[0]
    starts, ends = np.asarray(xs[1]).ravel(), np.asarray(xs[2]).ravel()
    axes = np.asarray(xs[3]).ravel() if len(xs) > 3 and xs[3] is not None else range(len(starts))
    steps = np.asarray(xs[4]).ravel() if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        n = x.shape[int(axis)]
        first, stop = (int(max(min(v, n), -n - 1)) for v in (start, end))  # Python's slice rules
        index[int(axis)] = slice(first, stop, int(step))
    return [x[tuple(index)]]


def _transpose(attrs: dict[str, Any], xs: list[Any]) -> list[np.ndarray]:
    perm = attrs.get("perm")
    return [np.transpose(xs[0], None if perm is None else [int(p) for p in perm])]


FOLDERS: dict[str, Folder] = {
    "ConstantOfShape": _constant_of_shape,
    "Slice": _slice,
    "Transpose": _transpose,
    "Constant": _constant,
    "Identity": lambda attrs, xs: [xs[0]],
    "Cast": _cast,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Shape": _shape,
    "Gather": _gather,
    "Add": _arith(np.add),
    "Sub": _arith(np.subtract),
    "Mul": _arith(np.multiply),
    "Div": _arith(_int_div),
    "Neg": _unary(np.negative),
    "Sqrt": _unary(np.sqrt),
    "Reciprocal": _unary(np.reciprocal),
}


def fold(op: str, attrs: dict[str, Any], inputs: Sequence[Any]) -> list[np.ndarray] | None:
    """The outputs of ``op`` on constant ``inputs`` (None where an input is absent)."""
    folder = FOLDERS.get(op)
    if folder is None:
        return None
    try:
        return folder(attrs, list(inputs))
    except (ValueError, TypeError, IndexError, np.exceptions.AxisError) as exc:
        raise ValueError(str(exc)) from None
