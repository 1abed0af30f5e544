"""A graph's lowering, remembered: a cached build that needs no LLVM IR at all.

With every module's machine code in the ``object_cache``, what a second build of the same
network still spends is building the LLVM IR in Python, only to hash it into the modules' keys
(FCN-8s: 0.6 s of a 0.85 s build). So the backend also keeps, per lowering, a small JSON record
of what running the code needs besides the code: the parameter table's names and packings,
the arena size and the images per pass, the kernel calls (function, node,
address bindings) and the keys of the modules' object files. Its key hashes everything the
lowering depends on: the graph (its ``repr``: every value, node, attribute, the memory plan
and the source), the vector width, thread count and profiling flag, the target, llvmlite's
version and the source code of convdsl itself, so no edit to the compiler can meet a stale
record. A record whose object files are missing, or that does not parse, is a miss.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import llvmlite

import convdsl
from convdsl.backends.llvm import object_cache
from convdsl.backends.llvm.entry import Worker
from convdsl.backends.llvm.lower import Lowered
from convdsl.backends.llvm.target import Target
from convdsl.ir.graph import Graph

FORMAT = "convdsl-lowering-3"


@cache
def _compiler_digest() -> str:
    """SHA-256 of every Python source file of the convdsl package."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def lowering_key(
    graph: Graph, target: Target, threads: int, profile: bool, bounds_check: bool = False
) -> str | None:
    """The record's key, or None when the code cache is off."""
    if object_cache.cache_dir() is None:
        return None
    digest = hashlib.sha256()
    parts = (
        FORMAT,
        convdsl.__version__,  # with the sources' digest: a zipped install has no files to hash
        _compiler_digest(),
        llvmlite.__version__,
        target.triple,
        target.cpu,
        target.features,
        str(target.lanes),
        str(threads),
        str(profile),
        str(bounds_check),
        repr(graph),
    )
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def store(key: str, lowered: Lowered, module_keys: list[str]) -> None:
    record = {
        "format": FORMAT,
        "params": list(lowered.params),
        "packings": {name: list(packing) for name, packing in lowered.packings.items()},
        "arena_bytes": lowered.arena_bytes,
        "per_pass": lowered.per_pass,
        "workers": [
            {
                "name": worker.name,
                "position": list(worker.position),
                "role": worker.role,
                "bindings": [list(binding) for binding in worker.bindings],
                "label": worker.label,
            }
            for worker in lowered.workers
        ],
        "modules": module_keys,
        "sites": {name: [list(site) for site in sites] for name, sites in lowered.sites.items()},
    }
    object_cache.store(key, json.dumps(record).encode(), suffix=".json")


def load(key: str, graph: Graph) -> tuple[Lowered, list[bytes]] | None:
    """The lowering stored under ``key`` and its modules' object code, or None."""
    data = object_cache.load(key, suffix=".json")
    if data is None:
        return None
    try:
        record = json.loads(data)
        if record["format"] != FORMAT:
            return None
        objects = [object_cache.load(module) for module in record["modules"]]
        workers = tuple(_worker(graph, entry) for entry in record["workers"])
        lowered = Lowered(
            None,
            (),
            tuple(record["params"]),
            {name: (source, block) for name, (source, block) in record["packings"].items()},
            int(record["arena_bytes"]),
            workers,
            int(record["per_pass"]),
            {
                name: tuple((int(binding), str(access)) for binding, access in sites)
                for name, sites in record["sites"].items()
            },
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    if any(code is None for code in objects):
        return None
    return lowered, [code for code in objects if code is not None]


def _worker(graph: Graph, entry: dict) -> Worker:
    index, step = entry["position"]
    node = graph.nodes[index] if step is None else graph.nodes[index].parts[step]
    bindings = tuple((kind, key) for kind, key in entry["bindings"])
    return Worker(entry["name"], node, entry["role"], bindings, entry["label"], (index, step))
