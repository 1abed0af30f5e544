"""The ``convdsl`` command: check, run, print the IR of, and initialize weights for a network.

Results go to stdout, diagnostics to stderr. Exit status: 0 success, 2 a user error (bad source,
weights, inputs or options: rendered diagnostics, never a traceback), 70 a bug in convdsl
(``--debug`` adds the traceback), 130 interrupted, 141 stdout closed early (``| head``).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import convdsl
from convdsl import weights as weights_io
from convdsl.api import (
    BACKENDS,
    DEFAULT_BACKEND,
    MAX_THREADS,
    THREADS_VARIABLE,
    Network,
    backend_graph,
    check_backend,
    compile_file,
    read_source,
    resolve_threads,
)
from convdsl.diagnostics import ConvdslError, DiagnosticSink, error
from convdsl.interop.optional import require
from convdsl.ir.boundary import ChannelsLastDecl, declared_type
from convdsl.ir.constraints import describe, describe_cond, essential
from convdsl.ir.cost import node_macs, node_param_count
from convdsl.ir.graph import Graph
from convdsl.ir.printer import print_graph
from convdsl.ir.symbolic import Expr
from convdsl.ir.types import format_shape
from convdsl.passes import report
from convdsl.passes.pipeline import PASSES, compile_source, frontend

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


# ---- tables ----------------------------------------------------------------------------------


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]
) -> list[str]:
    """Columns as wide as their widest cell; numeric columns right-aligned."""
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def human(count: int, unit: str) -> str:
    """``1234567890`` -> ``1,234,567,890 (1.23 GMAC)``; under a thousand, just the count."""
    for scale, prefix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if count >= scale:
            return f"{count:,} ({count / scale:.2f} {prefix}{unit})"
    return f"{count} {unit}".rstrip()


def count(value: int | Expr) -> str:
    """``1,234`` for an int, the expression for a count that depends on the sizes."""
    return f"{value:,}" if isinstance(value, int) else str(value)


def layer_rows(graph: Graph) -> list[tuple[str, str, str, int, int]]:
    """(layer, op, output shape, parameters, MACs per batch entry) for every node."""
    return [
        (
            node.name,
            node.op,
            ", ".join(format_shape(graph.type_of(v).shape) for v in node.outputs),
            node_param_count(graph, node),
            node_macs(graph, node),
        )
        for node in graph.nodes
    ]


def summary_lines(graph: Graph) -> list[str]:
    """The ``check`` report: a row per layer, then totals and the network's signature."""
    rows = layer_rows(graph)
    table = format_table(
        ("layer", "op", "output shape", "params", "MACs"),
        [(name, op, shape, f"{params:,}", count(macs)) for name, op, shape, params, macs in rows],
        (False, False, False, True, True),
    )
    # Counted from shapes: `check` never allocates the (possibly huge) weights.
    params = sum(math.prod(p.shape) for p in graph.params.values())
    macs = sum(row[4] for row in rows)
    inputs = [(graph.values[v].name, v) for v in graph.inputs]
    total = human(macs, "MAC") if isinstance(macs, int) else f"{macs} MAC"
    last_in, last_out = graph.channels_last_inputs, graph.channels_last_outputs
    lines = [
        f"network {graph.name}",
        *table,
        "",
        f"layers:  {len(rows)}",
        f"params:  {human(params, '')}",
        f"MACs:    {total} per batch entry",
        f"inputs:  {_signature(graph, inputs, [last_in.get(v) for _, v in inputs])}",
        f"outputs: {_signature(graph, graph.outputs, [last_out.get(n) for n, _ in graph.outputs])}",
    ]
    if graph.is_symbolic:
        lines += size_lines(graph)
    return lines


def size_lines(graph: Graph) -> list[str]:
    """The sizes a network written for any size accepts, and the layers that constrain them."""
    accepted = describe(graph) or "any"
    lines = [f"sizes:   {accepted}"]
    for constraint in essential(graph.constraints):
        where = f"{Path(constraint.span.source.name).name}:{constraint.span.line}"
        if constraint.call_sites:
            site = constraint.call_sites[-1]
            where += f" (in {site.block}, called at line {site.span.line})"
        lines.append(f"  {where}: {constraint.what} needs {describe_cond(constraint.cond)}")
    return lines


def _signature(
    graph: Graph, named: Sequence[tuple[str, int]], layouts: Sequence[ChannelsLastDecl | None]
) -> str:
    """``x: f32[N,3,H,W]``, or as declared channels-last ``x: nhwc f32[N,H,W,3]``."""
    typed = [
        f"{name}: {declared_type(graph.type_of(v), layout)}"
        for (name, v), layout in zip(named, layouts, strict=True)
    ]
    return ", ".join(typed) or "(none)"


def stats_lines(outputs: dict[str, np.ndarray]) -> list[str]:
    rows = []
    for name, array in outputs.items():
        if array.size:
            stats = [f"{float(f(array)):.6g}" for f in (np.min, np.max, np.mean)]
        else:
            stats = ["-", "-", "-"]
        rows.append((name, format_shape(array.shape), str(array.dtype), *stats))
    header = ("output", "shape", "dtype", "min", "max", "mean")
    return format_table(header, rows, (False, False, False, True, True, True))


# ---- inputs and files ------------------------------------------------------------------------


def parse_input_flags(flags: Sequence[str], net: Network) -> dict[str, np.ndarray]:
    """``NAME=PATH.npy`` pairs to arrays; every bad flag is reported, each naming its input."""
    sink = DiagnosticSink()
    arrays: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for flag in flags:
        name, sep, path = flag.partition("=")
        if not sep or not name or not path:
            sink.error(
                f"--input '{flag}': expected NAME=PATH.npy",
                hint=f"for example --input {next(iter(net.inputs), 'x')}=x.npy",
            )
        elif name not in net.inputs:
            close = difflib.get_close_matches(name, list(net.inputs), n=1)
            sink.error(
                f"--input {name}: the network has no input '{name}'; its inputs are "
                f"{', '.join(net.inputs) or '(none)'}",
                hint=f"did you mean '{close[0]}'?" if close else None,
            )
        elif name in seen:
            sink.error(f"--input {name}: given more than once")
        else:
            seen.add(name)
            try:
                arrays[name] = load_npy(name, Path(path))
            except ConvdslError as exc:
                sink.extend(exc.diagnostics)
    sink.raise_if_errors()
    return arrays


def load_npy(name: str, path: Path) -> np.ndarray:
    """One ``.npy`` array, never unpickling anything."""
    hint = "save inputs with numpy.save; pickled object arrays are refused"
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
        # Checked first: without it numpy calls any non-.npy file "pickled data".
        if magic != b"\x93NUMPY":
            found = "an .npz archive" if magic.startswith(b"PK") else "no .npy header"
            raise error(f"input '{name}': {path}: not a .npy file ({found})", hint=hint)
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise error(f"input '{name}': {path}: no such file") from None
    except (ValueError, OSError, EOFError) as exc:
        raise error(
            f"input '{name}': {path}: not a readable .npy array ({exc})", hint=hint
        ) from None
    if loaded.dtype.kind not in "fiu":
        raise error(f"input '{name}': {path}: expected a numeric array, found dtype {loaded.dtype}")
    return loaded


def _batch_of(given: dict[str, np.ndarray], net: Network) -> int:
    """The batch the random inputs get when --batch is not given: the given inputs' own."""
    for name, array in given.items():
        if not isinstance(net.inputs[name].shape[0], int) and array.ndim:
            return int(array.shape[0])
    return 1


def _sizes_of(given: dict[str, np.ndarray], net: Network, shape: dict[str, int]) -> dict[str, int]:
    """The input sizes: --shape, and those of the --input arrays (which must agree)."""
    sizes = dict(shape)
    origin = dict.fromkeys(shape, "--shape")
    for name, array in given.items():
        declared = net.inputs[name].shape
        if array.ndim != len(declared):
            continue  # the run reports the rank
        for dim, size in zip(declared[2:], array.shape[2:], strict=True):
            if isinstance(dim, Expr) and str(dim) in net.sizes:
                if str(dim) in sizes and sizes[str(dim)] != size:
                    raise error(
                        f"size {dim} is {size} in --input {name} but {sizes[str(dim)]} in "
                        f"{origin[str(dim)]}"
                    )
                sizes[str(dim)] = int(size)
                origin[str(dim)] = f"--input {name}"
    missing = [name for name in net.sizes if name not in sizes]
    if missing and len(given) < len(net.inputs):
        raise error(
            f"random inputs need the input sizes {', '.join(missing)}",
            hint=f"give them: --shape {','.join(f'{n}=...' for n in missing)}, or --input arrays",
        )
    return sizes


def _refuse_overwrite(path: Path, force: bool) -> None:
    # Checked before compiling and running, so a long run is not lost to a bad file name.
    weights_io.check_weights_path(path)
    if not path.parent.is_dir():
        raise error(f"{path}: directory {path.parent} does not exist")
    if path.exists() and not force:
        raise error(
            f"{path}: file exists; refusing to overwrite it",
            hint="choose another name, or pass --force",
        )


def _save(path: Path, arrays: dict[str, np.ndarray], force: bool) -> None:
    try:
        weights_io.save_weights(path, arrays, overwrite=force)
    except OSError as exc:
        raise error(f"{path}: cannot write ({exc.strerror or exc})") from None


# ---- subcommands -----------------------------------------------------------------------------
# Each docstring is the subcommand's --help: summary, description, then a runnable example.


def cmd_check(args: argparse.Namespace) -> None:
    """Compile and shape-check; print layers, parameters and MACs.

    Parse, lower, shape-check and optimize FILE, then print one row per layer as written
    (output shape, parameter count, multiply-accumulates per batch entry), the totals, and the
    inputs and outputs. --report adds what each optimizer pass did: fused kernels, what blocked
    fusion, activation traffic and the planned activation memory. With --backend llvm (the
    default) check also makes sure the backend has a lowering for every layer, without
    compiling any native code: checking takes as long as parsing and optimizing.

    convdsl check net.conv --verify --report
    """
    trace = report.PipelineTrace()
    source = read_source(args.file)
    graph = compile_source(source, args.opt_level, args.verify, trace, args.shape)
    check_backend(graph, args.backend, args.threads)  # compiles nothing
    if args.report and graph.is_symbolic:
        names = ",".join(f"{name}=..." for name in graph.size_names())
        raise error(
            "--report shows the optimized network, which depends on the input sizes",
            hint=f"give them: --shape {names}",
        )
    # The table shows the layers as written; the report says what the optimizer made of them.
    print("\n".join(summary_lines(trace.steps[0].after)))
    if args.report:
        print("\n" + "\n".join(report.report_lines(report.build_report(trace, args.opt_level))))


def cmd_run(args: argparse.Namespace) -> None:
    """Run the network on given or random inputs.

    Compile FILE and run it. Inputs not given with --input are seeded standard-normal arrays,
    their symbolic batch bound to --batch (default: the batch of the given inputs, else 1),
    and their sizes, for a network written for any size, to those of the given inputs or
    --shape.
    Prints the shape, dtype, min, max and mean of each output. The llvm backend (the default)
    runs it as native code on --threads threads; --backend numpy runs the reference
    interpreter.

    convdsl run net.conv --input image=image.npy --weights w.npz --output out.npz
    """
    if args.output is not None:
        _refuse_overwrite(args.output, args.force)
    net = compile_file(
        args.file,
        backend=args.backend,
        opt_level=args.opt_level,
        weights=args.weights,
        seed=args.seed,
        verify=args.verify,
        threads=args.threads,
        bounds_check=args.bounds_check,
    )
    given = parse_input_flags(args.input, net)
    batch = args.batch if args.batch is not None else _batch_of(given, net)
    sizes = _sizes_of(given, net, args.shape) if net.sizes else args.shape
    random = net.random_inputs(seed=args.seed, batch=batch, sizes=sizes)
    inputs = {**random, **given}
    outputs = net(inputs)
    print("\n".join(stats_lines(outputs)))
    if args.output is not None:
        _save(args.output, outputs, args.force)
        print(f"wrote {len(outputs)} output(s) to {args.output}")


def cmd_ir(args: argparse.Namespace) -> None:
    """Print the compiled IR.

    Print the IR of FILE as text: one line per value (with its source line), then the
    parameters, the outputs and (at -O2) the memory plan. --after PASS prints it right after
    one pass, --all after every pass that changed it, --passes lists the pipeline. --llvm
    prints the LLVM IR the llvm backend generates (one module per distinct kernel, then the
    entry `run`), --asm KERNEL compiles one kernel and prints its host assembly (any layer
    it computes, or kernelN).

    convdsl ir net.conv --after fold-batch-norm --no-locations | less
    convdsl ir net.conv --asm conv3 --threads 1
    """
    if args.passes:
        print("\n".join(report.passes_lines()))
        return
    if args.llvm or args.asm is not None:
        from convdsl.backends.llvm import inspect

        graph = compile_source(read_source(args.file), args.opt_level, sizes=args.shape)
        if graph.is_symbolic:
            names = ",".join(f"{name}=..." for name in graph.size_names())
            raise error(
                "native code depends on the input sizes", hint=f"give them: --shape {names}"
            )
        graph = backend_graph(graph, "llvm")
        if args.llvm:
            sys.stdout.write(inspect.llvm_ir(graph, resolve_threads(args.threads)))
        else:
            threads = resolve_threads(args.threads)
            sys.stdout.write(inspect.kernel_assembly(graph, threads, args.asm))
        return
    locations = not args.no_locations
    source = read_source(args.file)
    if args.untyped:
        sys.stdout.write(print_graph(frontend(source), show_locations=locations))
        return
    if args.after is not None:
        _check_pass_name(args.after, args.opt_level)
    trace = report.PipelineTrace()
    graph = compile_source(source, args.opt_level, args.verify, trace, args.shape)
    if graph.is_symbolic and args.after not in (None, "shapes"):
        names = ",".join(f"{name}=..." for name in graph.size_names())
        raise error(
            f"pass {args.after} runs on the network specialized to its input sizes",
            hint=f"give them: --shape {names}",
        )
    if args.all:
        sys.stdout.write(report.all_passes_text(trace, show_locations=locations))
        return
    if args.after is not None:
        graph = trace.graph_after(args.after)
    sys.stdout.write(report.graph_text(graph, show_locations=locations))


def _check_pass_name(name: str, opt_level: int) -> None:
    """--after names a pass that runs at this -O level."""
    names = [p.name for p in PASSES]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        raise error(
            f"--after {name}: no such pass; the passes are {', '.join(names)}",
            hint=f"did you mean '{close[0]}'?" if close else "convdsl ir FILE --passes lists them",
        )
    level = next(p.min_opt_level for p in PASSES if p.name == name)
    if level > opt_level:
        raise error(
            f"--after {name}: the pass does not run at -O{opt_level}",
            hint=f"it runs from -O{level} up; add -O{level}",
        )


def cmd_graph(args: argparse.Namespace) -> None:
    """Write the graph as a picture in Graphviz DOT.

    Write FILE's graph as DOT text: one box per layer (op, name, output shape, source line),
    inputs and outputs drawn apart, edges labeled with shapes, and at -O2 each fused kernel a
    cluster of its parts. --after PASS draws the graph right after that pass (see convdsl ir
    --passes); --shape fixes the sizes of a network written for any size. Graphviz draws the
    text: dot -Tsvg net.dot -o net.svg.

    convdsl graph net.conv -o net.dot -O0
    """
    from convdsl.interop.dot import layers, to_dot

    if args.after is not None:
        _check_pass_name(args.after, args.opt_level)
    trace = report.PipelineTrace()
    graph = compile_source(read_source(args.file), args.opt_level, args.verify, trace, args.shape)
    if graph.is_symbolic and args.after not in (None, "shapes"):
        names = ",".join(f"{name}=..." for name in graph.size_names())
        raise error(f"pass {args.after} runs on the network specialized to its input sizes",
                    hint=f"give them: --shape {names}")  # fmt: skip
    if args.after is not None:
        graph = trace.graph_after(args.after)
    output: Path = args.output
    if output.suffix != ".dot":
        raise error(f"{output}: expected a file name ending in .dot",
                    hint="convdsl writes DOT text; Graphviz makes SVG of it: "
                    f"dot -Tsvg {output.with_suffix('.dot')} -o {output}")  # fmt: skip
    if output.exists() and not args.force:
        raise error(f"{output}: file exists; refusing to overwrite it", hint="pass --force")
    try:
        output.write_text(to_dot(graph), encoding="utf-8")
    except OSError as exc:
        raise error(f"{output}: cannot write it ({exc.strerror or exc})") from None
    kernels = sum(node.is_fused for node in graph.nodes)
    print(f"wrote {output} ({len(layers(graph))} layers, {kernels} fused kernels)")


def cmd_init_weights(args: argparse.Namespace) -> None:
    """Write deterministic initial parameters to an .npz or .safetensors file.

    Initialize every parameter of FILE (deterministically, per parameter name and --seed) and
    save them to an .npz or .safetensors file (by the name's ending) for `convdsl run
    --weights`.

    convdsl init-weights net.conv -o w.npz --seed 1
    """
    _refuse_overwrite(args.output, args.force)
    graph = compile_source(read_source(args.file))
    arrays = weights_io.init_params(graph.params, args.seed)
    _save(args.output, arrays, args.force)
    count = sum(a.size for a in arrays.values())
    print(f"wrote {len(arrays)} arrays ({count:,} parameters) to {args.output}")


def cmd_export(args: argparse.Namespace) -> None:
    """Write the network as an ONNX model.

    Compile FILE as written (shapes checked, nothing folded or fused) and write it with its
    weights (--weights, else initialized from --seed) as an ONNX model: one node per layer,
    named as the layer, parameters named as in convdsl. The batch, and the sizes a network
    written for any size leaves open, stay dynamic unless --shape fixes them. The file passes
    onnx.checker and runs in onnxruntime; a layer ONNX cannot express exactly is an error
    naming it. Needs the onnx package (pip install 'convdsl[onnx]').

    convdsl export net.conv -o net.onnx --weights w.safetensors --opset 17
    """
    from convdsl.interop.onnx_export import check_opset, check_output_path

    onnx = require("onnx", "onnx", "ONNX export")
    check_opset(args.opset, onnx)  # before compiling: a bad option should not cost a compile
    check_output_path(args.output, args.force)
    net = compile_file(args.file, backend="numpy", opt_level=0, weights=args.weights,
                       seed=args.seed, sizes=args.shape or None)  # fmt: skip
    net.to_onnx(args.output, opset=args.opset, overwrite=args.force)
    print(f"wrote {args.output} (opset {check_opset(args.opset, onnx)}, {len(net.graph.nodes)} "
          f"layers, {len(net.weights)} parameter arrays)")  # fmt: skip


def cmd_import(args: argparse.Namespace) -> None:
    """Import an ONNX model as a .conv network and its weights.

    Read the ONNX model FILE and write it as .conv text (-o) and its parameters as an .npz
    (--weights; by default the -o name with .npz), for `convdsl run -o ... --weights ...`.
    Layers are named after the model's initializers or nodes; inputs with dynamic dims get
    size names. An op or attribute convdsl cannot express exactly is refused, naming the
    node, and nothing is written. Needs the onnx package.

    convdsl import model.onnx -o net.conv --weights net.npz
    """
    from convdsl.interop.onnx_import import write_import  # imports onnx only here

    conv, npz, imported = write_import(args.file, args.output, args.weights, args.force)
    wrote = f" and {len(imported.weights)} arrays to {npz}" if npz is not None else ""
    print(f"wrote {conv}{wrote}")


def cmd_bench(args: argparse.Namespace) -> None:
    """Time the network on every backend, side by side.

    Compile FILE and time it in this process on the same seeded inputs and weights with the
    NumPy interpreter, the LLVM backend and, when installed, PyTorch CPU and ONNX Runtime (the
    network converted from the IR): the median of --runs runs after --warmup warm-ups, GFLOP/s,
    the speedup over the interpreter and the largest output difference from it. --profile
    adds the LLVM backend's kernels, slowest first: time per run, GFLOP/s, GB/s, and the
    layer and line each one computes.

    convdsl bench net.conv --batch 8 --threads 2 --backends numpy,llvm
    convdsl bench net.conv --backends llvm --profile
    """
    from convdsl import bench  # imports torch/onnxruntime only when benchmarking

    backends = bench.parse_backends(args.backends)
    result = bench.bench_file(args.file, batch=args.batch, runs=args.runs, warmup=args.warmup,
                              threads=args.threads, backends=backends,
                              profile=args.profile, sizes=args.shape)  # fmt: skip
    print("\n".join(bench.report_lines(result)))


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
                         help="the .dot file to write")  # fmt: skip
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
