"""Parameters: deterministic initialization, loading from ``.npz`` or ``.safetensors`` and
saving.

A weights file is untrusted input: an ``.npz`` is read with ``allow_pickle=False``, a
``.safetensors`` header is checked before anything is allocated
(``convdsl.interop.safetensors_io``), a ``torch.save`` file is refused unread, and every missing,
extra, mis-shaped or non-numeric array is reported by name, all at once. Initialization is
deterministic per parameter name (seed + CRC32 of the name), so adding a layer leaves every
other layer's initial weights unchanged.

Initializers: ``he`` (conv weights: normal, std sqrt(2 / fan_in)), ``bias`` (uniform in
±1/sqrt(fan_in), as PyTorch), ``zeros`` and ``ones`` (batch norm: identity at start), ``prelu``
(0.25, as ``torch.nn.PReLU``).
"""

from __future__ import annotations

import difflib
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from convdsl.diagnostics import Diagnostic, DiagnosticSink, error
from convdsl.ir.graph import Param
from convdsl.ir.types import format_shape
from convdsl.output_files import atomic_target, check_target


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
    elif param.init == "prelu":
        array = np.full(param.shape, 0.25)
    else:
        array = np.zeros(param.shape)
    return array.astype(dtype)


WEIGHT_SUFFIXES = (".npz", ".safetensors")
"""The weights file formats, by file name ending."""


def load_weights(path: str | Path, params: Mapping[str, Param]) -> dict[str, np.ndarray]:
    """Read ``path`` (``.npz`` or ``.safetensors``) and check it against ``params``; raise
    ``ConvdslError`` listing every problem."""
    arrays = read_weights(path)
    return check_weights(arrays, params, str(path))


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of a weights file: ``.safetensors`` by its name, else ``.npz``; a
    ``torch.save`` file is refused with how to convert it."""
    from convdsl.interop import pytorch, safetensors_io

    path = Path(path)
    if path.is_file():
        pytorch.refuse_torch_save(path)
    if path.suffix == ".safetensors":
        return safetensors_io.read_safetensors(path)
    return read_npz(path)


def save_weights(
    path: str | Path, arrays: Mapping[str, np.ndarray], overwrite: bool = False
) -> None:
    """Write ``arrays`` as ``.npz`` or ``.safetensors`` (by the name's ending), atomically."""
    from convdsl.interop import safetensors_io

    path = Path(path)
    check_weights_path(path)
    if path.suffix == ".safetensors":
        safetensors_io.write_safetensors(path, arrays, overwrite=overwrite)
    else:
        save_npz(path, arrays, overwrite=overwrite)


def check_weights_path(path: Path) -> None:
    if path.suffix not in WEIGHT_SUFFIXES:
        raise error(f"{path}: expected a file name ending in {' or '.join(WEIGHT_SUFFIXES)}")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, never unpickling anything."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory, expected an .npz weights file")
    if not path.is_file():
        raise error(f"{path}: weights file not found")
    with path.open("rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise error(
            f"{path}: expected an .npz archive of named arrays, found a single array (.npy)",
            hint="save with numpy.savez(path, **{name: array})",
        )
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise error(
            f"{path}: not an .npz file (it is not a zip archive)",
            hint="weights are saved with numpy.savez or Network.save_weights",
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return _members(path, data)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise error(
            f"{path}: not a readable .npz file ({exc})",
            hint="weights are saved with numpy.savez or Network.save_weights",
        ) from None


def _members(path: Path, data: np.lib.npyio.NpzFile) -> dict[str, np.ndarray]:
    sink = DiagnosticSink()
    arrays: dict[str, np.ndarray] = {}
    for name in data.files:
        try:
            # allow_pickle=False makes numpy refuse an object array before unpickling it.
            array = data[name]
        except ValueError as exc:
            pickled = "allow_pickle" in str(exc) or "Object arrays" in str(exc)
            sink.error(
                f"{path}: array '{name}' holds pickled Python objects; refused without loading it"
                if pickled
                else f"{path}: array '{name}' is unreadable ({exc})"
            )
            continue
        if not isinstance(array, np.ndarray):
            sink.error(f"{path}: member '{name}' is not a NumPy array")
            continue
        arrays[name] = array
    sink.raise_if_errors()
    return arrays


def check_weights(
    arrays: Mapping[str, np.ndarray], params: Mapping[str, Param], origin: str
) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise error(
            f"{origin}: expected a mapping from parameter names to arrays (or the path "
            f"of an .npz or .safetensors file), found {type(arrays).__name__}"
        )
    from convdsl.interop.pytorch import as_arrays

    arrays = as_arrays(arrays)  # a PyTorch state_dict's tensors, if torch is in use
    sink = DiagnosticSink()
    checked: dict[str, np.ndarray] = {}
    unused = [
        str(name)
        for name in arrays
        if name not in params and not _is_batch_norm_counter(str(name), params)
    ]
    for name, param in params.items():
        expected = f"{param.dtype.value}{format_shape(param.shape)}"
        if name not in arrays:
            close = difflib.get_close_matches(name, unused, n=1)
            sink.diagnostics.append(
                Diagnostic(
                    f"{origin}: missing parameter '{name}' (expected {expected})",
                    param.span,
                    hint=f"the weights have '{close[0]}'; is it this one?" if close else None,
                )
            )
            continue
        try:
            array = np.asarray(arrays[name])
        except (ValueError, TypeError):
            array = None
        if array is None or array.dtype.kind not in "f":
            found = "a ragged sequence" if array is None else f"dtype {array.dtype}"
            sink.diagnostics.append(
                Diagnostic(
                    f"{origin}: parameter '{name}' has {found}; expected a floating-point array "
                    f"({expected})",
                    param.span,
                )
            )
        elif array.shape != param.shape:
            sink.diagnostics.append(
                Diagnostic(
                    f"{origin}: parameter '{name}' has shape {format_shape(array.shape)}; expected "
                    f"{format_shape(param.shape)}",
                    param.span,
                )
            )
        else:
            checked[name] = np.ascontiguousarray(array, dtype=param.dtype.numpy)
    for name in arrays:
        if name not in params and not _is_batch_norm_counter(name, params):
            sink.error(
                f"{origin}: unexpected array '{name}': no layer has this parameter",
                hint=_close(name, params),
            )
    sink.raise_if_errors()
    return checked


def _close(name: str, params: Mapping[str, Param]) -> str | None:
    close = difflib.get_close_matches(name, list(params), n=1)
    return f"did you mean '{close[0]}'?" if close else None


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray], overwrite: bool = False) -> None:
    """Write ``arrays`` to ``path`` atomically; an existing file is kept unless ``overwrite``."""
    path = check_target(path, (".npz",), overwrite)
    with atomic_target(path) as temporary, temporary.open("wb") as handle:
        np.savez(handle, **{name: np.asarray(a) for name, a in arrays.items()})  # type: ignore[arg-type]


def _is_batch_norm_counter(name: str, params: Mapping[str, Param]) -> bool:
    """PyTorch state dicts carry ``bn.num_batches_tracked``, a training counter inference never
    reads; accepting it lets a state dict be saved as-is."""
    layer, _, role = name.rpartition(".")
    return role == "num_batches_tracked" and f"{layer}.running_mean" in params
