"""Limits (``convdsl.ir.limits``): a size past one is a diagnostic, a size at one runs.

Issue 14: ``dilation=2**32 + 1`` with ``padding=same`` crashed the llvm backend, and
dilations of 2**62 or 2**63 + 1 gave wrong numbers, because the checker accepted sizes whose
index arithmetic overflows. Now every dimension and integer attribute, every effective kernel,
every array a layer builds and the batch a network is called with are bounded; each bound is
pinned here as a golden diagnostic (the style of ``test_diagnostics.py``), and values at the
bounds run on both backends and agree with each other and, where it accepts them, PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from conftest import assert_close, random_weights, tt
from test_cli import cli_many
from test_diagnostics import Golden, compile_error, source_of

import convdsl
from convdsl import ConvdslError, Network
from convdsl.ir import limits

HINT = (
    "  hint: sizes are bounded so that no index arithmetic can overflow: "
    "see Limits in docs/language.md"
)

DEFECT = [
    Golden(
        "defect_dilation_2p32_plus_1",
        """
        input x: f32[N, 1, 5, 5]
        output y = conv2d(x, 1, kernel=3, dilation=2**32 + 1, padding=same)
        """,
        (
            "net.conv:2:44: error: conv2d: dilation 4294967297 is too large: at most 16777216 "
            "(2**24)",
            "   2 | output y = conv2d(x, 1, kernel=3, dilation=2**32 + 1, padding=same)",
            "     |                                            ^~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "defect_dilation_2p62",
        """
        input x: f32[N, 1, 5, 5]
        output y = conv2d(x, 1, kernel=3, dilation=2**62, padding=same)
        """,
        (
            "net.conv:2:44: error: conv2d: dilation 4611686018427387904 is too large: at most "
            "16777216 (2**24)",
            "   2 | output y = conv2d(x, 1, kernel=3, dilation=2**62, padding=same)",
            "     |                                            ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "defect_dilation_2p63_plus_1",
        """
        input x: f32[N, 1, 5, 5]
        output y = conv2d(x, 1, kernel=3, dilation=2**63 + 1, padding=same)
        """,
        (
            "net.conv:2:44: error: conv2d: dilation 9223372036854775809 is too large: at most "
            "16777216 (2**24)",
            "   2 | output y = conv2d(x, 1, kernel=3, dilation=2**63 + 1, padding=same)",
            "     |                                            ^~~~~~~~~",
            HINT,
        ),
    ),
]


ATTRIBUTES = [
    Golden(
        "kernel",
        """
        input x: f32[N, 1, 8]
        output y = conv1d(x, 1, kernel=2**31, padding=same)
        """,
        (
            "net.conv:2:32: error: conv1d: kernel 2147483648 is too large: at most 16777216 "
            "(2**24)",
            "   2 | output y = conv1d(x, 1, kernel=2**31, padding=same)",
            "     |                                ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "stride_per_axis",
        """
        input x: f32[N, 1, 8, 8]
        output y = conv2d(x, 1, kernel=1, stride=[1, 16777217])
        """,
        (
            "net.conv:2:42: error: conv2d: stride 16777217 is too large: at most 16777216 (2**24)",
            "   2 | output y = conv2d(x, 1, kernel=1, stride=[1, 16777217])",
            "     |                                          ^~~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "padding_pair",
        """
        input x: f32[N, 1, 8]
        output y = conv1d(x, 1, kernel=1, padding=[[2**62, 0]])
        """,
        (
            "net.conv:2:43: error: conv1d: padding 4611686018427387904 is too large: at most "
            "16777216 (2**24)",
            "   2 | output y = conv1d(x, 1, kernel=1, padding=[[2**62, 0]])",
            "     |                                           ^~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "groups",
        """
        input x: f32[N, 4, 8]
        output y = conv1d(x, 4, kernel=1, groups=2**32)
        """,
        (
            "net.conv:2:42: error: conv1d: groups 4294967296 is too large: at most 16777216 "
            "(2**24)",
            "   2 | output y = conv1d(x, 4, kernel=1, groups=2**32)",
            "     |                                          ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "out_channels",
        """
        input x: f32[N, 1, 8]
        output y = conv1d(x, 2**31, kernel=1)
        """,
        (
            "net.conv:2:22: error: conv1d: out_channels 2147483648 is too large: at most 16777216 "
            "(2**24)",
            "   2 | output y = conv1d(x, 2**31, kernel=1)",
            "     |                      ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "multiplier",
        """
        input x: f32[N, 2, 8]
        output y = depthwise1d(x, kernel=1, multiplier=2**23 + 1)
        """,
        (
            "net.conv:2:48: error: depthwise1d: the output [N,16777218,8] is too large: channels "
            "is 16777218, at most 16777216 (2**24)",
            "   2 | output y = depthwise1d(x, kernel=1, multiplier=2**23 + 1)",
            "     |                                                ^~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "output_padding",
        """
        input x: f32[N, 1, 8]
        output y = conv_transpose1d(x, 1, kernel=1, stride=2, output_padding=2**32)
        """,
        (
            "net.conv:2:70: error: conv_transpose1d: output_padding 4294967296 is too large: at "
            "most 16777216 (2**24)",
            "   2 | output y = conv_transpose1d(x, 1, kernel=1, stride=2, output_padding=2**32)",
            "     |                                                                      ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "effective_kernel",
        """
        input x: f32[N, 1, 5]
        output y = conv1d(x, 1, kernel=2, dilation=2**24, padding=same)
        """,
        (
            "net.conv:2:44: error: conv1d: dilation 16777216 with kernel 2 spans 16777217 "
            "positions (d*(k-1)+1): at most 16777216 (2**24)",
            "   2 | output y = conv1d(x, 1, kernel=2, dilation=2**24, padding=same)",
            "     |                                            ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "pool_dilation",
        """
        input x: f32[N, 1, 8]
        output y = max_pool1d(x, 3, dilation=2**63 + 1, padding=same)
        """,
        (
            "net.conv:2:38: error: max_pool1d: dilation 9223372036854775809 is too large: at most "
            "16777216 (2**24)",
            "   2 | output y = max_pool1d(x, 3, dilation=2**63 + 1, padding=same)",
            "     |                                      ^~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "pool_stride",
        """
        input x: f32[N, 1, 8]
        output y = avg_pool1d(x, 2, stride=2**40, ceil_mode=true)
        """,
        (
            "net.conv:2:36: error: avg_pool1d: stride 1099511627776 is too large: at most "
            "16777216 (2**24)",
            "   2 | output y = avg_pool1d(x, 2, stride=2**40, ceil_mode=true)",
            "     |                                    ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "upscale_factor",
        """
        input x: f32[N, 1, 8, 8]
        output y = upscale(x, [1, 2**32])
        """,
        (
            "net.conv:2:23: error: upscale: factor 4294967296 is too large: at most 16777216 "
            "(2**24)",
            "   2 | output y = upscale(x, [1, 2**32])",
            "     |                       ^~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "pixel_shuffle_factor",
        """
        input x: f32[N, 4, 2, 2]
        output y = pixel_shuffle(x, 2**32)
        """,
        (
            "net.conv:2:29: error: pixel_shuffle: factor 4294967296 is too large: at most "
            "16777216 (2**24)",
            "   2 | output y = pixel_shuffle(x, 2**32)",
            "     |                             ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "pad_amount",
        """
        input x: f32[N, 1, 8]
        output y = pad(x, [[0, 2**31]])
        """,
        (
            "net.conv:2:19: error: pad: pads 2147483648 is too large: at most 16777216 (2**24)",
            "   2 | output y = pad(x, [[0, 2**31]])",
            "     |                   ^~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "crop_offset",
        """
        input x: f32[N, 1, 8]
        output y = crop(x, size=2, offset=2**63 + 1)
        """,
        (
            "net.conv:2:35: error: crop: offset 9223372036854775809 is too large: at most "
            "16777216 (2**24)",
            "   2 | output y = crop(x, size=2, offset=2**63 + 1)",
            "     |                                   ^~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "input_dim",
        """
        input x: f32[N, 3, 4294967297, 8]
        output y = relu(x)
        """,
        (
            "net.conv:1:20: error: input 'x': dimension 4294967297 is too large: at most 16777216 "
            "(2**24)",
            "   1 | input x: f32[N, 3, 4294967297, 8]",
            "     |                    ^~~~~~~~~~",
            HINT,
        ),
    ),
]


DERIVED = [
    Golden(
        "transpose_output",
        """
        input x: f32[N, 1, 8]
        output y = conv_transpose1d(x, 1, kernel=2, stride=2**22)
        """,
        (
            "net.conv:2:52: error: conv_transpose1d: output size on axis L 29360130 is too large: "
            "at most 16777216 (2**24)",
            "   2 | output y = conv_transpose1d(x, 1, kernel=2, stride=2**22)",
            "     |                                                    ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "upscale_output",
        """
        input x: f32[N, 1, 8]
        output y = upscale(x, 2**22)
        """,
        (
            "net.conv:2:23: error: upscale: the output [N,1,33554432] is too large: L is "
            "33554432, at most 16777216 (2**24)",
            "   2 | output y = upscale(x, 2**22)",
            "     |                       ^~~~~",
            HINT,
        ),
    ),
    Golden(
        "pad_output",
        """
        input x: f32[N, 1, 8]
        output y = pad(x, [[2**24, 0]])
        """,
        (
            "net.conv:2:19: error: pad: the output [N,1,16777224] is too large: L is 16777224, at "
            "most 16777216 (2**24)",
            "   2 | output y = pad(x, [[2**24, 0]])",
            "     |                   ^~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "concat_channels",
        """
        input x: f32[N, 16777216, 1]
        output y = concat(x, x)
        """,
        (
            "net.conv:2:12: error: concat: the output [N,33554432,1] is too large: channels is "
            "33554432, at most 16777216 (2**24)",
            "   2 | output y = concat(x, x)",
            "     |            ^~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "input_elements",
        """
        input x: f32[N, 65536, 65536, 65536]
        output y = relu(x)
        """,
        (
            "net.conv:1:1: error: input 'x': the shape [N,65536,65536,65536] would hold "
            "281474976710656 elements per batch entry: at most 1099511627776 (2**40)",
            "   1 | input x: f32[N, 65536, 65536, 65536]",
            "     | ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "weight_elements",
        """
        input x: f32[N, 1048576, 4]
        output y = conv1d(x, 1048576, kernel=4)
        """,
        (
            "net.conv:2:12: error: conv1d: the weight [1048576,1048576,4] would hold "
            "4398046511104 elements: at most 1099511627776 (2**40)",
            "   2 | output y = conv1d(x, 1048576, kernel=4)",
            "     |            ^~~~~~~~~~~~~~~~~~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "padded_input_elements",
        """
        input x: f32[N, 1, 5, 5]
        output y = conv2d(x, 1, kernel=3, dilation=2**20, padding=same)
        """,
        (
            "net.conv:2:12: error: conv2d: the padded input would hold 4398201700697 elements per "
            "batch entry: at most 1099511627776 (2**40)",
            "   2 | output y = conv2d(x, 1, kernel=3, dilation=2**20, padding=same)",
            "     |            ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "unrolled_window_elements",
        """
        input x: f32[N, 1024, 16384, 16384]
        output y = conv2d(x, 1, kernel=3, padding=same)
        """,
        (
            "net.conv:2:12: error: conv2d: the unrolled windows would hold 2473901162496 elements "
            "per batch entry: at most 1099511627776 (2**40)",
            "   2 | output y = conv2d(x, 1, kernel=3, padding=same)",
            "     |            ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "static_batch_elements",
        """
        input x: f32[131072, 16, 1024, 1024]
        output y = relu(x)
        """,
        (
            "net.conv:1:1: error: input 'x': the shape [131072,16,1024,1024] would hold "
            "2199023255552 elements: at most 1099511627776 (2**40)",
            "   1 | input x: f32[131072, 16, 1024, 1024]",
            "     | ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
            HINT,
        ),
    ),
    Golden(
        "network_elements",
        """
        input x: f32[N, 1, 1048576, 1048576]
        for i in range(20) { x = relu(x) }
        output x
        """,
        (
            "net.conv:2:26: error: relu: the network's arrays up to this layer would hold "
            "18691697672192 elements per batch entry: at most 17592186044416 (2**44) in all",
            "   2 | for i in range(20) { x = relu(x) }",
            "     |                          ^~~~~~~",
            HINT,
        ),
    ),
]


INTEGERS = [
    Golden(
        "integer_literal",
        """
        input x: f32[N, 1, 8]
        output y = conv1d(x, 1, kernel=340282366920938463463374607431768211457)
        """,
        (
            "net.conv:2:32: error: integer too large: at most 2**128 in magnitude",
            "   2 | output y = conv1d(x, 1, kernel=340282366920938463463374607431768211457)",
            "     |                                ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
        ),
    ),
    Golden(
        "integer_arithmetic",
        """
        input x: f32[N, 1, 8]
        k = 2**64
        output y = conv1d(x, 1, kernel=k * k * 2)
        """,
        (
            "net.conv:3:32: error: integer too large: at most 2**128 in magnitude",
            "   3 | output y = conv1d(x, 1, kernel=k * k * 2)",
            "     |                                ^~~~~~~~~",
        ),
    ),
]


ALL_LIMITS = [*DEFECT, *ATTRIBUTES, *DERIVED, *INTEGERS]


@pytest.mark.parametrize("case", ALL_LIMITS, ids=[case.name for case in ALL_LIMITS])
def test_limit_golden(case: Golden) -> None:
    err = compile_error(case.source)
    assert str(err).split("\n") == list(case.expected)


def test_goldens_have_unique_names() -> None:
    names = [case.name for case in ALL_LIMITS]
    assert len(names) == len(set(names))


def test_the_defect_is_exit_status_2_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "huge.conv"
    path.write_text(source_of(DEFECT[0].source), encoding="utf-8")
    check, run = cli_many(tmp_path, ["check", str(path)], ["run", str(path), "--backend", "llvm"])
    for result in (check, run):
        assert result.returncode == 2, (result.args, result.stderr)
        lines = result.stderr.splitlines()
        assert lines[0] == f"{path}:2:44: " + DEFECT[0].expected[0].split(": ", 1)[1]
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr


# ---- the batch, bound when the network runs -------------------------------------------------


def broadcast(batch: int, shape: tuple[int, ...]) -> np.ndarray:
    """A batch of zeros that takes no memory: every entry is the same one."""
    return np.broadcast_to(np.zeros((1, *shape), np.float32), (batch, *shape))


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_the_batch_is_bounded_on_its_own_and_by_the_largest_array(backend: str) -> None:
    net = convdsl.compile_string(
        "input x: f32[N, 1, 1024, 1024]\noutput y = relu(x)\n", "net.conv", backend=backend
    )
    with pytest.raises(ConvdslError) as too_many:
        net(x=broadcast(2**24 + 1, (1, 1024, 1024)))
    with pytest.raises(ConvdslError) as too_large:
        net(x=broadcast(2**20 + 1, (1, 1024, 1024)))
    assert str(too_many.value).split("\n") == [
        "net.conv:1:7: error: input 'x': expected shape [N,1,1024,1024], found "
        "[16777217,1,1024,1024] (N is 16777217: 16777217 batch entries are too many: at most "
        "16777216 (2**24))",
        "   1 | input x: f32[N, 1, 1024, 1024]",
        "     |       ^",
    ]
    assert str(too_large.value).split("\n")[0] == (
        "net.conv:1:7: error: input 'x': expected shape [N,1,1024,1024], found "
        "[1048577,1,1024,1024] (N is 1048577: 1048577 batch entries of 1048576 elements make an "
        "array of 1099512676352 elements: at most 1099511627776 (2**40))"
    )


def test_the_largest_array_counts_a_window_op_s_padded_input() -> None:
    net = convdsl.compile_string(
        "input x: f32[N, 1, 5]\noutput y = conv1d(x, 1, kernel=2, dilation=2**20, padding=same)\n",
        backend="numpy",
    )
    # Padded to 5 + 2**20 positions, and the windows reach 64 outputs past the last one.
    assert limits.largest_entry(net.graph) == (5 + 64 - 1) + 2**20 + 1
    with pytest.raises(ConvdslError, match=r"N is 1048508: 1048508 batch entries of 1048645 "):
        net(x=broadcast(2**20 - 68, (1, 5)))


# ---- values at the limits run, and agree -----------------------------------------------------


def run_both(text: str, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Network]:
    """Outputs of the numpy backend (random weights), checked against the llvm backend's."""
    reference = convdsl.compile_string(text, "limit.conv", backend="numpy")
    reference.set_weights(random_weights(reference))
    compiled = convdsl.compile_string(text, "limit.conv", backend="llvm", weights=reference.weights)
    want, got = reference(inputs), compiled(inputs)
    for name, array in want.items():
        assert_close(got[name], array)
    return want, reference


def randn(*shape: int) -> np.ndarray:
    return np.random.default_rng(3).standard_normal(shape).astype(np.float32)


def test_the_longest_effective_kernel_with_same_padding() -> None:
    # d*(k-1)+1 is exactly 2**24: every tap but one of each output falls in the padding.
    x = randn(2, 3, 5)
    text = (
        "input x: f32[N, 3, 5]\n"
        "output y = conv1d(x, 4, kernel=2, dilation=2**24 - 1, padding=same)\n"
    )
    out, net = run_both(text, {"x": x})
    ((before, after),) = net.graph.nodes[0].attrs["pads"]
    assert (before, after) == (2**23 - 1, 2**23)
    w, b = net.weights["y.weight"], net.weights["y.bias"]
    padded = F.pad(tt(x), (before, after))
    assert_close(out["y"], F.conv1d(padded, tt(w), tt(b), dilation=2**24 - 1))


def test_the_largest_dilation_of_a_2d_same_conv_on_one_axis() -> None:
    # The defect's op and padding, at the largest dilation a 3-tap kernel may have.
    x = randn(1, 2, 1, 5)
    text = (
        "input x: f32[N, 2, 1, 5]\n"
        "output y = conv2d(x, 3, kernel=[1, 3], dilation=[1, 2**23 - 1], padding=same)\n"
    )
    out, net = run_both(text, {"x": x})
    pads = net.graph.nodes[0].attrs["pads"]
    assert pads == ((0, 0), (2**23 - 1, 2**23 - 1))
    w, b = net.weights["y.weight"], net.weights["y.bias"]
    padded = F.pad(tt(x), (2**23 - 1, 2**23 - 1))
    assert_close(out["y"], F.conv2d(padded, tt(w), tt(b), dilation=(1, 2**23 - 1)))


def test_the_largest_pool_dilation_with_same_padding() -> None:
    # PyTorch refuses padding over half the kernel, so the interpreter is the reference.
    text = (
        "input x: f32[N, 2, 5]\n"
        "output y = max_pool1d(x, 3, stride=1, dilation=2**23 - 1, padding=same)\n"
    )
    x = randn(2, 2, 5)
    out, _ = run_both(text, {"x": x})
    assert out["y"].shape == (2, 2, 5)
    np.testing.assert_array_equal(out["y"], x)  # every window's only real tap is its centre


def test_the_longest_transposed_window_with_same_padding() -> None:
    x = randn(1, 2, 5)
    text = (
        "input x: f32[N, 2, 5]\n"
        "output y = conv_transpose1d(x, 2, kernel=3, dilation=2**23 - 1, padding=same)\n"
    )
    out, net = run_both(text, {"x": x})
    ((before, _after),) = net.graph.nodes[0].attrs["pads"]
    w, b = net.weights["y.weight"], net.weights["y.bias"]
    full = F.conv_transpose1d(tt(x), tt(w), tt(b), dilation=2**23 - 1)
    assert_close(out["y"], full[:, :, before : before + 5])


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("upscale(x, 2**21)", lambda x: np.repeat(x, 2**21, axis=2)),
        ("pad(x, [[2**24 - 8, 0]])", lambda x: np.pad(x, ((0, 0), (0, 0), (2**24 - 8, 0)))),
    ],
    ids=["upscale", "pad"],
)
def test_outputs_of_the_largest_length(call: str, expected: object) -> None:
    x = randn(1, 1, 8)
    out, _ = run_both(f"input x: f32[N, 1, 8]\noutput y = {call}\n", {"x": x})
    assert out["y"].shape == (1, 1, 2**24)
    np.testing.assert_array_equal(out["y"], expected(x))  # type: ignore[operator]


def test_a_crop_at_the_largest_offset() -> None:
    x = randn(1, 1, 2**24)
    text = "input x: f32[N, 1, 16777216]\noutput y = crop(x, size=3, offset=2**24 - 3)\n"
    out, _ = run_both(text, {"x": x})
    np.testing.assert_array_equal(out["y"], x[:, :, -3:])


def test_the_largest_batch_runs() -> None:
    x = randn(2**24, 1, 1)
    out, _ = run_both("input x: f32[N, 1, 1]\noutput y = relu(x)\n", {"x": x})
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))


def test_integers_up_to_the_front_end_s_limit_still_compute() -> None:
    # 2**128 is a valid intermediate; only sizes past 2**24 are refused, where they are used.
    text = (
        "input x: f32[N, 1, 16]\n"
        "k = 2**64 * 2**64 // 2**64 // 2**61\n"
        "output y = conv1d(x, 1, kernel=k)\n"
    )
    net = convdsl.compile_string(text, backend="numpy")
    assert net.outputs["y"].shape == ("N", 1, 9)


def test_random_inputs_refuse_a_batch_before_allocating(capsys: pytest.CaptureFixture) -> None:
    """``--batch`` sizes the random inputs: too many entries is a user error, and so is a
    batch whose arrays cannot be allocated (exit 2, never a MemoryError reported as a bug)."""
    from convdsl import cli

    quickstart = str(Path(__file__).resolve().parents[1] / "examples" / "quickstart.conv")
    assert cli.main(["run", quickstart, "--backend", "numpy", "--batch", "100000000000"]) == 2
    assert "random inputs: 100000000000 batch entries are too many" in capsys.readouterr().err
    net = convdsl.compile_file(quickstart, backend="numpy")
    # 192 GiB of float64: more than any machine this runs on can allocate at once (with Linux's
    # default heuristic overcommit, a request past RAM + swap fails at once)
    with pytest.raises(ConvdslError, match=r"random inputs of batch 8388608 need 192\.0 GiB"):
        net.random_inputs(batch=2**23)
    with pytest.raises(ConvdslError, match="batch must be a positive integer, found 0"):
        net.random_inputs(batch=0)
