"""``upscale`` as a resize: every mode, coordinate transform and nearest rounding, against
PyTorch's F.interpolate where PyTorch has the combination and against ONNX Runtime's Resize
(a one-node model, opset 19) for the others; the llvm backend against the interpreter on every
case; and the diagnostics of bad combinations.

One network per input shape holds every variant as an output, so each backend compiles once
per shape. Sizes: 1, odd, ratios below and above 1 and not integers.
"""

from __future__ import annotations

from collections.abc import Callable
from textwrap import dedent

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_rejected, input_decl, randn, tt
from onnx import TensorProto, helper

import convdsl

Reference = Callable[[np.ndarray], np.ndarray | torch.Tensor]
TORCH_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}

# (input shape, output spatial size): ratios above and below 1, odd, 1 -> n and n -> 1
RESIZES = [
    ((3, 17, 7), (10,)),
    ((2, 1, 10), (7,)),
    ((1, 3, 5), (1,)),
    ((2, 3, 1), (5,)),
    ((2, 3, 7, 10), (10, 7)),
    ((1, 17, 5, 1), (1, 5)),
    ((2, 1, 4, 6), (9, 4)),
    ((1, 3, 3, 5, 4), (5, 3, 7)),
    ((2, 1, 1, 4, 3), (3, 2, 1)),
]

# (input shape, factor per axis): factors PyTorch and ONNX hold exactly (float32 scales)
FACTORS = [
    ((2, 3, 7), (1.5,)),
    ((1, 17, 6, 5), (0.5, 2.5)),
    ((2, 1, 3, 4), (3.0, 0.75)),
    ((1, 3, 2, 4, 3), (1.5, 0.5, 2.0)),
]


def run_both(src: str, x: np.ndarray) -> tuple[dict[str, np.ndarray], convdsl.Network]:
    """The interpreter's outputs, after checking the llvm backend's against them."""
    net = convdsl.compile_string(src, backend="numpy", verify=True)
    native = convdsl.compile_string(src, backend="llvm", weights=net.weights)
    want, got = net(x=x), native(x=x)
    for name, array in want.items():
        scale = max(1.0, float(np.abs(array).max()))
        np.testing.assert_allclose(got[name], array, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
    return want, net


def check_all(shape: tuple[int, ...], cases: dict[str, tuple[str, Reference]], dtype=np.float32):
    """Compile ``output name = upscale(x, args)`` for every case into one network, run it on
    both backends, compare each output with its reference."""
    decl = input_decl("x", shape, "f64" if dtype == np.float64 else "f32")
    lines = [decl, *(f"output {name} = upscale(x, {args})" for name, (args, _) in cases.items())]
    x = randn(np.random.default_rng(sum(shape)), shape, dtype)
    out, _ = run_both("\n".join(lines) + "\n", x)
    for name, (args, reference) in cases.items():
        try:
            assert_close(out[name], reference(x), dtype)
        except AssertionError as error:
            raise AssertionError(f"upscale(x, {args})") from error


def conv_list(values: tuple) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


# ---- PyTorch ---------------------------------------------------------------------------------


def torch_cases(rank: int, size_arg: str, torch_kw: dict) -> dict[str, tuple[str, Reference]]:
    """The PyTorch combinations: nearest, nearest-exact, (bi/tri)linear and bicubic with and
    without align_corners; cubic in 1-D through bicubic on a height-1 input."""

    def interpolate(mode: str, **kw) -> Reference:
        return lambda x: F.interpolate(tt(x), mode=mode, **torch_kw, **kw)

    linear = TORCH_LINEAR[rank]
    cases = {
        "near": (f"{size_arg}", interpolate("nearest")),
        "near_words": (
            f"{size_arg}, coordinate=asymmetric, nearest=floor",
            interpolate("nearest"),
        ),
        "exact": (f"{size_arg}, mode=nearest_exact", interpolate("nearest-exact")),
        "exact_words": (
            f"{size_arg}, coordinate=half_pixel, nearest=round_prefer_ceil",
            interpolate("nearest-exact"),
        ),
        "lin": (f"{size_arg}, mode=linear", interpolate(linear, align_corners=False)),
        "lin_hp": (
            f"{size_arg}, mode=linear, coordinate=half_pixel",
            interpolate(linear, align_corners=False),
        ),
        "lin_ac": (
            f"{size_arg}, mode=linear, align_corners=true",
            interpolate(linear, align_corners=True),
        ),
        "lin_ac_words": (
            f"{size_arg}, mode=linear, coordinate=align_corners",
            interpolate(linear, align_corners=True),
        ),
    }
    if rank == 2:
        cases["cub"] = (f"{size_arg}, mode=bicubic", interpolate("bicubic", align_corners=False))
        cases["cub_ac"] = (
            f"{size_arg}, mode=cubic, align_corners=true, cubic_coeff=-0.75",
            interpolate("bicubic", align_corners=True),
        )
    if rank == 1:
        for name, aligned in (("cub", False), ("cub_ac", True)):
            cases[name] = (
                f"{size_arg}, mode=cubic" + (", align_corners=true" if aligned else ""),
                _bicubic_1d(torch_kw, aligned),
            )
    return cases


def _bicubic_1d(torch_kw: dict, aligned: bool) -> Reference:
    """Cubic along one axis: PyTorch's bicubic over ``[N, C, 1, L]`` (a height-1 axis reads
    its one row with weight 1)."""

    def run(x: np.ndarray) -> torch.Tensor:
        kw = {
            key: (1, *value) for key, value in torch_kw.items() if key != "recompute_scale_factor"
        }
        if "recompute_scale_factor" in torch_kw:
            kw["recompute_scale_factor"] = torch_kw["recompute_scale_factor"]
        y = F.interpolate(tt(x)[:, :, None, :], mode="bicubic", align_corners=aligned, **kw)
        return y[:, :, 0, :]

    return run


@pytest.mark.parametrize(("shape", "size"), RESIZES, ids=str)
def test_size_matches_torch(shape: tuple[int, ...], size: tuple[int, ...]) -> None:
    rank = len(size)
    check_all(shape, torch_cases(rank, f"size={conv_list(size)}", {"size": size}))


@pytest.mark.parametrize(("shape", "factors"), FACTORS, ids=str)
@pytest.mark.parametrize("recompute", [False, True])
def test_factor_matches_torch(shape: tuple[int, ...], factors: tuple, recompute: bool) -> None:
    rank = len(factors)
    arg = conv_list(factors) + (", recompute_scale=true" if recompute else "")
    kw = {"scale_factor": factors, "recompute_scale_factor": recompute}
    check_all(shape, torch_cases(rank, arg, kw))


def test_bicubic_in_f64_matches_torch() -> None:
    shape, size = (2, 3, 7, 10), (10, 7)
    cases = torch_cases(2, f"size={conv_list(size)}", {"size": size})
    check_all(shape, cases, np.float64)


def test_cubic_3d_is_separable_bicubic() -> None:
    """PyTorch has no tricubic: cubic over (D, H*W) with H*W kept, then over (H, W)."""
    shape, size = (1, 3, 3, 5, 4), (5, 3, 7)

    def reference(x: np.ndarray) -> torch.Tensor:
        n, c, d, h, w = x.shape
        flat = tt(x).reshape(n, c, d, h * w)
        deep = F.interpolate(flat, size=(size[0], h * w), mode="bicubic", align_corners=False)
        planes = deep.reshape(n * c * size[0], 1, h, w)
        y = F.interpolate(planes, size=size[1:], mode="bicubic", align_corners=False)
        return y.reshape(n, c, *size)

    check_all(shape, {"cub": (f"size={conv_list(size)}, mode=cubic", reference)})


def test_size_is_floor_of_n_times_factor() -> None:
    # 7 * 1.5 = 10.5, 5 * 0.5 = 2.5, 1 * 2.5 = 2.5: PyTorch's sizes
    x = randn(np.random.default_rng(0), (1, 1, 7, 5, 1))
    out, _ = run_both(f"{input_decl('x', x.shape)}\noutput y = upscale(x, [1.5, 0.5, 2.5])\n", x)
    ref = F.interpolate(tt(x), scale_factor=(1.5, 0.5, 2.5), mode="nearest")
    assert out["y"].shape == (1, 1, 10, 2, 2) == tuple(ref.shape)


def test_a_fraction_written_as_a_division_is_exact() -> None:
    # 2/3 is the fraction 2/3: 9 * 2/3 = 6 exactly (9 * float(2/3) = 5.999... in floats)
    x = randn(np.random.default_rng(1), (1, 2, 9))
    out, _ = run_both(f"{input_decl('x', x.shape)}\noutput y = upscale(x, 2 / 3)\n", x)
    assert out["y"].shape == (1, 2, 6)
    assert_close(out["y"], F.interpolate(tt(x), size=6, mode="nearest"))


# ---- ONNX Runtime ----------------------------------------------------------------------------


def onnx_resize(x: np.ndarray, size: tuple[int, ...] | None = None, scales=None, **attrs):
    """ONNX Runtime's Resize of ``x`` (float32) to ``size`` or by ``scales``."""
    rank = x.ndim
    inits, inputs = [], ["x", ""]
    if size is not None:
        inputs += ["", "sizes"]
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [rank], [*x.shape[:2], *size]))
    else:
        inputs.append("scales")
        inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [rank], [1, 1, *scales]))
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


COORDINATES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
ROUNDINGS = ["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"]


def onnx_cases(rank: int, size_arg: str, onnx_kw: dict) -> dict[str, tuple[str, Reference]]:
    """Every nearest rounding with every coordinate transform; linear with the transforms
    PyTorch lacks; cubic (2-D, as ONNX Runtime has it) with both coefficients, every transform
    and exclude_outside."""

    def resize(**attrs) -> Reference:
        return lambda x: onnx_resize(x, **onnx_kw, **attrs)

    cases: dict[str, tuple[str, Reference]] = {}
    for i, coordinate in enumerate(COORDINATES):
        for j, rounding in enumerate(ROUNDINGS):
            cases[f"n{i}{j}"] = (
                f"{size_arg}, coordinate={coordinate}, nearest={rounding}",
                resize(
                    mode="nearest",
                    coordinate_transformation_mode=coordinate,
                    nearest_mode=rounding,
                ),
            )
    if rank == 2:
        for i, coordinate in enumerate(COORDINATES):
            cases[f"l{i}"] = (
                f"{size_arg}, mode=linear, coordinate={coordinate}",
                resize(mode="linear", coordinate_transformation_mode=coordinate),
            )
            for coeff in (-0.5, -0.75):
                for exclude in (False, True):
                    cases[f"c{i}{int(-coeff * 100)}{int(exclude)}"] = (
                        f"{size_arg}, mode=cubic, coordinate={coordinate}, cubic_coeff={coeff}"
                        + (", exclude_outside=true" if exclude else ""),
                        resize(
                            mode="cubic",
                            coordinate_transformation_mode=coordinate,
                            cubic_coeff_a=coeff,
                            exclude_outside=int(exclude),
                        ),
                    )
    return cases


@pytest.mark.parametrize(("shape", "size"), RESIZES, ids=str)
def test_size_matches_onnx_runtime(shape: tuple[int, ...], size: tuple[int, ...]) -> None:
    check_all(shape, onnx_cases(len(size), f"size={conv_list(size)}", {"size": size}))


@pytest.mark.parametrize(("shape", "factors"), FACTORS, ids=str)
def test_factor_matches_onnx_runtime(shape: tuple[int, ...], factors: tuple) -> None:
    check_all(shape, onnx_cases(len(factors), conv_list(factors), {"scales": factors}))


def test_linear_1d_onnx_transforms() -> None:
    """ONNX Runtime's linear Resize wants 2-D: a 1-D axis is a height-1 image."""
    shape, size = (2, 3, 7), (10,)

    def resize(coordinate: str) -> Reference:
        def run(x: np.ndarray) -> np.ndarray:
            y = onnx_resize(
                x[:, :, None, :],
                size=(1, *size),
                mode="linear",
                coordinate_transformation_mode=coordinate,
            )
            return y[:, :, 0, :]

        return run

    cases = {
        f"l{i}": (f"size={conv_list(size)}, mode=linear, coordinate={c}", resize(c))
        for i, c in enumerate(COORDINATES)
    }
    check_all(shape, cases)


# ---- diagnostics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decl", "args", "at", "words"),
    [
        ("f32[1, 2, 5, 5]", "2, size=[3, 3]", "[3, 3]", ("size", "not both")),
        ("f32[1, 2, 5, 5]", "mode=linear", "upscale", ("factor", "size")),
        ("f32[1, 2, 5, 5]", "size=[0, 3]", "[0, 3]", ("size", ">= 1")),
        ("f32[1, 2, 5, 5]", "2, mode=linear, nearest=ceil", "ceil", ("nearest", "linear")),
        ("f32[1, 2, 5]", "2, mode=bicubic", "bicubic", ("bicubic", "2-D")),
        ("f32[1, 2, 5, 5, 5]", "2, mode=bicubic", "bicubic", ("bicubic", "2-D")),
        ("f32[1, 2, 5, 5]", "2, cubic_coeff=-0.5", "-0.5", ("cubic_coeff", "cubic")),
        ("f32[1, 2, 5, 5]", "2, mode=linear, exclude_outside=true", "true", ("exclude_outside",)),
        ("f32[1, 2, 5, 5]", "0.1", "0.1", ("factor", "0.1", "floor(5 * 1/10) = 0")),
        ("f32[1, 2, 5, 5]", "-2", "-2", ("factor", "positive")),
        ("f32[1, 2, 5, 5]", "0.1234567891234", "0.1", ("factor", "ratio")),
        ("f32[1, 2, 5, 5]", "[1.5, 2, 2]", "[1.5", ("factor", "one number or 2")),
        (
            "f32[1, 2, 5, 5]",
            "2, mode=linear, align_corners=true, coordinate=asymmetric",
            "true",
            ("align_corners", "coordinate=asymmetric"),
        ),
        ("f32[1, 2, 5, 5]", "2, mode=nearest_exact, nearest=floor", "floor", ("nearest_exact",)),
        ("f32[1, 2, 5, 5]", "2, coordinate=spline", "spline", ("coordinate", "half_pixel")),
    ],
)
def test_bad_combinations(decl: str, args: str, at: str, words: tuple[str, ...]) -> None:
    """The message names the argument at fault, the caret sits on its value (``at``)."""
    line = f"output y = upscale(x, {args})"
    text = assert_rejected(f"input x: {decl}\n{line}\n", 2, *words)
    assert text.startswith(f"<string>:2:{line.index(at) + 1}:"), text


def test_golden_nearest_rounding_with_linear() -> None:
    src = dedent(
        """\
        input x: f32[N, 3, 8, 8]
        output y = upscale(x, 1.5, mode=bilinear, nearest=round_prefer_floor)
        """
    )
    with pytest.raises(convdsl.ConvdslError) as info:
        convdsl.compile_string(src, "net.conv", backend="numpy")
    assert str(info.value).splitlines() == [
        "net.conv:2:51: error: upscale: nearest=round_prefer_floor chooses how mode=nearest "
        "rounds; mode=bilinear interpolates and does not round",
        "   2 | output y = upscale(x, 1.5, mode=bilinear, nearest=round_prefer_floor)",
        "     |                                                   ^~~~~~~~~~~~~~~~~~",
    ]


def test_a_huge_factor_is_still_refused() -> None:
    assert_rejected("input x: f32[N, 1, 8, 8]\noutput y = upscale(x, [1, 2**32 + 0.5])\n", 2,
                    "factor", "too large")  # fmt: skip
    assert_rejected("input x: f32[N, 1, 200, 8]\noutput y = upscale(x, [100000, 1])\n", 2,
                    "output", "too large")  # fmt: skip
