"""The layout pass (``convdsl.passes.layout``): golden IR after it on small programs, the
conversions it shares or does not insert, the memory it plans for phase rows, the verifier's
check, and outputs before vs after on the NumPy interpreter and the LLVM backend."""

from __future__ import annotations

import re
import textwrap
from dataclasses import replace

import numpy as np
import pytest

import convdsl
from convdsl.diagnostics import InternalError
from convdsl.ir.graph import Graph
from convdsl.ir.printer import print_graph
from convdsl.ir.types import PhaseRows
from convdsl.ir.verifier import verify
from convdsl.passes.layout import choose_layouts, wanted_layout
from convdsl.passes.memory import plan_memory

TWO_READERS = """
input x: f32[N, 3, 9, 21]
a = conv2d(x, 3, kernel=3, stride=2, padding=same, bias=false)
b = depthwise2d(x, kernel=[3, 5], stride=2, padding=[[1, 1], [2, 2]], bias=false)
c = conv2d(x, 2, kernel=3, padding=same, bias=false)
d = conv2d(x, 2, kernel=2, stride=3, bias=false)
output y = relu(a) + b
output z = c
output w = d
"""


def typed(src: str) -> Graph:
    return convdsl.compile_string(src, opt_level=0, verify=True, backend="numpy").graph


def golden(text: str) -> str:
    return re.sub(r" \\\n *", " ", textwrap.dedent(text).lstrip("\n"))


def test_strided_convs_read_one_shared_conversion_per_stride() -> None:
    after = choose_layouts(typed(TWO_READERS))
    verify(after, after_pass="choose-layouts")
    # a and b (stride 2 on the last axis) share x's phase rows; c (stride 1) reads x itself;
    # d (stride 3) gets its own conversion, inserted before it.
    assert print_graph(after, show_locations=False) == golden(r"""
        network network
          %x: f32[N,3,9,21] = input
          %x.phases2: f32[N,3,9,21] phases(stride=2, first=-1, length=18) = relayout(%x)
          %a: f32[N,3,5,11] = conv2d(%x.phases2) activation=none bias=false dilation=[1,1] \
            groups=1 kernel=[3,3] out_channels=3 pads=[[1,1],[1,1]] stride=[2,2]
          %b: f32[N,3,5,11] = depthwise2d(%x.phases2) activation=none bias=false \
            dilation=[1,1] groups=3 kernel=[3,5] out_channels=3 pads=[[1,1],[2,2]] stride=[2,2]
          %c: f32[N,2,9,21] = conv2d(%x) activation=none bias=false dilation=[1,1] groups=1 \
            kernel=[3,3] out_channels=2 pads=[[1,1],[1,1]] stride=[1,1]
          %x.phases3: f32[N,3,9,21] phases(stride=3, first=0, length=16) = relayout(%x)
          %d: f32[N,2,3,7] = conv2d(%x.phases3) activation=none bias=false dilation=[1,1] \
            groups=1 kernel=[2,2] out_channels=2 pads=[[0,0],[0,0]] stride=[3,3]
          %y.lhs: f32[N,3,5,11] = relu(%a)
          %y: f32[N,3,5,11] = add(%y.lhs, %b)
        params
          a.weight: f32[3,3,3,3] init=he
          b.weight: f32[3,1,3,5] init=he
          c.weight: f32[2,3,3,3] init=he
          d.weight: f32[2,3,2,2] init=he
        outputs
          y = %y
          z = %c
          w = %d
        """)


def test_phase_rows_cover_whole_vectors_past_the_last_output_and_the_reach() -> None:
    graph = typed(TWO_READERS)
    a = next(n for n in graph.nodes if n.name == "a")
    # 11 outputs -> 16 lanes; taps at inputs -1, 0, +1 -> phase shifts -1, 0, 0 at stride 2,
    # so one element before the row: 17
    assert wanted_layout(graph, a) == PhaseRows(stride=2, first=-1, length=17)
    # b's taps at -2..+2 -> shifts -1, -1, 0, 0, 1: one more after the row; sharing x's phase
    # rows with a, they cover both (test_strided_convs_read_one_shared_conversion_per_stride)
    b = next(n for n in graph.nodes if n.name == "b")
    assert wanted_layout(graph, b) == PhaseRows(stride=2, first=-1, length=18)
    c = next(n for n in graph.nodes if n.name == "c")
    assert wanted_layout(graph, c) is None
    transposed = typed("input x: f32[N, 2, 5, 6]\noutput y = conv_transpose2d(x, 2, kernel=2, "
                       "stride=2)")  # fmt: skip
    assert wanted_layout(transposed, transposed.nodes[0]) is None  # its stride stretches output


def test_a_graph_without_strided_convs_is_returned_as_it_is() -> None:
    graph = typed("input x: f32[N, 3, 8, 8]\noutput y = conv2d(x, 4, kernel=3, padding=same)")
    assert choose_layouts(graph) is graph
    converted = choose_layouts(typed(TWO_READERS))
    assert choose_layouts(converted) is converted  # phase rows are not converted again


def test_fused_kernels_read_the_conversion_and_keep_their_other_inputs() -> None:
    src = (
        "input x: f32[N, 4, 8, 16]\ninput s: f32[N, 4, 4, 8]\n"
        "output y = relu(conv2d(x, 4, kernel=3, stride=2, padding=same) + s)"
    )
    graph = convdsl.compile_string(
        src, verify=True, backend="numpy"
    ).graph  # -O2: fused, then layouts
    relayout, kernel = graph.nodes
    assert relayout.op == "relayout" and kernel.is_fused
    assert kernel.parts[0].inputs[0] == relayout.output
    names = [graph.values[v].name for v in kernel.inputs]
    assert names == ["x.phases2", "s"]


def test_phase_rows_take_their_stored_size_in_the_plan() -> None:
    graph = plan_memory(choose_layouts(typed(TWO_READERS)))
    assert graph.memory is not None
    converted = next(v for v in graph.values.values() if v.name == "x.phases2")
    # 3 channels x 9 rows x 2 phases x 18 floats
    assert graph.memory.buffers[converted.id].size == 3 * 9 * 2 * 18 * 4


def test_the_verifier_rejects_a_relayout_that_changes_the_shape() -> None:
    graph = choose_layouts(typed(TWO_READERS))
    converted = next(v for v in graph.values.values() if v.name == "x.phases2")
    assert converted.type is not None
    wrong = replace(converted, type=replace(converted.type, shape=("N", 3, 9, 20)))
    broken = replace(graph, values={**graph.values, converted.id: wrong})
    with pytest.raises(InternalError, match=r"relayout x\.phases2 changes more than the layout"):
        verify(broken, after_pass="choose-layouts")


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_outputs_are_those_of_the_unconverted_graph(backend: str) -> None:
    reference = convdsl.compile_string(TWO_READERS, opt_level=0, backend="numpy")
    net = convdsl.compile_string(TWO_READERS, backend=backend, weights=reference.weights)
    assert any(node.op == "relayout" for node in net.graph.nodes)
    inputs = reference.random_inputs(seed=4, batch=2)
    want, got = reference(inputs), net(inputs)
    for name in want:
        scale = float(np.abs(want[name]).max())
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * scale)
