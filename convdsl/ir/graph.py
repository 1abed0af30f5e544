"""The IR graph: plain, frozen, typed data.

A ``Graph`` holds ``Value``s (tensors, identified by integer id), ``Node``s in a topological
order (each an op with input/output value ids, attributes and the span of the source that made
it), the graph's named inputs and outputs, and its parameters. Passes never mutate a graph:
they build a new one (``dataclasses.replace``). Consumers of a value are computed, not stored.

Before shape inference value types are ``None`` and attributes are as the user wrote them;
after it every value is typed, attributes are resolved to explicit per-axis form (``padding=same``
becomes ``pads=((0, 1), (0, 1))``) and ``params`` lists every parameter with its shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from convdsl.diagnostics import Source, Span
from convdsl.ir.boundary import ChannelsLastDecl
from convdsl.ir.memory_plan import MemoryPlan
from convdsl.ir.symbolic import Cond, Expr, Ratio
from convdsl.ir.types import Dim, DType, TensorType


class Attrs(Mapping[str, Any]):
    """An immutable, hashable mapping of attribute name to value (ints, strs, tuples, ...)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        merged = dict(items or {}, **kwargs)
        self._items: tuple[tuple[str, Any], ...] = tuple(sorted(merged.items()))

    def __getitem__(self, key: str) -> Any:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Attrs) and self._items == other._items

    def __repr__(self) -> str:
        return "Attrs(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"

    def replace(self, **changes: Any) -> Attrs:
        return Attrs(dict(self._items), **changes)


@dataclass(frozen=True, slots=True)
class CallSite:
    """A block call that inlined a node: the block's name and where it was called."""

    block: str
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Value:
    """A tensor: ``name`` is what the user called it (made unique); ``type`` is None until
    shape inference."""

    id: int
    name: str
    type: TensorType | None
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Node:
    """One op application. ``name`` is the layer name.

    ``params`` maps each parameter role (``weight``, ``bias``...) to the parameter the node
    reads: ``{name}.{role}`` as declared by shape inference, or a derived parameter once a pass
    has folded something into it. A *fused kernel* has op ``"fused"``: ``parts`` are its member
    nodes in execution order (the first is its anchor, whose name and span it keeps), ``inputs``
    the values it reads from outside and ``outputs`` the one value it leaves behind.

    ``arg_spans`` maps an argument name to where the user wrote it, so an error about
    ``kernel`` points at ``kernel=7`` rather than at the whole call. ``call_sites`` lists the
    block calls (innermost first) that inlined this node, for "in block ... called here" notes.
    """

    op: str
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    attrs: Attrs
    span: Span = field(compare=False)
    arg_spans: Mapping[str, Span] = field(default_factory=dict, compare=False, hash=False)
    call_sites: tuple[CallSite, ...] = field(default=(), compare=False)
    params: Attrs = field(default_factory=Attrs)
    parts: tuple[Node, ...] = ()

    @property
    def output(self) -> int:
        """The single output of a one-output op."""
        (value,) = self.outputs
        return value

    def param(self, role: str) -> str:
        """The name of the parameter this node reads for ``role``."""
        return str(self.params[role])

    @property
    def is_fused(self) -> bool:
        return self.op == FUSED


FUSED = "fused"
"""The op of a fused kernel (see ``Node.parts``)."""

RELAYOUT = "relayout"
"""The op of a layout conversion: its one output is its input stored as its type's ``layout``
says (``convdsl.passes.layout``); not an op of the language."""


@dataclass(frozen=True, slots=True)
class Param:
    """A learned array owned by a node: ``name`` is ``{layer}.{role}`` (e.g. ``score4.weight``).

    ``init`` says how it is initialized without a weights file (see ``convdsl.weights``), and
    ``fan_in`` scales that initialization.
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType
    init: str
    fan_in: int
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class DerivedParam:
    """A parameter computed from others when weights are bound, never stored in a weights file.

    Folding passes make these: a conv's weight scaled by the batch norm folded into it is
    ``DerivedParam("c1.weight@bn", ..., recipe="bn_fold_weight", sources=(c1.weight, bn...))``.
    ``recipe`` names a function in ``convdsl.ir.derived``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType
    recipe: str
    sources: tuple[str, ...]
    attrs: Attrs = field(default_factory=Attrs)


@dataclass(frozen=True, slots=True)
class Expectation:
    """A shape annotation (``: [N, 64, H/2, 56]``) on a statement; ``_`` dims match anything,
    a ``Ratio`` a size that is exactly that quotient."""

    value: int
    dims: tuple[Dim | Ratio, ...]
    span: Span = field(compare=False)
    call_sites: tuple[CallSite, ...] = field(default=(), compare=False)


@dataclass(frozen=True, slots=True)
class SizeConstraint:
    """A condition on the input sizes that a layer (or an annotation) needs, found by shape
    inference over symbolic sizes: ``cond`` must hold for the network to be valid."""

    cond: Cond
    what: str  # the op, or "annotation"
    span: Span = field(compare=False)
    call_sites: tuple[CallSite, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Graph:
    name: str
    source: Source
    values: Mapping[int, Value]
    inputs: tuple[int, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[tuple[str, int], ...]
    params: Mapping[str, Param] = field(default_factory=dict)
    expectations: tuple[Expectation, ...] = ()
    derived: Mapping[str, DerivedParam] = field(default_factory=dict)
    memory: MemoryPlan | None = None  # set by the memory-planning pass
    constraints: tuple[SizeConstraint, ...] = ()  # set by shape inference over symbolic sizes
    written: Graph | None = None
    """A graph with symbolic sizes keeps the front end's graph it was inferred from: the one
    ``passes.specialize`` binds to concrete sizes."""
    channels_last_inputs: Mapping[int, ChannelsLastDecl] = field(default_factory=dict)
    """Inputs (by value) the caller passes channels-last (``input x: nhwc f32[...]``)."""
    channels_last_outputs: Mapping[str, ChannelsLastDecl] = field(default_factory=dict)
    """Outputs (by name) the caller gets channels-last (``output y: nhwc = ...``)."""

    def type_of(self, value: int) -> TensorType:
        """The inferred type of a value (only valid after shape inference)."""
        value_type = self.values[value].type
        if value_type is None:
            from convdsl.diagnostics import InternalError

            raise InternalError(f"value %{self.values[value].name} used before shape inference")
        return value_type

    def input_types(self, node: Node) -> list[TensorType]:
        return [self.type_of(v) for v in node.inputs]

    def producers(self) -> dict[int, Node]:
        """Value id -> the node that writes it (graph inputs have none)."""
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[int, list[Node]]:
        """Value id -> the nodes that read it, in schedule order."""
        readers: dict[int, list[Node]] = {v: [] for v in self.values}
        for node in self.nodes:
            for v in dict.fromkeys(node.inputs):
                readers[v].append(node)
        return readers

    @property
    def is_symbolic(self) -> bool:
        """Whether an input has a symbolic spatial size: the graph must be specialized to
        concrete sizes (``passes.specialize``) before the optimizing passes and a backend."""
        return any(
            self.values[v].type is not None and self.type_of(v).is_symbolic for v in self.inputs
        )

    def size_names(self) -> list[str]:
        """The input size names (``H``, ``W``...) in order of first appearance."""
        names: dict[str, None] = {}
        for v in self.inputs:
            value_type = self.values[v].type
            for dim in value_type.shape[2:] if value_type is not None else ():
                names.update(dict.fromkeys(sorted(dim.symbols())) if isinstance(dim, Expr) else {})
        return list(names)

    def input_names(self) -> list[str]:
        return [self.values[v].name for v in self.inputs]

    def output_names(self) -> list[str]:
        return [name for name, _ in self.outputs]
