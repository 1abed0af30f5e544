"""Round trips of every example: convdsl -> ONNX (``Network.to_onnx``) -> convdsl
(``import_onnx``). The re-imported ``.conv`` text compiles, has the parameters of the original
(count and elements), keeps the sizes left open open, and computes the original's outputs
(1e-5 of the largest) on both backends, at two sizes where the example is written for any.

FCN-8s at open sizes is the one gap: its centre crop's offsets are computed in the ONNX graph
from the input's ``Shape`` (``Mod``, ``Div``...), which the importer refuses; it round-trips at
fixed sizes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from conftest import random_weights

import convdsl
from convdsl.api import Network
from convdsl.diagnostics import ConvdslError
from convdsl.interop.onnx_import import import_onnx

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = sorted(path.stem for path in EXAMPLES.glob("*.conv"))

SIZES: dict[str, list[dict[str, int]]] = {
    "wavenet": [{"L": 37}, {"L": 64}],
    "fcn8s": [{"H": 64, "W": 96}, {"H": 32, "W": 32}],
}
"""Two sizes for each example written for any size; the others run at their own."""

OPEN = {"wavenet"}
"""Examples round-tripped with their sizes open (fcn8s is fixed: see the module docstring)."""


def original(name: str, sizes: dict[str, int] | None, backend: str) -> Network:
    net = convdsl.compile_file(EXAMPLES / f"{name}.conv", backend=backend, sizes=sizes)
    net.set_weights(random_weights(net, seed=3))
    return net


@functools.cache
def reimported(name: str, fixed: tuple[tuple[str, int], ...], tmp: str) -> tuple[str, dict]:
    """The example exported (at ``fixed`` sizes, if any) and imported back."""
    net = original(name, dict(fixed) or None, "numpy")
    path = Path(tmp) / f"{name}{len(fixed)}.onnx"
    net.to_onnx(path, overwrite=True)
    return import_onnx(path)


def cases() -> list[tuple[str, dict[str, int] | None]]:
    out: list[tuple[str, dict[str, int] | None]] = []
    for name in NAMES:
        out.extend((name, sizes) for sizes in SIZES.get(name, [None]))
    return out


def elements(weights: dict[str, np.ndarray]) -> int:
    return sum(int(np.asarray(a).size) for a in weights.values())


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize(("name", "sizes"), cases(), ids=lambda v: str(v))
def test_round_trip_computes_the_same(
    name: str, sizes: dict[str, int] | None, backend: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fixed = () if name in OPEN or sizes is None else tuple(sorted(sizes.items()))
    tmp = str(tmp_path_factory.getbasetemp())
    text, weights = reimported(name, fixed, tmp)
    net = original(name, dict(fixed) or None, backend)
    back = convdsl.compile_string(text, f"{name}.conv", backend=backend, weights=weights,
                                  verify=True)  # fmt: skip
    assert len(back.params) == len(net.params)
    assert elements(weights) == elements(net.weights)
    assert list(back.inputs) == list(net.inputs) and list(back.outputs) == list(net.outputs)
    if name in OPEN:
        assert back.inputs == net.inputs  # the open sizes stay open
    inputs = net.random_inputs(seed=5, sizes=sizes)
    expected, got = net(inputs), back(inputs)
    for output, array in expected.items():
        assert got[output].shape == array.shape
        assert np.abs(got[output] - array).max() <= 1e-5 * np.abs(array).max(), output


def test_fcn8s_at_open_sizes_is_refused_with_the_node(tmp_path: Path) -> None:
    net = original("fcn8s", None, "numpy")
    net.to_onnx(tmp_path / "fcn8s.onnx")
    with pytest.raises(ConvdslError) as caught:
        import_onnx(tmp_path / "fcn8s.onnx")
    assert "node 'sizes/mod' (Mod): this op type is not supported" in str(caught.value)
