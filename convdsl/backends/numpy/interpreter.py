"""The NumPy interpreter: the reference backend and the executable specification.

Runs a typed, resolved graph node by node. Each op is one short function from the node's
inputs, attributes and parameters to its outputs, built on the array kernels in ``kernels``.
An intermediate array is released after its last reader, so peak memory follows liveness.
``arena.ArenaExecutable`` runs the same kernels with every activation inside the one arena of a
graph's memory plan, which proves the plan; this default path never reads the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from convdsl.backends.numpy import axis
from convdsl.backends.numpy import kernels as k
from convdsl.diagnostics import InternalError
from convdsl.ir import boundary
from convdsl.ir.graph import RELAYOUT, Graph, Node

Array = np.ndarray
Params = Mapping[str, Array]
OpFn = Callable[[Node, Sequence[Array], Params], Array]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "none": lambda x: x,
    "relu": k.relu,
    "relu6": k.relu6,
    "sigmoid": k.sigmoid,
    "tanh": k.tanh,
    "gelu": lambda x: k.gelu(x, approximate="none"),
    "silu": k.silu,
    "hard_swish": k.hard_swish,
    "selu": k.selu,
    "softplus": lambda x: k.softplus(x, beta=1.0, threshold=20.0),
    "mish": k.mish,
}


def _bias(node: Node, params: Params) -> Array | None:
    return params[node.param("bias")] if node.attrs["bias"] else None


def _conv(node: Node, xs: Sequence[Array], params: Params) -> Array:
    a = node.attrs
    y = k.conv(
        xs[0],
        params[node.param("weight")],
        _bias(node, params),
        stride=a["stride"],
        dilation=a["dilation"],
        pads=a["pads"],
        groups=a["groups"],
    )
    return ACTIVATIONS[a["activation"]](y)


def _conv_transpose(node: Node, xs: Sequence[Array], params: Params) -> Array:
    a = node.attrs
    y = k.conv_transpose(
        xs[0],
        params[node.param("weight")],
        _bias(node, params),
        stride=a["stride"],
        dilation=a["dilation"],
        pads=a["pads"],
        output_padding=a["output_padding"],
        groups=a["groups"],
    )
    return ACTIVATIONS[a["activation"]](y)


def _dense(node: Node, xs: Sequence[Array], params: Params) -> Array:
    y = k.dense(xs[0], params[node.param("weight")], _bias(node, params))
    return ACTIVATIONS[node.attrs["activation"]](y)


def _max_pool(node: Node, xs: Sequence[Array], params: Params) -> Array:
    a = node.attrs
    return k.max_pool(
        xs[0],
        kernel=a["kernel"],
        stride=a["stride"],
        dilation=a["dilation"],
        pads=a["pads"],
        ceil_mode=a["ceil_mode"],
    )


def _avg_pool(node: Node, xs: Sequence[Array], params: Params) -> Array:
    a = node.attrs
    return k.avg_pool(
        xs[0],
        kernel=a["kernel"],
        stride=a["stride"],
        pads=a["pads"],
        ceil_mode=a["ceil_mode"],
        include_pad=a["include_pad"],
    )


def _batch_norm(node: Node, xs: Sequence[Array], params: Params) -> Array:
    weight, bias, mean, var = (
        params[node.param(r)] for r in ("weight", "bias", "running_mean", "running_var")
    )
    return k.batch_norm(xs[0], weight, bias, mean, var, eps=node.attrs["eps"])


def _binary(fn: Callable[[Array, Array], Array]) -> OpFn:
    """add, sub, mul, div: each operand an input or, if a number, the attribute of its
    argument (``y=0.5``: ``x * 0.5``); NumPy broadcasts the rest."""

    def run(node: Node, xs: Sequence[Array], params: Params) -> Array:
        tensors = iter(xs)
        x, y = (node.attrs[arg] if arg in node.attrs else next(tensors) for arg in ("x", "y"))
        return fn(x, y)

    return run


def _prelu(node: Node, xs: Sequence[Array], params: Params) -> Array:
    return k.prelu(xs[0], params[node.param("weight")])


def _unary(fn: Callable[..., Array], *attr_names: str) -> OpFn:
    def run(node: Node, xs: Sequence[Array], params: Params) -> Array:
        return fn(xs[0], **{name: node.attrs[name] for name in attr_names})

    return run


def _with_attrs(fn: Callable[..., Array]) -> OpFn:
    """Ops whose resolved attributes are exactly the kernel's keyword arguments."""

    def run(node: Node, xs: Sequence[Array], params: Params) -> Array:
        return fn(xs[0], **dict(node.attrs))

    return run


OP_FUNCTIONS: dict[str, OpFn] = {
    **{f"conv{r}d": _conv for r in (1, 2, 3)},
    **{f"depthwise{r}d": _conv for r in (1, 2, 3)},
    **{f"conv_transpose{r}d": _conv_transpose for r in (1, 2, 3)},
    **{f"max_pool{r}d": _max_pool for r in (1, 2, 3)},
    **{f"avg_pool{r}d": _avg_pool for r in (1, 2, 3)},
    "add": _binary(k.add),
    "sub": _binary(k.sub),
    "mul": _binary(k.mul),
    "div": _binary(k.div),
    "relu": _unary(k.relu),
    "relu6": _unary(k.relu6),
    "leaky_relu": _unary(k.leaky_relu, "alpha"),
    "elu": _unary(k.elu, "alpha"),
    "sigmoid": _unary(k.sigmoid),
    "tanh": _unary(k.tanh),
    "gelu": _unary(k.gelu, "approximate"),
    "silu": _unary(k.silu),
    "hard_sigmoid": _unary(k.hard_sigmoid),
    "hard_swish": _unary(k.hard_swish),
    "clip": _unary(k.clip, "min", "max"),
    "selu": _unary(k.selu),
    "softplus": _unary(k.softplus, "beta", "threshold"),
    "mish": _unary(k.mish),
    "prelu": _prelu,
    "softmax": _unary(k.softmax),
    "batch_norm": _batch_norm,
    "global_avg_pool": _unary(k.global_avg_pool),
    "global_max_pool": _unary(k.global_max_pool),
    "concat": lambda node, xs, params: axis.concat(list(xs), axis=node.attrs["axis"]),
    "slice": _with_attrs(axis.slice_axis),
    "split": _with_attrs(axis.slice_axis),  # one part; its rule resolves it to a slice
    "space_to_depth": _with_attrs(axis.space_to_depth),
    "flatten": _unary(k.flatten),
    "dense": _dense,
    "upscale": _with_attrs(k.upscale),
    "pixel_shuffle": _with_attrs(k.pixel_shuffle),
    "pad": _with_attrs(k.pad),
    "crop": _with_attrs(k.crop),
    # a layout conversion (phase rows, channels last): this interpreter keeps every value as
    # a logical array
    RELAYOUT: lambda node, xs, params: xs[0],
}


class NumpyExecutable:
    """A graph bound to its parameters (declared and derived), runnable on NumPy arrays."""

    def __init__(self, graph: Graph, params: Params) -> None:
        self.graph = graph
        self.params = params
        ops = {part.op for node in graph.nodes for part in _parts(node)}
        missing = sorted(ops - OP_FUNCTIONS.keys())
        if missing:
            raise InternalError(f"the NumPy interpreter has no implementation of {missing}")
        self._last_reader = _last_readers(graph)

    def run(self, inputs: Mapping[int, Array]) -> dict[int, Array]:
        """Value id -> array for the graph inputs; returns value id -> array for the outputs.
        Arrays are as the graph stores them: one stored channels-last is transposed here, at
        the boundary, as every value inside is a logical ``[N, C, *spatial]`` array."""
        env: dict[int, Array] = boundary.logical_inputs(self.graph, inputs)
        keep = {value for _, value in self.graph.outputs}
        for index, node in enumerate(self.graph.nodes):
            env[node.output] = self.run_node(node, [env[v] for v in node.inputs])
            for value in node.inputs:
                if self._last_reader.get(value) == index and value not in keep:
                    env.pop(value, None)
        return boundary.stored_outputs(
            self.graph, {value: env[value] for _, value in self.graph.outputs}
        )

    def run_node(self, node: Node, args: Sequence[Array]) -> Array:
        """One node; a fused kernel runs its parts in order on values local to it."""
        local: dict[int, Array] = dict(zip(node.inputs, args, strict=True))
        for part in _parts(node):
            try:
                result = OP_FUNCTIONS[part.op](part, [local[v] for v in part.inputs], self.params)
            except Exception as exc:
                where = f" in fused kernel '{node.name}'" if node.is_fused else ""
                raise InternalError(
                    f"the NumPy interpreter failed on {part.op} '{part.name}'{where}: "
                    f"{type(exc).__name__}: {exc}",
                    part.span,
                ) from exc
            local[part.output] = result
        return local[node.output]


def _parts(node: Node) -> tuple[Node, ...]:
    return node.parts if node.is_fused else (node,)


def _last_readers(graph: Graph) -> dict[int, int]:
    last: dict[int, int] = {}
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            last[value] = index
    return last
