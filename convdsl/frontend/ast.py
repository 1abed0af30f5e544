"""The abstract syntax tree of a ``.conv`` file: plain frozen dataclasses, each with its span.

Produced by ``frontend.parse`` from the lark tree, consumed by ``frontend.lower`` which evaluates
blocks, loops and integer arithmetic and builds the IR graph. Nothing here knows about ops.
"""

from __future__ import annotations

from dataclasses import dataclass

from convdsl.diagnostics import Source, Span

# ---- expressions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Name:
    """A bare identifier: a variable, a block parameter, or a keyword value such as ``same``."""

    id: str
    span: Span


@dataclass(frozen=True, slots=True)
class Int:
    value: int
    span: Span


@dataclass(frozen=True, slots=True)
class Float:
    value: float
    span: Span


@dataclass(frozen=True, slots=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True, slots=True)
class ListExpr:
    """``[a, b, c]``: per-axis values, per-side padding pairs, loop ranges."""

    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    """``left op right`` with op one of ``+ - * / // % **``."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Keyword:
    """``name=value`` inside a call."""

    name: str
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    """``func(args..., key=value...)``: an op, a block, or a builtin such as ``range``."""

    func: str
    func_span: Span
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    span: Span


Expr = Name | Int | Float | String | ListExpr | BinOp | Neg | Call


# ---- statements --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShapeAnnotation:
    """``: [N, 64, H/2, 56]`` after a statement: the shape its writer expects; ``_`` matches any.
    Each dim is an expression of integers, block parameters and input size names."""

    dims: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class LayoutWord:
    """``nhwc`` in ``input x: nhwc f32[...]`` or ``output y: nhwc = ...``."""

    word: str
    span: Span


@dataclass(frozen=True, slots=True)
class InputDecl:
    """``input image: f32[N, 3, 224, 224]``, or ``input image: nhwc f32[N, 224, 224, 3]``
    with its dims in that layout's order."""

    name: str
    dtype: str
    dims: tuple[Name | Int, ...]
    span: Span
    name_span: Span
    layout: LayoutWord | None = None


@dataclass(frozen=True, slots=True)
class Assign:
    """``a = expr`` or ``a, b = expr`` (a block returning two values), optionally annotated."""

    targets: tuple[Name, ...]
    value: Expr
    annotation: ShapeAnnotation | None
    span: Span


@dataclass(frozen=True, slots=True)
class Output:
    """``output name = expr`` or ``output name`` (an existing variable), optionally annotated;
    ``output name: nhwc = expr`` returns it channels-last."""

    name: str
    value: Expr | None
    annotation: ShapeAnnotation | None
    span: Span
    name_span: Span
    layout: LayoutWord | None = None


@dataclass(frozen=True, slots=True)
class For:
    """``for i in range(10) { ... }`` or ``for d in [1, 2, 4] { ... }``."""

    var: str
    iterable: Expr
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Return:
    values: tuple[Expr, ...]
    span: Span


Stmt = Assign | Output | For | Return


@dataclass(frozen=True, slots=True)
class Param:
    """A block parameter, with an optional default value."""

    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class BlockDef:
    """``block name(params) { stmts; return values }``: inlined at each call."""

    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True, slots=True)
class Module:
    """A whole file: an optional ``network NAME`` header, then inputs, blocks and statements."""

    source: Source
    network: str | None
    items: tuple[InputDecl | BlockDef | Stmt, ...]
