"""Files the subcommands read and write: ``--input NAME=PATH.npy`` arrays (never unpickled),
the sizes and batch of random inputs, output files that must not overwrite the user's.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convdsl import weights as weights_io
from convdsl.api import (
    Network,
)
from convdsl.diagnostics import ConvdslError, DiagnosticSink, error
from convdsl.ir.symbolic import Expr


def parse_input_flags(flags: Sequence[str], net: Network) -> dict[str, np.ndarray]:
    """``NAME=PATH.npy`` pairs to arrays; every bad flag is reported, each naming its input."""
    sink = DiagnosticSink()
    arrays: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for flag in flags:
        name, sep, path = flag.partition("=")
        if not sep or not name or not path:
            sink.error(
                f"--input '{flag}': expected NAME=PATH.npy",
                hint=f"for example --input {next(iter(net.inputs), 'x')}=x.npy",
            )
        elif name not in net.inputs:
            close = difflib.get_close_matches(name, list(net.inputs), n=1)
            sink.error(
                f"--input {name}: the network has no input '{name}'; its inputs are "
                f"{', '.join(net.inputs) or '(none)'}",
                hint=f"did you mean '{close[0]}'?" if close else None,
            )
        elif name in seen:
            sink.error(f"--input {name}: given more than once")
        else:
            seen.add(name)
            try:
                arrays[name] = load_npy(name, Path(path))
            except ConvdslError as exc:
                sink.extend(exc.diagnostics)
    sink.raise_if_errors()
    return arrays


def load_npy(name: str, path: Path) -> np.ndarray:
    """One ``.npy`` array, never unpickling anything."""
    hint = "save inputs with numpy.save; pickled object arrays are refused"
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
        # Checked first: without it numpy calls any non-.npy file "pickled data".
        if magic != b"\x93NUMPY":
            found = "an .npz archive" if magic.startswith(b"PK") else "no .npy header"
            raise error(f"input '{name}': {path}: not a .npy file ({found})", hint=hint)
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise error(f"input '{name}': {path}: no such file") from None
    except (ValueError, OSError, EOFError) as exc:
        raise error(
            f"input '{name}': {path}: not a readable .npy array ({exc})", hint=hint
        ) from None
    if loaded.dtype.kind not in "fiu":
        raise error(f"input '{name}': {path}: expected a numeric array, found dtype {loaded.dtype}")
    return loaded


def batch_of(given: dict[str, np.ndarray], net: Network) -> int:
    """The batch the random inputs get when --batch is not given: the given inputs' own."""
    for name, array in given.items():
        if not isinstance(net.inputs[name].shape[0], int) and array.ndim:
            return int(array.shape[0])
    return 1


def sizes_of(given: dict[str, np.ndarray], net: Network, shape: dict[str, int]) -> dict[str, int]:
    """The input sizes: --shape, and those of the --input arrays (which must agree)."""
    sizes = dict(shape)
    origin = dict.fromkeys(shape, "--shape")
    for name, array in given.items():
        declared = net.inputs[name].shape
        if array.ndim != len(declared):
            continue  # the run reports the rank
        for dim, size in zip(declared[2:], array.shape[2:], strict=True):
            if isinstance(dim, Expr) and str(dim) in net.sizes:
                if str(dim) in sizes and sizes[str(dim)] != size:
                    raise error(
                        f"size {dim} is {size} in --input {name} but {sizes[str(dim)]} in "
                        f"{origin[str(dim)]}"
                    )
                sizes[str(dim)] = int(size)
                origin[str(dim)] = f"--input {name}"
    missing = [name for name in net.sizes if name not in sizes]
    if missing and len(given) < len(net.inputs):
        raise error(
            f"random inputs need the input sizes {', '.join(missing)}",
            hint=f"give them: --shape {','.join(f'{n}=...' for n in missing)}, or --input arrays",
        )
    return sizes


def refuse_overwrite(path: Path, force: bool) -> None:
    # Checked before compiling and running, so a long run is not lost to a bad file name.
    weights_io.check_weights_path(path)
    if not path.parent.is_dir():
        raise error(f"{path}: directory {path.parent} does not exist")
    if path.exists() and not force:
        raise error(
            f"{path}: file exists; refusing to overwrite it",
            hint="choose another name, or pass --force",
        )


def save_outputs(path: Path, arrays: dict[str, np.ndarray], force: bool) -> None:
    try:
        weights_io.save_weights(path, arrays, overwrite=force)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
