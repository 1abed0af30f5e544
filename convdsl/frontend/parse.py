"""Text → AST: run the lark grammar, turn its tree into ``ast`` nodes, and its errors into ours.

Every AST node gets a ``Span`` from lark's token or tree positions (1-based, end exclusive).
Any lark exception becomes a ``ConvdslError`` worded in the user's terms: it names tokens as the
user wrote them (``')'``, ``name 'x'``), never lark's terminal names. Only the first syntax error
is reported; an LALR parser cannot reliably resynchronise in a newline-insensitive language.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer_NonRecursive, Tree, v_args
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.lexer import PatternStr
from lark.tree import Meta

from convdsl.diagnostics import ConvdslError, InternalError, Source, Span, error
from convdsl.frontend import ast
from convdsl.ir import limits

_GRAMMAR_FILE = "convdsl.lark"

_KEYWORDS = frozenset({"NETWORK", "INPUT", "OUTPUT", "BLOCK", "RETURN", "FOR", "IN"})

# Terminals whose tokens vary; every other terminal is shown as its literal text, quoted.
_KINDS = {"NAME": "name", "INT": "integer", "FLOAT": "number", "STRING": "string"}

# Sets of expected terminals shown as one phrase: (phrase, all required, also absorbed).
_GROUPS: tuple[tuple[str, set[str], set[str]], ...] = (
    ("an expression", {"NAME", "INT", "FLOAT", "STRING", "LSQB", "LPAR", "MINUS"}, set()),
    ("an operator", {"PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "PERCENT", "POW"}, set()),
    ("a statement", {"NAME", "FOR", "RETURN"}, {"INPUT", "OUTPUT", "BLOCK", "SEMICOLON"}),
)
# Listed first, in this order: at a missing token these are usually what the user forgot.
_FIRST = ("'}'", "')'", "']'", "'='", "','", "':'")
# Then other quoted tokens alphabetically, then these phrases in this order, then end of file.
_PHRASES = ("an expression", "an operator", "a name", "an integer", "a number", "a string")
_CLOSERS = frozenset({"RBRACE", "RPAR", "RSQB"})
_MAX_EXPECTED = 5

_TOP_LEVEL_ONLY = {
    "INPUT": "inputs are declared at top level",
    "OUTPUT": "outputs are declared at top level",
    "BLOCK": "blocks are defined at top level",
}

_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n"}
_ESCAPE_RE = re.compile(r"\\(.)")


def parse(source: Source) -> ast.Module:
    """Parse a whole ``.conv`` text; raise ``ConvdslError`` for the first syntax error.

    >>> module = parse(Source("<string>", "input x: f32[1, 3]\\ny = relu(x) : [1, 3]"))
    >>> [type(item).__name__ for item in module.items], module.items[1].span.line
    (['InputDecl', 'Assign'], 2)
    """
    try:
        tree = _parser().parse(source.text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source) from None
    except LarkError as exc:
        raise InternalError(f"the parser failed: {exc}") from exc
    try:
        return _ToAst(source).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, ConvdslError):
            raise exc.orig_exc from None
        raise InternalError(f"building the AST failed: {exc.orig_exc!r}") from exc.orig_exc


def parse_field(text: str, at: Span, field: Span) -> ast.Expr:
    """Parse ``text``, one expression written inside a string at ``at`` (a field of a name
    template, ``field`` with its braces); spans point into the file, as anywhere else.

    >>> src = Source("<string>", 'y = relu(x, name="f.{i + 1}")')
    >>> parse_field("i + 1", Span(src, 1, 22, 1, 27), Span(src, 1, 21, 1, 28)).span.column
    22
    """
    # Padded to its place in the file, so lark's positions are the file's.
    padded = "\n" * (at.line - 1) + " " * (at.column - 1) + text
    try:
        tree = _parser("expr").parse(padded)
    except UnexpectedToken as exc:
        if exc.token.type == "$END":
            what = _describe_expected(_expected(exc))
            raise error(f"unexpected end of the field; expected {what}", field) from None
        message = f"unexpected {_describe_token(exc.token)} in a field of a layer name"
        raise error(message, _token_span(exc.token, at.source)) from None
    except UnexpectedInput as exc:
        raise _syntax_error(exc, at.source) from None
    except LarkError as exc:
        raise InternalError(f"the parser failed on a name field: {exc}") from exc
    try:
        # Wrapped so that a lone token (``{i}``) goes through the token callbacks too.
        expr: ast.Expr = _ToAst(at.source).transform(Tree("field", [tree]))  # type: ignore[assignment]
        return expr
    except VisitError as exc:
        if isinstance(exc.orig_exc, ConvdslError):
            raise exc.orig_exc from None
        raise InternalError(f"building the AST failed: {exc.orig_exc!r}") from exc.orig_exc


def unescape(text: str) -> str:
    """A string literal's body with its escapes replaced (checked by the lexer callback)."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), text)


@functools.cache
def _parser(start: str = "start") -> Lark:
    try:
        return Lark(
            _grammar_text(),
            parser="lalr",
            lexer="basic",
            propagate_positions=True,
            maybe_placeholders=False,
            start=start,
        )
    except LarkError as exc:
        raise InternalError(f"cannot build the parser from {_GRAMMAR_FILE}: {exc}") from exc


def _grammar_text() -> str:
    # In a source checkout, the grammar beside this package (an editable install's mapping of
    # convdsl.grammar may point at another checkout); installed, the package data.
    local = Path(__file__).resolve().parents[2] / "grammar" / _GRAMMAR_FILE
    if local.is_file():
        return local.read_text()
    return importlib.resources.files("convdsl.grammar").joinpath(_GRAMMAR_FILE).read_text()


# ---- tree → AST --------------------------------------------------------------------------


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive[Token, ast.Module]):
    """Builds AST nodes bottom-up; token callbacks (not affected by v_args) make leaves."""

    def __init__(self, source: Source) -> None:
        super().__init__(visit_tokens=True)
        self._source = source

    def _span(self, meta: Meta) -> Span:
        return Span(self._source, meta.line, meta.column, meta.end_line, meta.end_column)

    def NAME(self, tok: Token) -> ast.Name:
        return ast.Name(str(tok), _token_span(tok, self._source))

    def INT(self, tok: Token) -> ast.Int:
        span = _token_span(tok, self._source)
        # Checked by length first: int() refuses literals of thousands of digits.
        digits = len(str(limits.MAX_INTEGER))
        value = int(tok) if len(tok.lstrip("0")) <= digits else limits.MAX_INTEGER + 1
        too_large = limits.integer_problem(value)
        if too_large is not None:
            raise error(too_large, span)
        return ast.Int(value, span)

    def FLOAT(self, tok: Token) -> ast.Float:
        return ast.Float(float(tok), _token_span(tok, self._source))

    def STRING(self, tok: Token) -> ast.String:
        span = _token_span(tok, self._source)
        body = tok[1:-1]
        for match in _ESCAPE_RE.finditer(body):
            if match.group(1) not in _ESCAPES:
                column = span.column + 1 + match.start()
                raise error(
                    f"unknown escape '\\{match.group(1)}' in string",
                    Span(self._source, span.line, column, span.line, column + 2),
                    hint="the escapes are \\\\, \\\", \\' and \\n",
                )
        return ast.String(_ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(1)], body), span)

    def field(self, _meta: Meta, children: list[Any]) -> ast.Expr:
        """A name template's field, parsed alone by ``parse_field``."""
        expr: ast.Expr = children[0]
        return expr

    def start(self, _meta: Meta, children: list[Any]) -> ast.Module:
        # network_decl is the only rule that yields a bare Name at top level.
        network = children[0].id if children and isinstance(children[0], ast.Name) else None
        items = children[1:] if network is not None else children
        return ast.Module(self._source, network, tuple(items))

    def network_decl(self, _meta: Meta, children: list[ast.Name]) -> ast.Name:
        return children[0]

    def input_decl(self, meta: Meta, children: list[Any]) -> ast.InputDecl:
        layout = children.pop(1) if isinstance(children[1], ast.LayoutWord) else None
        name, dtype, *dims = children
        span = self._span(meta)
        return ast.InputDecl(name.id, dtype.id, tuple(dims), span, name.span, layout)

    def layout(self, _meta: Meta, children: list[ast.Name]) -> ast.LayoutWord:
        return ast.LayoutWord(children[0].id, children[0].span)

    def block_def(self, meta: Meta, children: list[Any]) -> ast.BlockDef:
        name, *rest = children
        params = tuple(c for c in rest if isinstance(c, ast.Param))
        body = tuple(rest[len(params) :])
        return ast.BlockDef(name.id, params, body, self._span(meta), name.span)

    def param(self, meta: Meta, children: list[Any]) -> ast.Param:
        name, *default = children
        return ast.Param(name.id, default[0] if default else None, self._span(meta))

    def assign(self, meta: Meta, children: list[Any]) -> ast.Assign:
        annotation = _pop_annotation(children)
        *targets, value = children
        return ast.Assign(tuple(targets), value, annotation, self._span(meta))

    def output_stmt(self, meta: Meta, children: list[Any]) -> ast.Output:
        annotation = _pop_annotation(children)
        layout = (
            children.pop(1)
            if len(children) > 1 and isinstance(children[1], ast.LayoutWord)
            else None
        )
        name, *value = children
        span = self._span(meta)
        return ast.Output(name.id, value[0] if value else None, annotation, span, name.span, layout)

    def for_stmt(self, meta: Meta, children: list[Any]) -> ast.For:
        var, iterable, *body = children
        return ast.For(var.id, iterable, tuple(body), self._span(meta))

    def return_stmt(self, meta: Meta, children: list[Any]) -> ast.Return:
        return ast.Return(tuple(children), self._span(meta))

    def annotation(self, meta: Meta, children: list[Any]) -> ast.ShapeAnnotation:
        return ast.ShapeAnnotation(tuple(children), self._span(meta))

    def binop(self, meta: Meta, children: list[Any]) -> ast.BinOp:
        left, op, right = children
        return ast.BinOp(str(op), left, right, self._span(meta))

    def neg(self, meta: Meta, children: list[Any]) -> ast.Neg:
        return ast.Neg(children[1], self._span(meta))

    def list_expr(self, meta: Meta, children: list[Any]) -> ast.ListExpr:
        return ast.ListExpr(tuple(children), self._span(meta))

    def keyword(self, meta: Meta, children: list[Any]) -> ast.Keyword:
        name, value = children
        return ast.Keyword(name.id, value, self._span(meta))

    def call(self, meta: Meta, children: list[Any]) -> ast.Call:
        func, *rest = children
        args: list[ast.Expr] = []
        kwargs: list[ast.Keyword] = []
        for arg in rest:
            if isinstance(arg, ast.Keyword):
                if any(k.name == arg.name for k in kwargs):
                    raise error(f"keyword argument '{arg.name}' is repeated", arg.span)
                kwargs.append(arg)
            elif kwargs:
                # The grammar accepts any order so that this gets a clearer message than lark's.
                raise error(
                    f"positional argument follows keyword argument '{kwargs[-1].name}'",
                    arg.span,
                    hint="put positional arguments before keyword arguments",
                )
            else:
                args.append(arg)
        return ast.Call(func.id, func.span, tuple(args), tuple(kwargs), self._span(meta))


def _pop_annotation(children: list[Any]) -> ast.ShapeAnnotation | None:
    if isinstance(children[-1], ast.ShapeAnnotation):
        return children.pop()
    return None


# ---- syntax errors -----------------------------------------------------------------------


def _syntax_error(exc: UnexpectedInput, source: Source) -> ConvdslError:
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        return _unexpected_token(exc, source)
    if isinstance(exc, UnexpectedToken):
        expected = _expected(exc) & _CLOSERS or _expected(exc)
        what = _describe_expected(expected)
        return error(f"unexpected end of file; expected {what}", _end_of_file(source))
    if isinstance(exc, UnexpectedCharacters):
        span = Span(source, exc.line, exc.column, exc.line, exc.column + 1)
        if exc.char in "\"'":
            return error("unterminated string", span, hint="close it on the same line")
        char = exc.char if exc.char.isprintable() else f"U+{ord(exc.char):04X}"
        return error(f"unexpected character '{char}'", span)
    # Other parsers' end-of-input errors; this LALR parser reports EOF as an UnexpectedToken.
    return error("unexpected end of file", _end_of_file(source))


def _unexpected_token(exc: UnexpectedToken, source: Source) -> ConvdslError:
    tok = exc.token
    expected = _expected(exc)
    misplaced = _misplaced_keyword(exc, expected, source)
    if misplaced is not None:
        return misplaced
    message = f"unexpected {_describe_token(tok)}; expected {_describe_expected(expected)}"
    return error(message, _token_span(tok, source))


def _misplaced_keyword(
    exc: UnexpectedToken, expected: set[str], source: Source
) -> ConvdslError | None:
    """A keyword where a name belongs, or a top-level-only statement inside braces."""
    tok = exc.token
    unreduced = [v for v in getattr(exc.state, "value_stack", ()) if isinstance(v, Token)]
    previous = unreduced[-1] if unreduced else None
    if tok.type in ("EQUAL", "COMMA") and previous is not None and previous.type in _KEYWORDS:
        # `input = 3`: the keyword itself was accepted, so blame it rather than the '='.
        return _reserved(previous, source)
    if tok.type not in _KEYWORDS:
        return None
    at_statement_start = "FOR" in expected
    if at_statement_start and tok.type in _TOP_LEVEL_ONLY:
        where = _enclosing_construct(unreduced)
        if where is not None:
            message = f"unexpected '{tok}' inside a {where}; {_TOP_LEVEL_ONLY[tok.type]}"
            return error(message, _token_span(tok, source))
    if at_statement_start and tok.type == "NETWORK":
        message = "unexpected 'network'; the 'network' header must come first in the file"
        return error(message, _token_span(tok, source))
    if "NAME" in expected:
        return _reserved(tok, source)
    return None


def _reserved(keyword: Token, source: Source) -> ConvdslError:
    message = f"'{keyword}' is a reserved word and cannot be used as a name"
    return error(message, _token_span(keyword, source))


def _enclosing_construct(unreduced: list[Token]) -> str | None:
    """'block' or 'loop' when the parser is inside one's braces (its keyword is unreduced)."""
    for tok in reversed(unreduced):
        if tok.type == "BLOCK":
            return "block"
        if tok.type == "FOR":
            return "loop"
    return None


def _token_span(tok: Token, source: Source) -> Span:
    line, column, end_line, end_column = tok.line, tok.column, tok.end_line, tok.end_column
    # lark types positions as optional; its basic lexer always sets them.
    if line is None or column is None or end_line is None or end_column is None:
        raise InternalError(f"the lexer gave token {tok!r} no position")
    return Span(source, line, column, end_line, end_column)


def _expected(exc: UnexpectedToken) -> set[str]:
    # `accepts` replays each terminal on a copy of the parser, so it drops LALR's spurious
    # lookaheads that `expected` still contains.
    try:
        accepts = exc.accepts
    except LarkError:
        accepts = None
    return set(accepts or exc.expected)


def _describe_expected(expected: set[str]) -> str:
    names = set(expected)
    phrases = []
    for phrase, required, absorbed in _GROUPS:
        if required <= names:
            phrases.append(phrase)
            names -= required | absorbed
    items = sorted(phrases + [_describe_terminal(name) for name in names], key=_display_order)
    if len(items) > _MAX_EXPECTED:
        return ", ".join(items[:_MAX_EXPECTED]) + ", ..."
    if len(items) <= 1:
        return items[0] if items else "nothing more"
    return ", ".join(items[:-1]) + " or " + items[-1]


def _describe_terminal(name: str) -> str:
    if name in _KINDS:
        kind = _KINDS[name]
        return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
    if name == "$END":
        return "end of file"
    pattern = _parser().get_terminal(name).pattern
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name.lower()


def _display_order(item: str) -> tuple[int, int, str]:
    if item in _FIRST:
        return (0, _FIRST.index(item), "")
    if item.startswith("'"):
        return (1, 0, item)
    if item in _PHRASES:
        return (2, _PHRASES.index(item), "")
    return (3 if item == "a statement" else 4, 0, item)


def _describe_token(tok: Token) -> str:
    if tok.type == "NAME":
        return f"name '{tok}'"
    if tok.type in _KINDS:
        return f"{_KINDS[tok.type]} {tok}"
    return f"'{tok}'"


def _end_of_file(source: Source) -> Span:
    """Just past the last non-blank line, where the missing text would go."""
    lines = source.text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    line = max(len(lines), 1)
    column = len(lines[-1].rstrip()) + 1 if lines else 1
    return Span(source, line, column, line, column + 1)
