"""The largest sizes the checker accepts, so that no backend's index arithmetic can overflow.

Python integers are unbounded, but the backends index with 64-bit integers (NumPy's ``intp``,
the LLVM backend's ``i64``), and the LLVM backend tests lane positions along a row as 32-bit
integers (``loops.wide_mask``). The checker accepts a program only within these bounds:

1. every dimension (batch, channels, spatial), every integer attribute (kernel, stride,
   dilation, padding, output_padding, groups, multiplier, factors, crop sizes and offsets,
   out_channels) and every window's effective kernel ``d*(k-1) + 1`` is at most
   ``MAX_EXTENT`` = 2**24;
2. every array a layer reads, writes or builds has at most ``MAX_ELEMENTS`` = 2**40 elements
   (with its batch, which ``convdsl.api`` checks when the network runs): its outputs, its
   parameters, and for a window op the arrays of ``window_arrays`` — the input as far as the
   windows reach (padded, and on the last axis ``VECTOR_SLACK`` windows further), a
   convolution's unrolled windows, a transposed convolution's input-times-kernel products;
3. the arrays of all layers take at most ``MAX_NETWORK_ELEMENTS`` = 2**44 per batch entry.
And the front end computes only with integers of magnitude <= ``MAX_INTEGER`` = 2**128.

Why that suffices (``E`` = 2**24). *Positions along one axis*: a window op computes
``o*s + t*d - before`` for outputs ``o`` up to ``VECTOR_SLACK`` past the last (a vector of
lanes overhanging the row, never stored) and taps ``t < k``; ``(out-1)*s + d*(k-1)`` is at most
``n + before + after`` (+ ``s`` in ceil mode), explicit pads are each <= E and ``same`` or
``causal`` pad at most ``d*(k-1) <= E`` in all, so a position is within
``3E + 65*s <= 68E < 2**31`` of zero. Upscale, pad, crop, pixel shuffle and a transposed conv
(outputs in vectors of ``s * lanes``, ``lanes <= 16``) map an output position below
``E + 16*s`` to an input position by ``/ f``, ``± offset`` or ``(o + before - t*d) / s``, so
they stay below ``2**31`` too: the 32-bit lane positions never wrap.
*Addresses*: an element's offset in its array is ``sum(index_i * stride_i)``. On the last axis
``|index| < 2**31`` with stride 1; on any other axis the index lies in the window's reach and
the stride is a product of the inner sizes, so ``|index_i * stride_i|`` is at most the
elements of that array (a window array, or a tensor with its batch), <= 2**40 by 2. An offset
is thus below ``7 * 2**40 + 2**31`` elements, under 2**46 bytes; the LLVM backend's arena
(one batch entry's tensors, their phase-row copies — each at most twice a padded input — or
one pass of 2 MiB) is below ``3 * 2**44 * 8 < 2**49`` bytes by 3. Nothing comes near 2**63,
and NumPy never meets an array too big to index. The bounds are far above real networks: a
3-D U-Net on 256**3 voxels with 32 channels builds about 2**30 elements in a layer, FCN-8s at
batch 64 about 2**31.

Every check returns a message, or None when the value is within bounds; its caller raises it
as a diagnostic at the argument or layer at fault.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from convdsl.ir import geometry
from convdsl.ir.graph import Graph
from convdsl.ir.types import Dim, TensorType, format_shape

MAX_EXTENT = 2**24
"""Largest size along one axis; a sum of a few stays below 2**31, the 32-bit lane positions."""

MAX_ELEMENTS = 2**40
"""Largest element count of one array; times 8 bytes and a few strides, far below 2**63."""

MAX_NETWORK_ELEMENTS = 2**44
"""Largest element count of all of one batch entry's arrays: the arena's byte offsets."""

VECTOR_SLACK = 64
"""Windows a backend may compute past a row's last one (a vector of lanes, never stored)."""

MAX_INTEGER = 2**128
"""Largest magnitude of an integer the front end computes with; keeps its arithmetic cheap."""

HINT = "sizes are bounded so that no index arithmetic can overflow: see Limits in docs/language.md"


def _power(limit: int) -> str:
    return f"{limit} (2**{limit.bit_length() - 1})"


def integer_problem(value: int) -> str | None:
    """An integer (a literal, or a result of compile-time arithmetic) past ``MAX_INTEGER``."""
    if -MAX_INTEGER <= value <= MAX_INTEGER:
        return None
    return f"integer too large: at most 2**{MAX_INTEGER.bit_length() - 1} in magnitude"


def size_problem(what: str, value: int) -> str | None:
    """``dilation 4294967297 is too large: ...`` for an integer past ``MAX_EXTENT``. A symbolic
    size is checked once it is bound (the network is specialized with concrete sizes)."""
    if not isinstance(value, int) or value <= MAX_EXTENT:
        return None
    return f"{what} {value} is too large: at most {_power(MAX_EXTENT)}"


def effective_kernel_problem(kernel: int, dilation: int) -> str | None:
    """A dilated window longer than ``MAX_EXTENT`` (its taps and dilation each within it)."""
    extent = geometry.effective_kernel(kernel, dilation)
    if extent <= MAX_EXTENT:
        return None
    return (
        f"dilation {dilation} with kernel {kernel} spans {extent} positions "
        f"(d*(k-1)+1): at most {_power(MAX_EXTENT)}"
    )


def dims_problem(t: TensorType, what: str = "output") -> str | None:
    """A dim of ``t`` past ``MAX_EXTENT``, named as the user sees it."""
    channels = "channels" if t.spatial_rank else "features"
    names = ("batch", channels, *(t.axis_name(axis) for axis in range(t.spatial_rank)))
    for name, dim in zip(names, t.shape, strict=True):
        if isinstance(dim, int) and dim > MAX_EXTENT:
            return (
                f"the {what} {format_shape(t.shape)} is too large: {name} is {dim}, "
                f"at most {_power(MAX_EXTENT)}"
            )
    return None


def elements_problem(what: str, per_entry: int, batch: Dim) -> str | None:
    """An array of ``per_entry`` elements per batch entry (times ``batch`` when it is known)
    past ``MAX_ELEMENTS``."""
    total = per_entry * batch if isinstance(batch, int) else per_entry
    if total <= MAX_ELEMENTS:
        return None
    each = "" if isinstance(batch, int) else " per batch entry"
    return f"{what} would hold {total} elements{each}: at most {_power(MAX_ELEMENTS)}"


def window_arrays(
    attrs: Mapping[str, Any], x: TensorType, out: TensorType
) -> Iterator[tuple[str, int]]:
    """The arrays (description, elements per batch entry) a backend may build for a window op
    with resolved ``attrs`` (convolutions and pools; nothing for other ops)."""
    if "kernel" not in attrs or "pads" not in attrs:
        return
    kernel, stride, pads = attrs["kernel"], attrs["stride"], attrs["pads"]
    dilation = attrs.get("dilation", (1,) * len(kernel))
    taps = math.prod(kernel)
    if "output_padding" in attrs:  # transposed: every input pixel times the whole kernel
        yield "products of inputs and kernel taps", out.channels * taps * math.prod(x.spatial)
        return
    reach = []  # per axis: the padded input, or what the windows cover if that is more
    for axis, (n, k, s, d, (before, after), o) in enumerate(
        zip(x.spatial, kernel, stride, dilation, pads, out.spatial, strict=True)
    ):
        windows = o + (VECTOR_SLACK if axis == len(kernel) - 1 else 0)
        reach.append(max(n + before + after, geometry.conv_transpose_full_size(windows, k, s, d)))
    yield "padded input", x.channels * math.prod(reach)
    if "groups" in attrs:  # a convolution's unrolled windows (im2col columns)
        yield "unrolled windows", x.channels * taps * math.prod(out.spatial)


def layer_problem(
    attrs: Mapping[str, Any],
    inputs: Sequence[TensorType],
    outputs: Sequence[TensorType],
    params: Sequence[tuple[str, tuple[int, ...]]],
) -> str | None:
    """The first array of a layer past ``MAX_ELEMENTS``: an output, a parameter, or one its
    windows need (``window_arrays``)."""
    for out in outputs:
        problem = dims_problem(out) or elements_problem(
            f"the output {format_shape(out.shape)}", out.stored_elements, out.batch
        )
        if problem:
            return problem
    for role, shape in params:
        problem = elements_problem(f"the {role} {format_shape(shape)}", math.prod(shape), 1)
        if problem:
            return problem
    if inputs and outputs:
        for what, count in window_arrays(attrs, inputs[0], outputs[0]):
            problem = elements_problem(f"the {what}", count, inputs[0].batch)
            if problem:
                return problem
    return None


def entry_elements(
    attrs: Mapping[str, Any], inputs: Sequence[TensorType], outputs: Sequence[TensorType]
) -> int:
    """Elements of one batch entry a layer's outputs and window arrays take."""
    total = sum(out.stored_elements for out in outputs)
    if inputs and outputs:
        total += sum(count for _, count in window_arrays(attrs, inputs[0], outputs[0]))
    return total


def network_problem(total: int) -> str | None:
    """The layers so far hold more than ``MAX_NETWORK_ELEMENTS`` per batch entry."""
    if total <= MAX_NETWORK_ELEMENTS:
        return None
    return (
        f"the network's arrays up to this layer would hold {total} elements per batch entry: "
        f"at most {_power(MAX_NETWORK_ELEMENTS)} in all"
    )


def largest_entry(graph: Graph) -> int:
    """The most elements one batch entry takes in any single array of a checked graph
    (values as stored, and the window arrays of every layer, inside fused kernels too).
    Remembered per graph: a network checks its batch on every call."""
    known = _LARGEST.get(id(graph))
    if known is not None and known[0]() is graph:
        return known[1]
    largest = max((v.type.stored_elements for v in graph.values.values() if v.type), default=1)
    for node in graph.nodes:
        for part in node.parts or (node,):
            if part.inputs and part.outputs:
                x, out = graph.type_of(part.inputs[0]), graph.type_of(part.outputs[0])
                for _, count in window_arrays(part.attrs, x, out):
                    largest = max(largest, count)
    key = id(graph)
    _LARGEST[key] = (weakref.ref(graph, lambda _: _LARGEST.pop(key, None)), largest)
    return largest


_LARGEST: dict[int, tuple[weakref.ref[Graph], int]] = {}


def batch_problem(batch: int, per_entry: int) -> str | None:
    """A run-time batch past ``MAX_EXTENT``, or one whose largest array (``per_entry``
    elements per batch entry) would be past ``MAX_ELEMENTS``."""
    if batch > MAX_EXTENT:
        return f"{batch} batch entries are too many: at most {_power(MAX_EXTENT)}"
    if batch * per_entry > MAX_ELEMENTS:
        return (
            f"{batch} batch entries of {per_entry} elements make an array of "
            f"{batch * per_entry} elements: at most {_power(MAX_ELEMENTS)}"
        )
    return None
