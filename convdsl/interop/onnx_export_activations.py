"""ONNX forms of convdsl's elementwise ops: activations (also a conv's ``activation=``
epilogue, exported as a node after the conv), add/sub/mul/div, batch norm.

Where ONNX has the op with the same formula it is one node (Relu, LeakyRelu, Elu, Selu with
PyTorch's constants, HardSigmoid with alpha 1/6 and beta 1/2, HardSwish, Mish from opset 18, Gelu
from opset 20, PRelu). The others are composed from exact pieces: relu6 is Clip(0, 6); silu is
x * Sigmoid(x); Gelu below opset 20 is its formula (erf or tanh form); softplus with ``beta`` and
``threshold`` (ONNX Softplus has neither) is ``Where(beta*x > threshold, x, Softplus(beta*x) /
beta)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from convdsl.backends.numpy.elementwise import SELU_ALPHA, SELU_SCALE
from convdsl.interop.onnx_export import Builder
from convdsl.ir.graph import Node

Activation = Callable[[Builder, str, str, str, str | None, Mapping[str, Any], np.dtype], None]
"""``(builder, x, y, layer, what, attrs, dtype)``: nodes computing ``y`` from ``x``; the node
that writes ``y`` is named ``what`` within ``layer`` (None: the layer's own name)."""


def _step(what: str | None, name: str) -> str:
    return name if what is None else f"{what}.{name}"


def _single(op_type: str, **fixed: Any) -> Activation:
    def emit(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
             dtype: np.dtype) -> None:  # fmt: skip
        b.add(op_type, [x], layer, what, output=y, **fixed)

    return emit


def _with_alpha(op_type: str) -> Activation:
    def emit(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
             dtype: np.dtype) -> None:  # fmt: skip
        b.add(op_type, [x], layer, what, output=y, alpha=float(attrs["alpha"]))

    return emit


def _clip(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
          dtype: np.dtype) -> None:  # fmt: skip
    low, high = attrs.get("min"), attrs.get("max")
    bounds = [
        "" if bound is None else b.scalar(f"{layer}/{_step(what, name)}", bound, dtype)
        for name, bound in (("min", low), ("max", high))
    ]
    while bounds and bounds[-1] == "":
        bounds.pop()
    b.add("Clip", [x, *bounds], layer, what, output=y)


def _relu6(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
           dtype: np.dtype) -> None:  # fmt: skip
    _clip(b, x, y, layer, what, {"min": 0.0, "max": 6.0}, dtype)


def _silu(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
          dtype: np.dtype) -> None:  # fmt: skip
    gate = b.add("Sigmoid", [x], layer, _step(what, "sigmoid"))
    b.add("Mul", [x, gate], layer, what, output=y)


def _gelu(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
          dtype: np.dtype) -> None:  # fmt: skip
    approximate = str(attrs.get("approximate", "none"))
    if b.opset >= 20:
        b.add("Gelu", [x], layer, what, output=y, approximate=approximate)
        return

    def const(name: str, value: float) -> str:
        return b.scalar(f"{layer}/{_step(what, name)}", value, dtype)

    def node(op_type: str, inputs: list[str], name: str) -> str:
        return b.add(op_type, inputs, layer, _step(what, name))

    if approximate == "none":  # 0.5 * x * (1 + erf(x / sqrt(2)))
        inner = node("Mul", [x, const("rsqrt2", math.sqrt(0.5))], "scaled")
        curve = node("Erf", [inner], "erf")
    else:  # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))
        cube = node("Mul", [node("Mul", [x, x], "square"), x], "cube")
        poly = node("Add", [x, node("Mul", [cube, const("c", 0.044715)], "cubic")], "poly")
        inner = node("Mul", [poly, const("k", math.sqrt(2 / math.pi))], "scaled")
        curve = node("Tanh", [inner], "tanh")
    half = node("Mul", [x, const("half", 0.5)], "half")
    b.add("Mul", [half, node("Add", [curve, const("one", 1.0)], "plus1")], layer, what, output=y)


def _softplus(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
              dtype: np.dtype) -> None:  # fmt: skip
    beta = float(attrs.get("beta", 1.0))
    threshold = float(attrs.get("threshold", 20.0))
    scaled = x
    if beta != 1.0:
        beta_name = b.scalar(f"{layer}/{_step(what, 'beta')}", beta, dtype)
        scaled = b.add("Mul", [x, beta_name], layer, _step(what, "scaled"))
    curve = b.add("Softplus", [scaled], layer, _step(what, "softplus"))
    if beta != 1.0:
        curve = b.add("Div", [curve, beta_name], layer, _step(what, "unscaled"))
    limit = b.scalar(f"{layer}/{_step(what, 'threshold')}", threshold, dtype)
    linear = b.add("Greater", [scaled, limit], layer, _step(what, "linear"))
    b.add("Where", [linear, x, curve], layer, what, output=y)


def _mish(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
          dtype: np.dtype) -> None:  # fmt: skip
    if b.opset >= 18:
        b.add("Mish", [x], layer, what, output=y)
        return
    curve = b.add("Softplus", [x], layer, _step(what, "softplus"))
    gate = b.add("Tanh", [curve], layer, _step(what, "tanh"))
    b.add("Mul", [x, gate], layer, what, output=y)


def _identity(b: Builder, x: str, y: str, layer: str, what: str | None, attrs: Mapping[str, Any],
              dtype: np.dtype) -> None:  # fmt: skip
    b.add("Identity", [x], layer, what, output=y)


ACTIVATIONS: dict[str, Activation] = {
    "none": _identity,
    "relu": _single("Relu"),
    "relu6": _relu6,
    "leaky_relu": _with_alpha("LeakyRelu"),
    "elu": _with_alpha("Elu"),
    "sigmoid": _single("Sigmoid"),
    "tanh": _single("Tanh"),
    "gelu": _gelu,
    "silu": _silu,
    "hard_sigmoid": _single("HardSigmoid", alpha=1 / 6, beta=0.5),
    "hard_swish": _single("HardSwish"),
    "clip": _clip,
    "selu": _single("Selu", alpha=SELU_ALPHA, gamma=SELU_SCALE),
    "softplus": _softplus,
    "mish": _mish,
}
"""Every activation op and every ``activation=`` of a conv epilogue."""


def activation_node(b: Builder, node: Node) -> None:
    """A unary activation layer: its main node is named as the layer."""
    dtype = b.dtype(node)
    (x,) = b.inputs(node)
    ACTIVATIONS[node.op](b, x, b.output(node), node.name, None, node.attrs, dtype)


def epilogue(b: Builder, node: Node, result: str) -> None:
    """A conv's ``activation=``: ``result`` (the conv's output) to the layer's output value."""
    kind = node.attrs["activation"]
    if kind == "none":
        raise AssertionError("no epilogue to emit")
    ACTIVATIONS[kind](b, result, b.output(node), node.name, kind, {}, b.dtype(node))


_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}


def binary_node(b: Builder, node: Node) -> None:
    """add/sub/mul/div: a number operand (``x * 0.5``) becomes a scalar initializer
    ``layer/x`` or ``layer/y``; ONNX broadcasts as NumPy does."""
    tensors = iter(b.inputs(node))
    dtype = b.dtype(node)
    operands = [
        b.scalar(f"{node.name}/{arg}", node.attrs[arg], dtype) if arg in node.attrs
        else next(tensors)
        for arg in ("x", "y")
    ]  # fmt: skip
    b.add(_BINARY[node.op], operands, node.name, output=b.output(node))


def prelu_node(b: Builder, node: Node) -> None:
    """PRelu: the slopes are the parameter, stored ``[C, 1, ...]`` (or ``[1]`` when shared) so
    that they broadcast over the spatial axes as ONNX requires."""
    name = node.param("weight")
    rank = b.graph.type_of(node.output).rank
    slopes = b.params[name]
    if slopes.size > 1:
        b.params[name] = slopes.reshape((-1,) + (1,) * (rank - 2))
    (x,) = b.inputs(node)
    b.add("PRelu", [x, name], node.name, output=b.output(node))


def batch_norm_node(b: Builder, node: Node) -> None:
    roles = ("weight", "bias", "running_mean", "running_var")
    (x,) = b.inputs(node)
    b.add("BatchNormalization", [x, *(node.param(r) for r in roles)], node.name,
          output=b.output(node), epsilon=float(node.attrs["eps"]))  # fmt: skip


def softmax_node(b: Builder, node: Node) -> None:
    (x,) = b.inputs(node)
    b.add("Softmax", [x], node.name, output=b.output(node), axis=1)
