"""Compiled machine code on disk, keyed by what was compiled.

LLVM's optimizer and code generator are most of the time it takes to build an llvm network
(FCN-8s: about 4 of 5 s). The object code they make depends only on the LLVM module text, the
target (triple, CPU, features), the LLVM that compiled it and how it was asked to
(``codegen.py``: its pass pipeline and code generator settings), so those, hashed, name a
cache entry: a hit loads the object file instead of compiling, a miss compiles and stores it
(after a SHA-256 of the object, so a damaged file reads as a miss). A hit can never be stale:
any change to the network, the weights' layout, the backend's lowering or code generation or
the machine changes the module text, ``codegen.py`` or the target, hence the key. Weights are not
part of the code (the entry function reads them through a pointer table).

The cache lives in ``$CONVDSL_CACHE_DIR`` if set (empty or ``off`` turns it off), else
``$XDG_CACHE_HOME/convdsl`` or ``~/.cache/convdsl``. Entries are written atomically (a
temporary file renamed into place); an unreadable, unwritable or damaged cache only costs a
compile, never an error. A hit touches its file; once per process, the first store trims the
cache to ``$CONVDSL_CACHE_MAX_MB`` (default 1024), least recently used entries first, down
to 80% of it, so the cache of a user who edits networks all day stays bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from functools import cache
from pathlib import Path

import llvmlite

import convdsl
from convdsl.backends.llvm import codegen
from convdsl.backends.llvm.target import Target

CACHE_ENV = "CONVDSL_CACHE_DIR"
LIMIT_ENV = "CONVDSL_CACHE_MAX_MB"
DEFAULT_LIMIT_MB = 1024.0
OFF = ("", "off", "0")
_trimmed: set[Path] = set()  # directories trimmed by this process


def cache_dir() -> Path | None:
    """Where entries go, or ``None`` when caching is off."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in OFF else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory to be found: no cache
            return None
    return Path(base) / "convdsl"


def cache_key(llvm_ir: str, target: Target) -> str:
    digest = hashlib.sha256()
    parts = (llvmlite.__version__, _codegen_digest(), target.triple, target.cpu, target.features)
    for part in (*parts, llvm_ir):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


@cache
def _codegen_digest() -> str:
    """SHA-256 of ``codegen.py``, which turns module text into machine code (convdsl's version
    where the source cannot be read, as in a zipped install)."""
    try:
        return hashlib.sha256(Path(codegen.__file__).read_bytes()).hexdigest()
    except OSError:
        return convdsl.__version__


def load(key: str, suffix: str = ".o") -> bytes | None:
    """The object code (or other ``suffix`` entry) stored under ``key``, or ``None`` (no
    entry, caching off, unreadable)."""
    directory = cache_dir()
    if directory is None:
        return None
    path = directory / f"{key}{suffix}"
    try:
        entry = path.read_bytes()
    except OSError:
        return None
    with contextlib.suppress(OSError):  # a read-only cache still serves its entries
        os.utime(path)  # recently used: the last to be trimmed
    # A checksum first: a truncated or damaged file is a miss, never fed to the linker.
    checksum, data = entry[:32], entry[32:]
    return data if data and hashlib.sha256(data).digest() == checksum else None


def store(key: str, data: bytes, suffix: str = ".o") -> None:
    """Keep ``data`` under ``key``; failures (read-only home, full disk) are ignored."""
    directory = cache_dir()
    if directory is None or not data:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as handle:
            handle.write(hashlib.sha256(data).digest() + data)
        os.replace(handle.name, directory / f"{key}{suffix}")
    except OSError:
        return
    if directory not in _trimmed:
        _trimmed.add(directory)
        trim(directory, _limit_bytes())


def _limit_bytes() -> float:
    text = os.environ.get(LIMIT_ENV)
    if text is None:
        return DEFAULT_LIMIT_MB * 2**20
    try:
        megabytes = float(text)
        if not megabytes >= 0:  # negative or nan
            raise ValueError(text)
    except ValueError:  # a cache setting never stops a build: say so, use the default
        warnings.warn(
            f"{LIMIT_ENV}={text!r} is not a number of megabytes >= 0; "
            f"the code cache keeps to the default, {DEFAULT_LIMIT_MB:g} MB",
            stacklevel=3,
        )
        return DEFAULT_LIMIT_MB * 2**20
    return megabytes * 2**20


def trim(directory: Path, limit: float) -> None:
    """Delete the least recently used entries of ``directory`` while it holds more than
    ``limit`` bytes, down to 80% of it (leftover ``.tmp`` files of crashed writes first)."""
    try:
        entries = []
        for path in directory.iterdir():
            if path.suffix in (".o", ".json", ".tmp"):
                stat = path.stat()
                oldest_first = path.suffix != ".tmp"
                entries.append((oldest_first, stat.st_mtime, stat.st_size, path))
    except OSError:
        return
    total = sum(size for _, _, size, _ in entries)
    if total <= limit:
        return
    for _, _, size, path in sorted(entries):
        if total <= 0.8 * limit:
            break
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
