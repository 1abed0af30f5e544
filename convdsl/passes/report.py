"""What the optimizer did to one network: the text of ``convdsl check --report`` and ``ir --all``.

A ``PipelineTrace`` is handed to the pipeline as its ``after`` callback and keeps the graph after
every pass; the functions here turn a finished trace into data (``OptimizationReport``) and text.
Nothing here runs a pass or changes a graph: the report describes the compilation that happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from convdsl.diagnostics import InternalError
from convdsl.ir.cost import graph_traffic
from convdsl.ir.graph import RELAYOUT, Graph
from convdsl.ir.memory_plan import MemoryPlan
from convdsl.ir.printer import print_graph
from convdsl.passes import fusion, layout
from convdsl.passes.pipeline import PASSES, Pass


@dataclass(frozen=True, slots=True)
class PassStep:
    """One pass as it ran: the graph it was given (None for the first, the untyped front-end
    graph the trace never sees) and the graph it returned."""

    compiler_pass: Pass
    before: Graph | None
    after: Graph

    @property
    def changed(self) -> bool:
        # Passes return their argument itself when they change nothing; equality catches a pass
        # that rebuilt an identical graph.
        return self.before is None or (self.after is not self.before and self.after != self.before)


@dataclass
class PipelineTrace:
    """The ``after`` callback of ``run_passes``/``compile_source`` that records every step."""

    steps: list[PassStep] = field(default_factory=list)

    def __call__(self, compiler_pass: Pass, graph: Graph) -> None:
        before = self.steps[-1].after if self.steps else None
        self.steps.append(PassStep(compiler_pass, before, graph))

    def graph_after(self, name: str) -> Graph:
        """The graph right after the pass called ``name``, which must have run."""
        for step in self.steps:
            if step.compiler_pass.name == name:
                return step.after
        raise InternalError(f"pass {name} did not run; the trace has {len(self.steps)} steps")


@dataclass(frozen=True, slots=True)
class PassSummary:
    name: str
    purpose: str
    changed: bool
    nodes_before: int | None
    nodes_after: int


@dataclass(frozen=True, slots=True)
class OptimizationReport:
    """The data behind ``check --report``; traffic is (read, written) bytes per batch entry."""

    opt_level: int
    passes: tuple[PassSummary, ...]
    fusion_plan: fusion.FusionPlan | None  # None when fusion did not run
    fused_kernels: tuple[str, ...]  # one ``kernel = anchor_op + op(member)`` line per group
    layouts: tuple[str, ...] | None  # one line per conversion; None when layouts were not chosen
    traffic_before: tuple[int, int]
    traffic_after: tuple[int, int]
    memory: MemoryPlan | None  # None when memory planning did not run


def build_report(trace: PipelineTrace, opt_level: int) -> OptimizationReport:
    """Summarize a finished trace; the first step must be shape inference."""
    fusion_step = next((s for s in trace.steps if s.compiler_pass.run is fusion.fuse), None)
    plan = groups = None
    if fusion_step is not None and fusion_step.before is not None:
        plan = fusion.plan_fusion(fusion_step.before)
        groups = tuple(describe_group(fusion_step.before, g) for g in plan.groups)
    typed, final = trace.steps[0].after, trace.steps[-1].after
    chose = any(s.compiler_pass.run is layout.choose_layouts for s in trace.steps)
    return OptimizationReport(
        opt_level=opt_level,
        passes=tuple(
            PassSummary(
                s.compiler_pass.name,
                s.compiler_pass.purpose,
                s.changed,
                None if s.before is None else len(s.before.nodes),
                len(s.after.nodes),
            )
            for s in trace.steps
        ),
        fusion_plan=plan,
        fused_kernels=groups or (),
        layouts=conversions(final) if chose else None,
        traffic_before=graph_traffic(typed),
        traffic_after=graph_traffic(final),
        memory=final.memory,
    )


def conversions(graph: Graph) -> tuple[str, ...]:
    """``stem.phases2: phases(stride=2, first=0, length=17) for down``: every ``relayout``,
    the layout it stores and the kernels that read it."""
    readers = graph.consumers()
    return tuple(
        f"{node.name}: {graph.type_of(node.output).layout} for "
        + ", ".join(reader.name for reader in readers[node.output])
        for node in graph.nodes
        if node.op == RELAYOUT
    )


def describe_group(graph: Graph, group: fusion.FusionGroup) -> str:
    """``upscore2 = conv_transpose2d + add(fuse_pool4)``: the anchor by its op, the other
    members by op and layer name, in execution order."""
    ops = {node.name: node.op for node in graph.nodes}
    members = [
        ops[name] if name == group.anchor else f"{ops[name]}({name})" for name in group.members
    ]
    return f"{group.kernel} = {' + '.join(members)}"


# ---- text --------------------------------------------------------------------------------


def format_bytes(count: int) -> str:
    """``1536`` -> ``1.50 KiB``: binary units, as memory is allocated."""
    for scale, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def report_lines(report: OptimizationReport) -> list[str]:
    """The optimization report as printed after ``check``'s layer table."""
    lines = [f"optimization (-O{report.opt_level})"]
    width = max(len(p.name) for p in report.passes)
    for summary in report.passes:
        if summary.nodes_before is None or summary.nodes_before == summary.nodes_after:
            nodes = f"{summary.nodes_after} nodes"
        else:
            nodes = f"{summary.nodes_before} -> {summary.nodes_after} nodes"
        state = "changed" if summary.changed else "unchanged"
        lines.append(f"  {summary.name:<{width}}  {state:<9}  {nodes}")
    lines += ["", *_fusion_lines(report), "", *_layout_lines(report)]
    lines += ["", *_traffic_lines(report), "", *_memory_lines(report)]
    return lines


def _layout_lines(report: OptimizationReport) -> list[str]:
    if report.layouts is None:
        level = _level_of(layout.choose_layouts)
        return [f"layouts: not chosen at -O{report.opt_level} (needs -O{level})"]
    if not report.layouts:
        return ["layouts: every value dense"]
    count = len(report.layouts)
    return [f"layouts: {count} conversion{'s' * (count != 1)}", *(f"  {t}" for t in report.layouts)]


def _fusion_lines(report: OptimizationReport) -> list[str]:
    plan = report.fusion_plan
    if plan is None:
        return [f"fusion: not run at -O{report.opt_level} (needs -O{_level_of(fusion.fuse)})"]
    lines = [f"fusion: {plan.kernels_before} kernels -> {plan.kernels_after} kernels"]
    lines += [f"  {text}" for text in report.fused_kernels]
    if plan.blocked:
        lines.append(f"blocked ({len(plan.blocked)}):")
        lines += [f"  {b.producer} -> {b.consumer}: {b.reason}" for b in plan.blocked]
    return lines


def _traffic_lines(report: OptimizationReport) -> list[str]:
    (read_o0, written_o0), (read, written) = report.traffic_before, report.traffic_after
    return [
        "activation traffic (per batch entry, -O0 -> this level):",
        f"  written  {format_bytes(written_o0)} -> {format_bytes(written)}",
        f"  read     {format_bytes(read_o0)} -> {format_bytes(read)}",
    ]


def _memory_lines(report: OptimizationReport) -> list[str]:
    plan = report.memory
    if plan is None:
        return [f"memory plan: not made at -O{report.opt_level}"]
    return memory_summary(plan)


def memory_summary(plan: MemoryPlan) -> list[str]:
    """Arena, naive and lower-bound sizes of a plan, and how they compare."""
    bound = plan.lower_bound_bytes
    of_bound = f"{plan.arena_bytes / bound:.2f} of lower bound" if bound else "-"
    ratio = f"{plan.naive_bytes / plan.arena_bytes:.1f}" if plan.arena_bytes else "-"
    return [
        "activation memory (per batch entry):",
        f"  arena        {format_bytes(plan.arena_bytes):>10}  {of_bound}",
        f"  naive        {format_bytes(plan.naive_bytes):>10}  one buffer per value",
        f"  lower bound  {format_bytes(bound):>10}  most bytes live at once",
        f"  naive / arena = {ratio}",
    ]


def memory_plan_lines(graph: Graph) -> list[str]:
    """The memory section of ``convdsl ir``: every planned value's slot and live range."""
    plan = graph.memory
    if plan is None:
        return []
    lines = [
        f"memory arena={plan.arena_bytes} naive={plan.naive_bytes} "
        f"lower_bound={plan.lower_bound_bytes} bytes per batch entry"
    ]
    for buffer in sorted(plan.buffers.values(), key=lambda b: (b.first, b.value)):
        shares = "" if buffer.shares is None else f" shares=%{graph.values[buffer.shares].name}"
        lines.append(
            f"  %{graph.values[buffer.value].name}: offset={buffer.offset} size={buffer.size} "
            f"live=[{buffer.first},{buffer.last}]{shares}"
        )
    return lines


def graph_text(graph: Graph, show_locations: bool = True) -> str:
    """The IR as ``convdsl ir`` prints it: the graph, then its memory plan if it has one."""
    return print_graph(graph, show_locations) + "".join(
        line + "\n" for line in memory_plan_lines(graph)
    )


def all_passes_text(trace: PipelineTrace, show_locations: bool = True) -> str:
    """``ir --all``: the IR after every pass that changed it, under a ``;; after`` header; a
    pass that changed nothing gets one line."""
    chunks = []
    for step in trace.steps:
        name = step.compiler_pass.name
        if step.changed:
            chunks.append(f";; after {name}: {step.compiler_pass.purpose}\n")
            chunks.append(graph_text(step.after, show_locations))
        else:
            chunks.append(f";; after {name}: unchanged\n")
    return "".join(chunks)


def passes_lines(passes: Sequence[Pass] = PASSES) -> list[str]:
    """``ir --passes``: the pipeline in order, with the -O level that enables each pass."""
    width = max(len(p.name) for p in passes)
    return [f"{p.name:<{width}}  -O{p.min_opt_level}  {p.purpose}" for p in passes]


def _level_of(run: object) -> int:
    return next((p.min_opt_level for p in PASSES if p.run is run), 2)
