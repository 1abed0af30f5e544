"""A typed convdsl graph as a PyTorch module, for benchmarking against PyTorch and ONNX Runtime.

``TorchNetwork(graph, params)`` walks the graph's nodes (fused kernels part by part) and maps
each op to ``torch.nn.functional`` with the network's own weights, so PyTorch (and ONNX Runtime,
through ``torch.onnx.export`` of this module) run the very network convdsl runs. Resolved
attributes are used as they are: asymmetric pads become an ``F.pad`` before the op, windows that
PyTorch cannot pad natively are padded by hand and the result cut to the graph's output shape.
It is an independent second implementation of every op, which makes it a check of the
interpreter too (tests/test_bench.py). Needs ``torch``; importing this module imports it.

>>> import numpy as np, convdsl, torch
>>> net = convdsl.compile_string('input x: f32[N, 2, 9]\\noutput y = conv1d(x, 3, kernel=2, '
...                              'padding=causal)', opt_level=0)
>>> module = TorchNetwork(net.graph, net.weights)
>>> x = np.ones((1, 2, 9), np.float32)
>>> bool(np.allclose(module(torch.from_numpy(x))[0].numpy(), net(x=x)["y"], atol=1e-6))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Graph, Node

Tensor = torch.Tensor
Weights = Mapping[str, Tensor]
Pads = tuple[tuple[int, int], ...]
OpFn = Callable[[Node, Sequence[Tensor], Weights, tuple[int, ...]], Tensor]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "hard_swish": F.hardswish,
    "selu": F.selu,
    "softplus": F.softplus,
    "mish": F.mish,
}


def torch_pads(pads: Pads) -> list[int]:
    """Per-axis ``(before, after)`` (first spatial axis first) in ``F.pad``'s last-axis-first
    order."""
    return [width for before, after in reversed(pads) for width in (before, after)]


def _symmetric(pads: Pads) -> bool:
    return all(before == after for before, after in pads)


def _cut(y: Tensor, starts: Sequence[int], sizes: Sequence[int]) -> Tensor:
    box = tuple(slice(s, s + n) for s, n in zip(starts, sizes, strict=True))
    return y[(slice(None), slice(None), *box)]


def _bias(node: Node, weights: Weights) -> Tensor | None:
    return weights[node.param("bias")] if node.attrs["bias"] else None


def _conv(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
    a = node.attrs
    x, pads = xs[0], a["pads"]
    if not _symmetric(pads):
        x, pads = F.pad(x, torch_pads(pads)), tuple((0, 0) for _ in pads)
    conv = _CONV[len(a["kernel"])]
    y = conv(
        x,
        weights[node.param("weight")],
        _bias(node, weights),
        stride=a["stride"],
        padding=tuple(before for before, _ in pads),
        dilation=a["dilation"],
        groups=a["groups"],
    )
    return ACTIVATIONS[a["activation"]](y)


def _conv_transpose(
    node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]
) -> Tensor:
    a = node.attrs
    conv = _CONV_T[len(a["kernel"])]
    weight, bias = weights[node.param("weight")], _bias(node, weights)
    common = dict(stride=a["stride"], groups=a["groups"], dilation=a["dilation"])
    if _symmetric(a["pads"]):
        padding = tuple(before for before, _ in a["pads"])
        y = conv(xs[0], weight, bias, padding=padding, output_padding=a["output_padding"], **common)
        return ACTIVATIONS[a["activation"]](y)
    # The full output, extended by output_padding (where only the bias lands), then cut.
    y = conv(xs[0], weight, None, **common)
    if any(a["output_padding"]):
        y = F.pad(y, torch_pads(tuple((0, op) for op in a["output_padding"])))
    y = _cut(y, [before for before, _ in a["pads"]], out[2:])
    if bias is not None:
        y = y + bias.reshape(-1, *(1,) * (y.dim() - 2))
    return ACTIVATIONS[a["activation"]](y)


def _natively_padded(node: Node) -> bool:
    """PyTorch pools pad symmetrically, by at most half the window."""
    a = node.attrs
    return _symmetric(a["pads"]) and all(
        before <= k // 2 for (before, _), k in zip(a["pads"], a["kernel"], strict=True)
    )


def _window_padding(node: Node, x: Tensor, out: tuple[int, ...]) -> list[int]:
    """F.pad widths covering the explicit pads plus any ceil-mode overhang of the last window."""
    a = node.attrs
    dilation = a.get("dilation", (1,) * len(a["kernel"]))
    widths = []
    for n, o, k, s, d, (before, after) in zip(
        x.shape[2:], out[2:], a["kernel"], a["stride"], dilation, a["pads"], strict=True
    ):
        needed = (o - 1) * s + d * (k - 1) + 1
        widths.append((before, max(after, needed - n - before)))
    return torch_pads(tuple(widths))


def _max_pool(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
    a = node.attrs
    pool = _MAX_POOL[len(a["kernel"])]
    if _natively_padded(node):
        padding = tuple(before for before, _ in a["pads"])
        return pool(xs[0], a["kernel"], a["stride"], padding, a["dilation"], a["ceil_mode"])
    x = F.pad(xs[0], _window_padding(node, xs[0], out), value=-math.inf)
    return _cut(pool(x, a["kernel"], a["stride"], 0, a["dilation"]), [0] * len(out[2:]), out[2:])


def _avg_pool(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
    a = node.attrs
    pool = _AVG_POOL[len(a["kernel"])]
    if _natively_padded(node):
        padding = tuple(before for before, _ in a["pads"])
        return pool(xs[0], a["kernel"], a["stride"], padding, a["ceil_mode"], a["include_pad"])
    # Window sums over a zero-padded input divided by window counts over a 0/1 mask of the
    # cells that count: the input, plus the explicit pads when include_pad.
    widths = _window_padding(node, xs[0], out)
    mask = torch.ones((1, 1, *xs[0].shape[2:]), dtype=xs[0].dtype)
    mask_widths = widths
    if a["include_pad"]:
        explicit = torch_pads(a["pads"])
        mask = F.pad(mask, explicit, value=1.0)
        mask_widths = [w - e for w, e in zip(widths, explicit, strict=True)]
    sums = pool(F.pad(xs[0], widths), a["kernel"], a["stride"])
    counts = pool(F.pad(mask, mask_widths), a["kernel"], a["stride"])
    return _cut(sums / counts, [0] * len(out[2:]), out[2:])


def _upscale(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
    a = node.attrs
    x = xs[0]
    factors = a["factors"]
    key = (a["mode"], a["coordinate"], a.get("nearest"))
    integral = all(f.denominator == 1 for f in factors)
    if key == ("nearest", "asymmetric", "floor") and integral:
        # out[i] = in[i // f] exactly, as a broadcast (interpolate's float scale can round).
        n, c, *sizes = x.shape
        split = [d for size in sizes for d in (size, 1)]
        stretched = [d for size, f in zip(sizes, factors, strict=True) for d in (size, int(f))]
        return x.reshape(n, c, *split).expand(n, c, *stretched).reshape(out)
    rank = len(factors)
    modes = {
        ("nearest", "asymmetric", "floor"): "nearest",
        ("nearest", "half_pixel", "round_prefer_ceil"): "nearest-exact",
        ("linear", "half_pixel", None): _LINEAR[rank],
        ("linear", "align_corners", None): _LINEAR[rank],
    }
    if rank == 2 and a.get("cubic_coeff") == -0.75 and not a.get("exclude_outside"):
        modes[("cubic", "half_pixel", None)] = modes[("cubic", "align_corners", None)] = "bicubic"
    if key not in modes:
        raise InternalError(f"the PyTorch converter has no mapping for upscale {dict(a)}")
    aligned = None if a["mode"] == "nearest" else a["coordinate"] == "align_corners"
    if all(f == Fraction(o, n) for f, o, n in zip(factors, out[2:], x.shape[2:], strict=True)):
        return F.interpolate(x, size=out[2:], mode=modes[key], align_corners=aligned)
    scales = [float(f) for f in factors]
    return F.interpolate(
        x, scale_factor=scales, mode=modes[key], align_corners=aligned, recompute_scale_factor=False
    )


def _dense(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
    y = F.linear(xs[0], weights[node.param("weight")], _bias(node, weights))
    return ACTIVATIONS[node.attrs["activation"]](y)


def _pixel_shuffle(
    node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]
) -> Tensor:
    r = node.attrs["factor"]
    if node.attrs["order"] == "crd":
        return F.pixel_shuffle(xs[0], r)
    n, channels, h, w = xs[0].shape
    c = channels // (r * r)
    return xs[0].reshape(n, r, r, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(out)


def _space_to_depth(
    node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]
) -> Tensor:
    r = node.attrs["factor"]
    if node.attrs["order"] == "crd":
        return F.pixel_unshuffle(xs[0], r)
    n, c, height, width = xs[0].shape
    blocks = xs[0].reshape(n, c, height // r, r, width // r, r)
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(out)


def _slice(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
    a = node.attrs
    picked = torch.arange(a["size"], device=xs[0].device) * a["step"] + a["start"]
    return xs[0].index_select(a["axis"], picked)


def _pad(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
    a = node.attrs
    widths = torch_pads(a["pads"])
    if a["mode"] == "zero":
        return F.pad(xs[0], widths, value=a["value"])
    return F.pad(xs[0], widths, mode={"reflect": "reflect", "replicate": "replicate"}[a["mode"]])


def _batch_norm(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
    weight, bias, mean, var = (
        weights[node.param(r)] for r in ("weight", "bias", "running_mean", "running_var")
    )
    return F.batch_norm(xs[0], mean, var, weight, bias, training=False, eps=node.attrs["eps"])


def _unary(fn: Callable[..., Tensor], *attr_names: str) -> OpFn:
    def run(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
        return fn(xs[0], *(node.attrs[name] for name in attr_names))

    return run


def _binary(fn: Callable[[Any, Any], Tensor]) -> OpFn:
    """An operand that is a number is the attribute of its argument (``y=0.5``)."""

    def run(node: Node, xs: Sequence[Tensor], weights: Weights, out: tuple[int, ...]) -> Tensor:
        tensors = iter(xs)
        x, y = (node.attrs[arg] if arg in node.attrs else next(tensors) for arg in ("x", "y"))
        return fn(x, y)

    return run


def _spatial(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


OP_FUNCTIONS: dict[str, OpFn] = {
    **{f"conv{r}d": _conv for r in (1, 2, 3)},
    **{f"depthwise{r}d": _conv for r in (1, 2, 3)},
    **{f"conv_transpose{r}d": _conv_transpose for r in (1, 2, 3)},
    **{f"max_pool{r}d": _max_pool for r in (1, 2, 3)},
    **{f"avg_pool{r}d": _avg_pool for r in (1, 2, 3)},
    "add": _binary(lambda x, y: x + y),
    "sub": _binary(lambda x, y: x - y),
    "mul": _binary(lambda x, y: x * y),
    "div": _binary(lambda x, y: x / y),
    "relu": _unary(F.relu),
    "relu6": _unary(F.relu6),
    "leaky_relu": _unary(F.leaky_relu, "alpha"),
    "elu": _unary(F.elu, "alpha"),
    "sigmoid": _unary(torch.sigmoid),
    "tanh": _unary(torch.tanh),
    "gelu": lambda node, xs, weights, out: F.gelu(xs[0], approximate=node.attrs["approximate"]),
    "silu": _unary(F.silu),
    "hard_sigmoid": _unary(F.hardsigmoid),
    "hard_swish": _unary(F.hardswish),
    "clip": _unary(torch.clamp, "min", "max"),
    "selu": _unary(F.selu),
    "softplus": _unary(F.softplus, "beta", "threshold"),
    "mish": _unary(F.mish),
    "prelu": lambda node, xs, weights, out: F.prelu(xs[0], weights[node.param("weight")]),
    "softmax": lambda node, xs, weights, out: torch.softmax(xs[0], dim=1),
    "batch_norm": _batch_norm,
    "global_avg_pool": lambda node, xs, w, out: xs[0].mean(dim=_spatial(xs[0]), keepdim=True),
    "global_max_pool": lambda node, xs, w, out: xs[0].amax(dim=_spatial(xs[0]), keepdim=True),
    "concat": lambda node, xs, weights, out: torch.cat(list(xs), dim=node.attrs["axis"]),
    "slice": _slice,
    "split": _slice,
    "space_to_depth": _space_to_depth,
    "flatten": lambda node, xs, weights, out: torch.flatten(xs[0], 1),
    "dense": _dense,
    "upscale": _upscale,
    "pixel_shuffle": _pixel_shuffle,
    "pad": _pad,
    "crop": lambda node, xs, w, out: _cut(xs[0], node.attrs["starts"], node.attrs["sizes"]),
}


class TorchNetwork(torch.nn.Module):
    """``forward(*inputs)`` in ``graph.inputs`` order returns the outputs in ``graph.outputs``
    order. ``params`` holds every parameter a node reads (``materialize`` for derived ones)."""

    def __init__(self, graph: Graph, params: Mapping[str, np.ndarray]) -> None:
        super().__init__()
        self.graph = graph
        missing = sorted({p.op for n in graph.nodes for p in _parts(n)} - OP_FUNCTIONS.keys())
        if missing:
            raise InternalError(f"the PyTorch converter has no mapping for {missing}")
        self.weights = {
            name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            for name, array in params.items()
        }

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        env: dict[int, Tensor] = dict(zip(self.graph.inputs, inputs, strict=True))
        for node in self.graph.nodes:
            for part in _parts(node):
                batch = env[part.inputs[0]].shape[0] if part.inputs else 1
                shape = tuple(
                    d if isinstance(d, int) else batch
                    for d in self.graph.type_of(part.output).shape
                )
                args = [env[v] for v in part.inputs]
                env[part.output] = OP_FUNCTIONS[part.op](part, args, self.weights, shape)
        return tuple(env[v] for _, v in self.graph.outputs)


def _parts(node: Node) -> tuple[Node, ...]:
    return node.parts if node.is_fused else (node,)
