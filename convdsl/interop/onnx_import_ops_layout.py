"""Transpose at a graph's boundaries: channels-last inputs and outputs.

A graph input read only through ``Transpose(perm=[0, 3, 1, 2])`` (NHWC to NCHW; ``[0, 2, 1]``
and ``[0, 4, 1, 2, 3]`` for 1-D and 3-D) is declared channels-last (``input x: nhwc
f32[N, H, W, C]``) and the Transpose is the input itself (``onnx_import_graph`` decides this
when it declares the inputs). A graph output computed by the inverse Transpose is declared
``output y: nhwc = ...``. Any other Transpose of a computed tensor is refused: inside a network
every value is channels-first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convdsl.interop.onnx_import_graph import Importer, OnnxNode


def transpose(im: Importer, node: OnnxNode) -> None:
    from convdsl.interop.onnx_import_graph import to_channels_first

    x = im.tensor(node)
    perm = [int(p) for p in node.attr("perm", list(range(x.rank))[::-1])]
    axes = list(range(x.rank))
    if node.inputs[0] in im.channels_last_inputs:
        im.alias(node, x)  # checked when the input was declared: this is its NCHW view
        return
    back = [0, *range(2, x.rank), 1]
    out = node.outputs[0]
    if x.rank >= 3 and perm == back and out in im.graph_outputs:
        im.alias(node, x)
        im.channels_last_outputs.add(out)
        return
    if perm == axes:
        im.alias(node, x)
        return
    first = to_channels_first(axes, True)
    raise im.refuse(
        node,
        f"convdsl imports a Transpose only at a graph input ({first}: a channels-last input) "
        f"or output ({back}: a channels-last output); inside a network values are "
        "channels-first",
        "perm",
    )


CONVERTERS = {"Transpose": transpose}
