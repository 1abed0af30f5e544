"""Static memory planning: golden plans, the size targets on every example, and proof by running.

A plan is proved by the arena interpreter (``convdsl.backends.numpy.arena``): every activation
lives in one preallocated arena at its planned place, so a plan letting two live values overlap
changes the outputs. Arena runs must equal the ordinary interpreter bit for bit, at batch 1 and
3 (concat slices are strided by the concat's batch stride, which only shows for batch > 1).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import example_sizes
from hypothesis import given, settings
from hypothesis import strategies as st

import convdsl
from convdsl.api import Network
from convdsl.backends.numpy.arena import ArenaExecutable
from convdsl.diagnostics import InternalError
from convdsl.ir.derived import materialize
from convdsl.ir.graph import Graph
from convdsl.ir.verifier import verify
from convdsl.passes.memory import check_plan, plan_memory
from convdsl.passes.pipeline import PASSES

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.conv"))


def planned(src: str, opt_level: int = 2) -> Network:
    """Compile (verifying between passes); below -O2, plan the unfused schedule by hand."""
    net = convdsl.compile_string(src, opt_level=opt_level, verify=True, backend="numpy")
    if net.graph.memory is None:
        net = Network(plan_memory(net.graph), weights=net.weights, backend="numpy")
        verify(net.graph, after_pass="plan-memory")
    return net


def arena_run(net: Network, inputs: dict[str, np.ndarray], graph: Graph | None = None) -> dict:
    graph = graph or net.graph
    arena = ArenaExecutable(graph, materialize(graph, net.weights))
    results = arena.run({v: inputs[graph.values[v].name] for v in graph.inputs})
    return {name: results[v] for name, v in graph.outputs}


def assert_arena_matches(net: Network, batch: int, seed: int = 0) -> None:
    inputs = net.random_inputs(seed=seed, batch=batch)
    want, got = net(inputs), arena_run(net, inputs)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


def plan_table(graph: Graph) -> str:
    """One line per buffer: value, offset, size, live steps, what it shares."""
    assert graph.memory is not None
    name = {v: info.name for v, info in graph.values.items()}
    lines = []
    for b in graph.memory.buffers.values():
        shares = f"  shares %{name[b.shares]}" if b.shares is not None else ""
        lines.append(f"%{name[b.value]} @{b.offset} +{b.size} steps {b.first}..{b.last}{shares}")
    memory = graph.memory
    lines.append(
        f"arena {memory.arena_bytes} lower bound {memory.lower_bound_bytes} "
        f"naive {memory.naive_bytes}"
    )
    return "\n".join(lines)


# ---- golden plans ---------------------------------------------------------------------------

INPLACE_AND_SLICES = """
input x: f32[N, 4, 8]
a = conv1d(x, 4, kernel=1)
b = relu(a)                  # elementwise, a dies here: in place
c = conv1d(b, 4, kernel=1)
d = conv1d(b, 2, kernel=1)
output y = concat(c, d)      # c and d are read only here: written straight into y
"""


def test_golden_plan_in_place_and_concat_slices() -> None:
    graph = planned(INPLACE_AND_SLICES, opt_level=1).graph
    # Sizes are per batch unit: a is 4 channels x 8 x 4 bytes. y (192 bytes) is placed first;
    # {a, b} cannot share it (b is live at steps 2..3 with c and d), so it goes at 192.
    assert plan_table(graph) == "\n".join(
        [
            "%a @192 +128 steps 0..1",
            "%b @192 +128 steps 1..3  shares %a",
            "%c @0 +128 steps 2..4  shares %y",
            "%d @128 +64 steps 3..4  shares %y",
            "%y @0 +192 steps 4..5",
            "arena 320 lower bound 384 naive 640",
        ]
    )


NESTED = """
input x: f32[N, 2, 3, 3]
p = conv2d(x, 3, kernel=1)
q = sigmoid(x)                           # reads a graph input: never in place over it
inner = concat(p, q)
r = conv2d(x, 1, kernel=3, padding=same)
output y = relu(concat(inner, r))        # nested slices; relu in place over the concat
"""


def test_golden_plan_nested_concat() -> None:
    graph = planned(NESTED, opt_level=1).graph
    # 4 bytes x 9 pixels per channel: p is 3 channels (108 bytes), q 2, r 1; the outer concat
    # (6 channels) is the root of everything, y reuses it in place.
    assert plan_table(graph) == "\n".join(
        [
            "%p @0 +108 steps 0..2  shares %inner",
            "%q @108 +72 steps 1..2  shares %inner",
            "%inner @0 +180 steps 2..4  shares %y.concat",
            "%r @180 +36 steps 3..4  shares %y.concat",
            "%y.concat @0 +216 steps 4..5",
            "%y @0 +216 steps 5..6  shares %y.concat",
            "arena 256 lower bound 432 naive 1024",
        ]
    )


@pytest.mark.parametrize("src", [INPLACE_AND_SLICES, NESTED], ids=["slices", "nested"])
@pytest.mark.parametrize("batch", [1, 3])
def test_shared_plans_run_in_the_arena(src: str, batch: int) -> None:
    assert_arena_matches(planned(src, opt_level=1), batch)


def test_values_read_elsewhere_or_output_are_not_sliced_or_overwritten() -> None:
    src = """
    input x: f32[N, 2, 4]
    a = conv1d(x, 2, kernel=1)
    b = conv1d(x, 2, kernel=1, activation=relu)
    output c = concat(a, b, x)      # x is the caller's and a an output: copied; b is sliced
    d = tanh(a)                     # a is an output, so it stays
    output a
    output e = concat(d, d)         # the same value twice cannot be two slices
    """
    graph = planned(src, opt_level=1).graph
    assert graph.memory is not None
    ids = {graph.values[v].name: v for v in graph.memory.buffers}
    shared = {v: b for v, b in graph.memory.buffers.items() if b.shares is not None}
    assert list(shared) == [ids["b"]] and shared[ids["b"]].shares == ids["c"]
    assert shared[ids["b"]].offset == graph.memory.buffers[ids["c"]].offset + 2 * 4 * 4
    for batch in (1, 3):
        assert_arena_matches(Network(graph, backend="numpy"), batch)


def test_two_batch_names_and_a_static_batch_share_one_arena() -> None:
    # Sizes are per unit of dim 0; the arena holds arena_bytes x the largest dim 0 of a run.
    src = """
    input x: f32[N, 2, 4]
    input z: f32[M, 3, 4]
    input s: f32[2, 1, 4]
    output a = relu(conv1d(x, 3, kernel=1))
    output b = concat(conv1d(z, 2, kernel=1), sigmoid(z))
    output c = tanh(conv1d(s, 2, kernel=1))
    """
    net = planned(src, opt_level=1)
    rng = np.random.default_rng(0)
    inputs = {
        "x": rng.standard_normal((1, 2, 4)).astype(np.float32),
        "z": rng.standard_normal((3, 3, 4)).astype(np.float32),
        "s": rng.standard_normal((2, 1, 4)).astype(np.float32),
    }
    want, got = net(inputs), arena_run(net, inputs)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_plan_memory_is_the_last_pass_and_runs_at_o2_only() -> None:
    assert PASSES[-1].name == "plan-memory" and PASSES[-1].min_opt_level == 2
    assert (
        convdsl.compile_string(INPLACE_AND_SLICES, opt_level=1, backend="numpy").graph.memory
        is None
    )
    assert convdsl.compile_string(INPLACE_AND_SLICES, backend="numpy").graph.memory is not None


# ---- the examples ---------------------------------------------------------------------------

NAIVE_TARGET_IMPOSSIBLE = {"espcn", "quickstart"}
"""Examples whose lower bound already exceeds half the naive size (a few big values all live
at once), so no plan for their schedule is 2x smaller than naive."""


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans_meet_the_targets(path: Path) -> None:
    graph = convdsl.compile_file(
        path, verify=True, backend="numpy", sizes=example_sizes(path)
    ).graph
    check_plan(graph)
    memory = graph.memory
    assert memory is not None
    assert memory.arena_bytes <= 1.1 * memory.lower_bound_bytes
    if path.stem in NAIVE_TARGET_IMPOSSIBLE:
        assert memory.naive_bytes < 2 * memory.lower_bound_bytes
    else:
        assert memory.naive_bytes >= 2 * memory.arena_bytes


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_plans_run_in_the_arena(path: Path) -> None:
    net = convdsl.compile_file(path, backend="numpy", sizes=example_sizes(path))
    inputs = net.random_inputs(seed=1, batch=3)
    want = net(inputs)
    got3 = arena_run(net, inputs)
    got1 = arena_run(net, {name: array[:1] for name, array in inputs.items()})
    for name, expected in want.items():
        np.testing.assert_array_equal(got3[name], expected, err_msg=name)
        # Batch entries are computed independently: entry 0 alone is entry 0 of the batch.
        np.testing.assert_allclose(got1[name], expected[:1], rtol=1e-6, atol=1e-6, err_msg=name)


# ---- random networks ------------------------------------------------------------------------


@st.composite
def networks(draw: st.DrawFn) -> str:
    """Chains of convs and activations with skip adds/muls and concats of fresh branches
    (whose values the concat alone reads, so the planner slices them), sometimes nested."""
    channels = {"x": draw(st.integers(1, 3))}
    lines = [f"input x: f32[N, {channels['x']}, 4, 3]"]

    def fresh(name: str, expr: str, ch: int) -> str:
        lines.append(f"{name} = {expr}")
        channels[name] = ch
        return name

    def unary(name: str, src: str) -> str:
        if draw(st.booleans()):
            ch = draw(st.integers(1, 3))
            kernel = draw(st.sampled_from([1, 3]))
            return fresh(name, f"conv2d({src}, {ch}, kernel={kernel}, padding=same)", ch)
        act = draw(st.sampled_from(["relu", "sigmoid", "tanh", "hard_swish"]))
        return fresh(name, f"{act}({src})", channels[src])

    def branches(name: str, src: str, depth: int) -> str:
        parts = []
        for j in range(draw(st.integers(2, 3))):
            if depth and draw(st.integers(0, 3)) == 0:
                parts.append(branches(f"{name}_{j}", src, depth - 1))
            else:
                parts.append(unary(f"{name}_{j}", src))
        return fresh(name, f"concat({', '.join(parts)})", sum(channels[p] for p in parts))

    names = ["x"]
    for i in range(draw(st.integers(2, 7))):
        src = draw(st.sampled_from(names[-3:]))
        kind = draw(st.sampled_from(["unary", "unary", "skip", "concat"]))
        if kind == "unary":
            names.append(unary(f"v{i}", src))
        elif kind == "skip":
            other = draw(st.sampled_from([n for n in names if channels[n] == channels[src]]))
            names.append(fresh(f"v{i}", f"{src} {draw(st.sampled_from('+*'))} {other}", 0))
            channels[names[-1]] = channels[src]
        else:
            names.append(branches(f"v{i}", src, depth=1))
    outputs = {names[-1], draw(st.sampled_from(names[1:]))}
    lines += [f"output {name}" for name in sorted(outputs)]
    return "\n".join(lines)


@settings(max_examples=80, deadline=None)
@given(src=networks(), opt_level=st.sampled_from([1, 2]))
def test_random_network_plans_are_sound_and_run_in_the_arena(src: str, opt_level: int) -> None:
    net = planned(src, opt_level)
    check_plan(net.graph)
    memory = net.graph.memory
    assert memory is not None
    assert memory.arena_bytes <= memory.naive_bytes
    for batch in (1, 3):
        assert_arena_matches(net, batch, seed=batch)


# ---- the checker has teeth -------------------------------------------------------------------


def test_overlapping_live_buffers_are_rejected_and_compute_wrong_results() -> None:
    net = convdsl.compile_file(
        EXAMPLES[[p.stem for p in EXAMPLES].index("quickstart")], backend="numpy"
    )
    graph, memory = net.graph, net.graph.memory
    assert memory is not None
    # stem is still read after down is written: put down on top of stem.
    ids = {info.name: v for v, info in graph.values.items()}
    stem, down = memory.buffers[ids["stem"]], memory.buffers[ids["down"]]
    assert stem.first < down.first < stem.last
    corrupt = dataclasses.replace(
        memory,
        buffers={**memory.buffers, down.value: dataclasses.replace(down, offset=stem.offset)},
    )
    broken = dataclasses.replace(graph, memory=corrupt)
    with pytest.raises(InternalError, match="overlap in the arena"):
        check_plan(broken)
    with pytest.raises(InternalError, match=r"after plan-memory: memory plan: .* overlap"):
        verify(broken, after_pass="plan-memory")
    inputs = net.random_inputs(seed=0, batch=2)
    assert np.array_equal(arena_run(net, inputs)["out"], net(inputs)["out"])
    assert not np.allclose(arena_run(net, inputs, broken)["out"], net(inputs)["out"])


def test_a_plan_for_another_schedule_is_rejected() -> None:
    graph = planned(INPLACE_AND_SLICES, opt_level=1).graph
    shorter = dataclasses.replace(
        graph, nodes=graph.nodes[:-1], outputs=(("b", graph.nodes[1].output),)
    )
    with pytest.raises(InternalError, match="not the kernel outputs"):
        check_plan(shorter)
    reordered = dataclasses.replace(
        graph, nodes=(*graph.nodes[:2], graph.nodes[3], graph.nodes[2], graph.nodes[4])
    )
    with pytest.raises(InternalError, match="stale"):
        check_plan(reordered)


def corrupted(graph: Graph, **changes: dict) -> Graph:
    """``graph`` with the buffers of the named values changed."""
    memory = graph.memory
    assert memory is not None
    ids = {info.name: v for v, info in graph.values.items()}
    buffers = dict(memory.buffers)
    for name, fields in changes.items():
        buffers[ids[name]] = dataclasses.replace(buffers[ids[name]], **fields)
    return dataclasses.replace(graph, memory=dataclasses.replace(memory, buffers=buffers))


def test_slices_in_the_wrong_place_are_rejected_and_compute_wrong_results() -> None:
    net = planned(INPLACE_AND_SLICES, opt_level=1)
    swapped = corrupted(net.graph, c={"offset": 64}, d={"offset": 0})  # no overlap, wrong order
    with pytest.raises(InternalError, match=r"%\d+ is at 64 \+128 in %\d+, expected \(0, 128\)"):
        check_plan(swapped)
    inputs = net.random_inputs(seed=0, batch=3)
    assert not np.allclose(arena_run(net, inputs, swapped)["y"], net(inputs)["y"])
    with pytest.raises(InternalError, match="overlap"):
        check_plan(corrupted(net.graph, d={"offset": 64}))


def test_sharing_that_is_neither_in_place_nor_a_slice_is_rejected() -> None:
    graph = planned(INPLACE_AND_SLICES, opt_level=1).graph
    ids = {info.name: v for v, info in graph.values.items()}
    with pytest.raises(InternalError, match="neither in place nor as a slice"):
        check_plan(corrupted(graph, c={"shares": ids["b"]}))  # a conv cannot write in place
    with pytest.raises(InternalError, match="not 64-byte aligned"):
        check_plan(corrupted(graph, y={"offset": 32}, c={"offset": 32}, d={"offset": 160}))
