"""LLVM IR text to machine code: LLVM's O3 pipeline (less its loop vectorizers and unroller),
or a lighter one for convolution kernels (``TILE_PIPELINE``), then the code generator for one
CPU.

This module needs only llvmlite and the standard library, because it is also the program of
the *helper processes* that compile in parallel (``Compiler``): a helper is ``python -c``
running this file by path (importing nothing of convdsl, so it starts in about 0.15 s), fed
the target and the module texts on stdin, which it compiles as they come, and answering with
the object files on stdout, each framed by its length. The module texts carry no target: it
is set on the parsed module here.

LLVM's native target is initialized once per process; ``llvm.initialize()`` must not be called
(it raises in llvmlite >= 0.50).
"""

from __future__ import annotations

import json
import os
import queue
import struct
import subprocess
import sys
import threading
from functools import cache
from typing import IO

import llvmlite.binding as llvm

# Below this many lines of IR to compile, a helper's start-up costs more than it saves.
PARALLEL_LINES = 6000
# Building a line of IR in Python takes about a quarter of the time LLVM takes to compile it.
LOWERING_WEIGHT = 0.25
# LLVM's own loop vectorizer, SLP vectorizer and unroller: off, since the kernels are built
# vectorized and unrolled. Off, every suite layer and example ran as fast (A/B with
# benchmarks/llvm_ab.py, outputs bit-identical) and LLVM took a third less time (FCN-8s: 2.96
# -> 2.03 s of CPU). A loop of a few constant iterations is the emitter's to unroll (a pooling
# window's rows ran 2x slower as a loop).
LOOP_VECTORIZATION = False
SLP_VECTORIZATION = False
LOOP_UNROLLING = False
# Convolution kernels (register tiles, built vectorized and unrolled) ran as fast optimized by
# LLVM's O1 pipeline plus NewGVN, instcombine and simplifycfg as by O3 (every suite layer and
# example within +-3%), for 14% less LLVM CPU (FCN-8s: 2.10 -> 1.80 s); other kernels keep O3
# (light, the bilinear upscale of L9 was 8-13% slower). A module asks for the light pipeline
# with this named metadata (``lower.light_pipeline``), which travels with its text to the
# helpers and into the code cache key.
TILE_PIPELINE = "convdsl.tile_pipeline"
LIGHT_TILES = True


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


def optimize(module: llvm.ModuleRef, machine: llvm.TargetMachine, light: bool = False) -> None:
    """Run LLVM's O3 module pipeline (new pass manager) over ``module`` in place, its loop
    transformations as the constants above say; ``light``: the O1 pipeline, then NewGVN,
    instcombine and simplifycfg."""
    options = llvm.create_pipeline_tuning_options(speed_level=1 if light else 3)
    options.loop_vectorization = LOOP_VECTORIZATION
    options.slp_vectorization = SLP_VECTORIZATION
    options.loop_unrolling = LOOP_UNROLLING
    builder = llvm.create_pass_builder(machine, options)
    builder.getModulePassManager().run(module, builder)
    if light:
        passes = llvm.create_new_module_pass_manager()
        passes.add_new_gvn_pass()
        passes.add_instruction_combine_pass()
        passes.add_simplify_cfg_pass()
        passes.run(module, builder)


def optimized(llvm_ir: str, machine: llvm.TargetMachine) -> llvm.ModuleRef:
    """One module's text parsed, verified and optimized (light if it is marked so)."""
    parsed = llvm.parse_assembly(llvm_ir)
    parsed.triple = machine.triple
    parsed.data_layout = str(machine.target_data)
    parsed.verify()
    optimize(parsed, machine, light=wants_light(llvm_ir))
    return parsed


def wants_light(llvm_ir: str) -> bool:
    """Whether the module ``llvm_ir`` is to be optimized by the light pipeline."""
    return LIGHT_TILES and f"!{TILE_PIPELINE} =" in llvm_ir


def compile_object(llvm_ir: str, machine: llvm.TargetMachine) -> bytes:
    """Machine code (an object file) for one module's text."""
    return bytes(machine.emit_object(optimized(llvm_ir, machine)))


class Compiler:
    """Compiles module texts as they are handed over (``add``) while the caller goes on
    building the next ones, then returns every object file in order (``objects``).

    Once ``PARALLEL_LINES`` lines have come, one helper per spare core starts. Each new module
    goes to whoever would finish first: a helper with the fewest lines queued, or this process,
    whose own share starts only when the caller is done building (``LOWERING_WEIGHT`` lines of
    our compile time per line the caller builds). A helper that fails costs time, never a
    result: its share is compiled here instead.
    """

    def __init__(self, triple: str, cpu: str, features: str) -> None:
        self.header = json.dumps({"triple": triple, "cpu": cpu, "features": features})
        self.machine = target_machine(triple, cpu, features)
        self.texts: list[str] = []
        self.ours: list[int] = []  # indices this process compiles
        self.our_lines = 0
        self.lines = 0
        self.helpers: list[_Helper] | None = None  # None: not started yet

    def add(self, text: str) -> None:
        index = len(self.texts)
        self.texts.append(text)
        lines = text.count("\n")
        self.lines += lines
        if self.helpers is None and self.lines >= PARALLEL_LINES:
            started = (_Helper.start(self.header) for _ in range(_cores() - 1))
            self.helpers = [helper for helper in started if helper is not None]
        ours = LOWERING_WEIGHT * self.lines + self.our_lines
        live = [helper for helper in self.helpers or () if not helper.failed]
        idlest = min(live, key=lambda helper: helper.lines, default=None)
        if idlest is not None and idlest.lines < ours:
            idlest.send(index, text)
        else:
            self.ours.append(index)
            self.our_lines += lines

    def abandon(self) -> None:
        """Stop the helpers (the caller failed while building): none is left waiting."""
        for helper in self.helpers or []:
            helper.process.kill()
            helper.finish()
        self.helpers = []

    def objects(self) -> list[bytes]:
        helpers = self.helpers or []
        for helper in helpers:
            helper.close()
        objects = {i: compile_object(self.texts[i], self.machine) for i in self.ours}
        for helper in helpers:
            results = helper.finish()
            if results is None:  # the helper failed: compile its share here
                results = [compile_object(self.texts[i], self.machine) for i in helper.indices]
            objects.update(zip(helper.indices, results, strict=True))
        return [objects[i] for i in range(len(self.texts))]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Helper:
    """A helper process (``_serve``): module texts in, after the end of input the object
    files out, all framed by their length. It reads its input as it comes (a thread of its
    own), so sending never waits for a compile."""

    # ``-c`` puts the working directory first on sys.path: drop it, so no file there can
    # shadow a module the helper imports.
    PROGRAM = "import runpy, sys; sys.path.pop(0); runpy.run_path(sys.argv[1], run_name='__main__')"

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.indices: list[int] = []
        self.lines = 0
        self.failed = False

    @classmethod
    def start(cls, header: str) -> _Helper | None:
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", cls.PROGRAM, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            return None
        helper = cls(process)
        helper._write(header.encode())
        return None if helper.failed else helper

    def send(self, index: int, text: str) -> None:
        self.indices.append(index)
        self.lines += text.count("\n")
        self._write(text.encode())

    def close(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.close()
        except OSError:
            self.failed = True

    def finish(self) -> list[bytes] | None:
        """The object files of ``indices``, or ``None`` if the helper failed."""
        assert self.process.stdout is not None
        results = None
        if not self.failed:
            try:
                results = [_read_frame(self.process.stdout) for _ in self.indices]
            except (OSError, EOFError):
                results = None
        self.process.stdout.close()
        if self.process.wait() != 0:
            return None
        return results

    def _write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            _write_frame(self.process.stdin, data)
            self.process.stdin.flush()
        except OSError:
            self.failed = True
            self.process.kill()


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
    """The helper's side (``_Helper``): a target header, module texts until the end of
    input, compiled as they come; then every object file."""
    header = json.loads(_read_frame(source))
    machine = target_machine(header["triple"], header["cpu"], header["features"])
    texts: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        try:
            while True:
                texts.put(_read_frame(source))
        except EOFError:
            texts.put(None)

    threading.Thread(target=read, daemon=True).start()
    objects = []
    while (text := texts.get()) is not None:
        objects.append(compile_object(text.decode(), machine))
    for code in objects:
        _write_frame(sink, code)
    sink.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
