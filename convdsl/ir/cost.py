"""What a node costs: multiply-accumulates and parameter counts, per batch entry.

Used by ``convdsl check`` and by benchmarks (GFLOP/s = 2 * MACs / time). Only convolutions
count MACs; elementwise ops, pooling and data movement count 0.
"""

from __future__ import annotations

import math

from convdsl.ir.graph import Graph, Node
from convdsl.ir.types import num_elements


def node_macs(graph: Graph, node: Node) -> int:
    """Multiply-accumulates of ``node`` for one batch entry (a typed, resolved graph)."""
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
    prefix = node.name + "."
    return sum(
        math.prod(p.shape)
        for name, p in graph.params.items()
        if name.startswith(prefix) and "." not in name[len(prefix) :]
    )


def graph_macs(graph: Graph) -> int:
    return sum(node_macs(graph, node) for node in graph.nodes)
