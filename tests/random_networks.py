"""Random valid networks with several inputs, for differential tests of the backends.

``multi_networks()`` draws a ``Program``: 1 to 3 independent *components* (a connected part
of the graph: its inputs share one batch dim, one dtype and one spatial rank, since no op
mixes them), plus inputs nobody reads. Across components everything varies independently:
the batch dim is a fresh symbol (``N``, ``M``, ``B2``...), a symbol another component uses
too, or a fixed size (1 to 3); the dtype is f32 or f64; the rank is 1-, 2- or 3-D. The 2-D
components reuse the optimizer test's steps (``test_optimizer_differential.STEPS``); every rank
also gets the generic steps below (strides, dilations, every padding form, ceil-mode pools,
transposed convs with output padding, pixel shuffle, pads and crops, concat lists). Outputs are
final values, intermediate values, inputs passed straight through (``output c = y``,
``output y``), and one value under two names. ``crop(like=...)`` may take its shape from another
component, even from an input that is otherwise unused.

``concrete_inputs`` binds a program's batch symbols to distinct sizes and draws the arrays;
``compare_outputs`` is the agreement rule the backend tests and ``benchmarks/soak_llvm.py`` share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from hypothesis import strategies as st
from test_optimizer_differential import ACTIVATIONS, STEPS, UNARY, Builder

from convdsl.ir import geometry

Dims = tuple[int, ...]  # channels, *spatial: a value's shape without its batch dim
Step = Callable[["Component", str, Dims], str]

SYMBOLS = ("N", "M", "B2", "B3", "B4")  # at most 5, so sizes 1..5 can all differ
SPATIAL = {1: (2, 16), 2: (2, 8), 3: (2, 5)}  # per-axis input sizes by rank
MAX_STEPS = {1: 5, 2: 6, 3: 4}
MAX_ELEMENTS = 4096  # per image: growth beyond it takes a step's size-keeping form
EXTRA_UNARY = ["gelu(%s, approximate=tanh)", "elu(%s, alpha=0.5)", "leaky_relu(%s)",
               "batch_norm(%s)", "batch_norm(%s, eps=0.001)"]  # fmt: skip
NUMPY_DTYPES: dict[str, np.dtype] = {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64)}
TOLERANCES = {"f32": (1e-4, 1e-5), "f64": (1e-9, 1e-10)}  # rtol, atol relative to max|expected|


@dataclass(frozen=True)
class Declared:
    """One input as declared: ``batch`` is a fixed size or a batch symbol."""

    name: str
    dtype: str
    batch: int | str
    dims: Dims

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return (self.batch if isinstance(self.batch, int) else sizes[self.batch], *self.dims)


@dataclass(frozen=True)
class Program:
    text: str
    inputs: tuple[Declared, ...]

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d.batch for d in self.inputs if isinstance(d.batch, str)))


def concrete_inputs(
    program: Program, seed: int, sizes: Mapping[str, int] | None = None
) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Sizes for the batch symbols (distinct, 1..5, unless given) and standard-normal arrays of
    every input's declared dtype."""
    rng = np.random.default_rng(seed)
    if sizes is None:  # distinct, so an input bound to another input's batch size shows
        drawn = rng.permutation(np.arange(1, len(SYMBOLS) + 1))
        sizes = {symbol: int(size) for symbol, size in zip(program.symbols, drawn, strict=False)}
    arrays = {
        d.name: rng.standard_normal(d.shape(sizes)).astype(NUMPY_DTYPES[d.dtype])
        for d in program.inputs
    }
    return dict(sizes), arrays


def compare_outputs(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> list[str]:
    """Every way ``got`` differs from the reference ``want``; empty when they agree."""
    if sorted(got) != sorted(want):
        return [f"output names {sorted(got)} != {sorted(want)}"]
    problems = []
    for name, expected in want.items():
        actual = got[name]
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            problems.append(
                f"{name}: {actual.dtype}{list(actual.shape)} != "
                f"{expected.dtype}{list(expected.shape)}"
            )
            continue
        rtol, atol = TOLERANCES["f64" if expected.dtype == np.float64 else "f32"]
        finite = np.abs(expected[np.isfinite(expected)])
        scale = float(finite.max(initial=0.0))
        close = np.isclose(actual, expected, rtol=rtol, atol=atol * scale, equal_nan=True)
        if not close.all():
            error = np.abs(actual.astype(np.float64) - expected)
            problems.append(
                f"{name}: {int((~close).sum())} of {close.size} differ, max error "
                f"{float(np.nanmax(error)):.3g} (max |expected| {scale:.3g})"
            )
    return problems


# ---- one component -----------------------------------------------------------------------------


class Component(Builder):
    """The statements of one component and the shape (without batch) of every value in it.

    Values are named with the component's prefix, so components never clash; ``foreign`` holds
    the values of the components made before, which only ``crop(like=...)`` may read."""

    def __init__(
        self, draw: st.DrawFn, prefix: str, batch: int | str, foreign: dict[str, Dims]
    ) -> None:
        self.draw = draw
        self.lines: list[str] = []
        self.shapes: dict[str, Dims] = {}  # type: ignore[assignment]  # any rank, not only 2-D
        self.count = 0
        self.prefix = prefix
        self.batch = batch
        self.foreign = foreign
        self.inputs: list[str] = []
        self.declared: list[Declared] = []

    def emit(self, expression: str, shape: Dims) -> str:  # type: ignore[override]
        name = f"{self.prefix}{self.count}"
        self.count += 1
        # An annotation makes the checker verify this bookkeeping (a wrong one: a user error).
        note = f"  : [{', '.join(map(str, (self.batch, *shape)))}]" if self.coin(4) else ""
        self.lines.append(f"{name} = {expression}{note}")
        self.shapes[name] = shape
        return name

    def coin(self, one_in: int = 2) -> bool:
        return self.draw(st.integers(0, one_in - 1)) == 0

    def axes(self, low: int, high: int, rank: int) -> list[int]:
        """One value per spatial axis, often the same on all of them."""
        if self.coin():
            return [self.draw(st.integers(low, high))] * rank
        return [self.draw(st.integers(low, high)) for _ in range(rank)]

    def ints(self, values: Sequence[int]) -> str:
        """An *ints* argument: one integer when every axis agrees (sometimes), else a list."""
        if len(set(values)) == 1 and self.coin():
            return str(values[0])
        return f"[{', '.join(map(str, values))}]"

    def keyword(self, name: str, text: str, default: str) -> str:
        """``, name=text``, left out now and then when it is the default."""
        return "" if text == default and self.coin() else f", {name}={text}"


def fits(dims: Sequence[int]) -> bool:
    return int(np.prod(dims)) <= MAX_ELEMENTS and min(dims) >= 1


def pads_text(b: Component, pads: Sequence[tuple[int, int]]) -> str:
    """Explicit pads in the shortest form that says them, or as pairs anyway (sometimes)."""
    if all(p == pads[0] for p in pads) and pads[0][0] == pads[0][1] and b.coin():
        return str(pads[0][0])
    if all(before == after for before, after in pads) and b.coin():
        return f"[{', '.join(str(before) for before, _ in pads)}]"
    return f"[{', '.join(f'[{before}, {after}]' for before, after in pads)}]"


def window_padding(
    b: Component,
    spatial: Dims,
    kernel: list[int],
    stride: list[int],
    dilation: list[int],
    limits: list[int],
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """A padding argument of a conv or pool and the pads it means; explicit pads stay within
    ``limits`` per axis (a pool's window must see more than padding)."""
    kind = b.draw(st.sampled_from(["valid", "same", "explicit", "explicit", "causal"]))
    if kind == "same":
        return "same", tuple(
            geometry.same_padding(*a) for a in zip(spatial, kernel, stride, dilation, strict=True)
        )
    if kind == "causal" and len(spatial) == 1:
        return "causal", (geometry.causal_padding(kernel[0], dilation[0]),)
    if kind == "valid":
        return "valid", ((0, 0),) * len(spatial)
    pads = tuple((b.draw(st.integers(0, limit)), b.draw(st.integers(0, limit))) for limit in limits)
    return pads_text(b, pads), pads


# ---- steps for any rank ------------------------------------------------------------------------


def nd_conv(b: Component, src: str, shape: Dims) -> str:
    """conv or depthwise with any stride, dilation, padding form, groups and activation."""
    c, spatial, rank = shape[0], shape[1:], len(shape) - 1
    kernel, stride, dilation = b.axes(1, 3, rank), b.axes(1, 2, rank), b.axes(1, 2, rank)
    padding, pads = window_padding(b, spatial, kernel, stride, dilation, [2] * rank)
    out = [
        geometry.conv_output_size(n, k, s, d, *p)
        for n, k, s, d, p in zip(spatial, kernel, stride, dilation, pads, strict=True)
    ]
    if min(out) < 1:  # the window is larger than the padded input: same always fits
        padding, out = "same", [-(-n // s) for n, s in zip(spatial, stride, strict=True)]
    if b.coin():
        channels = b.draw(st.integers(1, 6))
        groups = b.draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0 and channels % g == 0]))
        head = f"conv{rank}d({src}, {channels}, kernel={b.ints(kernel)}"
        tail = b.keyword("groups", str(groups), "1")
    else:
        multiplier = b.draw(st.integers(1, 2))
        channels = c * multiplier
        head = f"depthwise{rank}d({src}, kernel={b.ints(kernel)}"
        tail = b.keyword("multiplier", str(multiplier), "1")
    if not fits([channels, *out]):
        return src
    tail += b.keyword("stride", b.ints(stride), "1") + b.keyword("dilation", b.ints(dilation), "1")
    tail += b.keyword("padding", padding, "valid")
    tail += b.keyword("bias", b.draw(st.sampled_from(["true", "false"])), "true")
    tail += b.keyword("activation", b.draw(st.sampled_from(ACTIVATIONS)), "none")
    return b.emit(f"{head}{tail})", (channels, *out))


def nd_transpose(b: Component, src: str, shape: Dims) -> str:
    c, spatial, rank = shape[0], shape[1:], len(shape) - 1
    kernel, stride, dilation = b.axes(1, 3, rank), b.axes(1, 2, rank), b.axes(1, 2, rank)
    channels = b.draw(st.integers(1, 4))
    groups = b.draw(st.sampled_from([g for g in (1, 2) if c % g == 0 and channels % g == 0]))
    args = zip(spatial, kernel, stride, dilation, strict=True)
    if b.coin(3):
        padding, extra = "same", ""
        out = [n * s for n, s in zip(spatial, stride, strict=True)]
    else:
        pads = tuple((b.draw(st.integers(0, 2)), b.draw(st.integers(0, 2))) for _ in spatial)
        output_padding = [
            b.draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation, strict=True)
        ]
        padding = pads_text(b, pads) if any(map(any, pads)) or b.coin() else "valid"
        extra = b.keyword("output_padding", b.ints(output_padding), "0")
        out = [
            geometry.conv_transpose_output_size(*a, *p, op)
            for a, p, op in zip(args, pads, output_padding, strict=True)
        ]
    if not fits([channels, *out]):  # also when the padding crops everything
        return b.emit(f"conv_transpose{rank}d({src}, {channels}, kernel=1)", (channels, *spatial))
    text = (
        f"conv_transpose{rank}d({src}, {channels}, kernel={b.ints(kernel)}"
        f"{b.keyword('stride', b.ints(stride), '1')}"
        f"{b.keyword('dilation', b.ints(dilation), '1')}"
        f"{b.keyword('padding', padding, 'valid')}{extra}"
        f"{b.keyword('groups', str(groups), '1')}"
        f"{b.keyword('activation', b.draw(st.sampled_from(ACTIVATIONS)), 'none')})"
    )
    return b.emit(text, (channels, *out))


def padding_only(n: int, k: int, s: int, d: int, before: int, out: int) -> bool:
    """Whether a pooling window's taps all miss the input (dilation can jump over a short one).
    Such a max is -inf, as in PyTorch, and the backends do not yet treat an infinity the same
    in later layers (silu(-inf): NaN on numpy, as in PyTorch, -inf on llvm), so the generator
    leaves these out until they do."""
    return any(all(not 0 <= o * s - before + t * d < n for t in range(k)) for o in range(out))


def nd_pool(b: Component, src: str, shape: Dims) -> str:
    c, spatial, rank = shape[0], shape[1:], len(shape) - 1
    kind = b.draw(st.sampled_from(["max", "avg"]))
    kernel = b.axes(1, 3, rank)
    stride = b.axes(1, 2, rank) if b.coin() else None
    dilation = b.axes(1, 2, rank) if kind == "max" else [1] * rank
    steps = stride or kernel
    limits = [geometry.effective_kernel(k, d) - 1 for k, d in zip(kernel, dilation, strict=True)]
    padding, pads = window_padding(b, spatial, kernel, steps, dilation, limits)
    ceil_mode = b.coin()
    out = [
        geometry.pool_output_size(n, k, s, d, *p, ceil_mode)
        for n, k, s, d, p in zip(spatial, kernel, steps, dilation, pads, strict=True)
    ]
    windows = zip(spatial, kernel, steps, dilation, pads, out, strict=True)
    if min(out) < 1 or any(padding_only(n, k, s, d, p[0], o) for n, k, s, d, p, o in windows):
        return b.emit(f"{kind}_pool{rank}d({src}, 1)", shape)  # an identity
    text = f"{kind}_pool{rank}d({src}, {b.ints(kernel)}"
    if stride is not None:
        text += f", stride={b.ints(stride)}"
    text += b.keyword("padding", padding, "valid")
    text += b.keyword("ceil_mode", str(ceil_mode).lower(), "false")
    if kind == "max":
        text += b.keyword("dilation", b.ints(dilation), "1")
    else:
        text += b.keyword("include_pad", b.draw(st.sampled_from(["true", "false"])), "false")
    return b.emit(f"{text})", (c, *out))


def nd_global(b: Component, src: str, shape: Dims) -> str:
    kind = b.draw(st.sampled_from(["avg", "max"]))
    return b.emit(f"global_{kind}_pool({src})", (shape[0],) + (1,) * (len(shape) - 1))


def nd_upscale(b: Component, src: str, shape: Dims) -> str:
    rank = len(shape) - 1
    factor = b.axes(1, 3 if rank == 1 else 2, rank)
    if not fits([d * f for d, f in zip(shape, [1, *factor], strict=True)]):
        factor = [1] * rank
    named = {2: "bilinear", 3: "trilinear"}.get(rank, "linear")  # linear under its 2-D/3-D name
    mode = b.draw(st.sampled_from(["nearest", "linear", named]))
    text = f"upscale({src}, {b.ints(factor)}{b.keyword('mode', mode, 'nearest')}"
    if mode != "nearest":
        text += b.keyword("align_corners", b.draw(st.sampled_from(["true", "false"])), "false")
    return b.emit(f"{text})", tuple(d * f for d, f in zip(shape, [1, *factor], strict=True)))


def nd_pad(b: Component, src: str, shape: Dims) -> str:
    spatial = shape[1:]
    mode = b.draw(st.sampled_from(["zero", "reflect", "replicate"]))
    # reflect never repeats the edge, so each pad must be smaller than its axis
    limits = [min(2, n - 1) if mode == "reflect" else 2 for n in spatial]
    pads = tuple((b.draw(st.integers(0, m)), b.draw(st.integers(0, m))) for m in limits)
    out = (
        shape[0],
        *(n + before + after for n, (before, after) in zip(spatial, pads, strict=True)),
    )
    if not fits(out):
        return src
    value = f", value={b.draw(st.sampled_from(['-1.5', '0.25', '2']))}" if mode == "zero" else ""
    return b.emit(f"pad({src}, {pads_text(b, pads)}{b.keyword('mode', mode, 'zero')}{value})", out)


def nd_crop(b: Component, src: str, shape: Dims) -> str:
    """A crop to a drawn size, or to the shape of a value of this or another component."""
    spatial = shape[1:]

    def smaller(dims: Dims) -> bool:
        return len(dims) == len(shape) and all(
            a <= n for a, n in zip(dims[1:], spatial, strict=True)
        )

    values = {**b.foreign, **b.shapes}
    likes = [name for name, dims in values.items() if smaller(dims)]
    like = b.draw(st.sampled_from(likes)) if likes and b.coin() else None
    sizes = list(values[like][1:]) if like else [b.draw(st.integers(1, n)) for n in spatial]
    room = [n - s for n, s in zip(spatial, sizes, strict=True)]
    kind = b.draw(st.sampled_from(["zero", "center", "one", "axes"]))
    offset = ""
    if kind == "center":
        offset = ", offset=center"
    elif kind == "one":  # one offset for every axis: the largest that fits all
        offset = f", offset={min(room)}"
    elif kind == "axes":
        offset = f", offset=[{', '.join(str(b.draw(st.integers(0, r))) for r in room)}]"
    what = f"like={like}" if like else f"size={b.ints(sizes)}"
    return b.emit(f"crop({src}, {what}{offset})", (shape[0], *sizes))


def nd_combine(b: Component, src: str, shape: Dims) -> str:
    """add, mul or concat with a value of the same spatial size, often another input."""
    rank = len(shape) - 1
    inputs = [n for n in b.inputs if b.shapes[n][1:] == shape[1:]]
    other = b.draw(st.sampled_from(inputs)) if inputs and b.coin() else None
    other = other or b.pick(lambda s: s[1:] == shape[1:]) or src
    op = b.draw(st.sampled_from(["add", "mul", "concat", "concat3"]))
    if op.startswith("concat"):
        names = [src, other, src][: 3 if op == "concat3" else 2]
        channels = sum(b.shapes[n][0] for n in names)
        listed = ", ".join(names)
        return b.emit(
            f"concat([{listed}])" if b.coin() else f"concat({listed})", (channels, *shape[1:])
        )
    if b.shapes[other] != shape:
        other = b.emit(f"conv{rank}d({other}, {shape[0]}, kernel=1)", shape)
    written = f"{src} {'+' if op == 'add' else '*'} {other}"
    return b.emit(f"{op}({src}, {other})" if b.coin() else written, shape)


def nd_unary(b: Component, src: str, shape: Dims) -> str:
    return b.emit(b.draw(st.sampled_from(UNARY + EXTRA_UNARY)) % src, shape)


def pixel_shuffle(b: Component, src: str, shape: Dims) -> str:
    c, h, w = shape
    if not fits((c, 2 * h, 2 * w)):
        return src
    if c % 4:
        c = 4 * b.draw(st.integers(1, 2))
        src = b.emit(f"conv2d({src}, {c}, kernel=1)", (c, h, w))
    order = b.keyword("order", b.draw(st.sampled_from(["crd", "dcr"])), "crd")
    return b.emit(f"pixel_shuffle({src}, 2{order})", (c // 4, 2 * h, 2 * w))


ND_STEPS: list[Step] = [nd_conv, nd_conv, nd_transpose, nd_pool, nd_global, nd_upscale, nd_pad,
                        nd_crop, nd_combine, nd_combine, nd_unary]  # fmt: skip
PLANAR_STEPS: list[Step] = [cast(Step, step) for step in STEPS] + [pixel_shuffle]


# ---- whole programs ----------------------------------------------------------------------------


class Namer:
    """Input names, batch symbols and output names, each unique in the program."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.symbols: list[str] = []
        self.input_count = 0
        self.outputs: list[tuple[str, str]] = []  # (output name, value)

    def batch(self) -> int | str:
        kind = self.draw(st.sampled_from(["fresh", "shared", "fixed"]))
        if kind == "shared" and self.symbols:
            return self.draw(st.sampled_from(self.symbols))
        if kind == "fixed" or len(self.symbols) == len(SYMBOLS):
            return self.draw(st.integers(1, 3))
        self.symbols.append(SYMBOLS[len(self.symbols)])
        return self.symbols[-1]

    def input(self, dtype: str, batch: int | str, dims: Dims) -> Declared:
        name = "xyzuvw"[self.input_count] if self.input_count < 6 else f"in{self.input_count}"
        self.input_count += 1
        return Declared(name, dtype, batch, dims)

    def output(self, value: str, as_itself: bool = False) -> None:
        taken = {name for name, _ in self.outputs}
        name = value if as_itself and value not in taken else f"o{len(self.outputs)}"
        self.outputs.append((name, value))

    def lines(self) -> list[str]:
        return [
            f"output {name}" if name == value else f"output {name} = {value}"
            for name, value in self.outputs
        ]


def input_dims(draw: st.DrawFn, rank: int) -> Dims:
    low, high = SPATIAL[rank]
    return (draw(st.integers(1, 4)), *(draw(st.integers(low, high)) for _ in range(rank)))


def component(draw: st.DrawFn, namer: Namer, prefix: str, foreign: dict[str, Dims]) -> Component:
    """Inputs, a random walk of steps from them, and outputs picked along the way."""
    rank = draw(st.sampled_from([2, 2, 2, 1, 3]))
    dtype = draw(st.sampled_from(["f32", "f64"]))
    b = Component(draw, prefix, namer.batch(), foreign)
    first = input_dims(draw, rank)
    for i in range(draw(st.sampled_from([1, 1, 2, 3]))):
        if i == 0:
            dims = first
        elif b.coin(4):  # a size of its own: joined through crops or pads, if at all
            dims = input_dims(draw, rank)
        else:  # the first's spatial size, so it can be added, multiplied or concatenated
            dims = (input_dims(draw, rank)[0], *first[1:])
        declared = namer.input(dtype, b.batch, dims)
        b.declared.append(declared)
        b.inputs.append(declared.name)
        b.shapes[declared.name] = declared.dims
    steps = PLANAR_STEPS + ND_STEPS if rank == 2 else ND_STEPS
    src, picked = b.inputs[0], []
    count = 0 if b.coin(8) else draw(st.integers(1, MAX_STEPS[rank]))  # 0: inputs only
    for _ in range(count):
        if b.coin(5):
            src = b.pick() or src  # a branch from an earlier value or another input
        src = draw(st.sampled_from(steps))(b, src, b.shapes[src])
        if b.coin(5):
            picked.append(src)  # an intermediate output
    if b.coin(8):  # a dead component: computed, never output
        return b
    for value in [src, *picked]:
        namer.output(value, as_itself=b.coin())
    if b.coin(4):  # an input straight through as an output
        namer.output(draw(st.sampled_from(b.inputs)), as_itself=b.coin())
    if b.coin(4):  # one value under two names
        namer.output(draw(st.sampled_from([value for _, value in namer.outputs])))
    return b


@st.composite
def multi_networks(draw: st.DrawFn) -> Program:
    """A random program that ``convdsl check`` accepts: see the module docstring."""
    namer = Namer(draw)
    unused = []  # any rank, dtype and batch: nothing reads them (crop(like=...) their shape)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        dtype, rank = draw(st.sampled_from(["f32", "f64"])), draw(st.integers(1, 3))
        unused.append(namer.input(dtype, namer.batch(), input_dims(draw, rank)))
    foreign: dict[str, Dims] = {d.name: d.dims for d in unused}
    body, declared = [], list(unused)
    for prefix in "abc"[: draw(st.integers(1, 3))]:
        b = component(draw, namer, prefix, dict(foreign))
        body += b.lines
        declared += b.declared
        foreign.update(b.shapes)
    if not namer.outputs:
        namer.output(draw(st.sampled_from(sorted(foreign))))
    spelled = {"f32": ["f32", "f32", "float32"], "f64": ["f64", "f64", "float64"]}
    heads = [
        f"input {d.name}: {draw(st.sampled_from(spelled[d.dtype]))}"
        f"[{', '.join(map(str, (d.batch, *d.dims)))}]"
        for d in draw(st.permutations(declared))
    ]
    return Program("\n".join([*heads, *body, *namer.lines()]) + "\n", tuple(declared))
