"""add, sub, mul and div with broadcasting and number operands: the interpreter against
PyTorch, the llvm backend against the interpreter (alone, fused into convolutions, over
flattened planes, over a batch in several passes), fusion, and the diagnostics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import assert_close, random_weights, tt

import convdsl
from convdsl.passes.fusion import plan_fusion

OPS = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
TORCH = {
    "+": torch.add,
    "-": torch.sub,
    "*": torch.mul,
    "/": torch.div,
}
FULL = (3, 5, 4, 7)  # batch N = 3


def decl(name: str, shape: tuple[int, ...], dtype: str = "f32", batch: str = "N") -> str:
    """An input declaration; a batch of 1 is written as 1, a full batch as ``batch``."""
    dims = [str(d) for d in shape]
    dims[0] = "1" if shape[0] == 1 else batch
    return f"input {name}: {dtype}[{', '.join(dims)}]"


def operand(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Values in ±[0.5, 2.5]: nothing divides by (almost) zero."""
    magnitude = rng.uniform(0.5, 2.5, shape)
    return (magnitude * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def small_shapes() -> list[tuple[int, ...]]:
    """``FULL`` with every subset of its axes made 1."""
    return [
        tuple(1 if axis in ones else size for axis, size in enumerate(FULL))
        for count in range(len(FULL) + 1)
        for ones in itertools.combinations(range(len(FULL)), count)
    ]


def compile_pair(src: str) -> tuple[convdsl.Network, convdsl.Network]:
    ref = convdsl.compile_string(src, backend="numpy", verify=True)
    ref.set_weights(random_weights(ref, 1))
    native = convdsl.compile_string(src, backend="llvm", threads=1)
    native.set_weights(dict(ref.weights))
    return ref, native


def assert_llvm_agrees(src: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ref, native = compile_pair(src)
    want, got = ref(**inputs), native(**inputs)
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype
        tolerance = 1e-5 if expected.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(
            got[name], expected, rtol=tolerance, atol=tolerance, err_msg=name
        )
    return want


@pytest.mark.parametrize("op", OPS.values())
@pytest.mark.parametrize("small", small_shapes(), ids=str)
def test_every_axis_pattern_matches_torch_either_way_round(small: tuple[int, ...], op: str) -> None:
    rng = np.random.default_rng(40)
    a, b = operand(rng, FULL, np.float32), operand(rng, small, np.float32)
    src = f"{decl('a', FULL)}\n{decl('b', small)}\noutput y = a {op} b\noutput z = b {op} a\n"
    net = convdsl.compile_string(src, backend="numpy")
    assert net.outputs["y"].shape == ("N", *FULL[1:])
    out = net(a=a, b=b)
    assert_close(out["y"], TORCH[op](tt(a), tt(b)))
    assert_close(out["z"], TORCH[op](tt(b), tt(a)))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ((3, 5, 1, 7), (3, 1, 4, 1)),  # both operands broadcast, on different axes
        ((1, 5, 4, 1), (3, 1, 1, 7)),
        ((3, 1, 1, 1), (1, 5, 4, 7)),
    ],
    ids=str,
)
@pytest.mark.parametrize("op", OPS.values())
def test_both_operands_broadcast_to_a_larger_shape(left, right, op: str) -> None:
    rng = np.random.default_rng(41)
    a, b = operand(rng, left, np.float32), operand(rng, right, np.float32)
    src = f"{decl('a', left)}\n{decl('b', right)}\noutput y = a {op} b\n"
    out = assert_llvm_agrees(src, {"a": a, "b": b})
    assert_close(out["y"], TORCH[op](tt(a), tt(b)))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("small", small_shapes(), ids=str)
def test_llvm_reads_every_axis_pattern_broadcast(small: tuple[int, ...], dtype: str) -> None:
    numpy_dtype = np.float32 if dtype == "f32" else np.float64
    rng = np.random.default_rng(42)
    a, b = operand(rng, FULL, numpy_dtype), operand(rng, small, numpy_dtype)
    src = (
        f"{decl('a', FULL, dtype)}\n{decl('b', small, dtype)}\n"
        "output s = a + b\noutput d = b - a\noutput p = a * b\noutput q = b / a\n"
    )
    assert_llvm_agrees(src, {"a": a, "b": b})


@pytest.mark.parametrize("width", [1, 7, 13])
@pytest.mark.parametrize(
    "small", [(3, 5, 1, 1), (1, 5, 1, 1), (3, 1, 6, 13), (3, 5, 1, 13)], ids=str
)
def test_broadcast_operand_fused_into_a_conv(small: tuple[int, ...], width: int) -> None:
    """The operand is read broadcast inside the conv's kernel (its register tiles, their
    masked tails, flattened planes); the kernel is one fused node."""
    small = (*small[:3], min(small[3], width))
    rng = np.random.default_rng(43)
    x = operand(rng, (3, 4, 6, width), np.float32)
    g = operand(rng, small, np.float32)
    convs = {
        "c3": "conv2d(x, 5, kernel=3, padding=same)",
        "c1": "conv2d(x, 5, kernel=1)",  # pointwise: a flattened plane where it pays
        "dw": "conv2d(x, 5, kernel=[3, 1], padding=[1, 0], activation=selu)",
    }
    lines = [decl("x", (3, 4, 6, width)), decl("g", small)]
    for name, conv in convs.items():
        lines += [f"{name} = {conv}", f"output {name}_y = ({name} * g - 0.5) / g"]
    src = "\n".join(lines) + "\n"
    net = convdsl.compile_string(src, backend="numpy", opt_level=0)
    fused = {group.anchor: group.members for group in plan_fusion(net.graph).groups}
    for name in convs:
        assert fused[name][-1] == f"{name}_y"
    assert_llvm_agrees(src, {"x": x, "g": g})


def test_squeeze_and_excitation_matches_torch_on_both_backends() -> None:
    src = """
    input x: f32[N, 6, 9, 11]
    c = conv2d(x, 6, kernel=3, padding=same)
    s = global_avg_pool(c)
    squeeze = relu(conv2d(s, 3, kernel=1, name="fc1"))
    gate = sigmoid(conv2d(squeeze, 6, kernel=1, name="fc2"))   : [N, 6, 1, 1]
    output y = c * gate + x
    """
    x = operand(np.random.default_rng(44), (2, 6, 9, 11), np.float32)
    out = assert_llvm_agrees(src, {"x": x})
    net = convdsl.compile_string(src, backend="numpy")
    net.set_weights(random_weights(net, 1))
    w = {name: tt(a) for name, a in net.weights.items()}
    conv = torch.nn.functional.conv2d
    c = conv(tt(x), w["c.weight"], w["c.bias"], padding=1)
    squeeze = c.mean(dim=(2, 3), keepdim=True)
    hidden = torch.relu(conv(squeeze, w["fc1.weight"], w["fc1.bias"]))
    gate = torch.sigmoid(conv(hidden, w["fc2.weight"], w["fc2.bias"]))
    assert_close(out["y"], c * gate + tt(x))


def test_a_batch_1_input_broadcast_over_a_batch_run_in_several_passes() -> None:
    """Each pass of the llvm entry over a large batch reads the one image of ``g``."""
    src = """
    input x: f32[N, 32, 128, 128]
    input g: f32[1, 32, 1, 128]
    a = relu(x)
    output y = a * g
    output z = g - a
    """
    rng = np.random.default_rng(45)
    x = operand(rng, (3, 32, 128, 128), np.float32)
    g = operand(rng, (1, 32, 1, 128), np.float32)
    out = assert_llvm_agrees(src, {"x": x, "g": g})
    assert_close(out["y"], torch.relu(tt(x)) * tt(g))
    assert_close(out["z"], tt(g) - torch.relu(tt(x)))


NUMBER_CASES = [
    ("x * 0.5", lambda x: x * 0.5),
    ("0.5 * x", lambda x: 0.5 * x),
    ("x + 1", lambda x: x + 1),
    ("1 + x", lambda x: 1 + x),
    ("x - 2", lambda x: x - 2),
    ("2 - x", lambda x: 2 - x),
    ("x / 3", lambda x: x / 3),
    ("3 / x", lambda x: 3 / x),
    ("-x", lambda x: -x),
    ("sub(2, x)", lambda x: 2 - x),
    ("div(1, x) + mul(x, 0.1)", lambda x: 1 / x + x * 0.1),
    ("(x - 0.5) / 0.25 * 2 + 1", lambda x: (x - 0.5) / 0.25 * 2 + 1),
]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize(("expr", "fn"), NUMBER_CASES, ids=[c[0] for c in NUMBER_CASES])
def test_number_operands_match_torch_on_both_backends(expr: str, fn, dtype: str) -> None:
    numpy_dtype = np.float32 if dtype == "f32" else np.float64
    x = operand(np.random.default_rng(46), (2, 3, 5, 13), numpy_dtype)
    src = f"input x: {dtype}[N, 3, 5, 13]\noutput y = {expr}\n"
    out = assert_llvm_agrees(src, {"x": x})
    assert_close(out["y"], fn(tt(x)), numpy_dtype)
    # in the tensor's own dtype, as PyTorch computes it
    np.testing.assert_allclose(out["y"], fn(torch.from_numpy(x)).numpy(), rtol=1e-6)


def test_number_operands_fuse_into_a_conv() -> None:
    src = "input x: f32[N, 3, 8, 8]\nc = conv2d(x, 4, kernel=3)\noutput y = 1 - c / 2\n"
    net = convdsl.compile_string(src, backend="numpy", opt_level=0)
    (group,) = plan_fusion(net.graph).groups
    assert group.members == ("c", "y.rhs", "y")
    assert_llvm_agrees(src, {"x": operand(np.random.default_rng(47), (2, 3, 8, 8), np.float32)})


def test_a_broadcast_output_is_never_written_over_its_batch_1_operand() -> None:
    """Per batch entry a [1, C, H, W] value takes the bytes of the [N, C, H, W] output; the
    memory plan must still not write the output in place over it."""
    src = """
    input x: f32[N, 4, 5, 6]
    input s: f32[1, 4, 5, 6]
    t = relu(s)
    output u = t * 2
    output y = x + t
    """
    net = convdsl.compile_string(src, backend="numpy", opt_level=2)
    plan = net.graph.memory
    assert plan is not None
    y = next(v for name, v in net.graph.outputs if name == "y")
    assert all(b.shares is None for v, b in plan.buffers.items() if v == y)


# ---- diagnostics ----------------------------------------------------------------------------


def compile_error(src: str, backend: str = "numpy") -> list[str]:
    with pytest.raises(convdsl.ConvdslError) as info:
        convdsl.compile_string(src, "net.conv", backend=backend)
    return str(info.value).splitlines()


def test_shapes_that_do_not_broadcast_are_named_with_the_axis() -> None:
    err = compile_error("input a: f32[N, 4, 8, 8]\ninput b: f32[N, 4, 1, 3]\noutput y = b - a\n")
    assert err == [
        "net.conv:3:12: error: sub: shapes [N,4,1,3] and [N,4,8,8] do not broadcast: W is 3 vs 8",
        "   3 | output y = b - a",
        "     |            ^~~~~",
        "  hint: broadcasting needs each dim equal, or 1 in one of them",
    ]


def test_a_symbolic_batch_does_not_broadcast_against_another_size() -> None:
    err = compile_error("input a: f32[N, 4, 8, 8]\ninput b: f32[2, 4, 8, 8]\noutput y = a / b\n")
    assert err[0] == (
        "net.conv:3:12: error: div: shapes [N,4,8,8] and [2,4,8,8] do not broadcast: batch is "
        "N vs 2"
    )


def test_operands_of_different_ranks_do_not_broadcast() -> None:
    err = compile_error("input a: f32[N, 4, 8, 8]\ninput b: f32[N, 4, 8]\noutput y = mul(a, b)\n")
    assert err == [
        "net.conv:3:12: error: mul: shapes [N,4,8,8] and [N,4,8] do not broadcast: ranks 4 and "
        "3 differ",
        "   3 | output y = mul(a, b)",
        "     |            ^~~~~~~~~",
        "  hint: convdsl broadcasts operands of the same rank, each dim equal or 1 in one of "
        "them: write the missing dims as 1",
    ]


def test_division_by_the_number_zero_points_at_the_zero() -> None:
    err = compile_error("input x: f32[N, 4, 8, 8]\noutput y = x / 0\n")
    assert err == [
        "net.conv:2:16: error: div: division by the number 0",
        "   2 | output y = x / 0",
        "     |                ^",
    ]


def test_two_numbers_in_a_call_are_refused_at_the_first() -> None:
    err = compile_error("input x: f32[N, 4, 8, 8]\noutput y = add(1, 2) * x\n")
    assert err[:3] == [
        "net.conv:2:16: error: add: expected a tensor for x or y, found two numbers",
        "   2 | output y = add(1, 2) * x",
        "     |                ^",
    ]


def test_llvm_refuses_a_computed_batch_1_value_broadcast_over_the_batch() -> None:
    src = "input x: f32[N, 4, 8, 8]\ninput s: f32[1, 4, 1, 1]\nt = sigmoid(s)\noutput y = x * t\n"
    err = compile_error(src, backend="llvm")
    assert err == [
        "net.conv:4:12: error: llvm backend cannot broadcast the computed batch-1 value %t "
        "f32[1,4,1,1] over batch N yet; only a network input can be broadcast over the batch",
        "   4 | output y = x * t",
        "     |            ^~~~~",
    ]
    convdsl.compile_string(src, backend="numpy")  # the interpreter computes it
