"""Folding passes: absorb a neighbouring op into a convolution.

``fold_batch_norm`` folds an inference batch norm into the conv before it (a per-channel scale
of the weight and a new bias, as derived parameters computed when weights are bound);
``fold_pad`` folds an explicit zero ``pad`` into the ``pads`` of the convs reading it;
``fold_crop`` folds a ``crop`` into the ``pads`` of the transposed conv it reads (which crop).

All expect a typed graph (after ``shapes``) and guarantee a graph that computes the same
outputs (up to float rounding for batch-norm folding), passes the verifier, and keeps the graph
inputs, outputs and declared parameters (the weights-file schema) unchanged. A pass that
changes nothing returns its argument itself.
"""

from __future__ import annotations

from dataclasses import replace

from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Attrs, DerivedParam, Graph, Node
from convdsl.ir.ops import is_conv, is_conv_transpose
from convdsl.ir.types import DType


def fold_batch_norm(graph: Graph) -> Graph:
    """``batch_norm(conv(x))`` -> one conv with a folded weight and bias.

    Folds when the conv (regular, depthwise, or transposed with ``groups == 1``) applies no
    activation, and its output is read by that batch norm alone and is not a graph output.
    The conv keeps its name, span and place in the schedule, takes over the batch norm's
    output value (so readers need no rewiring) and gets ``bias=true``; its ``weight`` and
    ``bias`` become the derived parameters ``{conv}.weight@{bn}`` and ``{conv}.bias@{bn}``
    (recipes ``bn_fold_weight`` / ``bn_fold_bias``). Repeated batch norms fold one after another.

    Expects: a typed graph. Guarantees: the batch norm node is gone; nothing else moves.
    """
    readers = graph.consumers()
    graph_outputs = {value for _, value in graph.outputs}
    derived = dict(graph.derived)
    nodes: list[Node] = []
    writer: dict[int, int] = {}  # value -> index in ``nodes`` of the node writing it
    for node in graph.nodes:
        index = writer.get(node.inputs[0]) if node.op == "batch_norm" else None
        if index is not None and _folds(nodes[index], node, readers, graph_outputs):
            nodes[index] = _folded(graph, nodes[index], node, derived)
            writer[node.output] = index
            continue
        writer.update((value, len(nodes)) for value in node.outputs)
        nodes.append(node)
    if len(nodes) == len(graph.nodes):
        return graph
    return replace(graph, nodes=tuple(nodes), derived=derived)


def _folds(conv: Node, bn: Node, readers: dict[int, list[Node]], graph_outputs: set[int]) -> bool:
    if not is_conv(conv.op) or conv.attrs["activation"] != "none":
        return False
    if is_conv_transpose(conv.op) and conv.attrs["groups"] != 1:
        return False  # the weight's output channels are not one axis: [C, O/groups, *K]
    # ``readers`` is of the original graph: the conv's output is still the value it wrote there
    # (a conv that took over a batch norm's output took over its readers too).
    value = conv.output
    return value not in graph_outputs and readers[value] == [bn]


def _folded(graph: Graph, conv: Node, bn: Node, derived: dict[str, DerivedParam]) -> Node:
    """``conv`` writing ``bn``'s output through derived parameters added to ``derived``."""
    eps = bn.attrs["eps"]
    bn_params = [bn.param(role) for role in ("weight", "bias", "running_mean", "running_var")]
    gamma, beta, mean, var = bn_params
    weight_source = conv.param("weight")
    weight = DerivedParam(
        f"{conv.name}.weight@{bn.name}",
        _shape(graph, derived, weight_source),
        _dtype(graph, derived, weight_source),
        "bn_fold_weight",
        (weight_source, gamma, var),
        Attrs(axis=1 if is_conv_transpose(conv.op) else 0, eps=eps),
    )
    has_bias = bool(conv.attrs["bias"])
    bias = DerivedParam(
        f"{conv.name}.bias@{bn.name}",
        (graph.type_of(bn.output).channels,),
        weight.dtype,
        "bn_fold_bias",
        ((conv.param("bias"),) if has_bias else ()) + (gamma, beta, mean, var),
        Attrs(has_bias=has_bias, eps=eps),
    )
    for made in (weight, bias):
        if made.name in derived:
            raise InternalError(f"batch-norm folding made {made.name} twice")
        derived[made.name] = made
    return replace(
        conv,
        outputs=bn.outputs,
        attrs=conv.attrs.replace(bias=True),
        params=conv.params.replace(weight=weight.name, bias=bias.name),
    )


def _shape(graph: Graph, derived: dict[str, DerivedParam], name: str) -> tuple[int, ...]:
    return derived[name].shape if name in derived else graph.params[name].shape


def _dtype(graph: Graph, derived: dict[str, DerivedParam], name: str) -> DType:
    return derived[name].dtype if name in derived else graph.params[name].dtype


def fold_pad(graph: Graph) -> Graph:
    """``conv(pad(x, mode=zero, value=0))`` -> ``conv(x)`` with the pad added to its ``pads``.

    Folds when every reader of the pad's output is a (non-transposed) conv, and that output is
    not a graph output; each reader absorbs the pad and the pad node is removed. Never folds
    into transposed convs (their ``pads`` crop the output), pools (max pooling pads with -inf,
    and average pooling may not count padding), reflect/replicate pads, or a nonzero ``value``.

    Expects: a typed graph. Guarantees: output shapes are unchanged (a conv sees the same
    padded input); folded pad nodes are gone, so no dead-code pass is needed afterwards.
    """
    readers = graph.consumers()
    graph_outputs = {value for _, value in graph.outputs}
    folded = {
        node.output: node
        for node in graph.nodes
        if _pad_folds(node, readers[node.outputs[0]], graph_outputs)
    }
    if not folded:
        return graph
    nodes = []
    for node in graph.nodes:
        if node.op == "pad" and node.output in folded:
            continue
        if node.inputs and node.inputs[0] in folded:
            node = _absorbed(node, folded[node.inputs[0]])
        nodes.append(node)
    return replace(graph, nodes=tuple(nodes))


def _pad_folds(node: Node, readers: list[Node], graph_outputs: set[int]) -> bool:
    if node.op != "pad" or node.attrs["mode"] != "zero" or node.attrs["value"] != 0.0:
        return False
    return (
        node.output not in graph_outputs
        and bool(readers)
        and all(is_conv(r.op) and not is_conv_transpose(r.op) for r in readers)
    )


def _absorbed(conv: Node, pad: Node) -> Node:
    pads = tuple(
        (before + pad_before, after + pad_after)
        for (before, after), (pad_before, pad_after) in zip(
            conv.attrs["pads"], pad.attrs["pads"], strict=True
        )
    )
    return replace(
        conv, inputs=(pad.inputs[0], *conv.inputs[1:]), attrs=conv.attrs.replace(pads=pads)
    )


def fold_crop(graph: Graph) -> Graph:
    """``crop(conv_transpose(x))`` -> ``conv_transpose(x)`` with the crop added to its ``pads``.

    A transposed conv's padding removes that many positions from either end of its full
    output, so a crop of its output is more padding: ``starts`` before, what the crop leaves
    after. Folds when the crop is the only reader of the transposed conv's output and that
    output is not a graph output. The conv keeps its name, span and place and takes over the
    crop's output value; the crop node is removed. FCN-8s's last crop (232 -> 224, a copy of
    its whole 21-class output) goes, and ``upscore8`` computes 7% fewer positions.

    Expects: a typed graph. Guarantees: output shapes are unchanged; folded crops are gone.
    """
    readers = graph.consumers()
    graph_outputs = {value for _, value in graph.outputs}
    writer = {value: node for node in graph.nodes for value in node.outputs}
    folded: dict[int, Node] = {}  # transposed conv output -> the crop reading it
    for node in graph.nodes:
        source = writer.get(node.inputs[0]) if node.op == "crop" else None
        if (
            source is not None
            and is_conv_transpose(source.op)
            and len(readers[source.output]) == 1
            and source.output not in graph_outputs
        ):
            folded[source.output] = node
    if not folded:
        return graph
    crops = {id(crop) for crop in folded.values()}
    nodes = []
    for node in graph.nodes:
        if id(node) in crops:
            continue
        if len(node.outputs) == 1 and node.outputs[0] in folded:
            node = _cropped(graph, node, folded[node.outputs[0]])
        nodes.append(node)
    return replace(graph, nodes=tuple(nodes))


def _cropped(graph: Graph, conv: Node, crop: Node) -> Node:
    full = graph.type_of(conv.output).spatial
    pads = tuple(
        (before + start, after + size_full - start - size)
        for (before, after), size_full, start, size in zip(
            conv.attrs["pads"], full, crop.attrs["starts"], crop.attrs["sizes"], strict=True
        )
    )
    return replace(conv, outputs=(crop.output,), attrs=conv.attrs.replace(pads=pads))
