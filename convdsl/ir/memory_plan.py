"""A static memory plan: where every activation lives in one arena.

Made by ``passes.memory`` over the final schedule (after fusion) and consumed by backends. Sizes
and offsets are in bytes *per batch entry* (per unit of dim 0). For a run with batch ``B`` the
arena is ``arena_bytes * B`` and a root buffer R (one that shares nothing) holds batch entry ``n``
of a value v at ``R.offset * B + n * R.size + (v.offset - R.offset)``: for R itself and for a
value written in place over it that is one contiguous array at ``R.offset * B``; for a producer
writing its channel slice of a concat's output it is a strided view whose batch stride is the
concat's size. Graph inputs live in the caller's arrays and are not planned. The rules a plan
must obey are checked by ``passes.memory.plan_problems``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Buffer:
    """The arena slot of one value, and the schedule steps during which it is live.

    ``first`` is the index (in ``Graph.nodes``) of the kernel that writes the value; ``last`` the
    index of the last kernel that reads it (``len(nodes)`` for graph outputs, which live to the
    end). ``shares`` names the value whose slot this one reuses, if any: an elementwise kernel
    writing in place over an input that dies there, or a producer writing straight into its slice
    of a concat's output (``offset`` is then inside that buffer).
    """

    value: int
    offset: int
    size: int
    first: int
    last: int
    shares: int | None = None


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    buffers: Mapping[int, Buffer]
    arena_bytes: int  # the arena's size per batch entry
    naive_bytes: int  # every planned value in a buffer of its own
    lower_bound_bytes: int  # the most bytes live at once for this schedule, without sharing
    alignment: int = 64
