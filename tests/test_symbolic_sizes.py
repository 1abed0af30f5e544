"""Networks written for any input size (``input x: f32[N, 3, H, W]``).

The truth is the same network written with fixed sizes, which the rest of the suite checks
against PyTorch: at every size, the symbolic network's shapes evaluated there, its
specialization, and its outputs on both backends must be those of the fixed network; and it must
accept exactly the sizes the fixed network accepts (its constraints hold exactly where the fixed
network checks). Random programs of ``random_networks`` give every op and attribute the checker
accepts; their fixed sizes are replaced by names and probed at other sizes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from random_networks import multi_networks

import convdsl
from convdsl.diagnostics import Source
from convdsl.ir.symbolic import Undecided, evaluate, symbol
from convdsl.ir.types import bind_shape
from convdsl.passes.pipeline import compile_source

# ---- size expressions against Python's integer arithmetic --------------------------------------

H = symbol("H")
W = symbol("W")
EXPRESSIONS = [
    lambda h: (h - 3) // 2 + 1,
    lambda h: -(-h // 2),
    lambda h: ((h - 2) // 2 + 1 - 2) // 2 + 1,
    lambda h: (h // 3 + 5) // 4 * 7 - h % 5,
    lambda h: (-h + 7) // 3,
    lambda h: (2 * h + 1) // 4 + (h - 1) // 2 * (h // 3),
]
"""Each computed once on ``H`` (normalized on the way) and once on Python ints."""


@pytest.mark.parametrize("index", range(len(EXPRESSIONS)))
def test_expressions_in_normal_form_keep_their_value(index: int) -> None:
    form = EXPRESSIONS[index]
    expr = form(H)
    for h in [*range(1, 200), 2**20 + 1, 2**20 + 2]:
        assert evaluate(expr, {"H": h}) == form(h), (str(expr), h)


def test_normal_form_prints_what_the_user_would_write() -> None:
    assert str((H - 2) // 2 + 1) == "H//2"
    assert str(((H - 2) // 2 + 1 - 2) // 2 + 1) == "H//4"
    assert str(-(-H // 2)) == "ceil(H/2)"
    assert str((H + 2 - 3) // 1 + 1) == "H"
    assert str(2 * (H // 32) * (W // 4)) == "2*(H//32)*(W//4)"
    assert (H - H + 3) == 3 and isinstance(H - H + 3, int)


def test_comparisons_decide_or_refuse() -> None:
    assert bool(H // 2 <= H) and bool(H + 1 > H)
    assert not bool(2 * (H // 2) > H)
    with pytest.raises(Undecided):
        bool(2 * (H // 32) == H // 16)  # true only when H % 32 < 16


# ---- a network against the same network with fixed sizes -----------------------------------------

SEGMENTER = """
network seg
input image: f32[N, 3, H, W]
input mask: f32[N, 1, H, W]
block down(x, ch) {
  h = conv2d(x, ch, kernel=3, padding=same, activation=relu)
  return max_pool2d(h, 2, ceil_mode=true)
}
x = concat(image, mask)
d1 = down(x, 8)
d2 = down(d1, 8)
s = conv2d(d2, 5, kernel=3, stride=2, padding=same)
t = depthwise2d(d2, kernel=3, dilation=2, padding=same)
u = upscale(s, 2, mode=bilinear)
v = conv_transpose2d(t, 5, kernel=3, stride=2, padding=1, output_padding=1)
both = crop(v, like=u) + u
p = avg_pool2d(pad(both, [[1, 2], [0, 1]], mode=reflect), 3, stride=2, padding=1)
output low = p
output full = crop(upscale(both, 4), like=image, offset=center)
"""
WAVE = """
input audio: f32[N, 1, L]
h = conv1d(audio, 4, kernel=2, padding=causal)
for i in range(4) {
  h = h + conv1d(tanh(h), 4, kernel=2, dilation=2 ** i, padding=causal)
}
output y = conv1d(h, 3, kernel=3, stride=2) : [N, 3, (L - 3)//2 + 1]
"""


def fixed(text: str, sizes: dict[str, int]) -> str:
    """``text`` with every size name replaced by its value (names are whole words)."""
    for name, value in sizes.items():
        text = re.sub(rf"\b{name}\b", str(value), text)
    return text


@pytest.mark.parametrize(
    "text, sizes",
    [
        (SEGMENTER, {"H": 16, "W": 16}),
        (SEGMENTER, {"H": 13, "W": 9}),
        (SEGMENTER, {"H": 31, "W": 20}),
        (SEGMENTER, {"H": 12, "W": 17}),
        (WAVE, {"L": 3}),
        (WAVE, {"L": 64}),
        (WAVE, {"L": 101}),
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_any_size_network_computes_what_the_fixed_network_computes(
    text: str, sizes: dict[str, int], backend: str
) -> None:
    reference = convdsl.compile_string(fixed(text, sizes), backend="numpy", seed=3)
    net = convdsl.compile_string(text, backend=backend, seed=3)
    inputs = reference.random_inputs(seed=1, batch=2)
    want = reference(inputs)
    got = net(inputs)
    for name, array in want.items():
        assert got[name].shape == array.shape
        np.testing.assert_allclose(got[name], array, rtol=1e-5, atol=1e-5)
        symbolic_type = net.outputs[name]
        assert bind_shape(symbolic_type.shape, {"N": 2, **sizes}) == array.shape


def test_sizes_the_fixed_network_refuses_are_refused_with_the_constraint() -> None:
    net = convdsl.compile_string(SEGMENTER, backend="numpy")
    accepted = 0
    for h in range(1, 40):
        sizes = {"H": h, "W": 16}
        try:
            convdsl.compile_string(fixed(SEGMENTER, sizes), backend="numpy")
            fixed_ok = True
        except convdsl.ConvdslError:
            fixed_ok = False
        holds = all(bool(c.cond.holds(sizes)) for c in net.graph.constraints)
        assert holds == fixed_ok, (h, [str(c.cond) for c in net.graph.constraints])
        accepted += fixed_ok
    assert 0 < accepted < 39  # the probe saw both kinds of size


def test_a_size_that_breaks_a_constraint_names_line_sizes_and_constraint() -> None:
    text = "\n".join(
        [
            "input x: f32[N, 2, H, W]",
            "a = conv2d(x, 2, kernel=3, stride=2, padding=same)",
            "b = max_pool2d(x, 2)",
            "output y = a + b",
        ]
    )
    net = convdsl.compile_string(text, "net.conv", backend="numpy")
    assert net(x=np.ones((1, 2, 8, 12), np.float32))["y"].shape == (1, 2, 4, 6)
    with pytest.raises(convdsl.ConvdslError) as info:
        net(x=np.ones((1, 2, 8, 13), np.float32))
    (diag,) = info.value.diagnostics
    assert diag.span is not None and (diag.span.line, diag.span.column) == (4, 12)
    assert diag.message == (
        "with H=8, W=13: add: shapes [N,2,4,7] and [N,2,4,6] do not broadcast: W is 7 vs 6"
    )
    assert diag.hint == ("this layer needs W % 2 == 0; the network accepts H % 2 == 0, W % 2 == 0")


def test_check_states_shapes_as_expressions_and_the_sizes_accepted(tmp_path: Path) -> None:
    path = tmp_path / "net.conv"
    path.write_text(
        "input x: f32[N, 3, H, W]\n"
        "a = max_pool2d(conv2d(x, 4, kernel=3, padding=same), 2)\n"
        "b = conv2d(x, 4, kernel=2, stride=2)\n"
        "output y = a + b : [N, 4, H/2, W//2]\n"
    )
    out = run_cli(["check", str(path)], cwd=tmp_path.parent)
    assert "[N,4,H//2,W//2]" in out
    assert "sizes:   H % 2 == 0" in out
    assert "net.conv:4: shape annotation needs H % 2 == 0" in out
    concrete = run_cli(["check", str(path), "--shape", "H=6,W=7"], cwd=tmp_path)
    assert "[N,4,3,3]" in concrete


def test_run_takes_sizes_from_inputs_or_shape_from_another_directory(tmp_path: Path) -> None:
    path = tmp_path / "wave.conv"
    path.write_text(WAVE)
    audio = tmp_path / "audio.npy"
    np.save(audio, np.ones((2, 1, 37), np.float32))
    out = run_cli(["run", str(path), "--input", f"audio={audio}", "--backend", "numpy"], cwd="/")
    assert "[2,3,18]" in out
    out = run_cli(["run", str(path), "--shape", "L=11"], cwd="/")
    assert "[1,3,5]" in out
    failed = subprocess.run(
        [sys.executable, "-m", "convdsl", "run", str(path)], capture_output=True, text=True
    )
    assert failed.returncode == 2 and "--shape L=..." in failed.stderr


def run_cli(args: list[str], cwd: Path | str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "convdsl", *args], capture_output=True, text=True, cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_each_size_compiles_once_and_threads_may_call_with_different_sizes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = convdsl.compile_string(WAVE, backend="llvm", threads=2, seed=5)
    reference = {
        length: convdsl.compile_string(fixed(WAVE, {"L": length}), backend="numpy", seed=5)
        for length in (20, 33, 64)
    }
    arrays = {n: np.random.default_rng(n).standard_normal((3, 1, n)).astype(np.float32)
              for n in reference}  # fmt: skip
    expected = {n: reference[n](audio=arrays[n])["y"] for n in reference}
    failures: list[str] = []

    def worker(seed: int) -> None:
        order = np.random.default_rng(seed).permutation(list(reference))
        for length in [*order, *order]:
            got = net(audio=arrays[length])["y"]
            if not np.allclose(got, expected[length], rtol=1e-5, atol=1e-5):
                failures.append(f"L={length}")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    built: list[object] = []
    monkeypatch.setattr(net, "_build", lambda *a: built.append(a))
    net(audio=arrays[33])
    assert built == []  # a size seen before compiles nothing


# ---- random programs: every op and attribute the checker accepts ---------------------------

INPUT = re.compile(r"^input (\w+): (\w+)\[([^\]]*)\]$", re.MULTILINE)


def with_size_names(text: str) -> tuple[str, dict[str, int]]:
    """The program with each input's spatial sizes named (``x`` axis 1 -> ``X_x_1``), and the
    names' values in the original."""
    sizes: dict[str, int] = {}

    def rename(match: re.Match[str]) -> str:
        name, dtype, dims = match.group(1), match.group(2), match.group(3).split(", ")
        named = dims[:2]
        for axis, dim in enumerate(dims[2:]):
            sizes[f"S_{name}_{axis}"] = int(dim)
            named.append(f"S_{name}_{axis}")
        return f"input {name}: {dtype}[{', '.join(named)}]"

    return INPUT.sub(rename, text), sizes


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(program=multi_networks(), data=st.data())
def test_random_programs_accept_exactly_the_sizes_their_fixed_form_accepts(
    program: object, data: st.DataObject
) -> None:
    text, original = with_size_names(program.text)  # type: ignore[attr-defined]
    generic = compile_source(Source("sym.conv", text), opt_level=0)
    assert all(bool(c.cond.holds(original)) for c in generic.constraints)
    probes = [original] + [
        {name: data.draw(st.integers(1, 12)) for name in original} for _ in range(3)
    ]
    for sizes in probes:
        concrete_text = fixed(text, sizes)
        try:
            concrete = compile_source(Source("fixed.conv", concrete_text), opt_level=0)
        except convdsl.ConvdslError:
            concrete = None
        holds = all(bool(c.cond.holds(sizes)) for c in generic.constraints)
        assert holds == (concrete is not None), (sizes, [str(c.cond) for c in generic.constraints])
        if concrete is None:
            continue
        for (name, v_sym), (_, v_fix) in zip(generic.outputs, concrete.outputs, strict=True):
            batch = {d: 1 for d in re.findall(r"\b[A-Z]\w*\b", text) if d not in sizes}
            shape = bind_shape(generic.type_of(v_sym).shape, {**batch, **sizes})
            assert shape == bind_shape(concrete.type_of(v_fix).shape, batch), name
