"""The compiler pipeline, top to bottom: source text to the graph a backend runs.

``PASSES`` is the one ordered list of IR -> IR passes. Shape inference is always first: every
later pass and every backend relies on typed values and resolved attributes. ``verify`` runs
after each pass when asked (tests, ``--verify``), naming the pass that broke an invariant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from convdsl.diagnostics import ConvdslError, DiagnosticSink, Source
from convdsl.frontend.lower import lower
from convdsl.frontend.parse import parse
from convdsl.ir.graph import Graph
from convdsl.ir.verifier import verify
from convdsl.passes.fold import fold_batch_norm, fold_crop, fold_pad
from convdsl.passes.fusion import fuse
from convdsl.passes.layout import choose_layouts
from convdsl.passes.memory import plan_memory
from convdsl.passes.shapes import infer_shapes
from convdsl.passes.simplify import (
    eliminate_common_subexpressions,
    eliminate_dead_code,
    remove_identities,
)
from convdsl.passes.specialize import check_sizes, explain, specialize


@dataclass(frozen=True, slots=True)
class Pass:
    name: str
    purpose: str
    run: Callable[[Graph], Graph]
    min_opt_level: int = 0


PASSES: tuple[Pass, ...] = (
    Pass(
        "shapes",
        "infer and check every shape; resolve attributes; declare parameters",
        infer_shapes,
    ),
    Pass(
        "remove-identities",
        "drop no-op crops, pads, upscales, shuffles, pools",
        remove_identities,
        1,
    ),
    Pass(
        "fold-pad",
        "fold explicit zero pads into the padding of the convs reading them",
        fold_pad,
        1,
    ),
    Pass(
        "fold-crop",
        "fold a crop of a transposed conv's output into its padding",
        fold_crop,
        1,
    ),
    Pass(
        "fold-batch-norm",
        "fold batch norm into the conv before it (derived weight, bias)",
        fold_batch_norm,
        1,
    ),
    Pass(
        "cse",
        "merge nodes computing the same op on the same inputs",
        eliminate_common_subexpressions,
        1,
    ),
    Pass(
        "dce",
        "remove nodes no output depends on, and unused derived parameters",
        eliminate_dead_code,
        1,
    ),
    Pass(
        "fuse",
        "merge producers into the kernels of their elementwise, crop or shuffle consumers",
        fuse,
        min_opt_level=2,
    ),
    Pass(
        "choose-layouts",
        "store the input of each strided conv as phase rows (one conversion per value)",
        choose_layouts,
        min_opt_level=2,
    ),
    Pass(
        "plan-memory",
        "place every kernel output in one arena, reusing memory of dead values",
        plan_memory,
        min_opt_level=2,
    ),
)


def frontend(source: Source) -> Graph:
    """Parse and lower: the untyped graph, exactly as written.

    With lowering errors, shape checking still runs on the statements that did lower, and all
    errors are raised together in source order.
    """
    graph, errors = lower(parse(source))
    if errors:
        try:
            infer_shapes(graph)
        except ConvdslError as shape_errors:
            errors = [*errors, *shape_errors.diagnostics]
        sink = DiagnosticSink()
        sink.extend(errors)
        sink.raise_if_errors()
    return graph


def run_passes(
    graph: Graph,
    opt_level: int = 2,
    check: bool = False,
    after: Callable[[Pass, Graph], None] | None = None,
) -> Graph:
    """Run every pass enabled at ``opt_level`` in order; ``check`` verifies after each one.

    A graph whose inputs have symbolic sizes stops after shape inference: it is what ``check``
    shows, and it is specialized to concrete sizes (``passes.specialize``) before it runs.
    """
    for compiler_pass in PASSES:
        if compiler_pass.min_opt_level > opt_level:
            continue
        if compiler_pass is not PASSES[0] and graph.is_symbolic:
            break
        graph = compiler_pass.run(graph)
        if check:
            verify(graph, after_pass=compiler_pass.name)
        if after is not None:
            after(compiler_pass, graph)
    return graph


def compile_source(
    source: Source,
    opt_level: int = 2,
    check: bool = False,
    after: Callable[[Pass, Graph], None] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> Graph:
    """Source text to the optimized, typed graph; ``after`` sees the graph after each pass.
    ``sizes`` binds the input sizes of a network written for any size (``{"H": 224}``)."""
    untyped = frontend(source)
    if sizes:
        untyped = specialize_checked(untyped, sizes)
    return run_passes(untyped, opt_level=opt_level, check=check, after=after)


def specialize_checked(untyped: Graph, sizes: Mapping[str, int]) -> Graph:
    """``untyped`` specialized to ``sizes``: every size name given, within the limits, and the
    network valid at those sizes (else a ``ConvdslError`` naming the sizes and the broken
    constraint)."""
    generic = infer_shapes(untyped)
    check_sizes(generic.size_names(), sizes)
    bound = {name: int(value) for name, value in sizes.items()}
    specialized = specialize(untyped, bound)
    try:
        infer_shapes(specialized)
    except ConvdslError as err:
        raise explain(err, generic, bound) from None
    return specialized
