"""Importing an ONNX model as a readable ``.conv`` network and its weights.

>>> source, weights = import_onnx("model.onnx")          # doctest: +SKIP
>>> net = compile_onnx("model.onnx", backend="numpy")    # doctest: +SKIP

The importer maps each ONNX node to one convdsl op call (``onnx_import_ops_*``), names layers
after the model's initializers or nodes, and writes shape annotations computed by convdsl's
own shape inference of the result. Every static size ONNX shape inference knows is checked
against convdsl's before the text is returned, so an import either reproduces the model's
shapes or fails with a ``ConvdslError``; nothing is approximated.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from convdsl.diagnostics import ConvdslError, Diagnostic, Source, error
from convdsl.interop import (
    onnx_import_ops_conv,
    onnx_import_ops_dense,
    onnx_import_ops_elementwise,
    onnx_import_ops_layout,
    onnx_import_ops_movement,
)
from convdsl.interop.onnx_import_graph import Importer
from convdsl.interop.onnx_import_load import load_model
from convdsl.ir.types import Dim

if TYPE_CHECKING:
    from convdsl.api import Network

CONVERTERS = {
    **onnx_import_ops_conv.CONVERTERS,
    **onnx_import_ops_dense.CONVERTERS,
    **onnx_import_ops_elementwise.CONVERTERS,
    **onnx_import_ops_layout.CONVERTERS,
    **onnx_import_ops_movement.CONVERTERS,
}
"""ONNX op type -> its converter; ``onnx_import_fold.FOLDERS`` adds ops on constants."""


class ImportedOnnx(NamedTuple):
    source: str
    """The ``.conv`` text."""
    weights: dict[str, np.ndarray]
    """The parameters, keyed by the ``.conv`` network's parameter names."""


def import_onnx(model: str | os.PathLike[str] | bytes | Any) -> ImportedOnnx:
    """An ONNX model (a path, its bytes or an ``onnx.ModelProto``) as ``.conv`` source text
    and weights; raises ``ConvdslError`` for a model that cannot be imported exactly."""
    loaded = load_model(model)
    importer = Importer(loaded, CONVERTERS)
    program = importer.run()
    producer = loaded.model.producer_name
    made_by = f", made by {producer} {loaded.model.producer_version}".rstrip() if producer else ""
    origin = "an ONNX model" if loaded.where.startswith("<") else Path(loaded.where).name
    program.header = [
        f"# Imported from {origin} by convdsl import (ONNX opset {loaded.opset}{made_by})."
    ]
    plain = program.render()
    shapes = _checked_shapes(plain, f"{loaded.name}.conv", importer)
    return ImportedOnnx(program.render(shapes), program.weights)


def compile_onnx(model: str | os.PathLike[str] | bytes | Any, **options: Any) -> Network:
    """The imported model compiled as a ``Network``; ``options`` are ``compile_string``'s
    (``backend``, ``opt_level``, ``threads``, ``sizes``...)."""
    from convdsl.api import compile_string

    source, weights = import_onnx(model)
    name = f"{Path(str(model)).stem}.conv" if isinstance(model, str | os.PathLike) else "<onnx>"
    return compile_string(source, name, weights=weights, **options)


def _checked_shapes(text: str, name: str, importer: Importer) -> dict[str, tuple[Dim, ...]]:
    """Each layer's shape as convdsl infers it, checked against ONNX's static sizes."""
    from convdsl.passes.pipeline import frontend
    from convdsl.passes.shapes import infer_shapes

    try:
        graph = infer_shapes(frontend(Source(name, text)))
    except ConvdslError as exc:
        raise _not_compiling(importer, exc) from None
    shapes: dict[str, tuple[Dim, ...]] = {}
    for node in graph.nodes:
        if node.outputs:
            shapes[node.name] = graph.type_of(node.outputs[0]).shape
    for layer, value in importer.layers.items():
        ours, theirs = shapes.get(layer), importer.static_shape(value)
        if ours is None or theirs is None:
            continue
        if len(ours) != len(theirs) or any(
            isinstance(a, int) and b is not None and a != b
            for a, b in zip(ours, theirs, strict=True)
        ):
            shown = ", ".join("?" if d is None else str(d) for d in theirs)
            raise error(
                f"{importer.loaded.where}: value '{value}': ONNX gives the shape [{shown}], "
                f"convdsl computes [{', '.join(map(str, ours))}] for the layer '{layer}'",
                hint="the model's shapes disagree with the ops' definitions; see "
                "docs/onnx_import.md for the differences convdsl knows",
            )
    return shapes


def _not_compiling(importer: Importer, exc: ConvdslError) -> ConvdslError:
    head = Diagnostic(
        f"{importer.loaded.where}: the imported network does not compile (the lines below "
        "are in the .conv text it would be)"
    )
    return ConvdslError((head, *exc.diagnostics))


# ---- writing files ---------------------------------------------------------------------------


def write_import(model: str | os.PathLike[str], output: str | os.PathLike[str],
                 weights: str | os.PathLike[str] | None = None,
                 force: bool = False) -> tuple[Path, Path | None, ImportedOnnx]:  # fmt: skip
    """Import ``model`` and write ``output`` (.conv) and the weights (.npz; by default next to
    ``output``). Existing files are kept unless ``force``; files are written whole or not at
    all. Returns the paths written and the import."""
    conv_path = Path(output)
    npz_path = Path(weights) if weights is not None else conv_path.with_suffix(".npz")
    if conv_path.suffix != ".conv":
        raise error(f"{conv_path}: expected a file name ending in .conv")
    if npz_path.suffix != ".npz":
        raise error(f"{npz_path}: expected a file name ending in .npz")
    for path in (conv_path, npz_path):
        _check_writable(path, force)
    imported = import_onnx(model)
    has_weights = bool(imported.weights) or weights is not None
    _write_atomically(conv_path, npz_path if has_weights else None, imported)
    return conv_path, npz_path if has_weights else None, imported


def _check_writable(path: Path, force: bool) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise error(f"{path}: directory {directory} does not exist")
    if path.is_dir():
        raise error(f"{path}: is a directory")
    if path.exists() and not force:
        raise error(f"{path}: file exists; refusing to overwrite it",
                    hint="choose another name, or pass --force")  # fmt: skip


def _write_atomically(conv_path: Path, npz_path: Path | None, imported: ImportedOnnx) -> None:
    temps: list[tuple[str, Path]] = []
    try:
        temps.append((_temp_text(conv_path, imported.source), conv_path))
        if npz_path is not None:
            temps.append((_temp_npz(npz_path, imported.weights), npz_path))
        for temp, final in temps:
            os.replace(temp, final)
    except OSError as exc:
        raise error(f"cannot write the import ({exc.strerror or exc})") from None
    finally:
        for temp, _ in temps:
            Path(temp).unlink(missing_ok=True)


def _temp_text(path: Path, text: str) -> str:
    fd, temp = tempfile.mkstemp(suffix=".conv", dir=path.parent if str(path.parent) else ".")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return temp


def _temp_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> str:
    fd, temp = tempfile.mkstemp(suffix=".npz", dir=path.parent if str(path.parent) else ".")
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, **{name: np.asarray(a) for name, a in arrays.items()})  # type: ignore[arg-type]
    return temp


__all__ = ["ImportedOnnx", "compile_onnx", "import_onnx", "write_import"]
