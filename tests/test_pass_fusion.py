"""Operator fusion (``convdsl.passes.fusion``): golden IR after the pass, the edges it leaves
unfused and why, and the interpreter's outputs before vs after the pass on the same weights.

A fused kernel runs its parts in order on the same arrays, so outputs must be bit-identical,
not merely close.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import random_weights
from hypothesis import given, settings
from hypothesis import strategies as st

import convdsl
from convdsl.api import Network
from convdsl.ir.graph import Graph
from convdsl.ir.ops import OPS
from convdsl.ir.printer import print_graph
from convdsl.ir.verifier import verify
from convdsl.passes.fusion import (
    ANCHOR_CLASSES,
    Blocked,
    FusionGroup,
    fuse,
    plan_fusion,
)
from convdsl.passes.pipeline import PASSES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def typed(src: str) -> Graph:
    """The -O0 graph: shapes inferred, nothing optimized."""
    return convdsl.compile_string(src, opt_level=0, backend="numpy").graph


def assert_same_outputs(before: Graph, after: Graph, seed: int = 0) -> None:
    weights = random_weights(Network(before, backend="numpy"), seed)
    unfused = Network(before, weights=weights, backend="numpy")
    fused = Network(after, weights=weights, backend="numpy")
    inputs = unfused.random_inputs(seed=seed, batch=2)
    want, got = unfused(inputs), fused(inputs)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def fused_ir(src: str) -> str:
    """Fuse ``src``'s graph, check it (verifier, numerics) and print it."""
    graph = typed(src)
    after = fuse(graph)
    verify(after, after_pass="fuse")
    assert_same_outputs(graph, after)
    assert len(after.nodes) == plan_fusion(graph).kernels_after
    return print_graph(after, show_locations=False)


# ---- golden IR -------------------------------------------------------------------------------


def test_conv_relu_and_skip_add_become_one_kernel() -> None:
    src = """
input x: f32[N, 4, 8, 8]
c = conv2d(x, 4, kernel=3, padding=same)
r = relu(c)
output y = r + x
"""
    assert (
        fused_ir(src)
        == """\
network network
  %x: f32[N,4,8,8] = input
  %y: f32[N,4,8,8] = fused(%x) parts=3
      %c: f32[N,4,8,8] = conv2d(%x) activation=none bias=true dilation=[1,1] groups=1 kernel=[3,3] out_channels=4 pads=[[1,1],[1,1]] stride=[1,1]
      %r: f32[N,4,8,8] = relu(%c)
      %y: f32[N,4,8,8] = add(%r, %x)
params
  c.weight: f32[4,4,3,3] init=he
  c.bias: f32[4] init=bias
outputs
  y = %y
"""  # noqa: E501
    )
    plan = plan_fusion(typed(src))
    assert plan.groups == (FusionGroup("c", "c", ("c", "r", "y")),)
    assert (plan.blocked, plan.kernels_before, plan.kernels_after) == ((), 3, 1)


def test_conv_batch_norm_relu6_fuse_without_folding() -> None:
    assert (
        fused_ir("""
input x: f32[N, 3, 8, 8]
c = conv2d(x, 4, kernel=3, padding=same, bias=false)
b = batch_norm(c)
output y = relu6(b)
""")
        == """\
network network
  %x: f32[N,3,8,8] = input
  %y: f32[N,4,8,8] = fused(%x) parts=3
      %c: f32[N,4,8,8] = conv2d(%x) activation=none bias=false dilation=[1,1] groups=1 kernel=[3,3] out_channels=4 pads=[[1,1],[1,1]] stride=[1,1]
      %b: f32[N,4,8,8] = batch_norm(%c) eps=1e-05
      %y: f32[N,4,8,8] = relu6(%b)
params
  c.weight: f32[4,3,3,3] init=he
  b.weight: f32[4] init=ones
  b.bias: f32[4] init=zeros
  b.running_mean: f32[4] init=zeros
  b.running_var: f32[4] init=ones
outputs
  y = %y
"""  # noqa: E501
    )


GATED = """
input x: f32[N, 4, 16]
f = conv1d(x, 4, kernel=2, padding=causal)
g = conv1d(x, 4, kernel=2, padding=causal)
z = tanh(f) * sigmoid(g)
output y = z + x
"""


def test_wavenet_gated_unit_has_one_conv_anchor_per_kernel() -> None:
    # g, scheduled after f, anchors the mul and add; f keeps tanh and is read from memory.
    # Each kernel sits where its last part was: f's after g in the schedule.
    assert (
        fused_ir(GATED)
        == """\
network network
  %x: f32[N,4,16] = input
  %z.lhs: f32[N,4,16] = fused(%x) parts=2
      %f: f32[N,4,16] = conv1d(%x) activation=none bias=true dilation=[1] groups=1 kernel=[2] out_channels=4 pads=[[1,0]] stride=[1]
      %z.lhs: f32[N,4,16] = tanh(%f)
  %y: f32[N,4,16] = fused(%x, %z.lhs) parts=4
      %g: f32[N,4,16] = conv1d(%x) activation=none bias=true dilation=[1] groups=1 kernel=[2] out_channels=4 pads=[[1,0]] stride=[1]
      %z.rhs: f32[N,4,16] = sigmoid(%g)
      %z: f32[N,4,16] = mul(%z.lhs, %z.rhs)
      %y: f32[N,4,16] = add(%z, %x)
params
  f.weight: f32[4,4,2] init=he
  f.bias: f32[4] init=bias
  g.weight: f32[4,4,2] init=he
  g.bias: f32[4] init=bias
outputs
  y = %y
"""  # noqa: E501
    )
    plan = plan_fusion(typed(GATED))
    assert plan.groups == (
        FusionGroup("f", "f", ("f", "z.lhs")),
        FusionGroup("g", "g", ("g", "z.rhs", "z", "y")),
    )
    assert plan.blocked == (
        Blocked(
            "z.lhs",
            "z",
            "kernel 'g' already has an anchor (conv1d); a kernel computes one anchor, "
            "so 'z.lhs' (kernel 'f') is read from memory",
        ),
    )
    assert (plan.kernels_before, plan.kernels_after) == (6, 2)


TWO_CONVS = """
input coarse: f32[N, 3, 4, 4]
input fine: f32[N, 8, 8, 8]
score = conv2d(fine, 3, kernel=1)
up = conv_transpose2d(coarse, 3, kernel=4, stride=2, padding=1, bias=false)
output merged = up + score
"""


def test_two_convs_into_one_add_the_later_one_anchors() -> None:
    assert (
        fused_ir(TWO_CONVS)
        == """\
network network
  %coarse: f32[N,3,4,4] = input
  %fine: f32[N,8,8,8] = input
  %score: f32[N,3,8,8] = conv2d(%fine) activation=none bias=true dilation=[1,1] groups=1 kernel=[1,1] out_channels=3 pads=[[0,0],[0,0]] stride=[1,1]
  %merged: f32[N,3,8,8] = fused(%coarse, %score) parts=2
      %up: f32[N,3,8,8] = conv_transpose2d(%coarse) activation=none bias=false dilation=[1,1] groups=1 kernel=[4,4] out_channels=3 output_padding=[0,0] pads=[[1,1],[1,1]] stride=[2,2]
      %merged: f32[N,3,8,8] = add(%up, %score)
params
  score.weight: f32[3,8,1,1] init=he
  score.bias: f32[3] init=bias
  up.weight: f32[3,3,4,4] init=he
outputs
  merged = %merged
"""  # noqa: E501
    )
    assert plan_fusion(typed(TWO_CONVS)).blocked == (
        Blocked(
            "score",
            "merged",
            "kernel 'up' already has an anchor (conv_transpose2d); a kernel computes one "
            "anchor, so 'score' is read from memory",
        ),
    )


def test_the_later_scheduled_anchor_wins_whatever_the_operand_order() -> None:
    swapped = TWO_CONVS.replace("score = conv2d(fine, 3, kernel=1)\n", "").replace(
        "output", "score = conv2d(fine, 3, kernel=1)\noutput"
    )
    plan = plan_fusion(typed(swapped))
    assert plan.groups == (FusionGroup("score", "score", ("score", "merged")),)
    assert plan.blocked == (
        Blocked(
            "up",
            "merged",
            "kernel 'score' already has an anchor (conv2d); a kernel computes one anchor, "
            "so 'up' is read from memory",
        ),
    )
    assert_same_outputs(typed(swapped), fuse(typed(swapped)))


def test_upscale_takes_the_skip_add() -> None:
    assert (
        fused_ir("""
input x: f32[N, 2, 4, 4]
input skip: f32[N, 2, 8, 8]
u = upscale(x, 2, mode=bilinear)
output y = u + skip
""")
        == """\
network network
  %x: f32[N,2,4,4] = input
  %skip: f32[N,2,8,8] = input
  %y: f32[N,2,8,8] = fused(%x, %skip) parts=2
      %u: f32[N,2,8,8] = upscale(%x) coordinate=half_pixel factors=[2,2] mode=linear
      %y: f32[N,2,8,8] = add(%u, %skip)
outputs
  y = %y
"""
    )


def test_conv_transpose_takes_the_crop() -> None:
    assert (
        fused_ir("""
input x: f32[N, 2, 4, 4]
input ref: f32[N, 1, 10, 10]
u = conv_transpose2d(x, 3, kernel=6, stride=2, bias=false)
output y = crop(u, like=ref, offset=center)
""")
        == """\
network network
  %x: f32[N,2,4,4] = input
  %ref: f32[N,1,10,10] = input
  %y: f32[N,3,10,10] = fused(%x) parts=2
      %u: f32[N,3,12,12] = conv_transpose2d(%x) activation=none bias=false dilation=[1,1] groups=1 kernel=[6,6] out_channels=3 output_padding=[0,0] pads=[[0,0],[0,0]] stride=[2,2]
      %y: f32[N,3,10,10] = crop(%u) sizes=[10,10] starts=[1,1]
params
  u.weight: f32[2,3,6,6] init=he
outputs
  y = %y
"""  # noqa: E501
    )


def test_conv_takes_the_pixel_shuffle() -> None:
    assert (
        fused_ir("""
input x: f32[N, 3, 4, 4]
s = conv2d(x, 12, kernel=3, padding=same)
output y = pixel_shuffle(s, 2)
""")
        == """\
network network
  %x: f32[N,3,4,4] = input
  %y: f32[N,3,8,8] = fused(%x) parts=2
      %s: f32[N,12,4,4] = conv2d(%x) activation=none bias=true dilation=[1,1] groups=1 kernel=[3,3] out_channels=12 pads=[[1,1],[1,1]] stride=[1,1]
      %y: f32[N,3,8,8] = pixel_shuffle(%s) factor=2 order=crd
params
  s.weight: f32[12,3,3,3] init=he
  s.bias: f32[12] init=bias
outputs
  y = %y
"""  # noqa: E501
    )


def test_a_value_read_twice_stays_in_memory() -> None:
    src = """
input x: f32[N, 2, 6, 6]
c = conv2d(x, 2, kernel=3, padding=same)
a = relu(c)
b = sigmoid(c)
output y = a * b
"""
    # relu, sigmoid and mul have no anchor: one kernel, named after its first part.
    assert (
        fused_ir(src)
        == """\
network network
  %x: f32[N,2,6,6] = input
  %c: f32[N,2,6,6] = conv2d(%x) activation=none bias=true dilation=[1,1] groups=1 kernel=[3,3] out_channels=2 pads=[[1,1],[1,1]] stride=[1,1]
  %y: f32[N,2,6,6] = fused(%c) parts=3
      %a: f32[N,2,6,6] = relu(%c)
      %b: f32[N,2,6,6] = sigmoid(%c)
      %y: f32[N,2,6,6] = mul(%a, %b)
params
  c.weight: f32[2,2,3,3] init=he
  c.bias: f32[2] init=bias
outputs
  y = %y
"""  # noqa: E501
    )
    reason = "the output of conv2d 'c' is read by 2 layers ('a', 'b')"
    plan = plan_fusion(typed(src))
    assert plan.blocked == (Blocked("c", "a", reason), Blocked("c", "b", reason))
    assert plan.groups == (FusionGroup("a", "a", ("a", "b", "y")),)


def test_a_network_output_stays_in_memory() -> None:
    src = """
input x: f32[N, 2, 6, 6]
c = conv2d(x, 2, kernel=3, padding=same)
output c
output y = relu(c)
"""
    graph = typed(src)
    assert fuse(graph) is graph
    plan = plan_fusion(graph)
    assert plan.groups == ()
    assert plan.blocked == (
        Blocked("c", "y", "the output of conv2d 'c' is a network output ('c')"),
    )
    assert (plan.kernels_before, plan.kernels_after) == (2, 2)


def test_elementwise_chain_without_anchor_is_one_kernel() -> None:
    assert (
        fused_ir("""
input x: f32[N, 2, 5]
input w: f32[N, 2, 5]
a = relu(x)
b = a + w
c = sigmoid(b)
output d = c * x
""")
        == """\
network network
  %x: f32[N,2,5] = input
  %w: f32[N,2,5] = input
  %d: f32[N,2,5] = fused(%x, %w) parts=4
      %a: f32[N,2,5] = relu(%x)
      %b: f32[N,2,5] = add(%a, %w)
      %c: f32[N,2,5] = sigmoid(%b)
      %d: f32[N,2,5] = mul(%c, %x)
outputs
  d = %d
"""
    )


# ---- what is not a candidate -------------------------------------------------------------------


def test_anchors_and_pad_take_no_producers_and_are_not_reported() -> None:
    src = """
input x: f32[N, 2, 6, 6]
a = relu(x)
p = max_pool2d(a, 2)
c = conv2d(p, 2, kernel=1)
q = pad(c, 1)
r = relu(q)
s = concat(r, r)
output y = sigmoid(s)
"""
    plan = plan_fusion(typed(src))
    # relu -> max_pool and max_pool -> conv are prologues; conv -> pad would need the store to
    # write pad's border. pad -> relu and concat -> sigmoid are epilogues.
    assert plan.groups == (
        FusionGroup("q", "q", ("q", "r")),
        FusionGroup("s", "s", ("s", "y")),
    )
    assert plan.blocked == ()
    assert_same_outputs(typed(src), fuse(typed(src)))


# ---- the examples --------------------------------------------------------------------------------

KERNELS = {
    "espcn": (4, 3),
    "fcn8s": (29, 26),
    "mobilenet": (84, 30),
    "quickstart": (5, 4),
    "unet": (27, 27),
    "unet3d": (38, 17),
    "wavenet": (94, 44),
}


def test_every_example_has_a_kernel_count() -> None:
    assert sorted(KERNELS) == sorted(path.stem for path in EXAMPLES.glob("*.conv"))


SIZES = {"fcn8s": {"H": 224, "W": 224}, "wavenet": {"L": 16000}}  # written for any size


def example_graph(name: str) -> Graph:
    path = EXAMPLES / f"{name}.conv"
    return convdsl.compile_file(path, opt_level=0, backend="numpy", sizes=SIZES.get(name)).graph


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_example_outputs_are_unchanged_by_fusion(name: str) -> None:
    graph = example_graph(name)
    plan = plan_fusion(graph)
    after = fuse(graph)
    verify(after, after_pass="fuse")
    assert (plan.kernels_before, plan.kernels_after) == KERNELS[name]
    assert len(after.nodes) == plan.kernels_after
    assert fuse(after) is after  # nothing left to fuse: the pass is idempotent
    assert_same_outputs(graph, after)


def example_plan(name: str):
    return plan_fusion(example_graph(name))


def test_fcn8s_score_convs_are_read_from_memory() -> None:
    plan = example_plan("fcn8s")
    assert [group.members for group in plan.groups] == [
        ("upscore2", "fuse_pool4"),
        ("upscore_pool4", "fuse_pool3"),
        ("upscore8", "score"),
    ]
    assert [(b.producer, b.consumer, b.reason) for b in plan.blocked] == [
        (
            "score_pool4",
            "fuse_pool4",
            "kernel 'upscore2' already has an anchor (conv_transpose2d); a kernel computes "
            "one anchor, so 'score_pool4' is read from memory",
        ),
        (
            "score_pool3",
            "fuse_pool3",
            "kernel 'upscore_pool4' already has an anchor (conv_transpose2d); a kernel "
            "computes one anchor, so 'score_pool3' is read from memory",
        ),
    ]


def test_wavenet_skip_convs_fuse_into_the_sum_next_to_them() -> None:
    # The later anchor wins, so each skip conv takes the add right after it, and the running
    # sum is read from memory; the sum chain is never delayed to the end of the network.
    plan = example_plan("wavenet")
    groups = {group.kernel: group.members for group in plan.groups}
    assert groups["h_2.skip"] == ("h_2.skip", "skips")
    assert groups["h_10.skip"] == ("h_10.skip", "skips_8", "head.relu")
    assert groups["h_1.g"] == ("h_1.g", "h_1.z.rhs", "h_1.z")
    assert groups["h_1.res"] == ("h_1.res", "h_1")
    assert "h_1.skip" not in groups
    blocked = {(b.producer, b.consumer): b.reason for b in plan.blocked}
    assert blocked[("skips", "skips_1")] == (
        "kernel 'h_3.skip' already has an anchor (conv1d); a kernel computes one anchor, "
        "so 'skips' (kernel 'h_2.skip') is read from memory"
    )
    assert blocked[("h", "h_1")] == "the output of conv1d 'h' is read by 3 layers " + (
        "('h_1.f', 'h_1.g', 'h_1')"
    )


# ---- the pipeline ------------------------------------------------------------------------------


def test_fuse_runs_at_O2_after_the_O1_passes() -> None:
    names = [p.name for p in PASSES]
    fuse_pass = PASSES[names.index("fuse")]
    assert fuse_pass.run is fuse and fuse_pass.min_opt_level == 2
    assert all(names.index(p.name) < names.index("fuse") for p in PASSES if p.min_opt_level < 2)
    ops = {
        level: [
            node.op
            for node in convdsl.compile_string(GATED, opt_level=level, backend="numpy").graph.nodes
        ]
        for level in (1, 2)
    }
    assert "fused" not in ops[1]
    assert ops[2] == ["fused", "fused"]


# ---- random graphs -----------------------------------------------------------------------------

# Statements over [N, 2, 4, 4] values, each keeping that shape; {a} and {b} are earlier values.
STEPS = (
    "conv2d({a}, 2, kernel=3, padding=same)",
    "conv2d({a}, 2, kernel=1, activation=tanh)",
    "conv_transpose2d({a}, 2, kernel=3, padding=1)",
    "relu({a})",
    "sigmoid({a})",
    "batch_norm({a})",
    "{a} + {b}",
    "{a} * {b}",
    "max_pool2d({a}, 3, stride=1, padding=1)",
    "softmax({a})",
    "crop(upscale({a}, 2), size=[4, 4], offset=center)",
    "avg_pool2d(pixel_shuffle(conv2d({a}, 8, kernel=1), 2), 2)",
    "conv2d(concat({a}, {b}), 2, kernel=1)",
    "crop(pad({a}, 1), size=[4, 4], offset=1)",
)


@st.composite
def random_networks(draw: st.DrawFn) -> str:
    lines = ["input x: f32[N, 2, 4, 4]"]
    names = ["x"]
    for i in range(draw(st.integers(2, 9))):
        a, b = draw(st.sampled_from(names)), draw(st.sampled_from(names))
        lines.append(f"v{i} = " + draw(st.sampled_from(STEPS)).format(a=a, b=b))
        names.append(f"v{i}")
    outputs = {names[-1], draw(st.sampled_from(names[1:]))}
    return "\n".join([*lines, *(f"output {name}" for name in sorted(outputs))])


@settings(max_examples=100, deadline=None)
@given(random_networks())
def test_random_graphs_fuse_into_valid_kernels_computing_the_same_outputs(src: str) -> None:
    graph = typed(src)
    plan = plan_fusion(graph)
    after = fuse(graph)
    verify(after, after_pass="fuse")
    assert len(after.nodes) == plan.kernels_after
    assert_same_outputs(graph, after)
    for node in (n for n in after.nodes if n.is_fused):
        anchors = [p for p in node.parts if OPS[p.op].fusion in ANCHOR_CLASSES]
        assert anchors in ([], [node.parts[0]]), src  # at most one, and it runs first
        assert node.name == node.parts[0].name and node.span == node.parts[0].span
    by_name = {node.name: node for node in graph.nodes}
    for edge in plan.blocked:
        producer, consumer = by_name[edge.producer], by_name[edge.consumer]
        assert producer.output in consumer.inputs, src
