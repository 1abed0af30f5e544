"""The documentation is executable, and it covers the whole language.

* Every ```conv block in ``docs/`` is a complete network: it compiles with the verifier on and
  runs once on random inputs.
* Every ```python block runs as-is, in a temporary directory that links ``examples/`` from the
  repository (so blocks may use ``examples/...`` paths and write files).
* Every ```console block is replayed: each ``$ convdsl ...`` line runs the CLI in-process and
  its output must be what the block shows (``$ echo $?`` shows the last exit status;
  ``$ cat > FILE <<'EOF'`` writes a file).
* Every op of ``convdsl.ir.ops.OPS`` has a section in ``docs/language.md`` with a row per argument
  giving its kind, default and whether it is positional, and a ```conv example that uses it.
* Every public name of the API and every CLI subcommand and option is mentioned.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import convdsl
from convdsl import cli
from convdsl.ir.ops import OPS, REQUIRED, ArgKind, ArgSpec, OpDef
from convdsl.ir.types import bind_shape

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DOC_FILES = (
    "index.md",
    "language.md",
    "architecture.md",
    "cli.md",
    "api.md",
    "optimizer.md",
    "backends.md",
    "performance.md",
    "interop.md",
    "onnx_import.md",
    "weights.md",
)
LANGUAGES = {"conv", "conv-fragment", "python", "console", "text"}


@dataclass(frozen=True)
class CodeBlock:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"docs/{self.path.name}:{self.line}"


_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def code_blocks(path: Path) -> list[CodeBlock]:
    """Fenced blocks of a Markdown file; indentation of the fence is stripped from the body."""
    blocks: list[CodeBlock] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        indent, lang, start = match.group(1), match.group(2), index
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            body.append(
                lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index]
            )
            index += 1
        if index == len(lines):
            raise AssertionError(f"docs/{path.name}:{start + 1}: unclosed code block")
        blocks.append(CodeBlock(path, start + 1, lang, "\n".join(body) + "\n"))
        index += 1
    return blocks


ALL_BLOCKS = [
    block for name in DOC_FILES if (DOCS / name).is_file() for block in code_blocks(DOCS / name)
]


def blocks_of(lang: str) -> list[Any]:
    return [pytest.param(b, id=b.where) for b in ALL_BLOCKS if b.lang == lang]


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch working directory in which ``examples/`` is the repository's."""
    (tmp_path / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- the files -----------------------------------------------------------------------------


def test_every_doc_exists_and_the_index_links_them() -> None:
    for name in DOC_FILES:
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for name in DOC_FILES[1:]:
        assert f"({name}" in index, f"docs/index.md does not link {name}"


def test_code_blocks_are_labelled() -> None:
    """An unlabelled or misspelt fence would silently escape the tests below."""
    unknown = [f"{b.where}: ```{b.lang}" for b in ALL_BLOCKS if b.lang not in LANGUAGES]
    assert not unknown, f"code blocks with unknown languages (use one of {sorted(LANGUAGES)})"


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than ``-`` and ``_`` dropped,
    spaces made hyphens."""
    text = path.read_text(encoding="utf-8")
    titles = re.findall(r"^#{1,6} (.*)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-") for title in titles}


def test_links_resolve() -> None:
    """Every relative link names an existing file and, if it has one, an existing heading."""
    for name in DOC_FILES:
        text = (DOCS / name).read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target:
                continue
            path = (DOCS / target).resolve() if target else DOCS / name
            assert path.exists(), f"docs/{name}: broken link {target}"
            if anchor and path.suffix == ".md":
                assert anchor in anchors(path), (
                    f"docs/{name}: no heading for #{anchor} in {path.name}"
                )


# ---- executable examples -------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks_of("conv"))
def test_conv_block_compiles_and_runs(block: CodeBlock) -> None:
    net = convdsl.compile_string(block.text, block.where, verify=True, backend="numpy")
    sizes = dict.fromkeys(net.sizes, 32)  # a size the docs' any-size examples accept
    outputs = net(net.random_inputs(seed=0, batch=2, sizes=sizes))
    assert set(outputs) == set(net.outputs)
    for name, t in net.outputs.items():
        expected = tuple(bind_shape(t.shape, {**sizes, str(t.shape[0]): 2}))
        assert outputs[name].shape == expected, (name, outputs[name].shape, expected)
        assert outputs[name].dtype == t.dtype.numpy
        assert np.isfinite(outputs[name]).all(), name


@pytest.mark.parametrize("block", blocks_of("python"))
def test_python_block_runs(block: CodeBlock, sandbox: Path) -> None:
    code = compile(block.text, block.where, "exec")
    exec(code, {"__name__": "__docs__"})


def _replay(block: CodeBlock, capsys: pytest.CaptureFixture[str]) -> list[tuple[str, str, str]]:
    """(command, shown output, real output) for every command of a console block."""
    lines = block.text.splitlines()
    results: list[tuple[str, str, str]] = []
    status = 0
    index = 0
    while index < len(lines):
        line = lines[index]
        assert line.startswith("$ "), f"{block.where}: expected a '$ ' command, found {line!r}"
        command = line[2:]
        index += 1
        heredoc = re.fullmatch(r"cat > (\S+) <<\s*'?EOF'?", command)
        if heredoc:
            end = lines.index("EOF", index)
            Path(heredoc.group(1)).write_text("\n".join(lines[index:end]) + "\n")
            index = end + 1
            continue
        shown: list[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            shown.append(lines[index])
            index += 1
        argv = shlex.split(command)
        capsys.readouterr()
        if command == "echo $?":
            print(status)
        elif argv[:2] == ["python", "-c"] and len(argv) == 3:
            exec(compile(argv[2], f"{block.where}: python -c", "exec"), {"__name__": "__main__"})
        else:
            assert argv[0] == "convdsl", f"{block.where}: cannot replay `{command}`"
            status = cli.main(argv[1:])
        captured = capsys.readouterr()
        real = captured.out + captured.err
        results.append((command, "\n".join(shown), real))
    return results


def same_output(shown: str, real: str) -> bool:
    """Equal line by line and word by word, except that numbers with a fraction may differ in
    their last printed digits (float32 sums over millions of terms depend on the BLAS build)."""
    shown_lines, real_lines = shown.strip("\n").splitlines(), real.strip("\n").splitlines()
    if len(shown_lines) != len(real_lines):
        return False
    for shown_line, real_line in zip(shown_lines, real_lines, strict=True):
        words, real_words = shown_line.split(), real_line.split()
        if len(words) != len(real_words):
            return False
        for word, real_word in zip(words, real_words, strict=True):
            if word == real_word:
                continue
            fractional = re.compile(r"-?\d+\.\d+(e[-+]\d+)?")
            if not (fractional.fullmatch(word) and fractional.fullmatch(real_word)):
                return False
            if not math.isclose(float(word), float(real_word), rel_tol=1e-4, abs_tol=1e-6):
                return False
    return True


@pytest.mark.parametrize("block", blocks_of("console"))
def test_console_block_output_is_real(
    block: CodeBlock, sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command, shown, real in _replay(block, capsys):
        assert same_output(shown, real), (
            f"{block.where}: output of `{command}` differs; it now is:\n{real}"
        )


# ---- the language reference covers every op ------------------------------------------------


@dataclass(frozen=True)
class Section:
    level: int
    title: str
    text: str  # the section body, subsections included


def sections(path: Path) -> list[Section]:
    lines = path.read_text(encoding="utf-8").splitlines()
    heads = [
        (i, len(m.group(1)), m.group(2))
        for i, line in enumerate(lines)
        if (m := re.match(r"^(#{1,6}) (.*)$", line))
    ]
    found = []
    for number, (start, level, title) in enumerate(heads):
        end = next((i for i, lvl, _ in heads[number + 1 :] if lvl <= level), len(lines))
        found.append(Section(level, title, "\n".join(lines[start + 1 : end])))
    return found


LANGUAGE_SECTIONS = sections(DOCS / "language.md") if (DOCS / "language.md").is_file() else []


def op_section(op: str) -> Section:
    """The most specific section whose heading names ``op`` in backticks."""
    candidates = [s for s in LANGUAGE_SECTIONS if f"`{op}`" in s.title]
    assert candidates, f"docs/language.md has no section whose heading names `{op}`"
    return max(candidates, key=lambda s: s.level)


def argument_rows(section: Section) -> dict[str, list[str]]:
    """Table rows of a section whose first cell is a backticked name, by that name."""
    rows: dict[str, list[str]] = {}
    for line in section.text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"`\w+`", cells[0]) and len(cells) >= 4:
            rows.setdefault(cells[0].strip("`"), cells)
    return rows


KIND_WORDS = {
    ArgKind.TENSOR: "tensor",
    ArgKind.TENSORS: "tensors",
    ArgKind.OPERAND: "tensor or number",
    ArgKind.SHAPE_OF: "tensor (shape only)",
    ArgKind.INT: "int",
    ArgKind.FLOAT: "number",
    ArgKind.BOOL: "bool",
    ArgKind.ENUM: "enum",
    ArgKind.INTS: "ints",
    ArgKind.NUMBERS: "numbers",
    ArgKind.PADDING: "padding",
    ArgKind.OFFSET: "offset",
}


def default_matches(spec: ArgSpec, cell: str) -> bool:
    text = cell.strip("`")
    default = spec.default
    if default is REQUIRED:
        return text == "required"
    if default is None:
        return text not in ("", "required")
    if isinstance(default, bool):
        return text == str(default).lower()
    if isinstance(default, str):
        return text == default
    try:
        return math.isclose(float(text), default)
    except ValueError:
        return False


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_is_documented(op: str) -> None:
    opdef: OpDef = OPS[op]
    section = op_section(op)
    rows = argument_rows(section)
    for spec in opdef.args:
        assert spec.name in rows, f"{op}: no table row for argument `{spec.name}`"
        _, kind, default, positional = rows[spec.name][:4]
        where = f"{op}({spec.name}) in section '{section.title}'"
        if spec.kind is ArgKind.ENUM:
            assert kind.startswith("enum"), f"{where}: kind should be enum, found {kind!r}"
            missing = [c for c in spec.choices if not re.search(rf"\b{c}\b", kind)]
            assert not missing, f"{where}: enum choices {missing} undocumented"
        else:
            assert kind == KIND_WORDS[spec.kind], f"{where}: kind {kind!r}"
        assert default_matches(spec, default), f"{where}: default {default!r} vs {spec.default!r}"
        assert positional == ("yes" if spec.positional else "no"), f"{where}: positional"


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_has_a_compiled_example_in_its_section(op: str) -> None:
    examples = [
        b.text
        for b in code_blocks(DOCS / "language.md")
        if b.lang == "conv" and b.text in op_section(op).text
    ]
    assert any(re.search(rf"\b{op}\(", text) for text in examples), (
        f"the section of `{op}` has no ```conv example that calls it"
    )


# ---- the API and CLI references ------------------------------------------------------------


def test_api_reference_names_every_public_entry() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    names = {
        "compile_file",
        "compile_string",
        "Network",
        "ConvdslError",
        "InternalError",
        "diagnostics",
        "render",
        "graph",
        "backend",
        "weights",
    }
    names |= {n for n in vars(convdsl.Network) if not n.startswith("_")}
    for function in (convdsl.compile_string, convdsl.compile_file):
        names |= set(inspect.signature(function).parameters)
    names -= {"text", "path"}  # the positional arguments, shown in the signatures
    missing = sorted(n for n in names if f"`{n}" not in text and f".{n}" not in text)
    assert not missing, f"docs/api.md does not mention {missing}"


def test_cli_reference_names_every_subcommand_and_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        assert f"convdsl {name}" in text, f"docs/cli.md does not document `convdsl {name}`"
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in text, f"docs/cli.md does not mention {name} {option}"
