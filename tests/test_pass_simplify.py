"""The simplification passes (``convdsl.passes.simplify``): golden IR before and after on small
programs, the cases where a pass must leave the graph alone, the verifier after every pass, and
the outputs before vs after on the NumPy interpreter with random weights."""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from conftest import random_weights

import convdsl
from convdsl.api import Network
from convdsl.ir.graph import FUSED, Attrs, Graph, Node
from convdsl.ir.printer import print_graph
from convdsl.ir.verifier import verify
from convdsl.passes.fold import fold_batch_norm
from convdsl.passes.pipeline import PASSES
from convdsl.passes.simplify import (
    eliminate_common_subexpressions,
    eliminate_dead_code,
    remove_identities,
)

# ---- helpers -------------------------------------------------------------------------------


def typed(src: str) -> Network:
    """``src`` at -O0 (shapes only), bound to random weights (batch norms not the identity)."""
    net = convdsl.compile_string(src, opt_level=0, verify=True, backend="numpy")
    net.set_weights(random_weights(net, seed=3))
    return net


def show(graph: Graph) -> str:
    return print_graph(graph, show_locations=False)


def golden(text: str) -> str:
    """Dedented IR text; a line ending in `` \\`` continues on the next (indented) line."""
    return re.sub(r" \\\n *", " ", textwrap.dedent(text).lstrip("\n"))


def assert_same_outputs(net: Network, graph: Graph, after_pass: str) -> None:
    """``graph`` verifies and computes what ``net`` computes, to 1e-5 relative."""
    verify(graph, after_pass=after_pass)
    inputs = net.random_inputs(seed=1, batch=2)
    want = net(inputs)
    got = Network(graph, weights=net.weights, backend="numpy")(inputs)
    assert got.keys() == want.keys()
    for name, ref in want.items():
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def fuse(graph: Graph, names: list[str]) -> Graph:
    """``graph`` with the consecutive nodes ``names`` made into one fused kernel, built by hand
    (the passes must rewire fused kernels too, whatever pass made them)."""
    members = [n for n in graph.nodes if n.name in names]
    start = graph.nodes.index(members[0])
    internal = {v for n in members for v in n.outputs}
    inputs = tuple(dict.fromkeys(v for n in members for v in n.inputs if v not in internal))
    first, last = members[0], members[-1]
    kernel = Node(
        FUSED, first.name, inputs, last.outputs, Attrs(), first.span, parts=tuple(members)
    )
    nodes = [*graph.nodes[:start], kernel, *graph.nodes[start + len(members) :]]
    fused = replace(graph, nodes=tuple(nodes))
    verify(fused, after_pass="the test's fusion")
    return fused


# ---- the pipeline --------------------------------------------------------------------------


def test_passes_run_after_shapes_from_opt_level_1() -> None:
    names = [p.name for p in PASSES]
    mine = ["remove-identities", "fold-pad", "fold-crop", "fold-batch-norm", "cse", "dce"]
    assert names[: len(mine) + 1] == ["shapes", *mine]
    assert all(p.min_opt_level == 1 and p.purpose for p in PASSES[1 : len(mine) + 1])


# ---- remove_identities ---------------------------------------------------------------------

IDENTITIES = """
input x: f32[N, 4, 6, 6]
a = crop(x, like=x)
b = pad(a, 0, mode=reflect)
c = upscale(b, 1, mode=bilinear, align_corners=true)
d = pixel_shuffle(c, 1)
e = max_pool2d(d, 1)
f = avg_pool2d(e, 1, stride=1, ceil_mode=true)
output y = relu(f)
"""


def test_remove_identities_golden() -> None:
    net = typed(IDENTITIES)
    assert show(net.graph) == golden(r"""
        network network
          %x: f32[N,4,6,6] = input
          %a: f32[N,4,6,6] = crop(%x) sizes=[6,6] starts=[0,0]
          %b: f32[N,4,6,6] = pad(%a) mode=reflect pads=[[0,0],[0,0]] value=0.0
          %c: f32[N,4,6,6] = upscale(%b) coordinate=align_corners factors=[1,1] mode=linear
          %d: f32[N,4,6,6] = pixel_shuffle(%c) factor=1 order=crd
          %e: f32[N,4,6,6] = max_pool2d(%d) ceil_mode=false dilation=[1,1] kernel=[1,1] \
              pads=[[0,0],[0,0]] stride=[1,1]
          %f: f32[N,4,6,6] = avg_pool2d(%e) ceil_mode=true include_pad=false kernel=[1,1] \
              pads=[[0,0],[0,0]] stride=[1,1]
          %y: f32[N,4,6,6] = relu(%f)
        outputs
          y = %y
        """)
    after = remove_identities(net.graph)
    assert show(after) == golden(r"""
        network network
          %x: f32[N,4,6,6] = input
          %y: f32[N,4,6,6] = relu(%x)
        outputs
          y = %y
        """)
    assert_same_outputs(net, after, "remove-identities")


@pytest.mark.parametrize(
    "op",
    [
        "upscale(x, 1)",
        "upscale(x, [1, 1], mode=linear)",
        "upscale(x, 1, mode=bilinear)",
        "avg_pool2d(x, 1, stride=1, include_pad=true)",
        "max_pool2d(x, 1, stride=1, dilation=2, ceil_mode=true)",
        "pad(x, [[0, 0], [0, 0]], mode=zero, value=3)",
        "pad(x, 0, mode=replicate)",
        "crop(x, size=[5, 7], offset=0)",
        "crop(x, size=[5, 7], offset=center)",
        "pixel_shuffle(x, 1, order=dcr)",
    ],
)
def test_each_identity_is_exact(op: str) -> None:
    net = typed(f"input x: f32[N, 3, 5, 7]\noutput y = sigmoid({op})")
    after = remove_identities(net.graph)
    assert [n.op for n in after.nodes] == ["sigmoid"]
    verify(after, after_pass="remove-identities")
    inputs = net.random_inputs(seed=0, batch=2)
    np.testing.assert_array_equal(
        Network(after, weights=net.weights, backend="numpy")(inputs)["y"], net(inputs)["y"]
    )


def test_trilinear_upscale_by_one_is_removed() -> None:
    net = typed("input v: f32[N, 2, 3, 4, 5]\noutput y = relu(upscale(v, 1, mode=trilinear))")
    after = remove_identities(net.graph)
    assert [n.op for n in after.nodes] == ["relu"]
    assert_same_outputs(net, after, "remove-identities")


@pytest.mark.parametrize(
    "op",
    [
        "crop(x, size=[5, 6])",  # smaller
        "crop(x, size=[4, 7], offset=[1, 0])",
        "pad(x, [[0, 1], [0, 0]])",
        "upscale(x, [1, 2])",
        "max_pool2d(x, 1, stride=2)",
        "max_pool2d(x, 2, stride=1)",
        "avg_pool2d(x, [1, 2], stride=1)",
        "relu(x)",
        "global_avg_pool(x)",
    ],
)
def test_near_identities_stay(op: str) -> None:
    net = typed(f"input x: f32[N, 4, 5, 7]\noutput y = sigmoid({op})")
    assert remove_identities(net.graph) is net.graph


def test_an_identity_output_is_rewired_to_its_input() -> None:
    net = typed("""
        input x: f32[N, 2, 4, 4]
        output a = relu(x)
        output b = crop(a, like=a)
        output c = sigmoid(pad(b, 0))
    """)
    after = remove_identities(net.graph)
    assert show(after) == golden(r"""
        network network
          %x: f32[N,2,4,4] = input
          %a: f32[N,2,4,4] = relu(%x)
          %c: f32[N,2,4,4] = sigmoid(%a)
        outputs
          a = %a
          b = %a
          c = %c
        """)
    assert_same_outputs(net, after, "remove-identities")


def test_an_identity_of_a_graph_input_that_is_an_output_stays() -> None:
    net = typed("""
        input x: f32[N, 2, 4, 4]
        p = pad(x, 0)
        output y = crop(p, like=x)
        output z = relu(p)
    """)
    after = remove_identities(net.graph)
    # The pad goes (its readers now read x); the crop writing output y would leave y naming
    # the graph input, so it stays, now reading x.
    assert show(after) == golden(r"""
        network network
          %x: f32[N,2,4,4] = input
          %y: f32[N,2,4,4] = crop(%x) sizes=[4,4] starts=[0,0]
          %z: f32[N,2,4,4] = relu(%x)
        outputs
          y = %y
          z = %z
        """)
    assert remove_identities(after) is after
    assert_same_outputs(net, after, "remove-identities")


def test_a_concat_of_one_input_is_an_identity() -> None:
    # The language rejects concat(a); a later pass could make one, so build it by hand.
    net = typed("input x: f32[N, 3, 4, 4]\nr = relu(x)\ns = tanh(r)\noutput y = sigmoid(s)")
    tanh = net.graph.nodes[1]
    concat = replace(tanh, op="concat", name="cat", attrs=Attrs())
    graph = replace(net.graph, nodes=(net.graph.nodes[0], concat, net.graph.nodes[2]))
    verify(graph)
    after = remove_identities(graph)
    assert [(n.op, [after.values[v].name for v in n.inputs]) for n in after.nodes] == [
        ("relu", ["x"]),
        ("sigmoid", ["r"]),
    ]


def test_a_fused_kernel_reading_an_identity_is_rewired_with_its_parts() -> None:
    net = typed("""
        input x: f32[N, 3, 4, 4]
        a = crop(x, like=x)
        b = relu(a)
        c = b + a
        output y = sigmoid(c)
    """)
    graph = fuse(net.graph, ["b", "c"])
    after = remove_identities(graph)
    assert show(after) == golden(r"""
        network network
          %x: f32[N,3,4,4] = input
          %c: f32[N,3,4,4] = fused(%x) parts=2
              %b: f32[N,3,4,4] = relu(%x)
              %c: f32[N,3,4,4] = add(%b, %x)
          %y: f32[N,3,4,4] = sigmoid(%c)
        outputs
          y = %y
        """)
    assert_same_outputs(net, after, "remove-identities")


# ---- eliminate_common_subexpressions -------------------------------------------------------


def test_cse_golden() -> None:
    net = typed("""
        input x: f32[N, 3, 4, 4]
        a = relu(sigmoid(x))
        b = relu(sigmoid(x))
        output s = a + b
        c1 = conv2d(x, 4, kernel=1)
        c2 = conv2d(x, 4, kernel=1)
        output t = c1 + c2
        l1 = leaky_relu(x, alpha=0.1)
        l2 = leaky_relu(x, alpha=0.2)
        output u = concat(l1, l2) + concat(l2, l1)
    """)
    after = eliminate_common_subexpressions(net.graph)
    # Same op, inputs and attributes merge; convs have parameters of their own and never do;
    # nor do different attributes or inputs in another order.
    text = show(after)
    assert text.split("params")[0] == golden(r"""
        network network
          %x: f32[N,3,4,4] = input
          %a.sigmoid: f32[N,3,4,4] = sigmoid(%x)
          %a: f32[N,3,4,4] = relu(%a.sigmoid)
          %s: f32[N,3,4,4] = add(%a, %a)
          %c1: f32[N,4,4,4] = conv2d(%x) activation=none bias=true dilation=[1,1] groups=1 \
              kernel=[1,1] out_channels=4 pads=[[0,0],[0,0]] stride=[1,1]
          %c2: f32[N,4,4,4] = conv2d(%x) activation=none bias=true dilation=[1,1] groups=1 \
              kernel=[1,1] out_channels=4 pads=[[0,0],[0,0]] stride=[1,1]
          %t: f32[N,4,4,4] = add(%c1, %c2)
          %l1: f32[N,3,4,4] = leaky_relu(%x) alpha=0.1
          %l2: f32[N,3,4,4] = leaky_relu(%x) alpha=0.2
          %u.lhs: f32[N,6,4,4] = concat(%l1, %l2) axis=1
          %u.rhs: f32[N,6,4,4] = concat(%l2, %l1) axis=1
          %u: f32[N,6,4,4] = add(%u.lhs, %u.rhs)
        """)
    assert after.params == net.graph.params
    assert_same_outputs(net, after, "cse")
    assert eliminate_common_subexpressions(after) is after


def test_cse_merged_outputs_name_the_survivor() -> None:
    net = typed("input x: f32[N, 3, 4, 4]\noutput p = relu(x)\noutput q = relu(x)")
    after = eliminate_common_subexpressions(net.graph)
    assert show(after) == golden(r"""
        network network
          %x: f32[N,3,4,4] = input
          %p: f32[N,3,4,4] = relu(%x)
        outputs
          p = %p
          q = %p
        """)
    assert_same_outputs(net, after, "cse")


def test_cse_leaves_fused_kernels_alone_but_rewires_them() -> None:
    net = typed("""
        input x: f32[N, 3, 4, 4]
        a = tanh(x)
        b = tanh(x)
        f1 = relu(a)
        g1 = sigmoid(f1)
        f2 = relu(a)
        g2 = sigmoid(f2)
        h = relu(b)
        output y = g1 + g2 + h
    """)
    graph = fuse(fuse(net.graph, ["f1", "g1"]), ["f2", "g2"])
    after = eliminate_common_subexpressions(graph)
    assert [(n.op, n.name) for n in after.nodes] == [
        ("tanh", "a"),
        ("fused", "f1"),
        ("fused", "f2"),  # the same computation, but fused: left alone
        ("relu", "h"),  # now reads a
        ("add", "y.lhs"),
        ("add", "y"),
    ]
    assert after.nodes[3].inputs == (after.nodes[0].output,)
    assert_same_outputs(net, after, "cse")


def test_cse_rewires_the_parts_of_a_fused_kernel() -> None:
    net = typed("""
        input x: f32[N, 3, 4, 4]
        a = tanh(x)
        b = tanh(x)
        c = a + b
        output y = relu(c)
    """)
    after = eliminate_common_subexpressions(fuse(net.graph, ["c", "y"]))
    assert show(after) == golden(r"""
        network network
          %x: f32[N,3,4,4] = input
          %a: f32[N,3,4,4] = tanh(%x)
          %y: f32[N,3,4,4] = fused(%a) parts=2
              %c: f32[N,3,4,4] = add(%a, %a)
              %y: f32[N,3,4,4] = relu(%c)
        outputs
          y = %y
        """)
    assert_same_outputs(net, after, "cse")


# ---- eliminate_dead_code -------------------------------------------------------------------


def test_dce_golden() -> None:
    net = typed("""
        input x: f32[N, 3, 4, 4]
        input unused: f32[N, 1, 2, 2]
        c = conv2d(x, 2, kernel=1, bias=false)
        dead = sigmoid(c)
        also_dead = relu(dead) + dead
        output y = relu(x)
    """)
    after = eliminate_dead_code(net.graph)
    assert show(after) == golden(r"""
        network network
          %x: f32[N,3,4,4] = input
          %unused: f32[N,1,2,2] = input
          %y: f32[N,3,4,4] = relu(%x)
        params
          c.weight: f32[2,3,1,1] init=he
        outputs
          y = %y
        """)
    assert eliminate_dead_code(after) is after
    assert_same_outputs(net, after, "dce")


def test_dce_drops_derived_parameters_nothing_reads() -> None:
    net = typed("""
        input x: f32[N, 3, 4, 4]
        c = conv2d(x, 2, kernel=1, bias=false)
        b = batch_norm(c)
        d = conv2d(x, 2, kernel=1)
        e = batch_norm(d)
        output y = relu(e)
    """)
    folded = fold_batch_norm(net.graph)
    assert list(folded.derived) == ["c.weight@b", "c.bias@b", "d.weight@e", "d.bias@e"]
    after = eliminate_dead_code(folded)
    assert list(after.derived) == ["d.weight@e", "d.bias@e"]
    assert after.params == net.graph.params
    assert_same_outputs(net, after, "dce")


def test_dce_keeps_derived_parameters_another_one_is_made_from() -> None:
    net = typed("""
        input x: f32[N, 3, 4, 4]
        c = conv2d(x, 2, kernel=1, bias=false)
        b1 = batch_norm(c)
        output y = batch_norm(b1)
    """)
    after = eliminate_dead_code(fold_batch_norm(net.graph))
    assert list(after.derived) == ["c.weight@b1", "c.bias@b1", "c.weight@y", "c.bias@y"]
    assert_same_outputs(net, after, "dce")


def test_dce_keeps_live_fused_kernels_and_drops_dead_ones() -> None:
    net = typed("""
        input x: f32[N, 3, 4, 4]
        a = relu(x)
        b = sigmoid(a)
        d1 = tanh(x)
        d2 = relu(d1)
        output y = b + x
    """)
    after = eliminate_dead_code(fuse(fuse(net.graph, ["a", "b"]), ["d1", "d2"]))
    assert [(n.op, n.name) for n in after.nodes] == [("fused", "a"), ("add", "y")]
    assert_same_outputs(net, after, "dce")


# ---- together ------------------------------------------------------------------------------


def test_simplification_of_a_redundant_network_matches_O0() -> None:
    net = typed("""
        input x: f32[N, 3, 8, 8]
        block branch(x) {
          c = crop(x, size=[8, 8])
          return relu(upscale(c, 1))
        }
        a = branch(x)
        b = branch(x)
        u = conv2d(a + b, 4, kernel=3, padding=same, activation=relu)
        unused = max_pool2d(u, 2)
        output y = avg_pool2d(u, 1, stride=1) + u
    """)
    graph = net.graph
    for run in (remove_identities, eliminate_common_subexpressions, eliminate_dead_code):
        graph = run(graph)
        verify(graph, after_pass=run.__name__)
    assert [n.op for n in graph.nodes] == ["relu", "add", "conv2d", "add"]
    assert_same_outputs(net, graph, "simplification")
