"""Graph outputs on the llvm backend: which ones the kernels write straight into the caller's
arrays (``entry.direct_outputs``) and which are copied out of the arena, and that either way
the results match the interpreter, arrive 64-byte aligned, and belong to the caller alone.
"""

from __future__ import annotations

import numpy as np
import pytest

import convdsl
from convdsl.api import backend_graph
from convdsl.backends.llvm import entry
from convdsl.backends.llvm.executable import LlvmExecutable
from convdsl.ir.derived import materialize

X = "input x: f32[N, 3, 9, 11]\n"
CASES = {
    # source, opt level, the outputs written in place of the copy
    "plain": (X + "output y = conv2d(x, 5, kernel=3, padding=same)\n", 2, {"y"}),
    "read later": (
        X + "output a = conv2d(x, 5, kernel=3, padding=same)\n"
        "output b = conv2d(a, 2, kernel=3, padding=same)\n",
        2,
        {"a", "b"},
    ),
    "listed twice": (
        X + "y = conv2d(x, 5, kernel=3, padding=same)\noutput a = y\noutput b = y\n",
        2,
        set(),
    ),
    "an input": (X + "output y = x\noutput z = relu(x)\n", 2, {"z"}),
    "concat of slices": (
        X + "output y = concat(conv2d(x, 5, kernel=3, padding=same), conv2d(x, 2, kernel=1))\n",
        2,
        set(),
    ),
    "in place": (
        X + "h = conv2d(x, 4, kernel=3, padding=same)\noutput y = relu(h)\n",
        1,
        {"y"},
    ),
}


def build(src: str, opt_level: int) -> tuple[convdsl.Network, LlvmExecutable]:
    net = convdsl.compile_string(src, "t.conv", backend="numpy", opt_level=opt_level)
    graph = backend_graph(net.graph, "llvm")
    return net, LlvmExecutable(graph, materialize(graph, net.weights), threads=2)


@pytest.mark.parametrize("case", CASES)
def test_outputs_match_the_interpreter_written_directly_or_copied(case: str) -> None:
    src, opt_level, direct = CASES[case]
    net, native = build(src, opt_level)
    graph = native.graph
    names = {value: name for name, value in graph.outputs}
    assert {names[v] for v in entry.direct_outputs(graph)} == direct
    if case == "concat of slices":  # the case is what it says: slices live inside y
        assert any(b.shares is not None for b in graph.memory.buffers.values())
    if case == "in place":
        (value,) = entry.direct_outputs(graph)
        assert graph.memory.buffers[value].shares is not None
    ids = {graph.values[v].name: v for v in graph.inputs}
    for batch in (1, 3):
        inputs = net.random_inputs(seed=batch, batch=batch)
        expected = net(**inputs)
        got = native.run({ids[name]: array for name, array in inputs.items()})
        for name, value in graph.outputs:
            assert got[value].ctypes.data % 64 == 0, name
            np.testing.assert_allclose(got[value], expected[name], rtol=1e-4, atol=1e-5)


def test_each_run_returns_arrays_of_its_own() -> None:
    """Kernels write into the output arrays: a later run must not overwrite earlier results."""
    net, native = build(CASES["read later"][0], 2)
    (x,) = native.graph.inputs
    first_inputs, second_inputs = net.random_inputs(seed=1), net.random_inputs(seed=2)
    first = native.run({x: first_inputs["x"]})
    kept = {v: array.copy() for v, array in first.items()}
    second = native.run({x: second_inputs["x"]})
    for value, array in first.items():
        np.testing.assert_array_equal(array, kept[value])
        assert not np.shares_memory(array, second[value])
        assert not np.allclose(array, second[value])


def test_without_direct_outputs_the_results_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy path still works (it is what shared slots use) and gives the same bits."""
    src = CASES["read later"][0]
    net, direct = build(src, 2)
    monkeypatch.setattr(entry, "DIRECT_OUTPUTS", False)
    monkeypatch.setenv("CONVDSL_CACHE_DIR", "off")
    _, copied = build(src, 2)
    (x,) = direct.graph.inputs
    inputs = {x: net.random_inputs(seed=3, batch=2)["x"]}
    a, b = direct.run(inputs), copied.run(inputs)
    for value in a:
        np.testing.assert_array_equal(a[value], b[value])


PASSES = {
    **{name: (src, opt_level) for name, (src, opt_level, _) in CASES.items()},
    # a conv then a pixel shuffle in one kernel, run part by part: the conv's output is scratch
    "unfused parts": (
        X + "output z = pixel_shuffle(relu(conv2d(x, 8, kernel=3, padding=same)), 2)\n",
        2,
    ),
}


@pytest.mark.parametrize("per_pass", [1, 2])
@pytest.mark.parametrize("case", PASSES)
def test_passes_over_part_of_the_batch_give_the_bits_of_the_whole_batch(
    case: str, per_pass: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch runs in passes of as many images as ``entry.PASS_BYTES`` of arena hold: here
    batch 3 in passes of one image, or of two then one. Outputs written in place or copied
    out, graph inputs as outputs, concat slices and the scratch values of unfused parts all
    land at their images, bit for bit as when every kernel runs over the whole batch."""
    src, opt_level = PASSES[case]
    monkeypatch.setenv("CONVDSL_CACHE_DIR", "off")
    net, whole = build(src, opt_level)
    per_image = whole._lowered.arena_bytes
    monkeypatch.setattr(entry, "PASS_BYTES", per_pass * per_image)
    _, passes = build(src, opt_level)
    assert passes._lowered.per_pass == per_pass and whole._lowered.per_pass >= 3
    ids = {whole.graph.values[v].name: v for v in whole.graph.inputs}
    inputs = net.random_inputs(seed=4, batch=3)
    arrays = {ids[name]: array for name, array in inputs.items()}
    a, b = whole.run(arrays), passes.run(arrays)
    expected = net(**inputs)
    for name, value in whole.graph.outputs:
        np.testing.assert_array_equal(b[value], a[value], err_msg=name)
        np.testing.assert_allclose(b[value], expected[name], rtol=1e-4, atol=1e-5)
    assert passes.arenas.sizes == (per_pass * per_image,)
    assert whole.arenas.sizes == (3 * per_image,)
    if case == "unfused parts":  # the case is what it says: scratch after the planned arena
        assert per_image > passes.graph.memory.arena_bytes
