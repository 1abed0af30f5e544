"""Layer names: what a name may be, and name templates (``name="features.{i}"``).

A layer name is one or more dot-separated segments, each an identifier or an integer:
``conv1``, ``0``, ``features.0``, ``layer1.0.bn1``, the names PyTorch gives the modules of a
``state_dict`` (``nn.Sequential`` children are ``0``, ``1``...). Parameter names append a role
(``features.0.weight``), so every name stays a plain key of an ``.npz`` weights file.

A string literal given as ``name=`` is a template: each ``{expr}`` is an expression of the
language, parsed by the language's own parser and evaluated here over compile-time values only
(integers and strings: loop variables, block parameters, arithmetic on them). Python's
``str.format`` and ``eval`` never see user text, and a field can neither call an op nor read a
tensor, so formatting a name never adds a layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from convdsl.diagnostics import Diagnostic, Span
from convdsl.frontend import ast
from convdsl.frontend.parse import parse_field, unescape
from convdsl.frontend.values import (
    BUILTINS,
    POISON,
    LowerError,
    arithmetic,
    call_builtin,
    describe,
    is_int,
    is_number,
    poisoned,
)

_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
NAME_HINT = 'a layer name is dot-separated identifiers or integers, e.g. "features.0.conv"'
FIELD_HINT = "a field holds an integer or a string, e.g. {i}, {i + 1} or {prefix}"


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a layer name, or None when it is one."""
    if not name:
        return "it is empty"
    for segment in name.split("."):
        if not segment:
            return "it has an empty segment (a leading, trailing or doubled '.')"
        if not _SEGMENT.fullmatch(segment):
            return f"its segment '{segment}' is neither an identifier nor an integer"
    return None


def name_hint(name: str) -> str:
    """The hint for a name ``name_problem`` refused."""
    if "{" in name or "}" in name:
        return (
            'a name is formatted only where it is written as a literal, name="...{i}"; pass '
            "the values to the block and write the template in it"
        )
    return NAME_HINT


def checked_name(value: Any, owner: str, span: Span, found: str, example: str) -> str:
    """``value`` given as ``name=`` to ``owner`` (an op, a block), if it is a layer name."""
    if not isinstance(value, str):
        raise LowerError(
            f'{owner}: name: expected a layer name such as "{example}", found {found}', span
        )
    problem = name_problem(value)
    if problem is not None:
        raise LowerError(
            f"{owner}: name: '{value}' is not a layer name: {problem}",
            span,
            hint=name_hint(value),
        )
    return value


def duplicate_name(name: str, what: str, span: Span, first: Span) -> LowerError:
    """An explicit name given twice: an error, not a silent ``_1`` (weights bound by name would
    go to the wrong layer), pointing at both places."""
    again = first == span  # the same call run twice: in a loop, or in a block called again
    hint = (
        "this call runs more than once; compute the name from a loop variable or block "
        'parameter, e.g. name="features.{i}"'
        if again
        else "give each layer its own name"
    )
    err = LowerError(f"{what} name '{name}' is already used", span, hint=hint)
    where = " (by an earlier run of this call)" if again else ""
    note = Diagnostic(f"'{name}' was first used here{where}", first, severity="note")
    err.diagnostic = replace(err.diagnostic, notes=(note,))
    return err


@dataclass(frozen=True, slots=True)
class Field:
    """``{expr}`` in a template; ``span`` covers the braces."""

    expr: ast.Expr
    span: Span


Template = tuple[str | Field, ...]


def parse_template(literal: ast.String) -> Template:
    """The text and fields of a ``name="..."`` literal, each field's expression with spans into
    the file."""
    span = literal.span
    line = span.source.line(span.line)
    quoted = line[span.column - 1 : span.end_column - 1]
    if span.end_line != span.line or len(quoted) < 2 or quoted[0] not in "\"'":
        return (literal.value,)  # positions unknown: no fields, a literal name
    body = quoted[1:-1]

    def at(start: int, end: int) -> Span:
        column = span.column + 1  # the body's first character
        return Span(span.source, span.line, column + start, span.line, column + end)

    parts: list[str | Field] = []
    text_start = pos = 0
    while pos < len(body):
        char = body[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "}":
            raise LowerError("unmatched '}' in a layer name", at(pos, pos + 1), hint=FIELD_HINT)
        if char != "{":
            pos += 1
            continue
        close = body.find("}", pos + 1)
        if close < 0:
            raise LowerError(
                "unclosed '{' in a layer name",
                at(pos, pos + 1),
                hint="close the field with '}': name=\"features.{i}\"",
            )
        nested = body.find("{", pos + 1, close)
        if nested >= 0:
            raise LowerError("'{' inside a field of a layer name", at(nested, nested + 1))
        inner = body[pos + 1 : close]
        where = at(pos, close + 1)
        if not inner.strip():
            raise LowerError("empty field '{}' in a layer name", where, hint=FIELD_HINT)
        parts.append(unescape(body[text_start:pos]))
        parts.append(Field(parse_field(inner, at(pos + 1, close), where), where))
        pos = text_start = close + 1
    parts.append(unescape(body[text_start:]))
    return tuple(p for p in parts if p != "")


Lookup = Callable[[str, Span], Any]
"""Reads a variable (raising the lowerer's 'unknown name' error)."""


def format_template(template: Template, lookup: Lookup) -> Any:
    """The name ``template`` spells with the variables ``lookup`` reads; POISON if a variable
    failed earlier."""
    out: list[str] = []
    for part in template:
        if isinstance(part, str):
            out.append(part)
            continue
        value = _evaluate(part.expr, lookup)
        if poisoned(value):
            return POISON
        if is_int(value) and value < 0:
            raise LowerError(
                f"this field of a layer name is {value}; a name segment cannot be negative",
                part.span,
            )
        if isinstance(value, float):  # not its value: a loop reports it once, not per pass
            raise LowerError(
                "a field of a layer name needs an integer or a string, found a float",
                part.span,
                hint="integer division is //, e.g. {i // 2}",
            )
        if not is_int(value) and not isinstance(value, str):
            raise LowerError(
                f"a field of a layer name needs an integer or a string, found {describe(value)}",
                part.span,
                hint=FIELD_HINT,
            )
        out.append(str(value))
    return "".join(out)


def _evaluate(expr: ast.Expr, lookup: Lookup) -> Any:
    """Compile-time arithmetic only: literals, variables, operators and the builtins."""
    if isinstance(expr, ast.Int | ast.Float | ast.String):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.id in ("true", "false"):
            return expr.id == "true"
        return lookup(expr.id, expr.span)
    if isinstance(expr, ast.Neg):
        operand = _operand(expr.operand, lookup)
        return operand if operand is POISON else -operand
    if isinstance(expr, ast.BinOp):
        left, right = _operand(expr.left, lookup), _operand(expr.right, lookup)
        if left is POISON or right is POISON:
            return POISON
        return arithmetic(expr, left, right)
    if isinstance(expr, ast.ListExpr):
        return tuple(_evaluate(item, lookup) for item in expr.items)
    if isinstance(expr, ast.Call) and expr.func in BUILTINS and not expr.kwargs:
        args = [_evaluate(arg, lookup) for arg in expr.args]
        return call_builtin(expr.func, args, expr.span)
    raise LowerError(
        f"a field of a layer name cannot call '{expr.func}'"
        if isinstance(expr, ast.Call)
        else "this expression cannot be part of a layer name",
        expr.span,
        hint=f"{FIELD_HINT}; of the functions, only {', '.join(BUILTINS)}",
    )


def _operand(expr: ast.Expr, lookup: Lookup) -> Any:
    value = _evaluate(expr, lookup)
    if value is POISON or is_number(value):
        return value
    raise LowerError(
        f"a field of a layer name computes with numbers, found {describe(value)}",
        expr.span,
        hint=FIELD_HINT,
    )


class LayerNames:
    """The layer names and block-call prefixes a network has taken so far.

    A name made from a variable is made unique with ``_1``, ``_2``...; a name given with
    ``name=`` (``claim``) must be free, so weights saved by another framework bind to it."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.explicit: dict[str, Span] = {}  # names given by name=, where given
        self.prefixes: dict[str, Span] = {}  # each block call's prefix, at its call
        self.next_suffix: dict[str, int] = {}  # per name: keeps long unrolled loops linear

    def unique(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``... when taken."""
        candidate, suffix = name, self.next_suffix.get(name, 1)
        while candidate in self.used:
            candidate = f"{name}_{suffix}"
            suffix += 1
        self.next_suffix[name] = suffix
        self.used.add(candidate)
        return candidate

    def block_prefix(self, name: str, span: Span) -> str:
        """A prefix no layer or earlier block call has used."""
        candidate, suffix = name, self.next_suffix.get(name, 1)
        while candidate in self.used or candidate in self.prefixes:
            candidate = f"{name}_{suffix}"
            suffix += 1
        self.prefixes[candidate] = span
        return candidate

    def taken(self, name: str, block: bool) -> bool:
        """Whether ``name`` is a layer's (or, for a ``block`` call, a prefix) already."""
        return name in self.used or (block and name in self.prefixes)

    def given_at(self, name: str) -> Span | None:
        """Where ``name=`` or a block call took ``name``; None for a variable's layer."""
        return self.explicit.get(name) or self.prefixes.get(name)

    def claim(self, name: str, span: Span, block: bool) -> str:
        """Take a name given with ``name=`` at ``span`` (``taken`` said it is free)."""
        self.explicit[name] = span
        if block:
            self.prefixes[name] = span
        return name
