"""Shape rules of the elementwise ops with more than one operand or with parameters.

``binary``: add, sub, mul and div, each operand a tensor or a number (``x * 0.5``, ``2 - x``),
two tensors broadcast by NumPy's rule restricted to operands of the same rank: on every axis
the sizes are equal or one of them is 1, and the output takes the other (a ``[N, C, 1, 1]``
gate times a ``[N, C, H, W]`` map). A number operand is kept as the attribute of its argument
(``y=0.5``: ``x * 0.5``; ``x=2.0``: ``2 - x``); the node's inputs are its tensors only.
``clip``, ``softplus`` and ``prelu`` check their attributes; ``prelu`` declares its slopes.
"""

from __future__ import annotations

from collections.abc import Sequence

from convdsl.ir import geometry
from convdsl.ir.graph import Attrs
from convdsl.ir.shape_rules import Inferred, ParamSpec, Rule, ShapeError, fixed_channels, unary
from convdsl.ir.types import AXIS_NAMES, Dim, TensorType, format_shape

OPERANDS = ("x", "y")


def binary(divides: bool = False) -> Rule:
    """The rule of a binary op; ``divides``: dividing by the number 0 is refused."""

    def rule(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
        numbers = Attrs({name: attrs[name] for name in OPERANDS if name in attrs})
        if not inputs:
            raise ShapeError(
                "expected a tensor for x or y, found two numbers",
                arg="x",
                hint="arithmetic on numbers alone is written with + - * / outside a call",
            )
        if divides and numbers.get("y") == 0:
            raise ShapeError("division by the number 0", arg="y")
        if len(inputs) == 1:
            return Inferred(unary(numbers, inputs).outputs, numbers)
        return Inferred((broadcast(*inputs),), numbers)

    return rule


def broadcast(a: TensorType, b: TensorType) -> TensorType:
    """The type of ``a`` and ``b`` broadcast together (module doc), or a ``ShapeError`` naming
    both shapes and the first axis that does not broadcast."""
    shapes = f"shapes {format_shape(a.shape)} and {format_shape(b.shape)} do not broadcast"
    if a.rank != b.rank:
        raise ShapeError(
            f"{shapes}: ranks {a.rank} and {b.rank} differ",
            hint="convdsl broadcasts operands of the same rank, each dim equal or 1 in one of "
            "them: write the missing dims as 1",
        )
    dims: list[Dim] = []
    for axis, (m, n) in enumerate(zip(a.shape, b.shape, strict=True)):
        size = geometry.broadcast_size(m, n)
        if size is None:
            raise ShapeError(
                f"{shapes}: {_axis_name(a.rank, axis)} is {m} vs {n}",
                hint=_fix_hint(a, b) or "broadcasting needs each dim equal, or 1 in one of them",
            )
        dims.append(size)
    if a.dtype != b.dtype:
        raise ShapeError(f"dtypes differ: {a.dtype.value} vs {b.dtype.value}")
    return TensorType(tuple(dims), a.dtype)


def _axis_name(rank: int, axis: int) -> str:
    names = ("batch", "channels", *AXIS_NAMES.get(rank - 2, ()))
    return names[axis] if axis < len(names) else f"dim {axis}"


def _fix_hint(a: TensorType, b: TensorType) -> str | None:
    """What usually makes two branches fit. ``{x}`` and ``{y}`` become the operands as the
    user wrote them (see passes/shapes.py). None where a 1 against another size shows that
    broadcasting was meant."""
    if any((m == 1) != (n == 1) for m, n in zip(a.shape, b.shape, strict=True)):
        return None
    if a.shape[:2] == b.shape[:2]:
        if all(m >= n for m, n in zip(a.spatial, b.spatial, strict=True)):
            return "crop the larger one to match: crop({x}, like={y})"
        if all(m <= n for m, n in zip(a.spatial, b.spatial, strict=True)):
            return "crop the larger one to match: crop({y}, like={x})"
        return "crop or pad them to a common size"
    if a.shape[2:] == b.shape[2:] and a.shape[0] == b.shape[0]:
        return "a 1x1 convolution can change the channel count"
    return None


def clip(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    if attrs["min"] is None and attrs["max"] is None:
        raise ShapeError("expected min=, max= or both", hint="clip(x, min=0, max=6) is relu6(x)")
    return unary(attrs, inputs)


def softplus(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    if attrs["beta"] <= 0:
        raise ShapeError(f"beta: expected a positive number, found {attrs['beta']}", arg="beta")
    return unary(attrs, inputs)


def prelu(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    (x,) = unary(attrs, inputs).outputs
    slopes = (1,) if attrs["shared"] else (fixed_channels(x),)
    return Inferred((x,), attrs, (ParamSpec("weight", slopes, "prelu"),))
