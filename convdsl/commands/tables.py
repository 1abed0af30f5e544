"""Tables the subcommands print: the layer table of ``check``, output statistics, counts.

Below both ``convdsl.cli`` and ``convdsl.bench`` (which prints its results with ``format_table``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convdsl.ir.boundary import ChannelsLastDecl, declared_type
from convdsl.ir.constraints import describe, describe_cond, essential
from convdsl.ir.cost import node_macs, node_param_count
from convdsl.ir.graph import Graph
from convdsl.ir.symbolic import Expr
from convdsl.ir.types import format_shape


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]
) -> list[str]:
    """Columns as wide as their widest cell; numeric columns right-aligned."""
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def human(count: int, unit: str) -> str:
    """``1234567890`` -> ``1,234,567,890 (1.23 GMAC)``; under a thousand, just the count."""
    for scale, prefix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if count >= scale:
            return f"{count:,} ({count / scale:.2f} {prefix}{unit})"
    return f"{count} {unit}".rstrip()


def count(value: int | Expr) -> str:
    """``1,234`` for an int, the expression for a count that depends on the sizes."""
    return f"{value:,}" if isinstance(value, int) else str(value)


def layer_rows(graph: Graph) -> list[tuple[str, str, str, int, int]]:
    """(layer, op, output shape, parameters, MACs per batch entry) for every node."""
    return [
        (
            node.name,
            node.op,
            ", ".join(format_shape(graph.type_of(v).shape) for v in node.outputs),
            node_param_count(graph, node),
            node_macs(graph, node),
        )
        for node in graph.nodes
    ]


def summary_lines(graph: Graph) -> list[str]:
    """The ``check`` report: a row per layer, then totals and the network's signature."""
    rows = layer_rows(graph)
    table = format_table(
        ("layer", "op", "output shape", "params", "MACs"),
        [(name, op, shape, f"{params:,}", count(macs)) for name, op, shape, params, macs in rows],
        (False, False, False, True, True),
    )
    # Counted from shapes: `check` never allocates the (possibly huge) weights.
    params = sum(math.prod(p.shape) for p in graph.params.values())
    macs = sum(row[4] for row in rows)
    inputs = [(graph.values[v].name, v) for v in graph.inputs]
    total = human(macs, "MAC") if isinstance(macs, int) else f"{macs} MAC"
    last_in, last_out = graph.channels_last_inputs, graph.channels_last_outputs
    lines = [
        f"network {graph.name}",
        *table,
        "",
        f"layers:  {len(rows)}",
        f"params:  {human(params, '')}",
        f"MACs:    {total} per batch entry",
        f"inputs:  {_signature(graph, inputs, [last_in.get(v) for _, v in inputs])}",
        f"outputs: {_signature(graph, graph.outputs, [last_out.get(n) for n, _ in graph.outputs])}",
    ]
    if graph.is_symbolic:
        lines += size_lines(graph)
    return lines


def size_lines(graph: Graph) -> list[str]:
    """The sizes a network written for any size accepts, and the layers that constrain them."""
    accepted = describe(graph) or "any"
    lines = [f"sizes:   {accepted}"]
    for constraint in essential(graph.constraints):
        where = f"{Path(constraint.span.source.name).name}:{constraint.span.line}"
        if constraint.call_sites:
            site = constraint.call_sites[-1]
            where += f" (in {site.block}, called at line {site.span.line})"
        lines.append(f"  {where}: {constraint.what} needs {describe_cond(constraint.cond)}")
    return lines


def _signature(
    graph: Graph, named: Sequence[tuple[str, int]], layouts: Sequence[ChannelsLastDecl | None]
) -> str:
    """``x: f32[N,3,H,W]``, or as declared channels-last ``x: nhwc f32[N,H,W,3]``."""
    typed = [
        f"{name}: {declared_type(graph.type_of(v), layout)}"
        for (name, v), layout in zip(named, layouts, strict=True)
    ]
    return ", ".join(typed) or "(none)"


def stats_lines(outputs: dict[str, np.ndarray]) -> list[str]:
    rows = []
    for name, array in outputs.items():
        if array.size:
            stats = [f"{float(f(array)):.6g}" for f in (np.min, np.max, np.mean)]
        else:
            stats = ["-", "-", "-"]
        rows.append((name, format_shape(array.shape), str(array.dtype), *stats))
    header = ("output", "shape", "dtype", "min", "max", "mean")
    return format_table(header, rows, (False, False, False, True, True, True))
