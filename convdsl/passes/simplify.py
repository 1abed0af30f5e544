"""Simplification passes: drop no-op nodes, merge repeated computations, remove dead code.

Each pass expects a typed graph (after ``shapes``) and guarantees a graph that computes the same
outputs, passes the verifier, and keeps the declared parameters (the weights-file schema) and
the graph inputs unchanged. Values no node writes any more stay in ``Graph.values`` (shape
annotations may still name them); nothing reads them. A pass that changes nothing returns its
argument itself, so "did this pass change the IR" is ``result is not graph``.

Rewiring a value (``rename``: old id -> the id that now holds the same array) renames it in
every reader, in the parts of fused kernels that read it, and in the graph outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from convdsl.ir.graph import DerivedParam, Graph, Node
from convdsl.ir.ops import OPS, FusionClass


def eliminate_dead_code(graph: Graph) -> Graph:
    """Remove the nodes no graph output depends on.

    Expects: a typed graph. Guarantees: every remaining node contributes to an output; derived
    parameters no remaining node reads (directly or through another derived parameter) are
    dropped; graph inputs, declared parameters and ``Graph.values`` are kept as they are.
    """
    live = {value for _, value in graph.outputs}
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(value in live for value in node.outputs):
            kept.append(node)
            live.update(node.inputs)
    kept.reverse()
    derived = _derived_in_use(graph, kept)
    if len(kept) == len(graph.nodes) and len(derived) == len(graph.derived):
        return graph
    return replace(graph, nodes=tuple(kept), derived=derived)


def _derived_in_use(graph: Graph, nodes: Iterable[Node]) -> dict[str, DerivedParam]:
    """The derived parameters ``nodes`` read, with everything they are computed from."""
    needed = {
        name for node in nodes for part in node.parts or (node,) for name in part.params.values()
    }
    for derived in reversed(list(graph.derived.values())):
        if derived.name in needed:
            needed.update(derived.sources)
    return {name: d for name, d in graph.derived.items() if name in needed}


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    """Merge nodes that compute the same thing: the same op on the same input values with equal
    attributes and the same parameters (so two layers with parameters of their own never merge,
    but ``relu(x)`` written twice does). The first one survives; readers and graph outputs of
    the others are rewired to it.

    Expects: a typed graph. Guarantees: no two non-fused nodes share (op, inputs, attrs,
    params); fused kernels are never merged (their inputs are still rewired); two graph outputs
    may now name the same value.
    """
    rename: dict[int, int] = {}
    seen: dict[tuple, Node] = {}
    nodes: list[Node] = []
    for original in graph.nodes:
        node = _renamed(original, rename)
        if not node.is_fused:
            key = (node.op, node.inputs, node.attrs, node.params)
            survivor = seen.setdefault(key, node)
            if survivor is not node:
                rename.update(zip(node.outputs, survivor.outputs, strict=True))
                continue
        nodes.append(node)
    return _rebuilt(graph, nodes, rename)


def remove_identities(graph: Graph) -> Graph:
    """Drop nodes that return their input unchanged and rewire their readers to that input.

    Exact identities only: ``crop`` of the whole input; ``pad`` by zero on every side (any
    mode); ``upscale`` by factor 1 on every axis (any mode: linear interpolation at factor 1
    samples exactly the input points); ``pixel_shuffle`` with factor 1; ``concat`` of one
    input; max/avg pooling with kernel 1, stride 1 and no padding.

    A graph output written by an identity is rewired to the identity's input, so two outputs
    may name the same value, except when that input is a graph input: then the identity node
    is kept, so that every network output is a value some node writes.

    Expects: a typed graph. Guarantees: no non-fused identity node remains except those just
    described; parts of fused kernels are left alone.
    """
    graph_inputs = set(graph.inputs)
    graph_outputs = {value for _, value in graph.outputs}
    rename: dict[int, int] = {}
    nodes: list[Node] = []
    for original in graph.nodes:
        node = _renamed(original, rename)
        if _is_identity(graph, node):
            source = node.inputs[0]
            if not (node.output in graph_outputs and source in graph_inputs):
                rename[node.output] = source
                continue
        nodes.append(node)
    return _rebuilt(graph, nodes, rename)


def _is_identity(graph: Graph, node: Node) -> bool:
    if node.is_fused or len(node.inputs) != 1 or len(node.outputs) != 1:
        return False
    source_type = graph.type_of(node.inputs[0])
    if graph.type_of(node.output) != source_type:
        return False
    attrs = node.attrs
    if node.op == "crop":
        return not any(attrs["starts"]) and tuple(attrs["sizes"]) == source_type.spatial
    if node.op == "pad":
        return not any(side for pair in attrs["pads"] for side in pair)
    if node.op == "upscale":
        return all(factor == 1 for factor in attrs["factors"])
    if node.op == "pixel_shuffle":
        return attrs["factor"] == 1
    if node.op == "concat":
        return True  # one input (checked above)
    if OPS[node.op].fusion is FusionClass.POOL:
        return (
            all(k == 1 for k in attrs["kernel"])
            and all(s == 1 for s in attrs["stride"])
            and not any(side for pair in attrs["pads"] for side in pair)
        )
    return False


# ---- rewiring ------------------------------------------------------------------------------


def _renamed(node: Node, rename: Mapping[int, int]) -> Node:
    """``node`` reading ``rename[v]`` wherever it read ``v`` (its parts too, if fused)."""
    if not any(value in rename for value in node.inputs):
        return node
    inputs = tuple(rename.get(value, value) for value in node.inputs)
    if not node.is_fused:
        return replace(node, inputs=inputs)
    # A kernel lists each outside value once, even when two of them became one.
    parts = tuple(
        replace(part, inputs=tuple(rename.get(v, v) for v in part.inputs)) for part in node.parts
    )
    return replace(node, inputs=tuple(dict.fromkeys(inputs)), parts=parts)


def _rebuilt(graph: Graph, nodes: list[Node], rename: Mapping[int, int]) -> Graph:
    """``graph`` with ``nodes`` and its outputs rewired; ``graph`` itself if nothing changed."""
    if not rename and len(nodes) == len(graph.nodes):
        return graph
    outputs = tuple((name, rename.get(value, value)) for name, value in graph.outputs)
    return replace(graph, nodes=tuple(nodes), outputs=outputs)
