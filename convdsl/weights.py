"""Parameters: deterministic initialization, loading from ``.npz`` and saving.

A weights file is untrusted input: it is read with ``allow_pickle=False`` and every missing,
extra, mis-shaped or non-numeric array is reported by name, all at once. Initialization is
deterministic per parameter name (seed + CRC32 of the name), so adding a layer leaves every
other layer's initial weights unchanged.

Initializers: ``he`` (conv weights: normal, std sqrt(2 / fan_in)), ``bias`` (uniform in
±1/sqrt(fan_in), as PyTorch), ``zeros`` and ``ones`` (batch norm: identity at start).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from convdsl.diagnostics import Diagnostic, DiagnosticSink, error
from convdsl.ir.graph import Param
from convdsl.ir.types import format_shape


def init_params(params: Mapping[str, Param], seed: int = 0) -> dict[str, np.ndarray]:
    return {name: init_param(param, seed) for name, param in params.items()}


def init_param(param: Param, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(param.name.encode())])
    dtype = param.dtype.numpy
    if param.init == "he":
        array = rng.standard_normal(param.shape) * np.sqrt(2.0 / param.fan_in)
    elif param.init == "bias":
        bound = 1.0 / np.sqrt(param.fan_in)
        array = rng.uniform(-bound, bound, param.shape)
    elif param.init == "ones":
        array = np.ones(param.shape)
    else:
        array = np.zeros(param.shape)
    return array.astype(dtype)


def load_weights(path: str | Path, params: Mapping[str, Param]) -> dict[str, np.ndarray]:
    """Read ``path`` (``.npz``) and check it against ``params``; raise ``ConvdslError`` listing
    every problem."""
    arrays = read_npz(path)
    return check_weights(arrays, params, str(path))


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, never unpickling anything."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: weights file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise error(f"{path}: expected an .npz archive of named arrays, found a single "
                            "array (.npy)", hint="save with numpy.savez(path, **{name: array})")
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise error(
            f"{path}: not a readable .npz file ({exc})",
            hint="weights are saved with numpy.savez or `convdsl init-weights`; pickled objects "
            "are refused",
        ) from None


def check_weights(arrays: Mapping[str, np.ndarray], params: Mapping[str, Param],
                  origin: str) -> dict[str, np.ndarray]:
    sink = DiagnosticSink()
    checked: dict[str, np.ndarray] = {}
    for name, param in params.items():
        if name not in arrays:
            sink.diagnostics.append(Diagnostic(
                f"{origin}: missing parameter '{name}' "
                f"(expected {param.dtype.value}{format_shape(param.shape)})", param.span))
            continue
        array = np.asarray(arrays[name])
        if array.dtype.kind not in "fiu":
            sink.diagnostics.append(Diagnostic(
                f"{origin}: '{name}' has dtype {array.dtype}; expected a float array", param.span))
        elif array.shape != param.shape:
            sink.diagnostics.append(Diagnostic(
                f"{origin}: '{name}' has shape {format_shape(array.shape)}; expected "
                f"{format_shape(param.shape)}", param.span))
        else:
            checked[name] = np.ascontiguousarray(array, dtype=param.dtype.numpy)
    for name in arrays:
        if name not in params:
            sink.error(f"{origin}: unexpected array '{name}': no layer has this parameter",
                       hint=_close(name, params))
    sink.raise_if_errors()
    return checked


def _close(name: str, params: Mapping[str, Param]) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(params), n=1)
    return f"did you mean '{close[0]}'?" if close else None


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray], overwrite: bool = False) -> None:
    """Write ``arrays`` to ``path`` atomically; an existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise error(f"{path}: expected a file name ending in .npz")
    if path.exists() and not overwrite:
        raise error(f"{path}: file exists; refusing to overwrite it",
                    hint="choose another name, or pass --force")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise error(f"{path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **{name: np.asarray(a) for name, a in arrays.items()})  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
