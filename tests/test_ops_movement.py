"""Data-movement ops in .conv against torch: upscale (F.interpolate), pixel_shuffle, pad
(F.pad), crop (slicing) and concat (torch.cat)."""

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

TORCH_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}

UPSCALE_CASES = [
    # (shape, factor, mode as written, align_corners)
    ((3, 2, 5), 2, "nearest", False),
    ((1, 3, 4, 5), (2, 3), "nearest", False),
    ((1, 1, 1, 3, 2), (3, 1, 2), "nearest", False),
    ((3, 2, 5), 3, "linear", False),
    ((1, 2, 4), 2, "linear", True),
    ((1, 3, 4, 5), 2, "bilinear", False),
    ((3, 1, 1, 6), (3, 2), "bilinear", False),  # 1-wide axis: every sample is the one row
    ((1, 5, 3, 4), (2, 3), "bilinear", True),
    ((1, 2, 3, 4, 5), 2, "linear", False),
    ((1, 2, 2, 3, 2), (2, 1, 3), "trilinear", True),
    ((1, 3, 2, 2, 3), 2, "trilinear", False),
]


@pytest.mark.parametrize("case", UPSCALE_CASES, ids=str)
def test_upscale_matches_interpolate(case) -> None:
    shape, factor, mode, align_corners = case
    rank, rng = len(shape) - 2, np.random.default_rng(10)
    kw: dict[str, Any] = {} if mode == "nearest" else {"mode": mode}
    if align_corners:
        kw["align_corners"] = True
    src = f"{input_decl('x', shape)}\noutput y = {call('upscale', 'x', factor, **kw)}\n"
    x = randn(rng, shape)
    out, net = compile_and_run(src, {"x": x})
    factors = per_axis(factor, rank)
    size = tuple(n * f for n, f in zip(shape[2:], factors, strict=True))
    assert net.outputs["y"].shape == ("N", shape[1], *size)
    torch_mode = "nearest" if mode == "nearest" else TORCH_LINEAR[rank]
    ref = F.interpolate(
        tt(x),
        size=size,
        mode=torch_mode,
        align_corners=None if mode == "nearest" else align_corners,
    )
    assert_close(out["y"], ref)


@pytest.mark.parametrize(
    ("decl", "args", "word"),
    [
        ("f32[1, 2, 5]", "2, mode=bilinear", "bilinear"),
        ("f32[1, 2, 5, 5]", "2, mode=trilinear", "trilinear"),
        ("f32[1, 2, 5, 5]", "2, align_corners=true", "align_corners"),
        ("f32[1, 2, 5, 5]", "[2, 2, 2]", "factor"),
    ],
)
def test_upscale_rejects(decl: str, args: str, word: str) -> None:
    assert_rejected(f"input x: {decl}\noutput y = upscale(x, {args})\n", 2, word)


@pytest.mark.parametrize(("c", "r", "h", "w"), [(1, 2, 3, 4), (3, 3, 2, 1), (2, 1, 3, 3)])
def test_pixel_shuffle(c: int, r: int, h: int, w: int) -> None:
    rng = np.random.default_rng(11)
    shape = (3, c * r * r, h, w)
    x = randn(rng, shape)
    src = (
        f"{input_decl('x', shape)}\n"
        f"output crd = pixel_shuffle(x, {r})\noutput dcr = pixel_shuffle(x, {r}, order=dcr)\n"
    )
    out, _ = compile_and_run(src, {"x": x})
    assert_close(out["crd"], torch.pixel_shuffle(tt(x), r))
    # DCR (ONNX DepthToSpace): channels ordered (row offset, column offset, channel).
    dcr = tt(x).reshape(3, r, r, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(3, c, h * r, w * r)
    assert_close(out["dcr"], dcr)


def test_pixel_shuffle_rejects_indivisible_channels() -> None:
    assert_rejected("input x: f32[1, 6, 3, 3]\noutput y = pixel_shuffle(x, 2)\n", 2, "6")


PAD_CASES = [
    # (shape, pads as written, per-axis pairs)
    ((3, 2, 5), 2, ((2, 2),)),
    ((1, 3, 4), [[0, 3]], ((0, 3),)),
    ((1, 2, 4, 5), [1, 2], ((1, 1), (2, 2))),
    ((3, 1, 3, 6), [[2, 0], [1, 4]], ((2, 0), (1, 4))),
    ((1, 1, 1, 4), [[0, 0], [3, 1]], ((0, 0), (3, 1))),  # 1-wide axis left alone
    ((1, 2, 3, 4, 5), [[1, 2], [0, 3], [2, 1]], ((1, 2), (0, 3), (2, 1))),
    ((1, 3, 2, 2, 2), 1, ((1, 1),) * 3),
]


def _reflect_ok(case) -> bool:
    shape, _, pairs = case
    return all(max(p) < n for p, n in zip(pairs, shape[2:], strict=True))


PAD_PARAMS = [
    pytest.param(case, mode, id=f"{mode}-{case[0]}-{case[1]}")
    for mode in ("zero", "reflect", "replicate")
    for case in PAD_CASES
    if mode != "reflect" or _reflect_ok(case)  # larger reflect pads are rejected: see below
]


@pytest.mark.parametrize(("case", "mode"), PAD_PARAMS)
def test_pad_matches_torch(case, mode: str) -> None:
    shape, pads, pairs = case
    rng = np.random.default_rng(12)
    kw: dict[str, Any] = {} if mode == "zero" else {"mode": mode}
    src = f"{input_decl('x', shape)}\noutput y = {call('pad', 'x', pads, **kw)}\n"
    x = randn(rng, shape)
    out, _ = compile_and_run(src, {"x": x})
    flat = tuple(v for b, a in reversed(pairs) for v in (b, a))
    ref = F.pad(tt(x), flat, mode={"zero": "constant"}.get(mode, mode))
    assert_close(out["y"], ref)


def test_pad_constant_value() -> None:
    x = randn(np.random.default_rng(13), (1, 2, 3, 3))
    src = "input x: f32[N, 2, 3, 3]\noutput y = pad(x, [[1, 0], [0, 2]], value=-1.5)\n"
    out, _ = compile_and_run(src, {"x": x})
    assert_close(out["y"], F.pad(tt(x), (0, 2, 1, 0), value=-1.5))


def test_reflect_pad_as_large_as_axis_is_rejected() -> None:
    src = "input x: f32[1, 2, 3, 5]\noutput y = pad(x, [[0, 3], [1, 1]], mode=reflect)\n"
    assert_rejected(src, 2, "reflect")
    with pytest.raises(RuntimeError):
        F.pad(torch.zeros(1, 2, 3, 5), (1, 1, 0, 3), mode="reflect")


def test_crop_like_size_and_offsets() -> None:
    rng = np.random.default_rng(14)
    x, r = randn(rng, (3, 4, 9, 8)), randn(rng, (3, 1, 4, 5))
    src = """
    input x: f32[N, 4, 9, 8]
    input r: f32[N, 1, 4, 5]
    output a = crop(x, like=r)
    output b = crop(x, like=r, offset=center)
    output c = crop(x, size=[2, 8], offset=[7, 0])
    output d = crop(x, size=3, offset=2)
    output e = crop(x, size=[4, 3], offset=center)
    output f = crop(x, size=[9, 8])
    """
    out, net = compile_and_run(src, {"x": x, "r": r})
    assert net.outputs["a"].shape == ("N", 4, 4, 5)
    assert_close(out["a"], tt(x)[:, :, 0:4, 0:5])
    assert_close(out["b"], tt(x)[:, :, 2:6, 1:6])  # (9 - 4) // 2, (8 - 5) // 2
    assert_close(out["c"], tt(x)[:, :, 7:9, 0:8])
    assert_close(out["d"], tt(x)[:, :, 2:5, 2:5])
    assert_close(out["e"], tt(x)[:, :, 2:6, 2:5])
    assert_close(out["f"], tt(x))
    assert not any(name.startswith(("a.", "b.")) for name in net.params)


@pytest.mark.parametrize("rank", [1, 3])
def test_crop_center_other_ranks(rank: int) -> None:
    spatial = (7, 5, 4)[:rank] if rank == 3 else (10,)
    size = (3, 5, 1)[:rank] if rank == 3 else (5,)
    shape = (1, 2, *spatial)
    x = randn(np.random.default_rng(15), shape)
    src = f"{input_decl('x', shape)}\noutput y = {call('crop', 'x', size=size, offset='center')}\n"
    out, _ = compile_and_run(src, {"x": x})
    ref = tt(x)
    for axis, (n, s) in enumerate(zip(spatial, size, strict=True)):
        ref = ref.narrow(axis + 2, (n - s) // 2, s)
    assert_close(out["y"], ref)


def test_crop_past_the_end_is_rejected() -> None:
    src = "input x: f32[1, 2, 5, 5]\noutput y = crop(x, size=[3, 3], offset=[3, 0])\n"
    assert_rejected(src, 2, "crop")


def test_concat_three_tensors() -> None:
    rng = np.random.default_rng(16)
    a, b, c = randn(rng, (3, 1, 4, 5)), randn(rng, (3, 5, 4, 5)), randn(rng, (3, 17, 4, 5))
    src = """
    input a: f32[N, 1, 4, 5]
    input b: f32[N, 5, 4, 5]
    input c: f32[N, 17, 4, 5]
    output y = concat(a, b, c)
    output z = concat(c, a)
    """
    out, net = compile_and_run(src, {"a": a, "b": b, "c": c})
    assert net.outputs["y"].shape == ("N", 23, 4, 5)
    assert_close(out["y"], torch.cat([tt(a), tt(b), tt(c)], dim=1))
    assert_close(out["z"], torch.cat([tt(c), tt(a)], dim=1))


def test_concat_rejects_spatial_mismatch() -> None:
    src = "input a: f32[1, 2, 4, 5]\ninput b: f32[1, 2, 4, 4]\noutput y = concat(a, b)\n"
    assert_rejected(src, 3, "concat")
