"""The bounds-checked build: every load and store of a kernel checked against its buffer.

With ``bounds_check=True`` (``compile_string(..., bounds_check=True)``, ``convdsl run
--bounds-check``) every kernel's table carries, beside each value's address, the byte range
the value occupies in this pass (``lo``, ``hi``), and beside each parameter's, its end
(``kernel.BoundAddresses``). ``instrument`` then walks every memory access of the kernel back
to the table word its address was computed from (through ``getelementptr`` and casts) and
puts a call of ``convdsl_bounds_check`` in front of it, which receives the bytes the access
touches (for a masked access, from its first to its last enabled lane) and the range of that
value. An access outside it is not made: the check records the first such fault (the site:
kernel function, table word, load or store; the kernel call running; the address; the range)
in ``FAULT`` and sends the access to a sink, so nothing is corrupted and the process goes on;
the executable then raises an ``InternalError`` naming the kernel, the layer and the value
(``describe``). Accesses to the kernel's own stack (accumulators) are not checked.

It is slow (a call per access) and meant for tests and for hunting a crash, not for speed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from llvmlite import ir

from convdsl.backends.llvm.loops import I1, I32, I64, PTR, i64
from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Graph

if TYPE_CHECKING:  # entry imports this module
    from convdsl.backends.llvm.entry import Worker

CHECK = "convdsl_bounds_check"
FAULT = "convdsl_bounds_fault"  # i64 x 6: set?, site, worker, address, lo, hi
WORKER = "convdsl_bounds_worker"  # i64: the index of the kernel call running
SINK = "convdsl_bounds_sink"  # where an access outside its buffer goes instead
SINK_BYTES = 4096  # more than the widest vector access
CHECK_TYPE = ir.FunctionType(PTR, [PTR, I64, I64, I64, I64, I64])
FAULT_TYPE = ir.ArrayType(I64, 6)


Site = tuple[int, str]
"""One checked access of a kernel function: the index of the table binding its address comes
from, and what it does ("load", "store", "masked load", "masked store")."""


def runtime() -> ir.Module:
    """The check function and its globals, one copy per compiled network."""
    module = ir.Module(name="bounds_runtime")
    fault = ir.GlobalVariable(module, FAULT_TYPE, FAULT)
    fault.initializer = ir.Constant(FAULT_TYPE, [0] * 6)
    worker = ir.GlobalVariable(module, I64, WORKER)
    worker.initializer = i64(-1)
    sink_type = ir.ArrayType(ir.IntType(8), SINK_BYTES)
    sink = ir.GlobalVariable(module, sink_type, SINK)
    sink.initializer = ir.Constant(sink_type, None)
    sink.align = 64
    check = ir.Function(module, CHECK_TYPE, CHECK)
    pointer, first, end, lo, hi, site = check.args
    b = ir.IRBuilder(check.append_basic_block("entry"))
    address = b.ptrtoint(pointer, I64)
    start, stop = b.add(address, first), b.add(address, end)
    empty = b.icmp_signed("<=", end, first)
    inside = b.and_(b.icmp_unsigned(">=", start, lo), b.icmp_unsigned("<=", stop, hi))
    fine, bad = check.append_basic_block("fine"), check.append_basic_block("bad")
    b.cbranch(b.or_(empty, inside), fine, bad)
    b.position_at_end(fine)
    b.ret(pointer)
    b.position_at_end(bad)
    flag = b.gep(fault, [ir.Constant(I32, 0), ir.Constant(I32, 0)])
    won = b.extract_value(b.cmpxchg(flag, i64(0), i64(1), "seq_cst", "seq_cst"), 1)
    with b.if_then(won):
        words = (site, b.load(worker), start, lo, hi)
        for index, word in enumerate(words, start=1):
            b.store(word, b.gep(fault, [ir.Constant(I32, 0), ir.Constant(I32, index)]))
    b.ret(b.bitcast(sink, PTR))
    return module


def instrument(
    function: ir.Function, roots: dict[ir.Value, tuple[int, ir.Value, ir.Value]]
) -> tuple[Site, ...]:
    """Put a check in front of every load and store of ``function`` whose address comes
    from a table word: ``roots`` maps each word's pointer to (binding index, lo, hi).
    Returns the ``Site`` of each check, in the order of their ``site`` numbers (so two
    kernels that print the same have the same sites)."""
    sites: list[Site] = []
    check = _declare(function.module)
    accesses = [
        instruction
        for block in function.blocks
        for instruction in block.instructions
        if _access(instruction) is not None
    ]
    b = ir.IRBuilder()
    for instruction in accesses:
        access = _access(instruction)
        assert access is not None
        kind, pointer, vector_type, mask = access
        root = _root(pointer)
        if isinstance(root, ir.AllocaInstr | ir.Argument | ir.GlobalVariable):
            continue  # the kernel's own stack, its table, a constant table
        if root not in roots:
            raise InternalError(f"bounds check: cannot tell which buffer {kind} reads in "
                                f"{function.name}: {instruction}")  # fmt: skip
        binding, lo, hi = roots[root]
        b.position_before(instruction)
        first, end = _touched(b, vector_type, mask)
        site = i64(len(sites))
        sites.append((binding, kind))
        safe = b.call(check, [b.bitcast(pointer, PTR), first, end, lo, hi, site])
        instruction.replace_usage(pointer, b.bitcast(safe, pointer.type))
    return tuple(sites)


def _declare(module: ir.Module) -> ir.Function:
    try:
        found = module.get_global(CHECK)
        assert isinstance(found, ir.Function)
        return found
    except KeyError:
        return ir.Function(module, CHECK_TYPE, CHECK)


def _access(instruction: ir.Instruction) -> tuple[str, ir.Value, ir.Type, ir.Value | None] | None:
    """(kind, address, type accessed, lane mask or None) of a memory access, else None."""
    if isinstance(instruction, ir.LoadInstr):
        pointer = instruction.operands[0]
        return "load", pointer, pointer.type.pointee, None
    if isinstance(instruction, ir.StoreInstr):
        value, pointer = instruction.operands[:2]
        return "store", pointer, value.type, None
    if isinstance(instruction, ir.CallInstr):
        name = getattr(instruction.callee, "name", "")
        if name.startswith("llvm.masked.load."):
            pointer, _, mask, _ = instruction.args
            return "masked load", pointer, pointer.type.pointee, mask
        if name.startswith("llvm.masked.store."):
            value, pointer, _, mask = instruction.args
            return "masked store", pointer, value.type, mask
        if name.startswith(("llvm.memcpy", "llvm.memset", "llvm.masked.")):
            raise InternalError(f"bounds check: {name} is not checked yet")
    return None


def _root(pointer: ir.Value) -> ir.Value:
    """The value ``pointer`` is computed from through getelementptr and bitcasts."""
    while True:
        if isinstance(pointer, ir.GEPInstr):
            pointer = pointer.pointer
        elif isinstance(pointer, ir.CastInstr) and pointer.opname == "bitcast":
            pointer = pointer.operands[0]
        else:
            return pointer


def _touched(b: ir.IRBuilder, accessed: ir.Type, mask: ir.Value | None) -> tuple[ir.Value, ...]:
    """The bytes an access of ``accessed`` touches, from its address: [first, end)."""
    if isinstance(accessed, ir.VectorType):
        lanes, element = accessed.count, accessed.element
    else:
        lanes, element = 1, accessed
    size = _bytes(element)
    if mask is None:
        return i64(0), i64(lanes * size)
    if isinstance(mask, ir.Constant):
        enabled = [lane for lane, on in enumerate(mask.constant) if _true(on)]
        if not enabled:
            return i64(0), i64(0)
        return i64(enabled[0] * size), i64((enabled[-1] + 1) * size)
    bits = b.zext(b.bitcast(mask, ir.IntType(lanes)), I64)
    no = ir.Constant(I1, 0)
    first = _intrinsic(b, "llvm.cttz.i64", [bits, no])
    last = b.sub(i64(64), _intrinsic(b, "llvm.ctlz.i64", [bits, no]))
    return b.mul(first, i64(size)), b.mul(last, i64(size))


def _true(lane: object) -> bool:
    return bool(lane.constant if isinstance(lane, ir.Constant) else lane)


def _bytes(element: ir.Type) -> int:
    if isinstance(element, ir.DoubleType):
        return 8
    if isinstance(element, ir.FloatType):
        return 4
    if isinstance(element, ir.IntType):
        return max(1, element.width // 8)
    if isinstance(element, ir.PointerType):
        return 8
    raise InternalError(f"bounds check: an access of {element}")


def _intrinsic(b: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
    module = b.module
    try:
        function = module.get_global(name)
    except KeyError:
        function = ir.Function(module, ir.FunctionType(I64, [a.type for a in args]), name)
    return b.call(function, args)


def fault_error(
    fault: Sequence[int],
    workers: Sequence[Worker],
    sites: Mapping[str, tuple[Site, ...]],
    graph: Graph,
) -> InternalError:
    """The error for the fault recorded in ``fault`` (``FAULT``'s words)."""
    _, site, index, address, lo, hi = fault
    worker = workers[index]
    binding, access = sites[worker.name][site]
    kind, key = worker.bindings[binding]
    if kind == "value":
        what = f"value %{graph.values[int(key)].name}"
    else:
        source, packed, _ = str(key).partition("@")
        what = f"parameter {source}" + (" (repacked)" if packed else "")
    where = f"{address - lo:+d} bytes from its start" if address < lo else (
        f"{address - lo} bytes into it, {hi - lo} long")  # fmt: skip
    return InternalError(
        f"bounds check: kernel {worker.label} ({worker.role}) made a {access} of {what} "
        f"outside it ({where}); the access was not made",
        worker.node.span,
    )


def declare_globals(module: ir.Module) -> tuple[ir.GlobalVariable, ir.GlobalVariable]:
    """The runtime's ``FAULT`` and ``WORKER``, declared in ``module`` (the entry's)."""
    return ir.GlobalVariable(module, FAULT_TYPE, FAULT), ir.GlobalVariable(module, I64, WORKER)
