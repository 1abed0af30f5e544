"""max_pool/avg_pool 1d/2d/3d and the global pools in .conv against torch.

Torch pools only take symmetric padding of at most half the window, while convdsl accepts any
padding smaller than the window and ``same``. Those cases are checked against a reference
built from torch ops on an explicitly padded input (``manual_max_pool``, ``manual_avg_pool``),
which is itself checked against torch's own pooling wherever torch accepts the padding.
"""

from __future__ import annotations

import math
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
    reference_pads,
    torch_pads,
    tt,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st

import convdsl

MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def pool_size(n: int, k: int, s: int, d: int, before: int, after: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output length, generalized to asymmetric padding."""
    span = n + before + after - (d * (k - 1) + 1)
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= n + before:  # the last window may not start inside the end padding
        out -= 1
    return out


def _pad_for_windows(
    x: torch.Tensor, kernel, stride, dilation, pads, ceil_mode, value: float, overhang_value: float
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad ``x`` with ``value`` by ``pads``, then by ``overhang_value`` wherever a ceil-mode
    window runs past the padded end; return it and the output sizes."""
    sizes, extras = [], []
    for n, k, s, d, (b, a) in zip(x.shape[2:], kernel, stride, dilation, pads, strict=True):
        out = pool_size(n, k, s, d, b, a, ceil_mode)
        sizes.append(out)
        extras.append(max(0, (out - 1) * s + d * (k - 1) + 1 - (n + b + a)))
    xp = F.pad(x, torch_pads(pads), value=value)
    grow = tuple((0, e) for e in extras)
    return F.pad(xp, torch_pads(grow), value=overhang_value), tuple(sizes)


def _narrow(y: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    for axis, size in enumerate(sizes):
        y = y.narrow(axis + 2, 0, size)
    return y


def manual_max_pool(x: torch.Tensor, kernel, stride, dilation, pads, ceil_mode) -> torch.Tensor:
    xp, sizes = _pad_for_windows(x, kernel, stride, dilation, pads, ceil_mode, -math.inf, -math.inf)
    return _narrow(MAX_POOL[x.ndim - 2](xp, kernel, stride, 0, dilation), sizes)


def manual_avg_pool(x: torch.Tensor, kernel, stride, pads, ceil_mode, include_pad) -> torch.Tensor:
    rank, ones = x.ndim - 2, (1,) * (x.ndim - 2)
    xp, sizes = _pad_for_windows(x, kernel, stride, ones, pads, ceil_mode, 0.0, 0.0)
    mask = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype)
    maskp, _ = _pad_for_windows(
        mask, kernel, stride, ones, pads, ceil_mode, 1.0 if include_pad else 0.0, 0.0
    )
    sums = AVG_POOL[rank](xp, kernel, stride, 0)
    counts = AVG_POOL[rank](maskp, kernel, stride, 0)
    return _narrow(sums / counts, sizes)


def native_accepts(kind: str, kernel, dilation, pads) -> bool:
    """Whether torch's own pooling takes these pads: symmetric, at most half the kernel (not
    the dilated window, even for max pooling)."""
    return all(b == a and b <= k // 2 for (b, a), k in zip(pads, kernel, strict=True))


def pool_reference(
    kind: str, x: np.ndarray, kernel, stride, dilation, pads, ceil_mode, include_pad
) -> torch.Tensor:
    rank = x.ndim - 2
    xt = tt(x)
    if kind == "max":
        manual = manual_max_pool(xt, kernel, stride, dilation, pads, ceil_mode)
    else:
        manual = manual_avg_pool(xt, kernel, stride, pads, ceil_mode, include_pad)
    if native_accepts(kind, kernel, dilation, pads):
        sym = tuple(b for b, _ in pads)
        if kind == "max":
            native = MAX_POOL[rank](xt, kernel, stride, sym, dilation, ceil_mode)
        else:
            native = AVG_POOL[rank](xt, kernel, stride, sym, ceil_mode, include_pad)
        torch.testing.assert_close(manual, native)  # the manual reference is torch's
    return manual


POOL_CASES = [
    # (shape, kernel, stride or None (default = kernel), padding, ceil_mode, dilation)
    ((3, 5, 9), 3, None, 1, False, 1),
    ((1, 1, 8), 2, 3, "valid", True, 1),  # stride > kernel
    ((3, 2, 5), 2, 2, 1, True, 1),  # ceil mode: no window may start in the end padding
    ((1, 2, 2), 3, None, "valid", True, 1),  # ceil mode: a window longer than the input
    ((1, 3, 7), 3, 2, 2, True, 1),  # padding 2 > half the window: torch refuses it
    ((1, 3, 10), 2, 2, "same", False, 2),
    ((3, 3, 9, 8), 3, 2, 1, True, 2),  # dilation with stride
    ((1, 17, 5, 7), (2, 3), None, "valid", True, 1),
    ((1, 2, 7, 6), 3, 2, "same", False, 1),  # asymmetric same
    ((1, 5, 6, 7), 3, 1, [[0, 1], [2, 0]], False, 1),
    ((1, 3, 1, 5), (1, 3), (1, 2), [0, 1], True, 1),  # 1-wide axis
    ((1, 2, 3, 4, 5), 2, None, "valid", True, 1),
    ((3, 1, 4, 5, 6), (3, 1, 2), (1, 2, 2), [1, 0, 1], False, (1, 1, 2)),
    ((1, 3, 5, 5, 5), 3, 2, "same", True, 1),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_max_pool_matches_torch(case) -> None:
    shape, kernel, stride, padding, ceil_mode, dilation = case
    check_pool("max", shape, kernel, stride, padding, ceil_mode, dilation, include_pad=False)


@pytest.mark.parametrize("include_pad", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}")
def test_avg_pool_matches_torch(case, include_pad: bool) -> None:
    shape, kernel, stride, padding, ceil_mode, _ = case
    check_pool("avg", shape, kernel, stride, padding, ceil_mode, 1, include_pad)


def check_pool(
    kind: str, shape, kernel, stride, padding, ceil_mode, dilation, include_pad: bool
) -> None:
    rank, rng = len(shape) - 2, np.random.default_rng(7)
    kw: dict[str, Any] = {"kernel": kernel}
    if stride is not None:
        kw["stride"] = stride
    if padding != "valid":
        kw["padding"] = padding
    if ceil_mode:
        kw["ceil_mode"] = True
    if kind == "max" and dilation != 1:
        kw["dilation"] = dilation
    if kind == "avg" and include_pad:
        kw["include_pad"] = True
    src = f"{input_decl('x', shape)}\noutput y = {call(f'{kind}_pool{rank}d', 'x', **kw)}\n"
    x = randn(rng, shape)
    out, _ = compile_and_run(src, {"x": x})
    k = per_axis(kernel, rank)
    s = k if stride is None else per_axis(stride, rank)
    d = per_axis(dilation, rank)
    pads = reference_pads(padding, shape[2:], k, s, d)
    assert_close(out["y"], pool_reference(kind, x, k, s, d, pads, ceil_mode, include_pad))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_stride_defaults_to_kernel(kind: str) -> None:
    src = f"input x: f32[N, 2, 9, 8, 7]\noutput y = {kind}_pool3d(x, kernel=[3, 2, 3])\n"
    net = convdsl.compile_string(src, verify=True, backend="numpy")
    assert net.outputs["y"].shape == ("N", 2, 3, 4, 2)
    x = randn(np.random.default_rng(8), (1, 2, 9, 8, 7))
    ref = (F.max_pool3d if kind == "max" else F.avg_pool3d)(tt(x), (3, 2, 3))
    assert_close(net(x=x)["y"], ref)


@pytest.mark.parametrize("padding", [3, "[[0, 3]]"])
def test_pool_padding_as_large_as_window_is_rejected(padding) -> None:
    src = f"input x: f32[1, 2, 9]\noutput y = max_pool1d(x, kernel=3, padding={padding})\n"
    assert_rejected(src, 2, "padding")


@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 3, 4, 1), (1, 17, 2, 3, 4)])
def test_global_pools(shape) -> None:
    rng = np.random.default_rng(9)
    x = randn(rng, shape)
    src = (
        f"{input_decl('x', shape)}\noutput a = global_avg_pool(x)\noutput m = global_max_pool(x)\n"
    )
    out, net = compile_and_run(src, {"x": x})
    spatial = tuple(range(2, len(shape)))
    assert net.outputs["a"].shape == ("N", shape[1], *(1,) * len(spatial))
    assert_close(out["a"], tt(x).mean(dim=spatial, keepdim=True))
    assert_close(out["m"], tt(x).amax(dim=spatial, keepdim=True))


# ---- property: random pool2d configurations ----------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    kind=st.sampled_from(["max", "avg"]),
    n=st.integers(1, 2),
    c=st.sampled_from([1, 3]),
    spatial=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.none() | st.tuples(st.integers(1, 4), st.integers(1, 4)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.one_of(
        st.sampled_from(["valid", "same"]),
        st.integers(0, 3),
        st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), min_size=2, max_size=2),
    ),
    ceil_mode=st.booleans(),
    include_pad=st.booleans(),
)
def test_random_pool2d_matches_torch(
    kind, n, c, spatial, kernel, stride, dilation, padding, ceil_mode, include_pad
) -> None:
    """convdsl rejects a pool only if torch rejects it too (or a window would see only
    padding); what it accepts agrees with torch or, past torch's padding limit, with the
    manual reference."""
    if kind == "avg":
        dilation = (1, 1)
    shape = (n, c, *spatial)
    kw: dict[str, Any] = {"kernel": list(kernel), "padding": padding, "ceil_mode": ceil_mode}
    if stride is not None:
        kw["stride"] = list(stride)
    kw |= {"dilation": list(dilation)} if kind == "max" else {"include_pad": include_pad}
    src = f"{input_decl('x', shape)}\noutput y = {call(f'{kind}_pool2d', 'x', **kw)}\n"
    x = randn(np.random.default_rng(0), shape)
    s = kernel if stride is None else stride
    pads = reference_pads(padding, spatial, kernel, s, dilation)
    try:
        out, _ = compile_and_run(src, {"x": x})
    except convdsl.ConvdslError:
        event("rejected")
        if native_accepts(kind, kernel, dilation, pads):
            sym = tuple(b for b, _ in pads)
            with pytest.raises(RuntimeError):
                if kind == "max":
                    F.max_pool2d(tt(x), kernel, s, sym, dilation, ceil_mode)
                else:
                    F.avg_pool2d(tt(x), kernel, s, sym, ceil_mode, include_pad)
        else:  # torch refuses the padding; convdsl's own limit is a window of only padding
            windows = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
            assert any(
                max(p) >= w or pool_size(m, k, step, d, *p, ceil_mode) < 1 or m + sum(p) < w
                for m, k, step, d, p, w in zip(
                    spatial, kernel, s, dilation, pads, windows, strict=True
                )
            )
        return
    assert_close(
        out["y"], pool_reference(kind, x, kernel, s, dilation, pads, ceil_mode, include_pad)
    )


def test_a_max_over_padding_only_is_minus_infinity_as_in_pytorch() -> None:
    """A dilated window can span a short input and miss it (taps at -1 and 1 around a width of
    one): PyTorch accepts the padding and its max is -inf; so is convdsl's, on both backends."""
    text = (
        "input x: f32[N, 2, 1, 1]\n"
        "output y = max_pool2d(x, [1, 2], padding=[0, 1], dilation=[1, 2])\n"
    )
    x = np.random.default_rng(0).standard_normal((1, 2, 1, 1)).astype(np.float32)
    want = F.max_pool2d(tt(x), (1, 2), stride=(1, 2), padding=(0, 1), dilation=(1, 2)).numpy()
    assert np.isneginf(want).all()
    for backend in ("numpy", "llvm"):
        got = convdsl.compile_string(text, backend=backend)(x=x)["y"]
        np.testing.assert_array_equal(got, want)
