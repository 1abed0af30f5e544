"""Shape rules: from an op's attributes and input types to its output types, resolved
attributes, parameters and cost.

Each rule is a function ``(attrs, input_types) -> Inferred`` that raises ``ShapeError`` naming
the argument at fault; the shape pass turns that into a diagnostic at the argument's span.
Resolved attributes are explicit and per axis (``pads``, ``stride``...), so backends never see
``same`` or a scalar standing for every axis. All window arithmetic is in ``geometry``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from convdsl.ir import geometry, limits
from convdsl.ir.graph import Attrs
from convdsl.ir.symbolic import maximum
from convdsl.ir.types import TensorType, format_shape


class ShapeError(Exception):
    """A user error found by a shape rule; ``arg`` names the argument it is about (or None)."""

    def __init__(self, message: str, arg: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.arg = arg
        self.hint = hint


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """A parameter a node owns: ``role`` (``weight``, ``bias``...), shape, and initializer."""

    role: str
    shape: tuple[int, ...]
    init: str  # "he", "bias", "zeros", "ones", "prelu" (0.25)
    fan_in: int = 1


@dataclass(frozen=True, slots=True)
class Inferred:
    outputs: tuple[TensorType, ...]
    attrs: Attrs
    params: tuple[ParamSpec, ...] = ()
    keep_inputs: int | None = None  # drop inputs past this count (read for their shape only)


Rule = Callable[[Attrs, Sequence[TensorType]], Inferred]


def check_limits(inferred: Inferred, inputs: Sequence[TensorType]) -> None:
    """Every array the layer reads, writes or builds within ``limits`` (after its rule)."""
    params = [(spec.role, spec.shape) for spec in inferred.params]
    _bounded(limits.layer_problem(inferred.attrs, inputs, inferred.outputs, params), None)


# ---- helpers ---------------------------------------------------------------------------


def _bounded(problem: str | None, arg: str | None) -> None:
    """Raise a limit's ``problem`` (see ``convdsl.ir.limits``) at ``arg``."""
    if problem is not None:
        raise ShapeError(problem, arg=arg, hint=limits.HINT)


def _windows_bounded(kernel: tuple[int, ...], dilation: tuple[int, ...]) -> None:
    for k, d in zip(kernel, dilation, strict=True):
        _bounded(limits.effective_kernel_problem(k, d), "dilation")


def _expect_rank(x: TensorType, rank: int, what: str) -> None:
    if x.rank != rank:
        fits = what.replace(f"{rank - 2}d", f"{x.rank - 2}d") if 3 <= x.rank <= 5 else None
        raise ShapeError(
            f"expected a {rank - 2}-D input [N, C, {', '.join(_axes(rank - 2))}] "
            f"(rank {rank}), found {format_shape(x.shape)} (rank {x.rank})",
            arg="x",
            hint=f"{fits} takes a {x.rank - 2}-D input" if fits and fits != what else _features(x),
        )


def _features(x: TensorType) -> str | None:
    """The hint for a rank-2 value (features) given to an op on feature maps."""
    return FEATURES_HINT if x.rank == 2 else None


FEATURES_HINT = (
    "[N, F] holds features (as flatten and dense make them): dense, softmax, batch_norm, "
    "concat and the elementwise ops take it"
)


def _axes(spatial_rank: int) -> tuple[str, ...]:
    return {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}.get(spatial_rank, ())


def _expect_spatial(x: TensorType, what: str) -> None:
    if x.rank < 3 or x.rank > 5:
        raise ShapeError(
            f"expected a tensor with 1 to 3 spatial dims [N, C, ...], found "
            f"{format_shape(x.shape)}",
            arg="x",
            hint=_features(x),
        )


def per_axis(value: Any, rank: int, arg: str, minimum: int = 0) -> tuple[int, ...]:
    """An int meaning every axis, or one int per spatial axis; each at least ``minimum``."""
    values = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(values) != rank:
        raise ShapeError(
            f"{arg}: expected one integer or {rank} (one per spatial axis), found {len(values)}",
            arg=arg,
        )
    for v in values:
        if v < minimum:
            raise ShapeError(f"{arg}: expected values >= {minimum}, found {v}", arg=arg)
        _bounded(limits.size_problem(arg, v), arg)
    return values


def resolve_pads(
    padding: Any,
    x: TensorType,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
) -> geometry.Pads:
    """``valid``, ``same``, ``same_lower``, ``causal``, an int, per-axis ints or per-side pairs
    -> (before, after) per axis."""
    rank = x.spatial_rank
    if padding == "valid":
        return ((0, 0),) * rank
    if padding in ("same", "same_lower"):
        rule = geometry.same_padding if padding == "same" else geometry.same_lower_padding
        return tuple(
            rule(n, k, s, d) for n, k, s, d in zip(x.spatial, kernel, stride, dilation, strict=True)
        )
    if padding == "causal":
        if rank != 1:
            raise ShapeError("padding=causal is only defined for 1-D (sequence) ops", arg="padding")
        return (geometry.causal_padding(kernel[0], dilation[0]),)
    return explicit_pads(padding, rank)


def explicit_pads(padding: Any, rank: int, arg: str = "padding") -> geometry.Pads:
    if isinstance(padding, int):
        pairs: tuple[tuple[int, int], ...] = ((padding, padding),) * rank
    elif all(isinstance(p, int) for p in padding):
        if len(padding) != rank:
            raise ShapeError(
                f"{arg}: expected {rank} values (one per spatial axis), found {len(padding)}",
                arg=arg,
            )
        pairs = tuple((p, p) for p in padding)
    else:
        if len(padding) != rank or any(isinstance(p, int) or len(p) != 2 for p in padding):
            raise ShapeError(
                f"{arg}: expected {rank} [before, after] pairs, one per spatial axis",
                arg=arg,
            )
        pairs = tuple((int(p[0]), int(p[1])) for p in padding)
    if any(v < 0 for pair in pairs for v in pair):
        raise ShapeError(f"{arg}: expected values >= 0", arg=arg)
    for v in (v for pair in pairs for v in pair):
        _bounded(limits.size_problem(arg, v), arg)
    return pairs


def _window_out(
    x: TensorType,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    pads: geometry.Pads,
    what: str,
) -> tuple[int, ...]:
    sizes = []
    for axis, (n, k, s, d, (b, a)) in enumerate(
        zip(x.spatial, kernel, stride, dilation, pads, strict=True)
    ):
        out = geometry.conv_output_size(n, k, s, d, b, a)
        if out < 1:
            ek = geometry.effective_kernel(k, d)
            dil = f" (effective {ek} with dilation {d})" if d > 1 else ""
            raise ShapeError(
                f"kernel {k}{dil} is larger than the padded input on axis "
                f"{x.axis_name(axis)}: {n} + padding {b}+{a} = {n + b + a}",
                # With a kernel that fits undilated, the dilation is what went too far.
                arg="dilation" if d > 1 and k <= n + b + a else "kernel",
                hint="use padding=same, a smaller kernel, or a larger input"
                if d == 1
                else "use padding=same, a smaller dilation, or a larger input",
            )
        sizes.append(out)
    return tuple(sizes)


# ---- convolutions ----------------------------------------------------------------------


def _conv_core(
    attrs: Attrs, x: TensorType, rank: int, name: str, out_channels: int, groups: int
) -> Inferred:
    _expect_rank(x, rank + 2, name)
    kernel = per_axis(attrs["kernel"], rank, "kernel", 1)
    stride = per_axis(attrs["stride"], rank, "stride", 1)
    dilation = per_axis(attrs["dilation"], rank, "dilation", 1)
    _windows_bounded(kernel, dilation)
    channels = x.channels
    if groups < 1:
        raise ShapeError(f"groups: expected a positive integer, found {groups}", arg="groups")
    if out_channels < 1:
        raise ShapeError(
            f"out_channels: expected a positive integer, found {out_channels}", arg="out_channels"
        )
    _bounded(limits.size_problem("groups", groups), "groups")
    _bounded(limits.size_problem("out_channels", out_channels), "out_channels")
    _check_groups(channels, out_channels, groups)
    pads = resolve_pads(attrs["padding"], x, kernel, stride, dilation)
    spatial = _window_out(x, kernel, stride, dilation, pads, name)
    fan_in = channels // groups * math.prod(kernel)
    params = [ParamSpec("weight", (out_channels, channels // groups, *kernel), "he", fan_in)]
    if attrs["bias"]:
        params.append(ParamSpec("bias", (out_channels,), "bias", fan_in))
    resolved = Attrs(
        out_channels=out_channels,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        pads=pads,
        groups=groups,
        bias=attrs["bias"],
        activation=attrs["activation"],
    )
    out = x.with_shape((x.batch, out_channels, *spatial))
    return Inferred((out,), resolved, tuple(params))


def _check_groups(channels: int, out_channels: int, groups: int) -> None:
    if channels % groups:
        raise ShapeError(
            f"input channels {channels} are not divisible by groups={groups}",
            arg="groups",
            hint="groups splits the channels into equal parts",
        )
    if out_channels % groups:
        raise ShapeError(
            f"out_channels {out_channels} is not divisible by groups={groups}",
            arg="groups",
            hint="groups splits the channels into equal parts",
        )


def conv(rank: int) -> Rule:
    def rule(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
        return _conv_core(
            attrs, inputs[0], rank, f"conv{rank}d", attrs["out_channels"], attrs["groups"]
        )

    return rule


def depthwise(rank: int) -> Rule:
    def rule(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
        x = inputs[0]
        _expect_rank(x, rank + 2, f"depthwise{rank}d")
        if attrs["multiplier"] < 1:
            raise ShapeError(
                f"multiplier: expected a positive integer, found {attrs['multiplier']}",
                arg="multiplier",
            )
        _bounded(limits.size_problem("multiplier", attrs["multiplier"]), "multiplier")
        wide = x.with_shape((x.batch, x.channels * attrs["multiplier"], *x.spatial))
        _bounded(limits.dims_problem(wide), "multiplier")
        return _conv_core(
            attrs, x, rank, f"depthwise{rank}d", x.channels * attrs["multiplier"], x.channels
        )

    return rule


def conv_transpose(rank: int) -> Rule:
    def rule(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
        name = f"conv_transpose{rank}d"
        x = inputs[0]
        _expect_rank(x, rank + 2, name)
        kernel = per_axis(attrs["kernel"], rank, "kernel", 1)
        stride = per_axis(attrs["stride"], rank, "stride", 1)
        dilation = per_axis(attrs["dilation"], rank, "dilation", 1)
        output_padding = (
            None
            if attrs["output_padding"] is None
            else per_axis(attrs["output_padding"], rank, "output_padding", 0)
        )
        _windows_bounded(kernel, dilation)
        groups, out_channels, channels = attrs["groups"], attrs["out_channels"], x.channels
        if groups < 1:
            raise ShapeError(f"groups: expected a positive integer, found {groups}", arg="groups")
        if out_channels < 1:
            raise ShapeError(
                f"out_channels: expected a positive integer, found {out_channels}",
                arg="out_channels",
            )
        _bounded(limits.size_problem("groups", groups), "groups")
        _bounded(limits.size_problem("out_channels", out_channels), "out_channels")
        _check_groups(channels, out_channels, groups)
        if attrs["padding"] == "same":
            pads, output_padding = _transpose_same(x, kernel, stride, dilation, output_padding)
        else:
            if attrs["padding"] in ("causal", "same_lower"):
                raise ShapeError(
                    f"padding={attrs['padding']} is not defined for transposed convolutions",
                    arg="padding",
                    hint="padding=same is Keras' Conv2DTranspose; explicit [before, after] "
                    "pairs crop the output unevenly"
                    if attrs["padding"] == "same_lower"
                    else None,
                )
            output_padding = output_padding or (0,) * rank
            pads = explicit_pads(0 if attrs["padding"] == "valid" else attrs["padding"], rank)
            for op, s, d in zip(output_padding, stride, dilation, strict=True):
                if op >= max(s, d):
                    raise ShapeError(
                        f"output_padding {op} must be smaller than max(stride, dilation) = "
                        f"{max(s, d)}",
                        arg="output_padding",
                    )
        spatial = []
        for axis, (n, k, s, d, (b, a), op) in enumerate(
            zip(x.spatial, kernel, stride, dilation, pads, output_padding, strict=True)
        ):
            size = geometry.conv_transpose_output_size(n, k, s, d, b, a, op)
            if size < 1:
                full = geometry.conv_transpose_full_size(n, k, s, d)
                raise ShapeError(
                    f"padding {b}+{a} crops away the whole output on axis "
                    f"{x.axis_name(axis)} (full size {full})",
                    arg="padding",
                )
            _bounded(
                limits.size_problem(f"output size on axis {x.axis_name(axis)}", size),
                "stride" if s > 1 else "dilation" if d > 1 else "kernel",
            )
            spatial.append(size)
        fan_in = max(channels // groups * math.prod(kernel) // math.prod(stride), 1)
        params = [ParamSpec("weight", (channels, out_channels // groups, *kernel), "he", fan_in)]
        if attrs["bias"]:
            params.append(ParamSpec("bias", (out_channels,), "bias", fan_in))
        resolved = Attrs(
            out_channels=out_channels,
            kernel=kernel,
            stride=stride,
            dilation=dilation,
            pads=pads,
            output_padding=output_padding,
            groups=groups,
            bias=attrs["bias"],
            activation=attrs["activation"],
        )
        out = x.with_shape((x.batch, out_channels, *spatial))
        return Inferred((out,), resolved, tuple(params))

    return rule


def _transpose_same(
    x: TensorType,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    output_padding: tuple[int, ...] | None,
) -> tuple[geometry.Pads, tuple[int, ...]]:
    """Keras ``padding="same"``: without ``output_padding`` the output is ``n * s``; with it,
    ``deconv_output_length`` (``geometry.transpose_same_output_padding``). Returns the crop pairs
    and the extension past the full result."""
    if output_padding is None:
        resolved = [
            geometry.transpose_same_padding(n, k, s, d)
            for n, k, s, d in zip(x.spatial, kernel, stride, dilation, strict=True)
        ]
    else:
        for op, s in zip(output_padding, stride, strict=True):
            if op >= s:
                raise ShapeError(
                    f"output_padding {op} must be smaller than the stride {s} with padding=same "
                    "(as in Keras)",
                    arg="output_padding",
                )
        resolved = [
            geometry.transpose_same_output_padding(n, k, s, d, op)
            for n, k, s, d, op in zip(
                x.spatial, kernel, stride, dilation, output_padding, strict=True
            )
        ]
    return tuple((b, a) for b, a, _ in resolved), tuple(e for _, _, e in resolved)


# ---- pooling ---------------------------------------------------------------------------


def pool(rank: int, kind: str) -> Rule:
    def rule(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
        name = f"{kind}_pool{rank}d"
        x = inputs[0]
        _expect_rank(x, rank + 2, name)
        kernel = per_axis(attrs["kernel"], rank, "kernel", 1)
        stride = kernel if attrs["stride"] is None else per_axis(attrs["stride"], rank, "stride", 1)
        dilation = per_axis(attrs.get("dilation", 1), rank, "dilation", 1)
        _windows_bounded(kernel, dilation)
        pads = resolve_pads(attrs["padding"], x, kernel, stride, dilation)
        for (b, a), k, d in zip(pads, kernel, dilation, strict=True):
            if maximum(b, a) >= geometry.effective_kernel(k, d):
                raise ShapeError(
                    f"padding {maximum(b, a)} is as large as the window ({k}): a window could see "
                    "only padding",
                    arg="padding",
                )
        spatial = tuple(
            geometry.pool_output_size(n, k, s, d, b, a, attrs["ceil_mode"])
            for n, k, s, d, (b, a) in zip(x.spatial, kernel, stride, dilation, pads, strict=True)
        )
        # ceil_mode lets a window overhang the end (as in PyTorch), so only an empty output is
        # an error; _window_out then names the axis (its floor-mode size is < 1 too).
        if any(size < 1 for size in spatial):
            _window_out(x, kernel, stride, dilation, pads, name)
        resolved = dict(kernel=kernel, stride=stride, pads=pads, ceil_mode=attrs["ceil_mode"])
        if kind == "max":
            resolved["dilation"] = dilation
        else:
            resolved["include_pad"] = attrs["include_pad"]
        return Inferred((x.with_shape((x.batch, x.channels, *spatial)),), Attrs(resolved))

    return rule


def global_pool(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    _expect_spatial(x, "global pooling")
    return Inferred((x.with_shape((x.batch, x.channels) + (1,) * x.spatial_rank),), attrs)


# ---- elementwise -----------------------------------------------------------------------


def unary(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    if x.rank < 2:
        raise ShapeError(f"expected a tensor [N, C, ...], found {format_shape(x.shape)}", arg="x")
    return Inferred((x,), attrs)


def fixed_channels(x: TensorType) -> int:
    """``x``'s channels, which size a parameter: a fixed number, not the features of a map of
    symbolic size flattened."""
    if not isinstance(x.channels, int):
        raise ShapeError(
            f"needs a fixed number of channels; found {x.channels}",
            arg="x",
            hint="give the input fixed sizes or put a global pool before flatten",
        )
    return x.channels


def batch_norm(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    if x.rank < 2:
        raise ShapeError(f"expected a tensor [N, C, ...], found {format_shape(x.shape)}", arg="x")
    fixed_channels(x)
    if attrs["eps"] <= 0:
        raise ShapeError(f"eps: expected a positive number, found {attrs['eps']}", arg="eps")
    c = (x.channels,)
    params = (
        ParamSpec("weight", c, "ones"),
        ParamSpec("bias", c, "zeros"),
        ParamSpec("running_mean", c, "zeros"),
        ParamSpec("running_var", c, "ones"),
    )
    return Inferred((x,), attrs, params)


# ---- data movement ---------------------------------------------------------------------


def pixel_shuffle(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    r = attrs["factor"]
    _expect_rank(x, 4, "pixel_shuffle")
    if r < 1:
        raise ShapeError(f"factor: expected a positive integer, found {r}", arg="factor")
    _bounded(limits.size_problem("factor", r), "factor")
    if x.channels % (r * r):
        raise ShapeError(
            f"factor {r} needs channels divisible by {r}*{r} = {r * r}, found {x.channels} "
            "channels",
            arg="factor",
        )
    h, w = x.spatial
    out = x.with_shape((x.batch, x.channels // (r * r), h * r, w * r))
    _bounded(limits.dims_problem(out), "factor")
    return Inferred((out,), attrs)


def pad(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    _expect_spatial(x, "pad")
    if isinstance(attrs["pads"], str):
        raise ShapeError("pads: expected explicit sizes, found a keyword", arg="pads")
    pads = explicit_pads(attrs["pads"], x.spatial_rank, arg="pads")
    if attrs["mode"] == "reflect":
        for axis, (n, (b, a)) in enumerate(zip(x.spatial, pads, strict=True)):
            if max(b, a) >= n:
                raise ShapeError(
                    f"reflect padding {max(b, a)} must be smaller than the input size {n} on "
                    f"axis {x.axis_name(axis)}",
                    arg="pads",
                )
    spatial = tuple(n + b + a for n, (b, a) in zip(x.spatial, pads, strict=True))
    out = x.with_shape((x.batch, x.channels, *spatial))
    _bounded(limits.dims_problem(out), "pads")
    resolved = Attrs(pads=pads, mode=attrs["mode"], value=float(attrs["value"]))
    return Inferred((out,), resolved)


def crop(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    _expect_spatial(x, "crop")
    rank = x.spatial_rank
    if len(inputs) > 1 and attrs["size"] is not None:
        raise ShapeError("give like=TENSOR or size=[...], not both", arg="like")
    if len(inputs) == 1 and attrs["size"] is None:
        raise ShapeError("needs like=TENSOR or size=[...] to know the output size")
    if len(inputs) > 1:
        like = inputs[1]
        if like.rank != x.rank:
            raise ShapeError(
                f"like: expected a tensor with {rank} spatial dims, "
                f"found {format_shape(like.shape)}",
                arg="like",
            )
        sizes = like.spatial
    else:
        sizes = per_axis(attrs["size"], rank, "size", 1)
    if attrs["offset"] == "center":
        starts = tuple((n - s) // 2 for n, s in zip(x.spatial, sizes, strict=True))
    else:
        starts = per_axis(attrs["offset"], rank, "offset", 0)
    for axis, (n, s, o) in enumerate(zip(x.spatial, sizes, starts, strict=True)):
        if s > n:
            raise ShapeError(
                f"cannot crop {s} from {n} on axis {x.axis_name(axis)}: the input "
                f"{format_shape(x.shape)} is smaller than the crop",
                arg="like" if len(inputs) > 1 else "size",
                hint="crop only shrinks; pad(...) or upscale(...) grows a tensor",
            )
        if o + s > n:
            raise ShapeError(
                f"a crop of {s} at offset {o} needs {o + s} on axis {x.axis_name(axis)}, but the "
                f"input {format_shape(x.shape)} has {n}",
                arg="offset",
            )
    out = x.with_shape((x.batch, x.channels, *sizes))
    return Inferred((out,), Attrs(starts=starts, sizes=sizes), keep_inputs=1)
