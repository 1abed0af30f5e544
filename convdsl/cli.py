"""The ``convdsl`` command line: its parser, and the entry point that runs a subcommand
(``convdsl.commands.handlers``) and turns what goes wrong into an exit status.

Results go to stdout, diagnostics to stderr. Exit status: 0 success, 2 a user error (bad source,
weights, inputs or options: rendered diagnostics, never a traceback), 70 a bug in convdsl
(``--debug`` adds the traceback), 130 interrupted, 141 stdout closed early (``| head``).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import convdsl
from convdsl.api import (
    BACKENDS,
    DEFAULT_BACKEND,
    MAX_THREADS,
    THREADS_VARIABLE,
)
from convdsl.commands.handlers import (
    cmd_bench,
    cmd_check,
    cmd_export,
    cmd_graph,
    cmd_import,
    cmd_init_weights,
    cmd_ir,
    cmd_run,
)
from convdsl.diagnostics import ConvdslError

Handler = Callable[[argparse.Namespace], None]

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h): tells a bug apart from a user error
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE

EXIT_STATUS_HELP = """exit status:
  0    success
  2    user error (source, weights, inputs, options); diagnostics on stderr
  70   internal error: a bug in convdsl (add --debug for the traceback)
  130  interrupted
  141  stdout closed early (e.g. piped into head)"""


# ---- the parser ------------------------------------------------------------------------------


def _add_compile_options(parser: argparse.ArgumentParser) -> None:
    """-O LEVEL and --verify, shared by every command that compiles for real."""
    parser.add_argument("-O", dest="opt_level", type=int, choices=(0, 1, 2), default=2,
                        metavar="LEVEL", help="optimization level: 0 shape checking only, "
                        "1 adds simplification and folding, 2 (default) adds fusion and "
                        "memory planning")  # fmt: skip
    parser.add_argument("--verify", action="store_true", help="verify the IR after every pass")
    parser.add_argument("--shape", type=_sizes, default={}, metavar="H=224,W=224",
                        help="for a network written for any input size: the sizes to compile "
                        "it for (run takes them from its --input arrays too)")  # fmt: skip


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend NAME and --threads N, shared by check and run."""
    backends = " or ".join(BACKENDS)
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help=f"where to run: {backends} (default {DEFAULT_BACKEND}: compiled, "
                        "fast from the second run on; numpy needs no compile, so it is "
                        "quicker for one run of a network not compiled before); llvm "
                        "caches its machine code in $CONVDSL_CACHE_DIR or ~/.cache/convdsl "
                        "(CONVDSL_CACHE_DIR=off disables; at most $CONVDSL_CACHE_MAX_MB, "
                        "default 1024)")  # fmt: skip
    parser.add_argument("--threads", type=_threads, default=None, metavar="N",
                        help=f"threads of the llvm backend (default: ${THREADS_VARIABLE}, else "
                             "the CPUs this process may run on)")  # fmt: skip


def _sizes(text: str) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not name.isidentifier() or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"expected NAME=SIZE pairs like H=224,W=224, found '{item}'"
            )
        if name in sizes:
            raise argparse.ArgumentTypeError(f"size {name} is given twice")
        sizes[name] = int(value)
    return sizes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {value}")
    return value


def _threads(text: str) -> int:
    value = _positive(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS}, found {value}")
    return value


def _subcommand(subs: Any, name: str, handler: Handler, common: Any,
                file_help: str = "the .conv source file") -> argparse.ArgumentParser:  # fmt: skip
    # `python -OO` strips docstrings: the help gets thinner but the command still works.
    doc = inspect.cleandoc(handler.__doc__ or f"{name}\n\nconvdsl {name} FILE")
    summary, *description, example = doc.split("\n\n")
    summary = summary[:1].lower() + summary[1:].rstrip(".")
    parser = subs.add_parser(
        name, help=summary, description="\n\n".join(description),
        epilog=f"example:\n  {example}\n\n{EXIT_STATUS_HELP}", parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("file", type=Path, metavar="FILE", help=file_help)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convdsl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A small graph compiler for convolutional networks written in .conv files.",
        epilog="example:\n  convdsl check net.conv\n\n" + EXIT_STATUS_HELP,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"convdsl {convdsl.__version__}")
    debug_help = "on an internal error, print the Python traceback"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # Also accepted after the subcommand; SUPPRESS keeps it from resetting the global flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = _subcommand(subs, "check", cmd_check, common)
    _add_compile_options(check)
    check.add_argument("--report", action="store_true",
                       help="after the table, report what the optimizer did")  # fmt: skip
    _add_backend_options(check)

    run = _subcommand(subs, "run", cmd_run, common)
    run.add_argument("--input", action="append", default=[], metavar="NAME=PATH.npy",
                     help="read input NAME from a .npy file (repeatable)")  # fmt: skip
    run.add_argument("--weights", type=Path, metavar="W.npz",
                     help="an .npz or .safetensors file of parameters (default: initialized "
                     "from --seed)")  # fmt: skip
    run.add_argument("--output", type=Path, metavar="OUT.npz",
                     help="save the outputs to an .npz (or .safetensors) file, keyed by output "
                     "name")  # fmt: skip
    run.add_argument("--seed", type=int, default=0,
                     help="seed of random inputs and (without --weights) parameters")  # fmt: skip
    run.add_argument("--batch", type=_positive, metavar="B", help="batch size of random inputs")
    _add_backend_options(run)
    run.add_argument("--force", action="store_true", help="overwrite an existing --output file")
    run.add_argument("--bounds-check", action="store_true",
                     help="llvm: check every load and store of the generated code against its "
                          "buffer (slow; reports an access outside it as a convdsl bug "
                          "instead of crashing)")  # fmt: skip
    _add_compile_options(run)

    ir = _subcommand(subs, "ir", cmd_ir, common)
    _add_compile_options(ir)
    ir.add_argument("--no-locations", action="store_true", help="omit '# file:line' comments")
    which = ir.add_mutually_exclusive_group()
    which.add_argument("--untyped", action="store_true",
                       help="print the graph as lowered, before shape inference")  # fmt: skip
    which.add_argument("--after", metavar="PASS",
                       help="print the IR right after pass PASS (see --passes)")  # fmt: skip
    which.add_argument("--all", action="store_true",
                       help="print the IR after every pass that changed it")  # fmt: skip
    which.add_argument("--passes", action="store_true",
                       help="list the passes with their -O level and purpose")  # fmt: skip
    which.add_argument("--llvm", action="store_true",
                       help="print the LLVM IR the llvm backend generates")  # fmt: skip
    which.add_argument("--asm", metavar="KERNEL",
                       help="print the assembly of one kernel (layer name or kernelN)")  # fmt: skip
    ir.add_argument("--threads", type=_threads, default=None, metavar="N",
                    help="threads the code is built for (default as for run)")  # fmt: skip

    picture = _subcommand(subs, "graph", cmd_graph, common)
    _add_compile_options(picture)
    picture.add_argument("-o", "--output", type=Path, required=True, metavar="NET.dot",
                         help="the file to write: .dot (DOT text), or .svg, .png, .pdf (drawn "
                         "by Graphviz's dot program)")  # fmt: skip
    picture.add_argument("--after", metavar="PASS",
                         help="draw the graph right after pass PASS (see ir --passes)")  # fmt: skip
    picture.add_argument("--force", action="store_true", help="overwrite an existing file")

    init = _subcommand(subs, "init-weights", cmd_init_weights, common)
    init.add_argument("-o", "--output", type=Path, required=True, metavar="W.npz",
                      help="the .npz or .safetensors file to write")  # fmt: skip
    init.add_argument("--seed", type=int, default=0, help="initialization seed (default 0)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    export = _subcommand(subs, "export", cmd_export, common)
    export.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.onnx",
                        help="the .onnx file to write")  # fmt: skip
    export.add_argument("--weights", type=Path, metavar="W.npz",
                        help="an .npz or .safetensors file of parameters (default: initialized "
                        "from --seed)")  # fmt: skip
    export.add_argument("--seed", type=int, default=0,
                        help="seed of the parameters without --weights (default 0)")  # fmt: skip
    export.add_argument("--opset", type=int, default=None, metavar="N",
                        help="the ONNX opset (default 21; from 13 to the newest the onnx "
                        "package knows)")  # fmt: skip
    export.add_argument("--shape", type=_sizes, default={}, metavar="H=224,W=224",
                        help="fix the sizes of a network written for any size (default: they "
                        "stay dynamic in the model)")  # fmt: skip
    export.add_argument("--force", action="store_true", help="overwrite an existing file")

    imp = _subcommand(subs, "import", cmd_import, common, file_help="the .onnx model")
    imp.add_argument("-o", "--output", type=Path, required=True, metavar="NET.conv",
                     help="the .conv file to write")  # fmt: skip
    imp.add_argument("--weights", type=Path, metavar="W.npz",
                     help="the .npz of parameters to write (default: NET.npz)")  # fmt: skip
    imp.add_argument("--force", action="store_true", help="overwrite existing files")

    bench = _subcommand(subs, "bench", cmd_bench, common)
    bench.add_argument("--batch", type=_positive, default=1, metavar="B",
                       help="batch size of the random inputs (default 1)")  # fmt: skip
    bench.add_argument("--runs", type=_positive, default=15, metavar="R",
                       help="timed runs per backend; prints the median (default 15)")  # fmt: skip
    bench.add_argument("--warmup", type=int, default=3, metavar="W",
                       help="untimed runs before timing (default 3)")  # fmt: skip
    bench.add_argument("--threads", type=_threads, default=None, metavar="T",
                       help="threads of llvm, torch, onnxruntime (default as for run)")  # fmt: skip
    bench.add_argument("--backends", default="numpy,llvm,torch,onnxruntime", metavar="LIST",
                       help="comma-separated backends to time (default all: "
                       "numpy,llvm,torch,onnxruntime)")  # fmt: skip
    bench.add_argument("--profile", action="store_true",
                       help="also time every native kernel of the llvm backend")  # fmt: skip
    bench.add_argument("--shape", type=_sizes, default={}, metavar="H=224,W=224",
                       help="the input sizes of a network written for any size")  # fmt: skip
    return parser


# ---- entry point -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # "warning: ...", not Python's source line
            args.handler(args)
        sys.stdout.flush()  # a closed pipe must surface here, not at interpreter exit
    except ConvdslError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # anything else escaping the compiler is a bug by definition
        _report_bug(exc, args.debug)
        return EXIT_INTERNAL_ERROR
    return 0


def _show_warning(message: Warning | str, *args: object, **kwargs: object) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _report_bug(exc: Exception, debug: bool) -> None:
    message = str(exc)
    if not isinstance(exc, convdsl.InternalError):
        message = f"internal error: this is a bug in convdsl: {type(exc).__name__}: {message}"
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    else:
        message += " (add --debug for the traceback)"
    print(" ".join(message.split()), file=sys.stderr)


def _silence_stdout() -> None:
    # Later writes and the interpreter's final flush would raise again: point stdout at devnull.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
