"""upscale, pixel_shuffle, pad and crop against torch.nn.functional (and TF's documented
depth_to_space for the ``dcr`` order)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from convdsl.backends.numpy import resample
from convdsl.backends.numpy.resample import crop, pad, pixel_shuffle

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
MAX_SIDE = {1: 8, 2: 5, 3: 4}


def assert_matches(got: np.ndarray, ref: torch.Tensor | np.ndarray, dtype: type) -> None:
    expected = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    assert got.dtype == dtype
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    rtol, atol = (1e-10, 1e-10) if dtype == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale)


def torch_pad_arg(pads: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    return tuple(v for before, after in reversed(pads) for v in (before, after))


# ---- upscale -----------------------------------------------------------------------------


def upscale(
    x: np.ndarray, factors: tuple[int, ...], mode: str, align_corners: bool = False
) -> np.ndarray:
    """The kernel with PyTorch's conventions: nearest reads ``floor(x / f)``, linear uses
    half-pixel centres unless ``align_corners``."""
    coordinate = "align_corners" if align_corners else "half_pixel"
    return resample.upscale(
        x,
        factors=tuple(Fraction(f) for f in factors),
        mode=mode,
        coordinate="asymmetric" if mode == "nearest" else coordinate,
    )


@st.composite
def upscale_cases(draw: st.DrawFn) -> dict:
    rank = draw(st.integers(1, 3))
    return {
        "shape": (
            draw(st.integers(1, 2)),
            draw(st.sampled_from([1, 3, 5])),
            *(draw(st.integers(1, MAX_SIDE[rank])) for _ in range(rank)),
        ),
        "factors": tuple(draw(st.integers(1, 4)) for _ in range(rank)),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _upscale_input(case: dict) -> np.ndarray:
    rng = np.random.default_rng(case["seed"])
    return rng.standard_normal(case["shape"]).astype(case["dtype"])


@settings(max_examples=50, deadline=None)
@given(upscale_cases())
def test_upscale_nearest_property(case: dict) -> None:
    x = _upscale_input(case)
    got = upscale(x, factors=case["factors"], mode="nearest")
    scale = tuple(float(f) for f in case["factors"])
    ref = F.interpolate(torch.from_numpy(x), scale_factor=scale, mode="nearest")
    assert_matches(got, ref, case["dtype"])


@settings(max_examples=60, deadline=None)
@given(upscale_cases(), st.booleans())
def test_upscale_linear_property(case: dict, align_corners: bool) -> None:
    x = _upscale_input(case)
    got = upscale(x, factors=case["factors"], mode="linear", align_corners=align_corners)
    ref = F.interpolate(
        torch.from_numpy(x),
        scale_factor=tuple(float(f) for f in case["factors"]),
        mode=LINEAR_MODE[x.ndim - 2],
        align_corners=align_corners,
    )
    assert_matches(got, ref, case["dtype"])


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize(
    ("shape", "factors"),
    [
        ((1, 3, 7), (3,)),
        ((3, 1, 1, 5), (4, 2)),  # 1-wide axis
        ((1, 17, 3, 2), (1, 3)),  # factor 1 on one axis
        ((1, 5, 2, 3, 1), (2, 1, 3)),
    ],
)
def test_upscale_shapes(shape, factors, mode: str, align_corners: bool) -> None:
    x: np.ndarray = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    torch_mode = mode if mode == "nearest" else LINEAR_MODE[len(factors)]
    got = upscale(x, factors=factors, mode=mode, align_corners=align_corners)
    ref = F.interpolate(
        torch.from_numpy(x),
        scale_factor=tuple(float(f) for f in factors),
        mode=torch_mode,
        align_corners=None if mode == "nearest" else align_corners,
    )
    assert_matches(got, ref, np.float32)


# ---- pixel_shuffle -----------------------------------------------------------------------


def tf_depth_to_space(x: np.ndarray, r: int) -> np.ndarray:
    """TF's documented definition, on NHWC: reshape [b, h, w, r, r, c], transpose
    [0, 1, 3, 2, 4, 5], reshape [b, h*r, w*r, c]; wrapped to and from NCHW."""
    nhwc = x.transpose(0, 2, 3, 1)
    b, h, w, depth = nhwc.shape
    c = depth // (r * r)
    out = nhwc.reshape(b, h, w, r, r, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c)
    return out.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("n", "c", "h", "w", "r"),
    [(1, 1, 1, 1, 2), (3, 3, 2, 5, 2), (1, 5, 3, 1, 3), (2, 2, 4, 3, 1), (1, 17, 2, 2, 2)],
)
def test_pixel_shuffle(n: int, c: int, h: int, w: int, r: int, dtype: type) -> None:
    x: np.ndarray = np.random.default_rng(8).standard_normal((n, c * r * r, h, w)).astype(dtype)
    crd = pixel_shuffle(x, factor=r, order="crd")
    assert_matches(crd, F.pixel_shuffle(torch.from_numpy(x), r), dtype)
    dcr = pixel_shuffle(x, factor=r, order="dcr")
    assert_matches(dcr, tf_depth_to_space(x, r), dtype)


def test_pixel_shuffle_dcr_channel_index() -> None:
    """TF: output[h*r + i, w*r + j, c] = input[h, w, (i*r + j)*C + c]."""
    r, c = 2, 3
    x = np.arange(c * r * r, dtype=np.float32).reshape(1, c * r * r, 1, 1)
    out = pixel_shuffle(x, factor=r, order="dcr")
    for i in range(r):
        for j in range(r):
            np.testing.assert_array_equal(out[0, :, i, j], np.arange(c) + (i * r + j) * c)


# ---- pad and crop ------------------------------------------------------------------------


@st.composite
def pad_cases(draw: st.DrawFn) -> dict:
    rank = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, MAX_SIDE[rank])) for _ in range(rank))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(rank))
    mode = draw(st.sampled_from(["zero", "reflect", "replicate"]))
    if mode == "reflect":
        assume(all(max(p) < n for p, n in zip(pads, spatial, strict=True)))  # PyTorch's limit
    return {
        "shape": (draw(st.integers(1, 2)), draw(st.sampled_from([1, 3])), *spatial),
        "pads": pads,
        "mode": mode,
        "value": draw(st.sampled_from([0.0, -1.5])),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
    }


TORCH_PAD_MODE = {"zero": "constant", "reflect": "reflect", "replicate": "replicate"}


@settings(max_examples=60, deadline=None)
@given(pad_cases())
def test_pad_property(case: dict) -> None:
    x: np.ndarray = np.random.default_rng(9).standard_normal(case["shape"]).astype(case["dtype"])
    mode = case["mode"]
    got = pad(x, pads=case["pads"], mode=mode, value=case["value"])
    value = case["value"] if mode == "zero" else None
    ref = F.pad(
        torch.from_numpy(x), torch_pad_arg(case["pads"]), mode=TORCH_PAD_MODE[mode], value=value
    )
    assert_matches(got, ref, case["dtype"])


@pytest.mark.parametrize(
    ("shape", "starts", "sizes"),
    [
        ((1, 3, 7), (2,), (4,)),
        ((3, 1, 5, 4), (0, 3), (5, 1)),
        ((1, 2, 3, 4, 5), (1, 0, 4), (1, 4, 1)),
    ],
)
def test_crop(shape, starts, sizes) -> None:
    x: np.ndarray = np.random.default_rng(10).standard_normal(shape).astype(np.float32)
    ref = torch.from_numpy(x)
    for axis, (start, size) in enumerate(zip(starts, sizes, strict=True), start=2):
        ref = ref.narrow(axis, start, size)
    assert_matches(crop(x, starts=starts, sizes=sizes), ref, np.float32)
