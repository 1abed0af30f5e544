"""Elementwise ONNX ops: activations, Clip, PRelu, Softmax, Identity, Dropout and the
arithmetic ops Add, Sub, Mul, Div.

An activation whose attributes differ from convdsl's fixed constants is composed exactly from
ops that have them (``HardSigmoid(alpha, beta)`` is ``clip(x * alpha + beta, min=0, max=1)``,
``Selu(alpha, gamma)`` is ``elu(x, alpha) * gamma``). An arithmetic operand that is a constant
becomes a number when it has one element, and a per-channel constant (shape ``[C, 1, 1]`` or
``[1, C, 1, 1]``) becomes a 1x1 depthwise convolution holding it (``x + c`` is weight 1 and
bias ``c``), since the language has no tensor constants. Any other constant is refused.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from convdsl.interop.onnx_import_program import Raw, call, number

if TYPE_CHECKING:
    from convdsl.interop.onnx_import_graph import Importer, OnnxNode, Tensor

SELU_ALPHA = 1.6732632423543772
SELU_GAMMA = 1.0507009873554805
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _same32(a: float, b: float) -> bool:
    return bool(np.float32(a) == np.float32(b))


def unary(op: str):  # type: ignore[no-untyped-def]
    def convert(im: Importer, node: OnnxNode) -> None:
        im.define(node, op, Raw(im.tensor(node).var))

    return convert


def leaky_relu(im: Importer, node: OnnxNode) -> None:
    alpha = float(node.attr("alpha", 0.01))
    im.define(node, "leaky_relu", Raw(im.tensor(node).var), alpha=alpha)


def elu(im: Importer, node: OnnxNode) -> None:
    alpha = float(node.attr("alpha", 1.0))
    im.define(node, "elu", Raw(im.tensor(node).var), alpha=None if alpha == 1.0 else alpha)


def selu(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    alpha = float(node.attr("alpha", SELU_ALPHA))
    gamma = float(node.attr("gamma", SELU_GAMMA))
    if _same32(alpha, SELU_ALPHA) and _same32(gamma, SELU_GAMMA):
        im.define(node, "selu", Raw(x.var))
        return
    text = f"{call('elu', Raw(x.var), alpha=alpha, dtype=im.dtype)} * {number(gamma, im.dtype)}"
    im.define_expr(node, text, comment="Selu with its own alpha and gamma: gamma * elu(x, alpha)")


def hard_sigmoid(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    alpha = float(node.attr("alpha", 0.2))
    beta = float(node.attr("beta", 0.5))
    if _same32(alpha, 1 / 6) and beta == 0.5:
        im.define(node, "hard_sigmoid", Raw(x.var))
        return
    scaled = f"{x.var} * {_signed(alpha, im)} + {_signed(beta, im)}"
    text = call("clip", Raw(scaled), min=0, max=1)
    im.define_expr(node, text, comment="HardSigmoid: max(0, min(1, alpha * x + beta))")


def _signed(value: float, im: Importer) -> str:
    text = number(value, im.dtype)
    return f"({text})" if text.startswith("-") else text


def gelu(im: Importer, node: OnnxNode) -> None:
    approximate = node.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise im.refuse(node, "expected 'none' or 'tanh'", "approximate")
    tanh = Raw("tanh") if approximate == "tanh" else None
    im.define(node, "gelu", Raw(im.tensor(node).var), approximate=tanh)


def clip(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    if im.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low, high = (_scalar(im, node, i, what) for i, what in ((1, "min"), (2, "max")))
    bounds = [None if v is None or abs(v) >= FLOAT32_MAX else float(v) for v in (low, high)]
    if any(v is not None and math.isnan(v) for v in bounds):
        raise im.refuse(node, "a NaN bound is not supported")
    low, high = bounds
    if low is None and high is None:
        im.alias(node, x)
    elif low == 0 and high == 6:
        im.define(node, "relu6", Raw(x.var))
    elif low == 0 and high is None:
        im.define(node, "relu", Raw(x.var))
    else:
        im.define(node, "clip", Raw(x.var), min=low, max=high)


def _scalar(im: Importer, node: OnnxNode, index: int, what: str) -> float | None:
    value = im.const(node, index, what)
    if value is None:
        return None
    if value.size != 1:
        raise im.refuse(node, f"input '{what}' must be a scalar, found shape {list(value.shape)}")
    return float(value.ravel()[0])


def prelu(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    slope = im.const(node, 1, "slope")
    if slope is None:
        raise im.refuse(node, "input 1 (the slope) is missing")
    if slope.size == 1:
        im.define(node, "prelu", Raw(x.var), shared=True, params={"weight": slope.reshape(1)})
        return
    vector = _per_channel(slope, x.rank)
    if vector is None:
        raise im.refuse(
            node,
            f"the slope has shape {list(slope.shape)}; convdsl's prelu takes one slope or one "
            "per channel ([C, 1, 1] for a 4-D input)",
        )
    im.define(node, "prelu", Raw(x.var), params={"weight": vector})


def _per_channel(value: np.ndarray, rank: int) -> np.ndarray | None:
    """The vector of a constant that broadcasts along the channel axis only, else None."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]):
        return None
    return value.reshape(-1)


def softmax(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    axis = int(node.attr("axis", 1 if im.opset < 13 else -1)) % x.rank
    if axis != 1:
        raise im.refuse(node, "convdsl's softmax is over the channel axis (1) only", "axis")
    if im.opset < 13:  # the old Softmax flattens every axis from `axis` on into one
        shape = im.static_shape(node.inputs[0]) or ()
        if len(shape) != x.rank or any(d != 1 for d in shape[2:]):
            raise im.refuse(
                node, "before opset 13 Softmax over axis 1 also spans the spatial axes, which "
                "convdsl's softmax does not; it imports where they are all 1", "axis",
            )  # fmt: skip
    im.define(node, "softmax", Raw(x.var))


def identity(im: Importer, node: OnnxNode) -> None:
    im.alias(node, im.tensor(node))


def dropout(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    if len(node.outputs) > 1 and node.outputs[1]:
        raise im.refuse(node, "its mask output is not supported (inference only)")
    training = im.const(node, 2, "training_mode") if im.opset >= 12 else None
    if training is not None and bool(training.ravel()[0]):
        raise im.refuse(node, "training mode is not supported (inference only)")
    im.alias(node, x)


# ---- arithmetic ------------------------------------------------------------------------------

SYMBOLS = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}


def arithmetic(im: Importer, node: OnnxNode) -> None:
    a, b = node.inputs[0], node.inputs[1]
    symbol = SYMBOLS[node.op]
    if a not in im.consts and b not in im.consts:
        left, right = im.tensor(node, 0), im.tensor(node, 1)
        if left.rank != right.rank:
            raise im.refuse(
                node, f"operands of rank {left.rank} and {right.rank}; convdsl broadcasts "
                "operands of the same rank only",
            )  # fmt: skip
        im.define_expr(node, f"{left.var} {symbol} {right.var}")
        return
    const_first = a in im.consts
    x = im.tensor(node, 1 if const_first else 0)
    value = im.consts[a if const_first else b]
    if value.size == 1:
        _with_number(im, node, x, float(value.ravel()[0]), const_first)
        return
    vector = _per_channel(value, x.rank) if x.rank > 2 else None
    if vector is None:
        raise im.refuse(
            node, f"input {0 if const_first else 1} is a constant of shape {list(value.shape)}; "
            "convdsl takes a number or a per-channel constant ([C, 1, 1] or [1, C, 1, 1]) here",
        )  # fmt: skip
    _per_channel_affine(im, node, x, vector, const_first)


def _with_number(im: Importer, node: OnnxNode, x: Tensor, value: float, first: bool) -> None:
    if not math.isfinite(value):
        raise im.refuse(node, f"the constant operand is {value}; it must be finite")
    if node.op == "Div" and not first and value == 0:
        raise im.refuse(node, "divides by the constant 0")
    symbol = SYMBOLS[node.op]
    text = _signed(value, im)
    expr = f"{text} {symbol} {x.var}" if first else f"{x.var} {symbol} {text}"
    im.define_expr(node, expr)


def _per_channel_affine(im: Importer, node: OnnxNode, x: Tensor, vector: np.ndarray,
                        first: bool) -> None:  # fmt: skip
    """``x op c`` for a per-channel ``c`` as ``w * x + b``, a 1x1 depthwise convolution."""
    channels = (im.static_shape(node.inputs[1 if first else 0]) or (None, None))[1]
    if channels is not None and channels != vector.size:
        raise im.refuse(node, f"a constant of {vector.size} channels for {channels} channels")
    ones = np.ones_like(vector, dtype=np.float64)
    weight, bias = {
        ("Add", False): (ones, vector),
        ("Add", True): (ones, vector),
        ("Sub", False): (ones, -vector.astype(np.float64)),
        ("Sub", True): (-ones, vector),
        ("Mul", False): (vector, None),
        ("Mul", True): (vector, None),
        ("Div", False): (1.0 / vector.astype(np.float64), None),
        ("Div", True): (None, None),
    }[(node.op, first)]
    if weight is None:
        raise im.refuse(node, "a per-channel constant divided by a tensor is not supported")
    shape = (vector.size, 1) + (1,) * (x.rank - 2)
    params = {"weight": np.asarray(weight).reshape(shape)}
    if bias is not None:
        params["bias"] = np.asarray(bias)
    r = x.rank - 2
    comment = f"{node.op} of a per-channel constant: a 1x1 depthwise convolution (w * x + b)"
    im.define(node, f"depthwise{r}d", Raw(x.var), kernel=1,
              bias=None if bias is not None else False, params=params,
              comment=comment)  # fmt: skip


CONVERTERS = {
    "Relu": unary("relu"),
    "Sigmoid": unary("sigmoid"),
    "Tanh": unary("tanh"),
    "HardSwish": unary("hard_swish"),
    "Softplus": unary("softplus"),
    "Mish": unary("mish"),
    "LeakyRelu": leaky_relu,
    "Elu": elu,
    "Selu": selu,
    "HardSigmoid": hard_sigmoid,
    "Gelu": gelu,
    "Clip": clip,
    "PRelu": prelu,
    "Softmax": softmax,
    "Identity": identity,
    "Dropout": dropout,
    "Add": arithmetic,
    "Sub": arithmetic,
    "Mul": arithmetic,
    "Div": arithmetic,
}
