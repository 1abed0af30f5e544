"""Shape rules of the classifier head: ``flatten`` and ``dense``.

``flatten`` turns ``[N, C, *S]`` into ``[N, C*prod(S)]`` in channels-first memory order
(``torch.flatten(x, 1)``); its output is a rank-2 value ``[N, F]`` of features. With symbolic
spatial sizes the feature count is a size expression.

``dense`` is PyTorch's ``nn.Linear`` on ``[N, F]``: weight ``[out, F]``, bias ``[out]``. It is
resolved as what it is, a convolution over no spatial axes (weight ``[O, C, *K]`` with ``K`` =
``()``): ``kernel``, ``stride``, ``dilation`` and ``pads`` are empty, ``groups`` is 1. So every
pass and backend that handles convolutions handles it (an activation or a following batch
norm folded in, its epilogue fused, its MACs counted), and the llvm backend computes it as the
matrix-vector product of a pointwise convolution at one position. Its input features must be a
fixed number: the weight's shape depends on it, and weights never depend on input sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from convdsl.ir import limits
from convdsl.ir.graph import Attrs
from convdsl.ir.shape_rules import Inferred, ParamSpec, ShapeError
from convdsl.ir.types import TensorType, format_shape


def flatten(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    if x.rank < 2:
        raise ShapeError(f"expected a tensor [N, C, ...], found {format_shape(x.shape)}", arg="x")
    features = x.channels * math.prod(x.spatial)
    out = x.with_shape((x.batch, features))
    problem = limits.dims_problem(out)
    if problem is not None:
        raise ShapeError(problem, arg="x", hint=limits.HINT)
    return Inferred((out,), attrs)


def dense(attrs: Attrs, inputs: Sequence[TensorType]) -> Inferred:
    x = inputs[0]
    if x.rank != 2:
        raise ShapeError(
            f"expected features [N, F] (rank 2), found {format_shape(x.shape)} (rank {x.rank})",
            arg="x",
            hint="flatten(x) makes [N, F] of a feature map (after global_avg_pool(x): one "
            "feature per channel)",
        )
    features = x.channels
    if not isinstance(features, int):
        raise ShapeError(
            f"needs a fixed number of input features; found {features}",
            arg="x",
            hint="give the input fixed sizes or put a global pool before flatten (the weight's "
            "shape depends on the features)",
        )
    out = attrs["out_features"]
    if out < 1:
        raise ShapeError(
            f"out_features: expected a positive integer, found {out}", arg="out_features"
        )
    problem = limits.size_problem("out_features", out)
    if problem is not None:
        raise ShapeError(problem, arg="out_features", hint=limits.HINT)
    params = [ParamSpec("weight", (out, features), "he", features)]
    if attrs["bias"]:
        params.append(ParamSpec("bias", (out,), "bias", features))
    resolved = Attrs(
        out_channels=out,
        kernel=(),
        stride=(),
        dilation=(),
        pads=(),
        groups=1,
        bias=attrs["bias"],
        activation=attrs["activation"],
    )
    return Inferred((x.with_shape((x.batch, out)),), resolved, tuple(params))
