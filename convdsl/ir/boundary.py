"""Channels-last data at a network's boundaries: the words that declare it, and the order of
the dims the caller's arrays have.

Inside a network every value is logically channels-first, ``[N, C, *spatial]``. An input
declared ``input x: nhwc f32[N, 224, 224, 3]`` is passed as the array the user has,
``[N, H, W, C]``; an output declared ``output y: nhwc = ...`` is returned so. The graph
records those declarations (``Graph.channels_last_inputs``/``_outputs``); the NumPy
interpreter transposes at the boundary (``to_logical``, ``to_caller``), the LLVM backend
reads and writes the caller's arrays in place with channels-last strides
(``passes.boundary``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from convdsl.diagnostics import Diagnostic, Span
from convdsl.ir.types import ChannelsLast

if TYPE_CHECKING:
    from convdsl.ir.graph import Graph
    from convdsl.ir.types import TensorType

CHANNELS_LAST = {"nwc": 1, "nhwc": 2, "ndhwc": 3, "channels_last": None}
"""The words declaring channels-last data, with the spatial rank each names (None: any)."""
CHANNELS_FIRST = {"ncw": 1, "nchw": 2, "ncdhw": 3, "channels_first": None}
"""The words naming the default, channels-first data (accepted for symmetry)."""
FIRST_NAMES = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
LAST_NAMES = {1: "NWC", 2: "NHWC", 3: "NDHWC"}


@dataclass(frozen=True, slots=True)
class ChannelsLastDecl:
    """An input or output declared channels-last: the word as written and where."""

    word: str
    span: Span = field(compare=False)


def layout_rank(word: str) -> tuple[bool, int | None] | None:
    """``(channels last?, spatial rank or None for any)`` of a layout word (any case), or
    None if it is not one."""
    lowered = word.lower()
    if lowered in CHANNELS_LAST:
        return True, CHANNELS_LAST[lowered]
    if lowered in CHANNELS_FIRST:
        return False, CHANNELS_FIRST[lowered]
    return None


def describe(spatial_rank: int, channels_last: bool) -> str:
    """``channels last: NHWC``: how messages name a layout."""
    names = LAST_NAMES if channels_last else FIRST_NAMES
    which = "channels last" if channels_last else "channels first"
    return f"{which}: {names[spatial_rank]}" if spatial_rank in names else which


def caller_order(shape: tuple, channels_last: bool) -> tuple:
    """A logical ``[N, C, *spatial]`` shape in the order of the caller's array."""
    if not channels_last or len(shape) < 3:
        return tuple(shape)
    return (shape[0], *shape[2:], shape[1])


def declared_type(value_type: TensorType, layout: ChannelsLastDecl | None) -> str:
    """``f32[N,3,H,W]``, or for a channels-last input or output ``nhwc f32[N,H,W,3]``."""
    if layout is None:
        return str(value_type)
    shape = caller_order(value_type.shape, True)
    return f"{layout.word} {value_type.dtype.value}[{','.join(str(d) for d in shape)}]"


def caller_shape(graph: Graph, value: int) -> tuple:
    """The shape of the array the caller passes for input ``value``."""
    return caller_order(graph.type_of(value).shape, value in graph.channels_last_inputs)


def stored_inputs(graph: Graph, arrays: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The caller's input arrays as ``graph`` stores them: a channels-last array transposed
    unless the graph reads it channels-last (the LLVM backend's, ``passes.boundary``)."""
    return {
        value: to_logical(array)
        if value in graph.channels_last_inputs and not _stored_last(graph, value)
        else array
        for value, array in arrays.items()
    }


def caller_outputs(graph: Graph, results: Mapping[int, np.ndarray]) -> dict[str, np.ndarray]:
    """The output arrays by name, each channels-last output transposed unless the graph
    stores it so already."""
    return {
        name: to_caller(results[value])
        if name in graph.channels_last_outputs and not _stored_last(graph, value)
        else results[value]
        for name, value in graph.outputs
    }


def _stored_last(graph: Graph, value: int) -> bool:
    return isinstance(graph.type_of(value).layout, ChannelsLast)


def logical_inputs(graph: Graph, arrays: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """For an interpreter of logical arrays: each input ``graph`` stores channels-last
    (``ChannelsLast`` in its type) transposed to ``[N, C, *spatial]``."""
    return {
        value: to_logical(array) if _stored_last(graph, value) else array
        for value, array in arrays.items()
    }


def stored_outputs(graph: Graph, arrays: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """For an interpreter of logical arrays: each output ``graph`` stores channels-last
    transposed so (the inverse of ``logical_inputs``)."""
    return {
        value: to_caller(array) if _stored_last(graph, value) else array
        for value, array in arrays.items()
    }


def to_logical(array: np.ndarray) -> np.ndarray:
    """A caller's channels-last array as the logical ``[N, C, *spatial]`` one."""
    return np.ascontiguousarray(np.moveaxis(array, -1, 1))


def to_caller(array: np.ndarray) -> np.ndarray:
    """A logical ``[N, C, *spatial]`` array as the caller's channels-last one."""
    return np.ascontiguousarray(np.moveaxis(array, 1, -1))


def output_layout_problems(
    graph: Graph, types: Mapping[int, TensorType | None]
) -> Iterator[Diagnostic]:
    """An error at the layout word of each output declared ``nhwc`` (``nwc``, ``ndhwc``) whose
    inferred type has another number of spatial dims."""
    values = dict(graph.outputs)
    for name, decl in graph.channels_last_outputs.items():
        found = types.get(values[name]) if name in values else None
        rank = CHANNELS_LAST.get(decl.word.lower())
        if found is None or rank is None or found.spatial_rank == rank:
            continue
        names = LAST_NAMES.get(found.spatial_rank)
        hint = f"for {found.spatial_rank}-D data write {names.lower()}" if names else None
        yield Diagnostic(
            f"output '{name}': layout '{decl.word}' is for {rank}-D data, but the output "
            f"{found} has {found.spatial_rank} spatial dims",
            decl.span,
            hint=hint,
        )
