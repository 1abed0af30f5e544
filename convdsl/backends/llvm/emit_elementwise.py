"""Elementwise ops on vectors: activations (also used as conv epilogues), add/sub/mul/div
(operands broadcast: ``emit_broadcast``; a number operand is a constant), batch norm, prelu.

``ACTIVATIONS`` maps an activation name to a function ``(builder, x, attrs) -> y`` over
``<lanes x float>`` or ``<lanes x double>``; the op emitters apply it to each channel vector of
a point. Functions without an LLVM instruction: for float, ``exp`` and ``tanh`` are inline
polynomials (``vexp``) tuned to float32 accuracy; for double, they are libm's ``exp`` (through
``llvm.exp``) and ``tanh``, since precision is what f64 is for. expm1 and erf (elu, exact gelu)
call libm per lane in both: correct first, fast later; so do log1p (softplus, mish) and
expm1 (selu).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from llvmlite import ir

from convdsl.backends.llvm import emit_broadcast
from convdsl.backends.llvm.kernel import KernelBuilder, Point
from convdsl.backends.llvm.loops import (
    I32,
    element_of,
    fconst,
    fma,
    fsplat,
    i64,
    intrinsic,
    splat,
    suffix,
    unary_intrinsic,
)
from convdsl.ir.graph import Node

Unary = Callable[[ir.IRBuilder, ir.Value, Mapping[str, Any]], ir.Value]


def _lanes(x: ir.Value) -> int:
    return x.type.count if isinstance(x.type, ir.VectorType) else 1


def _double(x: ir.Value) -> bool:
    return isinstance(element_of(x.type), ir.DoubleType)


def _const(x: ir.Value, value: float) -> ir.Constant:
    return fsplat(value, _lanes(x), element_of(x.type))


def libm(builder: ir.IRBuilder, name: str, x: ir.Value) -> ir.Value:
    """``name(x[l])`` for each lane, calling the C library's function ``name`` (``tanh``,
    ``erf``...): its float version (``tanhf``) on float lanes, the double one on double."""
    element = element_of(x.type)
    name = name if _double(x) else f"{name}f"
    module = builder.module
    try:
        function = module.get_global(name)
    except KeyError:
        function = ir.Function(module, ir.FunctionType(element, [element]), name)
    result = x
    for lane in range(_lanes(x)):
        at = ir.Constant(I32, lane)
        result = builder.insert_element(
            result, builder.call(function, [builder.extract_element(x, at)]), at
        )
    return result


def _max(b: ir.IRBuilder, x: ir.Value, value: float) -> ir.Value:
    """``max(x, value)``, NaN staying NaN as in NumPy and PyTorch: ``value > x ? value : x``
    is one ``vmaxps`` that returns its second operand, ``x``, when either is NaN."""
    return b.select(b.fcmp_ordered(">", _const(x, value), x), _const(x, value), x)


def _min(b: ir.IRBuilder, x: ir.Value, value: float) -> ir.Value:
    return b.select(b.fcmp_ordered("<", _const(x, value), x), _const(x, value), x)


def _poly(b: ir.IRBuilder, x: ir.Value, coefficients: tuple[float, ...]) -> ir.Value:
    """Horner's rule, highest power first."""
    result: ir.Value = _const(x, coefficients[0])
    for c in coefficients[1:]:
        result = fma(b, result, x, _const(x, c))
    return result


EXP_POLY = (1.98756915e-4, 1.39819995e-3, 8.33345191e-3, 4.16657959e-2, 1.66666655e-1, 0.500000012)


def vexp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """``exp(x)`` on a float vector without libm (Cephes ``expf``: range reduction by ln 2 and a
    degree-6 polynomial; about 2 ulp). Inputs are clamped to [-87.3, 88.7]: below, the result
    is ~1e-38 instead of a denormal or 0."""
    lanes = _lanes(x)
    x = _min(b, _max(b, x, -87.3), 88.7)
    n = unary_intrinsic(b, "floor", fma(b, x, _const(x, 1.4426950408889634), _const(x, 0.5)))
    r = fma(b, n, _const(x, -0.693359375), x)
    r = fma(b, n, _const(x, 2.12194440e-4), r)
    p = _poly(
        b,
        r,
        (
            1.9875691500e-4,
            1.3981999507e-3,
            8.3334519073e-3,
            4.1665795894e-2,
            1.6666665459e-1,
            5.0000001201e-1,
        ),
    )
    y = fma(b, b.fmul(p, r), r, b.fadd(r, _const(x, 1.0)))
    int_type = ir.VectorType(ir.IntType(32), lanes) if isinstance(x.type, ir.VectorType) else I32
    exponent = b.add(b.fptosi(n, int_type), _iconst(int_type, 127))
    scale = b.bitcast(b.shl(exponent, _iconst(int_type, 23)), x.type)
    return b.fmul(y, scale)


def exp(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """``exp(x)``: ``vexp`` on float vectors; libm's ``exp`` (``llvm.exp``, which LLVM expands
    to one call per lane) on double, whose precision no short polynomial keeps."""
    return unary_intrinsic(b, "exp", x) if _double(x) else vexp(b, x)


def _iconst(ty: ir.Type, value: int) -> ir.Constant:
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [value] * ty.count)
    return ir.Constant(ty, value)


def relu(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    return _max(b, x, 0.0)


def relu6(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    return _min(b, _max(b, x, 0.0), 6.0)


def leaky_relu(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    scaled = b.fmul(x, _const(x, attrs["alpha"]))
    return b.select(b.fcmp_ordered(">=", x, _const(x, 0.0)), x, scaled)


def elu(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    negative = b.fmul(_const(x, attrs["alpha"]), libm(b, "expm1", _min(b, x, 0.0)))
    return b.select(b.fcmp_ordered(">", x, _const(x, 0.0)), x, negative)


def sigmoid(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    """``1 / (1 + exp(-x))`` through ``e = exp(-|x|)``, which never overflows."""
    e = exp(b, b.fneg(unary_intrinsic(b, "fabs", x)))
    top = b.select(b.fcmp_ordered(">=", x, _const(x, 0.0)), _const(x, 1.0), e)
    return b.fdiv(top, b.fadd(_const(x, 1.0), e))


def tanh(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    """Cephes ``tanhf``: an odd polynomial below |x| = 0.625 (keeps relative precision near 0),
    ``1 - 2 / (exp(2|x|) + 1)`` with the sign of x above; libm's ``tanh`` on double."""
    if _double(x):
        return libm(b, "tanh", x)
    z = b.fmul(x, x)
    coefficients = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1)
    small = fma(b, b.fmul(_poly(b, z, (*coefficients, -3.33332819422e-1)), z), x, x)
    magnitude = unary_intrinsic(b, "fabs", x)
    e = vexp(b, b.fadd(magnitude, magnitude))
    large = b.fsub(_const(x, 1.0), b.fdiv(_const(x, 2.0), b.fadd(e, _const(x, 1.0))))
    signed = intrinsic(b, f"llvm.copysign.{suffix(x.type)}", x.type, [large, x])
    return b.select(b.fcmp_ordered("<", magnitude, _const(x, 0.625)), small, signed)


def gelu(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    if attrs.get("approximate", "none") == "tanh":
        cube = b.fmul(b.fmul(x, x), x)
        inner = b.fmul(
            _const(x, math.sqrt(2 / math.pi)), b.fadd(x, b.fmul(_const(x, 0.044715), cube))
        )
        return b.fmul(b.fmul(_const(x, 0.5), x), b.fadd(_const(x, 1.0), libm(b, "tanh", inner)))
    phi = b.fadd(_const(x, 1.0), libm(b, "erf", b.fmul(x, _const(x, math.sqrt(0.5)))))
    return b.fmul(b.fmul(_const(x, 0.5), x), phi)


def silu(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    return b.fmul(x, sigmoid(b, x, attrs))


def hard_sigmoid(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    return b.fdiv(relu6(b, b.fadd(x, _const(x, 3.0)), attrs), _const(x, 6.0))


def hard_swish(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    return b.fmul(x, hard_sigmoid(b, x, attrs))


def clip(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    """``torch.clamp``: NaN stays NaN; with ``min > max`` every element is ``max``."""
    if attrs["min"] is not None:
        x = _max(b, x, attrs["min"])
    return x if attrs["max"] is None else _min(b, x, attrs["max"])


SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def selu(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    return b.fmul(_const(x, SELU_SCALE), elu(b, x, {"alpha": SELU_ALPHA}))


def softplus(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    """PyTorch's: ``x`` where ``beta * x > threshold``, else ``log1p(exp(beta * x)) / beta``;
    the exp sees at most the threshold, so it never overflows."""
    beta, threshold = attrs.get("beta", 1.0), attrs.get("threshold", 20.0)
    scaled = b.fmul(x, _const(x, beta))
    bounded = _min(b, scaled, threshold)
    below = b.fdiv(libm(b, "log1p", exp(b, bounded)), _const(x, beta))
    return b.select(b.fcmp_ordered(">", scaled, _const(x, threshold)), x, below)


def mish(b: ir.IRBuilder, x: ir.Value, attrs: Mapping[str, Any]) -> ir.Value:
    """PyTorch's ``x * tanh(log1p(exp(x)))``; a large ``x`` gives ``tanh(log1p(big)) = 1``."""
    return b.fmul(x, tanh(b, libm(b, "log1p", exp(b, x)), attrs))


ACTIVATIONS: dict[str, Unary] = {
    "none": lambda b, x, attrs: x,
    "relu": relu,
    "relu6": relu6,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "gelu": gelu,
    "silu": silu,
    "hard_sigmoid": hard_sigmoid,
    "hard_swish": hard_swish,
    "clip": clip,
    "selu": selu,
    "softplus": softplus,
    "mish": mish,
}

# Expanded to tens of instructions per vector (polynomials, calls into the C library).
COSTLY = frozenset({"elu", "sigmoid", "tanh", "gelu", "silu", "selu", "softplus", "mish"})

BINARY: dict[str, Callable[[ir.IRBuilder, ir.Value, ir.Value], ir.Value]] = {
    "add": lambda b, x, y: b.fadd(x, y),
    "sub": lambda b, x, y: b.fsub(x, y),
    "mul": lambda b, x, y: b.fmul(x, y),
    "div": lambda b, x, y: b.fdiv(x, y),
}


def emit_unary(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    function = ACTIVATIONS[node.op]
    return [function(k.builder, x, node.attrs) for x in k.operand(node.inputs[0], point)]


def emit_binary(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """A tensor operand read at ``point`` (broadcast if smaller: ``emit_broadcast``), a number
    operand (the attribute of its argument) as a constant of the kernel's dtype."""
    function = BINARY[node.op]
    tensors = iter(node.inputs)
    operands = []
    for arg in ("x", "y"):
        if arg in node.attrs:
            constant = fsplat(node.attrs[arg], point.lanes, k.element)
            operands.append([constant] * point.block)
        else:
            operands.append(emit_broadcast.operand(k, next(tensors), point, node.output))
    left, right = operands
    return [function(k.builder, x, y) for x, y in zip(left, right, strict=True)]


def emit_prelu(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """``x >= 0 ? x : slope * x``, the slope of each channel of the block (or the one shared)."""
    b = k.builder
    slopes = k.param(node.param("weight"))
    results = []
    for j, x in enumerate(k.operand(node.inputs[0], point)):
        channel = i64(0) if node.attrs["shared"] else b.add(point.c, i64(j))
        slope = splat(b, b.load(b.gep(slopes, [channel])), point.lanes)
        results.append(b.select(b.fcmp_ordered(">=", x, _const(x, 0.0)), x, b.fmul(x, slope)))
    return results


def emit_batch_norm(k: KernelBuilder, node: Node, point: Point) -> list[ir.Value]:
    """``x * scale + shift`` with ``scale = gamma / sqrt(var + eps)``, per channel."""
    b = k.builder
    gamma, beta, mean, var = (
        k.param(node.param(r)) for r in ("weight", "bias", "running_mean", "running_var")
    )
    results = []
    for j, x in enumerate(k.operand(node.inputs[0], point)):
        channel = b.add(point.c, ir.Constant(ir.IntType(64), j))
        g, be, m, v = (b.load(b.gep(p, [channel])) for p in (gamma, beta, mean, var))
        std = b.call(_sqrt(b, k.element), [b.fadd(v, fconst(node.attrs["eps"], k.element))])
        scale = b.fdiv(g, std)
        shift = b.fsub(be, b.fmul(m, scale))
        results.append(
            b.fadd(b.fmul(x, splat(b, scale, point.lanes)), splat(b, shift, point.lanes))
        )
    return results


def _sqrt(b: ir.IRBuilder, element: ir.Type) -> ir.Function:
    name = f"llvm.sqrt.{suffix(element)}"
    try:
        return b.module.get_global(name)
    except KeyError:
        return ir.Function(b.module, ir.FunctionType(element, [element]), name)


EMITTERS = {
    **{name: emit_unary for name in ACTIVATIONS if name != "none"},
    **{name: emit_binary for name in BINARY},
    "batch_norm": emit_batch_norm,
    "prelu": emit_prelu,
}
