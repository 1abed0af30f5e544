"""Channels-last inputs and outputs stored as the caller's arrays are, read and written in place.

An input declared ``nhwc`` (``Graph.channels_last_inputs``) gets the ``ChannelsLast`` layout
in its type: the kernels read the caller's ``[N, H, W, C]`` array itself. A convolution (not
transposed) with a stride above 1 on the last axis reads it directly: the phase rows it reads
(``passes.layout``) are made from the caller's array, in the one pass over the input they
take anyway, so the conversion costs nothing more. Any other reader (a convolution of stride 1
too, unless ``FUSE_STRIDE_ONE``) reads a dense copy made by one ``relayout`` node before the
first of them (a conversion kernel: one more pass over the input).

An output declared ``nhwc`` is written channels-last by its last writer where that is a
kernel anchored by a convolution (not transposed) whose parts all have its shape, after the
anchor elementwise ones (the kernel's stores then scatter along the channels), and no other
kernel reads it; otherwise a ``relayout`` node at the end converts it. So does one for an
output declared channels-first that is a channels-last input passed through.

Expects a typed graph (kernels fused or not), run before the layout pass's phase rows.
Guarantees: every channels-last input and output has the ``ChannelsLast`` layout, and only
conv anchors (as their first input) and ``relayout`` nodes read a ``ChannelsLast`` value.
"""

from __future__ import annotations

from dataclasses import replace

from convdsl.diagnostics import Span
from convdsl.ir.graph import RELAYOUT, Attrs, Graph, Node, Value
from convdsl.ir.ops import OPS, FusionClass, is_conv, is_conv_transpose
from convdsl.ir.types import ChannelsLast, TensorType

CHANNELS_LAST = ChannelsLast()
FUSE_STRIDE_ONE = False
"""Whether a convolution of stride 1 on the last axis reads a channels-last input itself,
each vector of positions a strided load (``backends.llvm.strided``), rather than a dense copy.
Off: 3x3, 3 -> 32 channels at 224x224, batch 1, 2 threads (``benchmarks/channels_last.py``)
ran 2.4x the time of channels-first that way (3.3 ms, where a load of the span and a shuffle
replace each vector load: 6.4 ms as gathers) and 1.14x with the copy (1.7 vs 1.5 ms)."""


def store_boundaries(graph: Graph) -> Graph:
    if not graph.channels_last_inputs and not graph.channels_last_outputs:
        return graph
    values = dict(graph.values)
    nodes = list(graph.nodes)
    for value in graph.channels_last_inputs:
        values[value] = replace(values[value], type=_last(graph.type_of(value)))
        nodes = _dense_copy_for_others(graph, values, nodes, value)
    outputs = list(graph.outputs)
    for slot, (name, value) in enumerate(graph.outputs):
        wanted = name in graph.channels_last_outputs
        if wanted == _stored_last(values[value]):
            continue
        if wanted and _writes_directly(graph, nodes, value):
            values[value] = replace(values[value], type=_last(graph.type_of(value)))
            continue
        logical = graph.type_of(value)
        suffix, stored = ("channels_last", _last(logical)) if wanted else ("nchw", logical)
        copy = _new_value(values, value, suffix, stored)
        writer = next((n for n in nodes if value in n.outputs), None)
        span = writer.span if writer is not None else values[value].span
        nodes.append(_relayout(copy.name, value, copy.id, span))
        outputs[slot] = (name, copy.id)
    return replace(graph, values=values, nodes=tuple(nodes), outputs=tuple(outputs), memory=None)


def reads_channels_last(node: Node, value: int) -> bool:
    """Whether ``node`` reads ``value`` stored channels-last: its anchor is a convolution
    (not transposed) reading it as its input, no other part reads it, and its stride on the
    last axis is above 1 (or ``FUSE_STRIDE_ONE``)."""
    parts = node.parts if node.is_fused else (node,)
    anchor = parts[0]
    if not is_conv(anchor.op) or is_conv_transpose(anchor.op) or node.op == RELAYOUT:
        return False
    if value in anchor.inputs[1:] or (anchor.attrs["stride"][-1] == 1 and not FUSE_STRIDE_ONE):
        return False
    return anchor.inputs[0] == value and all(value not in part.inputs for part in parts[1:])


def _dense_copy_for_others(
    graph: Graph, values: dict[int, Value], nodes: list[Node], value: int
) -> list[Node]:
    """``nodes`` with every reader of ``value`` that cannot read it channels-last reading a
    dense copy, made just before the first of them."""
    others = [
        i for i, n in enumerate(nodes) if value in n.inputs and not reads_channels_last(n, value)
    ]
    if not others:
        return nodes
    copy = _new_value(values, value, "nchw", graph.type_of(value))
    moved = [_renamed(n, value, copy.id) if i in others else n for i, n in enumerate(nodes)]
    first = others[0]
    conversion = _relayout(copy.name, value, copy.id, nodes[first].span)
    return [*moved[:first], conversion, *moved[first:]]


def _writes_directly(graph: Graph, nodes: list[Node], value: int) -> bool:
    """Whether the kernel writing ``value`` can store it channels-last (module doc)."""
    if value in graph.inputs or sum(1 for _, v in graph.outputs if v == value) > 1:
        return False
    if any(value in node.inputs for node in nodes):
        return False
    writer = next((node for node in nodes if value in node.outputs), None)
    if writer is None:
        return False
    parts = writer.parts if writer.is_fused else (writer,)
    anchor, shape = parts[0], graph.type_of(value).shape
    if not is_conv(anchor.op) or is_conv_transpose(anchor.op):
        return False
    return all(graph.type_of(part.output).shape == shape for part in parts) and all(
        part.op in OPS and OPS[part.op].fusion is FusionClass.ELEMENTWISE for part in parts[1:]
    )


def _stored_last(value: Value) -> bool:
    return value.type is not None and isinstance(value.type.layout, ChannelsLast)


def _last(value_type: TensorType) -> TensorType:
    return replace(value_type, layout=CHANNELS_LAST)


def _new_value(values: dict[int, Value], source: int, suffix: str, value_type: TensorType) -> Value:
    original = values[source]
    names = {v.name for v in values.values()}
    name = f"{original.name}.{suffix}"
    while name in names:
        name += "_"
    made = Value(max(values) + 1, name, value_type, original.span)
    values[made.id] = made
    return made


def _relayout(name: str, source: int, target: int, span: Span) -> Node:
    return Node(RELAYOUT, name, (source,), (target,), Attrs(), span)


def _renamed(node: Node, old: int, new: int) -> Node:
    """``node`` (and its parts) reading ``new`` where it read ``old``."""

    def swap(inputs: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(new if v == old else v for v in inputs)

    parts = tuple(replace(part, inputs=swap(part.inputs)) for part in node.parts)
    return replace(node, inputs=swap(node.inputs), parts=parts)
