"""One function per ``convdsl`` subcommand; each docstring is the subcommand's ``--help``:
summary, description, then a runnable example.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from convdsl import weights as weights_io
from convdsl.api import (
    backend_graph,
    check_backend,
    compile_file,
    read_source,
    resolve_threads,
)
from convdsl.commands import tables
from convdsl.commands.files import (
    batch_of,
    parse_input_flags,
    refuse_overwrite,
    save_outputs,
    sizes_of,
)
from convdsl.commands.tables import stats_lines
from convdsl.diagnostics import error
from convdsl.interop.optional import require
from convdsl.ir.printer import print_graph
from convdsl.passes import report
from convdsl.passes.pipeline import PASSES, compile_source, frontend

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
    print("\n".join(tables.summary_lines(trace.steps[0].after)))
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
        refuse_overwrite(args.output, args.force)
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
    batch = args.batch if args.batch is not None else batch_of(given, net)
    sizes = sizes_of(given, net, args.shape) if net.sizes else args.shape
    random = net.random_inputs(seed=args.seed, batch=batch, sizes=sizes)
    inputs = {**random, **given}
    outputs = net(inputs)
    print("\n".join(stats_lines(outputs)))
    if args.output is not None:
        save_outputs(args.output, outputs, args.force)
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
    """Draw the graph: Graphviz DOT text, or SVG, PNG or PDF.

    Write FILE's graph as DOT text (-o net.dot): one box per layer (op, name, output shape,
    source line), inputs and outputs drawn apart, edges labeled with shapes, and at -O2 each
    fused kernel a cluster of its parts. -o net.svg (.png, .pdf) draws it with Graphviz's dot
    program, which must be installed (DOT text needs nothing). --after PASS draws the graph
    right after that pass (see convdsl ir --passes); --shape fixes the sizes of a network
    written for any size.

    convdsl graph net.conv -o net.dot -O0
    """
    from convdsl.interop.dot import layers, to_dot
    from convdsl.interop.render import write_picture

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
    if output.exists() and not args.force:
        raise error(f"{output}: file exists; refusing to overwrite it", hint="pass --force")
    write_picture(to_dot(graph), output)
    kernels = sum(node.is_fused for node in graph.nodes)
    print(f"wrote {output} ({len(layers(graph))} layers, {kernels} fused kernels)")


def cmd_init_weights(args: argparse.Namespace) -> None:
    """Write deterministic initial parameters to an .npz or .safetensors file.

    Initialize every parameter of FILE (deterministically, per parameter name and --seed) and
    save them to an .npz or .safetensors file (by the name's ending) for `convdsl run
    --weights`.

    convdsl init-weights net.conv -o w.npz --seed 1
    """
    refuse_overwrite(args.output, args.force)
    graph = compile_source(read_source(args.file))
    arrays = weights_io.init_params(graph.params, args.seed)
    save_outputs(args.output, arrays, args.force)
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
