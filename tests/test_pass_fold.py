"""The folding passes (``convdsl.passes.fold``): golden IR before and after on small programs,
the cases where a fold must not fire, the verifier, outputs before vs after on the NumPy
interpreter with random batch-norm statistics, batch-norm folding against PyTorch, and the
example networks with every batch norm folded away."""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_weights

import convdsl
from convdsl.api import Network
from convdsl.ir.graph import Graph
from convdsl.ir.printer import print_graph
from convdsl.ir.verifier import verify
from convdsl.passes.fold import fold_batch_norm, fold_crop, fold_pad
from convdsl.passes.simplify import (
    eliminate_common_subexpressions,
    eliminate_dead_code,
    remove_identities,
)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

# ---- helpers -------------------------------------------------------------------------------


def typed(src: str, seed: int = 3) -> Network:
    """``src`` at -O0 (shapes only), bound to random weights: batch-norm gamma, beta and mean
    ~ N(0, 0.5), variance in [0.5, 2], so no batch norm is the identity."""
    net = convdsl.compile_string(src, opt_level=0, verify=True, backend="numpy")
    net.set_weights(random_weights(net, seed=seed))
    return net


def show(graph: Graph) -> str:
    return print_graph(graph, show_locations=False)


def golden(text: str) -> str:
    """Dedented IR text; a line ending in `` \\`` continues on the next (indented) line."""
    return re.sub(r" \\\n *", " ", textwrap.dedent(text).lstrip("\n"))


def assert_close(got: np.ndarray, want: np.ndarray, name: str = "") -> None:
    """Equal to 1e-5 relative to the largest magnitude of ``want``."""
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def assert_same_outputs(net: Network, graph: Graph, after_pass: str) -> None:
    """``graph`` verifies and computes what ``net`` (at -O0) computes, to 1e-5 relative."""
    verify(graph, after_pass=after_pass)
    inputs = net.random_inputs(seed=1, batch=2)
    want = net(inputs)
    got = Network(graph, weights=net.weights, backend="numpy")(inputs)
    assert got.keys() == want.keys()
    for name, ref in want.items():
        assert_close(got[name], ref, name)


def ops(graph: Graph) -> list[str]:
    return [node.op for node in graph.nodes]


# ---- fold_batch_norm -----------------------------------------------------------------------


def test_fold_batch_norm_golden() -> None:
    net = typed("""
        input x: f32[N, 3, 8, 8]
        c = conv2d(x, 4, kernel=3, padding=same, bias=false)
        b = batch_norm(c, eps=0.001)
        output y = relu(b)
    """)
    after = fold_batch_norm(net.graph)
    assert show(after) == golden(r"""
        network network
          %x: f32[N,3,8,8] = input
          %b: f32[N,4,8,8] = conv2d(%x) activation=none bias=true dilation=[1,1] groups=1 \
              kernel=[3,3] out_channels=4 pads=[[1,1],[1,1]] stride=[1,1] param.bias=c.bias@b \
              param.weight=c.weight@b
          %y: f32[N,4,8,8] = relu(%b)
        params
          c.weight: f32[4,3,3,3] init=he
          b.weight: f32[4] init=ones
          b.bias: f32[4] init=zeros
          b.running_mean: f32[4] init=zeros
          b.running_var: f32[4] init=ones
        derived
          c.weight@b: f32[4,3,3,3] = bn_fold_weight(c.weight, b.weight, b.running_var)
          c.bias@b: f32[4] = bn_fold_bias(b.weight, b.bias, b.running_mean, b.running_var)
        outputs
          y = %y
        """)
    conv = after.nodes[0]
    original = net.graph.nodes[0]
    assert (conv.name, conv.span, conv.call_sites) == ("c", original.span, original.call_sites)
    assert after.derived["c.weight@b"].attrs["eps"] == 0.001
    assert after.derived["c.weight@b"].attrs["axis"] == 0
    assert_same_outputs(net, after, "fold-batch-norm")


def test_fold_batch_norm_into_a_conv_with_bias() -> None:
    net = typed("""
        input x: f32[N, 3, 8, 8]
        c = conv2d(x, 4, kernel=3)
        output b = batch_norm(c)
    """)
    after = fold_batch_norm(net.graph)
    assert show(after).split("derived\n")[1] == golden("""
          c.weight@b: f32[4,3,3,3] = bn_fold_weight(c.weight, b.weight, b.running_var)
          c.bias@b: f32[4] = bn_fold_bias(c.bias, b.weight, b.bias, b.running_mean, b.running_var)
        outputs
          b = %b
        """)
    assert_same_outputs(net, after, "fold-batch-norm")


FOLDABLE = {
    "conv1d": "input x: f32[N, 3, 20]\nc = conv1d(x, 5, kernel=3, dilation=2, bias=false)",
    "conv2d-strided-grouped": "input x: f32[N, 4, 9, 9]\n"
    "c = conv2d(x, 6, kernel=3, stride=2, groups=2, padding=same)",
    "conv3d": "input x: f32[N, 2, 5, 6, 7]\nc = conv3d(x, 3, kernel=[1, 3, 3], padding=same)",
    "depthwise2d": "input x: f32[N, 3, 8, 8]\n"
    "c = depthwise2d(x, kernel=3, multiplier=2, padding=same, bias=false)",
    "depthwise1d": "input x: f32[N, 3, 16]\nc = depthwise1d(x, kernel=5, padding=causal)",
    "conv_transpose2d": "input x: f32[N, 3, 5, 5]\n"
    "c = conv_transpose2d(x, 4, kernel=3, stride=2, padding=1, output_padding=1)",
    "conv_transpose1d": "input x: f32[N, 3, 7]\nc = conv_transpose1d(x, 2, kernel=4, stride=2, "
    "bias=false)",
    "conv_transpose3d": "input x: f32[N, 2, 3, 4, 3]\n"
    "c = conv_transpose3d(x, 3, kernel=2, stride=2, bias=false)",
}


@pytest.mark.parametrize("conv", FOLDABLE.values(), ids=FOLDABLE.keys())
def test_fold_batch_norm_matches_O0_for_every_conv_kind(conv: str) -> None:
    net = typed(f"{conv}\nb = batch_norm(c, eps=0.01)\noutput y = sigmoid(b)")
    after = fold_batch_norm(net.graph)
    assert ops(after) == [net.graph.nodes[0].op, "sigmoid"]
    assert after.params == net.graph.params  # the weights file does not change
    axis = after.derived["c.weight@b"].attrs["axis"]
    assert axis == (1 if "conv_transpose" in conv else 0)
    assert_same_outputs(net, after, "fold-batch-norm")


def test_repeated_batch_norms_fold_one_after_another() -> None:
    net = typed("""
        input x: f32[N, 3, 8, 8]
        c = conv2d(x, 4, kernel=3, bias=false)
        b1 = batch_norm(c)
        b2 = batch_norm(b1, eps=0.1)
        output y = relu(b2)
    """)
    after = fold_batch_norm(net.graph)
    assert ops(after) == ["conv2d", "relu"]
    assert dict(after.nodes[0].params) == {"weight": "c.weight@b2", "bias": "c.bias@b2"}
    assert after.derived["c.bias@b2"].sources[0] == "c.bias@b1"
    assert_same_outputs(net, after, "fold-batch-norm")


NOT_FOLDABLE = {
    "activation before bn": """
        c = conv2d(x, 4, kernel=3, activation=relu)
        output y = batch_norm(c)""",
    "conv output read twice": """
        c = conv2d(x, 4, kernel=3)
        b = batch_norm(c)
        output y = b + relu(c)""",
    "conv output is a graph output": """
        output c = conv2d(x, 4, kernel=3)
        output b = batch_norm(c)""",
    "grouped conv_transpose": """
        c = conv_transpose2d(x, 4, kernel=3, groups=2)
        output b = batch_norm(c)""",
    "bn after an activation": """
        c = relu(conv2d(x, 4, kernel=3))
        output b = batch_norm(c)""",
    "bn after a pool": """
        c = max_pool2d(x, 2)
        output b = batch_norm(c)""",
    "bn of a graph input": """
        output b = batch_norm(x)""",
}


@pytest.mark.parametrize("body", NOT_FOLDABLE.values(), ids=NOT_FOLDABLE.keys())
def test_fold_batch_norm_does_not_fire(body: str) -> None:
    net = typed("input x: f32[N, 4, 8, 8]\n" + body)
    assert fold_batch_norm(net.graph) is net.graph


# ---- against PyTorch -----------------------------------------------------------------------


def _torch_batch_norm(channels: int, rng: np.random.Generator) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.uniform(-2, 2, channels)))
        bn.bias.copy_(torch.from_numpy(rng.standard_normal(channels)))
        bn.running_mean.copy_(torch.from_numpy(rng.standard_normal(channels)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.1, 3, channels)))
    return bn


TORCH_CASES = {
    "conv2d": (
        "conv2d(x, 8, kernel=3, stride=2, padding=1, bias=false)",
        lambda: torch.nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False),
    ),
    "depthwise2d": (
        "depthwise2d(x, kernel=3, multiplier=2, padding=1)",
        lambda: torch.nn.Conv2d(4, 8, 3, padding=1, groups=4),
    ),
    "conv_transpose2d": (
        "conv_transpose2d(x, 8, kernel=3, stride=2, padding=1, output_padding=1)",
        lambda: torch.nn.ConvTranspose2d(4, 8, 3, stride=2, padding=1, output_padding=1),
    ),
}


@pytest.mark.parametrize("case", TORCH_CASES.values(), ids=TORCH_CASES.keys())
def test_folded_conv_equals_torch_conv_then_batch_norm_in_eval_mode(case) -> None:
    conv_call, make_conv = case
    rng = np.random.default_rng(7)
    torch.manual_seed(7)
    conv = make_conv().double().eval()
    bn = _torch_batch_norm(8, rng)
    net = convdsl.compile_string(
        f"input x: f32[N, 4, 9, 9]\nc = {conv_call}\noutput y = batch_norm(c, eps=0.001)",
        opt_level=0,
        backend="numpy",
    )
    arrays = {f"c.{k}": v for k, v in conv.state_dict().items()}
    arrays |= {f"y.{k}": v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    weights = {k: v.numpy().astype(np.float32) for k, v in arrays.items()}
    folded = fold_batch_norm(net.graph)
    assert ops(folded) == [net.graph.nodes[0].op]
    verify(folded, after_pass="fold-batch-norm")
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    got = Network(folded, weights=weights, backend="numpy")(x=x)["y"]
    with torch.no_grad():
        # The reference runs in float64 on exactly the float32 arrays convdsl was given.
        for module in (conv, bn):
            for tensor in module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.float().double())
        want = bn(conv(torch.from_numpy(x.astype(np.float64)))).numpy()
    assert got.dtype == np.float32
    assert_close(got, want)


# ---- fold_pad ------------------------------------------------------------------------------


def test_fold_pad_golden() -> None:
    net = typed("""
        input x: f32[N, 3, 8, 8]
        p = pad(x, [[1, 2], [0, 3]])
        output y = conv2d(p, 4, kernel=3, padding=1)
    """)
    after = fold_pad(net.graph)
    assert show(after).split("params")[0] == golden(r"""
        network network
          %x: f32[N,3,8,8] = input
          %y: f32[N,4,11,11] = conv2d(%x) activation=none bias=true dilation=[1,1] groups=1 \
              kernel=[3,3] out_channels=4 pads=[[2,3],[1,4]] stride=[1,1]
        """)
    assert_same_outputs(net, after, "fold-pad")


def test_fold_pad_into_every_conv_reading_it() -> None:
    net = typed("""
        input x: f32[N, 3, 8, 8]
        p = pad(x, 2)
        a = conv2d(p, 4, kernel=5, stride=2)
        b = depthwise2d(p, kernel=3, dilation=2, padding=same)
        output y = a
        output z = b
    """)
    after = fold_pad(net.graph)
    assert ops(after) == ["conv2d", "depthwise2d"]
    assert [n.attrs["pads"] for n in after.nodes] == [((2, 2), (2, 2)), ((4, 4), (4, 4))]
    assert all(n.inputs == net.graph.inputs for n in after.nodes)
    assert_same_outputs(net, after, "fold-pad")


@pytest.mark.parametrize(
    "src",
    [
        "input x: f32[N, 2, 16]\noutput y = conv1d(pad(x, [[3, 0]]), 3, kernel=4, dilation=2)",
        "input x: f32[N, 2, 4, 5, 6]\n"
        "output y = conv3d(pad(x, [[1, 0], [0, 2], [1, 1]]), 3, kernel=2, stride=[1, 2, 2])",
        "input x: f32[N, 4, 7, 7]\noutput y = conv2d(pad(x, 1, value=0), 4, kernel=3, groups=2)",
    ],
)
def test_fold_pad_matches_O0(src: str) -> None:
    net = typed(src)
    after = fold_pad(net.graph)
    assert "pad" not in ops(after)
    assert_same_outputs(net, after, "fold-pad")


NO_PAD_FOLD = {
    "reflect": "output y = conv2d(pad(x, 1, mode=reflect), 4, kernel=3)",
    "replicate": "output y = conv2d(pad(x, 1, mode=replicate), 4, kernel=3)",
    "nonzero value": "output y = conv2d(pad(x, 1, value=1.5), 4, kernel=3)",
    "into max pool": "output y = max_pool2d(pad(x, 1), 3)",
    "into avg pool": "output y = avg_pool2d(pad(x, 1), 3, include_pad=false)",
    "into conv_transpose": "output y = conv_transpose2d(pad(x, 1), 4, kernel=3, padding=1)",
    "also read by a relu": "p = pad(x, 1)\noutput y = conv2d(p, 4, kernel=3) + relu(conv2d(p, 4, "
    "kernel=3))\noutput z = relu(p)",
    "pad is an output": "output p = pad(x, 1)\noutput y = conv2d(p, 4, kernel=3)",
    "dead pad": "p = pad(x, 1)\noutput y = relu(x)",
}


@pytest.mark.parametrize("body", NO_PAD_FOLD.values(), ids=NO_PAD_FOLD.keys())
def test_fold_pad_does_not_fire(body: str) -> None:
    net = typed("input x: f32[N, 4, 8, 8]\n" + body)
    assert fold_pad(net.graph) is net.graph


def test_nested_pads_fold_the_outer_one() -> None:
    # Only the pad a conv reads folds; the inner pad's reader is a pad, not a conv.
    net = typed("input x: f32[N, 2, 6, 6]\noutput y = conv2d(pad(pad(x, 1), 2), 3, kernel=3)")
    after = fold_pad(net.graph)
    assert ops(after) == ["pad", "conv2d"]
    assert after.nodes[1].attrs["pads"] == ((2, 2), (2, 2))
    assert_same_outputs(net, after, "fold-pad")


# ---- fold_crop -----------------------------------------------------------------------------


def test_fold_crop_golden() -> None:
    net = typed("""
        input x: f32[N, 3, 5, 6]
        u = conv_transpose2d(x, 4, kernel=4, stride=2, padding=1)
        output y = crop(u, size=[7, 9], offset=[2, 0])
    """)
    after = fold_crop(net.graph)
    assert show(after).split("params")[0] == golden(r"""
        network network
          %x: f32[N,3,5,6] = input
          %y: f32[N,4,7,9] = conv_transpose2d(%x) activation=none bias=true dilation=[1,1] \
              groups=1 kernel=[4,4] out_channels=4 output_padding=[0,0] pads=[[3,2],[1,4]] \
              stride=[2,2]
        """)
    assert after.nodes[0].name == "u"
    assert_same_outputs(net, after, "fold-crop")


@pytest.mark.parametrize(
    "src",
    [
        # FCN-8s's last layer: x8 up, cropped to the input's size around the centre
        "input x: f32[N, 5, 4, 4]\ninput like: f32[N, 1, 32, 32]\n"
        "output y = crop(conv_transpose2d(x, 3, kernel=16, stride=8, bias=false), like=like, "
        "offset=center)",
        "input x: f32[N, 2, 9]\n"
        "output y = crop(conv_transpose1d(x, 3, kernel=3, stride=3, dilation=2, "
        "output_padding=1), size=[17], offset=[5])",
        "input x: f32[N, 4, 3, 4, 5]\n"
        "output y = crop(conv_transpose3d(x, 2, kernel=2, stride=[1, 2, 3], groups=2, "
        "activation=relu), size=[3, 6, 10], offset=[1, 1, 4])",
        "input x: f32[N, 3, 6, 6]\n"
        "output y = crop(conv_transpose2d(x, 3, kernel=3, padding=same, stride=2), size=[5, 12])",
    ],
)
def test_fold_crop_matches_O0(src: str) -> None:
    net = typed(src)
    after = fold_crop(net.graph)
    assert "crop" not in ops(after)
    assert_same_outputs(net, after, "fold-crop")


NO_CROP_FOLD = {
    "crop of a conv": "output y = crop(conv2d(x, 4, kernel=3), size=[3, 3])",
    "also read by a relu": "u = conv_transpose2d(x, 4, kernel=2, stride=2)\n"
    "output y = crop(u, size=[3, 3])\noutput z = relu(u)",
    "transposed conv is an output": "output u = conv_transpose2d(x, 4, kernel=2, stride=2)\n"
    "output y = crop(u, size=[3, 3])",
    "crop of an input": "output y = crop(x, size=[3, 3])",
}


@pytest.mark.parametrize("body", NO_CROP_FOLD.values(), ids=NO_CROP_FOLD.keys())
def test_fold_crop_does_not_fire(body: str) -> None:
    net = typed("input x: f32[N, 4, 8, 8]\n" + body)
    assert fold_crop(net.graph) is net.graph


# ---- together, and on the examples ---------------------------------------------------------

ALL = (remove_identities, fold_pad, fold_crop, fold_batch_norm, eliminate_common_subexpressions)


def optimized(graph: Graph) -> Graph:
    for run in (*ALL, eliminate_dead_code):
        graph = run(graph)
        verify(graph, after_pass=run.__name__)
    return graph


def test_pad_then_conv_then_batch_norm_fold_to_one_conv() -> None:
    net = typed("""
        input x: f32[N, 3, 8, 8]
        block cbr(x, ch) {
          c = conv2d(pad(x, 1), ch, kernel=3, bias=false)
          return relu6(batch_norm(c))
        }
        output y = cbr(cbr(x, 4), 6)
    """)
    after = optimized(net.graph)
    assert ops(after) == ["conv2d", "relu6", "conv2d", "relu6"]
    assert after.params == net.graph.params
    assert_same_outputs(net, after, "the -O1 passes")


def test_the_O1_pipeline_loads_the_O0_weights() -> None:
    src = "input x: f32[N, 3, 8, 8]\nc = conv2d(x, 4, kernel=3)\noutput y = relu(batch_norm(c))"
    reference = typed(src)
    o1 = convdsl.compile_string(
        src, opt_level=1, weights=reference.weights, verify=True, backend="numpy"
    )
    assert "batch_norm" not in ops(o1.graph)
    assert o1.params == reference.params
    inputs = reference.random_inputs(seed=2, batch=3)
    assert_close(o1(inputs)["y"], reference(inputs)["y"])


def with_random_batch_norm_stats(net: Network, seed: int) -> dict[str, np.ndarray]:
    """The network's own (He-initialized) weights with random batch-norm statistics: deep
    networks with N(0, 0.5) weights everywhere blow up to logits of 1e6, where float32
    rounding alone moves a softmax."""
    rng = np.random.default_rng(seed)
    draw = {
        "weight": lambda n: rng.uniform(0.5, 1.5, n),
        "bias": lambda n: rng.normal(0.0, 0.2, n),
        "running_mean": lambda n: rng.normal(0.0, 0.2, n),
        "running_var": lambda n: rng.uniform(0.5, 2.0, n),
    }
    weights = dict(net.weights)
    for node in net.graph.nodes:
        if node.op == "batch_norm":
            channels = net.graph.type_of(node.output).channels
            for role, make in draw.items():
                weights[node.param(role)] = make(channels).astype(np.float32)
    return weights


@pytest.mark.parametrize("name, extra", [("mobilenet", "logits"), ("unet3d", None)])
def test_examples_fold_every_batch_norm(name: str, extra: str | None) -> None:
    net = convdsl.compile_file(EXAMPLES_DIR / f"{name}.conv", opt_level=0, backend="numpy")
    net.set_weights(with_random_batch_norm_stats(net, seed=5))
    graph = net.graph
    if extra is not None:
        # Compare what goes into the softmax too: a softmax over 1000 classes is ~1e-3.
        (value,) = [v for v in graph.values.values() if v.name == extra]
        graph = replace(graph, outputs=(*graph.outputs, (extra, value.id)))
        net = Network(graph, weights=net.weights, backend="numpy")
    batch_norms = ops(graph).count("batch_norm")
    assert batch_norms >= 10
    after = optimized(graph)
    assert "batch_norm" not in ops(after)
    assert len(after.nodes) == len(graph.nodes) - batch_norms
    assert len(after.derived) == 2 * batch_norms
    assert after.params == graph.params
    assert_same_outputs(net, after, "the -O1 passes")
