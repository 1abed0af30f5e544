"""User errors outside the source text: weights files and the arrays a network is called with.

A weights file is untrusted: a missing, extra, mis-shaped or non-float array is reported by
parameter name at the layer that owns it, a pickled object array is refused without being
unpickled, and anything that is not an ``.npz`` archive is refused by name. A bad input array
is reported at the line that declares that input. Every such mistake is a ``ConvdslError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import convdsl
from convdsl import ConvdslError, Network

SOURCE = """\
input x: f32[N, 3, 8, 8]
input z: f32[N, 4, 8, 8]
c = conv2d(x, 4, kernel=3, padding=same, name="conv")
b = batch_norm(c)
output y = b + z
"""
CONV_LINE = '   3 | c = conv2d(x, 4, kernel=3, padding=same, name="conv")'
CONV_CARET = "     |     ^" + "~" * 48


@pytest.fixture
def net() -> Network:
    return convdsl.compile_string(SOURCE, "net.conv", backend="numpy")


def weights_of(net: Network, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        name: rng.standard_normal(p.shape).astype(np.float32) for name, p in net.params.items()
    }
    arrays["b.running_var"] = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    return arrays


def savez(path: Path, arrays: dict[str, Any]) -> Path:
    np.savez(path, **arrays)
    return path


def load_error(net: Network, path: Path) -> ConvdslError:
    with pytest.raises(ConvdslError) as info:
        net.load_weights(path)
    return info.value


def inputs(batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "x": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32),
        "z": rng.standard_normal((batch, 4, 8, 8)).astype(np.float32),
    }


# ---- weights files -------------------------------------------------------------------------


def test_missing_parameter_is_named_at_its_layer(net: Network, tmp_path: Path) -> None:
    arrays = weights_of(net)
    del arrays["conv.bias"]
    path = savez(tmp_path / "w.npz", arrays)
    err = load_error(net, path)
    assert str(err).split("\n") == [
        f"net.conv:3:5: error: {path}: missing parameter 'conv.bias' (expected f32[4])",
        CONV_LINE,
        CONV_CARET,
    ]


def test_extra_array_suggests_the_parameter(net: Network, tmp_path: Path) -> None:
    arrays = weights_of(net)
    arrays["b.running_vars"] = arrays.pop("b.running_var")
    err = load_error(net, savez(tmp_path / "w.npz", arrays))
    messages = [(d.message, d.hint) for d in err.diagnostics]
    assert messages == [
        (
            f"{tmp_path / 'w.npz'}: unexpected array 'b.running_vars': no layer has this parameter",
            "did you mean 'b.running_var'?",
        ),
        (
            f"{tmp_path / 'w.npz'}: missing parameter 'b.running_var' (expected f32[4])",
            "the weights have 'b.running_vars'; is it this one?",
        ),
    ]
    assert err.diagnostics[1].span is not None and err.diagnostics[1].span.line == 4


def test_wrong_shape_names_both_shapes(net: Network, tmp_path: Path) -> None:
    arrays = weights_of(net)
    arrays["conv.weight"] = np.zeros((4, 3, 5, 5), np.float32)
    path = savez(tmp_path / "w.npz", arrays)
    assert str(load_error(net, path)).split("\n") == [
        f"net.conv:3:5: error: {path}: parameter 'conv.weight' has shape [4,3,5,5]; expected "
        "[4,3,3,3]",
        CONV_LINE,
        CONV_CARET,
    ]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, np.str_])
def test_non_float_array_is_refused(net: Network, tmp_path: Path, dtype: type) -> None:
    arrays = weights_of(net)
    arrays["conv.bias"] = bias = np.zeros(4, dtype)
    path = savez(tmp_path / "w.npz", arrays)
    (diag,) = load_error(net, path).diagnostics
    assert diag.message == (
        f"{path}: parameter 'conv.bias' has dtype {bias.dtype}; expected a floating-point "
        "array (f32[4])"
    )
    assert diag.span is not None and (diag.span.line, diag.span.column) == (3, 5)


def test_every_weights_problem_is_reported_at_once(net: Network, tmp_path: Path) -> None:
    arrays = weights_of(net)
    del arrays["b.weight"]
    arrays["conv.weight"] = np.zeros((4, 3, 1, 1), np.float32)
    arrays["conv.bias"] = np.zeros(4, np.int64)
    arrays["extra"] = np.zeros(1, np.float32)
    err = load_error(net, savez(tmp_path / "w.npz", arrays))
    assert [d.message.split(": ", 1)[1] for d in err.diagnostics] == [
        "unexpected array 'extra': no layer has this parameter",
        "parameter 'conv.weight' has shape [4,3,1,1]; expected [4,3,3,3]",
        "parameter 'conv.bias' has dtype int64; expected a floating-point array (f32[4])",
        "missing parameter 'b.weight' (expected f32[4])",
    ]
    assert str(err).endswith("\n4 errors")


class _Tripwire:
    """Unpickling this creates the file ``path``: proof that a loader unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_pickled_object_array_is_refused_without_unpickling(net: Network, tmp_path: Path) -> None:
    tripwire = tmp_path / "unpickled"
    arrays: dict[str, Any] = weights_of(net)
    arrays["conv.bias"] = np.array([_Tripwire(tripwire)] * 4, dtype=object)
    path = savez(tmp_path / "w.npz", arrays)  # numpy.savez pickles object arrays
    err = load_error(net, path)
    assert [d.message for d in err.diagnostics] == [
        f"{path}: array 'conv.bias' holds pickled Python objects; refused without loading it"
    ]
    assert not tripwire.exists()
    with pytest.raises(ConvdslError):
        convdsl.compile_string(SOURCE, "net.conv", weights=path, backend="numpy")
    assert not tripwire.exists()


def test_garbage_file_is_not_an_npz(net: Network, tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    path.write_bytes(b"certainly not a zip archive")
    assert str(load_error(net, path)).split("\n") == [
        f"error: {path}: not an .npz file (it is not a zip archive)",
        "  hint: weights are saved with numpy.savez or Network.save_weights",
    ]


def test_npy_file_is_not_an_npz(net: Network, tmp_path: Path) -> None:
    path = tmp_path / "bias.npy"
    np.save(path, np.zeros(4, np.float32))
    assert str(load_error(net, path)).split("\n") == [
        f"error: {path}: expected an .npz archive of named arrays, found a single array (.npy)",
        "  hint: save with numpy.savez(path, **{name: array})",
    ]


def test_truncated_npz_is_refused(net: Network, tmp_path: Path) -> None:
    good = savez(tmp_path / "good.npz", weights_of(net))
    path = tmp_path / "w.npz"
    path.write_bytes(good.read_bytes()[:100])
    (diag,) = load_error(net, path).diagnostics
    assert diag.message.startswith(f"{path}: not a readable .npz file (")


def test_missing_file_and_directory(net: Network, tmp_path: Path) -> None:
    assert str(load_error(net, tmp_path / "nope.npz")) == (
        f"error: {tmp_path / 'nope.npz'}: weights file not found"
    )
    assert str(load_error(net, tmp_path)) == (
        f"error: {tmp_path}: is a directory, expected an .npz weights file"
    )


def test_compile_with_a_bad_weights_path_names_the_parameter(tmp_path: Path) -> None:
    net = convdsl.compile_string(SOURCE, "net.conv", backend="numpy")
    arrays = weights_of(net)
    del arrays["b.bias"]
    path = savez(tmp_path / "w.npz", arrays)
    with pytest.raises(ConvdslError) as info:
        convdsl.compile_string(SOURCE, "net.conv", weights=path, backend="numpy")
    assert str(info.value).split("\n") == [
        f"net.conv:4:5: error: {path}: missing parameter 'b.bias' (expected f32[4])",
        "   4 | b = batch_norm(c)",
        "     |     ^~~~~~~~~~~~~",
    ]


def test_weights_that_are_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConvdslError) as info:
        convdsl.compile_string(SOURCE, "net.conv", weights=[1, 2], backend="numpy")  # type: ignore[arg-type]
    assert str(info.value) == (
        "error: weights: expected a mapping from parameter names to "
        "arrays (or the path of an .npz or .safetensors file), found list"
    )


def test_failed_load_keeps_the_previous_weights(net: Network, tmp_path: Path) -> None:
    net.set_weights(weights_of(net, seed=3))
    before = net(inputs())["y"]
    bad = weights_of(net, seed=4)
    del bad["conv.weight"]
    load_error(net, savez(tmp_path / "w.npz", bad))
    np.testing.assert_array_equal(net(inputs())["y"], before)


# ---- saving and the round trip -------------------------------------------------------------


def test_save_then_load_gives_identical_outputs(net: Network, tmp_path: Path) -> None:
    net.set_weights(weights_of(net, seed=5))
    expected = net(inputs())["y"]
    path = tmp_path / "w.npz"
    net.save_weights(path)
    fresh = convdsl.compile_string(SOURCE, "net.conv", seed=99, backend="numpy")
    assert not np.array_equal(fresh(inputs())["y"], expected)
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh(inputs())["y"], expected)
    again = convdsl.compile_string(SOURCE, "net.conv", weights=path, backend="numpy")
    np.testing.assert_array_equal(again(inputs())["y"], expected)
    for name, array in net.weights.items():
        np.testing.assert_array_equal(again.weights[name], array)


def test_loaded_weights_drive_the_layers_they_name(net: Network, tmp_path: Path) -> None:
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    bn = torch.nn.BatchNorm2d(4).double().eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
    arrays = {f"conv.{k}": v for k, v in conv.state_dict().items()}
    arrays |= {f"b.{k}": v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    path = savez(
        tmp_path / "torch.npz", {k: v.numpy().astype(np.float32) for k, v in arrays.items()}
    )
    net.load_weights(path)
    given = inputs()
    got = net(given)["y"]
    with torch.no_grad():
        x = torch.from_numpy(given["x"]).double()
        want = bn(conv(x)) + torch.from_numpy(given["z"]).double()
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def test_save_refuses_to_overwrite_unless_asked(net: Network, tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    path.write_bytes(b"precious bytes")
    with pytest.raises(ConvdslError) as info:
        net.save_weights(path)
    assert str(info.value).split("\n") == [
        f"error: {path}: file exists; refusing to overwrite it",
        "  hint: choose another name, or pass overwrite=True (--force on the command line)",
    ]
    assert path.read_bytes() == b"precious bytes"
    net.save_weights(path, overwrite=True)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(net.params)


def test_save_wants_an_npz_name(net: Network, tmp_path: Path) -> None:
    with pytest.raises(ConvdslError) as info:
        net.save_weights(tmp_path / "w.npy")
    assert str(info.value) == (
        f"error: {tmp_path / 'w.npy'}: expected a file name ending in .npz or .safetensors"
    )
    assert not (tmp_path / "w.npy").exists()


# ---- input arrays --------------------------------------------------------------------------

X_DECL = ["   1 | input x: f32[N, 3, 8, 8]", "     |       ^"]
Z_DECL = ["   2 | input z: f32[N, 4, 8, 8]", "     |       ^"]


def call_error(net: Network, *args: Any, **named: Any) -> ConvdslError:
    with pytest.raises(ConvdslError) as info:
        net(*args, **named)
    return info.value


def test_missing_input(net: Network) -> None:
    err = call_error(net, x=inputs()["x"])
    assert str(err).split("\n") == [
        "net.conv:2:7: error: missing input 'z' (f32[N,4,8,8])",
        *Z_DECL,
    ]


def test_extra_input_suggests_a_name(net: Network) -> None:
    err = call_error(net, {**inputs(), "zz": inputs()["z"]})
    assert str(err).split("\n") == [
        "error: unexpected input 'zz'; the network's inputs are x, z",
        "  hint: did you mean 'z'?",
    ]


def test_wrong_rank(net: Network) -> None:
    err = call_error(net, x=inputs()["x"][0], z=inputs()["z"])
    assert str(err).split("\n") == [
        "net.conv:1:7: error: input 'x': expected shape [N,3,8,8], found [3,8,8] (rank 3, "
        "expected 4)",
        *X_DECL,
    ]


@pytest.mark.parametrize(
    ("shape", "problem"),
    [((2, 3, 8, 9), "W is 9, expected 8"), ((2, 1, 8, 8), "channels is 1, expected 3")],
)
def test_wrong_static_dim(net: Network, shape: tuple[int, ...], problem: str) -> None:
    err = call_error(net, x=np.zeros(shape, np.float32), z=inputs()["z"])
    assert str(err).split("\n") == [
        f"net.conv:1:7: error: input 'x': expected shape [N,3,8,8], found "
        f"[{','.join(map(str, shape))}] ({problem})",
        *X_DECL,
    ]


def test_inconsistent_symbolic_batch(net: Network) -> None:
    err = call_error(net, x=inputs(batch=2)["x"], z=inputs(batch=3)["z"])
    assert str(err).split("\n") == [
        "net.conv:2:7: error: input 'z': expected shape [N,4,8,8], found [3,4,8,8] (N is 3 here "
        "but 2 in input 'x')",
        *Z_DECL,
    ]


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (np.full((2, 3, 8, 8), "a"), "dtype <U1"),
        (np.zeros((2, 3, 8, 8), np.complex64), "dtype complex64"),
        (np.empty((2, 3, 8, 8), object), "dtype object"),
        ([[1.0], [1.0, 2.0]], "a ragged sequence"),
        (None, "NoneType"),
    ],
    ids=["strings", "complex", "objects", "ragged", "none"],
)
def test_non_numeric_input(net: Network, value: Any, found: str) -> None:
    err = call_error(net, x=value, z=inputs()["z"])
    assert str(err).split("\n") == [
        f"net.conv:1:7: error: input 'x': expected a numeric array (f32[N,3,8,8]), found {found}",
        *X_DECL,
    ]


def test_every_input_problem_is_reported_at_once(net: Network) -> None:
    err = call_error(net, x=np.zeros((0, 3, 8, 8)), z=np.zeros((1, 4, 8)), w=1)
    assert [d.message for d in err.diagnostics] == [
        "unexpected input 'w'; the network's inputs are x, z",
        "input 'x': expected shape [N,3,8,8], found [0,3,8,8] (N must be at least 1)",
        "input 'z': expected shape [N,4,8,8], found [1,4,8] (rank 3, expected 4)",
    ]


def test_inputs_must_be_named(net: Network) -> None:
    err = call_error(net, inputs()["x"])
    assert str(err) == (
        "error: expected input arrays by name, e.g. net(x=array) or "
        "net({'x': array}); found ndarray"
    )


def test_numeric_inputs_of_other_dtypes_are_converted(net: Network) -> None:
    given = inputs()
    expected = net(given)["y"]
    as_f64 = {name: array.astype(np.float64) for name, array in given.items()}
    np.testing.assert_array_equal(net(as_f64)["y"], expected)
