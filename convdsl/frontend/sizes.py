"""Size names and size expressions: the dims of ``input`` declarations and shape annotations.

An input may leave any dim but the channels open: the first names the batch (``N``, bound per
call), the others are *sizes* (``H``, ``W``, ``L``) the network is specialized to when it runs.
A shape annotation's dims are expressions of integers, block parameters and size names with
``+ - * / // %`` (``: [N, 64, H/2, W/2]``); ``/`` is exact division (the annotation then holds
only for sizes it divides), ``//`` rounds down as everywhere else in the language.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convdsl.frontend import ast
from convdsl.frontend.values import POISON, LowerError
from convdsl.ir import limits
from convdsl.ir.symbolic import Ratio, Size, SymbolicError, symbol
from convdsl.ir.types import Dim

AnnotationDim = Dim | Ratio
"""A dim of an annotation: an int, a size expression, the batch name, ``_``, or ``num/den``."""


def size_names(module: ast.Module) -> tuple[set[str], set[str]]:
    """(batch names, size names) of every input declaration, wherever it is in the file."""
    batch: set[str] = set()
    sizes: set[str] = set()
    for item in module.items:
        if isinstance(item, ast.InputDecl):
            for position, dim in enumerate(item.dims):
                if isinstance(dim, ast.Name) and dim.id != "_":
                    (batch if position == 0 else sizes).add(dim.id)
    return batch, sizes


def annotation_dim(
    expr: ast.Expr, sizes: set[str], lookup_int: Callable[[str], Any]
) -> AnnotationDim | Any:
    """One annotation dim; POISON when a name it uses failed earlier. ``lookup_int`` gives a
    name's integer value in scope (a block parameter), or None."""
    if isinstance(expr, ast.Name):
        bound = lookup_int(expr.id)
        if bound is not None:
            return bound
        if expr.id in sizes:
            return symbol(expr.id)
        return expr.id  # the batch name, `_`, or a name the comparison will report
    try:
        return _value(expr, sizes, lookup_int)
    except _Poisoned:
        return POISON


class _Poisoned(Exception):
    pass


def _value(expr: ast.Expr, sizes: set[str], lookup_int: Callable[[str], Any]) -> Size | Ratio:
    if isinstance(expr, ast.Int):
        return expr.value
    if isinstance(expr, ast.Name):
        bound = lookup_int(expr.id)
        if bound is POISON:
            raise _Poisoned
        if bound is not None:
            return int(bound)
        if expr.id in sizes:
            return symbol(expr.id)
        raise LowerError(
            f"'{expr.id}' in a size expression: expected an integer, a block parameter or an "
            f"input size ({', '.join(sorted(sizes)) or 'the inputs declare none'})",
            expr.span,
        )
    if isinstance(expr, ast.Neg):
        return _combine("-", 0, _value(expr.operand, sizes, lookup_int), expr)
    if isinstance(expr, ast.BinOp):
        left = _value(expr.left, sizes, lookup_int)
        right = _value(expr.right, sizes, lookup_int)
        return _combine(expr.op, left, right, expr)
    raise LowerError(
        "expected a size: an integer, a size name or an expression of them", _span(expr)
    )


def _combine(op: str, left: Size | Ratio, right: Size | Ratio, expr: ast.Expr) -> Size | Ratio:
    (ln, ld), (rn, rd) = _parts(left), _parts(right)
    try:
        if op in ("+", "-"):
            num = ln * rd + rn * ld if op == "+" else ln * rd - rn * ld
            return _ratio(num, ld * rd, expr)
        if op == "*":
            return _ratio(ln * rn, ld * rd, expr)
        if op == "/":
            if not isinstance(rn, int) or rn == 0:
                raise LowerError("a size divides only by a nonzero integer", _span(expr))
            sign = -1 if rn < 0 else 1
            return _ratio(sign * ln * rd, ld * abs(rn), expr)
        if op in ("//", "%"):
            if not isinstance(rn, int) or rd != 1 or rn <= 0:
                raise LowerError(
                    f"{op} in a size takes a positive integer on its right", _span(expr)
                )
            if ld != 1:
                raise LowerError(
                    f"write the exact quotient last: ({op} of a / quotient)", _span(expr)
                )
            return ln // rn if op == "//" else ln % rn
    except SymbolicError as err:
        raise LowerError(f"not a size expression: {err}", _span(expr)) from None
    raise LowerError(f"'{op}' is not allowed in a size", _span(expr))


def _parts(value: Size | Ratio) -> tuple[Size, int]:
    return (value.num, value.den) if isinstance(value, Ratio) else (value, 1)


def _ratio(num: Size, den: int, expr: ast.Expr) -> Size | Ratio:
    if isinstance(num, int):
        problem = limits.integer_problem(num)
        if problem is not None:
            raise LowerError(problem, _span(expr), hint=limits.HINT)
    if den == 1:
        return num
    if isinstance(num, int) and num % den == 0:
        return num // den
    return Ratio(num, den)


def _span(expr: ast.Expr) -> Any:
    return expr.span
