"""Compile-time values of the front end, and the errors lowering raises.

While lowering evaluates a file, a name is bound to an int, a float, a bool, a string, a list
(a tuple), a ``Tensor`` (a handle to an IR value), a ``Keyword`` (a bare name bound to nothing,
meaningful as ``padding=same``) or ``POISON`` (the value of anything that failed; using it
reports nothing more, so one mistake is reported once).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from convdsl.diagnostics import Diagnostic, Span
from convdsl.frontend import ast
from convdsl.ir import limits

BUILTINS = ("range", "min", "max", "len")
MAX_UNROLL = 10_000  # a loop longer than this is a typo, not a network


class LowerError(Exception):
    """A user error found while lowering one statement."""

    def __init__(self, message: str, span: Span | None, hint: str | None = None) -> None:
        super().__init__(message)
        self.diagnostic = Diagnostic(message, span, hint=hint)


@dataclass(frozen=True, slots=True)
class Tensor:
    """A compile-time handle to an IR value."""

    value: int


@dataclass(frozen=True, slots=True)
class Keyword:
    """A bare name bound to nothing: meaningful only as a keyword value (``padding=same``)."""

    name: str
    span: Span
    # Finds a close variable name, for when it was meant as one; only called on an error.
    suggest: Callable[[], str | None] | None = field(default=None, compare=False)

    @property
    def hint(self) -> str | None:
        return self.suggest() if self.suggest is not None else None


class _Poison:
    """The value of anything computed from an error: using it reports nothing more."""

    def __repr__(self) -> str:
        return "POISON"


POISON: Any = _Poison()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def poisoned(value: Any) -> bool:
    """True for POISON and for lists holding it anywhere."""
    return value is POISON or (isinstance(value, tuple) and any(map(poisoned, value)))


def did_you_mean(name: str, candidates: Any) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"did you mean '{close[0]}'?" if close else None


def arithmetic(expr: ast.BinOp, left: float, right: float) -> Any:
    if expr.op in ("/", "//", "%") and right == 0:
        raise LowerError("division by zero", expr.span)
    if expr.op == "**" and isinstance(right, int) and right < 0 and isinstance(left, int):
        return float(left) ** right
    if expr.op == "**" and abs(right) > 64:
        raise LowerError("exponent too large", expr.span)
    ops = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b,
        "//": lambda a, b: a // b,
        "%": lambda a, b: a % b,
        "**": lambda a, b: a**b,
    }
    result = ops[expr.op](left, right)
    if isinstance(result, float) and not math.isfinite(result):
        raise LowerError("arithmetic overflow", expr.span)
    too_large = limits.integer_problem(result) if is_int(result) else None
    if too_large is not None:
        raise LowerError(too_large, expr.span)
    return result


def describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return "a tensor"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Keyword):
        return f"the unknown name '{value.name}'"
    if isinstance(value, tuple):
        return f"a list of {len(value)}"
    return type(value).__name__


def call_builtin(func: str, args: Sequence[Any], span: Span) -> Any:
    """``range``, ``min``, ``max`` and ``len`` on already evaluated arguments."""
    if any(poisoned(a) for a in args):
        return POISON
    if func == "len":
        if len(args) != 1 or not isinstance(args[0], tuple):
            raise LowerError("len() takes one list", span)
        return len(args[0])
    if not args or not all(is_int(a) for a in args):
        raise LowerError(f"{func}() takes integers", span)
    if func == "range":
        if len(args) > 3 or (len(args) == 3 and args[2] == 0):
            raise LowerError("range() takes 1 to 3 integers and a non-zero step", span)
        if len(range(*args)) > MAX_UNROLL:
            raise LowerError(
                f"range() of {len(range(*args))} items is too long to unroll "
                f"(at most {MAX_UNROLL})",
                span,
            )
        return tuple(range(*args))
    return min(args) if func == "min" else max(args)
