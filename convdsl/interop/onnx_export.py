"""ONNX export: a typed convdsl graph, as written, to an ONNX model (a back end of its own).

Input: a graph after shape inference only (``-O0``: no folding or fusion, so the file shows the
network the user wrote) and its parameter arrays. Output: an ``onnx.ModelProto`` with one ONNX
node per layer where ONNX has the op (node name = layer name; helper nodes of a layer are named
``layer/what``), value names = the IR's value names, initializer names = parameter names. The
batch stays dynamic (``dim_param`` ``N``) and so do spatial sizes the network leaves open: their
``dim_param`` is the size expression (``H``, ``H//2``), and every op either computes its size
itself or reads it from the inputs' ``Shape`` (``onnx_export_sizes``). What ONNX cannot express
exactly is refused with a ``ConvdslError`` naming the layer; nothing is approximated.

The per-op emitters are in ``onnx_export_ops`` (windows, movement) and
``onnx_export_activations`` (elementwise); the ``onnx`` package is imported only here and there,
when exporting.

>>> import convdsl
>>> net = convdsl.compile_string("input x: f32[N, 3, H, W]\\noutput y = relu(x)", backend="numpy")
>>> model = export_graph(export_graph_of(net), net.weights)
>>> [(n.op_type, n.name) for n in model.graph.node]
[('Relu', 'y')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convdsl.diagnostics import ConvdslError, Diagnostic, InternalError, error
from convdsl.interop.optional import require
from convdsl.ir.boundary import caller_order
from convdsl.ir.graph import Graph, Node
from convdsl.ir.symbolic import Expr, Symbol
from convdsl.ir.types import Dim
from convdsl.output_files import atomic_target, check_target

if TYPE_CHECKING:
    from convdsl.api import Network

MIN_OPSET = 13
"""The oldest opset exported: Slice, Split, Resize and Clip take their bounds as inputs, and
Softmax normalizes over one axis, from opset 13 on."""
DEFAULT_OPSET = 21
"""The default: Gelu (20) is a node of its own, and onnxruntime runs it."""


def export_graph_of(net: Network) -> Graph:
    """The graph to export for ``net``: its source compiled again at ``-O0`` (as written, shapes
    checked), at the sizes the network was fixed to if any."""
    from convdsl.passes.pipeline import compile_source

    return compile_source(net.graph.source, opt_level=0, sizes=net.fixed_sizes or None)


def export_graph(graph: Graph, weights: Mapping[str, np.ndarray], opset: int | None = None) -> Any:
    """``graph`` (typed, unfused) and its parameters as an ``onnx.ModelProto`` that passes
    ``onnx.checker.check_model(model, full_check=True)``."""
    onnx = require("onnx", "onnx", "ONNX export")
    from convdsl.interop.onnx_export_ops import EMITTERS

    opset = check_opset(opset, onnx)
    if any(node.is_fused for node in graph.nodes):
        raise InternalError("ONNX export needs the unfused graph (-O0)")
    builder = Builder(opset, graph)
    for name, param in graph.params.items():
        builder.reserve(name)
        if name not in weights:
            raise InternalError(f"no array for parameter {name}")
        builder.params[name] = np.asarray(weights[name], param.dtype.numpy)
    builder.channels_last_boundaries()
    for node in graph.nodes:
        emit = EMITTERS.get(node.op)
        if emit is None:
            raise unsupported(node, f"op {node.op} has no ONNX form")
        emit(builder, node)
    return builder.model(onnx)


def check_opset(opset: int | None, onnx: Any) -> int:
    newest = int(onnx.defs.onnx_opset_version())
    if opset is None:
        return min(DEFAULT_OPSET, newest)
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise error(
            f"opset must be an integer from {MIN_OPSET} to {newest} (the newest this onnx "
            f"package knows), found {opset!r}"
        )
    return opset


def unsupported(node: Node, why: str, hint: str | None = None) -> ConvdslError:
    """The error for a layer ONNX cannot express exactly."""
    return ConvdslError(
        Diagnostic(f"cannot export layer '{node.name}' ({node.op}) to ONNX: {why}", node.span,
                   hint=hint)
    )  # fmt: skip


@dataclass
class Builder:
    """The ONNX graph under construction: nodes, initializers, and the names in use."""

    opset: int
    graph: Graph
    nodes: list[Any] = field(default_factory=list)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    node_names: set[str] = field(default_factory=set)
    memo: dict[Any, str] = field(default_factory=dict)
    """Shared helper values (input shapes, size expressions) by what they compute."""
    renamed: dict[int, str] = field(default_factory=dict)
    """Values whose name is a channels-last graph input's or output's: the NCHW value inside."""

    def __post_init__(self) -> None:
        for value in self.graph.values.values():
            self.reserve(value.name)

    # ---- names --------------------------------------------------------------------------

    def reserve(self, name: str) -> None:
        if name in self.names:
            raise InternalError(f"ONNX export: name {name!r} is used twice")
        self.names.add(name)

    def fresh(self, base: str) -> str:
        """An unused name: ``base``, else ``base_1``, ``base_2``..."""
        name, count = base, 0
        while name in self.names:
            count += 1
            name = f"{base}_{count}"
        self.names.add(name)
        return name

    def value(self, value_id: int) -> str:
        return self.renamed.get(value_id) or self.graph.values[value_id].name

    def channels_last_boundaries(self) -> None:
        """A channels-last input is the caller's array, transposed to NCHW for the network
        (``x`` -> ``x/nchw``); a channels-last output whose value has its name computes it as
        ``y/nchw``, transposed back by ``_output``."""
        graph = self.graph
        for value_id in graph.channels_last_inputs:
            name = graph.values[value_id].name
            rank = len(graph.type_of(value_id).shape)
            self.renamed[value_id] = self.fresh(f"{name}/nchw")
            perm = [0, rank - 1, *range(1, rank - 1)]
            self.add("Transpose", [name], name, "to_nchw", output=self.renamed[value_id],
                     perm=perm)  # fmt: skip
        for name, value_id in graph.outputs:
            if name in graph.channels_last_outputs and self.value(value_id) == name:
                self.renamed[value_id] = self.fresh(f"{name}/nchw")

    def inputs(self, node: Node) -> list[str]:
        return [self.value(v) for v in node.inputs]

    def output(self, node: Node) -> str:
        return self.value(node.output)

    def dtype(self, node: Node) -> np.dtype:
        return self.graph.type_of(node.output).dtype.numpy

    # ---- building -----------------------------------------------------------------------

    def add(
        self,
        op_type: str,
        inputs: Sequence[str],
        layer: str,
        what: str | None = None,
        output: str | None = None,
        **attrs: Any,
    ) -> str:
        """Append a node of ``layer``: named as the layer (its main node, ``what`` None) or
        ``layer/what`` (a helper). Its output is ``output`` or a fresh ``layer/what`` value.
        Attributes that are None are left out. Returns the output's name."""
        onnx = require("onnx", "onnx", "ONNX export")
        label = layer if what is None else f"{layer}/{what}"
        out = output if output is not None else self.fresh(f"{label}:0" if what is None else label)
        node_name, count = label, 0
        while node_name in self.node_names:
            count += 1
            node_name = f"{label}_{count}"
        self.node_names.add(node_name)
        given = {key: value for key, value in attrs.items() if value is not None}
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), [out], node_name, **given))
        return out

    def constant(self, name: str, array: Any) -> str:
        """An initializer holding ``array`` (a helper constant, not a parameter)."""
        unique = self.fresh(name)
        self.constants[unique] = np.asarray(array)
        return unique

    def scalar(self, name: str, value: float, dtype: np.dtype) -> str:
        return self.constant(name, np.asarray(value, dtype))

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.constant(name, np.asarray(list(values), np.int64))

    # ---- the model ----------------------------------------------------------------------

    def model(self, onnx: Any) -> Any:
        helper, numpy_helper = onnx.helper, onnx.numpy_helper
        graph = self.graph
        inputs = [
            _value_info(helper, graph, graph.values[v].name, v, v in graph.channels_last_inputs)
            for v in graph.inputs
        ]
        outputs = [self._output(helper, name, v) for name, v in graph.outputs]
        initializers = [
            numpy_helper.from_array(np.ascontiguousarray(a), name)
            for name, a in {**self.params, **self.constants}.items()
        ]
        body = helper.make_graph(self.nodes, graph.name, inputs, outputs, initializers)
        model = helper.make_model(
            body,
            opset_imports=[helper.make_opsetid("", self.opset)],
            producer_name="convdsl",
            producer_version=_version(),
        )
        model.ir_version = min(model.ir_version, _ir_version(onnx, self.opset))
        return model

    def _output(self, helper: Any, name: str, value_id: int) -> Any:
        """A graph output is its value; an output named apart from its value (or a value that
        is also an input, or output twice) gets an Identity."""
        value_name = self.value(value_id)
        last = name in self.graph.channels_last_outputs
        if last:
            rank = len(self.graph.type_of(value_id).shape)
            if name != self.graph.values[value_id].name:
                self.reserve(name)
            self.add("Transpose", [value_name], name, "to_channels_last", output=name,
                     perm=[0, *range(2, rank), 1])  # fmt: skip
        elif name != value_name:
            self.reserve(name)
            self.add("Identity", [value_name], name, "output", output=name)
        return _value_info(helper, self.graph, name, value_id, last)


def _value_info(helper: Any, graph: Graph, name: str, value_id: int, last: bool = False) -> Any:
    t = graph.type_of(value_id)
    elem = 1 if t.dtype.numpy == np.float32 else 11  # TensorProto.FLOAT, DOUBLE
    shape = caller_order(t.shape, last)
    return helper.make_tensor_value_info(name, elem, [_dim(d) for d in shape])


def _dim(dim: Dim) -> int | str:
    """A static size, or the ``dim_param`` of a symbolic one (its expression: ``H//2``)."""
    return dim if isinstance(dim, int) else str(dim)


def bare_symbol(dim: Dim) -> str | None:
    """The symbol's name if ``dim`` is exactly one size symbol (``H``), else None."""
    if not isinstance(dim, Expr) or len(dim.terms) != 1:
        return None
    (mono, coef) = dim.terms[0]
    if coef != 1 or len(mono) != 1 or not isinstance(mono[0], Symbol):
        return None
    return mono[0].name


def _version() -> str:
    import convdsl

    return convdsl.__version__


def _ir_version(onnx: Any, opset: int) -> int:
    """The IR version of the ONNX release that introduced ``opset`` (older runtimes refuse a
    newer IR version than they know)."""
    for release in onnx.helper.VERSION_TABLE:
        if release[2] >= opset:
            return int(release[1])
    return int(onnx.IR_VERSION)


# ---- the file ---------------------------------------------------------------------------------


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """``path`` ends in ``.onnx``, its directory exists, and it is new unless ``overwrite``:
    checked before anything is compiled."""
    return check_target(path, (".onnx",), overwrite)


MAX_MODEL_BYTES = 2**31 - 1
"""Protocol buffers cannot serialize more in one message."""


def write_model(model: Any, path: str | Path, overwrite: bool = False) -> None:
    """Check ``model`` in full and write it atomically: a failure leaves no partial file."""
    onnx = require("onnx", "onnx", "ONNX export")
    path = check_output_path(path, overwrite)
    size = model.ByteSize()
    if size > MAX_MODEL_BYTES:
        raise error(
            f"{path}: the model needs {size / 2**30:.1f} GiB, more than one ONNX file can hold "
            "without external data (2 GiB)"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise InternalError(f"the exported model fails onnx.checker: {exc}") from None
    data = model.SerializeToString()
    with atomic_target(path) as temporary:
        temporary.write_bytes(data)


def network_to_onnx(
    net: Network, path: str | Path, opset: int | None = None, overwrite: bool = False
) -> None:
    """``Network.to_onnx``: export ``net`` as written, with its weights, to ``path``."""
    check_output_path(path, overwrite)
    model = export_graph(export_graph_of(net), net.weights, opset)
    write_model(model, path, overwrite)
