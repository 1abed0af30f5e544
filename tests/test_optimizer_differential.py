"""The optimizer changes nothing a network computes: every example and a stream of random valid
networks, run by the NumPy interpreter at -O0 (shape inference only) and at -O2 (every pass),
with the same declared weights, agree to 1e-5 relative.

The interpreter at -O0 is the oracle here (it is itself checked against PyTorch elsewhere), so a
mismatch is an optimizer bug. Batch-norm statistics are random, so folding really changes
weights; everything compiles with ``verify=True``, so the verifier runs between passes. The
random networks are built as .conv text to exercise what the passes look for: conv -> batch
norm (folding), zero pads before convs, identity crops/pools/upscales, repeated subexpressions,
dead branches, skip connections into add/mul/concat, and values read twice or used as outputs
(which block fusion).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import example_text
from hypothesis import given, settings
from hypothesis import strategies as st

import convdsl
from convdsl.api import Network
from convdsl.diagnostics import Source
from convdsl.ir.graph import Graph
from convdsl.ir.verifier import verify
from convdsl.passes.pipeline import PASSES, compile_source

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.conv"))

Shape = tuple[int, int, int]  # channels, height, width


def random_weights(net: Network, seed: int) -> dict[str, np.ndarray]:
    """Arrays for every declared parameter; batch-norm statistics far from the identity."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, param in net.params.items():
        if name.endswith(".running_var"):
            array = rng.uniform(0.3, 3.0, param.shape)
        elif name.endswith(".running_mean"):
            array = rng.standard_normal(param.shape)
        else:
            array = rng.standard_normal(param.shape) * 0.5
        arrays[name] = array.astype(param.dtype.numpy)
    return arrays


def assert_same_outputs(reference: Network, optimized: Network, batch: int, seed: int) -> None:
    inputs = reference.random_inputs(seed=seed, batch=batch)
    want, got = reference(inputs), optimized(inputs)
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].shape == expected.shape and got[name].dtype == expected.dtype, name
        scale = float(np.abs(expected).max(initial=0.0))
        np.testing.assert_allclose(got[name], expected, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def compile_both(text: str, name: str, seed: int = 0) -> tuple[Network, Network]:
    """The network at -O0 and at -O2 with the same declared weights."""
    reference = convdsl.compile_string(text, name, opt_level=0, verify=True, backend="numpy")
    weights = random_weights(reference, seed)
    optimized = convdsl.compile_string(
        text, name, opt_level=2, verify=True, weights=weights, backend="numpy"
    )
    reference.set_weights(weights)
    return reference, optimized


# ---- the examples ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_the_same_at_O0_and_O2(path: Path) -> None:
    reference, optimized = compile_both(example_text(path), str(path))
    assert optimized.params == reference.params  # the weights-file schema never changes
    assert_same_outputs(reference, optimized, batch=1, seed=1)


def graphs_after_each_pass(text: str) -> list[tuple[str, Graph]]:
    seen: list[tuple[str, Graph]] = []
    compile_source(Source("net.conv", text), 2, after=lambda p, g: seen.append((p.name, g)))
    return seen


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_ir_after_each_pass_verifies(path: Path) -> None:
    seen = graphs_after_each_pass(example_text(path))
    assert [name for name, _ in seen] == [p.name for p in PASSES]
    for name, graph in seen:
        verify(graph, after_pass=name)
        assert graph.params == seen[0][1].params, name


def test_O0_is_shape_inference_only() -> None:
    text = (EXAMPLES[0].parent / "mobilenet.conv").read_text(encoding="utf-8")
    graph = compile_source(Source("mobilenet.conv", text), opt_level=0)
    assert not any(node.is_fused or node.parts for node in graph.nodes)
    assert not graph.derived and graph.memory is None
    assert all(param == f"{node.name}.{role}" for node in graph.nodes
               for role, param in node.params.items())  # fmt: skip


def test_O2_mobilenet_has_no_batch_norm_and_fewer_kernels() -> None:
    text = (EXAMPLES[0].parent / "mobilenet.conv").read_text(encoding="utf-8")
    plain = compile_source(Source("mobilenet.conv", text), opt_level=0)
    optimized = compile_source(Source("mobilenet.conv", text), opt_level=2, check=True)
    ops = {part.op for node in optimized.nodes for part in node.parts or (node,)}
    assert "batch_norm" not in ops
    assert sum(node.op == "batch_norm" for node in plain.nodes) == 27  # stem + 2 per block
    assert len(optimized.nodes) < len(plain.nodes)
    assert any(node.is_fused for node in optimized.nodes)
    assert len(optimized.derived) == 2 * 27  # a folded weight and bias per batch norm
    assert optimized.memory is not None
    assert optimized.memory.arena_bytes < optimized.memory.naive_bytes


# ---- random networks -------------------------------------------------------------------------

ACTIVATIONS = ["none", "relu", "relu6", "sigmoid", "tanh", "gelu", "silu", "hard_swish"]
UNARY = [
    "relu(%s)",
    "relu6(%s)",
    "sigmoid(%s)",
    "tanh(%s)",
    "silu(%s)",
    "gelu(%s)",
    "hard_sigmoid(%s)",
    "hard_swish(%s)",
    "leaky_relu(%s, alpha=0.2)",
    "elu(%s)",
    "softmax(%s)",
]


class Builder:
    """Statements of a random network, with the shape of every value made so far."""

    def __init__(self, draw: st.DrawFn, shape: Shape) -> None:
        self.draw = draw
        self.lines = [f"input x: f32[N, {shape[0]}, {shape[1]}, {shape[2]}]"]
        self.shapes: dict[str, Shape] = {"x": shape}
        self.count = 0

    def emit(self, expression: str, shape: Shape) -> str:
        name = f"v{self.count}"
        self.count += 1
        self.lines.append(f"{name} = {expression}")
        self.shapes[name] = shape
        return name

    def pick(self, predicate: Callable[[Shape], bool] = lambda shape: True) -> str | None:
        """A value made earlier that satisfies ``predicate`` (a skip connection), or None."""
        names = [name for name, shape in self.shapes.items() if predicate(shape)]
        return self.draw(st.sampled_from(names)) if names else None


def conv(b: Builder, src: str, shape: Shape) -> str:
    c, h, w = shape
    out = b.draw(st.integers(1, 6))
    kernel = b.draw(st.sampled_from([1, 3]))
    act = b.draw(st.sampled_from(ACTIVATIONS))
    bias = b.draw(st.booleans())
    groups = 2 if c % 2 == 0 and out % 2 == 0 and b.draw(st.booleans()) else 1
    stride = 2 if h >= 4 and w >= 4 and b.draw(st.booleans()) else 1
    text = (
        f"conv2d({src}, {out}, kernel={kernel}, stride={stride}, padding=same, groups={groups}, "
        f"bias={str(bias).lower()}, activation={act})"
    )
    return b.emit(text, (out, -(-h // stride), -(-w // stride)))


def conv_bn(b: Builder, src: str, shape: Shape) -> str:
    """A conv (no activation, so it folds) then a batch norm, maybe then an activation."""
    c, h, w = shape
    kind = b.draw(st.sampled_from(["conv", "depthwise", "transpose"]))
    bias = str(b.draw(st.booleans())).lower()
    if kind == "conv":
        out = b.draw(st.integers(1, 6))
        made = b.emit(f"conv2d({src}, {out}, kernel=3, padding=same, bias={bias})", (out, h, w))
    elif kind == "depthwise":
        m = b.draw(st.integers(1, 2))
        made = b.emit(f"depthwise2d({src}, kernel=3, multiplier={m}, padding=1, bias={bias})",
                      (c * m, h, w))  # fmt: skip
    else:
        out = b.draw(st.integers(1, 4))
        made = b.emit(f"conv_transpose2d({src}, {out}, kernel=3, padding=1, bias={bias})",
                      (out, h, w))  # fmt: skip
    made = b.emit(f"batch_norm({made})", b.shapes[made])
    if b.draw(st.booleans()):
        made = b.emit(b.draw(st.sampled_from(UNARY[:9])) % made, b.shapes[made])
    return made


def depthwise(b: Builder, src: str, shape: Shape) -> str:
    c, h, w = shape
    m = b.draw(st.integers(1, 2))
    act = b.draw(st.sampled_from(ACTIVATIONS))
    return b.emit(f"depthwise2d({src}, kernel=3, multiplier={m}, padding=same, activation={act})",
                  (c * m, h, w))  # fmt: skip


def transpose(b: Builder, src: str, shape: Shape) -> str:
    _, h, w = shape
    out = b.draw(st.integers(1, 4))
    if h * w <= 36 and b.draw(st.booleans()):
        return b.emit(f"conv_transpose2d({src}, {out}, kernel=2, stride=2)", (out, 2 * h, 2 * w))
    return b.emit(f"conv_transpose2d({src}, {out}, kernel=3, padding=1)", (out, h, w))


def pool(b: Builder, src: str, shape: Shape) -> str:
    c, h, w = shape
    choice = b.draw(st.integers(0, 3))
    if choice == 0 and h >= 2 and w >= 2:
        return b.emit(f"max_pool2d({src}, kernel=2)", (c, h // 2, w // 2))
    if choice == 1:
        return b.emit(f"avg_pool2d({src}, kernel=3, stride=1, padding=1)", shape)
    if choice == 2:
        return b.emit(f"max_pool2d({src}, kernel=1)", shape)  # an identity
    return b.emit(f"global_avg_pool({src})", (c, 1, 1))


def upscale(b: Builder, src: str, shape: Shape) -> str:
    c, h, w = shape
    mode = b.draw(st.sampled_from(["nearest", "bilinear"]))
    factor = 2 if h * w <= 36 and b.draw(st.booleans()) else 1  # factor 1 is an identity
    return b.emit(f"upscale({src}, {factor}, mode={mode})", (c, factor * h, factor * w))


def activation(b: Builder, src: str, shape: Shape) -> str:
    return b.emit(b.draw(st.sampled_from(UNARY)) % src, shape)


def pad_conv(b: Builder, src: str, shape: Shape) -> str:
    """An explicit pad, then (usually) a valid conv reading it: fold-pad's pattern."""
    c, h, w = shape
    top, left = b.draw(st.integers(0, 1)), b.draw(st.integers(0, 2))
    mode = b.draw(st.sampled_from(["zero", "zero", "reflect", "replicate"]))
    if mode == "reflect" and (h < 2 or left >= w):  # reflect pads must be smaller than the dim
        mode = "zero"
    padded = b.emit(f"pad({src}, [[{top}, 1], [{left}, {left}]], mode={mode})",
                    (c, h + top + 1, w + 2 * left))  # fmt: skip
    if b.draw(st.booleans()) and mode == "zero":
        b.emit(f"pad({src}, 0)", shape)  # a zero pad of nothing: an identity, and dead
    out = b.draw(st.integers(1, 5))
    ph, pw = b.shapes[padded][1:]
    kernel = 3 if ph >= 3 and pw >= 3 else 1
    return b.emit(f"conv2d({padded}, {out}, kernel={kernel}, activation=relu)",
                  (out, ph - kernel + 1, pw - kernel + 1))  # fmt: skip


def crop(b: Builder, src: str, shape: Shape) -> str:
    c, h, w = shape
    if h >= 2 and w >= 2 and b.draw(st.booleans()):
        return b.emit(f"crop({src}, size=[{h - 1}, {w - 1}], offset=center)", (c, h - 1, w - 1))
    like = b.pick(lambda s: s[1:] == (h, w)) or src
    return b.emit(f"crop({src}, like={like})", shape)  # an identity


def combine(b: Builder, src: str, shape: Shape) -> str:
    """A skip connection: add or mul with an earlier value of the same shape, or concat with one
    of the same spatial size (adapted by a 1x1 conv when no shape matches exactly)."""
    c, h, w = shape
    other = b.pick(lambda s: s[1:] == (h, w))
    assert other is not None  # src itself matches
    op = b.draw(st.sampled_from(["add", "mul", "concat"]))
    if op == "concat":
        return b.emit(f"concat({src}, {other})", (c + b.shapes[other][0], h, w))
    if b.shapes[other] != shape:
        other = b.emit(f"conv2d({other}, {c}, kernel=1)", shape)
    symbol = "+" if op == "add" else "*"
    return b.emit(f"{src} {symbol} {other}", shape)


def repeated(b: Builder, src: str, shape: Shape) -> str:
    """The same expression twice (for cse) and a branch nobody reads (for dce)."""
    fn = b.draw(st.sampled_from(UNARY[:9]))
    first = b.emit(fn % src, shape)
    second = b.emit(fn % src, shape)
    if b.draw(st.booleans()):
        b.emit(f"conv2d({src}, 2, kernel=1)", (2, *shape[1:]))  # dead
    return b.emit(f"{first} + {second}", shape)


STEPS = [conv, conv_bn, depthwise, transpose, pool, upscale, activation, pad_conv, crop,
         combine, repeated]  # fmt: skip


@st.composite
def networks(draw: st.DrawFn) -> str:
    shape: Shape = (draw(st.integers(1, 4)), draw(st.integers(2, 8)), draw(st.integers(2, 8)))
    b = Builder(draw, shape)
    src = "x"
    outputs = []
    for _ in range(draw(st.integers(3, 8))):
        if draw(st.integers(0, 4)) == 0:
            src = b.pick() or src  # continue from an earlier value: a branch
        src = draw(st.sampled_from(STEPS))(b, src, b.shapes[src])
        if draw(st.integers(0, 5)) == 0:
            outputs.append(src)  # an intermediate output: its producer cannot fuse it away
    body = "\n".join(b.lines)
    extra = "".join(f"\noutput {name}" for name in dict.fromkeys(outputs) if name != src)
    return f"{body}\noutput y = {src}{extra}\n"


@settings(max_examples=40, deadline=None)
@given(text=networks(), batch=st.sampled_from([1, 2]), seed=st.integers(0, 3))
def test_random_network_is_the_same_at_O0_and_O2(text: str, batch: int, seed: int) -> None:
    reference, optimized = compile_both(text, "random.conv", seed)
    assert_same_outputs(reference, optimized, batch=batch, seed=seed)
