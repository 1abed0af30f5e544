"""The ``convdsl`` command line, run as a real subprocess (``python -m convdsl``).

Each subprocess costs about a second here, so independent invocations run in parallel
(``cli_many``) and one invocation serves several assertions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convdsl
from convdsl import cli
from convdsl.commands import handlers, tables

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

# Two convolutions whose MACs are easy to count by hand (see test_check_*).
CHECK_SRC = """\
network small
input x: f32[N, 3, 16, 16]
c1 = conv2d(x, 8, kernel=3, stride=2, padding=1)
c2 = conv2d(c1, 6, kernel=3, groups=2, padding=same, bias=false)
r = relu(c2)
output y = max_pool2d(r, 2)
"""

# Two inputs, two outputs: partial --input, the batch taken from the given array.
RUN_SRC = """\
input a: f32[N, 3, 8, 8]
input b: f32[N, 4, 8, 8]
c = conv2d(a, 4, kernel=3, padding=same)
n = batch_norm(c)
output y = relu(n + b)
output z = max_pool2d(c, 2)
"""


def cli_many(
    cwd: Path, *commands: list[str], prefix: tuple[str, ...] = ("-m", "convdsl")
) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``convdsl`` invocations at once; results in the order given."""
    procs = [
        subprocess.Popen(
            [sys.executable, *prefix, *args],
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


def cli_run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_many(cwd, list(args))[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def assert_same_arrays(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def assert_caret_at_location(stderr: str, filename: str, line: int) -> int:
    """The first diagnostic points at ``filename:line:col``, shows the line, and puts its caret
    under column ``col``; returns ``col``."""
    lines = stderr.splitlines()
    head = lines[0]
    assert head.startswith(f"{filename}:{line}:"), stderr
    col = int(head.split(":")[2])
    source_line, caret_line = lines[1], lines[2]
    gutter = f"{line:>4} | "
    assert source_line.startswith(gutter), stderr
    assert caret_line.index("^") == len(gutter) + col - 1, stderr
    return col


# ---- check -----------------------------------------------------------------------------------


def test_check_prints_layers_macs_and_totals(tmp_path: Path) -> None:
    write(tmp_path / "small.conv", CHECK_SRC)
    result = cli_run(tmp_path, "check", "small.conv", "--verify")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # MACs per batch entry = output pixels * (Cin / groups) * kernel taps * Cout.
    c1_macs = (8 * 8) * 3 * (3 * 3) * 8  # stride 2, padding 1: 16 -> 8
    c2_macs = (8 * 8) * (8 // 2) * (3 * 3) * 6
    c1_params = 8 * 3 * 3 * 3 + 8
    c2_params = 6 * (8 // 2) * 3 * 3
    rows = {
        line.split()[0]: line.split()
        for line in result.stdout.splitlines()
        if line.split() and line.split()[0] in ("c1", "c2", "r", "y")
    }
    assert rows["c1"] == ["c1", "conv2d", "[N,8,8,8]", f"{c1_params:,}", f"{c1_macs:,}"]
    assert rows["c2"] == ["c2", "conv2d", "[N,6,8,8]", f"{c2_params:,}", f"{c2_macs:,}"]
    assert rows["r"] == ["r", "relu", "[N,6,8,8]", "0", "0"]
    assert rows["y"] == ["y", "max_pool2d", "[N,6,4,4]", "0", "0"]
    total = c1_macs + c2_macs
    assert "layers:  4" in result.stdout
    assert f"params:  {c1_params + c2_params}\n" in result.stdout
    assert f"MACs:    {total:,} ({total / 1000:.2f} KMAC) per batch entry" in result.stdout
    assert "inputs:  x: f32[N,3,16,16]" in result.stdout
    assert "outputs: y: f32[N,6,4,4]" in result.stdout
    # Numbers are right-aligned: every row's MAC column ends where the header's does.
    table = [line for line in result.stdout.splitlines()[1:7]]
    assert len({len(line) for line in table}) == 1, table


def test_table_helpers() -> None:
    lines = tables.format_table(("name", "n"), [("a", "1"), ("long", "1,000")], (False, True))
    assert lines == ["name      n", "----  -----", "a         1", "long  1,000"]
    assert tables.human(999, "MAC") == "999 MAC"
    assert tables.human(1_234_567_890, "MAC") == "1,234,567,890 (1.23 GMAC)"


# ---- run -------------------------------------------------------------------------------------


def test_run_with_npy_input_matches_python_api(tmp_path: Path) -> None:
    source = write(tmp_path / "two.conv", RUN_SRC)
    a = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    result = cli_run(
        tmp_path, "run", "two.conv", "--input", "a=a.npy", "--seed", "3", "--output", "out.npz"
    )
    assert result.returncode == 0, result.stderr

    net = convdsl.compile_file(source, seed=3)
    want = net({**net.random_inputs(seed=3, batch=2), "a": a})
    assert_same_arrays(load_npz(tmp_path / "out.npz"), want)
    for name, array in want.items():
        stats = [f"{float(f(array)):.6g}" for f in (np.min, np.max, np.mean)]
        row = next(
            line.split() for line in result.stdout.splitlines() if line.startswith(name + " ")
        )
        assert row == [name, "[2,4,8,8]" if name == "y" else "[2,4,4,4]", "float32", *stats]
    assert "wrote 2 output(s) to out.npz" in result.stdout


def test_run_output_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    source = write(tmp_path / "two.conv", RUN_SRC)
    np.savez(tmp_path / "out.npz", y=np.zeros(3))
    before = (tmp_path / "out.npz").read_bytes()

    refused = cli_run(tmp_path, "run", "two.conv", "--output", "out.npz")
    assert refused.returncode == 2
    assert "out.npz: file exists; refusing to overwrite it" in refused.stderr
    assert "--force" in refused.stderr
    assert (tmp_path / "out.npz").read_bytes() == before

    # Every input random: seeded standard normal, the batch from --batch.
    forced = cli_run(
        tmp_path, "run", "two.conv", "--seed", "1", "--batch", "3", "--output", "out.npz", "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert "y       [3,4,8,8]  float32" in forced.stdout
    net = convdsl.compile_file(source, seed=1)
    assert_same_arrays(load_npz(tmp_path / "out.npz"), net(net.random_inputs(seed=1, batch=3)))


def test_bad_inputs_are_user_errors_naming_the_input(tmp_path: Path) -> None:
    write(tmp_path / "two.conv", RUN_SRC)
    (tmp_path / "garbage.npy").write_text("this is not numpy\n")
    np.save(tmp_path / "wrong.npy", np.ones((2, 3, 9, 8), np.float32))
    np.save(tmp_path / "obj.npy", np.array([1, "x", None], dtype=object), allow_pickle=True)
    run = ["run", "two.conv", "--input"]
    several, missing, shape = cli_many(
        tmp_path,
        [*run, "a=garbage.npy", "--input", "b=obj.npy", "--input", "aa=wrong.npy", "--input", "a"],
        [*run, "b=missing.npy"],
        [*run, "a=wrong.npy"],
    )
    for result in (several, missing, shape):
        assert result.returncode == 2, (result.args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    # Every bad flag of one command line is reported, not only the first.
    for message in [
        "input 'a': garbage.npy: not a .npy file",
        "input 'b': obj.npy: not a readable .npy array",
        "the network has no input 'aa'",
        "did you mean 'a'?",
        "--input 'a': expected NAME=PATH.npy",
    ]:
        assert message in several.stderr, several.stderr
    assert "input 'b': missing.npy: no such file" in missing.stderr
    assert "input 'a': expected shape [N,3,8,8], found [2,3,9,8]" in shape.stderr
    assert_caret_at_location(shape.stderr, "two.conv", 1)  # at the input's declaration


def test_init_weights_then_run_with_them_reproduces_outputs(tmp_path: Path) -> None:
    source = write(tmp_path / "two.conv", RUN_SRC)
    init = cli_run(tmp_path, "init-weights", "two.conv", "-o", "w.npz", "--seed", "5")
    assert init.returncode == 0, init.stderr
    net = convdsl.compile_file(source, seed=5)
    assert_same_arrays(load_npz(tmp_path / "w.npz"), net.weights)
    count = sum(a.size for a in net.weights.values())
    assert f"wrote {len(net.weights)} arrays ({count:,} parameters) to w.npz" in init.stdout

    before = (tmp_path / "w.npz").read_bytes()
    again, run = cli_many(
        tmp_path,
        ["init-weights", "two.conv", "-o", "w.npz", "--seed", "6"],
        ["run", "two.conv", "--weights", "w.npz", "--output", "out.npz"],
    )
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "w.npz").read_bytes() == before
    assert run.returncode == 0, run.stderr
    want = net(net.random_inputs(seed=0))  # seed-5 weights, seed-0 inputs
    assert_same_arrays(load_npz(tmp_path / "out.npz"), want)
    default = convdsl.compile_file(source, seed=0)
    assert not np.allclose(default(default.random_inputs(seed=0))["y"], want["y"])


# ---- ir --------------------------------------------------------------------------------------


def test_ir_prints_a_line_per_layer(tmp_path: Path) -> None:
    write(tmp_path / "small.conv", CHECK_SRC)
    typed, untyped = cli_many(
        tmp_path, ["ir", "small.conv", "-O0"], ["ir", "small.conv", "--untyped", "--no-locations"]
    )
    assert typed.returncode == 0 and untyped.returncode == 0, typed.stderr + untyped.stderr
    layers = {"c1": "conv2d", "c2": "conv2d", "r": "relu", "y": "max_pool2d"}
    for name, op in layers.items():
        (line,) = [ln for ln in typed.stdout.splitlines() if ln.startswith(f"  %{name}:")]
        assert f" = {op}(" in line and "# small.conv:" in line
        (line,) = [ln for ln in untyped.stdout.splitlines() if ln.startswith(f"  %{name} = ")]
        assert f" = {op}(" in line and "#" not in line
    assert "  %c1: f32[N,8,8,8] = conv2d(%x)" in typed.stdout
    assert "padding=same" in untyped.stdout  # as written, before resolution to pads
    assert "c1.weight: f32[8,3,3,3]" in typed.stdout


def test_ir_llvm_and_asm_show_the_generated_kernels(tmp_path: Path) -> None:
    write(tmp_path / "small.conv", CHECK_SRC)
    llvm, asm, wrong = cli_many(
        tmp_path,
        ["ir", "small.conv", "--llvm"],
        ["ir", "small.conv", "--asm", "c1", "--threads", "1"],
        ["ir", "small.conv", "--asm", "c9"],
    )
    assert llvm.returncode == 0, llvm.stderr
    # One worker per kernel after fusion (c2 + relu + pool stay apart: pool is an anchor),
    # the strided c1 after the conversion of its input to phase rows.
    defined = [ln.split("@")[1].split("(")[0] for ln in llvm.stdout.splitlines()
               if ln.startswith("define")]  # fmt: skip
    assert defined[:2] == ['"kernel0_x_phases2"', '"kernel1_c1"'], defined
    assert defined[-1] == '"run"', defined
    assert '@"llvm.fma.v' in llvm.stdout
    assert asm.returncode == 0, asm.stderr
    assert asm.stdout.startswith("# ---- kernel1_c1\nkernel1_c1:")
    assert "vfmadd" in asm.stdout or "fmla" in asm.stdout or "mulps" in asm.stdout
    assert "kernel0_" not in asm.stdout and "kernel2_" not in asm.stdout  # only the one asked for
    assert wrong.returncode == 2
    assert "--asm c9: no kernel of that name" in wrong.stderr
    assert "kernel1_c1" in wrong.stderr  # the hint lists the kernels


def test_asm_finds_a_kernel_by_any_layer_it_computes_and_says_what_shares_it(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "blk.conv",
        "input x: f32[N, 4, 12, 12]\n"
        "block unit(x) {\n  h = relu(conv2d(x, 4, kernel=3, padding=same))\n  return h\n}\n"
        "a = unit(x)\nb = unit(a)\noutput y = unit(b)\n",
    )
    by_relu, by_conv, by_kernel = cli_many(
        tmp_path,
        ["ir", "blk.conv", "--asm", "b.h"],
        ["ir", "blk.conv", "--asm", "y.h.conv2d"],
        ["ir", "blk.conv", "--asm", "kernel1"],
    )
    # The three layers have one function, named after the first.
    header = "# ---- kernel0_a_h_conv2d (computes kernel0_a_h_conv2d, kernel1_b_h_conv2d, "
    for done in (by_relu, by_conv, by_kernel):
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(header + "kernel2_y_h_conv2d)\nkernel0_a_h_conv2d:")


def test_a_warning_is_one_plain_line_and_the_command_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from convdsl import cli
    from convdsl.backends.llvm import object_cache

    write(tmp_path / "small.conv", CHECK_SRC)
    monkeypatch.setenv("CONVDSL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CONVDSL_CACHE_MAX_MB", "lots")
    monkeypatch.setattr(object_cache, "_trimmed", set())
    assert cli.main(["run", str(tmp_path / "small.conv"), "--backend", "llvm"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "warning: CONVDSL_CACHE_MAX_MB='lots' is not a number of megabytes >= 0; "
        "the code cache keeps to the default, 1024 MB\n"
    )


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    write(tmp_path / "small.conv", CHECK_SRC)
    proc = subprocess.Popen(
        [sys.executable, "-m", "convdsl", "ir", "small.conv"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away before convdsl has written anything (`| head`)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == cli.EXIT_BROKEN_PIPE
    assert err == ""


# ---- errors ----------------------------------------------------------------------------------


def test_source_errors_exit_2_with_location_and_caret(tmp_path: Path) -> None:
    write(
        tmp_path / "syntax.conv",
        "input x: f32[N, 3, 8, 8]\ny = conv2d(x, 4, kernel=3 +)\noutput y\n",
    )
    write(
        tmp_path / "shape.conv", "input x: f32[N, 3, 8, 8]\ny = conv2d(x, 4, kernel=11)\noutput y\n"
    )
    syntax, shape, missing = cli_many(
        tmp_path,
        ["check", "syntax.conv"],
        ["run", "shape.conv"],
        ["ir", "nope.conv"],
    )
    for result in (syntax, shape, missing):
        assert result.returncode == 2, result.args
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    col = assert_caret_at_location(syntax.stderr, "syntax.conv", 2)
    assert "y = conv2d(x, 4, kernel=3 +)"[col - 1] == ")"
    col = assert_caret_at_location(shape.stderr, "shape.conv", 2)
    line = "y = conv2d(x, 4, kernel=11)"
    assert line.index("kernel") < col <= line.index(")")
    assert "larger than the padded input" in shape.stderr
    assert "nope.conv: no such file" in missing.stderr


def test_internal_errors_say_bug_and_exit_70(tmp_path: Path) -> None:
    write(tmp_path / "small.conv", CHECK_SRC)
    # A step of `check` that crashes stands in for a compiler bug.
    crash = (
        "import sys, convdsl; from convdsl import cli; from convdsl.commands import tables\n"
        "def boom(graph):\n"
        "    if sys.argv[1] == 'internal': raise convdsl.InternalError('lost a node')\n"
        "    raise ZeroDivisionError('boom')\n"
        "tables.summary_lines = boom\n"
        "sys.exit(cli.main(sys.argv[2:]))\n"
    )
    plain, debug, internal = cli_many(
        tmp_path,
        ["other", "check", "small.conv"],
        ["other", "--debug", "check", "small.conv"],
        ["internal", "check", "small.conv"],
        prefix=("-c", crash),
    )
    for result in (plain, debug, internal):
        assert result.returncode == cli.EXIT_INTERNAL_ERROR, result.stderr
        assert result.stdout == ""
    assert plain.stderr.splitlines() == [
        "internal error: this is a bug in convdsl: ZeroDivisionError: boom "
        "(add --debug for the traceback)"
    ]
    assert "Traceback" in debug.stderr and "ZeroDivisionError: boom" in debug.stderr
    assert debug.stderr.rstrip().endswith(
        "internal error: this is a bug in convdsl: ZeroDivisionError: boom"
    )
    assert internal.stderr.splitlines() == [
        "internal error: this is a bug in convdsl: lost a node (add --debug for the traceback)"
    ]


def test_keyboard_interrupt_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(handlers, "compile_source", interrupted)
    source = write(tmp_path / "small.conv", CHECK_SRC)
    assert cli.main(["check", str(source)]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"


# ---- help and version ------------------------------------------------------------------------


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"convdsl {convdsl.__version__}"
    assert cli.main([]) == 2
    assert "usage: convdsl" in capsys.readouterr().err
    assert cli.main(["run", "x.conv", "--batch", "0"]) == 2
    assert "--batch: expected an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, options",
    [
        ([], ["--version", "--debug", "check", "run", "ir", "init-weights", "exit status"]),
        (["check"], ["--verify", "example:", "convdsl check"]),
        (
            ["run"],
            [
                "--input",
                "--weights",
                "--output",
                "--seed",
                "--batch",
                "--backend",
                "--force",
                "example:",
            ],
        ),
        (["ir"], ["--no-locations", "--untyped", "example:"]),
        (["init-weights"], ["--output", "--seed", "--force", "example:"]),
    ],
)
def test_help_of_every_command(
    command: list[str], options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text, option
