"""The LLVM backend: the optimized graph lowered to JIT-compiled native code, one call a run.

``target`` detects the host CPU; ``lower`` builds one LLVM module per distinct kernel and an
entry module that calls them (``kernel``: the point model every op emitter works in, and the
address tables kernels read; ``emit_*``: one module per op kind, ``emit_conv_tile`` the
convolution register tile, ``conv_schedule`` how a convolution walks its output,
``emit_relayout`` the conversion of a strided convolution's input to phase rows; ``loops``:
the IR-building helpers; ``parallel``: the threading runtime, a thread pool). ``jit`` compiles the
modules as they are built (``codegen``: LLVM's pipeline, in helper processes too) and links
them; ``object_cache`` keeps their machine code on disk and ``lowering_cache`` what running it
needs, so a second build skips both. ``executable`` is the runnable result and ``inspect``
what ``convdsl ir --llvm/--asm`` prints. Selected with ``backend="llvm"`` in ``convdsl.api``
(see docs/backends.md).
"""
