"""Layouts: how each kernel wants its input stored, and the conversions that get it there.

Every value is stored dense, ``[C, *spatial]`` per batch entry, unless this pass gives it a
layout. The one layout so far is *phase rows* (``PhaseRows``), for a convolution with stride
``s > 1`` on the last axis: its output vector of consecutive positions reads inputs ``s``
apart, which a vector load cannot do without shuffles that cost a register tile its registers
(the LLVM backend's 3x3 stride-2 convolution ran at 31-47 GFLOP/s on one thread that way). With
the input stored as ``s`` zero-padded phase rows per row, every tap reads consecutive elements
and no lane needs a mask: the convolution runs as at stride 1, for one pass over its input.

The pass puts one ``relayout`` node per (value, stride) some kernel needs just before the first
kernel that reads it and points those kernels at its output: convolutions reading the same
value with the same stride share one conversion, its rows long enough for all of them. Phase
rows are as long as loads of the widest vector any backend uses (16 lanes) need, so the
decision does not depend on the target. The NumPy interpreter, which keeps every value as a
logical array, runs ``relayout`` as the identity; the LLVM backend copies.

Channels-last inputs and outputs get their layout first (``passes.boundary``); a strided
convolution reading a channels-last input makes its phase rows from it directly.

Expects a typed graph (kernels fused or not). Guarantees: the same outputs; graph inputs
and parameters unchanged, outputs unchanged but for channels-last conversions
(``passes.boundary``); no memory plan (conversions add values).
"""

from __future__ import annotations

import math
from dataclasses import replace

from convdsl.ir.graph import RELAYOUT, Attrs, Graph, Node, Value
from convdsl.ir.ops import is_conv, is_conv_transpose
from convdsl.ir.types import PhaseRows
from convdsl.passes.boundary import store_boundaries

VECTOR_LANES = 16  # the widest fp32 vector of any target: loads of it never leave a phase row


def choose_layouts(graph: Graph) -> Graph:
    graph = store_boundaries(graph)
    layouts = _merged_layouts(graph)
    values = dict(graph.values)
    converted: dict[tuple[int, int], int] = {}  # (value, stride) -> its phase rows
    nodes: list[Node] = []
    for node in graph.nodes:
        anchor = node.parts[0] if node.is_fused else node
        layout = wanted_layout(graph, anchor)
        if layout is None:
            nodes.append(node)
            continue
        source = anchor.inputs[0]
        key = (source, layout.stride)
        if key not in converted:
            value = _converted_value(values, source, layouts[key], anchor)
            values[value.id] = value
            converted[key] = value.id
            nodes.append(
                Node(
                    op=RELAYOUT,
                    name=value.name,
                    inputs=(source,),
                    outputs=(value.id,),
                    attrs=Attrs(),
                    span=anchor.span,
                    call_sites=anchor.call_sites,
                )
            )
        nodes.append(_reading(node, anchor, converted[key]))
    if not converted:
        return graph
    return replace(graph, values=values, nodes=tuple(nodes), memory=None)


def _merged_layouts(graph: Graph) -> dict[tuple[int, int], PhaseRows]:
    """One layout per (value, stride) that serves every reader: from the earliest first
    element any of them reads to the furthest last."""
    spans: dict[tuple[int, int], tuple[int, int]] = {}
    for node in graph.nodes:
        anchor = node.parts[0] if node.is_fused else node
        layout = wanted_layout(graph, anchor)
        if layout is None:
            continue
        key = (anchor.inputs[0], layout.stride)
        first, end = spans.get(key, (layout.first, layout.first + layout.length))
        spans[key] = (min(first, layout.first), max(end, layout.first + layout.length))
    return {key: PhaseRows(key[1], first, end - first) for key, (first, end) in spans.items()}


def wanted_layout(graph: Graph, node: Node) -> PhaseRows | None:
    """Phase rows for the input of a convolution (not transposed) with stride > 1 on its last
    axis, long enough for whole vectors (of up to 16 lanes) up to the output row's end plus
    the taps' reach, so that no load leaves its row."""
    if not is_conv(node.op) or is_conv_transpose(node.op):
        return None
    if isinstance(graph.type_of(node.inputs[0]).layout, PhaseRows):
        return None  # converted already
    a = node.attrs
    if not a["stride"]:
        return None  # no spatial axis (dense)
    stride = a["stride"][-1]
    if stride == 1:
        return None
    width = graph.type_of(node.output).spatial[-1]
    dilation = a["dilation"][-1]
    shifts = [(t * dilation - a["pads"][-1][0]) // stride for t in range(a["kernel"][-1])]
    first = min(0, shifts[0])
    length = math.ceil(width / VECTOR_LANES) * VECTOR_LANES + shifts[-1] - first
    return PhaseRows(stride, first, length)


def _converted_value(
    values: dict[int, Value], source: int, layout: PhaseRows, reader: Node
) -> Value:
    original = values[source]
    assert original.type is not None
    names = {v.name for v in values.values()}
    name = f"{original.name}.phases{layout.stride}"
    while name in names:
        name += "_"
    return Value(max(values) + 1, name, replace(original.type, layout=layout), reader.span)


def _reading(node: Node, anchor: Node, value: int) -> Node:
    """``node`` with its anchor reading ``value`` instead of its first input."""
    moved = replace(anchor, inputs=(value, *anchor.inputs[1:]))
    if not node.is_fused:
        return moved
    parts = (moved, *node.parts[1:])
    inside: set[int] = set()
    inputs: dict[int, None] = {}
    for part in parts:
        inputs.update((v, None) for v in part.inputs if v not in inside)
        inside.update(part.outputs)
    return replace(node, inputs=tuple(inputs), parts=parts)
