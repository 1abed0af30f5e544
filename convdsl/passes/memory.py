"""Static memory planning: one arena for every activation, offsets fixed at compile time.

Expects the final schedule: a typed graph after fusion, whose ``nodes`` order is the execution
order. A fused kernel is one kernel: only its output is planned; its parts' values live inside
the kernel and never in the arena. Guarantees ``graph.memory`` is a ``MemoryPlan`` that
``check_plan`` accepts; nothing else in the graph changes.

Planned values are the outputs of kernels (graph outputs included, live to ``len(nodes)``);
graph inputs stay in the caller's arrays. Sizes and offsets are per unit of dim 0: a value of
shape ``[B, *rest]`` takes ``prod(rest) * itemsize`` bytes per unit. Every op keeps dim 0, so a
graph with a static batch, or with two symbolic batch names, is planned the same way and run
with an arena of ``arena_bytes * B`` where ``B`` is the largest dim 0 bound at run time.

Sharing. Values join in a tree through ``Buffer.shares``:

- in place: an elementwise kernel (an ELEMENTWISE op, or a fused kernel whose parts all are)
  writes its output over an input of the same shape and size that dies there (its last reader
  is this kernel and it is not a graph output); the output's buffer ``shares`` that input.
- concat without a copy: each input of an (unfused) ``concat`` that is written by a kernel,
  read by this concat alone and not a graph output (the concat listing each input once) is
  written straight into its channel slice of the concat's output, with whatever it shares in
  place; the slice ``shares`` the concat output, at ``offset`` = concat offset + bytes of the
  channels before it. The concat itself then copies only its other inputs (a U-Net skip, also
  read by the next level's pool), and is no kernel at all when there are none.

Layout rule (how a backend addresses a buffer for ``B`` batch units): follow ``shares`` to the
root buffer ``R``; batch entry ``n`` of value ``v`` is the ``v.size`` contiguous bytes at
``R.offset * B + n * R.size + (v.offset - R.offset)``. For a root, or a value shared in place,
that is the plain contiguous ``[B, ...]`` array at ``offset * B``. A concat slice is not
contiguous across the batch for ``B > 1``: its batch stride is the concat's ``R.size``, so its
producer writes a strided view. Slices are therefore packed with their root as one rigid block
whose lifetime spans all its members, and two blocks live at once never overlap per unit, which
keeps them apart at every ``B``. Roots sit at 64-byte aligned offsets; slices only as aligned
as their channel offset.

Placement is greedy by size: blocks sorted by size (largest first, ties by first use), each at
the lowest aligned offset free of every placed block whose lifetime intersects its own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Graph, Node
from convdsl.ir.memory_plan import Buffer, MemoryPlan
from convdsl.ir.ops import OPS, FusionClass, is_channel_concat

ALIGNMENT = 64
PARTIAL_CONCATS = True  # slice the inputs a concat need not copy even if it copies others


def plan_memory(graph: Graph) -> Graph:
    """Plan every kernel output into one arena; returns the graph with ``memory`` set.

    Slicing only some inputs of a concat saves their copies but ties them to the concat's
    block earlier, which can make the arena bigger (U-Net: 1.25x): the plan with those slices
    is kept unless the one with whole concats only is smaller (N5: 26 MiB with, 32 without)."""
    live = Liveness.of(graph)
    inplace = _inplace_links(graph, live)
    partial = _concat_links(graph, live, inplace)
    whole = {
        value: link
        for value, link in partial.items()
        if all(_head(v, inplace) in partial for v in _concat_of(graph, link[0]))
    }
    plans = [_plan(live, inplace, whole)]
    if PARTIAL_CONCATS and whole != partial:
        plans.insert(0, _plan(live, inplace, partial))
    return replace(graph, memory=min(plans, key=lambda plan: plan.arena_bytes))


def _concat_of(graph: Graph, output: int) -> tuple[int, ...]:
    """The inputs of the concat writing ``output``."""
    return next(node.inputs for node in graph.nodes if output in node.outputs)


def _plan(
    live: Liveness, inplace: dict[int, int], slices: dict[int, tuple[int, int]]
) -> MemoryPlan:
    blocks = _blocks(live, inplace, slices)
    bases = _place(blocks)
    buffers: dict[int, Buffer] = {}
    for block, base in zip(blocks, bases, strict=True):
        for value, relative in block.members.items():
            shares = inplace.get(value, slices.get(value, (None, 0))[0])
            place = (base + relative, live.size[value], live.first[value], live.last[value])
            buffers[value] = Buffer(value, *place, shares=shares)
    arena = max((b.offset + b.size for b in buffers.values()), default=0)
    return MemoryPlan(
        buffers=dict(sorted(buffers.items())),
        arena_bytes=_align(arena),
        naive_bytes=sum(_align(size) for size in live.size.values()),
        lower_bound_bytes=live.lower_bound(),
        alignment=ALIGNMENT,
    )


@dataclass
class Liveness:
    """Each planned value's bytes per batch unit and the schedule steps it is live."""

    steps: int  # len(nodes); graph outputs live until this step
    size: dict[int, int] = field(default_factory=dict)
    first: dict[int, int] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)
    readers: dict[int, list[int]] = field(default_factory=dict)

    @staticmethod
    def of(graph: Graph) -> Liveness:
        live = Liveness(len(graph.nodes))
        for index, node in enumerate(graph.nodes):
            for value in dict.fromkeys(node.inputs):
                live.readers.setdefault(value, []).append(index)
            for value in node.outputs:
                live.first[value] = index
                live.size[value] = _bytes_per_unit(graph, value)
        outputs = {value for _, value in graph.outputs}
        for value, first in live.first.items():
            reads = live.readers.get(value, [])
            live.last[value] = live.steps if value in outputs else max(reads, default=first)
        return live

    def lower_bound(self) -> int:
        """The most bytes live at one step when no two values share memory."""
        delta = [0] * (self.steps + 2)
        for value, size in self.size.items():
            delta[self.first[value]] += size
            delta[self.last[value] + 1] -= size
        return max(itertools.accumulate(delta))


def _bytes_per_unit(graph: Graph, value: int) -> int:
    value_type = graph.type_of(value)
    rest = value_type.shape[1:]
    if not all(isinstance(d, int) for d in rest):
        raise InternalError(f"cannot plan %{graph.values[value].name}: symbolic dim after dim 0")
    return value_type.stored_elements * value_type.dtype.numpy.itemsize


def _align(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def is_elementwise(node: Node) -> bool:
    """True for a kernel whose every output element reads only the same element of its inputs."""
    parts = node.parts if node.is_fused else (node,)
    return all(part.op in OPS and OPS[part.op].fusion is FusionClass.ELEMENTWISE for part in parts)


def _dies_at(live: Liveness, value: int, index: int) -> bool:
    """A planned value whose last reader is kernel ``index`` (graph outputs never die)."""
    return value in live.first and live.last[value] == index < live.steps


def _inplace_links(graph: Graph, live: Liveness) -> dict[int, int]:
    """Elementwise output -> the same-sized input dying at its kernel whose buffer it takes."""
    links: dict[int, int] = {}
    for index, node in enumerate(graph.nodes):
        if not is_elementwise(node):
            continue
        for value in dict.fromkeys(node.inputs):
            # the same shape, not only the same bytes per batch entry: a batch-1 operand
            # broadcast over the batch is read by every entry, so it cannot be overwritten
            same_shape = graph.type_of(value).shape == graph.type_of(node.output).shape
            same_size = live.size.get(value) == live.size[node.output]
            if same_shape and same_size and _dies_at(live, value, index):
                links[node.output] = value
                break
    return links


def _concat_links(
    graph: Graph, live: Liveness, inplace: dict[int, int]
) -> dict[int, tuple[int, int]]:
    """Concat input -> (concat output, byte offset of its channel slice) for the inputs a
    concat need not copy (module doc)."""
    links: dict[int, tuple[int, int]] = {}
    for index, node in enumerate(graph.nodes):
        if not is_channel_concat(node.op, node.attrs) or len(set(node.inputs)) != len(node.inputs):
            continue
        relative = 0
        for value in node.inputs:
            if live.readers.get(value) == [index] and _dies_at(live, value, index):
                links[_head(value, inplace)] = (node.output, relative)
            relative += _bytes_per_unit(graph, value)
    return links


def _head(value: int, inplace: dict[int, int]) -> int:
    """The earliest value of an in-place chain: the one that owns the chain's placement."""
    while value in inplace:
        value = inplace[value]
    return value


@dataclass
class _Block:
    """Values packed together: a root, its in-place chain and its concat slices, rigidly."""

    members: dict[int, int]  # value -> byte offset from the block's start
    size: int
    first: int
    last: int


def _blocks(
    live: Liveness, inplace: dict[int, int], slices: dict[int, tuple[int, int]]
) -> list[_Block]:
    """Group values by the root of their sharing tree; each member's offset from the root."""
    relative: dict[int, tuple[int, int]] = {}  # value -> (root, offset from root)

    def locate(value: int) -> tuple[int, int]:
        if value not in relative:
            head = _head(value, inplace)
            if head in slices:
                concat, offset = slices[head]
                root, base = locate(concat)
                relative[value] = (root, base + offset)
            else:
                relative[value] = (head, 0)
        return relative[value]

    blocks: dict[int, _Block] = {}
    for value in live.first:
        root, offset = locate(value)
        block = blocks.setdefault(root, _Block({}, live.size[root], live.first[root], 0))
        block.members[value] = offset
        block.first = min(block.first, live.first[value])
        block.last = max(block.last, live.last[value])
    return sorted(blocks.values(), key=lambda b: (-b.size, b.first, min(b.members)))


def _place(blocks: list[_Block]) -> list[int]:
    """Greedy by size: each block at the lowest aligned offset no live placed block covers."""
    placed: list[tuple[int, int, _Block]] = []  # (start, end, block)
    bases = []
    for block in blocks:
        busy = sorted(
            (start, end)
            for start, end, other in placed
            if other.first <= block.last and block.first <= other.last
        )
        base = 0
        for start, end in busy:
            if base + block.size <= start:
                break
            base = max(base, _align(end))
        placed.append((base, base + block.size, block))
        bases.append(base)
    return bases


# ---- checking -------------------------------------------------------------------------------


def check_plan(graph: Graph) -> None:
    """Raise ``InternalError`` unless ``graph.memory`` is a sound plan for this schedule."""
    problems = list(plan_problems(graph))
    if problems:
        raise InternalError("invalid memory plan: " + "; ".join(problems[:5]))


def root_of(plan: MemoryPlan, value: int) -> Buffer:
    """The buffer at the root of ``value``'s sharing tree (its own if it shares nothing)."""
    buffer = plan.buffers[value]
    seen = {value}
    while buffer.shares is not None:
        buffer = plan.buffers[buffer.shares]
        if buffer.value in seen:
            raise InternalError(f"memory plan: sharing cycle through %{value}")
        seen.add(buffer.value)
    return buffer


def plan_problems(graph: Graph) -> Iterator[str]:
    """Every way ``graph.memory`` breaks the rules in the module docstring."""
    plan = graph.memory
    if plan is None:
        yield "the graph has no memory plan"
        return
    live = Liveness.of(graph)
    if set(plan.buffers) != set(live.first):
        planned, outputs = sorted(plan.buffers), sorted(live.first)
        yield f"planned values {planned} are not the kernel outputs {outputs}"
        return
    basic = list(_buffer_problems(plan, live))
    yield from basic
    if not basic:
        yield from _sharing_problems(graph, plan)
        yield from _overlap_problems(graph, plan)


def _buffer_problems(plan: MemoryPlan, live: Liveness) -> Iterator[str]:
    for value, b in plan.buffers.items():
        expected = (value, live.size[value], live.first[value], live.last[value])
        if (b.value, b.size, b.first, b.last) != expected:
            yield f"buffer of %{value} is stale: {b} (expected value, size, first, last {expected})"
        if b.offset < 0 or b.offset + b.size > plan.arena_bytes:
            yield f"buffer of %{value} [{b.offset}, {b.offset + b.size}) is outside the arena"
        if b.shares is not None and b.shares not in plan.buffers:
            yield f"buffer of %{value} shares unplanned %{b.shares}"


def _sharing_problems(graph: Graph, plan: MemoryPlan) -> Iterator[str]:
    for value, b in plan.buffers.items():
        if b.shares is None:
            if b.offset % plan.alignment:
                yield f"root buffer of %{value} at {b.offset} is not {plan.alignment}-byte aligned"
            continue
        parent = plan.buffers[b.shares]
        where = (parent.offset, parent.size) if _in_place(graph, parent, b) else None
        if where is None:
            where = _slice_of(graph, plan, b, parent)
        if where is None:
            yield f"%{value} shares %{parent.value}, neither in place nor as a slice of its concat"
        elif (b.offset, b.size) != where:
            yield f"%{value} is at {b.offset} +{b.size} in %{parent.value}, expected {where}"


def _slice_of(graph: Graph, plan: MemoryPlan, b: Buffer, concat: Buffer) -> tuple[int, int] | None:
    """Where ``b`` belongs if it is (the head of the in-place chain of) a slice of ``concat``."""
    node = graph.nodes[concat.first]
    if node.op != "concat":
        return None
    offset = concat.offset
    for value in node.inputs:
        step: int | None = value
        while step is not None and step != b.value and step != concat.value:
            step = plan.buffers[step].shares if step in plan.buffers else None
        if step == b.value:
            return offset, b.size
        offset += _bytes_per_unit(graph, value)
    return None


def _overlap_problems(graph: Graph, plan: MemoryPlan) -> Iterator[str]:
    """Live together and overlapping (at any batch size) is wrong, but for a legal handover."""
    buffers = sorted(plan.buffers.values(), key=lambda b: b.first)
    roots = {b.value: root_of(plan, b.value) for b in buffers}
    for i, u in enumerate(buffers):
        for w in buffers[i + 1 :]:
            if w.first > u.last:
                break
            ru, rw = roots[u.value], roots[w.value]
            if ru.value != rw.value:
                # Different trees stay apart at every batch size only if their roots do.
                clash = _overlap(ru, rw)
            else:
                clash = _overlap(u, w) and not _handover(graph, u, w)
            if clash:
                yield (
                    f"%{u.value} and %{w.value} are live together (steps {max(u.first, w.first)}"
                    f"..{min(u.last, w.last)}) and overlap in the arena"
                )


def _overlap(a: Buffer, b: Buffer) -> bool:
    return a.offset < b.offset + b.size and b.offset < a.offset + a.size


def _writes_over(graph: Graph, older: Buffer, newer: Buffer) -> bool:
    """``older`` dies at the kernel that writes ``newer``."""
    node = graph.nodes[newer.first]
    return (
        older.first < newer.first == older.last
        and older.value in node.inputs
        and node.output == newer.value
    )


def _in_place(graph: Graph, older: Buffer, newer: Buffer) -> bool:
    return _writes_over(graph, older, newer) and is_elementwise(graph.nodes[newer.first])


def _handover(graph: Graph, older: Buffer, newer: Buffer) -> bool:
    """A kernel reading ``older`` for the last time writes ``newer`` into the same bytes: in
    place (exactly its bytes) or a concat (its slices)."""
    if _in_place(graph, older, newer):
        return (older.offset, older.size) == (newer.offset, newer.size)
    return _writes_over(graph, older, newer) and graph.nodes[newer.first].op == "concat"
