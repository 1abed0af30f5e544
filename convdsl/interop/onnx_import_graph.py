"""Walking an ONNX graph into a ``Program``: inputs, constants, one converter per node.

``Importer`` holds what the converters of ``onnx_import_ops*`` need: the value of every constant
(initializers, Constant nodes and nodes computed from constants only, folded here), the
variable and rank of every computed tensor, the static shapes ONNX shape inference found, and
the ``Program`` being written. A node the converters cannot map exactly is refused with a
``ConvdslError`` naming the node, its op type and the attribute or input at fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convdsl.diagnostics import ConvdslError, error
from convdsl.interop.onnx_import_fold import FOLDERS, fold
from convdsl.interop.onnx_import_load import LoadedModel, require_onnx, tensor_array
from convdsl.interop.onnx_import_program import RESERVED, Program, Statement, call, identifier
from convdsl.ir.boundary import LAST_NAMES
from convdsl.ir.types import AXIS_NAMES, DType


def to_channels_first(axes: list[int], last: bool) -> list[int]:
    """``axes`` of a channels-last tensor in channels-first order (the perm of a Transpose
    from NHWC to NCHW); unchanged when not ``last``."""
    return [axes[0], axes[-1], *axes[1:-1]] if last else axes


def layout_word(rank: int) -> str:
    """The declaration word of a channels-last tensor of ``rank`` (``nhwc``)."""
    return LAST_NAMES[rank - 2].lower()


_TORCH_OP_PART = re.compile(r"([A-Za-z]+)(_\d+)?")


@dataclass(frozen=True)
class Tensor:
    """A computed ONNX value: the ``.conv`` variable holding it and its rank."""

    var: str
    rank: int


@dataclass(frozen=True)
class OnnxNode:
    proto: Any
    index: int
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def op(self) -> str:
        return str(self.proto.op_type)

    @property
    def label(self) -> str:
        return f"node '{self.proto.name}'" if self.proto.name else f"node #{self.index}"

    @property
    def inputs(self) -> list[str]:
        return list(self.proto.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.proto.output)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


Converter = Callable[["Importer", OnnxNode], None]


class Importer:
    def __init__(self, loaded: LoadedModel, converters: dict[str, Converter]) -> None:
        self.loaded = loaded
        self.graph = loaded.model.graph
        self.opset = loaded.opset
        self.converters = converters
        self.consts: dict[str, np.ndarray] = {}
        self.tensors: dict[str, Tensor] = {}
        self.static: dict[str, tuple[int | None, ...]] = {}
        self.layers: dict[str, str] = {}  # layer name -> the ONNX value it computes
        self.graph_outputs = [o.name for o in self.graph.output]
        self.output_vars: dict[str, str] = {}  # graph output -> the variable named after it
        self.emitted: set[str] = set()  # graph outputs written as `output y = ...`
        self.dtype = DType.F32
        self.program = Program(loaded.name, self.dtype)
        self.consumers: dict[str, list[OnnxNode]] = {}
        self.skipped: set[int] = set()  # nodes a converter has taken into another's statement
        self.shape_markers: dict[int, tuple[str, int]] = {}  # marker -> (value, axis) it sizes
        self.shape_derived: set[str] = set()  # constants holding markers
        self.output_names: dict[str, str] = {}  # graph output -> its variable
        self.channels_last_inputs: set[str] = set()
        self.channels_last_outputs: set[str] = set()  # written transposed by a Transpose

    # ---- the walk ----------------------------------------------------------------------------

    def run(self) -> Program:
        nodes = [OnnxNode(p, i, _attributes(p)) for i, p in enumerate(self.graph.node)]
        for node in nodes:
            self._check_supported(node)
            for name in node.inputs:
                self.consumers.setdefault(name, []).append(node)
        self.static = _static_shapes(self.loaded)
        self._constants()
        self._inputs()
        for out in self.graph_outputs:  # outputs keep their names before any variable takes them
            self.output_names.setdefault(out, self.program.variable(out, "out"))
        for node in nodes:
            if node.index not in self.skipped:
                self._convert(node)
        self._outputs()
        return self.program

    def _check_supported(self, node: OnnxNode) -> None:
        if node.proto.domain not in ("", "ai.onnx"):
            raise self.refuse(node, f"ops of domain '{node.proto.domain}' are not supported")
        if node.op not in self.converters and node.op not in FOLDERS:
            raise self.refuse(
                node,
                "this op type is not supported",
                hint=f"convdsl imports: {', '.join(sorted(self.converters))}",
            )

    def _convert(self, node: OnnxNode) -> None:
        real_inputs = [name for name in node.inputs if name]
        if node.op in FOLDERS and all(name in self.consts for name in real_inputs):
            try:
                values = fold(node.op, node.attrs, [self.consts.get(n) for n in node.inputs])
            except ValueError as exc:
                raise self.refuse(node, f"cannot fold its constant inputs: {exc}") from None
            if values is not None:
                self.consts.update(zip(node.outputs, values, strict=False))
                if any(name in self.shape_derived for name in real_inputs):
                    self.shape_derived.update(node.outputs)
                return
        converter = self.converters.get(node.op)
        if converter is None:
            raise self.refuse(node, "this op type is only supported on constant inputs")
        converter(self, node)

    def _constants(self) -> None:
        for tensor in self.graph.initializer:
            self.consts[tensor.name] = tensor_array(
                tensor, f"{self.loaded.where}: initializer '{tensor.name}'"
            )

    def _inputs(self) -> None:
        onnx = require_onnx()
        kinds = {onnx.TensorProto.FLOAT: DType.F32, onnx.TensorProto.DOUBLE: DType.F64}
        sizes: dict[str, str] = {}
        declared = [i for i in self.graph.input if i.name not in self.consts]
        if not declared:
            raise error(f"{self.loaded.where}: the graph has no inputs besides its initializers")
        for position, value in enumerate(declared):
            what = f"{self.loaded.where}: input '{value.name}'"
            tensor_type = value.type.tensor_type
            dtype = kinds.get(tensor_type.elem_type)
            if not value.type.HasField("tensor_type") or dtype is None:
                raise error(f"{what}: convdsl inputs are float32 or float64 tensors")
            if position == 0:
                self.dtype = self.program.dtype = dtype
            elif dtype is not self.dtype:
                raise error(f"{what}: inputs of different float types are not supported")
            if not tensor_type.HasField("shape"):
                raise error(f"{what}: the model does not declare its shape")
            dims = list(tensor_type.shape.dim)
            if not 2 <= len(dims) <= 5:
                raise error(
                    f"{what}: has {len(dims)} dims; convdsl tensors are [N, C, spatial...] "
                    "with 1 to 3 spatial axes, or features [N, F]"
                )
            last = self._read_channels_last(value.name, len(dims))
            order = to_channels_first(list(range(len(dims))), last)
            texts = {axis: self._dim(dims[axis], logical, len(dims), sizes, what)
                     for logical, axis in enumerate(order)}  # fmt: skip
            var = self.program.variable(value.name, "x")
            self.tensors[value.name] = Tensor(var, len(dims))
            shape = ", ".join(texts[axis] for axis in range(len(dims)))
            word = f"{layout_word(len(dims))} " if last else ""
            self.program.inputs.append(f"input {var}: {word}{self.dtype.value}[{shape}]")
            if last:
                self.channels_last_inputs.add(value.name)

    def _read_channels_last(self, name: str, rank: int) -> bool:
        """Whether input ``name`` is read only through Transposes from channels-last to
        channels-first: then it is declared channels-last and the Transposes disappear."""
        users = self.consumers.get(name, [])
        wanted = to_channels_first(list(range(rank)), True)
        return (
            rank >= 3
            and bool(users)
            and all(
                u.op == "Transpose" and [int(p) for p in u.attr("perm", [])] == wanted
                for u in users
            )
        )

    def _dim(self, dim: Any, axis: int, rank: int, sizes: dict[str, str], what: str) -> str:
        if dim.HasField("dim_value"):
            if dim.dim_value < 1:
                raise error(f"{what}: dim {axis} is {dim.dim_value}; sizes must be positive")
            return str(dim.dim_value)
        if axis == 1:
            raise error(f"{what}: the channel count (dim 1) must be fixed, found a dynamic dim")
        key = dim.dim_param if dim.HasField("dim_param") else None
        if key is not None and key in sizes:
            return sizes[key]
        default = "N" if axis == 0 else AXIS_NAMES[rank - 2][axis - 2]
        if key is None and axis == 0 and "N" in sizes.values():
            return "N"  # unnamed batch dims are taken to be one batch
        base = identifier(key, default) if key else default
        name, suffix = base, 1
        while name in RESERVED or name in sizes.values():
            suffix += 1
            name = f"{base}{suffix}"
        sizes[key if key is not None else f"\0{what}{axis}"] = name
        self.program.reserve(name)
        return name

    def _outputs(self) -> None:
        for name in self.graph_outputs:
            if name in self.consts:
                raise error(f"{self.loaded.where}: output '{name}' is a constant")
            tensor = self.tensors[name]
            if name in self.emitted:
                continue
            if name in self.channels_last_outputs:
                var = self.output_names[name]
                word = layout_word(tensor.rank)
                self.program.outputs.append(f"output {var}: {word} = {tensor.var}")
            elif self.output_vars.get(name) == tensor.var:
                self.program.outputs.append(f"output {tensor.var}")
            else:
                var = self.output_names[name]
                self.program.outputs.append(f"output {var} = {tensor.var}")

    # ---- what converters use -----------------------------------------------------------------

    def refuse(self, node: OnnxNode, why: str, attribute: str | None = None,
               hint: str | None = None) -> ConvdslError:  # fmt: skip
        where = f"{self.loaded.where}: {node.label} ({node.op})"
        if attribute is not None:
            value = node.attr(attribute)
            shown = f" = {value!r}" if value is not None else ""
            where += f": attribute '{attribute}'{shown}"
        return error(f"{where}: {why}", hint=hint)

    def tensor(self, node: OnnxNode, index: int = 0) -> Tensor:
        """Input ``index``, which must be a computed tensor."""
        name = node.inputs[index] if index < len(node.inputs) else ""
        if not name:
            raise self.refuse(node, f"input {index} is missing")
        if name in self.consts:
            raise self.refuse(
                node, f"input {index} ('{name}') is a constant; convdsl needs a computed tensor"
            )
        return self.tensors[name]

    def const(self, node: OnnxNode, index: int, what: str) -> np.ndarray | None:
        """Input ``index`` as an array, None when absent; a computed tensor is refused."""
        name = node.inputs[index] if index < len(node.inputs) else ""
        if not name:
            return None
        if name not in self.consts:
            raise self.refuse(
                node,
                f"input '{what}' is computed by the graph; convdsl needs it as a constant "
                "(an initializer or a Constant node)",
            )
        if name in self.shape_derived and min(self.consts[name].ravel(), default=0) < -1:
            raise self.refuse(
                node, f"input '{what}' depends on a dynamic size of a tensor (a Shape of it); "
                "convdsl needs a constant",
            )  # fmt: skip
        return self.consts[name]

    def static_shape(self, name: str) -> tuple[int | None, ...] | None:
        return self.static.get(name)

    def alias(self, node: OnnxNode, tensor: Tensor, index: int = 0) -> None:
        """Output ``index`` is ``tensor`` itself (Identity, Dropout, a one-part Split)."""
        self.tensors[node.outputs[index]] = tensor

    def merged(self, node: OnnxNode, last: OnnxNode) -> OnnxNode:
        """``node`` computing ``last``'s output: one statement for two nodes (MatMul + Add)."""
        proto = type(node.proto)()
        proto.CopyFrom(node.proto)
        del proto.output[:]
        proto.output.extend(last.outputs)
        return OnnxNode(proto, node.index, node.attrs)

    def define(self, node: OnnxNode, op: str, *args: object, params: dict[str, Any] | None = None,
               comment: str | None = None, rank: int | None = None,
               **kwargs: object) -> str:  # fmt: skip
        """One statement ``var = op(args, kwargs)`` for output 0; ``params`` (role -> array)
        name the layer after the initializers or the node and go to the weights; ``rank`` is
        the output's when it differs from input 0's (flatten, dense)."""
        layer_hint = self._layer_hint(node, params) if params else None
        var, given = self._target(node, 0, layer_hint)
        kwargs = {**kwargs, "name": given}
        text = call(op, *args, dtype=self.dtype, **kwargs)
        layer = given or var
        for role, array in (params or {}).items():
            self.program.param(layer, role, array)
        self._emit(node, [var], text, layer, comment, rank)
        return var

    def define_expr(self, node: OnnxNode, text: str, comment: str | None = None) -> str:
        """One statement ``var = text`` (nested calls without parameters) for output 0."""
        var, _ = self._target(node, 0, None)
        self._emit(node, [var], text, var, comment)
        return var

    def define_many(self, node: OnnxNode, text: str) -> list[str]:
        """``a, b, ... = text`` for every output (split)."""
        targets = [self._target(node, i, None)[0] for i in range(len(node.outputs))]
        self._emit(node, targets, text, targets[0], None)
        return targets

    def _emit(self, node: OnnxNode, targets: list[str], text: str, layer: str,
              comment: str | None, rank: int | None = None) -> None:  # fmt: skip
        rank = self._rank(node) if rank is None else rank
        for name, var in zip(node.outputs, targets, strict=True):
            self.tensors[name] = Tensor(var, rank)
        output = len(targets) == 1 and node.outputs[0] in self.graph_outputs
        if output:
            self.emitted.add(node.outputs[0])
        self.layers[layer] = node.outputs[0]
        self.program.emit(Statement(targets, text, layer, output, comment))

    def _rank(self, node: OnnxNode) -> int:
        ranks = [self.tensors[n].rank for n in node.inputs if n in self.tensors]
        return ranks[0]

    def _target(self, node: OnnxNode, index: int, layer_hint: str | None) -> tuple[str, str | None]:
        out = node.outputs[index]
        fallback = node.op.lower()
        if out in self.graph_outputs:
            var = self.output_names[out]
            self.output_vars[out] = var
            if layer_hint is None:
                return var, None
            return var, self.program.given_name(layer_hint, fallback)
        if layer_hint is not None:
            return self.program.layer(layer_hint, fallback)
        hint = node_hint(node) if index == 0 or not out else out
        return self.program.variable(hint, fallback), None

    def _layer_hint(self, node: OnnxNode, params: dict[str, Any]) -> str:
        """``features.0`` when the node's initializers are ``features.0.weight``, ... (the
        names of a PyTorch state dict), else the node's name."""
        names = [n for n in node.inputs[1:] if n in self.consts]
        prefixes = {n.rpartition(".")[0] for n in names}
        roles = {n.rpartition(".")[2] for n in names}
        if len(prefixes) == 1 and roles <= set(params) and "" not in prefixes:
            return prefixes.pop()
        return node_hint(node)


def node_hint(node: OnnxNode) -> str:
    """A name for the node: PyTorch's scoped names ``/layer1/layer1.0/conv1/Conv`` give the
    module's name ``layer1.0.conv1``; otherwise the node's name, else its first output's."""
    name = str(node.proto.name)
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1:
        last = _TORCH_OP_PART.fullmatch(parts[-1])
        if last and last.group(1) == node.op:
            parts = parts[:-1]
    qualified = ""
    for part in parts:
        qualified = (
            part if not qualified or part.startswith(qualified + ".") else f"{qualified}.{part}"
        )
    if _TORCH_OP_PART.fullmatch(qualified) and qualified.split("_")[0] == node.op:
        return qualified.lower()  # `/Resize` or `Resize_3`: the op's own name
    return qualified or (node.outputs[0] if node.outputs else "") or node.op.lower()


def _attributes(proto: Any) -> dict[str, Any]:
    onnx = require_onnx()
    attrs: dict[str, Any] = {}
    for attr in proto.attribute:
        if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            continue  # control flow: the op type is refused
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list):
            value = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
        attrs[attr.name] = value
    return attrs


def _static_shapes(loaded: LoadedModel) -> dict[str, tuple[int | None, ...]]:
    """Every value's shape as ONNX shape inference finds it (None for a dynamic dim)."""
    onnx = require_onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(
            loaded.model, check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as exc:  # InferenceError: the model's own shapes are inconsistent
        text = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
        raise error(f"{loaded.where}: ONNX shape inference fails: {text}") from None
    shapes: dict[str, tuple[int | None, ...]] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor_type.HasField("shape"):
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            )
    return shapes
