"""Binding an op call's arguments against its row in the op table.

Checks positional and keyword arguments (unknown, duplicate, missing, too many), converts each
value to the kind its ``ArgSpec`` declares (ints, per-axis lists, padding forms, enum keywords)
and returns the node's tensor inputs, attributes and the span of every argument.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from convdsl.diagnostics import Span
from convdsl.frontend import ast
from convdsl.frontend.names import checked_name
from convdsl.frontend.values import Keyword, LowerError, Tensor, is_int, is_number
from convdsl.ir.graph import Attrs
from convdsl.ir.ops import REQUIRED, ArgKind, ArgSpec, OpDef

PADDING_KEYWORDS = ("valid", "same", "same_lower", "causal")


@dataclass(frozen=True, slots=True)
class BoundCall:
    inputs: list[int]
    attrs: Attrs
    spans: dict[str, Span]
    name: str | None  # an explicit name="..." for the layer


def bind_op_args(
    opdef: OpDef, call: ast.Call, args: list[Any], kwargs: dict[str, Any]
) -> BoundCall:
    given: dict[str, tuple[Any, Span]] = {}
    positional = [a for a in opdef.args if a.positional]
    variadic = next((a for a in opdef.args if a.kind is ArgKind.TENSORS), None)
    if variadic is not None:
        items = args[0] if len(args) == 1 and isinstance(args[0], tuple) else tuple(args)
        span = call.args[0].span if call.args else call.span
        given[variadic.name] = (items, span)
    else:
        for index, (value, expr) in enumerate(zip(args, call.args, strict=True)):
            if index >= len(positional):
                raise LowerError(
                    f"{opdef.name} takes {len(positional)} positional argument(s) "
                    f"({', '.join(a.name for a in positional)}), found {len(args)}",
                    expr.span,
                    hint=_keyword_hint(opdef),
                )
            given[positional[index].name] = (value, expr.span)
    explicit_name: str | None = None
    for kw in call.kwargs:
        value = kwargs[kw.name]
        if kw.name == "name":
            explicit_name = checked_name(value, opdef.name, kw.span, _found(value), "conv1")
            continue
        spec = opdef.arg(kw.name)
        if spec is None:
            close = difflib.get_close_matches(kw.name, [a.name for a in opdef.args], n=1)
            raise LowerError(
                f"{opdef.name} has no argument '{kw.name}'",
                kw.span,
                hint=f"did you mean '{close[0]}'?"
                if close
                else f"its arguments are: {', '.join(a.name for a in opdef.args)}",
            )
        if kw.name in given:
            raise LowerError(f"argument '{kw.name}' is given twice", kw.span)
        given[kw.name] = (value, kw.value.span)

    inputs: list[int] = []
    shape_inputs: list[int] = []
    attrs: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    for spec in opdef.args:
        if spec.name not in given:
            if spec.default is REQUIRED:
                raise LowerError(
                    f"{opdef.name}: missing required argument '{spec.name}'",
                    call.span,
                    hint=_usage(opdef),
                )
            if not spec.is_tensor:
                attrs[spec.name] = spec.default
            continue
        value, span = given[spec.name]
        spans[spec.name] = span
        converted = _convert(spec, value, span, opdef.name)
        if spec.kind is ArgKind.TENSORS:
            inputs.extend(t.value for t in converted)
        elif spec.kind is ArgKind.TENSOR or (
            spec.kind is ArgKind.OPERAND and isinstance(converted, Tensor)
        ):
            inputs.append(converted.value)
        elif spec.kind is ArgKind.SHAPE_OF:
            if converted is not None:
                shape_inputs.append(converted.value)
        else:
            attrs[spec.name] = converted
    return BoundCall(inputs + shape_inputs, Attrs(attrs), spans, explicit_name)


def _keyword_hint(opdef: OpDef) -> str | None:
    keywords = [f"{a.name}=..." for a in opdef.args if not a.positional]
    return f"give the others by keyword: {', '.join(keywords)}" if keywords else None


def _usage(opdef: OpDef) -> str:
    parts = [
        a.name if a.default is REQUIRED else f"{a.name}={_show(a.default)}" for a in opdef.args
    ]
    return f"usage: {opdef.name}({', '.join(parts)})"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None else str(value)


def _convert(spec: ArgSpec, value: Any, span: Span, op: str) -> Any:
    """Check ``value`` against the argument kind; return it in the attribute's normal form."""
    if (
        isinstance(value, Keyword)
        and spec.kind is not ArgKind.ENUM
        and spec.kind not in (ArgKind.PADDING, ArgKind.OFFSET)
    ):
        raise LowerError(f"unknown name '{value.name}'", value.span, hint=value.hint)
    kind = spec.kind
    if kind is ArgKind.TENSOR or kind is ArgKind.SHAPE_OF:
        if isinstance(value, Tensor):
            return value
    elif kind is ArgKind.TENSORS:
        if isinstance(value, tuple) and all(isinstance(v, Tensor) for v in value):
            return value
        for item in value if isinstance(value, tuple) else ():
            if isinstance(item, Keyword):
                raise LowerError(f"unknown name '{item.name}'", item.span, hint=item.hint)
    elif kind is ArgKind.OPERAND:
        if isinstance(value, Tensor):
            return value
        if is_int(value) or isinstance(value, float):
            return float(value)
    elif kind is ArgKind.INT:
        if is_int(value):
            return value
    elif kind is ArgKind.FLOAT:
        if is_int(value) or isinstance(value, float):
            return float(value)
    elif kind is ArgKind.BOOL:
        if isinstance(value, bool):
            return value
    elif kind is ArgKind.ENUM:
        text = value.name if isinstance(value, Keyword) else value
        if isinstance(text, str) and text in spec.choices:
            return text
        close = (
            difflib.get_close_matches(str(text), spec.choices, n=1) if isinstance(text, str) else []
        )
        raise LowerError(
            f"{op}: {spec.name}: expected one of {', '.join(spec.choices)}; found {_found(value)}",
            span,
            hint=f"did you mean '{close[0]}'?" if close else None,
        )
    elif kind is ArgKind.INTS:
        if spec.default is None and value is None:
            return None
        if is_int(value) or (isinstance(value, tuple) and value and all(map(is_int, value))):
            return value
    elif kind is ArgKind.NUMBERS:
        if spec.default is None and value is None:
            return None
        if is_number(value) or (isinstance(value, tuple) and value and all(map(is_number, value))):
            return value
    elif kind is ArgKind.PADDING:
        return _padding(spec, value, span, op)
    elif kind is ArgKind.OFFSET:
        # A string stands for a keyword here as it does for enums and padding.
        if (value.name if isinstance(value, Keyword) else value) == "center":
            return "center"
        if is_int(value) or (isinstance(value, tuple) and value and all(map(is_int, value))):
            return value
    raise LowerError(f"{op}: {spec.name}: expected {kind.value}, found {_found(value)}", span)


def _padding(spec: ArgSpec, value: Any, span: Span, op: str) -> Any:
    if isinstance(value, Keyword | str):
        text = value.name if isinstance(value, Keyword) else value
        if text in PADDING_KEYWORDS:
            return text
        close = difflib.get_close_matches(text, PADDING_KEYWORDS, n=1)
        raise LowerError(
            f"{op}: {spec.name}: expected {ArgKind.PADDING.value}; found '{text}'",
            span,
            hint=f"did you mean '{close[0]}'?" if close else None,
        )
    if is_int(value):
        return value
    if isinstance(value, tuple) and value:
        if all(map(is_int, value)):
            return value
        if all(isinstance(p, tuple) and len(p) == 2 and all(map(is_int, p)) for p in value):
            return value
    raise LowerError(
        f"{op}: {spec.name}: expected {ArgKind.PADDING.value}; found {_found(value)}", span
    )


def _found(value: Any) -> str:
    if isinstance(value, Keyword):
        return f"'{value.name}'"
    if isinstance(value, Tensor):
        return "a tensor"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_found(v) for v in value) + "]"
    return str(value)
