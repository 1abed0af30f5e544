"""ONNX ops with windows or per-channel parameters: Conv, ConvTranspose, BatchNormalization,
MaxPool, AveragePool and the global pools, each mapped to one convdsl layer.

ONNX's padding forms map one to one: ``auto_pad=SAME_UPPER`` is convdsl's ``same``,
``SAME_LOWER`` is ``same_lower``, ``VALID`` no padding, explicit ``pads`` (``[b_1.., a_1..]``)
the ``[before, after]`` pairs. A transposed convolution's padding is always written as the
explicit crop (and ``output_padding``) that ONNX's rules give, so ``output_shape`` and the
SAME modes need no counterpart in the language.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from convdsl.interop.onnx_import_program import Raw, per_axis

if TYPE_CHECKING:
    from convdsl.interop.onnx_import_graph import Importer, OnnxNode

AUTO_PADS = {"SAME_UPPER": Raw("same"), "SAME_LOWER": Raw("same_lower"), "VALID": None}


def ints(im: Importer, node: OnnxNode, name: str, rank: int, default: int) -> list[int]:
    """A per-spatial-axis attribute (``strides``, ``dilations``...) with its ONNX default."""
    value = node.attr(name)
    if value is None:
        return [default] * rank
    if len(value) != rank:
        raise im.refuse(node, f"expected {rank} values, one per spatial axis", name)
    return [int(v) for v in value]


def unless(values: list[int], default: int) -> int | list[int] | None:
    """The values as an argument, None when every axis has the default."""
    return None if all(v == default for v in values) else per_axis(values)


def pairs(before: list[int], after: list[int]) -> object:
    """Explicit padding as the language writes it: None, ``p``, ``[p_1, ...]`` or pairs."""
    if not any(before) and not any(after):
        return None
    if before == after:
        return per_axis(before)
    return [[b, a] for b, a in zip(before, after, strict=True)]


def explicit_pads(im: Importer, node: OnnxNode, rank: int) -> tuple[list[int], list[int]]:
    pads = node.attr("pads")
    if pads is None:
        return [0] * rank, [0] * rank
    if len(pads) != 2 * rank:
        raise im.refuse(node, f"expected {2 * rank} values (begin and end of each axis)", "pads")
    if any(p < 0 for p in pads):
        raise im.refuse(node, "negative padding is not supported", "pads")
    return [int(p) for p in pads[:rank]], [int(p) for p in pads[rank:]]


def padding(im: Importer, node: OnnxNode, rank: int) -> object:
    """The ``padding=`` argument of a conv or pool."""
    auto = node.attr("auto_pad", "NOTSET")
    if auto in AUTO_PADS:
        if any(node.attr("pads") or []):
            raise im.refuse(node, "explicit pads together with auto_pad", "pads")
        return AUTO_PADS[auto]
    if auto != "NOTSET":
        raise im.refuse(node, "expected NOTSET, SAME_UPPER, SAME_LOWER or VALID", "auto_pad")
    return pairs(*explicit_pads(im, node, rank))


def _weights(im: Importer, node: OnnxNode, rank: int) -> tuple[np.ndarray, np.ndarray | None]:
    w = im.const(node, 1, "W")
    if w is None:
        raise im.refuse(node, "input 1 (the weight W) is missing")
    if w.ndim != rank or 0 in w.shape:
        raise im.refuse(node, f"the weight W has shape {list(w.shape)}; expected {rank} dims")
    kernel = node.attr("kernel_shape")
    if kernel is not None and list(kernel) != list(w.shape[2:]):
        raise im.refuse(node, f"does not match the weight's {list(w.shape[2:])}", "kernel_shape")
    b = im.const(node, 2, "B")
    return w, b


def _params(w: np.ndarray, b: np.ndarray | None, out: int, im: Importer, node: OnnxNode) -> dict:
    params = {"weight": w}
    if b is not None:
        if b.shape != (out,):
            raise im.refuse(node, f"the bias B has shape {list(b.shape)}; expected [{out}]")
        params["bias"] = b
    return params


def conv(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    r = x.rank - 2
    w, b = _weights(im, node, x.rank)
    group = int(node.attr("group", 1))
    out = w.shape[0]
    if group < 1 or out % group:
        raise im.refuse(node, f"must divide the {out} output channels", "group")
    common: dict[str, Any] = dict(
        kernel=per_axis(list(w.shape[2:])),
        stride=unless(ints(im, node, "strides", r, 1), 1),
        dilation=unless(ints(im, node, "dilations", r, 1), 1),
        padding=padding(im, node, r),
    )
    params = _params(w, b, out, im, node)
    bias = None if b is not None else False
    if group > 1 and w.shape[1] == 1:  # one input channel per group: depthwise
        multiplier = out // group
        im.define(node, f"depthwise{r}d", Raw(x.var), **common,
                  multiplier=multiplier if multiplier != 1 else None, bias=bias,
                  params=params)  # fmt: skip
        return
    im.define(node, f"conv{r}d", Raw(x.var), out, **common,
              groups=group if group != 1 else None, bias=bias, params=params)  # fmt: skip


def conv_transpose(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    r = x.rank - 2
    w, b = _weights(im, node, x.rank)
    group = int(node.attr("group", 1))
    out = w.shape[1] * group
    kernel = list(w.shape[2:])
    stride = ints(im, node, "strides", r, 1)
    dilation = ints(im, node, "dilations", r, 1)
    extra = ints(im, node, "output_padding", r, 0)
    before, after = _transposed_crop(im, node, kernel, stride, dilation, extra)
    im.define(node, f"conv_transpose{r}d", Raw(x.var), out, kernel=per_axis(kernel),
              stride=unless(stride, 1), dilation=unless(dilation, 1),
              padding=pairs(before, after), output_padding=unless(extra, 0),
              groups=group if group != 1 else None, bias=None if b is not None else False,
              params=_params(w, b, out, im, node))  # fmt: skip


def _transposed_crop(
    im: Importer,
    node: OnnxNode,
    kernel: list[int],
    stride: list[int],
    dilation: list[int],
    extra: list[int],
) -> tuple[list[int], list[int]]:
    """ONNX ConvTranspose's pads (given, from ``output_shape`` or from ``auto_pad``) as
    (before, after) crops; ``extra`` (output_padding) grows where the total is negative."""
    r = len(kernel)
    auto = node.attr("auto_pad", "NOTSET")
    shape = node.attr("output_shape")
    if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise im.refuse(node, "expected NOTSET, SAME_UPPER, SAME_LOWER or VALID", "auto_pad")
    if shape is None and auto in ("NOTSET", "VALID"):
        return explicit_pads(im, node, r) if auto == "NOTSET" else ([0] * r, [0] * r)
    if shape is not None:
        n = (im.static_shape(node.inputs[0]) or ())[2:]
        if len(n) != r or any(d is None for d in n):
            raise im.refuse(
                node, "needs the input's spatial sizes fixed; this input's are dynamic",
                "output_shape",
            )  # fmt: skip
        wanted = list(shape)[-r:]
    before, after = [], []
    for i in range(r):
        full = stride[i] * ((n[i] if shape is not None else 1) - 1) + extra[i]  # type: ignore[operator]
        full += dilation[i] * (kernel[i] - 1) + 1
        # SAME without output_shape: the output is n * stride, so the crop is the same for any n.
        total = full - (wanted[i] if shape is not None else stride[i])
        if total < 0:
            extra[i] -= total
            total = 0
        head = total // 2 if auto == "SAME_UPPER" else total - total // 2  # ONNX's rule
        before.append(head)
        after.append(total - head)
    return before, after


def batch_norm(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    if node.attr("training_mode", 0):
        raise im.refuse(node, "training mode is not supported; export in eval mode",
                        "training_mode")  # fmt: skip
    if len([o for o in node.outputs if o]) > 1:
        raise im.refuse(node, "uses the training outputs (running mean and variance)")
    roles = ("weight", "bias", "running_mean", "running_var")
    params = {}
    for index, role in enumerate(roles, start=1):
        array = im.const(node, index, ("scale", "B", "input_mean", "input_var")[index - 1])
        if array is None or array.ndim != 1:
            raise im.refuse(node, f"input {index} must be a constant vector, one per channel")
        params[role] = array
    eps = float(node.attr("epsilon", 1e-5))
    eps_arg = None if np.float32(eps) == np.float32(1e-5) else eps
    im.define(node, "batch_norm", Raw(x.var), eps=eps_arg, params=params)


def max_pool(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    r = x.rank - 2
    if len(node.outputs) > 1 and node.outputs[1]:
        raise im.refuse(node, "its Indices output is not supported")
    kernel, stride = _window(im, node, r)
    im.define(node, f"max_pool{r}d", Raw(x.var), per_axis(kernel), stride=stride,
              padding=padding(im, node, r), ceil_mode=_ceil(node),
              dilation=unless(ints(im, node, "dilations", r, 1), 1))  # fmt: skip


def avg_pool(im: Importer, node: OnnxNode) -> None:
    x = im.tensor(node)
    r = x.rank - 2
    if any(d != 1 for d in ints(im, node, "dilations", r, 1)):
        raise im.refuse(node, "convdsl's average pool has no dilation", "dilations")
    kernel, stride = _window(im, node, r)
    include = True if node.attr("count_include_pad", 0) else None
    im.define(node, f"avg_pool{r}d", Raw(x.var), per_axis(kernel), stride=stride,
              padding=padding(im, node, r), ceil_mode=_ceil(node),
              include_pad=include)  # fmt: skip


def _window(im: Importer, node: OnnxNode, r: int) -> tuple[list[int], object]:
    kernel = node.attr("kernel_shape")
    if kernel is None or len(kernel) != r:
        raise im.refuse(node, f"expected {r} values, one per spatial axis", "kernel_shape")
    kernel = [int(k) for k in kernel]
    stride = ints(im, node, "strides", r, 1)
    return kernel, None if stride == kernel else per_axis(stride)  # convdsl's default: kernel


def _ceil(node: OnnxNode) -> bool | None:
    return True if node.attr("ceil_mode", 0) else None


def global_avg_pool(im: Importer, node: OnnxNode) -> None:
    im.define(node, "global_avg_pool", Raw(im.tensor(node).var))


def global_max_pool(im: Importer, node: OnnxNode) -> None:
    im.define(node, "global_max_pool", Raw(im.tensor(node).var))


CONVERTERS = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "BatchNormalization": batch_norm,
    "MaxPool": max_pool,
    "AveragePool": avg_pool,
    "GlobalAveragePool": global_avg_pool,
    "GlobalMaxPool": global_max_pool,
}
