"""Time building each example with the llvm backend: first with an empty code cache, then again.

    python benchmarks/compile_times.py                 # every example, 2 rounds
    python benchmarks/compile_times.py --only fcn8s,wavenet --rounds 3

Each build is a fresh process running ``convdsl.compile_file(FILE, backend="llvm")`` (imports,
weights and compile, timed inside the process from before the call to after it), so nothing
is warm but the operating system's file cache. A round uses a new empty cache directory
(``CONVDSL_CACHE_DIR``): the first build compiles everything, the second finds it all cached.
Prints one row per example: the first-build and cached seconds of every round.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SIZES = {"fcn8s": "H=224,W=224", "wavenet": "L=16000"}  # the examples written for any size
PROGRAM = (
    "import sys, time, convdsl; start = time.perf_counter(); "
    "sizes = {k: int(v) for k, v in (i.split('=') for i in sys.argv[2].split(',') if i)}; "
    "convdsl.compile_file(sys.argv[1], backend='llvm', sizes=sizes); "
    "print(time.perf_counter() - start)"
)


def build_seconds(path: Path, cache: str) -> float:
    env = {**os.environ, "CONVDSL_CACHE_DIR": cache}
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(path), SIZES.get(path.stem, "")],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{path.name}: {done.stderr.strip()}")
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated example names (default: all)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else sorted(p.stem for p in EXAMPLES.glob("*.conv"))
    print(f"{'example':<12} {'first build s':>20} {'cached s':>20}")
    for name in names:
        first, cached = [], []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as cache:
                first.append(build_seconds(EXAMPLES / f"{name}.conv", cache))
                cached.append(build_seconds(EXAMPLES / f"{name}.conv", cache))
        print(
            f"{name:<12} {' '.join(f'{t:.2f}' for t in first):>20} "
            f"{' '.join(f'{t:.2f}' for t in cached):>20}"
        )


if __name__ == "__main__":
    main()
