"""The example networks in ``examples/``: each one compiles with verification, declares the outputs
its architecture implies, runs to finite values of that shape, is deterministic per seed, and
computes what the same network written with ``torch.nn.functional`` computes from the network's own
parameter arrays.

New ``.conv`` files are picked up by the glob; the expected-output table and the README index
must be extended with them. Each network runs at most a few times (fcn8s is ~4 GMAC).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convdsl
from convdsl.api import Network
from convdsl.ir.cost import graph_macs

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES_DIR.glob("*.conv"))
EXAMPLE_NAMES = [path.stem for path in EXAMPLE_FILES]

# Output shapes written from each architecture (not read back from the compiler).
EXPECTED_OUTPUTS: dict[str, dict[str, tuple[int | str, ...]]] = {
    "quickstart": {"out": ("N", 3, 32, 32)},
    "espcn": {"hr": ("N", 3, 192, 192)},  # 64 * r, r = 3
    "wavenet": {"probs": ("N", 256, "L")},  # 256 mu-law classes per sample, any length
    "mobilenet": {"probs": ("N", 1000, 1, 1)},
    "fcn8s": {"score": ("N", 21, "H", "W")},  # 21 PASCAL VOC classes at input size
    "unet": {"mask": ("N", 2, 64, 64)},
    "unet3d": {"logits": ("N", 2, 32, 32, 32), "probs": ("N", 2, 32, 32, 32)},
}

SIZES: dict[str, dict[str, int]] = {"fcn8s": {"H": 224, "W": 224}, "wavenet": {"L": 16000}}
"""The sizes the examples written for any input size run at here."""

RTOL = 1e-4
ATOL = 1e-4
PROB_ATOL = 1e-6  # softmax outputs are ~1/classes, so ATOL alone would hide errors in them


def test_the_glob_finds_every_example() -> None:
    assert len(EXAMPLE_FILES) >= 7, f"expected at least 7 examples in {EXAMPLES_DIR}"
    assert set(EXPECTED_OUTPUTS) <= set(EXAMPLE_NAMES)


@functools.cache
def compiled(name: str) -> Network:
    return convdsl.compile_file(EXAMPLES_DIR / f"{name}.conv", verify=True, seed=0, backend="numpy")


@functools.cache
def first_run(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Batch-1 inputs (seed 0) and the outputs of the seed-0 network on them."""
    net = compiled(name)
    inputs = net.random_inputs(seed=0, batch=1, sizes=SIZES.get(name))
    return inputs, net(inputs)


def concrete(shape: tuple[int | str, ...], batch: int, name: str) -> tuple[int, ...]:
    sizes = {"N": batch, **SIZES.get(name, {})}
    return tuple(sizes[d] if isinstance(d, str) else d for d in shape)


# ---- every example -------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_declares_the_outputs_of_its_architecture(name: str) -> None:
    assert name in EXPECTED_OUTPUTS, f"add the outputs of examples/{name}.conv to EXPECTED_OUTPUTS"
    net = compiled(name)
    assert net.name == name  # the `network` header matches the file name
    written = {k: tuple(d if isinstance(d, int) else str(d) for d in t.shape)
               for k, t in net.outputs.items()}  # fmt: skip
    assert written == EXPECTED_OUTPUTS[name]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_runs_to_finite_outputs_of_the_declared_shape(name: str) -> None:
    _, outputs = first_run(name)
    assert set(outputs) == set(EXPECTED_OUTPUTS[name])
    for out_name, array in outputs.items():
        assert array.shape == concrete(EXPECTED_OUTPUTS[name][out_name], 1, name), out_name
        assert array.dtype == np.float32
        assert np.isfinite(array).all(), out_name
        assert array.std() > 0, f"{out_name} is constant"


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_same_seed_gives_identical_weights_and_outputs(name: str) -> None:
    inputs, outputs = first_run(name)
    again = convdsl.compile_file(EXAMPLES_DIR / f"{name}.conv", seed=0, backend="numpy")
    assert again.weights.keys() == compiled(name).weights.keys()
    for param, array in compiled(name).weights.items():
        np.testing.assert_array_equal(again.weights[param], array, err_msg=param)
    for out_name, array in again(inputs).items():
        np.testing.assert_array_equal(array, outputs[out_name], err_msg=out_name)
    other = Network(compiled(name).graph, seed=1, backend="numpy")
    conv_weights = [p for p in other.weights if p.endswith(".weight") and other.weights[p].ndim > 1]
    assert conv_weights
    assert not np.array_equal(other.weights[conv_weights[0]], again.weights[conv_weights[0]])


def test_readme_indexes_every_example() -> None:
    readme = (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8")
    missing = [name for name in EXAMPLE_NAMES if f"{name}.conv" not in readme]
    assert not missing, f"examples/README.md does not mention {missing}"
    quickstart = (EXAMPLES_DIR / "quickstart.conv").read_text(encoding="utf-8")
    assert quickstart in readme, "the README's copy of quickstart.conv is out of date"
    top_readme = (EXAMPLES_DIR.parent / "README.md").read_text(encoding="utf-8")
    assert quickstart in top_readme, "README.md's copy of quickstart.conv is out of date"


@pytest.mark.parametrize("name", ["quickstart", "espcn"])
def test_batch_of_two_matches_two_single_runs(name: str) -> None:
    net = compiled(name)
    inputs = net.random_inputs(seed=5, batch=2)
    batched = net(inputs)
    for item in range(2):
        single = net({k: v[item : item + 1] for k, v in inputs.items()})
        for out_name, array in batched.items():
            assert array.shape == concrete(EXPECTED_OUTPUTS[name][out_name], 2, name)
            np.testing.assert_allclose(
                array[item : item + 1], single[out_name], rtol=1e-5, atol=1e-6
            )


# ---- facts about particular architectures ---------------------------------------------------


def test_mobilenet_matches_the_published_model_size() -> None:
    graph = compiled("mobilenet").graph
    # keras.applications.MobileNet(alpha=1.0): 4,253,864 parameters, batch norm statistics included.
    assert sum(math.prod(p.shape) for p in graph.params.values()) == 4_253_864
    # Howard et al. 2017, Table 1/8: 569 million multiply-adds.
    assert round(graph_macs(graph) / 1e6) == 569


def test_wavenet_is_causal_with_a_receptive_field_of_1025_samples() -> None:
    net = wavenet_short()
    audio = net.random_inputs(seed=3)["audio"]
    probs = net(audio=audio)["probs"]
    later_changed = audio.copy()
    later_changed[..., 600:] += 1.0
    changed = net(audio=later_changed)["probs"]
    np.testing.assert_array_equal(changed[..., :600], probs[..., :600])
    assert not np.allclose(changed[..., 600], probs[..., 600])
    first_changed = audio.copy()
    first_changed[..., 0] += 1.0
    changed = net(audio=first_changed)["probs"]
    assert not np.allclose(changed[..., 1024], probs[..., 1024])  # 1025 samples: 0..1024
    np.testing.assert_array_equal(changed[..., 1025:], probs[..., 1025:])


@functools.cache
def wavenet_short() -> Network:
    """The wavenet example compiled for 1100 samples, for the slower checks."""
    return convdsl.compile_file(
        EXAMPLES_DIR / "wavenet.conv", verify=True, backend="numpy", sizes={"L": 1100}
    )


# ---- PyTorch oracles ------------------------------------------------------------------------


class Params:
    """A network's parameter arrays as torch tensors, looked up by layer name."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.used: set[str] = set()

    def get(self, name: str) -> torch.Tensor | None:
        if name not in self.weights:
            return None
        self.used.add(name)
        return torch.from_numpy(self.weights[name])

    def conv(self, x: torch.Tensor, layer: str, **kwargs: object) -> torch.Tensor:
        fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
        return fn(x, self.get(f"{layer}.weight"), self.get(f"{layer}.bias"), **kwargs)

    def conv_transpose(self, x: torch.Tensor, layer: str, **kwargs: object) -> torch.Tensor:
        fn = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[x.dim()]
        return fn(x, self.get(f"{layer}.weight"), self.get(f"{layer}.bias"), **kwargs)

    def batch_norm(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.get(f"{layer}.running_mean"),
            self.get(f"{layer}.running_var"),
            self.get(f"{layer}.weight"),
            self.get(f"{layer}.bias"),
            training=False,
            eps=1e-5,
        )


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow ``same`` padding of the 2 spatial dims, written out: the odd pixel goes after."""
    pads: list[int] = []
    for n in reversed(x.shape[2:]):
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def randomized_batch_norms(net: Network, seed: int = 7) -> Network:
    """``net`` with batch-norm parameters far from the identity, so the oracle checks them."""
    rng = np.random.default_rng(seed)
    weights = dict(net.weights)
    for name in net.weights:
        if not name.endswith(".running_var"):
            continue
        layer = name.removesuffix(".running_var")
        channels = weights[name].shape
        weights[f"{layer}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        weights[f"{layer}.running_mean"] = rng.normal(0, 0.5, channels).astype(np.float32)
        weights[f"{layer}.weight"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        weights[f"{layer}.bias"] = rng.normal(0, 0.5, channels).astype(np.float32)
    return Network(net.graph, weights=weights, backend="numpy")


def quickstart_torch(p: Params, image: torch.Tensor) -> dict[str, torch.Tensor]:
    stem = F.relu(p.conv(image, "stem", padding=1))
    down = F.relu(p.conv(tf_same_pad(stem, 3, 2), "down", stride=2))
    up = F.interpolate(down, scale_factor=2, mode="bilinear", align_corners=False)
    return {"out": p.conv(up + stem, "out")}


def espcn_torch(p: Params, lr: torch.Tensor) -> dict[str, torch.Tensor]:
    f1 = torch.tanh(p.conv(lr, "f1", padding=2))
    f2 = torch.tanh(p.conv(f1, "f2", padding=1))
    return {"hr": F.pixel_shuffle(p.conv(f2, "subpixels", padding=1), 3)}


def wavenet_torch(p: Params, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    def causal(x: torch.Tensor, layer: str, dilation: int = 1) -> torch.Tensor:
        return p.conv(F.pad(x, (dilation, 0)), layer, dilation=dilation)  # kernel 2

    h = causal(audio, "h")
    skips = torch.zeros_like(h)
    for i in range(10):
        layer = f"h_{i + 1}"  # each block call gets its own prefix: h_1, h_2, ...
        f = causal(h, f"{layer}.f", 2**i)
        g = causal(h, f"{layer}.g", 2**i)
        z = torch.tanh(f) * torch.sigmoid(g)
        skips = skips + p.conv(z, f"{layer}.skip")
        h = p.conv(z, f"{layer}.res") + h
    head = F.relu(p.conv(F.relu(skips), "head"))
    return {"probs": torch.softmax(p.conv(head, "logits"), dim=1)}


def mobilenet_torch(p: Params, image: torch.Tensor) -> dict[str, torch.Tensor]:
    def conv_bn(
        x: torch.Tensor, prefix: str, kernel: int, stride: int, suffix: str = ""
    ) -> torch.Tensor:
        c = p.conv(tf_same_pad(x, kernel, stride), f"{prefix}.conv{suffix}", stride=stride)
        return F.relu6(p.batch_norm(c, f"{prefix}.bn{suffix}"))

    def dw_sep(x: torch.Tensor, prefix: str, stride: int, suffix: str = "") -> torch.Tensor:
        d = p.conv(
            tf_same_pad(x, 3, stride), f"{prefix}.dw{suffix}", stride=stride, groups=x.shape[1]
        )
        return conv_bn(F.relu6(p.batch_norm(d, f"{prefix}.dw_bn{suffix}")), prefix, 1, 1, suffix)

    x = conv_bn(image, "stem", 3, 2)
    for prefix, stride in [("b1", 1), ("b2", 2), ("b3", 1), ("b4", 2), ("b5", 1), ("b6", 2)]:
        x = dw_sep(x, prefix, stride)
    for i in range(5):
        x = dw_sep(x, f"x_{i}" if i else "x", 1)
    x = dw_sep(dw_sep(x, "b12", 2), "b13", 1)
    logits = p.conv(x.mean(dim=(2, 3), keepdim=True), "logits")
    return {"probs": torch.softmax(logits, dim=1)}


def fcn8s_torch(p: Params, image: torch.Tensor) -> dict[str, torch.Tensor]:
    pools = []
    x = image
    for stage, convs in enumerate([2, 2, 3, 3, 3], start=1):
        for i in range(convs):
            x = F.relu(p.conv(x, f"pool{stage}.h" + (f"_{i}" if i else ""), padding=1))
        x = F.max_pool2d(x, 2)
        pools.append(x)
    fc7 = F.relu(p.conv(F.relu(p.conv(x, "fc6", padding=1)), "fc7"))
    up = p.conv_transpose(p.conv(fc7, "score_fr"), "upscore2", stride=2, padding=1)
    up = p.conv_transpose(
        up + p.conv(pools[3], "score_pool4"), "upscore_pool4", stride=2, padding=1
    )
    up8 = p.conv_transpose(up + p.conv(pools[2], "score_pool3"), "upscore8", stride=8)
    height, width = image.shape[-2:]
    assert up8.shape[-2:] == (height + 8, width + 8)
    return {"score": up8[..., 4 : height + 4, 4 : width + 4]}


def unet_torch(p: Params, image: torch.Tensor) -> dict[str, torch.Tensor]:
    def double_conv(x: torch.Tensor, layer: str) -> torch.Tensor:
        return F.relu(p.conv(F.relu(p.conv(x, f"{layer}.a", padding=1)), layer, padding=1))

    def up(x: torch.Tensor, skip: torch.Tensor, layer: str) -> torch.Tensor:
        u = F.relu(
            p.conv(F.interpolate(x, scale_factor=2, mode="nearest"), f"{layer}.u", padding=1)
        )
        return double_conv(torch.cat([u, skip], dim=1), layer)

    enc1 = double_conv(image, "enc1")
    enc2 = double_conv(F.max_pool2d(enc1, 2), "enc2")
    enc3 = double_conv(F.max_pool2d(enc2, 2), "enc3")
    bottleneck = double_conv(F.max_pool2d(enc3, 2), "bottleneck")
    dec1 = up(up(up(bottleneck, enc3, "dec3"), enc2, "dec2"), enc1, "dec1")
    return {"mask": p.conv(dec1, "mask")}


def unet3d_torch(p: Params, scan: torch.Tensor) -> dict[str, torch.Tensor]:
    def conv_block(x: torch.Tensor, prefix: str) -> torch.Tensor:
        for suffix in ("", "_1"):
            x = F.relu(
                p.batch_norm(p.conv(x, f"{prefix}.conv{suffix}", padding=1), f"{prefix}.bn{suffix}")
            )
        return x

    enc1 = conv_block(scan, "enc1")
    enc2 = conv_block(F.max_pool3d(enc1, 2), "enc2")
    bottom = conv_block(F.max_pool3d(enc2, 2), "bottom")
    up2 = p.conv_transpose(bottom, "up2", stride=2)
    dec2 = conv_block(torch.cat([up2, enc2], dim=1), "dec2")
    dec1 = conv_block(p.conv_transpose(dec2, "up1", stride=2) + enc1, "dec1")
    logits = p.conv(dec1, "logits")
    return {"logits": logits, "probs": torch.softmax(logits, dim=1)}


Oracle = Callable[[Params, torch.Tensor], dict[str, torch.Tensor]]
ORACLES: dict[str, tuple[Oracle, Callable[[], Network]]] = {
    "quickstart": (quickstart_torch, lambda: compiled("quickstart")),
    "espcn": (espcn_torch, lambda: compiled("espcn")),
    "wavenet": (wavenet_torch, wavenet_short),
    "mobilenet": (mobilenet_torch, lambda: randomized_batch_norms(compiled("mobilenet"))),
    "fcn8s": (fcn8s_torch, lambda: compiled("fcn8s")),
    "unet": (unet_torch, lambda: compiled("unet")),
    "unet3d": (unet3d_torch, lambda: randomized_batch_norms(compiled("unet3d"))),
}


@pytest.mark.parametrize(("height", "width"), [(64, 96), (160, 32)])
def test_fcn8s_segments_other_image_sizes_as_pytorch_does(height: int, width: int) -> None:
    net = compiled("fcn8s")
    image = np.random.default_rng(height).standard_normal((2, 3, height, width), np.float32)
    with torch.no_grad():
        expected = fcn8s_torch(Params(net.weights), torch.from_numpy(image))["score"].numpy()
    got = net(image=image)["score"]
    assert got.shape == (2, 21, height, width)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_fcn8s_refuses_a_size_five_pools_do_not_divide() -> None:
    with pytest.raises(convdsl.ConvdslError) as info:
        compiled("fcn8s")(image=np.zeros((1, 3, 224, 200), np.float32))
    (first, *_) = info.value.diagnostics
    assert first.message.startswith("with H=224, W=200: ")
    assert first.hint is not None and "W % 32 == 0" in first.hint


@pytest.mark.parametrize("name", sorted(ORACLES))
def test_matches_pytorch(name: str) -> None:
    oracle, make_net = ORACLES[name]
    net = make_net()
    if net is compiled(name):
        inputs, outputs = first_run(name)  # fcn8s is costly: reuse the run checked above
    else:
        inputs = net.random_inputs(seed=0, sizes=SIZES.get(name) if net.sizes else None)
        outputs = net(inputs)
    (x,) = inputs.values()
    params = Params(net.weights)
    with torch.no_grad():
        expected = oracle(params, torch.from_numpy(x))
    assert params.used == set(net.weights), "the oracle must use every parameter"
    assert expected.keys() == outputs.keys()
    for out_name, ref in expected.items():
        ref_array = ref.numpy()
        atol = PROB_ATOL if out_name == "probs" else ATOL
        np.testing.assert_allclose(
            outputs[out_name], ref_array, rtol=RTOL, atol=atol, err_msg=f"{name}: {out_name}"
        )
