"""AST -> IR graph.

Evaluates what the language computes at compile time (block calls are inlined, ``for`` loops are
unrolled, integer arithmetic is folded), binds every op call against the op table
(``convdsl.ir.ops``) and builds an untyped ``Graph``; shape inference is the next stage.

Errors are collected, not raised one at a time: a statement that fails binds its targets to
``POISON`` so later statements that use them stay quiet instead of cascading.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from convdsl.diagnostics import Diagnostic, DiagnosticSink, Span, call_notes
from convdsl.frontend import ast
from convdsl.frontend.bind import bind_op_args
from convdsl.frontend.declarations import (
    channels_last,
    collect_blocks,
    end_of,
    input_type,
    layout_word,
    network_name,
)
from convdsl.frontend.names import (
    LayerNames,
    checked_name,
    duplicate_name,
    format_template,
    parse_template,
)
from convdsl.frontend.scope import Frame, Scope, int_or_none, poison_targets, signature, span_of
from convdsl.frontend.sizes import AnnotationDim, annotation_dim, size_names
from convdsl.frontend.split import split_nodes
from convdsl.frontend.values import (
    BUILTINS,
    POISON,
    Keyword,
    LowerError,
    Tensor,
    arithmetic,
    call_builtin,
    describe,
    did_you_mean,
    is_number,
    poisoned,
)
from convdsl.ir.boundary import ChannelsLastDecl, layout_rank
from convdsl.ir.graph import Attrs, CallSite, Expectation, Graph, Node, Value
from convdsl.ir.ops import OPS
from convdsl.ir.types import TensorType

MAX_BLOCK_DEPTH = 64
TENSOR_OPERATORS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
"""The operators defined on tensors, and the ops they write."""


class Lowerer:
    def __init__(self, module: ast.Module) -> None:
        self.module = module
        self.sink = DiagnosticSink()
        self.values: dict[int, Value] = {}
        self.nodes: list[Node] = []
        self.inputs: list[int] = []
        self.outputs: list[tuple[str, int]] = []
        self.channels_last_inputs: dict[int, ChannelsLastDecl] = {}
        self.channels_last_outputs: dict[str, ChannelsLastDecl] = {}
        self.expectations: list[Expectation] = []
        self.names = LayerNames()
        self.blocks: dict[str, ast.BlockDef] = {}
        self.broken_blocks: set[str] = set()  # reported once; their calls stay quiet
        self.declares_input = False  # even a failed declaration counts: no "no inputs" cascade
        self.declares_output = False
        self.output_names: set[str] = set()  # declared outputs, including ones that failed
        self.globals = Scope(prefix="")
        self.frames: list[Frame] = []
        self.batch_names, self.size_names = size_names(module)

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
            name=self.module.network or network_name(self.module.source.name),
            source=self.module.source,
            values=dict(self.values),
            inputs=tuple(self.inputs),
            nodes=tuple(self.nodes),
            outputs=tuple(self.outputs),
            expectations=tuple(self.expectations),
            channels_last_inputs=dict(self.channels_last_inputs),
            channels_last_outputs=dict(self.channels_last_outputs),
        )

    def _collect_blocks(self) -> None:
        self.blocks, self.broken_blocks = collect_blocks(self.module, self.sink)

    def _check_interface(self) -> None:
        end = end_of(self.module)
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
                poison_targets(stmt, scope)

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
        value = self._new_value(decl.name, input_type(decl, self.batch_names), decl.name_span)
        self.inputs.append(value)
        if decl.layout is not None and channels_last(decl):
            self.channels_last_inputs[value] = ChannelsLastDecl(decl.layout.word, decl.layout.span)
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
        elif len(names) > 1 and isinstance(value, ast.Call) and value.func == "split":
            result = self._call(value, scope, qualified[0], result_names=qualified)
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
            where = stmt.name_span if stmt.value is None else span_of(stmt.value)
            raise LowerError(
                f"output '{stmt.name}' must be a tensor, found {describe(result)}", where
            )
        self.outputs.append((stmt.name, result.value))
        if stmt.layout is not None:
            found = layout_rank(stmt.layout.word)
            if found is None:  # the rank is checked once the output is typed
                layout_word(stmt.layout, 0, f"output '{stmt.name}'")
            elif found[0]:
                decl = ChannelsLastDecl(stmt.layout.word, stmt.layout.span)
                self.channels_last_outputs[stmt.name] = decl
        self._expect(stmt.annotation, result, scope)

    def _for(self, stmt: ast.For, scope: Scope) -> None:
        items = self._eval(stmt.iterable, scope, scope.qualify(stmt.var))
        if items is POISON:
            poison_targets(stmt, scope)
            return
        if not isinstance(items, tuple):
            raise LowerError(
                f"for needs a list or range(...), found {describe(items)}", span_of(stmt.iterable)
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
                f"a shape annotation needs a tensor, found {describe(result)}", annotation.span
            )
        dims: list[AnnotationDim] = []
        for dim in annotation.dims:
            # A name bound to an integer (a block parameter such as `ch`) stands for its value.
            value = annotation_dim(dim, self.size_names, lambda name: int_or_none(scope, name))
            if value is POISON:
                return
            dims.append(value)
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
            if is_number(operand):
                return -operand
            if isinstance(operand, Tensor):  # -x is x * -1, as exact as a negation
                operands = {"x": (operand, span_of(expr.operand)), "y": (-1.0, expr.span)}
                return self._arithmetic_node("mul", operands, name, expr.span)
            raise LowerError(f"cannot negate {describe(operand)}", expr.span)
        if isinstance(expr, ast.BinOp):
            return self._binop(expr, scope, name)
        if isinstance(expr, ast.Call):
            return self._call(expr, scope, name)
        raise LowerError(f"unexpected expression {type(expr).__name__}", span_of(expr))

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
        if is_number(left) and is_number(right):
            return arithmetic(expr, left, right)
        operands = {"x": (left, span_of(expr.left)), "y": (right, span_of(expr.right))}
        if all(isinstance(v, Tensor) or is_number(v) for v, _ in operands.values()):
            op = TENSOR_OPERATORS.get(expr.op)
            if op is None:
                raise LowerError(
                    f"'{expr.op}' between {describe(left)} and {describe(right)} is not defined; "
                    f"on tensors, {', '.join(TENSOR_OPERATORS)} are",
                    expr.span,
                )
            return self._arithmetic_node(op, operands, name, expr.span)
        raise LowerError(
            f"'{expr.op}' between {describe(left)} and {describe(right)} is not defined",
            expr.span,
        )

    def _arithmetic_node(
        self, op: str, operands: dict[str, tuple[Any, Span]], name: str, span: Span
    ) -> Tensor:
        """``op`` (add, sub, mul, div) on a tensor and a tensor or a number: a number is kept
        as the attribute of its argument (``convdsl.ir.elementwise_rules``)."""
        inputs = [v.value for v, _ in operands.values() if isinstance(v, Tensor)]
        numbers = {arg: float(v) for arg, (v, _) in operands.items() if not isinstance(v, Tensor)}
        spans = {arg: where for arg, (_, where) in operands.items()}
        return self._make_node(op, inputs, Attrs(numbers), name, span, spans)

    def _call(
        self, call: ast.Call, scope: Scope, name: str, result_names: Sequence[str] = ()
    ) -> Any:
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
        kwargs = {kw.name: self._argument(kw, scope, name) for kw in call.kwargs}
        if any(poisoned(v) for v in [*args, *kwargs.values()]):
            return POISON
        bound = bind_op_args(opdef, call, args, kwargs)
        node_name = self._claim(scope.qualify(bound.name), call) if bound.name else name
        if opdef.name == "split":
            names = result_names if not bound.name else ()
            return split_nodes(bound, call, node_name, names, self._make_node)
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
                span_of(call.args[len(block.params)]),
            )
        for param, arg in zip(block.params, call.args, strict=False):
            values[param.name] = self._eval(arg, scope, f"{name}.{_label(arg)}", True)
        explicit: Any = None
        for kw in call.kwargs:
            if kw.name == "name":
                explicit = self._argument(kw, scope, name)
                if explicit is not POISON:
                    checked_name(
                        explicit, f"block '{block.name}'", kw.span, describe(explicit), "layer1.0"
                    )
                continue
            if kw.name not in params:
                raise LowerError(
                    f"block '{block.name}' has no parameter '{kw.name}'",
                    kw.span,
                    hint=did_you_mean(kw.name, params),
                )
            if kw.name in values:
                raise LowerError(f"parameter '{kw.name}' is given twice", kw.span)
            values[kw.name] = self._eval(kw.value, scope, f"{name}.{_label(kw.value)}", True)
        if explicit is POISON:
            return POISON
        if explicit is None:
            prefix = self._block_prefix(name, call.span)
        else:
            prefix = self._claim(scope.qualify(explicit), call, block=True)
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
                    hint=f"usage: {signature(block)}",
                )
        self.frames.append(Frame(block.name, call.span, prefix))
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

    def _argument(self, kw: ast.Keyword, scope: Scope, name: str) -> Any:
        """A keyword argument's value; a ``name="..."`` literal is a template, formatted here
        (``convdsl.frontend.names``)."""
        if kw.name == "name" and isinstance(kw.value, ast.String):
            template = parse_template(kw.value)
            return format_template(template, lambda ident, at: self._lookup(ident, at, scope))
        return self._eval(kw.value, scope, f"{name}.{_label(kw.value)}", True)

    def _call_builtin(self, call: ast.Call, scope: Scope, name: str) -> Any:
        if call.kwargs:
            raise LowerError(f"{call.func}() takes no keyword arguments", call.kwargs[0].span)
        return call_builtin(call.func, [self._eval(a, scope, name) for a in call.args], call.span)

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
        node_name = self.names.unique(name)
        out = self._new_value(node_name, None, span, reserve=False)
        self.nodes.append(
            Node(op, node_name, tuple(inputs), (out,), attrs, span, spans, self._call_sites())
        )
        return Tensor(out)

    def _new_value(
        self, name: str, type_: TensorType | None, span: Span, reserve: bool = True
    ) -> int:
        if reserve:
            self.names.used.add(name)
        value_id = len(self.values)
        self.values[value_id] = Value(value_id, name, type_, span)
        return value_id

    def _block_prefix(self, name: str, span: Span) -> str:
        """A prefix no layer or earlier block call has used. A block call in the ``return`` of
        another block keeps the caller's prefix: ``return conv_bn(...)`` inside ``b1`` makes
        ``b1.conv``, not ``b1_1.conv``."""
        if self.frames and self.frames[-1].prefix == name:
            return name
        return self.names.block_prefix(name, span)

    def _claim(self, name: str, call: ast.Call, block: bool = False) -> str:
        """``name``, given by ``call``'s ``name=``, which must be free (a layer name, or a
        block call's prefix); see ``names.duplicate_name``."""
        span = next(kw.span for kw in call.kwargs if kw.name == "name")
        if self.names.taken(name, block):
            first = self.names.given_at(name) or next(
                v.span for v in self.values.values() if v.name == name
            )  # else a layer named after its variable, or an input
            raise duplicate_name(name, "block call" if block else "layer", span, first)
        return self.names.claim(name, span, block)

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
        return did_you_mean(ident, names)


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


def _label(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Call):
        return expr.func
    if isinstance(expr, ast.BinOp):
        return TENSOR_OPERATORS.get(expr.op, "expr")
    return "arg"
