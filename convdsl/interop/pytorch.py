"""PyTorch weights: a ``state_dict`` bound directly, names remapped, ``torch.save`` files refused.

``Network.set_weights(model.state_dict())`` works when the ``.conv`` layer names are the module
names (``conv1`` <-> ``self.conv1``): a torch tensor is converted with
``.detach().cpu().numpy()`` (bfloat16 through float32), and only if torch is already imported
by the caller; convdsl never imports torch for this. Names that differ by a prefix (``module.``
from ``DataParallel``, ``model.`` from a wrapper) or otherwise are mapped by ``rename_weights``.

A file written by ``torch.save`` is a pickle: loading it runs arbitrary code, so it is refused
with the two lines that convert it.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from convdsl.diagnostics import DiagnosticSink, error
from convdsl.interop.optional import loaded

Rename = Mapping[str, str] | Callable[[str], str]

CONVERT_HINT = (
    "convert it once where you trust it: sd = torch.load(path); "
    "numpy.savez('weights.npz', **{k: v.numpy() for k, v in sd.items()}) "
    "(or safetensors.torch.save_file(sd, 'weights.safetensors'))"
)


def as_arrays(weights: Mapping[str, Any]) -> dict[str, Any]:
    """``weights`` with every torch tensor made a NumPy array; other values as they are."""
    torch = loaded("torch")
    if torch is None:
        return dict(weights)
    return {name: _numpy(torch, value) for name, value in weights.items()}


def _numpy(torch: Any, value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    tensor = value.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
        tensor = tensor.float()
    return tensor.numpy()


def rename_weights(
    weights: Mapping[str, Any], strip_prefix: str | None = None, rename: Rename | None = None
) -> dict[str, Any]:
    """``weights`` under new names: ``strip_prefix`` is removed from every name that starts
    with it (others are kept), then ``rename`` maps each name, as a dict (names it lacks are
    kept) or a function. Two arrays ending up with one name is an error.

    >>> sorted(rename_weights({"module.c1.weight": 0, "module.c1.bias": 1}, "module."))
    ['c1.bias', 'c1.weight']
    >>> rename_weights({"features.0.weight": 0}, rename={"features.0.weight": "stem.weight"})
    {'stem.weight': 0}
    """
    if strip_prefix is not None and not isinstance(strip_prefix, str):
        raise error(f"strip_prefix must be a string, found {type(strip_prefix).__name__}")
    if rename is not None and not (isinstance(rename, Mapping) or callable(rename)):
        raise error(f"rename must be a dict or a function, found {type(rename).__name__}")
    sink = DiagnosticSink()
    renamed: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, value in weights.items():
        new = str(name)
        if strip_prefix and new.startswith(strip_prefix):
            new = new[len(strip_prefix) :]
        if isinstance(rename, Mapping):
            new = rename.get(new, new)
        elif rename is not None:
            new = rename(new)
        if not isinstance(new, str) or not new:
            sink.error(f"rename: '{name}' was renamed to {new!r}, expected a non-empty name")
            continue
        if new in renamed:
            sink.error(f"rename: '{origin[new]}' and '{name}' are both renamed to '{new}'")
            continue
        renamed[new] = value
        origin[new] = str(name)
    sink.raise_if_errors()
    return renamed


PICKLE_PROTOCOLS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))


def torch_save_problem(path: Path) -> str | None:
    """Why ``path`` is a ``torch.save`` file (a zip holding ``data.pkl``, or a bare pickle,
    the pre-1.6 format), or None."""
    with path.open("rb") as handle:
        magic = handle.read(2)
    if magic in PICKLE_PROTOCOLS:
        return "a Python pickle (torch.save's legacy format)"
    if magic == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any(name.endswith("data.pkl") for name in names):
            return "a torch.save file (a zip archive holding a pickle)"
    return None


def refuse_torch_save(path: Path) -> None:
    """A ``ConvdslError`` for a ``torch.save`` file, before anything in it is read."""
    problem = torch_save_problem(path)
    if problem is not None:
        raise error(
            f"{path}: {problem}; refused: loading a pickle can run arbitrary code",
            hint=CONVERT_HINT,
        )
