"""Shared helpers for the end-to-end tests: compile ``.conv`` text, run it, compare with torch.

PyTorch is the oracle. References are computed in float64 on exactly the arrays convdsl ran
on, so a mismatch is convdsl's error, not the oracle's rounding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import convdsl
from convdsl import Network


@pytest.fixture(autouse=True, scope="session")
def _private_code_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The llvm backend's code cache in a fresh directory per test session, never the user's
    (subprocesses inherit it through the environment)."""
    import os

    saved = os.environ.get("CONVDSL_CACHE_DIR")
    os.environ["CONVDSL_CACHE_DIR"] = str(tmp_path_factory.mktemp("code_cache"))
    yield
    if saved is None:
        del os.environ["CONVDSL_CACHE_DIR"]
    else:
        os.environ["CONVDSL_CACHE_DIR"] = saved


def random_weights(net: Network, seed: int = 0) -> dict[str, np.ndarray]:
    """Random arrays for every parameter; batch-norm variances positive, so nothing is trivial
    (the network's own init makes batch norm the identity)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, param in net.params.items():
        if name.endswith(".running_var"):
            array = rng.uniform(0.5, 2.0, param.shape)
        else:
            array = rng.standard_normal(param.shape) * 0.5
        arrays[name] = array.astype(param.dtype.numpy)
    return arrays


def compile_net(src: str, seed: int = 0) -> Network:
    """Compile with verification on and bind random weights (see ``random_weights``)."""
    net = convdsl.compile_string(src, verify=True, backend="numpy")
    net.set_weights(random_weights(net, seed))
    return net


def compile_and_run(
    src: str, inputs: Mapping[str, np.ndarray], seed: int = 0
) -> tuple[dict[str, np.ndarray], Network]:
    """Compile ``src``, run it on ``inputs``; check every output's runtime shape against the
    shape convdsl inferred (with the batch symbol bound from the inputs)."""
    net = compile_net(src, seed)
    outputs = net(**inputs)
    batch = next(iter(inputs.values())).shape[0]
    for name, t in net.outputs.items():
        inferred = tuple(d if isinstance(d, int) else batch for d in t.shape)
        assert outputs[name].shape == inferred, (name, outputs[name].shape, inferred)
        assert outputs[name].dtype == t.dtype.numpy
    return outputs, net


def randn(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def tt(a: np.ndarray) -> torch.Tensor:
    """A float64 torch tensor holding exactly the values of ``a``."""
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def torch_pads(pads: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    """(before, after) per spatial axis -> F.pad's argument (last axis first)."""
    return tuple(v for before, after in reversed(pads) for v in (before, after))


def assert_close(got: np.ndarray, ref: torch.Tensor | np.ndarray, dtype: type = np.float32) -> None:
    """Shape, dtype and values: rtol 1e-4 / atol 1e-5 * max(1, max|ref|) in float32, 1e-10 in
    float64."""
    expected = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected[np.isfinite(expected)]).max(initial=0.0)))
    rtol, atol = (1e-10, 1e-10) if np.dtype(dtype) == np.float64 else (1e-4, 1e-5)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale)


# ---- writing .conv source and its reference geometry ------------------------------------


def per_axis(value: int | tuple[int, ...], rank: int) -> tuple[int, ...]:
    return (value,) * rank if isinstance(value, int) else tuple(value)


def tf_same(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow ``same`` for one axis, derived here independently of convdsl.geometry."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def reference_pads(padding: Any, spatial, kernel, stride, dilation) -> tuple[tuple[int, int], ...]:
    rank = len(spatial)
    if padding == "valid":
        return ((0, 0),) * rank
    if padding == "same":
        return tuple(map(tf_same, spatial, kernel, stride, dilation))
    if padding == "causal":
        return ((dilation[0] * (kernel[0] - 1), 0),)
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    if all(isinstance(p, int) for p in padding):
        return tuple((p, p) for p in padding)
    return tuple(tuple(p) for p in padding)


def conv_text(value: Any) -> str:
    """A Python value as .conv source: keywords bare, tuples/lists as [..], bools lowercase."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(conv_text(v) for v in value) + "]"
    return str(value)


def call(op: str, *args: Any, **kwargs: Any) -> str:
    parts = [conv_text(a) for a in args] + [f"{k}={conv_text(v)}" for k, v in kwargs.items()]
    return f"{op}({', '.join(parts)})"


def input_decl(name: str, shape: tuple[int, ...], dtype: str = "f32") -> str:
    return f"input {name}: {dtype}[N, {', '.join(map(str, shape[1:]))}]"


def assert_rejected(src: str, line: int, *words: str) -> str:
    """``src`` fails to compile with a user error on ``line`` whose message mentions every word
    (argument names and keywords: the prose itself is free to change)."""
    with pytest.raises(convdsl.ConvdslError) as info:
        convdsl.compile_string(src, backend="numpy")
    text = str(info.value)
    assert text.startswith(f"<string>:{line}:"), text
    first = text.splitlines()[0]
    for word in words:
        assert word in first, (word, text)
    return text


EXAMPLE_SIZES: dict[str, dict[str, int]] = {"fcn8s": {"H": 224, "W": 224}, "wavenet": {"L": 16000}}
"""The sizes tests run the examples written for any input size at (those of the papers)."""


def example_sizes(path: Path | str) -> dict[str, int] | None:
    """``sizes=`` for an example file: its sizes if it is written for any size, else None."""
    return EXAMPLE_SIZES.get(Path(path).stem)


def example_text(path: Path) -> str:
    """An example's source with its input sizes written in, for tests that compile text."""
    text = path.read_text(encoding="utf-8")
    for name, value in (example_sizes(path) or {}).items():
        text = re.sub(rf"\b{name}\b", str(value), text)
    return text
