"""Files convdsl writes for the user: checked before any work, written whole or not at all.

Every writer (weights ``.npz``/``.safetensors``, ONNX models, pictures of a graph) checks its
target first (``check_target``: the suffix, an existing directory, no existing file unless
overwriting is asked for) and writes into a temporary file beside it that is renamed into
place (``atomic_target``), so a failed write never leaves a partial file or loses the user's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from convdsl.diagnostics import error

OVERWRITE_HINT = "choose another name, or pass overwrite=True (--force on the command line)"


def check_target(path: str | Path, suffixes: tuple[str, ...], overwrite: bool) -> Path:
    """``path`` ends in one of ``suffixes``, its directory exists, and it does not exist
    unless ``overwrite``."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise error(f"{path}: expected a file name ending in {' or '.join(suffixes)}")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise error(f"{path}: directory {directory} does not exist")
    if path.exists() and not overwrite:
        raise error(f"{path}: file exists; refusing to overwrite it", hint=OVERWRITE_HINT)
    return path


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; renamed to ``path`` when the block ends
    normally, removed otherwise. An ``OSError`` becomes a user error naming ``path``."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        handle, name = tempfile.mkstemp(prefix=".convdsl-", suffix=path.suffix, dir=directory)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        temporary.unlink(missing_ok=True)
