"""The LLVM backend: the optimized graph lowered to one JIT-compiled native function.

``target`` detects the host CPU, ``jit`` compiles (``object_cache`` keeps the machine code
on disk), ``loops`` holds the IR-building helpers, ``parallel`` the libgomp threading runtime,
``kernel`` the point model every op emitter works in, ``emit_*`` one module per op kind
(``emit_conv_tile`` the convolution register tile, ``conv_schedule`` how a convolution walks
its output, ``emit_relayout`` the conversion of a strided convolution's input to phase rows),
``lower`` the whole-graph lowering, ``executable`` the runnable result and ``inspect`` what
``convdsl ir --llvm/--asm`` prints. Selected with ``backend="llvm"`` in ``convdsl.api`` (see
docs/backends.md).
"""
