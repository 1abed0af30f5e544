"""The optimizer on the command line, run as real subprocesses: ``-O``, ``ir --after/--all/
--passes`` and ``check --report``.

The file below is a small FCN: a conv + batch norm + ReLU stem (the batch norm folds, the ReLU
fuses), a pool, two score convs at two depths, and a learned x2 upsampling added to the shallow
score, then a x2 upscale. Its kernels, fusion groups and the one blocked candidate are counted
by hand in the tests. Independent invocations run in parallel (each costs about a second).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convdsl.passes.pipeline import PASSES

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

FCN = """\
network tiny_fcn
input image: f32[N, 3, 16, 16]
c1 = conv2d(image, 8, kernel=3, padding=same, bias=false)
bn1 = batch_norm(c1)
r1 = relu(bn1)
pool = max_pool2d(r1, 2)                                                  # [N, 8, 8, 8]
score_pool = conv2d(pool, 4, kernel=1)
deep = conv2d(pool, 8, kernel=3, stride=2, padding=same, activation=relu) # [N, 8, 4, 4]
score_deep = conv2d(deep, 4, kernel=1)
up = conv_transpose2d(score_deep, 4, kernel=4, stride=2, padding=1, bias=false)
fuse = up + score_pool
output score = upscale(fuse, 2)                                           # [N, 4, 16, 16]
"""

# Activation bytes per batch entry (f32) of every value the -O0 graph writes: c1, bn1, r1 at
# 8x16x16, pool 8x8x8, score_pool 4x8x8, deep 8x4x4, score_deep 4x4x4, up and fuse 4x8x8,
# score 4x16x16.
WRITTEN_O0 = 4 * (3 * 8 * 16 * 16 + 8 * 8 * 8 + 4 * 8 * 8 + 8 * 4 * 4 + 4 * 4 * 4 + 2 * 4 * 8 * 8
                  + 4 * 16 * 16)  # fmt: skip
# At -O2 c1/bn1 and up are internal to fused kernels: c1 vanished with the batch norm, bn1 and
# up never leave their kernel; the strided conv's input (pool) is written again as phase rows:
# 8 channels x 8 rows x 2 phases x 17 (4 outputs rounded up to 16 lanes, plus the last tap's
# one element further).
PHASE_ROWS = 4 * 8 * 8 * 2 * 17
WRITTEN_O2 = WRITTEN_O0 - 4 * (2 * 8 * 16 * 16 + 4 * 8 * 8) + PHASE_ROWS


def cli_many(cwd: Path, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``convdsl`` invocations at once; results in the order given."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "convdsl", *args],
            cwd=cwd,
            env=ENV,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for args in commands
    ]
    results = []
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


@pytest.fixture
def fcn(tmp_path: Path) -> Path:
    (tmp_path / "fcn.conv").write_text(FCN, encoding="utf-8")
    return tmp_path


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def declared_params(ir_text: str) -> str:
    """The ``params`` section of ``convdsl ir`` output (derived parameters follow it)."""
    return ir_text.split("params\n")[1].split("derived\n")[0].split("outputs\n")[0]


def top_level_ops(ir_text: str) -> list[str]:
    """The op of every top-level node line of ``convdsl ir`` output (parts are indented more)."""
    return [
        line.split(" = ", 1)[1].split("(", 1)[0]
        for line in ir_text.splitlines()
        if line.startswith("  %") and " = " in line and not line.endswith("= input")
    ]


# ---- -O levels and ir ------------------------------------------------------------------------


def test_opt_levels_change_the_ir(fcn: Path) -> None:
    o0, o1, o2, default, spaced = map(
        ok,
        cli_many(
            fcn,
            ["ir", "fcn.conv", "-O0", "--no-locations"],
            ["ir", "fcn.conv", "-O1", "--no-locations", "--verify"],
            ["ir", "fcn.conv", "-O2", "--no-locations"],
            ["ir", "fcn.conv", "--no-locations"],
            ["ir", "fcn.conv", "-O", "2", "--no-locations"],
        ),
    )
    assert top_level_ops(o0) == ["conv2d", "batch_norm", "relu", "max_pool2d", "conv2d", "conv2d",
                                 "conv2d", "conv_transpose2d", "add", "upscale"]  # fmt: skip
    assert "derived" not in o0 and "memory" not in o0
    # -O1 folds the batch norm into c1 (derived weight and bias), fuses nothing.
    assert top_level_ops(o1) == ["conv2d", "relu", "max_pool2d", "conv2d", "conv2d", "conv2d",
                                 "conv_transpose2d", "add", "upscale"]  # fmt: skip
    assert "param.bias=c1.bias@bn1 param.weight=c1.weight@bn1\n" in o1
    assert "  c1.weight@bn1: f32[8,3,3,3] = bn_fold_weight(" in o1
    assert "memory" not in o1
    # -O2 (the default) fuses conv + relu and conv_transpose + add, stores the strided conv's
    # input as phase rows, and plans memory.
    assert top_level_ops(o2) == ["fused", "max_pool2d", "conv2d", "relayout", "conv2d", "conv2d",
                                 "fused", "upscale"]  # fmt: skip
    layout = "phases(stride=2, first=0, length=17)"
    assert f"  %pool.phases2: f32[N,8,8,8] {layout} = relayout(%pool)\n" in o2
    assert "  %deep: f32[N,8,4,4] = conv2d(%pool.phases2)" in o2
    assert "  %fuse: f32[N,4,8,8] = fused(%score_deep, %score_pool) parts=2" in o2
    assert "      %up: f32[N,4,8,8] = conv_transpose2d(%score_deep)" in o2
    assert "memory arena=" in o2 and "  %score: offset=" in o2
    assert default == o2 == spaced
    # The declared parameters (the weights-file schema) are the same at every level.
    assert declared_params(o1) == declared_params(o2) == declared_params(o0)
    assert declared_params(o0).count("\n") == 12


def test_bad_levels_are_usage_errors(fcn: Path) -> None:
    three, word = cli_many(fcn, ["ir", "fcn.conv", "-O3"], ["check", "fcn.conv", "-Ofast"])
    for result in (three, word):
        assert result.returncode == 2 and result.stdout == ""
        assert "argument -O: invalid" in result.stderr and "Traceback" not in result.stderr


def test_ir_after_a_pass(fcn: Path) -> None:
    shapes, o0, fold, fuse_at_o1 = cli_many(
        fcn,
        ["ir", "fcn.conv", "--after", "shapes"],
        ["ir", "fcn.conv", "-O0"],
        ["ir", "fcn.conv", "--after", "fold-batch-norm", "--no-locations"],
        ["ir", "fcn.conv", "--after", "fuse", "-O1"],
    )
    assert ok(shapes) == ok(o0)
    fold_text = ok(fold)
    assert "batch_norm" not in top_level_ops(fold_text) and "fused" not in fold_text
    assert "c1.bias@bn1" in fold_text and "memory" not in fold_text
    assert fuse_at_o1.returncode == 2 and fuse_at_o1.stdout == ""
    assert fuse_at_o1.stderr.splitlines() == [
        "error: --after fuse: the pass does not run at -O1",
        "  hint: it runs from -O2 up; add -O2",
    ]


def test_ir_after_an_unknown_pass_lists_the_passes(fcn: Path) -> None:
    close, far = cli_many(
        fcn, ["ir", "fcn.conv", "--after", "fusion"], ["ir", "fcn.conv", "--after", "xyz"]
    )
    names = ", ".join(p.name for p in PASSES)
    for result in (close, far):
        assert result.returncode == 2 and result.stdout == ""
        assert "Traceback" not in result.stderr
    assert close.stderr.splitlines() == [
        f"error: --after fusion: no such pass; the passes are {names}",
        "  hint: did you mean 'fuse'?",
    ]
    assert far.stderr.splitlines()[0] == f"error: --after xyz: no such pass; the passes are {names}"


def test_ir_all_prints_each_change_once(fcn: Path) -> None:
    every, final, folded = cli_many(
        fcn,
        ["ir", "fcn.conv", "--all", "--no-locations"],
        ["ir", "fcn.conv", "--no-locations"],
        ["ir", "fcn.conv", "--after", "fold-batch-norm", "--no-locations"],
    )
    text = ok(every)
    headers = [line for line in text.splitlines() if line.startswith(";; ")]
    purposes = {p.name: p.purpose for p in PASSES}
    # This network has no identities, pads, crops, repeats or dead code: those passes change
    # nothing.
    assert headers == [
        f";; after shapes: {purposes['shapes']}",
        ";; after remove-identities: unchanged",
        ";; after fold-pad: unchanged",
        ";; after fold-crop: unchanged",
        f";; after fold-batch-norm: {purposes['fold-batch-norm']}",
        ";; after cse: unchanged",
        ";; after dce: unchanged",
        f";; after fuse: {purposes['fuse']}",
        f";; after choose-layouts: {purposes['choose-layouts']}",
        f";; after plan-memory: {purposes['plan-memory']}",
    ]
    chunks = text.split(";; after ")
    assert chunks[-1].split("\n", 1)[1] == ok(final)
    fold_chunk = next(c for c in chunks if c.startswith("fold-batch-norm:"))
    assert fold_chunk.split("\n", 1)[1] == ok(folded)


def test_ir_passes_lists_the_pipeline(fcn: Path) -> None:
    lines = ok(cli_many(fcn, ["ir", "fcn.conv", "--passes"])[0]).splitlines()
    assert len(lines) == len(PASSES)
    for line, compiler_pass in zip(lines, PASSES, strict=True):
        name, level, purpose = line.split(maxsplit=2)
        assert (name, level, purpose) == (
            compiler_pass.name,
            f"-O{compiler_pass.min_opt_level}",
            compiler_pass.purpose,
        )
    assert lines[0].split()[:2] == ["shapes", "-O0"]


# ---- check --report ------------------------------------------------------------------------


def test_check_report_on_a_small_fcn(fcn: Path) -> None:
    plain, report, o0 = map(
        ok,
        cli_many(
            fcn,
            ["check", "fcn.conv"],
            ["check", "fcn.conv", "--report", "--verify"],
            ["check", "fcn.conv", "--report", "-O0"],
        ),
    )
    # The layer table is the network as written, at every level; the report follows it.
    assert report.startswith(plain) and o0.startswith(plain)
    assert "optimization" not in plain and "layers:  10" in plain
    lines = report[len(plain) :].splitlines()
    assert lines[:12] == [
        "",
        "optimization (-O2)",
        "  shapes             changed    10 nodes",
        "  remove-identities  unchanged  10 nodes",
        "  fold-pad           unchanged  10 nodes",
        "  fold-crop          unchanged  10 nodes",
        "  fold-batch-norm    changed    10 -> 9 nodes",
        "  cse                unchanged  9 nodes",
        "  dce                unchanged  9 nodes",
        "  fuse               changed    9 -> 7 nodes",
        "  choose-layouts     changed    7 -> 8 nodes",
        "  plan-memory        changed    8 nodes",
    ]
    fusion = lines[lines.index("fusion: 9 kernels -> 7 kernels") :]
    assert fusion[1:5] == [
        "  c1 = conv2d + relu(r1)",
        "  up = conv_transpose2d + add(fuse)",
        "blocked (1):",
        "  score_pool -> fuse: kernel 'up' already has an anchor (conv_transpose2d); a kernel "
        "computes one anchor, so 'score_pool' is read from memory",
    ]
    layouts = lines[lines.index("layouts: 1 conversion") :]
    assert layouts[1] == "  pool.phases2: phases(stride=2, first=0, length=17) for deep"
    kib = 1024
    assert f"  written  {WRITTEN_O0 / kib:.2f} KiB -> {WRITTEN_O2 / kib:.2f} KiB" in lines
    memory = lines[lines.index("activation memory (per batch entry):") :]
    arena, naive, bound = (float(line.split("KiB")[0].split()[-1]) for line in memory[1:4])
    assert memory[1].startswith("  arena ") and memory[1].endswith(" KiB  1.00 of lower bound")
    assert memory[2].startswith("  naive ") and memory[3].startswith("  lower bound ")
    # Naive: one buffer per value a kernel writes at -O2, the same bytes as the traffic written.
    assert naive == pytest.approx(WRITTEN_O2 / kib, abs=0.005)
    # Lower bound: pool (2 KiB), score_pool (1 KiB) and pool's phase rows (8.5 KiB) are live
    # together when the phase rows are written.
    assert bound == pytest.approx(((8 * 8 * 8 + 4 * 8 * 8) * 4 + PHASE_ROWS) / kib) == arena
    assert memory[4] == f"  naive / arena = {naive / arena:.1f}"
    # At -O0 nothing after shape inference runs.
    assert "fusion: not run at -O0 (needs -O2)" in o0
    assert "memory plan: not made at -O0" in o0
    assert "layouts: not chosen at -O0 (needs -O2)" in o0
    assert f"  written  {WRITTEN_O0 / kib:.2f} KiB -> {WRITTEN_O0 / kib:.2f} KiB" in o0


def test_check_report_on_an_example_names_fused_kernels(tmp_path: Path) -> None:
    examples = REPO / "examples"
    text = ok(
        cli_many(
            tmp_path, ["check", str(examples / "fcn8s.conv"), "--report", "--shape", "H=224,W=224"]
        )[0]
    )
    assert "  fold-crop          changed    29 -> 28 nodes" in text  # upscore8 takes score's crop
    assert "fusion: 28 kernels -> 26 kernels" in text
    assert "  upscore2 = conv_transpose2d + add(fuse_pool4)" in text
    assert "  score_pool4 -> fuse_pool4: kernel 'upscore2' already has an anchor" in text


# ---- run -----------------------------------------------------------------------------------


def test_run_gives_the_same_outputs_at_every_level(fcn: Path) -> None:
    run = ["run", "fcn.conv", "--verify", "--batch", "2", "--output"]
    results = cli_many(fcn, *([*run, f"{level}.npz", f"-O{level}"] for level in range(3)))
    outputs = []
    for level, result in enumerate(results):
        assert ok(result).endswith(f"wrote 1 output(s) to {level}.npz\n")
        with np.load(fcn / f"{level}.npz") as data:
            outputs.append(data["score"])
    assert outputs[0].shape == (2, 4, 16, 16)
    for other in outputs[1:]:
        np.testing.assert_allclose(other, outputs[0], rtol=1e-5, atol=1e-5 * abs(outputs[0]).max())
