"""Classifier heads: Flatten, the Reshape of a feature map to ``[N, -1]``, Gemm and MatMul.

``Flatten`` (axis 1) and ``Reshape(x, [N, -1])`` are convdsl's ``flatten`` (channels-first
order, as ONNX's row-major reshape of NCHW data). ``Gemm`` with ``alpha = beta = 1`` and
``transA = 0`` is ``dense``: its weight is ``B`` (``transB = 1``, ``nn.Linear``'s layout) or
``B`` transposed at import (``transB = 0``), its bias ``C`` (one value per output feature).
``MatMul`` by a constant ``[F, O]`` is ``dense`` without bias, or with the bias of the ``Add``
of a constant that is its only consumer. The batch size a ``Reshape`` keeps may come from the
graph itself (``Shape -> Gather(0) -> Unsqueeze -> Concat``, what ``x.view(x.size(0), -1)``
exports with a dynamic batch): ``Shape`` of a computed tensor is a constant whose dynamic dims
are markers, accepted only where a Reshape keeps that tensor's own batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from convdsl.interop.onnx_import_program import Raw

if TYPE_CHECKING:
    from convdsl.interop.onnx_import_graph import Importer, OnnxNode, Tensor

MARKER_BASE = -(2**52)
"""Dynamic dims in a ``Shape`` of a computed tensor: ``MARKER_BASE - k`` for the k-th one."""


def flatten(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    axis = int(node.attr("axis", 1))
    if not -x.rank <= axis < x.rank or axis % x.rank != 1:
        raise im.refuse(node, "convdsl's flatten keeps the batch axis: only axis 1", "axis")
    _flatten(im, node, x)


def _flatten(im: Importer, node: OnnxNode, x: Tensor) -> None:
    if x.rank == 2:
        im.alias(node, x)  # [N, F] flattens to itself
    else:
        im.define(node, "flatten", Raw(x.var), rank=2)


def reshape(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    name = node.inputs[1] if len(node.inputs) > 1 else ""
    if not name or name not in im.consts:
        raise im.refuse(node, "input 'shape' is computed by the graph from more than the sizes "
                        "of tensors; convdsl needs it as a constant")  # fmt: skip
    wanted = [int(d) for d in im.consts[name].ravel()]
    if int(node.attr("allowzero", 0)) and 0 in wanted:
        raise im.refuse(node, "a 0 in 'shape' with allowzero=1 (an empty tensor)", "allowzero")
    static = im.static_shape(node.inputs[0]) or (None,) * x.rank
    two = len(wanted) == 2 and wanted != [-1, -1]
    if two and _keeps_batch(im, node, wanted[0], static) and _all_features(wanted[1], static):
        _flatten(im, node, x)
        return
    shown = ", ".join(_dim_text(im, d) for d in wanted)
    raise im.refuse(
        node,
        f"reshapes to [{shown}]; convdsl imports a Reshape only as flatten, to [N, -1] "
        "(or [0, -1], or [-1, F] with F the features of each batch entry)",
    )


def _keeps_batch(im: Importer, node: OnnxNode, first: int, static: tuple[int | None, ...]) -> bool:
    if first == 0 or first == -1:
        return True  # 0 copies the batch; -1 takes what the features leave (checked after)
    source = im.shape_markers.get(first)
    if source is not None:  # the batch of the tensor reshaped, read by Shape
        return source[1] == 0 and im.tensors.get(source[0]) == im.tensor(node)
    return first > 0 and static[0] == first


def _all_features(second: int, static: tuple[int | None, ...]) -> bool:
    if second == -1:
        return True
    features = static[1:]
    return all(d is not None for d in features) and second == math.prod(features)  # type: ignore[arg-type]


def _dim_text(im: Importer, value: int) -> str:
    source = im.shape_markers.get(value)
    return f"size of '{source[0]}' dim {source[1]}" if source is not None else str(value)


def shape(im: Importer, node: OnnxNode) -> None:
    """``Shape`` of a computed tensor: its static dims, and markers for the dynamic ones."""
    x = im.tensor(node)
    static = im.static_shape(node.inputs[0]) or (None,) * x.rank
    dims: list[int] = []
    for axis, dim in enumerate(static):
        if dim is None:
            marker = MARKER_BASE - len(im.shape_markers)
            im.shape_markers[marker] = (node.inputs[0], axis)
            dim = marker
        dims.append(dim)
    start, end = int(node.attr("start", 0)), node.attr("end")
    im.consts[node.outputs[0]] = np.array(dims[start : None if end is None else int(end)], np.int64)
    im.shape_derived.add(node.outputs[0])


# ---- Gemm and MatMul -------------------------------------------------------------------------


def gemm(im: Importer, node: OnnxNode) -> None:
    x = _features(im, node)
    for attribute, default in (("alpha", 1.0), ("transA", 0)):
        if node.attr(attribute, default) != default:
            raise im.refuse(node, f"convdsl's dense computes x @ W.T + b; only {attribute} = "
                            f"{default} maps to it exactly", attribute)  # fmt: skip
    weight = _weight(im, node, 1)
    if not int(node.attr("transB", 0)):
        weight = weight.T
    bias = im.const(node, 2, "C")
    if bias is not None and node.attr("beta", 1.0) != 1.0:
        raise im.refuse(node, "convdsl's dense adds its bias unscaled; only beta = 1 maps to it "
                        "exactly", "beta")  # fmt: skip
    _dense(im, node, x, weight, bias)


def matmul(im: Importer, node: OnnxNode) -> None:
    x = _features(im, node)
    weight = _weight(im, node, 1).T
    add = _bias_add(im, node, weight.shape[0])
    if add is None:
        _dense(im, node, x, weight, None)
        return
    add_node, bias = add
    im.skipped.add(add_node.index)
    merged = im.merged(node, add_node)
    _dense(im, merged, x, weight, bias)


def _bias_add(im: Importer, node: OnnxNode, out: int) -> tuple[OnnxNode, np.ndarray] | None:
    """The ``Add`` of a constant vector that is the only consumer of the MatMul's output."""
    value = node.outputs[0]
    users = im.consumers.get(value, [])
    if len(users) != 1 or value in im.graph_outputs or users[0].op != "Add":
        return None
    add = users[0]
    others = [n for n in add.inputs if n != value]
    if len(others) != 1 or others[0] not in im.consts:
        return None
    bias = im.consts[others[0]]
    if bias.size not in (1, out) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
        return None
    return add, bias


def _features(im: Importer, node: OnnxNode) -> Tensor:
    x = im.tensor(node)
    if x.rank != 2:
        raise im.refuse(
            node, f"convdsl's dense takes features [N, F]; input 0 has rank {x.rank}",
            hint="a Flatten (or Reshape to [N, -1]) before it imports as flatten",
        )  # fmt: skip
    return x


def _weight(im: Importer, node: OnnxNode, index: int) -> np.ndarray:
    weight = im.const(node, index, "B")
    if weight is None:
        raise im.refuse(node, "input 'B' (the weight) is missing")
    if weight.ndim != 2:
        raise im.refuse(node, f"the weight has shape {list(weight.shape)}; expected a matrix")
    return weight


def _dense(im: Importer, node: OnnxNode, x: Tensor, weight: np.ndarray,
           bias: np.ndarray | None) -> None:  # fmt: skip
    out, features = weight.shape
    static = im.static_shape(node.inputs[0])
    if static is not None and static[1] is not None and static[1] != features:
        raise im.refuse(node, f"a weight for {features} features on [N, {static[1]}]")
    params = {"weight": weight}
    if bias is not None:
        if bias.size == 1:
            bias = np.full(out, bias.ravel()[0], dtype=bias.dtype)
        elif bias.size != out or (bias.ndim == 2 and bias.shape[0] != 1):
            raise im.refuse(
                node, f"input 'C' has shape {list(bias.shape)}; convdsl's dense takes one "
                f"bias per output feature ([{out}] or [1, {out}])",
            )  # fmt: skip
        params["bias"] = bias.reshape(out)
    im.define(node, "dense", Raw(x.var), out, bias=None if bias is not None else False,
              params=params, rank=2)  # fmt: skip


CONVERTERS = {
    "Flatten": flatten,
    "Reshape": reshape,
    "Gemm": gemm,
    "MatMul": matmul,
    "Shape": shape,
}
