"""Weights as ``.safetensors`` files (Hugging Face's format), read and written with the
``safetensors`` package's NumPy API; no torch.

A file is untrusted input. Its layout is an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` and the
data. Before anything is allocated the header is read and checked here: its length, every
entry's dtype, shape (each dim within ``limits.MAX_EXTENT``, each tensor within
``limits.MAX_ELEMENTS``) and byte range (inside the file, exactly the bytes its shape needs), so
a file can never make convdsl allocate more than its own size. Every problem is reported, by
tensor name. Nothing is unpickled: the format has no pickle.

Floating-point tensors are read as they are (F16, F32, F64; BF16, which NumPy lacks, becomes
float32 exactly); integer and bool tensors are read as integer arrays, which a parameter refuses
(weights are floating point) and only PyTorch's ``num_batches_tracked`` counters may be.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convdsl.diagnostics import DiagnosticSink, error
from convdsl.interop.optional import require
from convdsl.ir import limits
from convdsl.output_files import atomic_target, check_target

MAX_HEADER_BYTES = 100 * 2**20
"""The largest JSON header accepted (the safetensors package's own limit)."""

ITEM_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
"""The dtypes read, with their bytes per element; others (float8, complex...) are refused."""

HINT = "save weights with safetensors.numpy.save_file, or Network.save_weights"


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file as a NumPy array, the header checked first."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, expected a .safetensors weights file")
    if not path.is_file():
        raise error(f"{path}: weights file not found")
    entries, data_start = read_header(path)
    bfloat16 = [name for name, entry in entries.items() if entry["dtype"] == "BF16"]
    numpy_api = require("safetensors.numpy", "safetensors", "reading .safetensors weights")
    try:
        if bfloat16:
            return _read_with_bfloat16(path, entries, data_start)
        loaded: dict[str, np.ndarray] = numpy_api.load_file(str(path))
    except Exception as exc:  # the package raises its own error types for malformed files
        raise error(f"{path}: not a readable .safetensors file ({exc})", hint=HINT) from None
    return {name: loaded[name] for name in entries}


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """The tensor entries of the header, each checked against the file (module doc), and
    where the data starts."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise error(f"{path}: not a .safetensors file (only {size} bytes)", hint=HINT)
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise error(
                f"{path}: not a .safetensors file (its header claims {length:,} bytes; the file "
                f"has {size:,})",
                hint=HINT,
            )
        text = handle.read(length)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(
            f"{path}: not a .safetensors file (bad JSON header: {exc})", hint=HINT
        ) from None
    if not isinstance(header, dict):
        raise error(f"{path}: not a .safetensors file (the header is not a JSON object)")
    data_bytes = size - 8 - length
    sink = DiagnosticSink()
    entries: dict[str, dict[str, Any]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(entry, data_bytes)
        if problem:
            sink.error(f"{path}: tensor '{name}': {problem}", hint=HINT)
        else:
            entries[name] = entry
    sink.raise_if_errors()
    return entries, 8 + length


def _entry_problem(entry: Any, data_bytes: int) -> str | None:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        return "expected dtype, shape and data_offsets"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in ITEM_SIZES:
        return f"dtype {dtype!r} is not supported (expected one of {', '.join(ITEM_SIZES)})"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"shape {shape!r} is not a list of sizes"
    if any(d > limits.MAX_EXTENT for d in shape) or math.prod(shape) > limits.MAX_ELEMENTS:
        return f"shape {shape} is larger than convdsl accepts"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        return f"data_offsets {offsets!r} is not a [begin, end] pair"
    begin, end = offsets
    if not begin <= end <= data_bytes:
        return f"data_offsets {offsets} lie outside the file's {data_bytes:,} data bytes"
    if end - begin != math.prod(shape) * ITEM_SIZES[dtype]:
        return (
            f"data_offsets {offsets} hold {end - begin:,} bytes; shape {shape} of {dtype} needs "
            f"{math.prod(shape) * ITEM_SIZES[dtype]:,}"
        )
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_with_bfloat16(
    path: Path, entries: Mapping[str, dict[str, Any]], data_start: int
) -> dict[str, np.ndarray]:
    """Every tensor through ``safe_open``, BF16 ones (which it cannot give as NumPy arrays)
    widened to float32 from their bytes: a bfloat16 is the top half of a float32, so exactly."""
    safetensors = require("safetensors", "safetensors", "reading .safetensors weights")
    arrays: dict[str, np.ndarray] = {}
    with safetensors.safe_open(str(path), framework="numpy") as data:
        for name, entry in entries.items():
            if entry["dtype"] != "BF16":
                arrays[name] = data.get_tensor(name)
    with path.open("rb") as handle:
        for name, entry in entries.items():
            if entry["dtype"] == "BF16":
                begin, end = entry["data_offsets"]
                handle.seek(data_start + begin)
                raw = np.frombuffer(handle.read(end - begin), dtype="<u2")
                wide = raw.astype(np.uint32) << 16
                arrays[name] = wide.view(np.float32).reshape(entry["shape"])
    return {name: arrays[name] for name in entries}


def write_safetensors(
    path: str | Path, arrays: Mapping[str, np.ndarray], overwrite: bool = False
) -> None:
    """Write ``arrays`` to ``path`` atomically; an existing file is kept unless ``overwrite``."""
    numpy_api = require("safetensors.numpy", "safetensors", "writing .safetensors weights")
    path = check_target(path, (".safetensors",), overwrite)
    tensors = {str(name): np.ascontiguousarray(a) for name, a in arrays.items()}
    with atomic_target(path) as temporary:
        numpy_api.save_file(tensors, str(temporary))
