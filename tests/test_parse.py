"""Parsing .conv text into the AST: every construct, its spans, and golden syntax errors."""

from __future__ import annotations

import dataclasses
import logging
from typing import TypeVar

import pytest
from lark import Lark

from convdsl.diagnostics import ConvdslError, Diagnostic, Source, Span
from convdsl.frontend import ast
from convdsl.frontend.parse import _grammar_text, parse

T = TypeVar("T")

EXAMPLE = """\
# FCN-style example
network demo

input image: f32[N, 3, 224, 224]

block sep(x, ch, stride=1) {
  d = depthwise2d(x, kernel=3, stride=stride, padding=same, activation=relu6)
  p = conv2d(d, ch, kernel=1)
  return p
}

a = conv2d(image, 64, kernel=3, padding=same, activation=relu) : [N, 64, 224, 224]
s = a + b * 2
r, k = layer(x, 2 ** i)
y = conv2d(x, 8, kernel=[3, 1], padding=[[1, 1], [0, 0]], scale=1e-5, name="hello")
output score = crop(up, like=image) : [N, 21, 224, 224]
output score2
for i in range(10) {
  x = f(x, dilation=2 ** i)
}
for d in [1, 2, 4, 8] { x = g(x, d) }
"""


def parse_text(text: str) -> ast.Module:
    return parse(Source("net.conv", text))


def value_of(expr_text: str) -> ast.Expr:
    """The AST of one expression, parsed as the value of `v = ...`."""
    (item,) = parse_text(f"v = {expr_text}").items
    assert isinstance(item, ast.Assign)
    return item.value


def narrow(node: object, kind: type[T]) -> T:
    """``node``, checked to be a ``kind`` (so tests fail clearly and type-check)."""
    assert isinstance(node, kind), node
    return node


def where(span: Span) -> tuple[int, int, int, int]:
    return (span.line, span.column, span.end_line, span.end_column)


def show(node: ast.Expr | None) -> str:
    """A compact prefix form of an expression, so precedence tests read at a glance."""
    match node:
        case ast.Name(id=name):
            return name
        case ast.Int(value=value) | ast.Float(value=value) | ast.String(value=value):
            return repr(value)
        case ast.ListExpr(items=items):
            return "[" + " ".join(show(item) for item in items) + "]"
        case ast.BinOp(op=op, left=left, right=right):
            return f"({op} {show(left)} {show(right)})"
        case ast.Neg(operand=operand):
            return f"(neg {show(operand)})"
        case ast.Call(func=func, args=args, kwargs=kwargs):
            parts = [show(arg) for arg in args] + [f"{k.name}={show(k.value)}" for k in kwargs]
            return f"{func}(" + " ".join(parts) + ")"
    raise AssertionError(f"not an expression: {node!r}")


def syntax_error(text: str) -> Diagnostic:
    with pytest.raises(ConvdslError) as info:
        parse_text(text)
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.severity == "error"
    assert diagnostic.span is not None
    return diagnostic


# ---- whole files -------------------------------------------------------------------------


def test_example_parses_into_items_in_source_order() -> None:
    module = parse_text(EXAMPLE)
    assert module.network == "demo"
    assert module.source.name == "net.conv"
    kinds = [type(item).__name__ for item in module.items]
    assert kinds == [
        "InputDecl",
        "BlockDef",
        "Assign",
        "Assign",
        "Assign",
        "Assign",
        "Output",
        "Output",
        "For",
        "For",
    ]


def _nodes(node: object) -> list[object]:
    """Every dataclass node reachable from ``node``, itself included."""
    found = [node]
    for field in dataclasses.fields(node):  # type: ignore[arg-type]
        value = getattr(node, field.name)
        for child in value if isinstance(value, tuple) else (value,):
            if dataclasses.is_dataclass(child) and not isinstance(child, Span | Source):
                found.extend(_nodes(child))
    return found


def test_every_node_span_lies_inside_the_source_and_is_ordered() -> None:
    module = parse_text(EXAMPLE)
    lines = EXAMPLE.splitlines()
    nodes = [n for item in module.items for n in _nodes(item)]
    assert len(nodes) > 100
    for node in nodes:
        for name in ("span", "name_span", "func_span"):
            span = getattr(node, name, None)
            if span is None:
                continue
            assert span.source is module.source
            assert (span.line, span.column) < (span.end_line, span.end_column), node
            assert 1 <= span.column <= len(lines[span.line - 1]), node
            assert span.end_column <= len(lines[span.end_line - 1]) + 1, node


def test_empty_and_comment_only_files_have_no_items() -> None:
    assert parse_text("").items == ()
    module = parse_text("# nothing here\n\n   # still nothing\n")
    assert module.network is None
    assert module.items == ()


def test_network_header() -> None:
    module = parse_text("network resnet18;\ninput x: f32[1]")
    assert module.network == "resnet18"
    assert isinstance(module.items[0], ast.InputDecl)


def test_statements_may_span_lines_and_share_lines() -> None:
    module = parse_text(
        "a = conv2d(x,\n   8,\n   kernel=3)  # trailing comment\nb = a; c = b ;; d = c"
    )
    assigns = [narrow(item, ast.Assign) for item in module.items]
    assert [item.targets[0].id for item in assigns] == ["a", "b", "c", "d"]
    assert where(module.items[0].span) == (1, 1, 3, 13)
    assert where(module.items[2].span) == (4, 8, 4, 13)


def test_keyword_like_prefixes_and_value_names_are_plain_names() -> None:
    module = parse_text("inputs = format(true, same, relu, _, in_ch, for_each, blocks)")
    item = narrow(module.items[0], ast.Assign)
    assert item.targets[0].id == "inputs"
    assert show(item.value) == "format(true same relu _ in_ch for_each blocks)"


# ---- declarations and statements ---------------------------------------------------------


def test_input_declaration() -> None:
    (decl,) = parse_text("input image: f32[N, 3, 224, 224]").items
    assert isinstance(decl, ast.InputDecl)
    assert (decl.name, decl.dtype) == ("image", "f32")
    assert [show(d) for d in decl.dims] == ["N", "3", "224", "224"]
    assert isinstance(decl.dims[0], ast.Name) and isinstance(decl.dims[1], ast.Int)
    assert where(decl.span) == (1, 1, 1, 33)
    assert where(decl.name_span) == (1, 7, 1, 12)
    assert where(decl.dims[3].span) == (1, 29, 1, 32)


def test_input_dtype_is_any_name_and_dims_may_be_empty() -> None:
    decl = narrow(parse_text("input s: bf16[]").items[0], ast.InputDecl)
    assert (decl.dtype, decl.dims) == ("bf16", ())


def test_block_definition() -> None:
    text = "block sep(x, ch, stride=1,) {\n  d = f(x, stride=stride)\n  return d, ch\n}"
    (block,) = parse_text(text).items
    assert isinstance(block, ast.BlockDef)
    assert block.name == "sep"
    assert where(block.span) == (1, 1, 4, 2)
    assert where(block.name_span) == (1, 7, 1, 10)
    assert [(p.name, p.default) for p in block.params[:2]] == [("x", None), ("ch", None)]
    stride = block.params[2]
    assert stride.name == "stride" and show(stride.default) == "1"
    assert where(stride.span) == (1, 18, 1, 26)
    assign, ret = block.body
    assert isinstance(assign, ast.Assign) and isinstance(ret, ast.Return)
    assert [show(v) for v in ret.values] == ["d", "ch"]
    assert where(ret.span) == (3, 3, 3, 15)


def test_block_without_parameters_or_statements() -> None:
    block = narrow(parse_text("block nothing() {}").items[0], ast.BlockDef)
    assert (block.params, block.body) == ((), ())


def test_assignment_with_shape_annotation() -> None:
    text = "a = conv2d(image, 64, kernel=3) : [N, 64, _, 224]"
    (assign,) = parse_text(text).items
    assert isinstance(assign, ast.Assign)
    assert [t.id for t in assign.targets] == ["a"]
    assert show(assign.value) == "conv2d(image 64 kernel=3)"
    annotation = assign.annotation
    assert annotation is not None
    assert [show(d) for d in annotation.dims] == ["N", "64", "_", "224"]
    assert isinstance(annotation.dims[2], ast.Name)
    assert where(annotation.span) == (1, 33, 1, 50)
    assert where(assign.span) == (1, 1, 1, 50)


def test_assignment_to_two_targets() -> None:
    assign = narrow(parse_text("r, k = layer(x, 2 ** i)").items[0], ast.Assign)
    assert [(t.id, where(t.span)) for t in assign.targets] == [
        ("r", (1, 1, 1, 2)),
        ("k", (1, 4, 1, 5)),
    ]
    assert assign.annotation is None
    assert where(assign.span) == (1, 1, 1, 24)


def test_output_forms() -> None:
    text = "output score = crop(up, like=image) : [N, 21]\noutput score2\noutput x : [1]"
    full, bare, annotated = (narrow(item, ast.Output) for item in parse_text(text).items)
    assert full.name == "score"
    assert show(full.value) == "crop(up like=image)"
    assert [show(d) for d in narrow(full.annotation, ast.ShapeAnnotation).dims] == ["N", "21"]
    assert where(full.span) == (1, 1, 1, 46)
    assert where(full.name_span) == (1, 8, 1, 13)
    assert (bare.name, bare.value, bare.annotation) == ("score2", None, None)
    assert where(bare.span) == (2, 1, 2, 14)
    assert annotated.value is None and annotated.annotation is not None


def test_for_loops() -> None:
    text = "for i in range(10) {\n  x = f(x, dilation=2 ** i)\n}\nfor d in [1, 2] { x = g(x, d) }"
    loop, over_list = (narrow(item, ast.For) for item in parse_text(text).items)
    assert (loop.var, show(loop.iterable)) == ("i", "range(10)")
    body = narrow(loop.body[0], ast.Assign)
    assert show(body.value) == "f(x dilation=(** 2 i))"
    assert where(loop.span) == (1, 1, 3, 2)
    assert show(over_list.iterable) == "[1 2]"
    assert where(over_list.span) == (4, 1, 4, 32)


def test_loops_nest_in_loops_and_blocks() -> None:
    text = "block b(x) { for i in range(2) { for j in range(i) { x = f(x) } }\n return x }"
    block = narrow(parse_text(text).items[0], ast.BlockDef)
    outer = narrow(block.body[0], ast.For)
    inner = narrow(outer.body[0], ast.For)
    assert (outer.var, inner.var) == ("i", "j")
    assert isinstance(block.body[1], ast.Return)


def test_return_at_top_level_parses_for_lowering_to_reject() -> None:
    (ret,) = parse_text("return a").items
    assert isinstance(ret, ast.Return)


# ---- expressions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a + b * 2", "(+ a (* b 2))"),
        ("a * b + 2", "(+ (* a b) 2)"),
        ("a - b - c", "(- (- a b) c)"),
        ("a / b // c % d * e", "(* (% (// (/ a b) c) d) e)"),
        ("2 ** 3 ** 2", "(** 2 (** 3 2))"),
        ("-2 ** 2", "(neg (** 2 2))"),
        ("2 ** -1", "(** 2 (neg 1))"),
        ("-a * b", "(* (neg a) b)"),
        ("- -a", "(neg (neg a))"),
        ("a - -b", "(- a (neg b))"),
        ("(a + b) * c", "(* (+ a b) c)"),
        ("2 * (3 - (4))", "(* 2 (- 3 4))"),
        ("a//b", "(// a b)"),
        ("a**b*c", "(* (** a b) c)"),
    ],
)
def test_operator_precedence_and_associativity(text: str, expected: str) -> None:
    assert show(value_of(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("224", 224),
        ("1.5", 1.5),
        ("1e-5", 1e-5),
        ("3E+2", 300.0),
        (".5", 0.5),
        ("2.", 2.0),
        ("2.5e1", 25.0),
    ],
)
def test_numbers(text: str, expected: float) -> None:
    node = value_of(text)
    assert isinstance(node, ast.Int if isinstance(expected, int) else ast.Float)
    assert node.value == expected
    assert type(node.value) is type(expected)
    assert where(node.span) == (1, 5, 1, 5 + len(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"hello"', "hello"),
        ("'single'", "single"),
        ('""', ""),
        (r'"say \"hi\""', 'say "hi"'),
        (r"'it\'s'", "it's"),
        (r'"two\nlines"', "two\nlines"),
        (r'"back\\slash"', "back\\slash"),
        (r'"\\n"', "\\n"),
        ("'a \"quote\"'", 'a "quote"'),
        ('"it\'s"', "it's"),
    ],
)
def test_strings_are_unescaped(text: str, expected: str) -> None:
    node = value_of(text)
    assert isinstance(node, ast.String)
    assert node.value == expected
    assert where(node.span) == (1, 5, 1, 5 + len(text))


def test_lists() -> None:
    assert show(value_of("[]")) == "[]"
    assert show(value_of("[1, 2, 3,]")) == "[1 2 3]"
    assert show(value_of("[[1, 1], [0, 0]]")) == "[[1 1] [0 0]]"
    assert show(value_of("[a + 1, f(b), 'x']")) == "[(+ a 1) f(b) 'x']"
    node = narrow(value_of("[[1, 1], [0]]"), ast.ListExpr)
    assert where(node.span) == (1, 5, 1, 18)
    assert where(node.items[1].span) == (1, 14, 1, 17)


def test_calls() -> None:
    assert show(value_of("f()")) == "f()"
    assert show(value_of("f(a,)")) == "f(a)"
    assert show(value_of("f(k=1,)")) == "f(k=1)"
    assert show(value_of("f(x, 8, g(y), kernel=[3, 1], name='n')")) == (
        "f(x 8 g(y) kernel=[3 1] name='n')"
    )


def test_call_spans() -> None:
    call = value_of("conv2d(x, 8,\n  kernel = 3)")
    assert isinstance(call, ast.Call)
    assert where(call.span) == (1, 5, 2, 14)
    assert where(call.func_span) == (1, 5, 1, 11)
    (kernel,) = call.kwargs
    assert kernel.name == "kernel"
    assert where(kernel.span) == (2, 3, 2, 13)
    assert where(kernel.value.span) == (2, 12, 2, 13)


def test_operator_spans_cover_both_operands() -> None:
    node = narrow(value_of("a + b * 22"), ast.BinOp)
    assert where(node.span) == (1, 5, 1, 15)
    assert where(node.right.span) == (1, 9, 1, 15)
    neg = value_of("-x ** 2")
    assert isinstance(neg, ast.Neg)
    assert where(neg.span) == (1, 5, 1, 12)
    assert where(neg.operand.span) == (1, 6, 1, 12)


def test_parenthesised_operand_span_includes_its_parentheses() -> None:
    node = narrow(value_of("(a + b) * c"), ast.BinOp)
    assert where(node.span) == (1, 5, 1, 16)
    assert where(node.left.span) == (1, 6, 1, 11)


# ---- syntax errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ("x = )", "unexpected ')'; expected an expression", 1, 5),
        ("a conv2d(x)", "unexpected name 'conv2d'; expected '=' or ','", 1, 3),
        ("block b(x) {\n  return x\n", "unexpected end of file; expected '}'", 2, 11),
        ("x = f(a", "unexpected end of file; expected ')'", 1, 8),
        ("x = [1, [2, 3]", "unexpected end of file; expected ']'", 1, 15),
        ("x = 1 +\n\n# done\n", "unexpected end of file; expected an expression", 3, 7),
        ("x = $", "unexpected character '$'", 1, 5),
        ("x = \x01", "unexpected character 'U+0001'", 1, 5),
        ('y = 1\nx = "abc', "unterminated string", 2, 5),
        ("input x f32[1]", "unexpected name 'f32'; expected ':'", 1, 9),
        ("x, = 3", "unexpected '='; expected a name", 1, 4),
        (
            "x = 1 2",
            "unexpected integer 2; expected ':', an operator, a statement or end of file",
            1,
            7,
        ),
        ("x = f(a b)", "unexpected name 'b'; expected ')', '=', ',', '(' or an operator", 1, 9),
        ("x = 1 : [N, 2 +]", "unexpected ']'; expected an expression", 1, 16),
        ("f(x) = 3", "unexpected '('; expected '=' or ','", 1, 2),
        (
            "x = (a)(b)",
            "unexpected '('; expected ':', an operator, a statement or end of file",
            1,
            8,
        ),
        ("for i in range(3) x = 1", "unexpected name 'x'; expected '{'", 1, 19),
        ("block b(x, y=) {}", "unexpected ')'; expected an expression", 1, 14),
        ("input x: f32[N] : [N]", "unexpected ':'; expected a statement or end of file", 1, 17),
        ("for i in r { } : [1]", "unexpected ':'; expected a statement or end of file", 1, 16),
        ("return a : [1]", "unexpected ':'; expected ',', a statement or end of file", 1, 10),
        (
            "block b(x) {\n  output y = x\n}",
            "unexpected 'output' inside a block; outputs are declared at top level",
            2,
            3,
        ),
        (
            "for i in range(3) {\n  x = f(x)\n  output y = x\n}",
            "unexpected 'output' inside a loop; outputs are declared at top level",
            3,
            3,
        ),
        (
            "block b(x) { for i in r { input y: f32[1] } }",
            "unexpected 'input' inside a loop; inputs are declared at top level",
            1,
            27,
        ),
        (
            "block b(x) { block c() {} }",
            "unexpected 'block' inside a block; blocks are defined at top level",
            1,
            14,
        ),
        ("x = input", "'input' is a reserved word and cannot be used as a name", 1, 5),
        ("input = 3", "'input' is a reserved word and cannot be used as a name", 1, 1),
        ("x, for = 3", "'for' is a reserved word and cannot be used as a name", 1, 4),
        ("for in range(3) {}", "'in' is a reserved word and cannot be used as a name", 1, 5),
        ("block return(x) {}", "'return' is a reserved word and cannot be used as a name", 1, 7),
        ("x = f(block=1)", "'block' is a reserved word and cannot be used as a name", 1, 7),
        (
            "x = 1\nnetwork n",
            "unexpected 'network'; the 'network' header must come first in the file",
            2,
            1,
        ),
        (r'x = "tab\there"', "unknown escape '\\t' in string", 1, 9),
        (
            "x = conv2d(a, kernel=3, 8)",
            "positional argument follows keyword argument 'kernel'",
            1,
            25,
        ),
        ("x = f(k=1, j=2, k=3)", "keyword argument 'k' is repeated", 1, 17),
    ],
)
def test_syntax_errors(text: str, message: str, line: int, column: int) -> None:
    diagnostic = syntax_error(text)
    assert diagnostic.message == message
    span = narrow(diagnostic.span, Span)
    assert (span.line, span.column) == (line, column)


def test_only_the_first_syntax_error_is_reported() -> None:
    diagnostic = syntax_error("x = )\ny = $\nz = (")
    assert diagnostic.message == "unexpected ')'; expected an expression"


def test_error_renders_with_file_line_column_and_caret() -> None:
    with pytest.raises(ConvdslError) as info:
        parse_text("input x: f32[1]\nb = conv2d(x, 8\n  kernel=3)\n")
    assert str(info.value) == (
        "net.conv:3:3: error: unexpected name 'kernel'; expected ')' or ','\n"
        "   3 |   kernel=3)\n"
        "     |   ^~~~~~"
    )


def test_error_at_end_of_file_renders_caret_after_the_last_text() -> None:
    with pytest.raises(ConvdslError) as info:
        parse_text("block b(x) {\n  y = f(x)\n\n")
    assert str(info.value) == (
        "net.conv:2:11: error: unexpected end of file; expected '}'\n"
        "   2 |   y = f(x)\n"
        "     |           ^"
    )


def test_reserved_word_error_renders_with_caret_under_the_keyword() -> None:
    with pytest.raises(ConvdslError) as info:
        parse_text("for in range(3) {}")
    assert str(info.value) == (
        "net.conv:1:5: error: 'in' is a reserved word and cannot be used as a name\n"
        "   1 | for in range(3) {}\n"
        "     |     ^~"
    )


def test_unknown_escape_renders_with_hint() -> None:
    with pytest.raises(ConvdslError) as info:
        parse_text(r'name = "a\qb"')
    assert str(info.value) == (
        "net.conv:1:10: error: unknown escape '\\q' in string\n"
        '   1 | name = "a\\qb"\n'
        "     |          ^~\n"
        "  hint: the escapes are \\\\, \\\", \\' and \\n"
    )


def test_every_prefix_of_a_valid_file_parses_or_raises_a_user_error() -> None:
    # No lark exception or traceback may escape parse(), whatever the input is cut at.
    for end in range(len(EXAMPLE) + 1):
        try:
            parse_text(EXAMPLE[:end])
        except ConvdslError as err:
            (diagnostic,) = err.diagnostics
            assert diagnostic.span is not None
            assert "__ANON" not in diagnostic.message and "$END" not in diagnostic.message


@pytest.mark.parametrize("junk", ["}", "]", "= 3", "@", "\t\x00", "x = 'a\nb'", "1 = 2", "::"])
def test_junk_raises_a_user_error(junk: str) -> None:
    with pytest.raises(ConvdslError):
        parse_text(junk)


# ---- the grammar itself ------------------------------------------------------------------


def test_grammar_is_lalr_without_conflicts(caplog: pytest.LogCaptureFixture) -> None:
    # lark resolves shift/reduce conflicts silently as shifts; it only logs them.
    caplog.set_level(logging.DEBUG, logger="lark")
    Lark(_grammar_text(), parser="lalr", lexer="basic", debug=True)
    assert "conflict" not in caplog.text.lower()
