"""Scopes of the front end: the variables of the file and of each block call, and the small
questions asked of them while lowering (an integer in scope, the variables a failed loop leaves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convdsl.diagnostics import Span
from convdsl.frontend import ast
from convdsl.frontend.values import POISON, is_int


@dataclass
class Scope:
    """Variables of one block invocation (or the file); ``prefix`` names the layers made in it."""

    prefix: str
    parent: Scope | None = None
    vars: dict[str, Any] = field(default_factory=dict)

    def lookup(self, name: str) -> Any:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.vars:
                return scope.vars[name]
            scope = scope.parent
        raise KeyError(name)

    def qualify(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


@dataclass
class Frame:
    """One active block call: for 'in block ... called here' notes, and its layer prefix."""

    block: str
    span: Span
    prefix: str = ""


def span_of(expr: Any) -> Span:
    return expr.span


def signature(block: ast.BlockDef) -> str:
    params = [p.name if p.default is None else f"{p.name}=..." for p in block.params]
    return f"{block.name}({', '.join(params)})"


def int_or_none(scope: Scope, name: str) -> Any:
    try:
        value = scope.lookup(name)
    except KeyError:
        return None
    return value if value is POISON or is_int(value) else None


def poison_targets(stmt: ast.For, scope: Scope) -> None:
    """A loop that could not run leaves its variables failed, not undefined."""
    scope.vars[stmt.var] = POISON
    for inner in stmt.body:
        if isinstance(inner, ast.Assign):
            for target in inner.targets:
                scope.vars[target.id] = POISON
        elif isinstance(inner, ast.For):
            poison_targets(inner, scope)
