"""``split``: the one op call that makes several values, lowered as one node per piece.

IR nodes have one output; the number of pieces is known when the call is lowered, their sizes
only after shape inference, so each piece is a ``split`` node whose shape rule picks its slice
by ``index``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from convdsl.diagnostics import Span
from convdsl.frontend import ast
from convdsl.frontend.bind import BoundCall
from convdsl.frontend.values import LowerError, Tensor
from convdsl.ir.graph import Attrs

MAX_SPLIT = 10_000
"""Pieces of one split; more is a typo, not a network."""

MakeNode = Callable[[str, list[int], Attrs, str, Span, dict[str, Span]], Tensor]


def split_nodes(
    bound: BoundCall,
    call: ast.Call,
    name: str,
    result_names: Sequence[str],
    make_node: MakeNode,
) -> Tensor | tuple[Tensor, ...]:
    """One ``split`` node per piece, named after the variables assigned (``a, b = split(...)``)
    or ``{name}.{i}``; a single piece is returned as a block's one result."""
    parts, sizes = bound.attrs["parts"], bound.attrs["sizes"]
    count = len(sizes) if isinstance(sizes, tuple) else 1
    if parts is not None and sizes is None:
        if parts > MAX_SPLIT:
            raise LowerError(
                f"split: parts: at most {MAX_SPLIT} outputs, found {parts}", bound.spans["parts"]
            )
        count = max(parts, 1)  # the shape rule reports parts < 1
    if len(result_names) != count:
        result_names = [f"{name}.{i}" for i in range(count)]
    pieces = tuple(
        make_node(
            "split",
            list(bound.inputs),
            bound.attrs.replace(index=index),
            result_names[index],
            call.span,
            dict(bound.spans),
        )
        for index in range(count)
    )
    return pieces[0] if count == 1 else pieces
