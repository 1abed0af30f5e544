"""The NumPy reference interpreter: the executable specification of every op.

Each kernel is a pure, vectorized function on NumPy arrays with explicit, already-resolved
attributes (no defaults to infer, no symbolic sizes). Tensors are channels-first,
``[N, C, *spatial]`` with one to three spatial axes, and results keep the input dtype.
"""
