"""The bounds-checked llvm build (``bounds_check=True``): it computes what the plain build
computes, and an access outside its buffer becomes an ``InternalError`` naming the kernel,
the layer and the value, with the process unharmed, instead of a segfault or corruption.

The faults are injected by handing the native code tables that lie (a batch size larger than
the array, a parameter shorter than the code reads): the defects the checks exist to catch.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_backend_parity import assert_agrees, example_weights

import convdsl
from convdsl.diagnostics import InternalError

REPO = Path(__file__).resolve().parents[1]
TWO_BATCHES = """\
input x: f32[N, 3, 8, 8]
input y: f32[M, 3, 8, 8]
output a = conv2d(x, 4, kernel=3, padding=same)
output b = relu(conv2d(y, 4, kernel=3, padding=same))
"""


@pytest.mark.parametrize("example", ["quickstart", "espcn", "wavenet", "unet3d"])
def test_bounds_checked_examples_agree_with_the_interpreter(example: str) -> None:
    path = REPO / "examples" / f"{example}.conv"
    sizes = {"L": 300} if example == "wavenet" else None  # written for any length
    reference = convdsl.compile_file(path, backend="numpy", sizes=sizes)
    reference.set_weights(example_weights(reference, seed=2))
    native = convdsl.compile_file(path, weights=reference.weights, bounds_check=True, sizes=sizes)
    assert native._executable.bounds_check
    for batch in (1, 3):
        inputs = reference.random_inputs(seed=batch, batch=batch)
        assert_agrees(native(inputs), reference(inputs))


def test_checks_are_in_every_kernel() -> None:
    native = convdsl.compile_string(TWO_BATCHES, bounds_check=True)
    llvm_ir = native._executable.llvm_ir
    kernels = llvm_ir.count('define void @"kernel')
    assert kernels == 2
    assert llvm_ir.count('call i8* @"convdsl_bounds_check"(') >= 2 * kernels
    plain = convdsl.compile_string(TWO_BATCHES)._executable.llvm_ir
    assert "convdsl_bounds_check" not in plain


def test_a_batch_larger_than_the_array_is_caught_not_a_crash() -> None:
    native = convdsl.compile_string(TWO_BATCHES, "two.conv", bounds_check=True)
    x = np.ones((1, 3, 8, 8), np.float32)
    y = np.ones((7, 3, 8, 8), np.float32)
    expected = native(x=x, y=y)
    executable = native._executable
    executable._symbols = executable._symbols[::-1]  # N gets y's 7 images: x has one
    with pytest.raises(InternalError) as caught:
        native(x=x, y=y)
    message = str(caught.value)
    assert "bounds check: kernel kernel0_a (conv2d)" in message
    found = re.search(r"of value %x outside it \((\d+) bytes into it, 768 long\)", message)
    assert found and int(found[1]) >= 768  # which thread's access is caught first varies
    assert "two.conv:3:12" in message  # the layer's line
    executable._symbols = executable._symbols[::-1]
    after = native(x=x, y=y)  # the fault was cleared and nothing was corrupted
    for name in expected:
        np.testing.assert_array_equal(after[name], expected[name])


def test_a_parameter_shorter_than_the_code_reads_is_caught() -> None:
    native = convdsl.compile_string(TWO_BATCHES, "two.conv", bounds_check=True)
    executable = native._executable
    table = executable._bound.table
    count = len(executable._lowered.params)
    weight = executable._lowered.params.index("b.conv2d.weight@pack4")
    table[count + weight] = 8  # the packed weight of b's conv "has" two floats
    inputs = native.random_inputs(seed=0, batch=2)
    pattern = (
        r"kernel kernel1_b_conv2d \(conv2d\+relu\) made a load of parameter b\.conv2d\.weight "
    )
    with pytest.raises(InternalError, match=pattern + r"\(repacked\)"):
        native(inputs)
