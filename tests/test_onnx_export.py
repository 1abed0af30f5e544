"""ONNX export (convdsl.interop.onnx_export): every op, every example, open sizes, the file.

Each exported model must pass ``onnx.checker.check_model(full_check=True)`` and onnxruntime must
compute what the NumPy interpreter computes (to 1e-4 of the largest output). onnxruntime is the
independent implementation here: the expected values never come from the exporter. A network
written for any size is exported once and run at two sizes from the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import convdsl
from convdsl import cli
from convdsl.interop.onnx_export import DEFAULT_OPSET, export_graph, export_graph_of
from convdsl.interop.onnx_export_ops import EMITTERS
from convdsl.ir.ops import OPS

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.conv"))
SIZES = {"fcn8s": [{"H": 64, "W": 96}, {"H": 96, "W": 32}], "wavenet": [{"L": 300}, {"L": 517}]}
RTOL = 1e-4


def exported(net: convdsl.Network, opset: int | None = None) -> onnx.ModelProto:
    model = export_graph(export_graph_of(net), net.weights, opset)
    onnx.checker.check_model(model, full_check=True)
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def assert_same(net: convdsl.Network, sess: ort.InferenceSession, inputs: dict) -> None:
    want = net(inputs)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, inputs), strict=True))
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape, name
        scale = max(float(np.abs(expected).max()), 1e-30)
        error = float(np.abs(got[name].astype(np.float64) - expected).max()) / scale
        assert error <= RTOL, f"{name}: relative error {error:.3g}"


def run_both(source: str, opset: int | None = None, sizes: list[dict] | None = None,
             batch: int = 2) -> onnx.ModelProto:  # fmt: skip
    net = convdsl.compile_string(source, backend="numpy", seed=3)
    model = exported(net, opset)
    sess = session(model)
    for sizes_at in sizes or [{}]:
        assert_same(net, sess, net.random_inputs(seed=5, batch=batch, sizes=sizes_at))
    return model


# ---- every example ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_runs_in_onnxruntime(path: Path) -> None:
    net = convdsl.compile_file(path, backend="numpy", seed=1)
    model = exported(net)
    sess = session(model)
    layers = [node.name for node in export_graph_of(net).nodes]
    assert [n.name for n in model.graph.node if "/" not in n.name] == layers
    for sizes in SIZES.get(path.stem, [{}]):
        assert_same(net, sess, net.random_inputs(seed=2, batch=2, sizes=sizes))


def test_open_sizes_stay_dynamic_and_names_are_the_layers() -> None:
    net = convdsl.compile_file(EXAMPLES[[p.stem for p in EXAMPLES].index("fcn8s")], seed=0)
    model = exported(net)
    (image,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    (score,) = model.graph.output
    assert [d.dim_param or d.dim_value for d in score.type.tensor_type.shape.dim] == [
        "N", 21, "H", "W",
    ]  # fmt: skip
    assert {i.name for i in model.graph.initializer} >= set(net.params)
    assert model.opset_import[0].version == DEFAULT_OPSET


# ---- one program per op -----------------------------------------------------------------------

X = "input x: f32[N, 3, 9, 8]\n"
X5 = "input x: f32[N, 17, 7, 6]\n"
SEQ = "input x: f32[N, 3, 11]\n"
VOL = "input x: f32[N, 2, 5, 6, 7]\n"

CASES: dict[str, str] = {
    "conv1d": SEQ + "output y = conv1d(x, 4, kernel=3, padding=causal, dilation=2)",
    "conv1d_same": SEQ + "output y = conv1d(x, 4, kernel=4, stride=3, padding=same)",
    "conv2d": X + "output y = conv2d(x, 5, kernel=[3, 2], stride=[2, 1], padding=[[1, 2], [0, 1]])",
    "conv2d_groups": "input x: f32[N, 6, 9, 8]\n"
    "output y = conv2d(x, 4, kernel=3, groups=2, dilation=2, padding=same, bias=false)",
    "conv2d_act": X + "output y = conv2d(x, 4, kernel=3, padding=same_lower, stride=2, "
    "activation=hard_swish)",
    "conv3d": VOL + "output y = conv3d(x, 3, kernel=[2, 3, 1], stride=[1, 2, 1], padding=1, "
    "activation=selu)",
    "depthwise1d": SEQ + "output y = depthwise1d(x, 3, multiplier=2)",
    "depthwise2d": X5 + "output y = depthwise2d(x, 3, stride=2, padding=same, activation=relu6)",
    "depthwise3d": VOL + "output y = depthwise3d(x, 2, padding=[[1, 0], [0, 1], [1, 1]])",
    "conv_transpose1d": SEQ + "output y = conv_transpose1d(x, 2, kernel=3, stride=2, "
    "output_padding=1, activation=gelu)",
    "conv_transpose2d": X + "output y = conv_transpose2d(x, 4, kernel=4, stride=2, "
    "padding=[[1, 2], [0, 1]], groups=1, activation=silu)",
    "conv_transpose2d_same": X + "output y = conv_transpose2d(x, 6, kernel=3, stride=2, "
    "padding=same, groups=3, dilation=1, activation=mish)",
    "conv_transpose3d": VOL + "output y = conv_transpose3d(x, 2, kernel=2, stride=2, "
    "activation=softplus)",
    "max_pool1d": SEQ + "output y = max_pool1d(x, 3, stride=2, ceil_mode=true, dilation=2)",
    "max_pool2d": X + "output y = max_pool2d(x, 3, stride=2, padding=1, ceil_mode=true)",
    "max_pool2d_same": X + "output y = max_pool2d(x, 2, stride=2, padding=same)",
    "max_pool3d": VOL + "output y = max_pool3d(x, 2, padding=[[1, 0], [0, 0], [1, 1]])",
    "avg_pool1d": SEQ + "output y = avg_pool1d(x, 4, stride=3, padding=2, include_pad=true, "
    "ceil_mode=true)",
    "avg_pool2d": X + "output y = avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=true)",
    "avg_pool2d_incl": X + "output y = avg_pool2d(x, [3, 2], padding=[[1, 0], [1, 1]], "
    "include_pad=true)",
    "avg_pool3d": VOL + "output y = avg_pool3d(x, 2, stride=1)",
    "add": X + "input z: f32[N, 1, 9, 1]\noutput y = x + z",
    "sub": X + "output y = 2 - x",
    "mul": X + "input z: f32[1, 3, 1, 8]\noutput y = x * z * 0.5",
    "div": X + "input z: f32[N, 3, 9, 8]\noutput y = x / 4 + x / (relu(z) + 1)",
    "relu": X + "output y = relu(x)",
    "relu6": X + "output y = relu6(x * 4)",
    "leaky_relu": X + "output y = leaky_relu(x, alpha=0.2)",
    "elu": X + "output y = elu(x, alpha=0.7)",
    "sigmoid": X + "output y = sigmoid(x * 3)",
    "tanh": X + "output y = tanh(x)",
    "gelu": X + "output y = gelu(x * 3) + gelu(x, approximate=tanh)",
    "silu": X + "output y = silu(x * 3)",
    "hard_sigmoid": X + "output y = hard_sigmoid(x * 3)",
    "hard_swish": X + "output y = hard_swish(x * 3)",
    "clip": X + "output y = clip(x, min=-0.5, max=1) + clip(x, max=0.25) + clip(x, min=0.5)",
    "selu": X + "output y = selu(x * 2)",
    "softplus": X + "output y = softplus(x * 8, beta=2, threshold=3) + softplus(x * 30)",
    "mish": X + "output y = mish(x * 3)",
    "prelu": X + "output y = prelu(x) + prelu(x * 2, shared=true)",
    "softmax": X + "output y = softmax(x * 3)",
    "batch_norm": X + "output y = batch_norm(x, eps=0.001)",
    "global_avg_pool": X + "output y = global_avg_pool(x)",
    "global_max_pool": VOL + "output y = global_max_pool(x)",
    "concat": X + "input z: f32[N, 3, 9, 2]\noutput y = concat(x, z, axis=3)\n"
    "output c = concat(x, x, axis=1)",
    "slice": X + "output y = slice(x, axis=2, start=-2, end=0, step=-3)\n"
    "output z = slice(x, axis=3, start=1, step=2)\noutput w = slice(x, axis=2, step=-1)",
    "split": X + "a, b, c = split(x, [2, 5, 2], axis=2)\noutput y = a\noutput z = c + 0\n"
    "output w = b",
    "upscale": X + "output y = upscale(x, 2)\n"
    "output a = upscale(x, [1.5, 2.5], mode=bilinear, align_corners=true)\n"
    "output b = upscale(x, 3, mode=nearest, coordinate=half_pixel, nearest=round_prefer_floor)\n"
    "output c = upscale(x, size=[4, 5], mode=bicubic)\n"
    "output d = upscale(x, [0.5, 0.75], mode=linear, coordinate=pytorch_half_pixel)\n"
    "output e = upscale(x, 2, mode=cubic, cubic_coeff=-0.5, exclude_outside=true)\n"
    "output f = upscale(x, [2, 3], mode=nearest_exact)\n"
    "output g = upscale(x, 1.25, mode=nearest, coordinate=asymmetric, nearest=ceil)",
    "upscale_3d": VOL + "output y = upscale(x, [2, 1, 3], mode=trilinear)\n"
    "output z = upscale(x, 2, mode=nearest, coordinate=align_corners)",
    "upscale_1d": SEQ + "output y = upscale(x, 3, mode=linear, recompute_scale=true)\n"
    "output z = upscale(x, 0.3, mode=nearest)",
    "pixel_shuffle": "input x: f32[N, 18, 4, 5]\noutput y = pixel_shuffle(x, 3)\n"
    "output z = pixel_shuffle(x, 3, order=dcr)",
    "space_to_depth": "input x: f32[N, 3, 6, 4]\noutput y = space_to_depth(x, 2)\n"
    "output z = space_to_depth(x, 2, order=dcr)",
    "pad": X + "output y = pad(x, [[1, 2], [0, 3]])\noutput z = pad(x, 2, mode=reflect)\n"
    "output w = pad(x, [[0, 1], [3, 0]], mode=replicate)\n"
    "output v = pad(x, 1, value=-2.5)",
    "crop": X + "input z: f32[N, 3, 4, 5]\noutput y = crop(x, like=z, offset=center)\n"
    "output w = crop(x, size=[3, 8], offset=[6, 0])",
    "flatten_dense": X + "f = flatten(max_pool2d(x, 2))\noutput y = dense(f, 7)\n"
    "output z = dense(flatten(global_avg_pool(x)), 5, bias=false, activation=relu)",
}


def ops_of(source: str) -> set[str]:
    graph = convdsl.compile_string(source, backend="numpy", opt_level=0).graph
    return {node.op for node in graph.nodes}


def test_every_op_has_an_export_case_and_an_emitter() -> None:
    covered = set().union(*(ops_of(source) for source in CASES.values()))
    assert set(OPS) - covered == set(), "ops without a case in CASES"
    assert set(OPS) - set(EMITTERS) == set(), "ops without an ONNX emitter"


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_op_matches_onnxruntime(case: str) -> None:
    run_both(CASES[case])


@pytest.mark.parametrize("case", ["gelu", "mish", "conv_transpose1d", "conv2d_act"])
def test_composed_forms_below_their_opsets(case: str) -> None:
    """Gelu below opset 20 and Mish below 18 are their formulas."""
    model = run_both(CASES[case], opset=17)
    assert not {"Gelu", "Mish"} & {n.op_type for n in model.graph.node}


def test_f64_networks_export_as_double() -> None:
    source = "input x: f64[N, 2, 5, 5]\noutput y = relu(x) * 2"
    net = convdsl.compile_string(source, backend="numpy")
    model = exported(net)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert_same(net, session(model), {"x": np.random.default_rng(0).standard_normal((1, 2, 5, 5))})


# ---- open sizes: one file, two sizes ----------------------------------------------------------

OPEN = "input x: f32[N, 3, H, W]\n"
OPEN_CASES: dict[str, tuple[str, list[dict]]] = {
    "same_strided": (
        OPEN + "a = conv2d(x, 4, kernel=3, stride=2, padding=same, activation=relu)\n"
        "b = conv2d(x, 4, kernel=4, stride=3, dilation=1, padding=same_lower)\n"
        "output y = depthwise2d(a, 3, stride=2, padding=same)\n"
        "output z = max_pool2d(b, 3, stride=2, padding=same)\n"
        "output w = avg_pool2d(x, 2, stride=3, padding=same)",
        [{"H": 9, "W": 16}, {"H": 1, "W": 5}],
    ),
    "dilated_same": (
        "input x: f32[N, 2, L]\noutput y = conv1d(x, 3, kernel=3, stride=2, dilation=2, "
        "padding=same)\noutput z = max_pool1d(x, 2, stride=3, dilation=3, padding=same_lower)",
        [{"L": 7}, {"L": 12}],
    ),
    "slices": (
        OPEN + "output y = slice(x, axis=2, start=-2, step=-2)\n"
        "output z = slice(x, axis=3, start=1, end=-1)\n"
        "a, b = split(x, parts=2, axis=3)\noutput w = b - a",
        [{"H": 5, "W": 4}, {"H": 8, "W": 10}],
    ),
    "crops": (
        OPEN + "up = conv_transpose2d(x, 2, kernel=4, stride=2)\n"
        "output y = crop(up, like=x, offset=center)\n"
        "output z = crop(x, size=[1, 2], offset=center)",
        [{"H": 3, "W": 5}, {"H": 8, "W": 2}],
    ),
    "movement": (
        OPEN + "output y = space_to_depth(x, 2)\n"
        "output z = pixel_shuffle(concat(x, x, x, x, axis=1), 2, order=dcr)\n"
        "output p = pad(x, [[1, 0], [2, 2]], mode=reflect)\n"
        "output c = concat(x, x, axis=2)",
        [{"H": 4, "W": 6}, {"H": 10, "W": 4}],
    ),
    "resizes": (
        OPEN + "output y = upscale(x, 2, mode=bilinear)\noutput z = upscale(x, 0.5)\n"
        "output w = upscale(x, [1.5, 3], mode=nearest_exact)",
        [{"H": 4, "W": 6}, {"H": 7, "W": 3}],
    ),
}


@pytest.mark.parametrize("case", sorted(OPEN_CASES))
def test_open_sizes_one_file_two_sizes(case: str) -> None:
    source, sizes = OPEN_CASES[case]
    run_both(source, sizes=sizes)


def export_error(source: str, sizes: dict | None = None) -> convdsl.ConvdslError:
    net = convdsl.compile_string(source, backend="numpy", sizes=sizes)
    with pytest.raises(convdsl.ConvdslError) as info:
        export_graph(export_graph_of(net), net.weights)
    return info.value


def test_refused_on_open_sizes_with_the_layer_and_the_way_out() -> None:
    err = export_error(OPEN + "output y = max_pool2d(x, 3, stride=2, padding=same, ceil_mode=true)")
    (diag,) = err.diagnostics
    assert diag.message.startswith("cannot export layer 'y' (max_pool2d) to ONNX: ")
    assert "ceil_mode" in diag.message and "--shape" in (diag.hint or "")
    assert (diag.span.line, diag.span.column) == (2, 12)
    err = export_error(OPEN + "pooled = upscale(x, 0.3)\noutput y = relu(pooled)")
    assert "layer 'pooled' (upscale)" in str(err) and "float32" in str(err)


def test_the_same_networks_export_for_fixed_sizes() -> None:
    for source in (
        OPEN + "output y = max_pool2d(x, 3, stride=2, padding=same, ceil_mode=true)",
        OPEN + "output z = upscale(x, 0.3, mode=linear)",
    ):
        net = convdsl.compile_string(source, backend="numpy", sizes={"H": 13, "W": 10})
        sess = session(exported(net))
        assert_same(net, sess, net.random_inputs(seed=1, batch=2))


# ---- the command and the file -----------------------------------------------------------------


def test_export_command_writes_a_model_with_the_given_weights(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    fcn = str(EXAMPLES[[p.stem for p in EXAMPLES].index("fcn8s")])
    weights, model_path = tmp_path / "w.safetensors", tmp_path / "fcn.onnx"
    assert cli.main(["init-weights", fcn, "-o", str(weights), "--seed", "9"]) == 0
    argv = ["export", fcn, "-o", str(model_path), "--weights", str(weights), "--shape",
            "H=64,W=32", "--opset", "17"]  # fmt: skip
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"wrote {model_path} (opset 17, 29 layers, 39 parameter arrays)"  # 18 convs + 3 transposed
    )
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 64, 32]
    net = convdsl.compile_file(fcn, backend="numpy", weights=weights, sizes={"H": 64, "W": 32})
    assert_same(net, session(model), net.random_inputs(seed=4, batch=1))

    before = model_path.read_bytes()
    assert cli.main(argv) == 2  # no --force: the file is kept
    assert "file exists; refusing to overwrite it" in capsys.readouterr().err
    assert model_path.read_bytes() == before
    assert cli.main([*argv, "--force", "--opset", "12"]) == 2
    assert "opset must be an integer from 13 to" in capsys.readouterr().err
    assert model_path.read_bytes() == before


def test_a_failed_export_leaves_no_file(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    conv = tmp_path / "net.conv"
    conv.write_text(OPEN + "output y = max_pool2d(x, 3, stride=2, padding=same, ceil_mode=true)\n")
    target = tmp_path / "net.onnx"
    assert cli.main(["export", str(conv), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{conv}:2:12: error: cannot export layer 'y' (max_pool2d) to ONNX")
    assert "hint: export for fixed sizes: --shape" in err
    assert list(tmp_path.iterdir()) == [conv]
    assert cli.main(["export", str(conv), "-o", str(target), "--shape", "H=9,W=9"]) == 0
    assert cli.main(["export", str(conv), "-o", str(tmp_path / "net.pb")]) == 2
    assert "expected a file name ending in .onnx" in capsys.readouterr().err


def test_network_to_onnx(tmp_path: Path) -> None:
    net = convdsl.compile_string(CASES["conv2d_act"], seed=2)  # llvm, -O2: exported as written
    path = tmp_path / "m.onnx"
    net.to_onnx(path, opset=19)
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["Conv", "HardSwish"]
    assert [n.name for n in model.graph.node] == ["y", "y/hard_swish"]
    assert [i.name for i in model.graph.initializer] == ["y.weight", "y.bias"]
    assert_same(net, session(model), net.random_inputs(seed=1, batch=3))
    with pytest.raises(convdsl.ConvdslError, match="refusing to overwrite"):
        net.to_onnx(path)
    net.to_onnx(path, overwrite=True)


def test_channels_last_boundaries_take_and_give_the_callers_arrays(tmp_path: Path) -> None:
    net = convdsl.compile_string(
        "input x: nhwc f32[N, 8, 8, 3]\noutput y: nhwc = conv2d(x, 4, kernel=3)", backend="numpy"
    )
    net.to_onnx(tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in (model.graph.input[0], model.graph.output[0])]  # fmt: skip
    assert dims == [["N", 8, 8, 3], ["N", 6, 6, 4]]
    assert_same(net, session(model), net.random_inputs(seed=1, batch=2))
