"""Tensor types of the IR: a dtype and a shape of ints and symbolic dims.

Logically always channels-first, ``[batch, channels, *spatial]`` with 0 to 3 spatial dims: a
value without any (rank 2, ``[N, F]``) holds features, as ``flatten`` and ``dense`` make them
(its channel dim is the features). A value the layout pass converts is *stored* differently
(``PhaseRows``, ``ChannelsLast``), which its type says. Two kinds of dims may be symbolic. The
batch is a name (``N``) all the way to the backends, which bind it per call. A spatial dim may
be an expression of input sizes (``H//2``, a ``symbolic.Expr``) in the graph ``check`` sees,
and so may the features of a flattened map (``64*(H//32)*(W//32)``); a network is
*specialized* to concrete sizes before any pass after shape inference runs
(``passes.specialize``), so optimizing passes and backends see ints there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from convdsl.ir.symbolic import Expr, substitute

Dim = int | str | Expr
"""A dimension: a static size, the batch symbol (``"N"``), or a spatial size expression."""

AXIS_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
"""How error messages name the spatial axes of 1-, 2- and 3-D tensors."""


class DType(Enum):
    F32 = "f32"
    F64 = "f64"

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(np.float32 if self is DType.F32 else np.float64)

    @staticmethod
    def parse(text: str) -> DType | None:
        aliases = {"f32": DType.F32, "float32": DType.F32, "f64": DType.F64, "float64": DType.F64}
        return aliases.get(text)


@dataclass(frozen=True, slots=True)
class PhaseRows:
    """A storage layout (``passes.layout``): every row of the last axis kept as ``stride``
    *phase rows*, phase ``p`` holding elements ``j * stride + p`` for ``j`` in ``[first, first +
    length)``, zero where that is outside the row. Per batch entry: ``[C, *outer, stride,
    length]``. A convolution with that stride then reads each tap's inputs consecutively."""

    stride: int
    first: int  # <= 0: the padding before the row
    length: int

    def __str__(self) -> str:
        return f"phases(stride={self.stride}, first={self.first}, length={self.length})"


@dataclass(frozen=True, slots=True)
class ChannelsLast:
    """A storage layout: per batch entry ``[*spatial, C]``, the channels of one position
    adjacent (Keras/TF's ``channels_last``: NWC, NHWC, NDHWC). Only a graph input or output
    declared so (``input x: nhwc f32[...]``), and the kernels reading or writing it directly,
    are stored this way (``passes.boundary``)."""

    def __str__(self) -> str:
        return "channels_last"


Layout = PhaseRows | ChannelsLast


@dataclass(frozen=True, slots=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: DType = DType.F32
    layout: Layout | None = None  # how the value is stored; None: dense [C, *spatial]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batch(self) -> Dim:
        return self.shape[0]

    @property
    def channels(self) -> int:
        """The channel count (the features of a rank-2 value): an int, or in a symbolic graph
        an ``Expr`` for the features of a flattened map of symbolic size."""
        channels = self.shape[1]
        assert not isinstance(channels, str), "only the batch dimension may be a name"
        return channels  # type: ignore[return-value]

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial sizes: ints, or in a symbolic graph ``Expr``s, which compute and compare
        like ints (``convdsl.ir.symbolic``)."""
        return tuple(self.shape[2:])  # type: ignore[arg-type]

    @property
    def is_symbolic(self) -> bool:
        """Whether a spatial size is an expression of the input sizes (not yet specialized)."""
        return any(isinstance(d, Expr) for d in self.shape[1:])

    @property
    def spatial_rank(self) -> int:
        return len(self.shape) - 2

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        return TensorType(shape, self.dtype)

    def axis_name(self, spatial_axis: int) -> str:
        names = AXIS_NAMES.get(self.spatial_rank)
        return names[spatial_axis] if names else f"axis {spatial_axis + 2}"

    @property
    def stored_elements(self) -> int:
        """Elements one batch entry takes in memory, layout included."""
        sizes = self.spatial or (1,)
        if not isinstance(self.layout, PhaseRows):
            return self.channels * math.prod(sizes)
        return self.channels * math.prod(sizes[:-1]) * self.layout.stride * self.layout.length

    @property
    def stored_shape(self) -> tuple[Dim, ...]:
        """The shape of the array the value is stored as: ``[N, *spatial, C]`` channels last,
        else the logical shape (a graph input or output is never stored as phase rows)."""
        if isinstance(self.layout, ChannelsLast):
            return (self.shape[0], *self.shape[2:], self.shape[1])
        return self.shape

    def __str__(self) -> str:
        layout = f" {self.layout}" if self.layout is not None else ""
        return f"{self.dtype.value}{format_shape(self.shape)}{layout}"


def format_shape(shape: tuple[object, ...]) -> str:
    """``[N,64,56,56]``: the form every message and the IR printer use."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def bind_shape(shape: tuple[Dim, ...], bindings: dict[str, int]) -> tuple[int, ...]:
    """The concrete shape once symbols are bound (``N`` -> 8, ``H//2`` -> 112)."""
    return tuple(
        d if isinstance(d, int) else substitute(d, bindings) if isinstance(d, Expr) else bindings[d]
        for d in shape
    )


def num_elements(shape: tuple[Dim, ...]) -> int:
    """Elements per batch entry when the batch is symbolic, all elements otherwise (an ``Expr``
    when sizes are symbolic)."""
    total = 1
    for d in shape:
        total *= 1 if isinstance(d, str) else d  # type: ignore[assignment]
    return total
