"""conv_transpose1d/2d/3d in .conv against torch: stride, padding, output_padding, dilation,
groups, Keras ``same``, and the output_padding errors torch raises too."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_close,
    assert_rejected,
    call,
    compile_and_run,
    input_decl,
    per_axis,
    randn,
    tt,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st

import convdsl

TORCH_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def crop_full(full: torch.Tensor, pads, output_padding) -> torch.Tensor:
    """PyTorch's ConvTranspose output from the uncropped result: drop ``before``/``after`` per
    axis, extend the end by ``output_padding`` with zeros (bias is added by the caller)."""
    for axis, ((before, after), op) in enumerate(zip(pads, output_padding, strict=True)):
        dim = axis + 2
        size = full.shape[dim] - before - after + op
        short = before + size - full.shape[dim]
        if short > 0:
            grow = [0, 0] * (full.ndim - 2)
            grow[2 * (full.ndim - 1 - dim) + 1] = short
            full = F.pad(full, grow)
        full = full.narrow(dim, before, size)
    return full


def reference(x, w, b, stride, dilation, pads, output_padding, groups) -> torch.Tensor:
    rank = x.ndim - 2
    symmetric = all(before == after for before, after in pads)
    if symmetric:
        return TORCH_CONV_T[rank](
            tt(x),
            tt(w),
            None if b is None else tt(b),
            stride,
            tuple(p for p, _ in pads),
            output_padding,
            groups,
            dilation,
        )
    full = TORCH_CONV_T[rank](tt(x), tt(w), None, stride, 0, 0, groups, dilation)
    y = crop_full(full, pads, output_padding)
    return y if b is None else y + tt(b).reshape((-1,) + (1,) * rank)


TRANSPOSE_CASES = [
    # (N, C, O, groups, spatial, kernel, stride, dilation, padding, output_padding)
    (1, 3, 5, 1, (5,), 3, 2, 1, 1, 1),
    (3, 4, 2, 2, (4,), 2, 3, 2, 0, 2),  # stride > kernel, output_padding 2 < stride 3
    (1, 1, 1, 1, (1,), 1, 1, 1, 0, 0),
    (1, 5, 3, 1, (6,), 3, 1, 3, 0, 2),  # output_padding < dilation, stride 1
    (1, 3, 5, 1, (4, 5), 4, 2, 1, 1, 0),
    (3, 6, 9, 3, (3, 4), (3, 2), (2, 3), (2, 1), [1, 0], [1, 2]),
    (1, 17, 3, 1, (1, 3), (1, 3), (1, 2), 1, 0, 0),  # 1-wide axis
    (1, 4, 4, 4, (5, 3), 3, 2, 2, [[2, 0], [0, 1]], 0),  # asymmetric crop pairs
    (1, 2, 4, 2, (2, 3, 2), (2, 3, 2), (2, 1, 3), 1, [0, 1, 0], [1, 0, 2]),
    (1, 5, 1, 1, (1, 1, 1), 3, 2, 1, 0, 0),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "case", TRANSPOSE_CASES, ids=lambda c: f"{len(c[4])}d-c{c[1]}o{c[2]}g{c[3]}-{c[4]}"
)
def test_conv_transpose_matches_torch(case, bias: bool) -> None:
    n, c, o, groups, spatial, kernel, stride, dilation, padding, output_padding = case
    rank, rng = len(spatial), np.random.default_rng(0)
    kw: dict[str, Any] = {
        "kernel": kernel,
        "stride": stride,
        "dilation": dilation,
        "padding": padding,
        "output_padding": output_padding,
        "groups": groups,
        "bias": bias,
    }
    shape = (n, c, *spatial)
    src = f"{input_decl('x', shape)}\noutput y = {call(f'conv_transpose{rank}d', 'x', o, **kw)}\n"
    x = randn(rng, shape)
    out, net = compile_and_run(src, {"x": x})
    assert net.params["y.weight"].shape == (c, o // groups, *per_axis(kernel, rank))
    if isinstance(padding, int) or all(isinstance(p, int) for p in padding):
        pads = tuple((p, p) for p in per_axis(padding, rank))
    else:
        pads = tuple(tuple(p) for p in padding)
    ref = reference(
        x,
        net.weights["y.weight"],
        net.weights.get("y.bias"),
        per_axis(stride, rank),
        per_axis(dilation, rank),
        pads,
        per_axis(output_padding, rank),
        groups,
    )
    assert_close(out["y"], ref)


def test_crop_reference_agrees_with_torch_padding() -> None:
    """The asymmetric reference above, on a symmetric case, is torch's own padding."""
    rng = np.random.default_rng(5)
    x, w = randn(rng, (2, 3, 5, 4)), randn(rng, (3, 2, 3, 3))
    native = F.conv_transpose2d(tt(x), tt(w), None, 2, (1, 2), (1, 0), 1, (1, 2))
    full = F.conv_transpose2d(tt(x), tt(w), None, 2, 0, 0, 1, (1, 2))
    torch.testing.assert_close(crop_full(full, ((1, 1), (2, 2)), (1, 0)), native)


def keras_same(x, w, b, kernel, stride, dilation, groups) -> torch.Tensor:
    """Keras ``padding="same"``: the full result cropped by total = max(d*(k-1)+1-s, 0), before
    = total // 2, to input * stride; positions past the full result hold only the bias."""
    rank = x.ndim - 2
    y = TORCH_CONV_T[rank](tt(x), tt(w), None, stride, 0, 0, groups, dilation)
    for axis, (n, k, s, d) in enumerate(zip(x.shape[2:], kernel, stride, dilation, strict=True)):
        total = max(d * (k - 1) + 1 - s, 0)
        before, size = total // 2, n * s
        short = before + size - y.shape[axis + 2]
        if short > 0:
            grow = [0, 0] * rank
            grow[2 * (rank - 1 - axis) + 1] = short
            y = F.pad(y, grow)
        y = y.narrow(axis + 2, before, size)
    return y if b is None else y + tt(b).reshape((-1,) + (1,) * rank)


SAME_CASES = [
    # (spatial, kernel, stride, dilation): even/odd kernels, kernel < stride, dilation
    ((5,), 3, 2, 1),
    ((4,), 4, 2, 1),
    ((3,), 1, 3, 1),  # kernel < stride: the tail is bias only
    ((6,), 2, 3, 1),
    ((5,), 3, 1, 2),
    ((4, 5), (3, 4), (2, 3), 1),
    ((1, 3), (2, 5), 2, (1, 2)),
    ((2, 3, 2), (3, 2, 1), (2, 2, 3), 1),
]


@pytest.mark.parametrize("case", SAME_CASES, ids=str)
def test_conv_transpose_same_is_keras(case) -> None:
    spatial, kernel, stride, dilation = case
    rank, rng = len(spatial), np.random.default_rng(6)
    k, s, d = per_axis(kernel, rank), per_axis(stride, rank), per_axis(dilation, rank)
    shape = (3, 4, *spatial)
    conv_call = call(
        f"conv_transpose{rank}d",
        "x",
        5,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding="same",
        activation="tanh",
    )
    src = f"{input_decl('x', shape)}\noutput y = {conv_call}\n"
    x = randn(rng, shape)
    out, net = compile_and_run(src, {"x": x})
    expected_size = tuple(n * si for n, si in zip(spatial, s, strict=True))
    assert out["y"].shape == (3, 5, *expected_size)
    assert net.outputs["y"].shape == ("N", 5, *expected_size)
    ref = torch.tanh(keras_same(x, net.weights["y.weight"], net.weights["y.bias"], k, s, d, 1))
    assert_close(out["y"], ref)


@pytest.mark.parametrize(
    ("stride", "dilation", "output_padding"), [(2, 1, 2), (1, 1, 1), (2, 3, 3), (3, 1, 4)]
)
def test_output_padding_must_be_below_max_stride_dilation(
    stride: int, dilation: int, output_padding: int
) -> None:
    src = (
        "input x: f32[1, 2, 5, 5]\n"
        f"output y = conv_transpose2d(x, 3, kernel=3, stride={stride}, dilation={dilation}, "
        f"output_padding={output_padding})\n"
    )
    assert_rejected(src, 2, "output_padding")
    with pytest.raises(RuntimeError, match="output padding"):
        F.conv_transpose2d(
            torch.zeros(1, 2, 5, 5),
            torch.zeros(2, 3, 3, 3),
            stride=stride,
            dilation=dilation,
            output_padding=output_padding,
        )


def test_output_padding_with_same_must_be_below_the_stride() -> None:
    """Keras: "Strides must be greater than output padding" (tests/test_ops_padding_modes.py
    has the combination itself)."""
    src = (
        "input x: f32[1, 2, 5, 5]\n"
        "output y = conv_transpose2d(x, 3, kernel=3, stride=2, padding=same, "
        "output_padding=2)\n"
    )
    assert_rejected(src, 2, "output_padding")


def test_padding_that_crops_everything_is_rejected() -> None:
    src = "input x: f32[1, 2, 1]\noutput y = conv_transpose1d(x, 3, kernel=2, padding=1)\n"
    assert_rejected(src, 2, "padding")
    with pytest.raises(RuntimeError):
        F.conv_transpose1d(torch.zeros(1, 2, 1), torch.zeros(2, 3, 2), padding=1)


# ---- property: random conv_transpose2d configurations ------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 2),
    groups=st.integers(1, 3),
    per_group=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    spatial=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.one_of(
        st.sampled_from(["valid", "same"]),
        st.integers(0, 3),
        st.lists(st.integers(0, 3), min_size=2, max_size=2),
        st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), min_size=2, max_size=2),
    ),
    output_padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    bias=st.booleans(),
)
def test_random_conv_transpose2d_matches_torch(
    n, groups, per_group, spatial, kernel, stride, dilation, padding, output_padding, bias
) -> None:
    """convdsl rejects a configuration exactly when torch does (or the output would be empty);
    otherwise they agree."""
    c, o = groups * per_group[0], groups * per_group[1]
    shape = (n, c, *spatial)
    if padding == "same":
        output_padding = (0, 0)  # left out below: same alone is n * s (test_ops_padding_modes
        # has same with output_padding, Keras' other rule)
    kw = {
        "kernel": list(kernel),
        "stride": list(stride),
        "dilation": list(dilation),
        "padding": padding,
        "output_padding": list(output_padding),
        "groups": groups,
        "bias": bias,
    }
    if padding == "same":
        del kw["output_padding"]
    src = f"{input_decl('x', shape)}\noutput y = {call('conv_transpose2d', 'x', o, **kw)}\n"
    rng = np.random.default_rng(0)
    x = randn(rng, shape)

    def reference(w: np.ndarray, b: np.ndarray | None) -> torch.Tensor:
        if padding == "same":
            return keras_same(x, w, b, kernel, stride, dilation, groups)
        if (
            padding == "valid"
            or isinstance(padding, int)
            or all(isinstance(p, int) for p in padding)
        ):
            sym = per_axis(0 if padding == "valid" else padding, 2)
            return TORCH_CONV_T[2](
                tt(x),
                tt(w),
                None if b is None else tt(b),
                stride,
                sym,
                output_padding,
                groups,
                dilation,
            )
        # [before, after] pairs: torch validates output_padding, the crop is done here.
        full = TORCH_CONV_T[2](tt(x), tt(w), None, stride, 0, output_padding, groups, dilation)
        pads = tuple(tuple(p) for p in padding)
        if any(full.shape[i + 2] - b_ - a_ < 1 for i, (b_, a_) in enumerate(pads)):
            raise RuntimeError("output size < 1")
        y = crop_full(full, pads, (0, 0))
        return y if b is None else y + tt(b).reshape(-1, 1, 1)

    try:
        out, net = compile_and_run(src, {"x": x})
    except convdsl.ConvdslError:
        event("rejected")
        with pytest.raises(RuntimeError):
            reference(randn(rng, (c, o // groups, *kernel)), None)
        return
    if padding == "same":
        assert out["y"].shape[2:] == tuple(a * b for a, b in zip(spatial, stride, strict=True))
    assert_close(out["y"], reference(net.weights["y.weight"], net.weights.get("y.bias")))
