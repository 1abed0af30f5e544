"""Every array kernel of the NumPy interpreter, in one namespace for the op table to point at.

The kernels themselves live by kind in ``conv``, ``pool``, ``resample`` and ``elementwise``.
"""

from __future__ import annotations

from convdsl.backends.numpy.conv import conv, conv_transpose
from convdsl.backends.numpy.dense import dense, flatten
from convdsl.backends.numpy.elementwise import (
    add,
    batch_norm,
    clip,
    concat,
    div,
    elu,
    gelu,
    hard_sigmoid,
    hard_swish,
    leaky_relu,
    mish,
    mul,
    prelu,
    relu,
    relu6,
    selu,
    sigmoid,
    silu,
    softmax,
    softplus,
    sub,
    tanh,
)
from convdsl.backends.numpy.pool import avg_pool, global_avg_pool, global_max_pool, max_pool
from convdsl.backends.numpy.resample import crop, pad, pixel_shuffle, upscale

__all__ = [
    "add",
    "avg_pool",
    "batch_norm",
    "clip",
    "concat",
    "conv",
    "conv_transpose",
    "crop",
    "dense",
    "div",
    "elu",
    "flatten",
    "gelu",
    "global_avg_pool",
    "global_max_pool",
    "hard_sigmoid",
    "hard_swish",
    "leaky_relu",
    "max_pool",
    "mish",
    "mul",
    "pad",
    "pixel_shuffle",
    "prelu",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "sub",
    "tanh",
    "upscale",
]
