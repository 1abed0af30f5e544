"""Operator fusion: fold each producer into its consumer's kernel as an epilogue.

Expects: a typed, resolved graph (after ``shapes``, and after simplification and folding when
they run). Guarantees: the same outputs, computed by fewer nodes; each group of fused nodes
becomes one ``fused`` node (see ``Node.parts``) at the schedule position of its last member,
reading only values written before it, and only its last member's output escapes it. Nodes
not fused with anything are left as they are. Declared and derived parameters are unchanged.

The rules, in the terms of ``FusionClass``:

* A *candidate edge* is a producer node P feeding an *epilogue-capable* consumer C: an
  elementwise op (add, mul, activations, batch_norm) or an index map applied at the store
  (crop, pixel_shuffle). ``pad`` is not one: its output is larger than its input, so a store
  could not write its border.
* P joins C's kernel only if C is P's one reader and P's output is not a network output.
* A kernel computes at most one *anchor*: a conv, pool, upscale, reduction (softmax, global
  pools) or concat; elementwise and index-map nodes are free to join any kernel. When several
  producers of C bring an anchor, the one whose anchor was scheduled last wins: fusing moves a
  producer's work to C's position, and the most recent anchor moves least, so the fewest
  values have to live longer (in WaveNet's skip sum each ``skip`` conv fuses into the add right
  after it instead of the whole sum chain being delayed to the end of the network).

The schedule is walked once, in order; a producer's kernel is final by the time its consumer is
reached, so the plan is deterministic. An anchor never reads from inside its kernel (anchors
take no fused producers), so it can run first: a kernel's parts are its anchor, then the other
members in schedule order. A kernel is named after its anchor, or after its first member when
it has none. ``plan_fusion`` also records every candidate edge left unfused, and why, for the
optimization report.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from convdsl.diagnostics import InternalError
from convdsl.ir.graph import FUSED, Attrs, Graph, Node
from convdsl.ir.ops import OPS, FusionClass

ANCHOR_CLASSES = frozenset(
    {
        FusionClass.CONV,
        FusionClass.POOL,
        FusionClass.RESAMPLE,
        FusionClass.REDUCE,
        FusionClass.CONCAT,
    }
)
"""Ops that a kernel is built around: at most one per kernel."""

STORE_INDEX_MAPS = frozenset({"crop", "pixel_shuffle"})
"""Index maps a kernel can apply when it stores its result (every input element lands in at
most one output element and every output element has a source)."""


@dataclass(frozen=True, slots=True)
class FusionGroup:
    """One fused kernel: ``kernel`` is its name (= ``anchor``, its first part's name);
    ``members`` are the fused node names in execution order, anchor first."""

    kernel: str
    anchor: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Blocked:
    """A candidate edge ``producer -> consumer`` left unfused; ``reason`` is a sentence in the
    user's terms (layer names, op names)."""

    producer: str
    consumer: str
    reason: str


@dataclass(frozen=True, slots=True)
class FusionPlan:
    """What ``fuse`` will do to a graph: the kernels of two or more nodes, the candidate edges
    left unfused, and the kernel count before and after.

    >>> import convdsl
    >>> net = convdsl.compile_string('''
    ... input x: f32[N, 3, 8, 8]
    ... c = conv2d(x, 4, kernel=3, padding=same)
    ... output y = relu(c)
    ... ''', opt_level=0)
    >>> plan = plan_fusion(net.graph)
    >>> plan.groups[0].members, plan.kernels_before, plan.kernels_after
    (('c', 'y'), 2, 1)
    """

    groups: tuple[FusionGroup, ...]
    blocked: tuple[Blocked, ...]
    kernels_before: int
    kernels_after: int


def plan_fusion(graph: Graph) -> FusionPlan:
    """Decide which nodes of ``graph`` share a kernel (see the module docstring for the rules)."""
    groups, blocked = _Planner(graph).run()
    nodes = graph.nodes
    named = tuple(
        FusionGroup(
            kernel=nodes[members[0]].name,
            anchor=nodes[members[0]].name,
            members=tuple(nodes[i].name for i in members),
        )
        for members in groups
    )
    fused_away = sum(len(members) - 1 for members in groups)
    return FusionPlan(named, tuple(blocked), len(nodes), len(nodes) - fused_away)


def fuse(graph: Graph) -> Graph:
    """The fusion pass: every group of ``plan_fusion`` becomes one ``fused`` node.

    Returns ``graph`` itself when nothing fuses.
    """
    groups, _ = _Planner(graph).run()
    if not groups:
        return graph
    tails = {members[-1]: members for members in groups}
    in_group = {i for members in groups for i in members}
    written = set(graph.inputs)
    nodes: list[Node] = []
    for index, node in enumerate(graph.nodes):
        if index in tails:
            node = _fused_node(graph, tails[index])
            missing = [v for v in node.inputs if v not in written]
            if missing:
                raise InternalError(
                    f"fusion placed kernel '{node.name}' before the writers of "
                    + ", ".join(f"%{graph.values[v].name}" for v in missing)
                )
        elif index in in_group:
            continue
        nodes.append(node)
        written.update(node.outputs)
    return replace(graph, nodes=tuple(nodes), memory=None)  # a memory plan indexes the schedule


def _fused_node(graph: Graph, members: tuple[int, ...]) -> Node:
    """The kernel of ``members`` (anchor first, then schedule order; the last one escapes)."""
    parts = tuple(graph.nodes[i] for i in members)
    inside: set[int] = set()
    inputs: dict[int, None] = {}
    for part in parts:
        inputs.update((v, None) for v in part.inputs if v not in inside)
        inside.update(part.outputs)
    anchor = parts[0]
    return Node(
        op=FUSED,
        name=anchor.name,
        inputs=tuple(inputs),
        outputs=(parts[-1].output,),
        attrs=Attrs(),
        span=anchor.span,
        call_sites=anchor.call_sites,
        parts=parts,
    )


@dataclass(slots=True)
class _Group:
    """A kernel being built: schedule indices of its members and of its anchor, if any."""

    members: list[int]
    anchor: int | None = None


class _Planner:
    """One walk over the schedule, growing each consumer's kernel from its producers'."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.writer = {v: i for i, node in enumerate(graph.nodes) for v in node.outputs}
        self.readers = graph.consumers()
        self.outputs: dict[int, list[str]] = {}
        for name, value in graph.outputs:
            self.outputs.setdefault(value, []).append(name)
        self.group_of: list[_Group] = []
        self.blocked: list[Blocked] = []

    def run(self) -> tuple[list[tuple[int, ...]], list[Blocked]]:
        """The kernels of two or more nodes (member indices, anchor first, then schedule
        order), in the schedule order of their last members; and the blocked edges."""
        for index, node in enumerate(self.graph.nodes):
            if _takes_producers(node):
                group = self._grow(index)
            else:
                group = _Group([index], index if _is_anchor(node) else None)
            self.group_of.append(group)
            for member in group.members:
                self.group_of[member] = group
        unique = {id(group): group for group in self.group_of}.values()
        kernels = [_execution_order(group) for group in unique if len(group.members) > 1]
        return sorted(kernels, key=max), self.blocked

    def _grow(self, index: int) -> _Group:
        """Consumer ``index``'s kernel: itself plus every producer kernel allowed to join."""
        consumer = self.graph.nodes[index]
        candidates: list[tuple[int, _Group]] = []
        for value in dict.fromkeys(consumer.inputs):
            producer = self.writer.get(value)
            if producer is None or self.graph.nodes[producer].is_fused:
                continue  # a graph input, or a kernel fused by an earlier run
            reason = self._escape_reason(producer, value)
            if reason is None:
                candidates.append((producer, self.group_of[producer]))
            else:
                self._block(producer, index, reason)
        anchored = [group for _, group in candidates if group.anchor is not None]
        winner = max(anchored, key=lambda g: g.anchor or 0) if anchored else None
        group = _Group([], winner.anchor if winner else None)
        for producer, producer_group in candidates:
            if producer_group.anchor is not None and producer_group is not winner:
                self._block(producer, index, self._anchor_reason(group, producer, producer_group))
            else:
                group.members += producer_group.members
        group.members.append(index)
        return group

    def _escape_reason(self, producer: int, value: int) -> str | None:
        """Why ``value`` (written by ``producer``) must reach memory, or None if it need not."""
        node = self.graph.nodes[producer]
        if value in self.outputs:
            names = ", ".join(f"'{name}'" for name in self.outputs[value])
            return f"the output of {node.op} '{node.name}' is a network output ({names})"
        readers = self.readers[value]
        if len(readers) > 1:
            names = ", ".join(f"'{reader.name}'" for reader in readers)
            count = len(readers)
            return f"the output of {node.op} '{node.name}' is read by {count} layers ({names})"
        return None

    def _anchor_reason(self, group: _Group, producer: int, producer_group: _Group) -> str:
        assert group.anchor is not None and producer_group.anchor is not None
        anchor = self.graph.nodes[group.anchor]
        name = self.graph.nodes[producer].name
        other = self.graph.nodes[producer_group.anchor]
        where = f"'{name}'" if other.name == name else f"'{name}' (kernel '{other.name}')"
        return (
            f"kernel '{anchor.name}' already has an anchor ({anchor.op}); a kernel computes one "
            f"anchor, so {where} is read from memory"
        )

    def _block(self, producer: int, consumer: int, reason: str) -> None:
        nodes = self.graph.nodes
        self.blocked.append(Blocked(nodes[producer].name, nodes[consumer].name, reason))


def _execution_order(group: _Group) -> tuple[int, ...]:
    """Anchor first (it reads nothing from inside the kernel), then schedule order."""
    rest = sorted(m for m in group.members if m != group.anchor)
    if group.anchor is not None and group.anchor > rest[-1]:
        raise InternalError("fusion made a kernel whose anchor is scheduled after its last part")
    return tuple(rest if group.anchor is None else [group.anchor, *rest])


def _is_anchor(node: Node) -> bool:
    return not node.is_fused and OPS[node.op].fusion in ANCHOR_CLASSES


def _takes_producers(node: Node) -> bool:
    """Whether ``node`` can be a kernel's epilogue, computed on the values its producers hold."""
    if node.is_fused:
        return False
    return OPS[node.op].fusion is FusionClass.ELEMENTWISE or node.op in STORE_INDEX_MAPS
