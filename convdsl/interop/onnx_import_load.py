"""Reading an ONNX model as untrusted input: parse, resolve external data, bound every tensor.

An ONNX file is a protobuf, parsed by the ``onnx`` package (no pickle, no code). Before any
array is built its declared size is checked against the bytes that hold it, so a tensor that
claims huge dims allocates nothing. Tensors stored in external files are read only from files
inside the model's directory. Every problem is a ``ConvdslError`` naming the file.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convdsl.diagnostics import error
from convdsl.ir import limits

if TYPE_CHECKING:
    import onnx

MIN_OPSET = 9
"""The oldest default-domain opset read (Upsample and Resize-10 are read in their own terms)."""
MAX_MODEL_BYTES = 2**31
"""Protobuf's own limit on one message; larger models keep their weights in external files."""
MAX_TENSOR_ELEMENTS = limits.MAX_ELEMENTS
INSTALL_HINT = "install it: pip install 'convdsl[onnx]' (or pip install onnx)"


def require_onnx() -> Any:
    """The ``onnx`` module, or a user error saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise error("importing ONNX models needs the onnx package", hint=INSTALL_HINT) from None
    return onnx


@dataclass(frozen=True)
class LoadedModel:
    model: onnx.ModelProto
    where: str  # the file name (or "<model>") that messages start with
    name: str  # a name for the network: the file's stem or the graph's name
    opset: int


def load_model(source: str | os.PathLike[str] | bytes | onnx.ModelProto) -> LoadedModel:
    """Parse and check a model given as a path, serialized bytes or a ``ModelProto``."""
    onnx = require_onnx()
    directory: Path | None = None
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)  # external data is inlined below: never touch the caller's
        where, stem = "<model>", ""
    elif isinstance(source, bytes):
        model = _parse(onnx, source, "<bytes>")
        where, stem = "<bytes>", ""
    else:
        path = Path(source)
        where, stem, directory = str(path), path.stem, path.parent
        model = _parse(onnx, _read_file(path), where)
    _resolve_external_data(model, directory, where)
    opset = _default_opset(onnx, model, where)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise error(f"{where}: not a valid ONNX model: {_first_line(exc)}") from None
    name = stem or model.graph.name or "imported"
    return LoadedModel(model, where, name, opset)


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise error(f"{path}: {size:,} bytes is larger than an ONNX protobuf can be (2 GiB)")
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected an .onnx file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse(onnx: Any, data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise error(f"{where}: the file is empty, not an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
        raise error(f"{where}: not an ONNX model (it does not parse: {_first_line(exc)})") from None
    if not model.HasField("graph") or not model.opset_import:
        raise error(f"{where}: not an ONNX model (no graph or no opset)")
    return model


def _default_opset(onnx: Any, model: onnx.ModelProto, where: str) -> int:
    versions = {o.domain: o.version for o in model.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        raise error(f"{where}: the model imports no default-domain (ai.onnx) opset")
    if not MIN_OPSET <= opset <= newest:
        raise error(
            f"{where}: opset {opset} is not supported: convdsl reads opsets {MIN_OPSET} to "
            f"{newest} (the newest the installed onnx package knows)",
            hint="convert the model with onnx.version_converter.convert_version"
            if opset < MIN_OPSET
            else "upgrade the onnx package",
        )
    return opset


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# ---- tensors ---------------------------------------------------------------------------------


def all_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Initializers and the tensors of Constant nodes (subgraphs are refused elsewhere)."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
            tensors.extend(attr.tensors)
    return tensors


def _resolve_external_data(model: onnx.ModelProto, directory: Path | None, where: str) -> None:
    onnx = require_onnx()
    for tensor in all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        what = f"{where}: tensor '{tensor.name}'"
        if directory is None:
            raise error(
                f"{what} keeps its data in an external file, which a model given in memory "
                "cannot name safely",
                hint="pass the model's path instead",
            )
        tensor.raw_data = _read_external(info, directory, tensor, what)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _read_external(info: dict[str, str], directory: Path, tensor: Any, what: str) -> bytes:
    location = info.get("location", "")
    base = directory.resolve()
    path = (base / location).resolve()
    if not location or not path.is_relative_to(base):
        raise error(
            f"{what}: external data location '{location}' is outside the model's directory",
            hint="external data files must sit in the model's directory or below it",
        )
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise error(f"{what}: external data offset or length is not an integer") from None
    expected = _expected_bytes(tensor, what)
    if offset < 0 or (length is not None and length != expected):
        raise error(f"{what}: external data length {length} does not match its {expected} bytes")
    if not path.is_file():
        raise error(f"{what}: external data file '{location}' does not exist")
    if path.stat().st_size < offset + expected:
        raise error(f"{what}: external data file '{location}' is too short")
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read(expected)


def _elements(tensor: Any, what: str) -> int:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise error(f"{what}: negative dims {dims}")
    count = math.prod(dims)
    if count > MAX_TENSOR_ELEMENTS:
        raise error(
            f"{what}: dims {dims} claim {count:,} elements; at most {MAX_TENSOR_ELEMENTS:,}",
            hint=limits.HINT,
        )
    return count


def _expected_bytes(tensor: Any, what: str) -> int:
    return _elements(tensor, what) * _numpy_dtype(tensor.data_type, what).itemsize


_TYPED_FIELDS = ("float_data", "double_data", "int32_data", "int64_data", "uint64_data")


def _numpy_dtype(data_type: int, what: str) -> np.dtype:
    onnx = require_onnx()
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        raise error(f"{what}: element type {data_type} is not supported") from None
    if dtype.kind not in "fiub":
        raise error(f"{what}: element type {dtype} is not supported")
    return dtype


def tensor_array(tensor: Any, what: str) -> np.ndarray:
    """The tensor's values, after checking that its dims agree with the data it holds."""
    onnx = require_onnx()
    count = _elements(tensor, what)
    dtype = _numpy_dtype(tensor.data_type, what)
    if tensor.raw_data:
        held = len(tensor.raw_data) // dtype.itemsize if dtype.itemsize else 0
        if len(tensor.raw_data) != count * dtype.itemsize:
            raise error(f"{what}: dims {list(tensor.dims)} do not match its {held:,} values")
    else:
        held = max(len(getattr(tensor, name)) for name in _TYPED_FIELDS)
        if held != count:
            raise error(f"{what}: dims {list(tensor.dims)} do not match its {held:,} values")
    try:
        return np.array(onnx.numpy_helper.to_array(tensor))
    except (ValueError, TypeError) as exc:
        raise error(f"{what}: unreadable data ({_first_line(exc)})") from None
