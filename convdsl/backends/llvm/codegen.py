"""LLVM IR text to machine code: LLVM's O3 pipeline, then the code generator for one CPU.

This module needs only llvmlite and the standard library, because it is also the program of
the *helper processes* that compile in parallel: ``compile_objects`` gives every spare core a
share of the modules (largest first, balanced by size) and compiles its own share meanwhile.
A helper is ``python -c`` running this file by path (importing nothing of convdsl, so it starts
in a fifth of a second), fed the target and the module texts on stdin and answering with the
object files on stdout, each framed by its length. A helper that fails costs time, never a
result: its share is compiled here instead.

LLVM's native target is initialized once per process; ``llvm.initialize()`` must not be called
(it raises in llvmlite >= 0.50).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from typing import IO

import llvmlite.binding as llvm

# Below this many lines of IR to compile, a helper's start-up costs more than it saves.
PARALLEL_LINES = 6000


@cache
def initialize() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()


def target_machine(triple: str, cpu: str, features: str) -> llvm.TargetMachine:
    """A target machine for the CPU ``cpu`` with ``features``, at opt level 3."""
    initialize()
    return llvm.Target.from_triple(triple).create_target_machine(
        cpu=cpu, features=features, opt=3, reloc="default", codemodel="jitdefault"
    )


def optimize(module: llvm.ModuleRef, machine: llvm.TargetMachine) -> None:
    """Run LLVM's O3 module pipeline (new pass manager) over ``module`` in place."""
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)


def optimized(llvm_ir: str, machine: llvm.TargetMachine) -> llvm.ModuleRef:
    """One module's text parsed, verified and optimized."""
    parsed = llvm.parse_assembly(llvm_ir)
    parsed.verify()
    optimize(parsed, machine)
    return parsed


def compile_object(llvm_ir: str, machine: llvm.TargetMachine) -> bytes:
    """Machine code (an object file) for one module's text."""
    return bytes(machine.emit_object(optimized(llvm_ir, machine)))


def compile_objects(texts: Sequence[str], triple: str, cpu: str, features: str) -> list[bytes]:
    """Object code for every module text, in order, on every core this process may use."""
    machine = target_machine(triple, cpu, features)
    helpers = min(_cores() - 1, len(texts) - 1)
    if helpers < 1 or sum(text.count("\n") for text in texts) < PARALLEL_LINES:
        return [compile_object(text, machine) for text in texts]
    shares: list[list[int]] = [[] for _ in range(helpers + 1)]
    sizes = [0] * (helpers + 1)
    for index in sorted(range(len(texts)), key=lambda i: -len(texts[i])):
        least = sizes.index(min(sizes))
        shares[least].append(index)
        sizes[least] += len(texts[index])
    header = json.dumps({"triple": triple, "cpu": cpu, "features": features})
    started = [_start_helper(header, [texts[i] for i in share]) for share in shares[1:]]
    objects: dict[int, bytes] = {i: compile_object(texts[i], machine) for i in shares[0]}
    for share, helper in zip(shares[1:], started, strict=True):
        results = _finish_helper(helper, len(share))
        if results is None:  # the helper failed: compile its share here
            results = [compile_object(texts[i], machine) for i in share]
        objects.update(zip(share, results, strict=True))
    return [objects[i] for i in range(len(texts))]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _start_helper(header: str, texts: list[str]) -> subprocess.Popen[bytes] | None:
    """A helper process compiling ``texts``. It reads all its input before it writes anything
    (so neither side can block the other on a full pipe) and compiles while we do."""
    # ``-c`` puts the working directory first on sys.path: drop it, so no file there can
    # shadow a module the helper imports.
    program = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"
    try:
        helper = subprocess.Popen(
            [sys.executable, "-c", program, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None
    assert helper.stdin is not None
    try:
        _write_frame(helper.stdin, header.encode())
        for text in texts:
            _write_frame(helper.stdin, text.encode())
        helper.stdin.close()
    except OSError:
        helper.kill()
        helper.wait()
        return None
    return helper


def _finish_helper(helper: subprocess.Popen[bytes] | None, count: int) -> list[bytes] | None:
    if helper is None:
        return None
    assert helper.stdout is not None
    try:
        results = [_read_frame(helper.stdout) for _ in range(count)]
    except (OSError, EOFError):
        results = None
    helper.stdout.close()
    if helper.wait() != 0:
        return None
    return results


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)


def _read_frame(stream: IO[bytes]) -> bytes:
    (size,) = struct.unpack("<Q", _read_exactly(stream, 8))
    return _read_exactly(stream, size)


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size) if size else b""
    if len(data) != size:
        raise EOFError(f"expected {size} bytes, found {len(data)}")
    return data


def _serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """The helper's side: a target header and module texts until end of input, then the
    object files (all input first: see ``_start_helper``)."""
    header = json.loads(_read_frame(source))
    texts = []
    while True:
        try:
            texts.append(_read_frame(source).decode())
        except EOFError:
            break
    machine = target_machine(header["triple"], header["cpu"], header["features"])
    for text in texts:
        _write_frame(sink, compile_object(text, machine))
    sink.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
