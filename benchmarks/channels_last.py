"""What a channels-last input costs: one network fed channels-first and channels-last.

    python benchmarks/channels_last.py --rounds 30
    python benchmarks/channels_last.py --net stem2 --batch 8

Each network (``NETWORKS``, a CNN's first layers) is built, on the llvm backend with the same
weights, as written for an ``[N, 3, H, W]`` input (``nchw``) and for an ``[N, H, W, 3]`` one:
as the compiler chooses (``nhwc``: a strided first conv makes its phase rows from the caller's
array, one of stride 1 reads a dense copy), with every first conv reading the caller's array
(``nhwc fused``, ``passes.boundary.FUSE_STRIDE_ONE``: short strides read as one load and a
shuffle), the same with those loads as hardware gathers (``nhwc gather``,
``strided.SHUFFLED_STRIDES = 0``), and with every first conv reading a dense copy made by a
conversion kernel (``nhwc copy``: one more pass over the input); and with a channels-first
input and a channels-last output, which the last conv writes with scatter stores
(``output nhwc``). Every build must give the
same numbers; then each runs once per round, in turn, on the same data (code cache off), so a
busy moment of this shared machine slows all alike. Prints the median and minimum ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

import convdsl
from convdsl.backends.llvm import strided
from convdsl.passes import boundary

NETWORKS = {
    "stem1": "f = conv2d(x, 32, kernel=3, padding=same, activation=relu)",
    "stem2": "f = conv2d(x, 32, kernel=3, stride=2, padding=same, activation=relu6)",
    "mobile": """
        s = conv2d(x, 32, kernel=3, stride=2, padding=same, activation=relu6)
        d = depthwise2d(s, kernel=3, padding=same, activation=relu6)
        f = conv2d(d, 64, kernel=1, activation=relu6)
    """,
}


def build(body: str, last: bool, weights: dict | None, size: int, out: str = "") -> convdsl.Network:
    decl = f"nhwc f32[N, {size}, {size}, 3]" if last else f"f32[N, 3, {size}, {size}]"
    src = f"input x: {decl}\n{body}\noutput y{out} = f"
    return convdsl.compile_string(src, weights=weights, threads=THREADS)


def variants(body: str, size: int) -> dict[str, tuple[convdsl.Network, bool]]:
    """Name -> (network, takes channels-last arrays)."""
    first = build(body, False, None, size)
    made = {"nchw": (first, False), "nhwc": (build(body, True, first.weights, size), True)}
    made["output nhwc"] = (build(body, False, first.weights, size, ": nhwc"), False)
    defaults = boundary.FUSE_STRIDE_ONE, strided.SHUFFLED_STRIDES, boundary.reads_channels_last
    try:
        boundary.FUSE_STRIDE_ONE = True
        made["nhwc fused"] = (build(body, True, first.weights, size), True)
        strided.SHUFFLED_STRIDES = 0
        made["nhwc gather"] = (build(body, True, first.weights, size), True)
        boundary.reads_channels_last = lambda node, value: False  # type: ignore[assignment]
        made["nhwc copy"] = (build(body, True, first.weights, size), True)
    finally:
        boundary.FUSE_STRIDE_ONE, strided.SHUFFLED_STRIDES, direct = defaults
        boundary.reads_channels_last = direct  # type: ignore[assignment]
    return made


THREADS = 2


def main() -> None:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default=",".join(NETWORKS), help="comma-separated names")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    THREADS = args.threads
    os.environ["CONVDSL_CACHE_DIR"] = "off"
    rng = np.random.default_rng(0)
    x_first = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    x_last = np.ascontiguousarray(np.moveaxis(x_first, 1, -1))
    for name in args.net.split(","):
        made = variants(NETWORKS[name], args.size)
        reference = made["nchw"][0](x=x_first)["y"]
        for label, (net, last) in made.items():
            got = net(x=x_last if last else x_first)["y"]
            got = np.moveaxis(got, -1, 1) if label == "output nhwc" else got
            np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4, err_msg=label)
        times: dict[str, list[float]] = {label: [] for label in made}
        for _ in range(args.rounds):
            for label, (net, last) in made.items():
                x = x_last if last else x_first
                start = time.perf_counter()
                net(x=x)
                times[label].append((time.perf_counter() - start) * 1e3)
        print(f"{name} ({args.size}x{args.size}, batch {args.batch}, {args.threads} threads)")
        base = statistics.median(times["nchw"])
        for label, samples in times.items():
            median = statistics.median(samples)
            print(f"  {label:12s} median {median:7.3f} ms  min {min(samples):7.3f} ms  "
                  f"{median / base:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
