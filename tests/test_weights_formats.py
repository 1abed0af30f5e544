"""Weights from where users have them: .safetensors files (read with a checked header, written
atomically), PyTorch state_dicts (torch tensors, prefixes, renames), torch.save files refused.

Truth comes from outside: safetensors files written by the ``safetensors`` package itself (its
torch API for bfloat16), and a PyTorch module's own forward pass for a bound state_dict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
import torch.nn.functional as F

import convdsl
from convdsl import ConvdslError, cli

SOURCE = """input x: f32[N, 3, 8, 8]
conv1 = conv2d(x, 4, kernel=3, padding=same)
bn = batch_norm(conv1)
output y = conv2d(relu(bn), 2, kernel=1)
"""
REPO = Path(__file__).resolve().parents[1]


def network() -> convdsl.Network:
    return convdsl.compile_string(SOURCE, "net.conv", backend="numpy", seed=1)


class Torch(torch.nn.Module):
    """SOURCE in PyTorch, with the same layer names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.y = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.y(F.relu(self.bn(self.conv1(x))))


def trained_torch() -> Torch:
    torch.manual_seed(0)
    model = Torch().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 2)
    return model


def assert_matches_torch(net: convdsl.Network, model: Torch) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net(x=x)["y"], want, rtol=1e-5, atol=1e-5)


# ---- safetensors --------------------------------------------------------------------------------


def test_safetensors_round_trip_through_the_api(tmp_path: Path) -> None:
    net = network()
    path = tmp_path / "w.safetensors"
    net.save_weights(path)
    read = safetensors.numpy.load_file(str(path))  # the package reads what convdsl wrote
    assert set(read) == set(net.params)
    for name, array in net.weights.items():
        np.testing.assert_array_equal(read[name], array)
    other = convdsl.compile_string(SOURCE, backend="numpy", seed=7)
    other.load_weights(path)
    x = np.ones((1, 3, 8, 8), np.float32)
    np.testing.assert_array_equal(other(x=x)["y"], net(x=x)["y"])
    with pytest.raises(ConvdslError, match="file exists; refusing to overwrite it"):
        net.save_weights(path)
    net.save_weights(path, overwrite=True)


def test_safetensors_written_by_the_package_from_torch_state_dict(tmp_path: Path) -> None:
    model = trained_torch()
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))  # num_batches_tracked: int64
    net = convdsl.compile_string(SOURCE, backend="numpy", weights=path)
    assert_matches_torch(net, model)


def test_bfloat16_and_float16_are_widened_exactly(tmp_path: Path) -> None:
    model = trained_torch()
    path = tmp_path / "w.safetensors"
    state = {k: v.to(torch.bfloat16) if k.startswith("conv1") else v.half() if k.startswith("y")
             else v for k, v in model.state_dict().items()}  # fmt: skip
    safetensors.torch.save_file(state, str(path))
    net = network()
    net.load_weights(path)
    for name, tensor in state.items():
        if tensor.is_floating_point():
            np.testing.assert_array_equal(net.weights[name], tensor.float().numpy())


def test_init_weights_and_run_with_safetensors(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    conv = tmp_path / "net.conv"
    conv.write_text(SOURCE)
    for name in ("w.npz", "w.safetensors"):
        assert cli.main(["init-weights", str(conv), "-o", str(tmp_path / name), "--seed", "4"]) == 0
    capsys.readouterr()
    assert cli.main(["run", str(conv), "--weights", str(tmp_path / "w.npz")]) == 0
    from_npz = capsys.readouterr().out
    assert cli.main(["run", str(conv), "--weights", str(tmp_path / "w.safetensors")]) == 0
    assert capsys.readouterr().out == from_npz
    out = tmp_path / "out.safetensors"
    assert cli.main(["run", str(conv), "--output", str(out)]) == 0
    assert set(safetensors.numpy.load_file(str(out))) == {"y"}
    assert cli.main(["init-weights", str(conv), "-o", str(tmp_path / "w.safetensors")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def header_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    text = json.dumps(header).encode()
    size = len(text) if length is None else length
    path.write_bytes(size.to_bytes(8, "little") + text + data)
    return path


BAD_FILES = {
    "short": (None, "not a .safetensors file (only 3 bytes)"),
    "huge header": ({"a": 1}, "its header claims 1,000,000,000,000 bytes"),
    "not json": ("x", "bad JSON header"),
    "bad dtype": ({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
                  "tensor 'w': dtype 'C64' is not supported"),
    "outside": ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                "tensor 'w': data_offsets [0, 16] lie outside the file's 8 data bytes"),
    "wrong size": ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                   "tensor 'w': data_offsets [0, 8] hold 8 bytes; shape [3] of F32 needs 12"),
    "huge shape": ({"w": {"dtype": "F32", "shape": [2**30, 2**30], "data_offsets": [0, 8]}},
                   "tensor 'w': shape [1073741824, 1073741824] is larger than convdsl accepts"),
    "negative": ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
                 "tensor 'w': shape [-2] is not a list of sizes"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_safetensors_are_clear_errors(case: str, tmp_path: Path) -> None:
    header, message = BAD_FILES[case]
    path = tmp_path / "w.safetensors"
    if header is None:
        path.write_bytes(b"abc")
    elif case == "huge header":
        header_file(path, header, length=10**12)
    elif case == "not json":
        path.write_bytes((3).to_bytes(8, "little") + b"{x}")
    else:
        header_file(path, header, data=bytes(8))
    with pytest.raises(ConvdslError) as info:
        network().load_weights(path)
    assert message in str(info.value)


def test_integer_parameters_are_refused(tmp_path: Path) -> None:
    arrays = {k: np.asarray(v) for k, v in network().weights.items()}
    arrays["bn.running_var"] = np.ones(4, np.int64)
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file(arrays, str(path))
    with pytest.raises(ConvdslError) as info:
        network().load_weights(path)
    assert "parameter 'bn.running_var' has dtype int64; expected a floating-point array" in str(
        info.value
    )


# ---- PyTorch state dicts ------------------------------------------------------------------------


def test_a_state_dict_of_tensors_binds_directly() -> None:
    model = trained_torch()
    net = network()
    net.set_weights(model.state_dict())
    assert_matches_torch(net, model)
    net.set_weights(dict(model.named_parameters()) | dict(model.named_buffers()))  # requires_grad
    assert_matches_torch(net, model)


def test_prefixes_and_renames() -> None:
    model = trained_torch()
    wrapped = torch.nn.DataParallel(model)  # names every parameter "module.<name>"
    net = network()
    with pytest.raises(ConvdslError, match=r"missing parameter 'conv1\.weight'"):
        net.set_weights(wrapped.state_dict())
    net.set_weights(wrapped.state_dict(), strip_prefix="module.")
    assert_matches_torch(net, model)
    renamed = {k.replace("conv1.", "stem."): v for k, v in model.state_dict().items()}
    net.set_weights(renamed, rename=lambda name: name.replace("stem.", "conv1."))
    assert_matches_torch(net, model)
    net.set_weights(renamed, rename={f"stem.{r}": f"conv1.{r}" for r in ("weight", "bias")})
    assert_matches_torch(net, model)
    with pytest.raises(ConvdslError) as info:
        net.set_weights(model.state_dict(), rename=lambda name: "same")
    assert "are both renamed to 'same'" in str(info.value)


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_save_files_are_refused_unread(tmp_path: Path, zip_format: bool) -> None:
    path = tmp_path / "model.pt"
    torch.save(trained_torch().state_dict(), path, _use_new_zipfile_serialization=zip_format)
    for suffix in (".pt", ".npz", ".safetensors"):  # whatever its name says
        named = path = path.rename(path.with_suffix(suffix))
        with pytest.raises(ConvdslError) as info:
            network().load_weights(named)
        (diag,) = info.value.diagnostics
        assert "loading a pickle can run arbitrary code" in diag.message
        assert "{k: v.numpy() for k, v in sd.items()}" in (diag.hint or "")


def test_no_optional_package_is_imported_or_needed(tmp_path: Path) -> None:
    """Without onnx and safetensors (made unimportable) convdsl imports, runs and binds arrays
    without importing torch, and the features that need them say what to install."""
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onnx", "safetensors", "torch"):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
import numpy as np, convdsl
from convdsl import ConvdslError
net = convdsl.compile_string({SOURCE!r}, backend="numpy")
net.set_weights(dict(net.weights))
net(x=np.ones((1, 3, 8, 8), np.float32))
for call in (lambda: net.to_onnx({str(tmp_path / "m.onnx")!r}),
             lambda: net.save_weights({str(tmp_path / "w.safetensors")!r})):
    try:
        call()
    except ConvdslError as err:
        print(err)
assert "torch" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, check=True)  # fmt: skip
    lines = done.stdout.splitlines()
    assert "error: ONNX export needs the 'onnx' package, which is not installed" in lines
    assert "  hint: install it with: pip install 'convdsl[onnx]'" in lines
    assert "  hint: install it with: pip install 'convdsl[safetensors]'" in lines
    assert not list(tmp_path.iterdir())
