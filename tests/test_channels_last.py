"""Channels-last inputs and outputs (``input x: nhwc f32[N, H, W, 3]``, ``output y: nhwc = ...``).

The truth is PyTorch run on the permuted arrays (``torch.nn.functional`` on ``[N, C, ...]``,
the result permuted back), for the interpreter; the LLVM backend, which reads and writes the
caller's channels-last arrays in place, against the interpreter. The same network written
channels-first gives the same numbers on the same data.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convdsl
from convdsl.cli import main
from convdsl.ir.graph import RELAYOUT
from convdsl.ir.types import ChannelsLast
from convdsl.passes import boundary

LAYOUTS = {1: "nwc", 2: "nhwc", 3: "ndhwc"}
SIZES = {1: (11,), 2: (9, 13), 3: (5, 6, 7)}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def to_first(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, -1, 1))


def to_last(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, 1, -1))


def dims(sizes: tuple[int, ...]) -> str:
    return ", ".join(str(s) for s in sizes)


def conv_t(x: torch.Tensor, weights: dict, name: str, rank: int, **kw: object) -> torch.Tensor:
    """PyTorch's conv of layer ``name`` (its weights from the network) on ``[N, C, ...]``."""
    weight = torch.from_numpy(weights[f"{name}.weight"])
    bias = torch.from_numpy(weights[f"{name}.bias"])
    return CONV[rank](x, weight, bias, **kw)


def torch_conv(
    x_first: np.ndarray, weights: dict, name: str, rank: int, **kw: object
) -> np.ndarray:
    return conv_t(torch.from_numpy(x_first), weights, name, rank, **kw).numpy()


def both(src: str, **kw: object) -> tuple[convdsl.Network, convdsl.Network]:
    """The network on the interpreter and on llvm (bounds-checked), with the same weights."""
    ref = convdsl.compile_string(src, backend="numpy", verify=True, **kw)
    native = convdsl.compile_string(
        src, backend="llvm", weights=ref.weights, verify=True, bounds_check=True, **kw
    )
    return ref, native


def rng_array(shape: tuple[int, ...], dtype: type = np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def close(dtype: type) -> dict[str, float]:
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}


# ---- a conv reading the caller's channels-last array ---------------------------------------


@pytest.fixture(params=[False, True], ids=["copy", "fused"])
def fuse(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Convs of stride 1 read a dense copy of a channels-last input (the default), or the
    caller's array with strided loads (``boundary.FUSE_STRIDE_ONE``)."""
    monkeypatch.setattr(boundary, "FUSE_STRIDE_ONE", request.param)
    return bool(request.param)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 3, 17])
def test_first_conv_reads_channels_last(rank: int, channels: int, fuse: bool) -> None:
    sizes = SIZES[rank]
    src = f"""
    input x: {LAYOUTS[rank]} f32[N, {dims(sizes)}, {channels}]
    output y = conv{rank}d(x, 5, kernel=3, padding=same)
    """
    ref, native = both(src)
    x = rng_array((2, *sizes, channels))
    expected = torch_conv(to_first(x), ref.weights, "y", rank, padding=1)
    np.testing.assert_allclose(ref(x=x)["y"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(native(x=x)["y"], expected, rtol=1e-4, atol=1e-5)
    # fused into the conv, or one conversion kernel
    assert [node.op for node in native.graph.nodes].count(RELAYOUT) == (not fuse)
    (x_id,) = native.graph.inputs
    assert isinstance(native.graph.type_of(x_id).layout, ChannelsLast)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "call, torch_kw",
    [
        ("conv2d(x, 6, kernel=3, stride=2, padding=1)", {"stride": 2, "padding": 1}),
        ("conv2d(x, 6, kernel=3, dilation=2, padding=2)", {"dilation": 2, "padding": 2}),
        ("conv2d(x, 6, kernel=1)", {}),
        ("conv2d(x, 6, kernel=[5, 3], padding=[2, 1])", {"padding": (2, 1)}),
        ("conv2d(x, 6, kernel=3, groups=3)", {"groups": 3}),
        ("conv2d(x, 6, kernel=7, stride=2, padding=3)", {"stride": 2, "padding": 3}),
    ],
)
def test_conv_kinds_read_channels_last(call: str, torch_kw: dict, dtype: type, fuse: bool) -> None:
    kind = "f32" if dtype == np.float32 else "f64"
    src = f"input x: nhwc {kind}[N, 15, 23, 3]\noutput y = {call}"
    ref, native = both(src)
    x = rng_array((3, 15, 23, 3), dtype)
    expected = torch_conv(to_first(x), ref.weights, "y", 2, **torch_kw)
    np.testing.assert_allclose(ref(x=x)["y"], expected, **close(dtype))
    np.testing.assert_allclose(native(x=x)["y"], ref(x=x)["y"], **close(dtype))


def test_depthwise_and_many_channels_read_channels_last(fuse: bool) -> None:
    src = """
    input x: nhwc f32[N, 7, 33, 17]
    d = depthwise2d(x, kernel=3, padding=same)
    output y = conv2d(x, 40, kernel=3, padding=same, activation=relu) + conv2d(d, 40, kernel=1)
    """
    ref, native = both(src)
    x = rng_array((2, 7, 33, 17))
    np.testing.assert_allclose(native(x=x)["y"], ref(x=x)["y"], rtol=1e-4, atol=1e-4)
    w = ref.weights
    xf = torch.from_numpy(to_first(x))
    d = conv_t(xf, w, "d", 2, padding=1, groups=17)
    expected = F.relu(conv_t(xf, w, "y.lhs", 2, padding=1)) + conv_t(d, w, "y.rhs", 2)
    np.testing.assert_allclose(ref(x=x)["y"], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_same_data_channels_first_gives_the_same_numbers() -> None:
    body = "output y = conv2d(x, 8, kernel=3, stride=2, padding=same, activation=relu)"
    last = convdsl.compile_string(f"input x: nhwc f32[N, 31, 17, 3]\n{body}")
    first = convdsl.compile_string(f"input x: f32[N, 3, 31, 17]\n{body}", weights=last.weights)
    x = rng_array((2, 31, 17, 3))
    np.testing.assert_allclose(last(x=x)["y"], first(x=to_first(x))["y"], rtol=1e-5, atol=1e-6)


def test_input_read_by_two_different_layers() -> None:
    src = """
    input x: nhwc f32[N, 10, 9, 3]
    c = conv2d(x, 4, kernel=3, padding=same)
    p = max_pool2d(x, kernel=2)
    output a = c
    output b = p
    output s = relu(x)
    """
    ref, native = both(src)
    x = rng_array((2, 10, 9, 3))
    xf = torch.from_numpy(to_first(x))
    expected = {
        "a": torch_conv(to_first(x), ref.weights, "c", 2, padding=1),
        "b": F.max_pool2d(xf, 2).numpy(),
        "s": F.relu(xf).numpy(),
    }
    for backend in (ref, native):
        got = backend(x=x)
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=name)
    # the conv reads the caller's array; the pool and relu one dense copy
    assert [n.op for n in native.graph.nodes].count(RELAYOUT) == 1


# ---- outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 3, 17])
def test_output_channels_last(rank: int, channels: int) -> None:
    sizes = SIZES[rank]
    src = f"""
    input x: f32[N, 2, {dims(sizes)}]
    output y: {LAYOUTS[rank]} = conv{rank}d(x, {channels}, kernel=3, padding=same, activation=tanh)
    """
    ref, native = both(src)
    x = rng_array((2, 2, *sizes))
    expected = to_last(np.tanh(torch_conv(x, ref.weights, "y", rank, padding=1)))
    assert ref(x=x)["y"].shape == (2, *sizes, channels)
    np.testing.assert_allclose(ref(x=x)["y"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(native(x=x)["y"], expected, rtol=1e-4, atol=1e-5)
    # written by the conv's kernel itself, no conversion kernel
    assert RELAYOUT not in [node.op for node in native.graph.nodes]


def test_outputs_that_need_a_conversion_kernel() -> None:
    src = """
    input x: nhwc f64[N, 5, 11, 3]
    c = conv2d(x, 17, kernel=3, padding=same)
    output pooled: nhwc = avg_pool2d(c, kernel=2)
    output c: nhwc
    output d = relu(c)
    output back: nhwc = x
    output first = x
    """
    ref, native = both(src)
    x = rng_array((2, 5, 11, 3), np.float64)
    xf = torch.from_numpy(to_first(x))
    c = torch_conv(to_first(x), ref.weights, "c", 2, padding=1)
    expected = {
        "pooled": to_last(F.avg_pool2d(torch.from_numpy(c), 2).numpy()),
        "c": to_last(c),
        "d": np.maximum(c, 0),
        "back": x,
        "first": xf.numpy(),
    }
    for backend in (ref, native):
        got = backend(x=x)
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-10, atol=1e-12, err_msg=name)


# ---- symbolic sizes -----------------------------------------------------------------------


SYMBOLIC = """
input image: nhwc f32[N, H, W, 3]
f = conv2d(image, 8, kernel=3, stride=2, padding=1, activation=relu)
output y: nhwc = conv2d(f, 5, kernel=3, padding=same)
"""


def test_symbolic_sizes_channels_last() -> None:
    ref, native = both(SYMBOLIC)
    fixed_src = SYMBOLIC.replace("nhwc f32[N, H, W, 3]", "f32[N, 3, 13, 8]")
    fixed = convdsl.compile_string(fixed_src, weights=ref.weights)
    for seed, (h, w) in enumerate([(13, 8), (1, 1), (7, 30), (16, 5)]):
        x = rng_array((2, h, w, 3), seed=seed)
        xf = torch.from_numpy(to_first(x))
        f = F.relu(conv_t(xf, ref.weights, "f", 2, stride=2, padding=1))
        expected = to_last(conv_t(f, ref.weights, "y", 2, padding=1).numpy())
        np.testing.assert_allclose(ref(image=x)["y"], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(native(image=x)["y"], expected, rtol=1e-4, atol=1e-5)
        if (h, w) == (13, 8):
            np.testing.assert_allclose(
                fixed(image=to_first(x))["y"], expected, rtol=1e-4, atol=1e-5
            )


def test_check_prints_channels_last_signature(tmp_path: Path) -> None:
    path = tmp_path / "cl.conv"
    path.write_text(SYMBOLIC)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["check", str(path)]) == 0
    text = buffer.getvalue()
    assert "inputs:  image: nhwc f32[N,H,W,3]" in text
    assert "outputs: y: nhwc f32[N,ceil(H/2),ceil(W/2),5]" in text


def test_strided_first_conv_makes_its_phase_rows_from_the_callers_array() -> None:
    net = convdsl.compile_string(SYMBOLIC, sizes={"H": 32, "W": 32})
    (x_id,) = net.graph.inputs
    (conversion,) = [node for node in net.graph.nodes if node.op == RELAYOUT]
    assert conversion.inputs == (x_id,)  # no dense copy first: one pass over the input
    assert isinstance(net.graph.type_of(x_id).layout, ChannelsLast)


def test_interpreter_without_layouts_transposes_at_the_boundary() -> None:
    """At -O0 no pass stores anything channels-last: the API transposes the arrays."""
    src = "input x: nwc f64[N, 7, 3]\noutput y: nwc = conv1d(x, 17, kernel=3)\noutput z = relu(x)"
    net = convdsl.compile_string(src, backend="numpy", opt_level=0)
    x = rng_array((2, 7, 3), np.float64)
    got = net(x=x)
    expected = to_last(torch_conv(to_first(x), net.weights, "y", 1))
    np.testing.assert_allclose(got["y"], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["z"], np.maximum(to_first(x), 0))


# ---- diagnostics ----------------------------------------------------------------------------


def run_error(src: str, array: np.ndarray, backend: str = "llvm") -> convdsl.ConvdslError:
    net = convdsl.compile_string(src, "net.conv", backend=backend)
    with pytest.raises(convdsl.ConvdslError) as info:
        net(x=array)
    return info.value


@pytest.mark.parametrize("backend", ["llvm", "numpy"])
def test_channels_first_array_for_a_channels_last_input(backend: str) -> None:
    src = "network n\ninput x: nhwc f32[N, 224, 224, 3]\noutput y = conv2d(x, 4, kernel=3)"
    err = run_error(src, np.zeros((1, 3, 224, 224), np.float32), backend)
    assert str(err).splitlines() == [
        "net.conv:2:7: error: input 'x': expected shape [N,224,224,3] (channels last: NHWC), "
        "found [1,3,224,224] (H is 3, expected 224)",
        "   2 | input x: nhwc f32[N, 224, 224, 3]",
        "     |       ^",
        "  hint: input 'x' is declared nhwc: pass its array as [batch, H, W, channels]; a "
        "channels-first array `a` is np.moveaxis(a, 1, -1)",
    ]


def test_channels_last_array_for_a_channels_first_input() -> None:
    src = "input x: f32[N, 3, 16, 16]\noutput y = conv2d(x, 4, kernel=3)"
    err = run_error(src, np.zeros((2, 16, 16, 3), np.float32))
    assert str(err).splitlines() == [
        "net.conv:1:7: error: input 'x': expected shape [N,3,16,16] (channels first: NCHW), "
        "found [2,16,16,3] (channels is 16, expected 3)",
        "   1 | input x: f32[N, 3, 16, 16]",
        "     |       ^",
        "  hint: the array looks channels-last: pass np.moveaxis(a, -1, 1), or declare the "
        "input channels-last: input x: nhwc f32[...]",
    ]


def test_other_shape_errors_do_not_mention_layouts() -> None:
    src = "input x: f32[N, 3, 16, 16]\noutput y = conv2d(x, 4, kernel=3)"
    err = run_error(src, np.zeros((2, 3, 16, 15), np.float32))
    assert "channels" not in str(err).splitlines()[0].split("found")[0]
    assert "hint" not in str(err)


def test_symbolic_channels_last_binds_sizes_in_array_order() -> None:
    src = "input x: nwc f32[N, L, 2]\noutput y = conv1d(x, 3, kernel=2)"
    net = convdsl.compile_string(src)
    assert net(x=np.zeros((1, 6, 2), np.float32))["y"].shape == (1, 3, 5)
    err = run_error(src, np.zeros((1, 2, 6), np.float32))
    assert "found [1,2,6] (channels is 6, expected 2)" in str(err)
    assert "(channels last: NWC)" in str(err)


def compile_error(src: str) -> list[str]:
    with pytest.raises(convdsl.ConvdslError) as info:
        convdsl.compile_string(src, "net.conv")
    return str(info.value).splitlines()


@pytest.mark.parametrize(
    "src, expected",
    [
        (
            "input x: nhwx f32[N, 8, 8, 3]\noutput y = relu(x)",
            [
                "net.conv:1:10: error: input 'x': unknown layout 'nhwx'; expected one of nwc, "
                "nhwc, ndhwc, channels_last, ncw, nchw, ncdhw, channels_first",
                "   1 | input x: nhwx f32[N, 8, 8, 3]",
                "     |          ^~~~",
                "  hint: a dtype comes after the layout: input x: nhwc f32[N, 224, 224, 3]",
            ],
        ),
        (
            "input x: nwc f32[N, 8, 8, 3]\noutput y = relu(x)",
            [
                "net.conv:1:10: error: input 'x': layout 'nwc' is for 1-D data, but it has 2 "
                "spatial dims",
                "   1 | input x: nwc f32[N, 8, 8, 3]",
                "     |          ^~~",
                "  hint: for 2-D data write nhwc",
            ],
        ),
        (
            "input x: nhwc f32[N, H, W, C]\noutput y = relu(x)",
            [
                "net.conv:1:28: error: input 'x': the channel count (dim 4, channels last) must "
                "be a fixed size, found 'C'",
                "   1 | input x: nhwc f32[N, H, W, C]",
                "     |                            ^",
                "  hint: the weights of the first layer depend on it; write it as an integer",
            ],
        ),
        (
            "input x: f32[N, 3, 8]\noutput y: nhwc = relu(x)",
            [
                "net.conv:2:11: error: output 'y': layout 'nhwc' is for 2-D data, but the output "
                "f32[N,3,8] has 1 spatial dims",
                "   2 | output y: nhwc = relu(x)",
                "     |           ^~~~",
                "  hint: for 1-D data write nwc",
            ],
        ),
        (
            "input x: f32[N, 3, 8]\noutput y: nxc = relu(x)",
            [
                "net.conv:2:11: error: output 'y': unknown layout 'nxc'; expected one of nwc, "
                "nhwc, ndhwc, channels_last, ncw, nchw, ncdhw, channels_first",
                "   2 | output y: nxc = relu(x)",
                "     |           ^~~",
                "  hint: a dtype comes after the layout: input x: nhwc f32[N, 224, 224, 3]",
            ],
        ),
    ],
)
def test_layout_declaration_errors(src: str, expected: list[str]) -> None:
    assert compile_error(src) == expected


def test_layout_words_any_case_and_channels_first_words() -> None:
    src = """
    input a: NHWC f32[1, 4, 5, 3]
    input b: channels_last f32[1, 4, 5, 3]
    input c: nchw f32[1, 3, 4, 5]
    output y: channels_last = a + b + c
    output z: NCHW = a
    """
    ref, native = both(src)
    a, b, c = (
        rng_array((1, 4, 5, 3), seed=1),
        rng_array((1, 4, 5, 3), seed=2),
        rng_array((1, 3, 4, 5)),
    )
    for net in (ref, native):
        got = net(a=a, b=b, c=c)
        np.testing.assert_allclose(got["y"], a + b + to_last(c), rtol=1e-6)
        np.testing.assert_allclose(got["z"], to_first(a), rtol=1e-6)


def test_an_output_named_like_a_layout_still_parses() -> None:
    src = "input nhwc: f32[1, 3, 4]\noutput y = relu(nhwc)\noutput nhwc"
    net = convdsl.compile_string(src, backend="numpy")
    assert set(net(nhwc=np.ones((1, 3, 4), np.float32))) == {"y", "nhwc"}
