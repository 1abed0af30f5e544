"""Kernels built once: a node whose kernel would print the same as an earlier one's reuses it.

Kernels of the same shapes print the same and share one function (``lower``), but finding
that out means building and printing the second one too: in Python, on a cold build's
critical path (MobileNet's five identical 512-channel blocks: ~0.5 s of ~1.4 s of lowering).
So before building a kernel, ``lower`` asks for its ``Signature``: everything its code
depends on (each part's op, attributes, parameter roles and dtypes, the types of the values
it reads and writes and which of them are the same value, the run-time reading flags), with
the values and parameters it reads in one canonical order. A node with the signature of a
kernel already built takes that kernel's function and its address table, each value and
parameter replaced by the one in the same place of its own (``remapped``).

The emitters read nothing of the graph beyond that, except for a ``concat`` (whose
slices may already be in place, by the memory plan): kernels with one are always built.
``tests/test_llvm_backend.py`` checks on every example that reusing changes no module text
and no table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from convdsl.backends.llvm.kernel import param_dtype
from convdsl.ir.graph import Graph, Node

# ("value", id), ("param", name) or ("int", "name=value"): ``kernel.BoundAddresses``
Binding = tuple[str, int | str]
# the suffixes of a repacked copy of a parameter (``kernel.packed_param``, ``emit_transpose_phase``)
PACKED = ("@pack", "@tpack")


@dataclass(frozen=True)
class Signature:
    key: tuple
    values: tuple[int, ...]  # the values the kernel reads and writes, in first-use order
    params: tuple[str, ...]  # its parameters, part by part, by role


@dataclass(frozen=True)
class Built:
    """A kernel built for ``signature``: its function and its table."""

    function: str
    signature: Signature
    bindings: tuple[Binding, ...]


def signature(graph: Graph, node: Node, flags: Callable[[Node], tuple]) -> Signature | None:
    """``node``'s signature (``flags(part)``: how the lowering reads the part at run time),
    or None for a kernel that is always built."""
    parts = node.parts if node.is_fused else (node,)
    values: list[int] = []
    place: dict[int, int] = {}
    params: list[str] = []
    shape = []
    for part in parts:
        if part.op == "concat":
            return None
        refs = []
        for value in (*part.inputs, *part.outputs):
            if value not in place:
                place[value] = len(values)
                values.append(value)
            refs.append(place[value])
        roles = sorted(part.params.items())
        params.extend(name for _, name in roles)
        dtypes = tuple(param_dtype(graph, name).name for _, name in roles)
        roles_only = tuple(role for role, _ in roles)
        shape.append((part.op, repr(part.attrs), roles_only, dtypes, tuple(refs), flags(part)))
    types = tuple(repr(graph.type_of(value)) for value in values)
    return Signature((node.op, tuple(shape), types), tuple(values), tuple(params))


def remapped(
    built: Built, now: Signature, add_packing: Callable[[str, str, int], None]
) -> tuple[Binding, ...] | None:
    """``built``'s table for the node of signature ``now`` (the same key), or None if a word
    of it is not one of the node's values or parameters (then the kernel is built).
    ``add_packing(name, source, block)`` declares each repacked parameter the table names."""
    values = dict(zip(built.signature.values, now.values, strict=True))
    params = dict(zip(built.signature.params, now.params, strict=True))
    bindings: list[Binding] = []
    for kind, key in built.bindings:
        if kind == "value" and isinstance(key, int) and key in values:
            bindings.append((kind, values[key]))
        elif kind == "param" and isinstance(key, str) and key in params:
            bindings.append((kind, params[key]))
        elif kind == "param" and isinstance(key, str) and (packed := _packed(key, params)):
            name, source, block = packed
            add_packing(name, source, block)
            bindings.append((kind, name))
        elif kind in ("int", "counter"):
            bindings.append((kind, key))  # a function of attributes and types: in the key
        else:
            return None
    return tuple(bindings)


def _packed(key: str, params: dict[str, str]) -> tuple[str, str, int] | None:
    """``(new name, new source, block)`` for a repacked parameter ``source@packN``."""
    for suffix in PACKED:
        source, found, block = key.rpartition(suffix)
        if found and block.isdigit() and source in params:
            return f"{params[source]}{suffix}{block}", params[source], int(block)
    return None
