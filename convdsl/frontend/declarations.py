"""Top-level declarations: block definitions and inputs, checked before statements run."""

from __future__ import annotations

import re
from pathlib import PurePath

from convdsl.diagnostics import DiagnosticSink, Span
from convdsl.frontend import ast
from convdsl.frontend.values import BUILTINS, LowerError
from convdsl.ir import limits
from convdsl.ir.boundary import CHANNELS_FIRST, CHANNELS_LAST, FIRST_NAMES, LAST_NAMES, layout_rank
from convdsl.ir.ops import OPS
from convdsl.ir.symbolic import symbol
from convdsl.ir.types import Dim, DType, TensorType, format_shape


def collect_blocks(
    module: ast.Module, sink: DiagnosticSink
) -> tuple[dict[str, ast.BlockDef], set[str]]:
    """Every block definition by name, and the names of the broken ones (reported here once;
    their calls stay quiet)."""
    blocks: dict[str, ast.BlockDef] = {}
    broken: set[str] = set()
    for item in module.items:
        if not isinstance(item, ast.BlockDef):
            continue
        if item.name in blocks:
            sink.error(f"block '{item.name}' is defined twice", item.name_span)
            continue
        blocks[item.name] = item
        if item.name in OPS or item.name in BUILTINS:
            kind = "op" if item.name in OPS else "function"
            sink.error(
                f"block '{item.name}' has the name of a built-in {kind}",
                item.name_span,
                hint="rename the block",
            )
            broken.add(item.name)
        seen: set[str] = set()
        for param in item.params:
            if param.name in seen:
                sink.error(f"parameter '{param.name}' is declared twice", param.span)
            if param.name == "name":
                sink.error(
                    "a block parameter cannot be called 'name'",
                    param.span,
                    hint="name=... at a block call names the layers the call makes; rename "
                    "the parameter",
                )
                broken.add(item.name)
            seen.add(param.name)
        for before, after in zip(item.params, item.params[1:], strict=False):
            if before.default is not None and after.default is None:
                sink.error(
                    f"parameter '{after.name}' without a default follows one with a default",
                    after.span,
                )
        early = [stmt for stmt in item.body[:-1] if isinstance(stmt, ast.Return)]
        if early:
            sink.error("return must be the last statement of a block", early[0].span)
            broken.add(item.name)
        elif not item.body or not isinstance(item.body[-1], ast.Return):
            sink.error(
                f"block '{item.name}' does not end with a return statement",
                item.name_span,
                hint="end the block with `return VALUE`",
            )
            broken.add(item.name)
    return blocks, broken


def input_type(decl: ast.InputDecl, batch_names: set[str] = frozenset()) -> TensorType:  # type: ignore[assignment]
    """The type an ``input`` declares: f32/f64, 2 to 5 dims (``[N, F]`` features, or ``[N, C]``
    and 1 to 3 spatial dims); the batch (first) and spatial dims may be names (``N``; ``H``,
    ``W``), the channels (features) are a fixed size. ``batch_names`` are the names any input
    uses for its batch: a spatial dim may not reuse one. A channels-last input
    (``nhwc f32[N, H, W, 3]``) writes its channels last; its type is channels-first as every
    value's inside the network (``ir.boundary``)."""
    dtype = DType.parse(decl.dtype)
    if dtype is None:
        raise LowerError(
            f"input '{decl.name}': unknown dtype '{decl.dtype}'; expected f32 or f64",
            _dtype_span(decl),
        )
    last = channels_last(decl)
    if not (3 if last else 2) <= len(decl.dims) <= 5:
        count = f"{len(decl.dims)} dim{'' if len(decl.dims) == 1 else 's'}"
        expected = (
            "[N, ..., C] with 1 to 3 spatial dims (3 to 5 dims in all)"
            if last
            else "[N, F] (features) or [N, C, ...] with 1 to 3 spatial dims (2 to 5 dims in all)"
        )
        raise LowerError(
            f"input '{decl.name}' has {count}; expected {expected}",
            decl.span,
        )
    channel_position = len(decl.dims) - 1 if last else 1
    dims: list[Dim] = []
    for position, dim in enumerate(decl.dims):
        if isinstance(dim, ast.Int):
            if dim.value < 1:
                raise LowerError(
                    f"input '{decl.name}': dimension sizes must be positive, found {dim.value}",
                    dim.span,
                )
            too_large = limits.size_problem("dimension", dim.value)
            if too_large is not None:
                raise LowerError(f"input '{decl.name}': {too_large}", dim.span, hint=limits.HINT)
            dims.append(dim.value)
        elif dim.id == "_":
            raise LowerError(
                f"input '{decl.name}': '_' cannot be an input's size; name the dim (N, H, W...) "
                "or give its size",
                dim.span,
            )
        elif position == 0:
            dims.append(dim.id)
        elif position == channel_position:
            where = f"dim {position + 1}, channels last" if last else "dim 2"
            raise LowerError(
                f"input '{decl.name}': the channel count ({where}) must be a fixed size, found "
                f"'{dim.id}'",
                dim.span,
                hint="the weights of the first layer depend on it; write it as an integer",
            )
        elif dim.id in batch_names:
            raise LowerError(
                f"input '{decl.name}': '{dim.id}' names a batch size (the first dim of an "
                "input); a spatial size needs a name of its own",
                dim.span,
            )
        else:
            dims.append(symbol(dim.id))
    if last:  # the network's order: channels first
        dims = [dims[0], dims[-1], *dims[1:-1]]
    declared = TensorType(tuple(dims), dtype)
    if declared.is_symbolic:
        return declared  # its arrays are bounded when the sizes are bound
    too_many = limits.elements_problem(
        f"the shape {format_shape(declared.shape)}", declared.stored_elements, declared.batch
    )
    if too_many is not None:
        raise LowerError(f"input '{decl.name}': {too_many}", decl.span, hint=limits.HINT)
    return declared


def channels_last(decl: ast.InputDecl) -> bool:
    """Whether ``decl`` declares channels-last data; its layout word checked against its
    dims (``nhwc`` needs 4)."""
    if decl.layout is None:
        return False
    return layout_word(decl.layout, len(decl.dims) - 2, f"input '{decl.name}'")


def layout_word(layout: ast.LayoutWord, spatial_rank: int, what: str) -> bool:
    """Whether ``layout`` (``nhwc``, ``channels_last``, ``nchw``...) is channels-last; a
    ``LowerError`` at the word if it is none of them or names another rank."""
    found = layout_rank(layout.word)
    if found is None:
        words = ", ".join([*CHANNELS_LAST, *CHANNELS_FIRST])
        raise LowerError(
            f"{what}: unknown layout '{layout.word}'; expected one of {words}",
            layout.span,
            hint="a dtype comes after the layout: input x: nhwc f32[N, 224, 224, 3]",
        )
    last, rank = found
    if rank is not None and rank != spatial_rank and 1 <= spatial_rank <= 3:
        names = LAST_NAMES if last else FIRST_NAMES
        raise LowerError(
            f"{what}: layout '{layout.word}' is for {rank}-D data, but it has "
            f"{spatial_rank} spatial dims",
            layout.span,
            hint=f"for {spatial_rank}-D data write {names[spatial_rank].lower()}",
        )
    return last


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


def network_name(filename: str) -> str:
    stem = PurePath(filename).stem
    return stem if stem.isidentifier() else "network"


def end_of(module: ast.Module) -> Span:
    lines = module.source.text.splitlines() or [""]
    return Span(module.source, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 1)
