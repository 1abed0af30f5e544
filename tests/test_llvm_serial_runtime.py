"""Without libgomp the llvm backend still runs, on one thread, and says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A fresh process that cannot find libgomp (nothing else loads it: no torch here), runs a
# network with threads=2 on llvm and compares it with the interpreter.
PROGRAM = """
import ctypes.util, warnings
import numpy as np
ctypes.util.find_library = lambda name: None
from convdsl.backends.llvm import parallel
parallel._CANDIDATES = ("libconvdsl-no-such-gomp.so",)
import convdsl
src = '''input x: f32[N, 5, 17, 9]
h = conv2d(x, 17, kernel=3, stride=2, padding=same, activation=relu)
output y = max_pool2d(h, kernel=2)
'''
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    native = convdsl.compile_string(src, backend="llvm", threads=2, seed=4)
reference = convdsl.compile_string(src, backend="numpy", seed=4)
inputs = reference.random_inputs(seed=2, batch=3)
got, want = native(inputs)["y"], reference(inputs)["y"]
assert np.allclose(got, want, rtol=1e-4, atol=1e-5), np.abs(got - want).max()
print("loaded:", parallel.load_libgomp())
print("warnings:", [str(w.message) for w in caught])
"""


def test_without_libgomp_the_backend_runs_on_one_thread_with_a_warning(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"CONVDSL_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "loaded: None" in done.stdout
    assert "libgomp (GCC's OpenMP runtime) was not found" in done.stdout
    assert "apt install libgomp1" in done.stdout
