"""Small building blocks over llvmlite's ``IRBuilder``: loops, constants, vectors, intrinsics.

Loops are context managers (``for_range``, ``loop_nest``) whose index is an ``i64`` phi; the
body is whatever the ``with`` block emits. Vector helpers are generic over the lane count, so a
kernel written for ``<8 x float>`` works unchanged with 16 or 4 lanes (and 1, for remainders),
and over the element type (``float`` or ``double``): taken from the operand where there is one
(a pointer's pointee, a vector's element), passed explicitly where there is none (``vec_type``,
``fsplat``). All loads and stores here assume only element alignment unless asked otherwise:
the arena is 64-byte aligned but a kernel's vector may start at any element.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache

from llvmlite import ir

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
F64 = ir.DoubleType()
PTR = I8.as_pointer()
F32P = F32.as_pointer()
VOID = ir.VoidType()


def i64(value: int) -> ir.Constant:
    return ir.Constant(I64, value)


def element_of(ty: ir.Type) -> ir.Type:
    """The floating-point element of a vector, scalar or pointer type."""
    if isinstance(ty, ir.PointerType):
        ty = ty.pointee
    return ty.element if isinstance(ty, ir.VectorType) else ty


def element_size(element: ir.Type) -> int:
    """Bytes of one ``float`` (4) or ``double`` (8)."""
    return 8 if isinstance(element, ir.DoubleType) else 4


def fconst(value: float, element: ir.Type) -> ir.Constant:
    """A scalar ``float`` or ``double`` constant."""
    return ir.Constant(element, value)


def vec_type(lanes: int, element: ir.Type) -> ir.VectorType:
    return ir.VectorType(element, lanes)


def splat(builder: ir.IRBuilder, scalar: ir.Value, lanes: int) -> ir.Value:
    """``scalar`` broadcast to every lane (a constant vector if ``scalar`` is constant)."""
    vt = vec_type(lanes, scalar.type)
    if isinstance(scalar, ir.Constant):
        return ir.Constant(vt, [scalar.constant] * lanes)
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


def fsplat(value: float, lanes: int, element: ir.Type) -> ir.Constant:
    """``value`` (rounded to ``element``) in every lane. One shared object per (bits, lanes,
    element): llvmlite builds and prints a vector constant slowly and caches its text per
    object."""
    code = "<d" if isinstance(element, ir.DoubleType) else "<f"
    return _fsplat(struct.pack(code, value), lanes, code)


@cache
def _fsplat(bits: bytes, lanes: int, code: str) -> ir.Constant:
    (value,) = struct.unpack(code, bits)
    element = F64 if code == "<d" else F32
    return ir.Constant(vec_type(lanes, element), [value] * lanes)


def all_true(lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I1, lanes), [1] * lanes)


def lane_ids(lanes: int) -> ir.Constant:
    """``<0, 1, ..., lanes-1>`` as i64, for per-lane index arithmetic."""
    return ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))


def isplat(builder: ir.IRBuilder, value: ir.Value, lanes: int) -> ir.Value:
    vt = ir.VectorType(I64, lanes)
    if isinstance(value, ir.Constant):
        return ir.Constant(vt, [value.constant] * lanes)
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))


# ---- loops ----------------------------------------------------------------------------------


@contextmanager
def for_range(
    builder: ir.IRBuilder,
    start: ir.Value | int,
    stop: ir.Value | int,
    step: int = 1,
    name: str = "i",
) -> Iterator[ir.Value]:
    """``for i in range(start, stop, step)`` (``step > 0``); yields the ``i64`` index."""
    start_v = i64(start) if isinstance(start, int) else start
    stop_v = i64(stop) if isinstance(stop, int) else stop
    before = builder.block
    header = builder.append_basic_block(f"{name}.head")
    body = builder.append_basic_block(f"{name}.body")
    done = builder.append_basic_block(f"{name}.end")
    builder.branch(header)
    builder.position_at_end(header)
    index = builder.phi(I64, name=name)
    index.add_incoming(start_v, before)
    builder.cbranch(builder.icmp_signed("<", index, stop_v), body, done)
    builder.position_at_end(body)
    yield index
    following = builder.add(index, i64(step), name=f"{name}.next")
    index.add_incoming(following, builder.block)
    builder.branch(header)
    builder.position_at_end(done)


@contextmanager
def loop_nest(
    builder: ir.IRBuilder, stops: Sequence[ir.Value | int], name: str = "i"
) -> Iterator[list[ir.Value]]:
    """Nested ``for_range(0, stop)`` loops, outermost first; yields the indices."""
    if not stops:
        yield []
        return
    with (
        for_range(builder, 0, stops[0], name=f"{name}{len(stops)}") as outer,
        loop_nest(builder, stops[1:], name) as inner,
    ):
        yield [outer, *inner]


@contextmanager
def if_then(builder: ir.IRBuilder, condition: ir.Value) -> Iterator[None]:
    with builder.if_then(condition):
        yield


def unflatten(builder: ir.IRBuilder, index: ir.Value, radices: Sequence[int]) -> list[ir.Value]:
    """The mixed-radix digits of ``index``, last radix fastest: ``[quotient, d_0, ..., d_k]``
    with ``d_i < radices[i]`` (how a flat work item becomes batch entry, rows, channels)."""
    digits: list[ir.Value] = []
    rest = index
    for radix in reversed(radices):
        digits.insert(0, builder.urem(rest, i64(radix)))
        rest = builder.udiv(rest, i64(radix))
    return [rest, *digits]


def entry_alloca(builder: ir.IRBuilder, ty: ir.Type, name: str = "") -> ir.Value:
    """A stack slot in the function's entry block (where mem2reg promotes it to registers)."""
    function = builder.function
    with builder.goto_block(function.entry_basic_block):
        if function.entry_basic_block.instructions:
            builder.position_before(function.entry_basic_block.instructions[0])
        return builder.alloca(ty, name=name)


# ---- memory ---------------------------------------------------------------------------------


def gep(builder: ir.IRBuilder, base: ir.Value, index: ir.Value | int) -> ir.Value:
    """``&base[index]`` for a ``float*`` (or ``double*``) base."""
    return builder.gep(base, [i64(index) if isinstance(index, int) else index])


def cast_pointer(builder: ir.IRBuilder, ptr: ir.Value, element: ir.Type) -> ir.Value:
    """``ptr`` as an ``element*``: a bitcast only where its type differs."""
    if ptr.type == element.as_pointer():
        return ptr
    return builder.bitcast(ptr, element.as_pointer())


def load_vec(
    builder: ir.IRBuilder, ptr: ir.Value, lanes: int, align: int | None = None
) -> ir.Value:
    """``lanes`` consecutive elements at the ``float*`` (``double*``) ``ptr`` (``align=64``
    if known aligned; one element's size by default)."""
    element = element_of(ptr.type)
    cast = builder.bitcast(ptr, vec_type(lanes, element).as_pointer())
    return builder.load(cast, align=align or element_size(element))


def store_vec(
    builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, align: int | None = None
) -> None:
    cast = builder.bitcast(ptr, value.type.as_pointer())
    builder.store(value, cast, align=align or element_size(element_of(value.type)))


def intrinsic(builder: ir.IRBuilder, name: str, ret: ir.Type, args: Sequence[ir.Value]) -> ir.Value:
    """Call the LLVM intrinsic ``name`` (declared on first use)."""
    module = builder.module
    try:
        function = module.get_global(name)
    except KeyError:
        function = ir.Function(module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(function, list(args))


def suffix(ty: ir.Type) -> str:
    """An intrinsic's type suffix: ``f32``, ``f64``, ``v8f32``, ``v4f64``..."""
    scalar = "f64" if isinstance(element_of(ty), ir.DoubleType) else "f32"
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{scalar}"
    return scalar


def fma(builder: ir.IRBuilder, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
    """``a * b + c`` in one rounding (``llvm.fma.v8f32`` etc.)."""
    return intrinsic(builder, f"llvm.fma.{suffix(a.type)}", a.type, [a, b, c])


def unary_intrinsic(builder: ir.IRBuilder, name: str, x: ir.Value) -> ir.Value:
    """``llvm.{name}.v8f32(x)``: exp, fabs, ... (LLVM expands vector forms lane by lane
    where the CPU has no instruction)."""
    return intrinsic(builder, f"llvm.{name}.{suffix(x.type)}", x.type, [x])


def binary_intrinsic(builder: ir.IRBuilder, name: str, a: ir.Value, b: ir.Value) -> ir.Value:
    """``llvm.maxnum`` / ``llvm.minnum`` and friends."""
    return intrinsic(builder, f"llvm.{name}.{suffix(a.type)}", a.type, [a, b])


def masked_load(
    builder: ir.IRBuilder, ptr: ir.Value, mask: ir.Value, lanes: int, fill: float = 0.0
) -> ir.Value:
    """Lanes of ``ptr[0:lanes]`` where ``mask`` is set, ``fill`` elsewhere; masked-off lanes
    are never touched, so ``ptr`` may point before or past the array."""
    element = element_of(ptr.type)
    vt = vec_type(lanes, element)
    cast = builder.bitcast(ptr, vt.as_pointer())
    return intrinsic(
        builder,
        f"llvm.masked.load.{suffix(vt)}.p0",
        vt,
        [cast, ir.Constant(I32, element_size(element)), mask, fsplat(fill, lanes, element)],
    )


def masked_store(builder: ir.IRBuilder, value: ir.Value, ptr: ir.Value, mask: ir.Value) -> None:
    """Store the lanes of ``value`` where ``mask`` is set; other addresses are not touched."""
    cast = builder.bitcast(ptr, value.type.as_pointer())
    align = ir.Constant(I32, element_size(element_of(value.type)))
    intrinsic(
        builder, f"llvm.masked.store.{suffix(value.type)}.p0", VOID, [value, cast, align, mask]
    )


def masked_gather(
    builder: ir.IRBuilder,
    base: ir.Value,
    offsets: ir.Value,
    mask: ir.Value,
    lanes: int,
    fill: float = 0.0,
) -> ir.Value:
    """``base[offsets[l]]`` where ``mask[l]``, ``fill`` elsewhere (``offsets`` an i64 vector).

    Built lane by lane from scalar loads at clamped addresses (llvmlite's ``gep`` takes no
    vector indices); LLVM may turn it into a hardware gather."""
    element = element_of(base.type)
    safe = builder.select(mask, offsets, ir.Constant(offsets.type, [0] * lanes))
    result: ir.Value = fsplat(0.0, lanes, element)
    for lane in range(lanes):
        at = ir.Constant(I32, lane)
        value = builder.load(gep(builder, base, builder.extract_element(safe, at)))
        result = builder.insert_element(result, value, at)
    return builder.select(mask, result, fsplat(fill, lanes, element))


def concat(b: ir.IRBuilder, vectors: Sequence[ir.Value], fill: float = 0.0) -> ir.Value:
    """One vector of ``vectors`` (each ``<lanes x float>`` or ``double``) end to end, padded
    with ``fill`` vectors to a power-of-two count: a tree of shuffles."""
    lanes, element = vectors[0].type.count, vectors[0].type.element
    parts = list(vectors)
    while len(parts) & (len(parts) - 1):
        parts.append(fsplat(fill, lanes, element))
    while len(parts) > 1:
        width = parts[0].type.count
        order = ir.Constant(ir.VectorType(I32, 2 * width), list(range(2 * width)))
        parts = [b.shuffle_vector(parts[i], parts[i + 1], order) for i in range(0, len(parts), 2)]
    return parts[0]


def pick(b: ir.IRBuilder, wide: ir.Value, indices: Sequence[int]) -> ir.Value:
    """``<len(indices) x float>`` (or ``double``) of ``wide``'s elements at ``indices``."""
    return b.shuffle_vector(wide, wide, ir.Constant(ir.VectorType(I32, len(indices)), indices))


def wide_mask(b: ir.IRBuilder, first: ir.Value, width: int, size: int) -> ir.Value:
    """Mask of ``first + e`` in ``[0, size)`` for ``e < width`` (i32 lanes: cheap compares)."""
    index = b.add(
        splat_i32(b, b.trunc(first, I32), width),
        ir.Constant(ir.VectorType(I32, width), list(range(width))),
    )
    inside = b.icmp_signed(">=", index, ir.Constant(index.type, [0] * width))
    below = b.icmp_signed("<", index, ir.Constant(index.type, [size] * width))
    return b.and_(inside, below)


def splat_i32(b: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    vt = ir.VectorType(I32, width)
    one = b.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(I32, 0))
    return b.shuffle_vector(one, one, ir.Constant(vt, [0] * width))
