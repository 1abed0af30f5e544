"""Arena execution: run a planned graph with every activation in one preallocated buffer.

The executable proof of a memory plan (``convdsl.passes.memory``). One byte arena of
``arena_bytes * B`` is allocated per run (``B`` = the largest dim 0 bound by the inputs); each
planned value is a NumPy view of it at its planned place, following the plan's layout rule (a
concat slice is a view with the concat's batch stride). Every kernel reads its inputs from
those views and stores its result into its own view; a concat whose inputs the plan put in its
slices copies nothing. If a plan let two live values overlap, a later reader sees clobbered
data; the arena starts as NaN bytes, so reading a slot nothing wrote shows up too.

>>> import numpy as np, convdsl
>>> from convdsl.ir.derived import materialize
>>> net = convdsl.compile_string('''
... input x: f32[N, 2, 4]
... a = relu(conv1d(x, 3, kernel=1))
... output y = a + conv1d(a, 3, kernel=1)
... ''')
>>> arena = ArenaExecutable(net.graph, materialize(net.graph, net.weights))
>>> x = np.ones((2, 2, 4), np.float32)
>>> (x_id,), ((_, y_id),) = net.graph.inputs, net.graph.outputs
>>> bool(np.array_equal(arena.run({x_id: x})[y_id], net(x=x)["y"]))
True
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from convdsl.backends.numpy.interpreter import Array, NumpyExecutable, Params
from convdsl.diagnostics import InternalError
from convdsl.ir import boundary
from convdsl.ir.graph import Graph
from convdsl.ir.memory_plan import Buffer
from convdsl.ir.ops import is_channel_concat
from convdsl.ir.types import bind_shape
from convdsl.passes.memory import root_of


class ArenaExecutable(NumpyExecutable):
    """A planned graph bound to its parameters, run inside one arena (see the module doc)."""

    def __init__(self, graph: Graph, params: Params) -> None:
        if graph.memory is None:
            raise InternalError("arena execution needs a memory plan (run the plan-memory pass)")
        super().__init__(graph, params)
        self.plan = graph.memory
        self._roots = {value: root_of(self.plan, value) for value in self.plan.buffers}
        self._copy_free = {
            index
            for index, node in enumerate(graph.nodes)
            if is_channel_concat(node.op, node.attrs)
            and all(self._inside(v, node.output) for v in node.inputs)
        }

    def run(self, inputs: Mapping[int, Array]) -> dict[int, Array]:
        """Value id -> array for the graph inputs; returns value id -> array for the outputs."""
        shapes = self._shapes(inputs)
        units = max((shapes[v][0] for v in self.plan.buffers), default=0)
        arena = np.full(self.plan.arena_bytes * units, 0xFF, np.uint8)  # 0xFF.. is a NaN
        env: dict[int, Array] = boundary.logical_inputs(self.graph, inputs)
        for value, buffer in self.plan.buffers.items():
            env[value] = self._view(arena, buffer, shapes[value], units)
        for index, node in enumerate(self.graph.nodes):
            if index in self._copy_free:
                continue
            result = self.run_node(node, [env[v] for v in node.inputs])
            slot = env[node.output]
            if result.shape != slot.shape:
                raise InternalError(
                    f"arena slot of {node.name} is {slot.shape}, its result {result.shape}"
                )
            slot[...] = result
        outputs = {value: np.array(env[value]) for _, value in self.graph.outputs}
        return boundary.stored_outputs(self.graph, outputs)

    def _inside(self, value: int, container: int) -> bool:
        """Whether the plan places ``value`` (through ``shares``) in ``container``'s buffer."""
        buffer = self.plan.buffers.get(value)
        while buffer is not None and buffer.shares is not None:
            if buffer.shares == container:
                return True
            buffer = self.plan.buffers[buffer.shares]
        return False

    def _shapes(self, inputs: Mapping[int, Array]) -> dict[int, tuple[int, ...]]:
        bindings: dict[str, int] = {}
        for value in self.graph.inputs:
            for dim, size in zip(self.graph.type_of(value).shape, inputs[value].shape, strict=True):
                if isinstance(dim, str):
                    bindings[dim] = size
        return {v: bind_shape(self.graph.type_of(v).shape, bindings) for v in self.plan.buffers}

    def _view(self, arena: Array, buffer: Buffer, shape: tuple[int, ...], units: int) -> Array:
        """Batch entry ``n`` at ``root.offset * units + n * root.size + (offset - root.offset)``."""
        root = self._roots[buffer.value]
        dtype = self.graph.type_of(buffer.value).dtype.numpy
        inner = [dtype.itemsize]
        for size in reversed(shape[2:]):
            inner.insert(0, inner[0] * size)
        return np.ndarray(
            shape,
            dtype,
            buffer=arena,
            offset=root.offset * units + buffer.offset - root.offset,
            strides=(root.size, *inner),
        )
