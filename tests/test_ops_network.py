"""Random small networks, written both as .conv text and as a torch function, compared end to
end: chains of 2-5 ops from a shape-safe set, always with at least one skip add."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from conftest import assert_close, compile_and_run, randn, tf_same, torch_pads
from hypothesis import given, settings
from hypothesis import strategies as st

Env = dict[str, torch.Tensor]
Shape = tuple[int, int, int]  # channels, height, width

ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
    "hard_swish": F.hardswish,
    "relu6": F.relu6,
}
UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    **{f"{name}(%s)": fn for name, fn in ACTS.items()},
    "leaky_relu(%s, alpha=0.1)": lambda x: F.leaky_relu(x, 0.1),
    "elu(%s)": F.elu,
    "gelu(%s, approximate=tanh)": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass
class Step:
    """Statements computing ``name`` and the torch function computing the same tensor."""

    lines: list[str]
    run: Callable[[Env, Env], torch.Tensor]  # (values so far, weights) -> the value
    shape: Shape


def conv_step(draw, name: str, src: str, shape: Shape) -> Step:
    o, k = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    act = draw(st.sampled_from(sorted(ACTS)))
    pads = tuple(tf_same(n, k, 1, 1) for n in shape[1:])

    def run(env: Env, w: Env) -> torch.Tensor:
        xp = F.pad(env[src], torch_pads(pads))
        return ACTS[act](F.conv2d(xp, w[f"{name}.weight"], w[f"{name}.bias"]))

    line = f"{name} = conv2d({src}, {o}, kernel={k}, padding=same, activation={act})"
    return Step([line], run, (o, *shape[1:]))


def depthwise_step(draw, name: str, src: str, shape: Shape) -> Step:
    m = draw(st.integers(1, 2))

    def run(env: Env, w: Env) -> torch.Tensor:
        return F.conv2d(
            env[src], w[f"{name}.weight"], w[f"{name}.bias"], padding=1, groups=shape[0]
        )

    line = f"{name} = depthwise2d({src}, kernel=3, multiplier={m}, padding=1)"
    return Step([line], run, (shape[0] * m, *shape[1:]))


def batch_norm_step(draw, name: str, src: str, shape: Shape) -> Step:
    def run(env: Env, w: Env) -> torch.Tensor:
        return F.batch_norm(
            env[src],
            w[f"{name}.running_mean"],
            w[f"{name}.running_var"],
            w[f"{name}.weight"],
            w[f"{name}.bias"],
            training=False,
        )

    return Step([f"{name} = batch_norm({src})"], run, shape)


def unary_step(draw, name: str, src: str, shape: Shape) -> Step:
    pattern = draw(st.sampled_from(sorted(UNARY)))
    return Step([f"{name} = {pattern % src}"], lambda env, w: UNARY[pattern](env[src]), shape)


def gate_step(draw, name: str, src: str, shape: Shape) -> Step:
    return Step(
        [f"{name} = {src} * sigmoid({src})"],
        lambda env, w: env[src] * torch.sigmoid(env[src]),
        shape,
    )


def pool_step(draw, name: str, src: str, shape: Shape) -> Step:
    c, h, w_ = shape
    if h >= 2 and w_ >= 2 and draw(st.booleans()):
        return Step(
            [f"{name} = max_pool2d({src}, kernel=2)"],
            lambda env, w: F.max_pool2d(env[src], 2),
            (c, h // 2, w_ // 2),
        )
    return Step(
        [f"{name} = avg_pool2d({src}, kernel=3, stride=1, padding=1)"],
        lambda env, w: F.avg_pool2d(env[src], 3, 1, 1, count_include_pad=False),
        shape,
    )


def grow_step(draw, name: str, src: str, shape: Shape) -> Step:
    c, h, w_ = shape
    if draw(st.booleans()):
        mode = draw(st.sampled_from(["nearest", "bilinear"]))
        return Step(
            [f"{name} = upscale({src}, 2, mode={mode})"],
            lambda env, w: F.interpolate(env[src], scale_factor=2, mode=mode),
            (c, 2 * h, 2 * w_),
        )
    o = draw(st.integers(1, 4))

    def run(env: Env, w: Env) -> torch.Tensor:
        return F.conv_transpose2d(env[src], w[f"{name}.weight"], w[f"{name}.bias"], stride=2)

    return Step(
        [f"{name} = conv_transpose2d({src}, {o}, kernel=2, stride=2)"], run, (o, 2 * h, 2 * w_)
    )


def residual_step(draw, name: str, src: str, shape: Shape) -> Step:
    """``src + relu(conv(src))``: the skip add."""
    branch = f"{name}_branch"

    def run(env: Env, w: Env) -> torch.Tensor:
        t = F.conv2d(env[src], w[f"{branch}.weight"], w[f"{branch}.bias"], padding=1)
        return env[src] + F.relu(t)

    lines = [
        f"{branch} = conv2d({src}, {shape[0]}, kernel=3, padding=same)",
        f"{name} = {src} + relu({branch})",
    ]
    return Step(lines, run, shape)


STEPS = [conv_step, depthwise_step, batch_norm_step, unary_step, gate_step, pool_step, grow_step]


@st.composite
def networks(draw) -> tuple[str, list[tuple[str, Step]], Shape]:
    shape: Shape = (draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    kinds = draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=4))
    kinds.insert(draw(st.integers(0, len(kinds))), residual_step)
    lines = [f"input x: f32[N, {shape[0]}, {shape[1]}, {shape[2]}]"]
    steps: list[tuple[str, Step]] = []
    src, current = "x", shape
    for index, kind in enumerate(kinds):
        if kind is grow_step and current[1] * current[2] > 36:
            kind = unary_step  # keep the arrays small
        name = f"v{index}"
        step = kind(draw, name, src, current)
        lines += step.lines
        steps.append((name, step))
        src, current = name, step.shape
    lines.append(f"output y = {src}")
    return "\n".join(lines) + "\n", steps, shape


@settings(max_examples=50, deadline=None)
@given(network=networks(), batch=st.sampled_from([1, 3]))
def test_random_network_matches_torch(network, batch: int) -> None:
    text, steps, shape = network
    x = randn(np.random.default_rng(0), (batch, *shape))
    out, net = compile_and_run(text, {"x": x})
    weights = {name: torch.from_numpy(a.astype(np.float64)) for name, a in net.weights.items()}
    env: Env = {"x": torch.from_numpy(x.astype(np.float64))}
    for name, step in steps:
        env[name] = step.run(env, weights)
    final_name, final = steps[-1]
    assert out["y"].shape == (batch, *final.shape)
    assert_close(out["y"], env[final_name])
