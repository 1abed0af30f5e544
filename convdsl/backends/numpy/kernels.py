"""Every array kernel of the NumPy interpreter, in one namespace for the op table to point at.

The kernels themselves live by kind in ``conv``, ``pool``, ``resample`` and ``elementwise``.
"""

from __future__ import annotations

from convdsl.backends.numpy.conv import conv, conv_transpose
from convdsl.backends.numpy.elementwise import (
    add,
    batch_norm,
    concat,
    elu,
    gelu,
    hard_sigmoid,
    hard_swish,
    leaky_relu,
    mul,
    relu,
    relu6,
    sigmoid,
    silu,
    softmax,
    tanh,
)
from convdsl.backends.numpy.pool import avg_pool, global_avg_pool, global_max_pool, max_pool
from convdsl.backends.numpy.resample import crop, pad, pixel_shuffle, upscale

__all__ = [
    "add",
    "avg_pool",
    "batch_norm",
    "concat",
    "conv",
    "conv_transpose",
    "crop",
    "elu",
    "gelu",
    "global_avg_pool",
    "global_max_pool",
    "hard_sigmoid",
    "hard_swish",
    "leaky_relu",
    "max_pool",
    "mul",
    "pad",
    "pixel_shuffle",
    "relu",
    "relu6",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
    "upscale",
]
