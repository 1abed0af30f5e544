"""ONNX import of classifier heads: Flatten, Reshape to [N, -1], Gemm and MatMul (+ Add) as
convdsl's flatten and dense, checked against onnxruntime on both backends; PyTorch exports of
small CNNs with nn.Flatten / x.view(x.size(0), -1) and nn.Linear; refusals pinned."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper
from test_onnx_import import check, feed, make_model, rand, refusal, torch_model

X4 = ["N", 3, 5, 7]


def one_node(op: str, shape: list[Any], inits: dict[str, Any] | None = None,
             extra: list[str] | tuple[str, ...] = (), **attrs: Any) -> Any:  # fmt: skip
    """A one-node model whose output has rank 2."""
    node = helper.make_node(op, ["x", *extra], ["y"], name="n", **attrs)
    return make_model([node], {"x": shape}, {"y": 2}, inits)


def test_flatten_one_node() -> None:
    source = check(one_node("Flatten", X4, axis=1), [feed((2, 3, 5, 7)), feed((1, 3, 5, 7))])
    assert "flatten(x)" in source
    check(one_node("Flatten", ["N", 17, 1], axis=-2), [feed((3, 17, 1))])
    check(one_node("Flatten", ["N", 4], axis=1), [feed((2, 4))])


GEMM_CASES: dict[str, dict[str, Any]] = {
    "transB_bias": dict(inits={"w": rand(5, 12), "b": rand(5)}, extra=["w", "b"], transB=1),
    "no_transB_bias": dict(inits={"w": rand(12, 5), "b": rand(5)}, extra=["w", "b"]),
    "no_bias": dict(inits={"w": rand(5, 12)}, extra=["w"], transB=1),
    "row_bias": dict(inits={"w": rand(12, 5), "b": rand(1, 5)}, extra=["w", "b"], beta=1.0),
    "scalar_bias": dict(inits={"w": rand(5, 12), "b": rand(1)}, extra=["w", "b"], transB=1),
}


@pytest.mark.parametrize("case", sorted(GEMM_CASES))
def test_gemm(case: str) -> None:
    attrs = dict(GEMM_CASES[case])
    model = one_node("Gemm", ["N", 12], attrs.pop("inits"), attrs.pop("extra"), **attrs)
    source = check(model, [feed((3, 12)), feed((1, 12))])
    assert "dense(x, 5" in source


def test_gemm_one_feature_one_output() -> None:
    model = one_node("Gemm", ["N", 1], {"w": rand(1, 1), "b": rand(1)}, ["w", "b"], transB=1)
    check(model, [feed((4, 1))])


def test_matmul_add_is_one_dense_layer() -> None:
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "b"], ["y"], name="bias"),
    ]
    model = make_model(nodes, {"x": X4}, {"y": 2}, {"w": rand(105, 17), "b": rand(17)})
    source = check(model, [feed((2, 3, 5, 7))])
    assert "dense(" in source and "bias=false" not in source, source
    assert source.count("dense(") == 1


def test_matmul_without_add_and_with_a_shared_output() -> None:
    model = one_node("MatMul", ["N", 6], {"w": rand(6, 3)}, ["w"])
    assert "bias=false" in check(model, [feed((2, 6))])
    nodes = [  # the MatMul's output is used twice: the Add cannot take its bias
        helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "b"], ["y"], name="bias"),
        helper.make_node("Relu", ["m"], ["z"], name="act"),
    ]
    model = make_model(nodes, {"x": ["N", 6]}, {"y": 2, "z": 2}, {"w": rand(6, 3), "b": rand(3)})
    assert "node 'bias' (Add): input 1 is a constant of shape [3]" in refusal(model)


def reshape_model(shape: list[int], x: list[Any]) -> Any:
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"], name="pool"),
        helper.make_node("Reshape", ["p", "s"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1),
    ]
    inits = {"s": np.array(shape, np.int64), "w": rand(4, x[1]), "b": rand(4)}
    return make_model(nodes, {"x": x}, {"y": 2}, inits)


@pytest.mark.parametrize("shape", [[0, -1], [-1, 17], [2, -1], [2, 17]])
def test_reshape_of_a_pooled_map_is_flatten(shape: list[int]) -> None:
    batch: Any = 2 if shape[0] == 2 else "N"
    source = check(reshape_model(shape, [batch, 17, 3, 5]), [feed((2, 17, 3, 5))])
    assert "flatten(" in source


@pytest.mark.parametrize(
    ("shape", "why"),
    [
        ([1, -1], "reshapes to [1, -1]"),
        ([-1, 1, 17], "reshapes to [-1, 1, 17]"),
        ([17, 2], "reshapes to [17, 2]"),
    ],
)
def test_other_reshapes_are_refused(shape: list[int], why: str) -> None:
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")]
    model = make_model(nodes, {"x": [2, 17, 1, 1]}, {"y": len(shape)},
                       {"s": np.array(shape, np.int64)})  # fmt: skip
    assert f"node 'r' (Reshape): {why}; convdsl imports a Reshape only as flatten" in refusal(model)


GEMM_REFUSALS = {
    "alpha": (dict(alpha=0.5, transB=1), "attribute 'alpha' = 0.5: convdsl's dense computes"),
    "transA": (dict(transA=1, transB=1), "attribute 'transA' = 1: convdsl's dense computes"),
    "beta": (dict(beta=2.0, transB=1), "attribute 'beta' = 2.0: convdsl's dense adds its bias"),
}


@pytest.mark.parametrize("case", sorted(GEMM_REFUSALS))
def test_gemm_refusals(case: str) -> None:
    attrs, message = GEMM_REFUSALS[case]
    model = one_node("Gemm", [6, 6], {"w": rand(6, 6), "b": rand(6)}, ["w", "b"], **attrs)
    assert f"node 'n' (Gemm): {message}" in refusal(model)


def test_gemm_refusals_of_inputs() -> None:
    full_bias = one_node("Gemm", [2, 6], {"w": rand(3, 6), "b": rand(2, 3)}, ["w", "b"], transB=1)
    assert "node 'n' (Gemm): input 'C' has shape [2, 3]" in refusal(full_bias)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="n")]
    computed = make_model(nodes, {"x": [2, 6], "w": [6, 3]}, {"y": 2})
    assert "node 'n' (Gemm): input 'B' is computed by the graph" in refusal(computed)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="n")]
    on_map = make_model(nodes, {"x": [2, 6, 4, 4]}, {"y": 4}, {"w": rand(4, 3)})
    assert "node 'n' (MatMul): convdsl's dense takes features [N, F]; input 0 has rank 4" in (
        refusal(on_map)
    )


# ---- PyTorch exports -------------------------------------------------------------------------


def small_cnn(view: bool) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU())
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(8 * 4 * 3, 17)
            self.fc2 = nn.Linear(17, 5)

        def forward(self, x: Any) -> Any:
            y = self.features(x)
            y = y.view(y.size(0), -1) if view else self.flatten(y)
            return torch.softmax(self.fc2(torch.relu(self.fc1(y))), dim=1)

    return Net()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("view", [False, True], ids=["nn_flatten", "view"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_batch"])
def test_torch_cnn_with_linear_head(view: bool, dynamic: bool) -> None:
    import torch

    module = small_cnn(view)
    model = torch_model(module, (2, 3, 9, 7), {0: "N"} if dynamic else {})
    x = rand(2, 3, 9, 7)
    source = check(model, [{"x": x}])
    assert "flatten(" in source and source.count("dense(") == 2, source
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    import convdsl
    from convdsl.interop.onnx_import import import_onnx

    text, weights = import_onnx(model)
    for backend in ("numpy", "llvm"):
        got = convdsl.compile_string(text, "t.conv", weights=weights, backend=backend)(x=x)["y"]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    if dynamic:
        check(model, [feed((1, 3, 9, 7)), feed((3, 3, 9, 7))])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_global_pool_head_keeps_dynamic_sizes() -> None:
    import torch
    from torch import nn

    torch.manual_seed(2)
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 10),
    )  # fmt: skip
    model = torch_model(module, (2, 3, 8, 8), {0: "N", 2: "H", 3: "W"})
    check(model, [feed((2, 3, 8, 8)), feed((1, 3, 5, 11))])
