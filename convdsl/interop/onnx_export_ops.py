"""ONNX forms of convdsl's window and data-movement ops, and ``EMITTERS``, the table from every
op of ``convdsl.ir.ops.OPS`` to its emitter (a test checks that it covers them all).

Windows read the resolved attributes: explicit ``pads`` (ONNX order: every axis' start, then
every axis' end), strides, dilations, groups. A pad that depends on an open input size (``same``
padding with a stride, on a network written for any size) is ONNX's ``auto_pad``: ``same`` is
``SAME_UPPER`` and ``same_lower`` is ``SAME_LOWER``, the same formula (``geometry.same_padding``).
Depthwise convolutions are grouped Convs (``group`` = channels, weight ``[C*m, 1, *K]``, as
ONNX wants); transposed ones are ConvTranspose with ``pads`` and ``output_padding``. Slices,
splits and crops are Slice nodes, their bounds read from the inputs' sizes when they depend on
them (``onnx_export_sizes``).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from convdsl.interop.onnx_export import Builder, unsupported
from convdsl.interop.onnx_export_activations import (
    ACTIVATIONS,
    activation_node,
    batch_norm_node,
    binary_node,
    epilogue,
    prelu_node,
    softmax_node,
)
from convdsl.interop.onnx_export_sizes import is_fixed, size_vector
from convdsl.ir.graph import Node
from convdsl.ir.ops import is_conv_transpose

Emitter = Callable[[Builder, Node], None]

_AUTO_PAD = {"same": "SAME_UPPER", "same_lower": "SAME_LOWER"}


def _padding(b: Builder, node: Node, x: str) -> tuple[str, dict[str, Any]]:
    """The op's input and padding attributes: ``pads=[...]`` when the pads are numbers; else
    ONNX's ``auto_pad``, which computes the same pads from the input size; with a dilation
    (which onnxruntime's ``auto_pad`` refuses) a Pad node ``layer/pad`` before the op, its
    widths computed from the input size."""
    pads = node.attrs["pads"]
    if is_fixed([v for pair in pads for v in pair]):
        return x, {"pads": [before for before, _ in pads] + [after for _, after in pads]}
    hint = "export for fixed sizes: --shape H=...,W=... (sizes= in Python)"
    written = _written_padding(b, node)
    if written not in _AUTO_PAD:
        raise unsupported(node, f"its padding depends on the input size ({pads})", hint=hint)
    if node.attrs.get("ceil_mode"):
        raise unsupported(node, "ceil_mode with padding that depends on the input size has no "
                          "ONNX form (auto_pad ignores ceil_mode)", hint=hint)  # fmt: skip
    if all(d == 1 for d in node.attrs.get("dilation", ())):
        return x, {"auto_pad": _AUTO_PAD[written]}
    widths = [0, 0, *(before for before, _ in pads), 0, 0, *(after for _, after in pads)]
    inputs = [x, size_vector(b, node.name, "pads", widths)]
    if node.op.startswith("max_pool"):  # padding never wins the max
        inputs.append(b.scalar(f"{node.name}/lowest", -np.inf, b.dtype(node)))
    padded = b.add("Pad", inputs, node.name, "pad", mode="constant")
    return padded, {"pads": [0] * (len(widths) - 4)}


def _written_padding(b: Builder, node: Node) -> Any:
    written = b.graph.written
    same = None if written is None else next(
        (n for n in written.nodes if n.name == node.name), None
    )  # fmt: skip
    return None if same is None else same.attrs.get("padding")


def conv_node(b: Builder, node: Node) -> None:
    a = node.attrs
    x, padding = _padding(b, node, b.inputs(node)[0])
    inputs = [x, node.param("weight"), *([node.param("bias")] if a["bias"] else [])]
    transpose = is_conv_transpose(node.op)
    attrs: dict[str, Any] = dict(
        kernel_shape=list(a["kernel"]),
        strides=list(a["stride"]),
        dilations=list(a["dilation"]),
        group=int(a["groups"]),
        **padding,
    )
    if transpose and any(a["output_padding"]):
        attrs["output_padding"] = list(a["output_padding"])
    last = a["activation"] == "none"
    y = b.add("ConvTranspose" if transpose else "Conv", inputs, node.name,
              output=b.output(node) if last else None, **attrs)  # fmt: skip
    if not last:
        epilogue(b, node, y)


def pool_node(b: Builder, node: Node) -> None:
    a = node.attrs
    x, padding = _padding(b, node, b.inputs(node)[0])
    attrs: dict[str, Any] = dict(
        kernel_shape=list(a["kernel"]),
        strides=list(a["stride"]),
        ceil_mode=int(a["ceil_mode"]),
        **padding,
    )
    if node.op.startswith("max"):
        b.add("MaxPool", [x], node.name, output=b.output(node), dilations=list(a["dilation"]),
              **attrs)  # fmt: skip
    else:
        b.add("AveragePool", [x], node.name, output=b.output(node),
              count_include_pad=int(a["include_pad"]), **attrs)  # fmt: skip


def global_pool_node(b: Builder, node: Node) -> None:
    op_type = "GlobalAveragePool" if node.op == "global_avg_pool" else "GlobalMaxPool"
    b.add(op_type, b.inputs(node), node.name, output=b.output(node))


# ---- resize -----------------------------------------------------------------------------------


def upscale_node(b: Builder, node: Node) -> None:
    """Resize with ``scales``: ONNX's output size is ``floor(n * scale)`` with a float32 scale,
    so a factor float32 cannot hold is rounded up to the next float32 (rounding down would lose
    an output element wherever ``n * factor`` is an integer); fixed sizes are checked."""
    a = node.attrs
    (x,) = b.inputs(node)
    x_type, out_type = b.graph.type_of(node.inputs[0]), b.graph.type_of(node.output)
    scales = [_float32_at_least(f) for f in a["factors"]]
    for n, out, f, scale in zip(x_type.spatial, out_type.spatial, a["factors"], scales,
                                strict=True):  # fmt: skip
        if not isinstance(n, int):
            if Fraction(float(scale)) != f:
                raise unsupported(
                    node,
                    f"factor {f} is not a float32 number, and ONNX's output size "
                    "floor(n * scale) would differ from convdsl's on some input sizes",
                    hint="export for fixed sizes: --shape H=...,W=... (sizes= in Python)",
                )
        elif int(Fraction(float(scale)) * n) != out or int(scale * np.float32(n)) != out:
            raise unsupported(node, f"no float32 scale resizes {n} to exactly {out}")
    attrs: dict[str, Any] = {
        "mode": a["mode"],
        "coordinate_transformation_mode": a["coordinate"],
    }
    if a["mode"] == "nearest":
        attrs["nearest_mode"] = a["nearest"]
    if a["mode"] == "cubic":
        attrs["cubic_coeff_a"] = float(a["cubic_coeff"])
        attrs["exclude_outside"] = int(a["exclude_outside"])
    scale_name = b.constant(f"{node.name}/scales", np.asarray([1.0, 1.0, *scales], np.float32))
    b.add("Resize", [x, "", scale_name], node.name, output=b.output(node), **attrs)


def _float32_at_least(f: Fraction) -> np.float32:
    """The float32 nearest to ``f``, or the next one up if that is below ``f``."""
    value = np.float32(float(f))
    if Fraction(float(value)) < f:
        value = np.nextafter(value, np.float32(np.inf))
    return value


# ---- movement ---------------------------------------------------------------------------------


def pixel_shuffle_node(b: Builder, node: Node) -> None:
    b.add("DepthToSpace", b.inputs(node), node.name, output=b.output(node),
          blocksize=int(node.attrs["factor"]), mode=str(node.attrs["order"]).upper())  # fmt: skip


def space_to_depth_node(b: Builder, node: Node) -> None:
    """ONNX SpaceToDepth orders channels as ``dcr``; ``crd`` (PyTorch ``pixel_unshuffle``)
    permutes them after it with a Gather."""
    r = int(node.attrs["factor"])
    if node.attrs["order"] == "dcr":
        b.add("SpaceToDepth", b.inputs(node), node.name, output=b.output(node), blocksize=r)
        return
    channels = b.graph.type_of(node.inputs[0]).channels
    blocks = b.add("SpaceToDepth", b.inputs(node), node.name, blocksize=r)
    order = [(by * r + bx) * channels + c for c in range(channels) for by in range(r)
             for bx in range(r)]  # fmt: skip
    indices = b.ints(f"{node.name}/crd", order)
    b.add("Gather", [blocks, indices], node.name, "crd", output=b.output(node), axis=1)


def slice_node(b: Builder, node: Node) -> None:
    """slice and each output of split: ``size`` elements from ``start`` by ``step``. For a
    negative step the end is given minus the axis length, so that ONNX, adding the length
    back, can reach -1 (before the first element)."""
    a = node.attrs
    start, step, size, axis = a["start"], a["step"], a["size"], a["axis"]
    end = start + size * step
    if step < 0:
        end -= b.graph.type_of(node.inputs[0]).shape[axis]
    (x,) = b.inputs(node)
    bounds = [
        size_vector(b, node.name, "starts", [start]),
        size_vector(b, node.name, "ends", [end]),
        b.ints(f"{node.name}/axes", [axis]),
        b.ints(f"{node.name}/steps", [step]),
    ]
    b.add("Slice", [x, *bounds], node.name, output=b.output(node))


def crop_node(b: Builder, node: Node) -> None:
    starts, sizes = node.attrs["starts"], node.attrs["sizes"]
    ends = [s + n for s, n in zip(starts, sizes, strict=True)]
    (x,) = b.inputs(node)[:1]
    bounds = [
        size_vector(b, node.name, "starts", list(starts)),
        size_vector(b, node.name, "ends", ends),
        b.ints(f"{node.name}/axes", [axis + 2 for axis in range(len(starts))]),
    ]
    b.add("Slice", [x, *bounds], node.name, output=b.output(node))


_PAD_MODES = {"zero": "constant", "reflect": "reflect", "replicate": "edge"}


def pad_node(b: Builder, node: Node) -> None:
    a = node.attrs
    pads = [0, 0, *(before for before, _ in a["pads"]), 0, 0, *(after for _, after in a["pads"])]
    inputs = [*b.inputs(node), b.ints(f"{node.name}/pads", pads)]
    if a["mode"] == "zero" and a["value"] != 0:
        inputs.append(b.scalar(f"{node.name}/value", a["value"], b.dtype(node)))
    b.add("Pad", inputs, node.name, output=b.output(node), mode=_PAD_MODES[a["mode"]])


def flatten_node(b: Builder, node: Node) -> None:
    b.add("Flatten", b.inputs(node), node.name, output=b.output(node), axis=1)


def dense_node(b: Builder, node: Node) -> None:
    """``Gemm`` with the weight ``[O, F]`` transposed, as ``nn.Linear`` exports."""
    a = node.attrs
    inputs = [b.inputs(node)[0], node.param("weight"), *([node.param("bias")] if a["bias"] else [])]
    last = a["activation"] == "none"
    y = b.add("Gemm", inputs, node.name, output=b.output(node) if last else None, transB=1)
    if not last:
        epilogue(b, node, y)


def concat_node(b: Builder, node: Node) -> None:
    b.add("Concat", b.inputs(node), node.name, output=b.output(node), axis=int(node.attrs["axis"]))


EMITTERS: dict[str, Emitter] = {
    **{f"{kind}{rank}d": conv_node for kind in ("conv", "depthwise", "conv_transpose")
       for rank in (1, 2, 3)},
    **{f"{kind}_pool{rank}d": pool_node for kind in ("max", "avg") for rank in (1, 2, 3)},
    **{op: activation_node for op in ACTIVATIONS if op != "none"},
    **{op: binary_node for op in ("add", "sub", "mul", "div")},
    "prelu": prelu_node,
    "softmax": softmax_node,
    "batch_norm": batch_norm_node,
    "global_avg_pool": global_pool_node,
    "global_max_pool": global_pool_node,
    "concat": concat_node,
    "slice": slice_node,
    "split": slice_node,
    "upscale": upscale_node,
    "pixel_shuffle": pixel_shuffle_node,
    "space_to_depth": space_to_depth_node,
    "pad": pad_node,
    "crop": crop_node,
    "flatten": flatten_node,
    "dense": dense_node,
}  # fmt: skip
"""The ONNX emitter of every op of the language."""
