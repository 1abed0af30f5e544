"""The op table: every op of the language declared once.

A row (``OpDef``) gives the op's name, its arguments (kinds, defaults, allowed keywords), its shape
rule (``convdsl.ir.shape_rules``), its fusion class and a one-line description. The front end
binds calls against ``args``; the shape pass calls ``infer``; each backend keeps one function per
op name and a test checks that every row has one in every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from convdsl.ir import axis_rules, dense_rules, resample, resample_rules
from convdsl.ir import elementwise_rules as ew_rules
from convdsl.ir import shape_rules as rules


class ArgKind(Enum):
    TENSOR = "a tensor"
    TENSORS = "tensors"  # variadic positional tensors (concat)
    OPERAND = "a tensor or a number"  # a number is kept as the attribute of the argument
    SHAPE_OF = "a tensor (used for its shape)"
    INT = "an integer"
    FLOAT = "a number"
    BOOL = "true or false"
    ENUM = "one of"
    INTS = "an integer or a list of integers (one per axis)"
    NUMBERS = "a number or a list of numbers (one per axis)"
    PADDING = (
        "valid, same, same_lower, causal, an integer, a list per axis, or a list of "
        "[before, after] pairs"
    )
    OFFSET = "an integer, a list per axis, or center"


REQUIRED: Any = object()
"""Default of an argument the user must give."""


@dataclass(frozen=True, slots=True)
class ArgSpec:
    name: str
    kind: ArgKind
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    positional: bool = True

    @property
    def is_tensor(self) -> bool:
        return self.kind in (ArgKind.TENSOR, ArgKind.TENSORS, ArgKind.SHAPE_OF, ArgKind.OPERAND)


class FusionClass(Enum):
    """How the optimizer may combine an op with its neighbours."""

    CONV = "conv"  # a reduction window with an epilogue: bias, activation, skip-add
    ELEMENTWISE = "elementwise"
    POOL = "pool"
    RESAMPLE = "resample"  # upscale: an index map plus interpolation
    INDEX_MAP = "index_map"  # crop, pixel shuffle, pad: pure data movement
    CONCAT = "concat"
    REDUCE = "reduce"  # softmax, global pools


@dataclass(frozen=True, slots=True)
class OpDef:
    name: str
    args: tuple[ArgSpec, ...]
    infer: Callable[..., rules.Inferred]
    fusion: FusionClass
    doc: str

    def arg(self, name: str) -> ArgSpec | None:
        return next((a for a in self.args if a.name == name), None)


# ---- argument lists shared by families ----------------------------------------------------

ACTIVATIONS = (
    "none",
    "relu",
    "relu6",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "hard_swish",
    "selu",
    "softplus",
    "mish",
)
"""Activations a conv can apply in its epilogue (``activation=relu``)."""

_X = ArgSpec("x", ArgKind.TENSOR)
_ACT = ArgSpec("activation", ArgKind.ENUM, "none", ACTIVATIONS, positional=False)
_BIAS = ArgSpec("bias", ArgKind.BOOL, True, positional=False)


def _kw(name: str, kind: ArgKind, default: Any, choices: tuple[str, ...] = ()) -> ArgSpec:
    return ArgSpec(name, kind, default, choices, positional=False)


def _conv_args() -> tuple[ArgSpec, ...]:
    return (
        _X,
        ArgSpec("out_channels", ArgKind.INT),
        ArgSpec("kernel", ArgKind.INTS),
        _kw("stride", ArgKind.INTS, 1),
        _kw("dilation", ArgKind.INTS, 1),
        _kw("padding", ArgKind.PADDING, "valid"),
        _kw("groups", ArgKind.INT, 1),
        _BIAS,
        _ACT,
    )


def _depthwise_args() -> tuple[ArgSpec, ...]:
    return (
        _X,
        ArgSpec("kernel", ArgKind.INTS),
        _kw("multiplier", ArgKind.INT, 1),
        _kw("stride", ArgKind.INTS, 1),
        _kw("dilation", ArgKind.INTS, 1),
        _kw("padding", ArgKind.PADDING, "valid"),
        _BIAS,
        _ACT,
    )


def _transpose_args() -> tuple[ArgSpec, ...]:
    return (
        _X,
        ArgSpec("out_channels", ArgKind.INT),
        ArgSpec("kernel", ArgKind.INTS),
        _kw("stride", ArgKind.INTS, 1),
        _kw("dilation", ArgKind.INTS, 1),
        _kw("padding", ArgKind.PADDING, "valid"),
        _kw("output_padding", ArgKind.INTS, None),
        _kw("groups", ArgKind.INT, 1),
        _BIAS,
        _ACT,
    )


def _pool_args(with_dilation: bool, with_include_pad: bool) -> tuple[ArgSpec, ...]:
    args = [
        _X,
        ArgSpec("kernel", ArgKind.INTS),
        _kw("stride", ArgKind.INTS, None),
        _kw("padding", ArgKind.PADDING, "valid"),
        _kw("ceil_mode", ArgKind.BOOL, False),
    ]
    if with_dilation:
        args.append(_kw("dilation", ArgKind.INTS, 1))
    if with_include_pad:
        args.append(_kw("include_pad", ArgKind.BOOL, False))
    return tuple(args)


def _unary(name: str, doc: str, *extra: ArgSpec) -> OpDef:
    return OpDef(name, (_X, *extra), rules.unary, FusionClass.ELEMENTWISE, doc)


def _binary(name: str, what: str, written: str) -> OpDef:
    operands = (ArgSpec("x", ArgKind.OPERAND), ArgSpec("y", ArgKind.OPERAND))
    return OpDef(
        name,
        operands,
        ew_rules.binary(divides=name == "div"),
        FusionClass.ELEMENTWISE,
        f"elementwise {what} of two tensors broadcast together, or of a tensor and a number "
        f"(also written {written})",
    )


def _table() -> dict[str, OpDef]:
    ops: list[OpDef] = []
    for rank in (1, 2, 3):
        ops += [
            OpDef(
                f"conv{rank}d",
                _conv_args(),
                rules.conv(rank),
                FusionClass.CONV,
                f"{rank}-D convolution (cross-correlation); weight [O, C/groups, *K]",
            ),
            OpDef(
                f"depthwise{rank}d",
                _depthwise_args(),
                rules.depthwise(rank),
                FusionClass.CONV,
                f"{rank}-D depthwise convolution: out channel c*m+j reads channel c",
            ),
            OpDef(
                f"conv_transpose{rank}d",
                _transpose_args(),
                rules.conv_transpose(rank),
                FusionClass.CONV,
                f"{rank}-D transposed convolution; weight [C, O/groups, *K]",
            ),
            OpDef(
                f"max_pool{rank}d",
                _pool_args(True, False),
                rules.pool(rank, "max"),
                FusionClass.POOL,
                f"{rank}-D max pooling; padding never wins the max",
            ),
            OpDef(
                f"avg_pool{rank}d",
                _pool_args(False, True),
                rules.pool(rank, "avg"),
                FusionClass.POOL,
                f"{rank}-D average pooling; padding is not counted unless include_pad=true",
            ),
        ]
    ops += [
        _binary("add", "sum", "a + b"),
        _binary("sub", "difference", "a - b"),
        _binary("mul", "product", "a * b"),
        _binary("div", "quotient", "a / b"),
        _unary("relu", "max(x, 0)"),
        _unary("relu6", "min(max(x, 0), 6)"),
        _unary("leaky_relu", "x if x >= 0 else alpha * x", _kw("alpha", ArgKind.FLOAT, 0.01)),
        _unary("elu", "x if x > 0 else alpha * (exp(x) - 1)", _kw("alpha", ArgKind.FLOAT, 1.0)),
        _unary("sigmoid", "1 / (1 + exp(-x))"),
        _unary("tanh", "hyperbolic tangent"),
        _unary(
            "gelu",
            "x * Phi(x) (exact erf form, or the tanh approximation)",
            _kw("approximate", ArgKind.ENUM, "none", ("none", "tanh")),
        ),
        _unary("silu", "x * sigmoid(x) (swish)"),
        _unary("hard_sigmoid", "relu6(x + 3) / 6"),
        _unary("hard_swish", "x * relu6(x + 3) / 6"),
        OpDef(
            "clip",
            (_X, ArgSpec("min", ArgKind.FLOAT, None), ArgSpec("max", ArgKind.FLOAT, None)),
            ew_rules.clip,
            FusionClass.ELEMENTWISE,
            "min(max(x, min), max), either bound optional (torch.clamp)",
        ),
        _unary("selu", "scale * (x if x > 0 else alpha * (exp(x) - 1)), PyTorch's constants"),
        OpDef(
            "softplus",
            (_X, _kw("beta", ArgKind.FLOAT, 1.0), _kw("threshold", ArgKind.FLOAT, 20.0)),
            ew_rules.softplus,
            FusionClass.ELEMENTWISE,
            "x if beta * x > threshold else log1p(exp(beta * x)) / beta",
        ),
        _unary("mish", "x * tanh(log1p(exp(x)))"),
        OpDef(
            "prelu",
            (_X, _kw("shared", ArgKind.BOOL, False)),
            ew_rules.prelu,
            FusionClass.ELEMENTWISE,
            "x if x >= 0 else weight[c] * x, a learned slope per channel (one if shared)",
        ),
        OpDef("softmax", (_X,), rules.unary, FusionClass.REDUCE, "softmax over the channel axis"),
        OpDef(
            "batch_norm",
            (_X, _kw("eps", ArgKind.FLOAT, 1e-5)),
            rules.batch_norm,
            FusionClass.ELEMENTWISE,
            "inference batch norm: (x - running_mean) / sqrt(running_var + eps) * weight + bias",
        ),
        OpDef(
            "global_avg_pool",
            (_X,),
            rules.global_pool,
            FusionClass.REDUCE,
            "mean over all spatial positions, keeping them as size-1 dims",
        ),
        OpDef(
            "global_max_pool",
            (_X,),
            rules.global_pool,
            FusionClass.REDUCE,
            "max over all spatial positions, keeping them as size-1 dims",
        ),
        OpDef(
            "flatten",
            (_X,),
            dense_rules.flatten,
            FusionClass.INDEX_MAP,
            "[N, C, *S] -> [N, C*prod(S)] in channels-first order (torch.flatten(x, 1))",
        ),
        OpDef(
            "dense",
            (_X, ArgSpec("out_features", ArgKind.INT), _BIAS, _ACT),
            dense_rules.dense,
            FusionClass.CONV,
            "fully connected layer on [N, F] (nn.Linear): x @ weight.T + bias; weight [O, F]",
        ),
        OpDef(
            "concat",
            (ArgSpec("xs", ArgKind.TENSORS), _kw("axis", ArgKind.INT, 1)),
            axis_rules.concat,
            FusionClass.CONCAT,
            "concatenation along an axis (channels by default); every other dim must match",
        ),
        OpDef(
            "slice",
            (
                _X,
                _kw("axis", ArgKind.INT, 1),
                _kw("start", ArgKind.INT, None),
                _kw("end", ArgKind.INT, None),
                _kw("step", ArgKind.INT, 1),
            ),
            axis_rules.slice_,
            FusionClass.INDEX_MAP,
            "elements start, start+step, ... before end of one axis (ONNX Slice bounds)",
        ),
        OpDef(
            "split",
            (
                _X,
                ArgSpec("sizes", ArgKind.INTS, None),
                _kw("parts", ArgKind.INT, None),
                _kw("axis", ArgKind.INT, 1),
            ),
            axis_rules.split,
            FusionClass.INDEX_MAP,
            "consecutive pieces of one axis, one tensor each: a, b = split(x, parts=2)",
        ),
        OpDef(
            "upscale",
            (
                _X,
                ArgSpec("factor", ArgKind.NUMBERS, None),
                _kw("size", ArgKind.INTS, None),
                _kw("mode", ArgKind.ENUM, "nearest", resample_rules.MODES),
                _kw("coordinate", ArgKind.ENUM, None, resample.COORDINATES),
                _kw("nearest", ArgKind.ENUM, None, resample.ROUNDINGS),
                _kw("align_corners", ArgKind.BOOL, False),
                _kw("cubic_coeff", ArgKind.FLOAT, None),
                _kw("exclude_outside", ArgKind.BOOL, None),
                _kw("recompute_scale", ArgKind.BOOL, False),
            ),
            resample_rules.upscale,
            FusionClass.RESAMPLE,
            "resize by factors (any positive number) or to a size: nearest, linear or cubic",
        ),
        OpDef(
            "pixel_shuffle",
            (_X, ArgSpec("factor", ArgKind.INT), _kw("order", ArgKind.ENUM, "crd", ("crd", "dcr"))),
            rules.pixel_shuffle,
            FusionClass.INDEX_MAP,
            "depth to space: [N, C*r*r, H, W] -> [N, C, H*r, W*r]; PyTorch CRD order by default",
        ),
        OpDef(
            "space_to_depth",
            (_X, ArgSpec("factor", ArgKind.INT), _kw("order", ArgKind.ENUM, "crd", ("crd", "dcr"))),
            axis_rules.space_to_depth,
            FusionClass.INDEX_MAP,
            "space to depth: [N, C, H*r, W*r] -> [N, C*r*r, H, W]; the inverse of pixel_shuffle",
        ),
        OpDef(
            "pad",
            (
                _X,
                ArgSpec("pads", ArgKind.PADDING),
                _kw("mode", ArgKind.ENUM, "zero", ("zero", "reflect", "replicate")),
                _kw("value", ArgKind.FLOAT, 0.0),
            ),
            rules.pad,
            FusionClass.INDEX_MAP,
            "spatial padding: zero (or a constant), reflect, replicate",
        ),
        OpDef(
            "crop",
            (
                _X,
                _kw("like", ArgKind.SHAPE_OF, None),
                _kw("size", ArgKind.INTS, None),
                _kw("offset", ArgKind.OFFSET, 0),
            ),
            rules.crop,
            FusionClass.INDEX_MAP,
            "spatial crop to the size of `like` (or to `size`), starting at `offset` (or center)",
        ),
    ]
    return {op.name: op for op in ops}


OPS: dict[str, OpDef] = _table()
"""Every op of the language, by name."""


def lookup(name: str) -> OpDef | None:
    return OPS.get(name)


def is_conv(op: str) -> bool:
    """Any convolution (regular, depthwise or transposed, of any rank): the ops with a weight,
    an optional bias and an activation epilogue."""
    row = OPS.get(op)
    return row is not None and row.fusion is FusionClass.CONV


def is_conv_transpose(op: str) -> bool:
    """A transposed convolution: its ``pads`` crop the output and its weight is
    ``[C, O/groups, *K]``."""
    return is_conv(op) and OPS[op].arg("output_padding") is not None


def is_channel_concat(op: str, attrs: Any) -> bool:
    """A concat along channels: each input is one contiguous block of every batch entry of
    the output, so the memory plan may have its producers write there directly."""
    return op == "concat" and attrs.get("axis", 1) == 1
