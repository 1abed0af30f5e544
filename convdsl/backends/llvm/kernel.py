"""What every op emitter works with: a ``Point`` of the output and a ``KernelBuilder``.

A kernel computes its output one *point* at a time: batch entry ``n``, a block of ``block``
consecutive channels starting at ``c``, indices ``outer`` on every spatial axis but the last, and
``lanes`` consecutive positions starting at ``w`` on the last axis. An op emitter returns one
``<lanes x float>`` per channel of the block. Elementwise parts of a fused kernel read their
operands at the same point (from registers if a previous part made them, else from memory), so
an epilogue is computed in registers before the single store.

A kernel computes in its output's dtype (``KernelBuilder.dtype``), which every value and
parameter it reads shares (no op mixes dtypes): ``<lanes x double>`` in an f64 kernel, whose
``lanes`` are half the target's float lanes, so a vector still fills one register.

Scratch values (internal values of a fused kernel that runs part by part) live after the
planned arena: batch entry ``n`` at ``offset * B + n * size``. Addressing otherwise follows the
memory plan (``convdsl.ir.memory_plan``): batch entry ``n`` of a planned
value ``v`` whose root buffer is ``R`` starts at byte ``R.offset * B + n * R.size + (v.offset -
R.offset)`` of the arena; within an entry a value is dense ``[C, *spatial]``. Graph inputs are
dense ``[B, C, *spatial]`` caller arrays; parameters are dense arrays of their dtype. The entry
function computes those addresses (``ArenaAddresses``) and hands each kernel a table of them
(``BoundAddresses``): kernel code holds no address, only shapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from llvmlite import ir

from convdsl.backends.llvm.loops import (
    F32,
    F64,
    I1,
    I64,
    for_range,
    gep,
    i64,
    load_vec,
    masked_load,
    masked_store,
    store_vec,
)
from convdsl.backends.llvm.parallel import work_chunks
from convdsl.backends.llvm.strided import strided_load, strided_store
from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Graph, Node
from convdsl.ir.types import ChannelsLast, DType, TensorType
from convdsl.passes.memory import root_of

if TYPE_CHECKING:  # conv_schedule imports this module
    from convdsl.backends.llvm.conv_schedule import Plane

# The entry function's arguments, as the entry reads them (``ArenaAddresses``).
RUN_FIELDS = ("inputs", "outputs", "arena", "params", "batches")


def batch_symbols(graph: Graph) -> tuple[str, ...]:
    """The symbolic batch dims, in the order of the entry's ``batches`` argument."""
    dims = (graph.type_of(value).batch for value in graph.inputs)
    return tuple(dict.fromkeys(dim for dim in dims if isinstance(dim, str)))


@dataclass(frozen=True)
class Point:
    """A block of output channels times ``lanes`` positions on the last axis (module doc)."""

    n: ir.Value
    c: ir.Value
    block: int
    outer: tuple[ir.Value, ...]
    w: ir.Value
    lanes: int
    # A tail point: only lanes < valid exist (loads/stores masked). For a register tile's
    # point (several vectors from ``w``), the partial vector is the tile's last.
    valid: int | None = None


ELEMENTS = {DType.F32: F32, DType.F64: F64}


def kernel_lanes(f32_lanes: int, dtype: DType) -> int:
    """Lanes of one vector register for ``dtype``, given the target's ``float`` lanes."""
    return f32_lanes * 4 // dtype.numpy.itemsize


def param_dtype(graph: Graph, name: str) -> DType:
    """The dtype of parameter ``name``: declared, derived, or a packed copy of one of those
    (``{source}@pack{block}``, ``{source}@tpack{block}``)."""
    base = name
    while base not in graph.params and base not in graph.derived:
        if "@" not in base:
            raise InternalError(f"no parameter named {name}")
        base = base.rsplit("@", 1)[0]
    found = graph.params.get(base) or graph.derived[base]
    return found.dtype


def value_element(graph: Graph, value: int) -> ir.Type:
    """``float`` or ``double``: the element type of ``value``."""
    return ELEMENTS[graph.type_of(value).dtype]


def spatial_of(t: TensorType) -> tuple[int, ...]:
    """Spatial sizes, with a tensor that has none treated as one position wide."""
    return t.spatial or (1,)


def entry_elements(t: TensorType) -> int:
    """Elements one batch entry takes in memory (its layout included)."""
    return t.stored_elements


def strides_of(t: TensorType) -> tuple[int, ...]:
    """Element strides of ``(channel, *spatial)`` inside one batch entry: the last spatial
    stride is 1, or the channel count for a value stored channels-last (whose channel stride
    is 1)."""
    sizes = spatial_of(t)
    step = t.channels if isinstance(t.layout, ChannelsLast) else 1
    strides = [step]
    for size in reversed(sizes[1:]):
        strides.insert(0, strides[0] * size)
    return (1 if step > 1 else math.prod(sizes), *strides)


@dataclass(frozen=True)
class Images:
    """The batch entries one pass of the entry function computes: ``count`` from ``first``
    on (``entry.images_per_pass``), in an arena laid out for ``count`` entries."""

    first: ir.Value
    count: ir.Value


class ArenaAddresses:
    """Addresses computed from the entry function's arguments and the memory plan: where the
    entry function finds every value and parameter, to fill the kernels' tables, for the
    ``images`` of one pass: the caller's arrays from its first image on, the arena's values
    at the start of their slots, which every pass reuses."""

    def __init__(
        self,
        graph: Graph,
        builder: ir.IRBuilder,
        fields: dict[str, ir.Value],
        param_index: dict[str, int],
        scratch: dict[int, tuple[int, int]],
        direct: dict[int, int],
        images: Images,
    ) -> None:
        self.graph, self.builder, self.fields = graph, builder, fields
        self.param_index, self.scratch, self.direct = param_index, scratch, direct
        self.images = images

    @property
    def batch(self) -> ir.Value:
        """The batch entries the kernels compute in this pass."""
        return self.images.count

    def value(self, value: int) -> tuple[ir.Value, ir.Value]:
        """``float*`` (``double*``) to the pass's first batch entry of ``value``, and the
        elements from one entry to the next."""
        b = self.builder
        pointer = value_element(self.graph, value).as_pointer()
        size = itemsize(self.graph, value)
        caller = self._caller_slot(value)
        count = self.images.count
        if caller is not None:  # the caller's dense array, from the inputs or outputs table
            field, slot = caller
            table = b.bitcast(self.fields[field], pointer.as_pointer())
            elements = i64(entry_elements(self.graph.type_of(value)))
            start = b.load(b.gep(table, [i64(slot)]))
            if self.graph.type_of(value).batch == 1:
                # its one image, also for a pass of a larger batch reading it broadcast
                return start, elements
            return b.gep(start, [b.mul(self.images.first, elements)]), elements
        if value in self.scratch:
            offset, entry_bytes = self.scratch[value]
            at = b.bitcast(b.gep(self.fields["arena"], [b.mul(count, i64(offset))]), pointer)
            return at, i64(entry_bytes // size)
        plan = self.graph.memory
        if plan is None or value not in plan.buffers:
            raise InternalError(f"value %{self.graph.values[value].name} has no arena slot")
        buffer = plan.buffers[value]
        root = root_of(plan, buffer.value)
        start = b.add(b.mul(count, i64(root.offset)), i64(buffer.offset - root.offset))
        return b.bitcast(b.gep(self.fields["arena"], [start]), pointer), i64(root.size // size)

    def extent(self, value: int) -> tuple[ir.Value, ir.Value]:
        """Bounds-checked: the bytes ``value`` may be read or written at, ``[first, end)`` as
        ``i64``s: the caller's whole array (its bytes follow the addresses in the caller's
        table), or from the pass's first entry in the arena to the end of its last, cut at
        the arena's end (its bytes follow the batch sizes)."""
        b = self.builder
        caller = self._caller_slot(value)
        if caller is not None:
            field, slot = caller
            table = b.bitcast(self.fields[field], I64.as_pointer())
            count = len(self.graph.inputs) if field == "inputs" else len(self.graph.outputs)
            first = b.load(b.gep(table, [i64(slot)]))
            return first, b.add(first, b.load(b.gep(table, [i64(count + slot)])))
        base, per_entry = self.value(value)
        size = itemsize(self.graph, value)
        first = b.ptrtoint(base, I64)
        last_entry = b.mul(b.sub(self.images.count, i64(1)), b.mul(per_entry, i64(size)))
        if value in self.scratch:
            own = self.scratch[value][1]
        else:
            assert self.graph.memory is not None
            own = self.graph.memory.buffers[value].size
        end = b.add(first, b.add(last_entry, i64(own)))
        arena_bytes = b.load(b.gep(self.fields["batches"], [i64(len(batch_symbols(self.graph)))]))
        arena_end = b.add(b.ptrtoint(self.fields["arena"], I64), arena_bytes)
        return first, b.select(b.icmp_unsigned("<", end, arena_end), end, arena_end)

    def _caller_slot(self, value: int) -> tuple[str, int] | None:
        """``("inputs", i)`` for a graph input, ``("outputs", i)`` for an output written in
        place (``entry.direct_outputs``), None for a value in the arena."""
        if value in self.graph.inputs:
            return "inputs", self.graph.inputs.index(value)
        if value in self.direct:
            return "outputs", self.direct[value]
        return None

    def param(self, name: str) -> ir.Value:
        b = self.builder
        pointer = ELEMENTS[param_dtype(self.graph, name)].as_pointer()
        table = b.bitcast(self.fields["params"], pointer.as_pointer())
        return b.load(b.gep(table, [i64(self.param_index[name])]))

    def param_end(self, name: str) -> ir.Value:
        """Bounds-checked: the last byte + 1 of parameter ``name``, from its bytes, which
        follow the addresses in the parameters' table."""
        b = self.builder
        table = b.bitcast(self.fields["params"], I64.as_pointer())
        nbytes = b.load(b.gep(table, [i64(len(self.param_index) + self.param_index[name])]))
        return b.add(b.ptrtoint(self.param(name), I64), nbytes)


class BoundAddresses:
    """A kernel's addresses, read from the table of ``i64`` words its caller passes: word 0 is
    the batch size, then, in the order the kernel first uses them, the words of each binding
    (``words_of``): per value its entry 0 as an address and elements per entry, per parameter
    its address, per integer attribute read at run time (``integer``) its value, per work
    counter (``counter``) the counter and the chunks to cut the work into; a bounds-checked
    build adds each value's and parameter's extent.

    So a kernel's code depends only on shapes and attributes, never on where the memory plan
    put its values or which parameter it reads: kernels of the same shape print the same and
    share one function (``lower``), each call with its own table."""

    def __init__(
        self,
        graph: Graph,
        builder: ir.IRBuilder,
        table: ir.Value,
        prologue: ir.Block,
        bounds: bool = False,
        side: ir.Value | None = None,
    ) -> None:
        self.graph, self.builder = graph, builder
        self.side = side if side is not None else i64(0)  # 0: the caller's thread, 1: the pool
        self.prologue = prologue  # where the words are loaded: it dominates the whole kernel
        self.bounds = bounds  # each value and parameter also has its extent (``words``)
        with builder.goto_block(prologue):
            self.table = builder.bitcast(table, I64.as_pointer())
            self.batch = builder.load(self.table, name="batch")
        # ("value", id), ("param", name) or ("int", "name=value")
        self.bindings: list[tuple[str, int | str]] = []
        self.loaded: dict[tuple[str, int | str], tuple[ir.Value, ...]] = {}
        self.words = 1

    @staticmethod
    def words_of(kind: str, bounds: bool) -> int:
        """A binding's words: a value's address and elements per entry (then, bounds-checked,
        the first and last byte + 1 it takes in this pass), a parameter's address (then its
        end), an integer, a work counter and the chunks to cut the work into."""
        words = {"value": 2, "param": 1, "int": 1, "counter": 2}[kind]
        return words + {"value": 2, "param": 1}.get(kind, 0) * bounds

    def counter(self) -> tuple[ir.Value, ir.Value]:
        """``i64*`` to a new word of the table that the entry sets to 0 before each call (the
        next work item the kernel's threads take, ``parallel.work_chunks``), and the number
        of chunks to cut the work into (the next word: set by the entry from its threads, so
        the kernel's code does not depend on them)."""
        key = ("counter", f"{len(self.bindings)}")
        b = self.builder
        with b.goto_block(self.prologue):
            pointer = b.gep(self.table, [i64(self.words)])
            parts = b.load(b.gep(self.table, [i64(self.words + 1)]))
        self.words += 2
        self.bindings.append(key)
        self.loaded[key] = (pointer, parts)
        return pointer, parts

    def _bind(self, key: tuple[str, int | str], element: ir.Type | None) -> tuple[ir.Value, ...]:
        """The words of ``key``, the first as an ``element*`` (None: an integer)."""
        if key not in self.loaded:
            b = self.builder
            words = self.words_of(key[0], self.bounds)
            with b.goto_block(self.prologue):
                loaded = [b.load(b.gep(self.table, [i64(self.words + i)])) for i in range(words)]
                if element is not None:
                    loaded.insert(0, b.inttoptr(loaded[0], element.as_pointer()))
            self.words += words
            self.bindings.append(key)
            self.loaded[key] = tuple(loaded)
        return self.loaded[key]

    def value(self, value: int) -> tuple[ir.Value, ir.Value]:
        base, _, per_entry, *_ = self._bind(("value", value), value_element(self.graph, value))
        return base, per_entry

    def param(self, name: str) -> ir.Value:
        return self._bind(("param", name), ELEMENTS[param_dtype(self.graph, name)])[0]

    def extents(self) -> dict[ir.Value, tuple[int, ir.Value, ir.Value]]:
        """Bounds-checked: each value's and parameter's address -> (its binding's index,
        first byte, last byte + 1) (``bounds.instrument``)."""
        found: dict[ir.Value, tuple[int, ir.Value, ir.Value]] = {}
        for index, key in enumerate(self.bindings):
            words = self.loaded[key]
            if key[0] == "value":
                found[words[0]] = (index, words[3], words[4])
            elif key[0] == "param":
                found[words[0]] = (index, words[1], words[2])
        return found

    def integer(self, name: str, value: int) -> ir.Value:
        """``value`` (an ``i64``) read from the table, not written into the code: kernels that
        differ only in it share one function. Bound as ``("int", "name=value")``."""
        return self._bind(("int", f"{name}={value}"), None)[0]


@dataclass
class KernelBuilder:
    """Emits one kernel worker: the builder, and where the kernel finds its data. ``dtype``
    is the kernel's (its output's); ``lanes`` fill one vector register of it."""

    graph: Graph
    builder: ir.IRBuilder
    dtype: DType
    lanes: int
    addresses: BoundAddresses
    param_index: dict[str, int]  # shared with the module builder: packings add entries
    packings: dict[str, tuple[str, int]] = field(default_factory=dict)  # shared too
    flat: bool = False  # every value seen as one row [C, prod(spatial)] (``flat_pointwise``)
    # the conv anchor's last-axis dilation and padding read at run time (``dilation_stacks``)
    runtime_dilation: bool = False
    # the conv anchor's input channels per group read at run time (``channel_stacks``)
    runtime_channels: bool = False
    plane: Plane | None = None  # a 2-D conv anchor walked over its flat plane (``flat_plane``)
    local: dict[int, list[ir.Value]] = field(default_factory=dict)

    @property
    def batch(self) -> ir.Value:
        return self.addresses.batch

    @property
    def element(self) -> ir.Type:
        """``float`` or ``double``: what the kernel computes in."""
        return ELEMENTS[self.dtype]

    def type_of(self, value: int) -> TensorType:
        return self.graph.type_of(value)

    def spatial(self, value: int) -> tuple[int, ...]:
        """Spatial sizes of ``value`` as this kernel walks it (one flat row if ``flat``)."""
        sizes = spatial_of(self.type_of(value))
        return (math.prod(sizes),) if self.flat else sizes

    def strides(self, value: int) -> tuple[int, ...]:
        """Element strides of ``(channel, *self.spatial(value))`` in one batch entry."""
        strides = strides_of(self.type_of(value))
        return (strides[0], strides[-1]) if self.flat else strides

    # ---- addresses --------------------------------------------------------------------------

    @contextmanager
    def items(self, total: ir.Value, name: str = "item") -> Iterator[ir.Value]:
        """``for item in range(total)``, the items shared out between the threads running the
        kernel, chunk by chunk (``parallel.work_chunks``)."""
        counter, parts = self.addresses.counter()
        with (
            work_chunks(self.builder, total, counter, parts, self.addresses.side) as (lo, hi),
            for_range(self.builder, lo, hi, name=name) as item,
        ):
            yield item

    def entry(self, value: int, n: ir.Value) -> ir.Value:
        """``float*`` (``double*``) to batch entry ``n`` of ``value``."""
        base, per_entry = self.addresses.value(value)
        return gep(self.builder, base, self.builder.mul(n, per_entry))

    def integer(self, name: str, value: int) -> ir.Value:
        """``value`` as an ``i64`` the code reads at run time (``BoundAddresses.integer``)."""
        return self.addresses.integer(name, value)

    def param(self, name: str) -> ir.Value:
        """``float*`` to the parameter ``name`` (declared, derived or packed)."""
        if name not in self.param_index:
            raise InternalError(f"no parameter named {name}")
        return self.addresses.param(name)

    def packed_param(self, name: str, block: int) -> ir.Value:
        """``float*`` to conv weight ``name`` ``[O, Cg, *K]`` repacked as ``[O // block, Cg,
        taps, block]`` (then any rest of the channels), so the ``block`` weights one input
        vector meets are adjacent (see ``pack_weight``); the executable makes the array when
        it binds weights."""
        key = f"{name}@pack{block}"
        if key not in self.param_index:
            self.param_index[key] = len(self.param_index)
            self.packings[key] = (name, block)
        return self.param(key)

    def offset(
        self, value: int, channel: ir.Value, outer: tuple[ir.Value, ...], w: ir.Value
    ) -> ir.Value:
        """Element offset of ``(channel, *outer, w)`` inside one batch entry of ``value``."""
        b = self.builder
        strides = self.strides(value)
        along = w if strides[-1] == 1 else b.mul(w, i64(strides[-1]))
        total = b.add(b.mul(channel, i64(strides[0])), along)
        for index, stride in zip(outer, strides[1:-1], strict=True):
            total = b.add(total, b.mul(index, i64(stride)))
        return total

    def pointers(self, value: int, point: Point) -> list[ir.Value]:
        """``float*`` to channel ``point.c + j`` of ``value`` at ``point``, for every ``j`` of
        the block: the address is computed once, the channels are constant offsets from it
        (fewer instructions to build, print and optimize than one address per channel)."""
        b = self.builder
        at = self.offset(value, point.c, point.outer, point.w)
        first = gep(b, self.entry(value, point.n), at)
        stride = self.strides(value)[0]
        return [first, *(gep(b, first, j * stride) for j in range(1, point.block))]

    # ---- values at a point ------------------------------------------------------------------

    def operand(self, value: int, point: Point) -> list[ir.Value]:
        """``value`` at ``point``: computed by an earlier part, or loaded from memory."""
        if value in self.local:
            return self.local[value]
        return self.operand_at(value, point)

    def operand_at(self, value: int, point: Point) -> list[ir.Value]:
        """``value`` loaded from memory at ``point`` (which need not be the kernel's own)."""
        b = self.builder
        mask = valid_mask(point) if point.valid is not None else None
        step = self.strides(value)[-1]
        if step != 1 and point.lanes > 1:  # channels last: lanes ``step`` elements apart
            checked = self.addresses.bounds
            return [
                strided_load(b, at, step, point.lanes, mask, checked)
                for at in self.pointers(value, point)
            ]
        if mask is not None:
            return [masked_load(b, at, mask, point.lanes) for at in self.pointers(value, point)]
        return [load_vec(b, at, point.lanes) for at in self.pointers(value, point)]

    def store(self, value: int, point: Point, vectors: list[ir.Value]) -> None:
        b = self.builder
        mask = valid_mask(point) if point.valid is not None else None
        step = self.strides(value)[-1]
        for vector, at in zip(vectors, self.pointers(value, point), strict=True):
            if step != 1 and point.lanes > 1:
                strided_store(b, vector, at, step, mask, self.addresses.bounds)
            elif mask is not None:
                masked_store(b, vector, at, mask)
            else:
                store_vec(b, vector, at)


def valid_mask(point: Point) -> ir.Constant:
    assert point.valid is not None
    return ir.Constant(
        ir.VectorType(I1, point.lanes), [lane < point.valid for lane in range(point.lanes)]
    )


def node_output_type(graph: Graph, node: Node) -> TensorType:
    return graph.type_of(node.output)


def itemsize(graph: Graph, value: int) -> int:
    """Bytes of one element of ``value``."""
    return graph.type_of(value).dtype.numpy.itemsize


def pack_weight(weight: np.ndarray, block: int, dtype: np.dtype) -> np.ndarray:
    """``[O, Cg, *K]`` -> ``[O // block, Cg, taps, block]``, then the ``rest = O % block``
    channels left as ``[Cg, taps, rest]`` (flat, contiguous, of ``dtype``)."""
    out_channels, group_in = weight.shape[:2]
    taps = math.prod(weight.shape[2:])
    full = out_channels // block * block
    blocks = weight[:full].reshape(out_channels // block, block, group_in, taps)
    rest = weight[full:].reshape(out_channels - full, group_in, taps)
    parts = (blocks.transpose(0, 2, 3, 1).ravel(), rest.transpose(1, 2, 0).ravel())
    return np.concatenate(parts).astype(dtype, copy=False)
