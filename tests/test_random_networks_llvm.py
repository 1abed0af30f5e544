"""The llvm backend agrees with the interpreter on networks with several inputs and outputs.

Random programs from ``random_networks.multi_networks()``: independent components with their
own batch symbols (bound to different sizes) or fixed batch sizes, f32 beside f64, unused inputs,
inputs passed straight through, one value under two output names, 1-D, 2-D and 3-D ops. Each is
compiled for numpy and for llvm with the same weights (far from the identity) and run on the
same arrays; ``compare_outputs`` wants the same names, shapes and dtypes, and values within
rtol 1e-4 (f32) or 1e-9 (f64), atol a small fraction of the largest expected magnitude.

The named tests below are small programs of each kind that crashed the llvm backend (a
segfault, or glibc's "double free"), found by ``benchmarks/soak_llvm.py``, which runs thousands
of these programs in worker processes that may die. Each runs as built for users and
bounds-checked (an access outside a buffer then fails naming its kernel instead of corrupting
the heap, which may otherwise survive the run unnoticed).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_networks import Declared, Program, compare_outputs, concrete_inputs, multi_networks
from test_optimizer_differential import random_weights as weights_far_from_identity

import convdsl
from convdsl.api import Network


def declared_program(text: str) -> Program:
    """A hand-written program with the inputs the checker sees in it."""
    net = convdsl.compile_string(text, backend="numpy")
    return Program(
        text,
        tuple(
            Declared(name, t.dtype.value, t.shape[0], tuple(int(d) for d in t.shape[1:]))
            for name, t in net.inputs.items()
        ),
    )


def both(text: str, seed: int, bounds_check: bool) -> tuple[Network, Network]:
    """(llvm, numpy) networks of ``text`` bound to the same weights."""
    reference = convdsl.compile_string(text, "random.conv", backend="numpy")
    weights = weights_far_from_identity(reference, seed)
    reference.set_weights(weights)
    checked = {"bounds_check": True} if bounds_check else {}  # the plain call is the users'
    native = convdsl.compile_string(text, "random.conv", backend="llvm", weights=weights, **checked)
    return native, reference


def assert_agrees(
    program: Program, seed: int, bounds_check: bool, sizes: dict[str, int] | None = None
) -> None:
    native, reference = both(program.text, seed, bounds_check)
    _, inputs = concrete_inputs(program, seed, sizes)
    problems = compare_outputs(native(inputs), reference(inputs))
    assert not problems, "\n".join(problems)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=multi_networks(), seed=st.integers(0, 2**16), bounds_check=st.booleans())
def test_random_networks_agree_with_the_interpreter(
    program: Program, seed: int, bounds_check: bool
) -> None:
    """Bounds-checked builds half of the time: an access outside a buffer then fails naming its
    kernel; the other half runs the code users run."""
    assert_agrees(program, seed, bounds_check)


# ---- one regression test per kind of program that crashed --------------------------------------
# At d887892 each of these crashed (SIGSEGV, or glibc aborting on "double free or corruption",
# "corrupted size vs. prev_size") or hung, unless the damaged heap happened to survive the run:
# the whole network ran for the largest batch of any input, unused ones included, so it read and
# wrote past the end of every smaller input and output. Each puts one more feature beside that.

TWO_SYMBOLS = """
input x: f32[N, 3, 8, 8]
input y: f32[M, 3, 8, 8]
output a = conv2d(x, 4, kernel=3, padding=same)
output b = conv2d(y, 4, kernel=3, padding=same)
"""

CASES: dict[str, tuple[str, dict[str, int]]] = {
    "two_batch_symbols_of_different_sizes": (TWO_SYMBOLS, {"N": 1, "M": 7}),
    "two_batch_symbols_larger_first": (TWO_SYMBOLS, {"N": 5, "M": 2}),
    "symbolic_batch_beside_fixed_batch_1": (
        """
input x: f32[N, 3, 8, 8]
input y: f32[1, 3, 8, 8]
output a = conv2d(x, 4, kernel=3, padding=same)
output b = relu(conv2d(y, 2, kernel=1))
""",
        {"N": 4},
    ),
    "fixed_batch_3_beside_symbolic": (
        """
input x: f32[3, 2, 6]
input y: f32[N, 2, 6, 6]
output a = conv1d(x, 4, kernel=3)
output b = max_pool2d(y, 2)
""",
        {"N": 1},
    ),
    "unused_input": (
        """
input x: f32[N, 3, 8, 8]
input u: f32[M, 2, 5]
output a = conv2d(x, 4, kernel=3, padding=same)
""",
        {"N": 2, "M": 5},
    ),
    "unused_input_read_only_for_its_shape": (
        """
input x: f32[N, 3, 8, 8]
input u: f64[M, 1, 5, 5]
output a = crop(conv2d(x, 4, kernel=3, padding=same), like=u, offset=center)
""",
        {"N": 1, "M": 4},
    ),
    "f32_and_f64_inputs": (
        """
input x: f32[N, 3, 8, 8]
input y: f64[M, 3, 8, 8]
output a = conv2d(x, 4, kernel=3, padding=same)
output b = conv2d(y, 4, kernel=3, padding=same)
""",
        {"N": 2, "M": 5},
    ),
    "input_passed_through_as_an_output": (
        """
input x: f32[N, 3, 8, 8]
input y: f32[M, 2, 4, 4]
output a = conv2d(x, 4, kernel=3, padding=same)
output c = y
""",
        {"N": 2, "M": 3},
    ),
    "input_as_an_output_under_its_own_name": (
        """
input x: f64[N, 2, 5]
input y: f32[1, 3, 4, 4]
output x
output b = relu(y)
""",
        {"N": 3},
    ),
    "same_value_as_two_outputs": (
        """
input x: f32[N, 3, 8, 8]
input s: f64[M, 2, 6]
h = conv2d(x, 4, kernel=3, padding=same)
output a = h
output b = h
output c = relu(h)
output d = conv1d(s, 3, kernel=3)
output e = s
output f = s
""",
        {"N": 1, "M": 3},
    ),
    "several_outputs_of_three_components": (
        """
input s: f32[N, 2, 12]
input x: f64[M, 3, 6, 6]
input v: f32[2, 1, 3, 4, 4]
h = conv2d(x, 4, kernel=3, stride=2, padding=same)
output a = conv1d(s, 3, kernel=3, padding=causal)
output h
output b = global_avg_pool(h)
output c = conv3d(v, 2, kernel=3, padding=1)
output d = s
""",
        {"N": 4, "M": 1},
    ),
}


@pytest.mark.parametrize("bounds_check", [False, True], ids=["plain", "bounds_checked"])
@pytest.mark.parametrize("name", list(CASES))
def test_regression(name: str, bounds_check: bool) -> None:
    text, sizes = CASES[name]
    assert_agrees(declared_program(text), 1, bounds_check, sizes)
