"""The LLVM backend: the optimized graph lowered to one JIT-compiled native function.

``target`` detects the host CPU, ``jit`` compiles, ``loops`` holds the IR-building helpers,
``parallel`` the libgomp threading runtime, ``kernel`` the point model every op emitter works
in, ``emit_*`` one module per op kind, ``lower`` the whole-graph lowering and ``executable`` the
runnable result. Selected with ``backend="llvm"`` in ``convdsl.api`` (see docs/backends.md).
"""
