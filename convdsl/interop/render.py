"""Pictures of a graph: DOT text written as it is, or drawn by Graphviz's ``dot`` program.

convdsl depends on no Graphviz package; for ``.svg``, ``.png`` or ``.pdf`` it runs ``dot`` when it
is on ``PATH`` and says what to install when it is not. The picture is written to a temporary
file beside the target and renamed into place, so a failed drawing leaves nothing behind.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from convdsl.diagnostics import error
from convdsl.output_files import atomic_target

FORMATS = {".dot": None, ".svg": "svg", ".png": "png", ".pdf": "pdf"}
"""File suffixes ``convdsl graph`` writes, and Graphviz's output format for each."""
DOT_TIMEOUT_S = 120
INSTALL_HINT = (
    "install Graphviz (Debian/Ubuntu: apt install graphviz; macOS: brew install graphviz), or "
    "write .dot text and open it in any Graphviz viewer"
)


def write_picture(dot_text: str, output: Path) -> None:
    """``dot_text`` to ``output``: as it is for ``.dot``, else drawn by Graphviz."""
    fmt = FORMATS.get(output.suffix.lower(), "unknown")
    if fmt == "unknown":
        raise error(f"{output}: expected a file name ending in {', '.join(FORMATS)}")
    program = shutil.which("dot") if fmt is not None else None
    if fmt is not None and program is None:
        raise error(f"{output}: drawing {fmt.upper()} needs Graphviz's dot program, which is not "
                    "installed", hint=INSTALL_HINT)  # fmt: skip
    with atomic_target(output) as temporary:
        if fmt is None:
            temporary.write_text(dot_text, encoding="utf-8")
        else:
            assert program is not None
            _draw(program, fmt, dot_text, temporary)


def _draw(program: str, fmt: str, dot_text: str, target: Path) -> None:
    try:
        done = subprocess.run([program, f"-T{fmt}", "-o", str(target)], input=dot_text,
                              text=True, capture_output=True, timeout=DOT_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise error(f"Graphviz's dot took more than {DOT_TIMEOUT_S} s to draw the graph",
                    hint="write .dot text instead") from None  # fmt: skip
    if done.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        said = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise error(f"Graphviz's dot could not draw the graph: {said[0]}")
