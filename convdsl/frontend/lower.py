"""AST -> IR graph.

Evaluates what the language computes at compile time (block calls are inlined, ``for`` loops are
unrolled, integer arithmetic is folded), binds every op call against the op table
(``convdsl.ir.ops``) and builds an untyped ``Graph``; shape inference is the next stage.

Errors are collected, not raised one at a time: a statement that fails binds its targets to
``POISON`` so later statements that use them stay quiet instead of cascading.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any

from convdsl.diagnostics import Diagnostic, DiagnosticSink, Span, call_notes
from convdsl.frontend import ast
from convdsl.frontend.bind import POISON, Keyword, LowerError, Tensor, bind_op_args
from convdsl.ir.graph import Attrs, CallSite, Expectation, Graph, Node, Value
from convdsl.ir.ops import OPS
from convdsl.ir.types import Dim, DType, TensorType

MAX_BLOCK_DEPTH = 64
MAX_UNROLL = 10_000  # a loop longer than this is a typo, not a network
BUILTINS = ("range", "min", "max", "len")


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
class _Frame:
    """One active block call: for 'in block ... called here' notes, and its layer prefix."""

    block: str
    span: Span
    prefix: str = ""


class Lowerer:
    def __init__(self, module: ast.Module) -> None:
        self.module = module
        self.sink = DiagnosticSink()
        self.values: dict[int, Value] = {}
        self.nodes: list[Node] = []
        self.inputs: list[int] = []
        self.outputs: list[tuple[str, int]] = []
        self.expectations: list[Expectation] = []
        self.used_names: set[str] = set()
        self.next_suffix: dict[str, int] = {}
        self.block_prefixes: set[str] = set()
        self.blocks: dict[str, ast.BlockDef] = {}
        self.broken_blocks: set[str] = set()  # reported once; their calls stay quiet
        self.declares_input = False  # even a failed declaration counts: no "no inputs" cascade
        self.declares_output = False
        self.output_names: set[str] = set()  # declared outputs, including ones that failed
        self.globals = Scope(prefix="")
        self.frames: list[_Frame] = []

    # ---- driver --------------------------------------------------------------------------

    def lower(self) -> Graph:
        """The graph of every statement that lowered; ``self.sink`` holds the errors."""
        self._collect_blocks()
        for item in self.module.items:
            if isinstance(item, ast.BlockDef):
                continue
            self._statement(item, self.globals)
        self._check_interface()
        return Graph(
            name=self.module.network or _stem(self.module.source.name),
            source=self.module.source,
            values=dict(self.values),
            inputs=tuple(self.inputs),
            nodes=tuple(self.nodes),
            outputs=tuple(self.outputs),
            expectations=tuple(self.expectations),
        )

    def _collect_blocks(self) -> None:
        for item in self.module.items:
            if not isinstance(item, ast.BlockDef):
                continue
            if item.name in self.blocks:
                self.sink.error(f"block '{item.name}' is defined twice", item.name_span)
                continue
            self.blocks[item.name] = item
            if item.name in OPS or item.name in BUILTINS:
                kind = "op" if item.name in OPS else "function"
                self.sink.error(
                    f"block '{item.name}' has the name of a built-in {kind}",
                    item.name_span,
                    hint="rename the block",
                )
                self.broken_blocks.add(item.name)
            seen: set[str] = set()
            for param in item.params:
                if param.name in seen:
                    self.sink.error(f"parameter '{param.name}' is declared twice", param.span)
                seen.add(param.name)
            for before, after in zip(item.params, item.params[1:], strict=False):
                if before.default is not None and after.default is None:
                    self.sink.error(
                        f"parameter '{after.name}' without a default follows one with a default",
                        after.span,
                    )
            early = [stmt for stmt in item.body[:-1] if isinstance(stmt, ast.Return)]
            if early:
                self.sink.error("return must be the last statement of a block", early[0].span)
                self.broken_blocks.add(item.name)
            elif not item.body or not isinstance(item.body[-1], ast.Return):
                self.sink.error(
                    f"block '{item.name}' does not end with a return statement",
                    item.name_span,
                    hint="end the block with `return VALUE`",
                )
                self.broken_blocks.add(item.name)

    def _check_interface(self) -> None:
        end = _end_of(self.module)
        if not self.declares_input:
            self.sink.error(
                "the network declares no inputs",
                end,
                hint="declare one: input x: f32[N, 3, 224, 224]",
            )
        if not self.declares_output:
            self.sink.error(
                "the network declares no outputs",
                end,
                hint="declare one: output y = ... (or output NAME for a variable)",
            )

    # ---- statements ----------------------------------------------------------------------

    def _statement(self, stmt: Any, scope: Scope) -> None:
        try:
            self._run_statement(stmt, scope)
        except LowerError as err:
            self.sink.diagnostics.append(self._with_call_notes(err.diagnostic))
            for target in getattr(stmt, "targets", ()):
                scope.vars[target.id] = POISON
            if isinstance(stmt, ast.InputDecl | ast.Output):
                scope.vars.setdefault(stmt.name, POISON)
            elif isinstance(stmt, ast.For):
                _poison_targets(stmt, scope)

    def _run_statement(self, stmt: Any, scope: Scope) -> None:
        if isinstance(stmt, ast.InputDecl):
            self._input(stmt)
        elif isinstance(stmt, ast.Assign):
            self._assign(stmt, scope)
        elif isinstance(stmt, ast.Output):
            self._output(stmt, scope)
        elif isinstance(stmt, ast.For):
            self._for(stmt, scope)
        elif isinstance(stmt, ast.Return):
            raise LowerError("return outside a block", stmt.span)
        else:
            raise LowerError(f"unexpected statement {type(stmt).__name__}", stmt.span)

    def _input(self, decl: ast.InputDecl) -> None:
        self.declares_input = True
        if decl.name in self.globals.vars:
            raise self._redefined(decl.name, decl.name_span)
        dtype = DType.parse(decl.dtype)
        if dtype is None:
            raise LowerError(
                f"input '{decl.name}': unknown dtype '{decl.dtype}'; expected f32 or f64",
                _dtype_span(decl),
            )
        if not 3 <= len(decl.dims) <= 5:
            raise LowerError(
                f"input '{decl.name}' has {len(decl.dims)} dims; expected [N, C, ...] with 1 to 3 "
                "spatial dims (3 to 5 dims in all)",
                decl.span,
            )
        dims: list[Dim] = []
        for position, dim in enumerate(decl.dims):
            if isinstance(dim, ast.Int):
                if dim.value < 1:
                    raise LowerError(
                        f"input '{decl.name}': dimension sizes must be positive, found {dim.value}",
                        dim.span,
                    )
                dims.append(dim.value)
            elif position == 0 and dim.id != "_":
                dims.append(dim.id)
            else:
                raise LowerError(
                    f"input '{decl.name}': only the batch (first) dimension may be symbolic; "
                    f"found '{dim.id}' at position {position + 1}",
                    dim.span,
                    hint="write its size as an integer",
                )
        value = self._new_value(decl.name, TensorType(tuple(dims), dtype), decl.name_span)
        self.inputs.append(value)
        self.globals.vars[decl.name] = Tensor(value)

    def _assign(self, stmt: ast.Assign, scope: Scope) -> None:
        names = [t.id for t in stmt.targets]
        qualified = [scope.qualify(n) for n in names]
        value = stmt.value
        if len(names) > 1 and isinstance(value, ast.Call) and value.func in self.blocks:
            # Each returned tensor is named after its target, inside the call's prefix.
            result = self._call_block(
                self.blocks[value.func], value, scope, qualified[0], result_names=names
            )
        else:
            result = self._eval(value, scope, qualified[0])
        if len(names) == 1:
            scope.vars[names[0]] = result
            self._expect(stmt.annotation, result, scope)
            return
        if not isinstance(result, tuple) or len(result) != len(names):
            found = len(result) if isinstance(result, tuple) else 1
            raise LowerError(f"cannot unpack {found} value(s) into {len(names)} names", stmt.span)
        if stmt.annotation is not None:
            raise LowerError(
                "a shape annotation needs a single assigned tensor", stmt.annotation.span
            )
        for name, item in zip(names, result, strict=True):
            scope.vars[name] = item

    def _output(self, stmt: ast.Output, scope: Scope) -> None:
        if scope is not self.globals:
            raise LowerError("outputs are declared at top level, not inside a block", stmt.span)
        self.declares_output = True
        if stmt.name in self.output_names:
            raise LowerError(f"output '{stmt.name}' is declared twice", stmt.name_span)
        self.output_names.add(stmt.name)
        if stmt.value is None:
            result = self._lookup(stmt.name, stmt.name_span, scope)
        else:
            result = self._eval(stmt.value, scope, stmt.name)
            scope.vars[stmt.name] = result
        if result is POISON:
            return
        if not isinstance(result, Tensor):
            where = stmt.name_span if stmt.value is None else _span(stmt.value)
            raise LowerError(
                f"output '{stmt.name}' must be a tensor, found {_describe(result)}", where
            )
        self.outputs.append((stmt.name, result.value))
        self._expect(stmt.annotation, result, scope)

    def _for(self, stmt: ast.For, scope: Scope) -> None:
        items = self._eval(stmt.iterable, scope, scope.qualify(stmt.var))
        if items is POISON:
            _poison_targets(stmt, scope)
            return
        if not isinstance(items, tuple):
            raise LowerError(
                f"for needs a list or range(...), found {_describe(items)}", _span(stmt.iterable)
            )
        for item in items:
            scope.vars[stmt.var] = item
            for inner in stmt.body:
                if isinstance(inner, ast.Return):
                    raise LowerError("return inside a for loop", inner.span)
                self._statement(inner, scope)

    def _expect(self, annotation: ast.ShapeAnnotation | None, result: Any, scope: Scope) -> None:
        if annotation is None or result is POISON:
            return
        if not isinstance(result, Tensor):
            raise LowerError(
                f"a shape annotation needs a tensor, found {_describe(result)}", annotation.span
            )
        dims: list[Dim] = []
        for dim in annotation.dims:
            # A name bound to an integer (a block parameter such as `ch`) stands for its value.
            bound = _int_or_none(scope, dim.id) if isinstance(dim, ast.Name) else dim.value
            if bound is POISON:
                return
            dims.append(dim.id if bound is None else bound)  # type: ignore[union-attr]
        self.expectations.append(
            Expectation(result.value, tuple(dims), annotation.span, self._call_sites())
        )

    # ---- expressions ---------------------------------------------------------------------

    def _eval(self, expr: ast.Expr, scope: Scope, name: str, keyword_ok: bool = False) -> Any:
        """Evaluate ``expr``; ``name`` is the layer name an op call made here would take.

        ``keyword_ok``: a bare unbound name is a keyword value (``padding=same``), which only
        an argument of a call can be; anywhere else it is an unknown name.
        """
        if isinstance(expr, ast.Int | ast.Float | ast.String):
            return expr.value
        if isinstance(expr, ast.Name):
            value = self._lookup(expr.id, expr.span, scope, keyword_ok)
            if isinstance(value, Keyword) and not keyword_ok:
                # A keyword passed to a block, used where a value is needed.
                raise LowerError(f"unknown name '{value.name}'", value.span, hint=value.hint)
            return value
        if isinstance(expr, ast.ListExpr):
            return tuple(self._eval(item, scope, name) for item in expr.items)
        if isinstance(expr, ast.Neg):
            operand = self._eval(expr.operand, scope, name)
            if operand is POISON:
                return POISON
            if _is_number(operand):
                return -operand
            raise LowerError(f"cannot negate {_describe(operand)}", expr.span)
        if isinstance(expr, ast.BinOp):
            return self._binop(expr, scope, name)
        if isinstance(expr, ast.Call):
            return self._call(expr, scope, name)
        raise LowerError(f"unexpected expression {type(expr).__name__}", _span(expr))

    def _lookup(self, ident: str, span: Span, scope: Scope, keyword_ok: bool = False) -> Any:
        try:
            return scope.lookup(ident)
        except KeyError:
            pass
        if ident in ("true", "false"):
            return ident == "true"
        if keyword_ok:
            return Keyword(ident, span, lambda: self._suggest(ident, scope))
        raise LowerError(f"unknown name '{ident}'", span, hint=self._suggest(ident, scope))

    def _binop(self, expr: ast.BinOp, scope: Scope, name: str) -> Any:
        left = self._eval(expr.left, scope, name + ".lhs")
        right = self._eval(expr.right, scope, name + ".rhs")
        if left is POISON or right is POISON:
            return POISON
        if _is_number(left) and _is_number(right):
            return _arithmetic(expr, left, right)
        if isinstance(left, Tensor) and isinstance(right, Tensor):
            op = {"+": "add", "*": "mul"}.get(expr.op)
            if op is None:
                raise LowerError(
                    f"'{expr.op}' is not defined between tensors; only + and * are", expr.span
                )
            operands = {"x": _span(expr.left), "y": _span(expr.right)}
            return self._make_node(
                op, [left.value, right.value], Attrs(), name, expr.span, operands
            )
        raise LowerError(
            f"'{expr.op}' between {_describe(left)} and {_describe(right)} is not defined "
            "(convdsl does not broadcast numbers over tensors)",
            expr.span,
        )

    def _call(self, call: ast.Call, scope: Scope, name: str) -> Any:
        if call.func in self.blocks:
            return self._call_block(self.blocks[call.func], call, scope, name)
        if call.func in BUILTINS:
            return self._call_builtin(call, scope, name)
        opdef = OPS.get(call.func)
        if opdef is None:
            close = difflib.get_close_matches(call.func, [*OPS, *self.blocks, *BUILTINS], n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see docs/language.md for the ops"
            raise LowerError(f"unknown op or block '{call.func}'", call.func_span, hint=hint)
        args = [self._eval(a, scope, f"{name}.{_label(a)}", True) for a in call.args]
        kwargs = {
            kw.name: self._eval(kw.value, scope, f"{name}.{_label(kw.value)}", True)
            for kw in call.kwargs
        }
        if any(_poisoned(v) for v in [*args, *kwargs.values()]):
            return POISON
        bound = bind_op_args(opdef, call, args, kwargs)
        node_name = scope.qualify(bound.name) if bound.name else name
        return self._make_node(
            opdef.name, bound.inputs, bound.attrs, node_name, call.span, bound.spans
        )

    def _call_block(
        self,
        block: ast.BlockDef,
        call: ast.Call,
        scope: Scope,
        name: str,
        result_names: Sequence[str] = (),
    ) -> Any:
        """Inline ``block``: its layers are named ``{prefix}.{target}``, where the prefix is
        ``name`` made unique per call (``x``, ``x_1``...), so each call's parameters share one
        prefix. The first returned tensor is named the prefix itself; with ``r, s = blk(x)`` the
        second is ``{prefix}.s``."""
        if block.name in self.broken_blocks:
            return POISON  # its definition's error is reported; calls would only cascade
        if len(self.frames) >= MAX_BLOCK_DEPTH:
            if any(frame.block == block.name for frame in self.frames):
                raise LowerError(
                    f"block '{block.name}' calls itself more than {MAX_BLOCK_DEPTH} levels deep",
                    call.span,
                    hint="blocks are inlined at every call, so recursion must stop "
                    f"within {MAX_BLOCK_DEPTH} levels",
                )
            raise LowerError(f"block calls nest more than {MAX_BLOCK_DEPTH} levels deep", call.span)
        params = {p.name: p for p in block.params}
        values: dict[str, Any] = {}
        if len(call.args) > len(block.params):
            raise LowerError(
                f"block '{block.name}' takes {len(block.params)} argument(s), "
                f"found {len(call.args)}",
                _span(call.args[len(block.params)]),
            )
        for param, arg in zip(block.params, call.args, strict=False):
            values[param.name] = self._eval(arg, scope, f"{name}.{_label(arg)}", True)
        for kw in call.kwargs:
            if kw.name not in params:
                raise LowerError(
                    f"block '{block.name}' has no parameter '{kw.name}'",
                    kw.span,
                    hint=_did_you_mean(kw.name, params),
                )
            if kw.name in values:
                raise LowerError(f"parameter '{kw.name}' is given twice", kw.span)
            values[kw.name] = self._eval(kw.value, scope, f"{name}.{_label(kw.value)}", True)
        prefix = self._block_prefix(name)
        inner = Scope(prefix=prefix, parent=self.globals)
        for param in block.params:
            if param.name in values:
                inner.vars[param.name] = values[param.name]
            elif param.default is not None:
                inner.vars[param.name] = self._eval(param.default, self.globals, prefix, True)
            else:
                raise LowerError(
                    f"block '{block.name}' is missing argument '{param.name}'",
                    call.span,
                    hint=f"usage: {_signature(block)}",
                )
        self.frames.append(_Frame(block.name, call.span, prefix))
        try:
            errors_before = len(self.sink.diagnostics)
            for stmt in block.body[:-1]:
                self._statement(stmt, inner)
            ret = block.body[-1]
            if len(self.sink.diagnostics) > errors_before or not isinstance(ret, ast.Return):
                return POISON
            try:
                results = tuple(
                    self._eval(v, inner, _result_name(prefix, result_names, i))
                    for i, v in enumerate(ret.values)
                )
            except LowerError as err:
                self.sink.diagnostics.append(self._with_call_notes(err.diagnostic))
                return POISON
        finally:
            self.frames.pop()
        return results[0] if len(results) == 1 else results

    def _call_builtin(self, call: ast.Call, scope: Scope, name: str) -> Any:
        if call.kwargs:
            raise LowerError(f"{call.func}() takes no keyword arguments", call.kwargs[0].span)
        args = [self._eval(a, scope, name) for a in call.args]
        if any(_poisoned(a) for a in args):
            return POISON
        if call.func == "len":
            if len(args) != 1 or not isinstance(args[0], tuple):
                raise LowerError("len() takes one list", call.span)
            return len(args[0])
        if not args or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise LowerError(f"{call.func}() takes integers", call.span)
        if call.func == "range":
            if len(args) > 3 or (len(args) == 3 and args[2] == 0):
                raise LowerError("range() takes 1 to 3 integers and a non-zero step", call.span)
            if len(range(*args)) > MAX_UNROLL:
                raise LowerError(
                    f"range() of {len(range(*args))} items is too long to unroll "
                    f"(at most {MAX_UNROLL})",
                    call.span,
                )
            return tuple(range(*args))
        return min(args) if call.func == "min" else max(args)

    # ---- graph building ------------------------------------------------------------------

    def _make_node(
        self,
        op: str,
        inputs: Sequence[int],
        attrs: Attrs,
        name: str,
        span: Span,
        spans: dict[str, Span],
    ) -> Tensor:
        node_name = self._unique(name)
        out = self._new_value(node_name, None, span, reserve=False)
        self.nodes.append(
            Node(op, node_name, tuple(inputs), (out,), attrs, span, spans, self._call_sites())
        )
        return Tensor(out)

    def _new_value(
        self, name: str, type_: TensorType | None, span: Span, reserve: bool = True
    ) -> int:
        if reserve:
            self.used_names.add(name)
        value_id = len(self.values)
        self.values[value_id] = Value(value_id, name, type_, span)
        return value_id

    def _block_prefix(self, name: str) -> str:
        """A prefix no layer or earlier block call has used. A block call in the ``return`` of
        another block keeps the caller's prefix: ``return conv_bn(...)`` inside ``b1`` makes
        ``b1.conv``, not ``b1_1.conv``."""
        if self.frames and self.frames[-1].prefix == name:
            return name
        candidate, suffix = name, self.next_suffix.get(name, 1)
        while candidate in self.used_names or candidate in self.block_prefixes:
            candidate = f"{name}_{suffix}"
            suffix += 1
        self.block_prefixes.add(candidate)
        return candidate

    def _unique(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``... when taken (a per-name counter keeps long
        unrolled loops linear)."""
        candidate, suffix = name, self.next_suffix.get(name, 1)
        while candidate in self.used_names:
            candidate = f"{name}_{suffix}"
            suffix += 1
        self.next_suffix[name] = suffix
        self.used_names.add(candidate)
        return candidate

    def _redefined(self, name: str, span: Span) -> LowerError:
        err = LowerError(
            f"'{name}' is already defined", span, hint="give the second one another name"
        )
        first = self.globals.vars[name]
        if isinstance(first, Tensor):
            note = Diagnostic(
                f"'{name}' was first defined here", self.values[first.value].span, severity="note"
            )
            err.diagnostic = replace(err.diagnostic, notes=(note,))
        return err

    def _call_sites(self) -> tuple[CallSite, ...]:
        return tuple(CallSite(frame.block, frame.span) for frame in reversed(self.frames))

    def _with_call_notes(self, diag: Diagnostic) -> Diagnostic:
        notes = call_notes((frame.block, frame.span) for frame in reversed(self.frames))
        return Diagnostic(diag.message, diag.span, diag.severity, diag.hint, diag.notes + notes)

    def _suggest(self, ident: str, scope: Scope) -> str | None:
        if ident in ("True", "False"):
            return f"did you mean '{ident.lower()}'?"
        names: set[str] = set()
        current: Scope | None = scope
        while current is not None:
            names.update(current.vars)
            current = current.parent
        return _did_you_mean(ident, names)


def lower(module: ast.Module) -> tuple[Graph, list[Diagnostic]]:
    """Build the (untyped) IR graph of a parsed module.

    Returns the graph of every statement that lowered cleanly and the errors of the others, so
    the shape checker can still report problems in the rest of the file.
    """
    lowerer = Lowerer(module)
    graph = lowerer.lower()
    return graph, lowerer.sink.diagnostics


# ---- small helpers -----------------------------------------------------------------------


def _result_name(prefix: str, result_names: Sequence[str], index: int) -> str:
    if index == 0:
        return prefix
    return f"{prefix}.{result_names[index] if index < len(result_names) else f'out{index}'}"


def _arithmetic(expr: ast.BinOp, left: float, right: float) -> Any:
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
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: Any) -> str:
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


def _label(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Call):
        return expr.func
    if isinstance(expr, ast.BinOp):
        return {"+": "add", "*": "mul"}.get(expr.op, "expr")
    return "arg"


def _span(expr: Any) -> Span:
    return expr.span


def _did_you_mean(name: str, candidates: Any) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"did you mean '{close[0]}'?" if close else None


def _signature(block: ast.BlockDef) -> str:
    params = [p.name if p.default is None else f"{p.name}=..." for p in block.params]
    return f"{block.name}({', '.join(params)})"


def _int_or_none(scope: Scope, name: str) -> Any:
    try:
        value = scope.lookup(name)
    except KeyError:
        return None
    return value if value is POISON or _is_int(value) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _poisoned(value: Any) -> bool:
    """True for POISON and for lists holding it anywhere."""
    return value is POISON or (isinstance(value, tuple) and any(map(_poisoned, value)))


def _poison_targets(stmt: ast.For, scope: Scope) -> None:
    """A loop that could not run leaves its variables failed, not undefined."""
    scope.vars[stmt.var] = POISON
    for inner in stmt.body:
        if isinstance(inner, ast.Assign):
            for target in inner.targets:
                scope.vars[target.id] = POISON
        elif isinstance(inner, ast.For):
            _poison_targets(inner, scope)


def _dtype_span(decl: ast.InputDecl) -> Span:
    """Where the dtype of ``input x: f16[...]`` is written (the AST keeps only its text)."""
    source = decl.span.source
    line = source.line(decl.name_span.end_line)
    found = re.compile(r"\s*:\s*(" + re.escape(decl.dtype) + r")\b").match(
        line, decl.name_span.end_column - 1
    )
    if found is None:
        return decl.span
    line_no = decl.name_span.end_line
    return Span(source, line_no, found.start(1) + 1, line_no, found.end(1) + 1)


def _stem(filename: str) -> str:
    stem = PurePath(filename).stem
    return stem if stem.isidentifier() else "network"


def _end_of(module: ast.Module) -> Span:
    lines = module.source.text.splitlines() or [""]
    return Span(module.source, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 1)
