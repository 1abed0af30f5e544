"""What a node costs: multiply-accumulates, parameter counts and activation traffic, per batch
entry.

Used by ``convdsl check`` and by benchmarks (GFLOP/s = 2 * MACs / time). Only convolutions
count MACs; elementwise ops, pooling and data movement count 0. Traffic counts the activation
bytes a kernel reads from and writes to memory: values inside a fused kernel never reach memory,
so fusion lowers traffic while MACs stay the same.
"""

from __future__ import annotations

import math

from convdsl.ir.graph import Graph, Node
from convdsl.ir.types import num_elements


def node_macs(graph: Graph, node: Node) -> int:
    """Multiply-accumulates of ``node`` for one batch entry (a typed, resolved graph)."""
    if node.is_fused:
        return sum(node_macs(graph, part) for part in node.parts)
    if "out_channels" not in node.attrs or "kernel" not in node.attrs:
        return 0
    taps = math.prod(node.attrs["kernel"])
    groups = node.attrs["groups"]
    if node.op.startswith("conv_transpose"):
        x = graph.type_of(node.inputs[0])
        return num_elements(x.shape[1:]) * (node.attrs["out_channels"] // groups) * taps
    x = graph.type_of(node.inputs[0])
    out = graph.type_of(node.output)
    return num_elements(out.shape[1:]) * (x.channels // groups) * taps


def node_param_count(graph: Graph, node: Node) -> int:
    if node.is_fused:
        return sum(node_param_count(graph, part) for part in node.parts)
    prefix = node.name + "."
    return sum(
        math.prod(p.shape)
        for name, p in graph.params.items()
        if name.startswith(prefix) and "." not in name[len(prefix) :]
    )


def graph_macs(graph: Graph) -> int:
    return sum(node_macs(graph, node) for node in graph.nodes)


def value_bytes(graph: Graph, value: int) -> int:
    """Bytes of one batch entry of ``value`` as stored (its layout included): every
    activation's leading dim is the batch."""
    value_type = graph.type_of(value)
    return value_type.stored_elements * value_type.dtype.numpy.itemsize


def node_traffic(graph: Graph, node: Node) -> tuple[int, int]:
    """Activation bytes ``node`` reads (each distinct input once) and writes, per batch entry.

    A fused kernel reads only its external inputs and writes only its output; parameters are
    not activations and are not counted.
    """
    read = sum(value_bytes(graph, v) for v in dict.fromkeys(node.inputs))
    written = sum(value_bytes(graph, v) for v in node.outputs)
    return read, written


def graph_traffic(graph: Graph) -> tuple[int, int]:
    """Activation bytes read and written by every kernel of ``graph``, per batch entry."""
    read = written = 0
    for node in graph.nodes:
        node_read, node_written = node_traffic(graph, node)
        read += node_read
        written += node_written
    return read, written
