"""convdsl graph: the DOT text parses structurally (balanced braces, every edge between declared
nodes, one box per layer, fused kernels as clusters), and Graphviz renders it where installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from convdsl import cli
from convdsl.diagnostics import Source
from convdsl.interop.dot import layers, to_dot
from convdsl.passes.pipeline import compile_source

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.conv"))
SIZES = {"fcn8s": {"H": 64, "W": 96}, "wavenet": {"L": 300}}
NODE = re.compile(r'^\s*(\w+) \[shape=(\w+),.*label="((?:[^"\\]|\\.)*)"\];$')
EDGE = re.compile(r'^\s*(\w+) -> (\w+) \[label="[^"]*"\];$')


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str]], int]:
    """Nodes (id -> shape, label), edges, clusters; asserts the braces balance."""
    depth = 0
    nodes: dict[str, tuple[str, str]] = {}
    edges: list[tuple[str, str]] = []
    clusters = 0
    for line in text.splitlines():
        depth += line.count("{") - line.count("}")
        assert depth >= 0, line
        if (node := NODE.match(line)) is not None:
            assert node.group(1) not in nodes, line
            nodes[node.group(1)] = (node.group(2), node.group(3))
        elif (edge := EDGE.match(line)) is not None:
            edges.append((edge.group(1), edge.group(2)))
        clusters += line.strip().startswith("subgraph cluster_")
    assert depth == 0
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    return nodes, edges, clusters


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_dot_of_every_example_is_well_formed(path: Path, level: int) -> None:
    source = Source(str(path), path.read_text(encoding="utf-8"))
    graph = compile_source(source, level, sizes=SIZES.get(path.stem))
    nodes, edges, clusters = parse(to_dot(graph))
    for tail, head in edges:
        assert tail in nodes and head in nodes, (tail, head)
    boxes = [n for n, (shape, _) in nodes.items() if shape == "box"]
    assert len(boxes) == len(layers(graph)) >= len(graph.nodes)
    assert sum(s == "ellipse" for s, _ in nodes.values()) == len(graph.inputs)
    assert sum(s == "doubleoctagon" for s, _ in nodes.values()) == len(graph.outputs)
    assert clusters == sum(node.is_fused for node in graph.nodes)
    if level == 0:
        assert clusters == 0
    elif path.stem == "mobilenet":
        assert clusters > 0
    heads = {head for _, head in edges}
    assert all(f"out{i}" in heads for i in range(len(graph.outputs)))


def test_labels_carry_op_name_shape_and_line(tmp_path: Path) -> None:
    net = tmp_path / "n.conv"
    net.write_text(
        "input x: nhwc f32[N, 8, 8, 3]\n"
        "a = conv2d(x, 4, kernel=3, padding=same, activation=relu)\n"
        "output y: nhwc = a + conv2d(a, 4, kernel=1)\n"
    )
    out = tmp_path / "n.dot"
    assert cli.main(["graph", str(net), "-o", str(out), "-O0"]) == 0
    nodes, edges, _ = parse(out.read_text())
    labels = {label for _, label in nodes.values()}
    assert "conv2d a\\n[N, 4, 8, 8]\\nline 2" in labels, labels
    assert "input x\\n[N, 8, 8, 3]" in labels and "output y\\n[N, 8, 8, 4]" in labels
    conv_a = next(n for n, (_, label) in nodes.items() if label.startswith("conv2d a\\n"))
    assert sum(tail == conv_a for tail, _ in edges) == 2  # the skip connection and the 1x1 conv
    assert cli.main(["graph", str(net), "-o", str(out)]) == 2  # exists
    assert (
        cli.main(["graph", str(net), "-o", str(out), "--force", "--after", "fold-batch-norm"]) == 0
    )
    assert cli.main(["graph", str(net), "-o", str(tmp_path / "n.txt")]) == 2
    assert cli.main(["graph", str(net), "-o", str(out), "--force", "--after", "nope"]) == 2


def test_graphviz_renders_it_where_installed(tmp_path: Path) -> None:
    path = EXAMPLES[[p.stem for p in EXAMPLES].index("quickstart")]
    out = tmp_path / "q.dot"
    assert cli.main(["graph", str(path), "-o", str(out)]) == 0
    parse(out.read_text())  # always checked structurally
    dot = shutil.which("dot")
    if dot is not None:  # only the rendering needs Graphviz
        svg = tmp_path / "q.svg"
        subprocess.run([dot, "-Tsvg", str(out), "-o", str(svg)], check=True, timeout=60)
        assert "<svg" in svg.read_text()


FAKE_DOT = """#!/bin/sh
# Stands in for Graphviz: checks the arguments convdsl passes, writes stdin to the -o file.
[ "$1" = "-Tsvg" ] && [ "$2" = "-o" ] || { echo "bad arguments: $*" >&2; exit 1; }
/bin/cat > "$3"
"""


def test_svg_is_drawn_by_dot_into_place_or_the_install_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = EXAMPLES[[p.stem for p in EXAMPLES].index("quickstart")]
    svg = tmp_path / "q.svg"
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no dot anywhere
    assert cli.main(["graph", str(path), "-o", str(svg)]) == 2
    assert "needs Graphviz's dot program" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text(FAKE_DOT)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert cli.main(["graph", str(path), "-o", str(svg)]) == 0
    assert svg.read_text().startswith("digraph")  # what dot was given on stdin
    fake.write_text("#!/bin/sh\necho 'syntax error in line 3' >&2\nexit 1\n")
    assert cli.main(["graph", str(path), "-o", str(tmp_path / "r.svg"), "--force"]) == 2
    assert "could not draw the graph: syntax error in line 3" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "q.svg"]
