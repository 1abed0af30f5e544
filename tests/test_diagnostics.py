"""Golden diagnostics for semantic errors: binding, blocks, shapes, declarations and outputs.

Each golden pins a user mistake's whole rendered report: ``file:line:col``, the message, the
source line, the caret under the offending part, the hint and any notes. Every mistake must
raise ``ConvdslError`` (never another exception), every independent mistake in a file is
reported in source order, and a mistake is reported once, never again through what depends on it.
Pure syntax errors are pinned in ``test_parse.py``; weights and input arrays in
``test_weights_and_inputs.py``.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent
from typing import NamedTuple

import pytest

import convdsl
from convdsl import ConvdslError, InternalError


class Golden(NamedTuple):
    name: str
    source: str  # dedented; compiled as "net.conv"
    expected: tuple[str, ...]  # the lines of str(err)


def source_of(text: str) -> str:
    return dedent(text).lstrip("\n")


def compile_error(text: str, name: str = "net.conv") -> ConvdslError:
    with pytest.raises(ConvdslError) as info:
        convdsl.compile_string(source_of(text), name, backend="numpy")
    return info.value


BINDING = [
    Golden(
        "unknown_op",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2e(x, 8, kernel=3)
        output y
        """,
        (
            "net.conv:2:5: error: unknown op or block 'conv2e'",
            "   2 | y = conv2e(x, 8, kernel=3)",
            "     |     ^~~~~~",
            "  hint: did you mean 'conv2d'?",
        ),
    ),
    Golden(
        "unknown_keyword",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernal=3)
        output y
        """,
        (
            "net.conv:2:18: error: conv2d has no argument 'kernal'",
            "   2 | y = conv2d(x, 8, kernal=3)",
            "     |                  ^~~~~~~~",
            "  hint: did you mean 'kernel'?",
        ),
    ),
    Golden(
        "missing_required",
        """
        input x: f32[N, 3, 16, 16]
        y = max_pool2d(x)
        output y
        """,
        (
            "net.conv:2:5: error: max_pool2d: missing required argument 'kernel'",
            "   2 | y = max_pool2d(x)",
            "     |     ^~~~~~~~~~~~~",
            "  hint: usage: max_pool2d(x, kernel, stride=none, padding=valid, ceil_mode=false, "
            "dilation=1)",
        ),
    ),
    Golden(
        "too_many_positional",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, 3, 2)
        output y
        """,
        (
            "net.conv:2:21: error: conv2d takes 3 positional argument(s) (x, out_channels, "
            "kernel), found 4",
            "   2 | y = conv2d(x, 8, 3, 2)",
            "     |                     ^",
            "  hint: give the others by keyword: stride=..., dilation=..., padding=..., "
            "groups=..., bias=..., activation=...",
        ),
    ),
    Golden(
        "too_many_positional_no_keywords",
        """
        input x: f32[N, 3, 16, 16]
        y = relu(x, x)
        output y
        """,
        (
            "net.conv:2:13: error: relu takes 1 positional argument(s) (x), found 2",
            "   2 | y = relu(x, x)",
            "     |             ^",
        ),
    ),
    Golden(
        "given_twice",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3, out_channels=4)
        output y
        """,
        (
            "net.conv:2:28: error: argument 'out_channels' is given twice",
            "   2 | y = conv2d(x, 8, kernel=3, out_channels=4)",
            "     |                            ^~~~~~~~~~~~~~",
        ),
    ),
    Golden(
        "kernel_string",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel="x")
        output y
        """,
        (
            "net.conv:2:25: error: conv2d: kernel: expected an integer or a list of integers (one "
            'per axis), found the string "x"',
            '   2 | y = conv2d(x, 8, kernel="x")',
            "     |                         ^~~",
        ),
    ),
    Golden(
        "padding_sam",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3, padding=sam)
        output y
        """,
        (
            "net.conv:2:36: error: conv2d: padding: expected valid, same, same_lower, causal, "
            "an integer, a list per axis, or a list of [before, after] pairs; found 'sam'",
            "   2 | y = conv2d(x, 8, kernel=3, padding=sam)",
            "     |                                    ^~~",
            "  hint: did you mean 'same'?",
        ),
    ),
    Golden(
        "activation_relux",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3, activation=relux)
        output y
        """,
        (
            "net.conv:2:39: error: conv2d: activation: expected one of none, relu, relu6, "
            "sigmoid, tanh, gelu, silu, hard_swish, selu, softplus, mish; found 'relux'",
            "   2 | y = conv2d(x, 8, kernel=3, activation=relux)",
            "     |                                       ^~~~~",
            "  hint: did you mean 'relu'?",
        ),
    ),
    Golden(
        "bool_capitalised",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3, bias=False)
        output y
        """,
        (
            "net.conv:2:33: error: unknown name 'False'",
            "   2 | y = conv2d(x, 8, kernel=3, bias=False)",
            "     |                                 ^~~~~",
            "  hint: did you mean 'false'?",
        ),
    ),
    Golden(
        "unknown_variable",
        """
        input image: f32[N, 3, 16, 16]
        y = conv2d(imag, 8, kernel=3)
        output y
        """,
        (
            "net.conv:2:12: error: unknown name 'imag'",
            "   2 | y = conv2d(imag, 8, kernel=3)",
            "     |            ^~~~",
            "  hint: did you mean 'image'?",
        ),
    ),
    Golden(
        "unknown_output_name",
        """
        input x: f32[N, 3, 16, 16]
        y = relu(x)
        output yy
        """,
        (
            "net.conv:3:8: error: unknown name 'yy'",
            "   3 | output yy",
            "     |        ^~",
            "  hint: did you mean 'y'?",
        ),
    ),
    Golden(
        "tensor_modulo_number",
        """
        input x: f32[N, 3, 16, 16]
        y = x % 2
        output y
        """,
        (
            "net.conv:2:5: error: '%' between a tensor and the number 2 is not defined; on "
            "tensors, +, -, *, / are",
            "   2 | y = x % 2",
            "     |     ^~~~~",
        ),
    ),
    Golden(
        "number_power_tensor",
        """
        input x: f32[N, 3, 16, 16]
        y = 2 ** x
        output y
        """,
        (
            "net.conv:2:5: error: '**' between the number 2 and a tensor is not defined; on "
            "tensors, +, -, *, / are",
            "   2 | y = 2 ** x",
            "     |     ^~~~~~",
        ),
    ),
    Golden(
        "floor_division_between_tensors",
        """
        input x: f32[N, 3, 16, 16]
        y = x // x
        output y
        """,
        (
            "net.conv:2:5: error: '//' between a tensor and a tensor is not defined; on tensors, "
            "+, -, *, / are",
            "   2 | y = x // x",
            "     |     ^~~~~~",
        ),
    ),
    Golden(
        "negated_list",
        """
        input x: f32[N, 3, 16, 16]
        y = -[1, 2]
        output y
        """,
        (
            "net.conv:2:5: error: cannot negate a list of 2",
            "   2 | y = -[1, 2]",
            "     |     ^~~~~~~",
        ),
    ),
    Golden(
        "range_too_long",
        """
        input x: f32[N, 3, 16, 16]
        for i in range(100000) { x = relu(x) }
        output x
        """,
        (
            "net.conv:2:10: error: range() of 100000 items is too long to unroll (at most 10000)",
            "   2 | for i in range(100000) { x = relu(x) }",
            "     |          ^~~~~~~~~~~~~",
        ),
    ),
    Golden(
        "name_not_string",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3, name=7)
        output y
        """,
        (
            'net.conv:2:28: error: conv2d: name: expected a layer name such as "conv1", found 7',
            "   2 | y = conv2d(x, 8, kernel=3, name=7)",
            "     |                            ^~~~~~",
        ),
    ),
]
BLOCKS = [
    Golden(
        "block_too_many_args",
        """
        input x: f32[N, 3, 16, 16]
        block b(a, ch) { return conv2d(a, ch, kernel=1) }
        y = b(x, 4, 5)
        output y
        """,
        (
            "net.conv:3:13: error: block 'b' takes 2 argument(s), found 3",
            "   3 | y = b(x, 4, 5)",
            "     |             ^",
        ),
    ),
    Golden(
        "block_missing_arg",
        """
        input x: f32[N, 3, 16, 16]
        block b(a, ch) { return conv2d(a, ch, kernel=1) }
        y = b(x)
        output y
        """,
        (
            "net.conv:3:5: error: block 'b' is missing argument 'ch'",
            "   3 | y = b(x)",
            "     |     ^~~~",
            "  hint: usage: b(a, ch)",
        ),
    ),
    Golden(
        "block_unknown_param",
        """
        input x: f32[N, 3, 16, 16]
        block b(a, ch) { return conv2d(a, ch, kernel=1) }
        y = b(x, chan=4)
        output y
        """,
        (
            "net.conv:3:10: error: block 'b' has no parameter 'chan'",
            "   3 | y = b(x, chan=4)",
            "     |          ^~~~~~",
            "  hint: did you mean 'ch'?",
        ),
    ),
    Golden(
        "block_param_twice",
        """
        input x: f32[N, 3, 16, 16]
        block b(a, ch) { return conv2d(a, ch, kernel=1) }
        y = b(x, 4, ch=4)
        output y
        """,
        (
            "net.conv:3:13: error: parameter 'ch' is given twice",
            "   3 | y = b(x, 4, ch=4)",
            "     |             ^~~~",
        ),
    ),
    Golden(
        "block_missing_return",
        """
        input x: f32[N, 3, 16, 16]
        block b(a) {
          c = relu(a)
        }
        y = b(x)
        output y
        """,
        (
            "net.conv:2:7: error: block 'b' does not end with a return statement",
            "   2 | block b(a) {",
            "     |       ^",
            "  hint: end the block with `return VALUE`",
        ),
    ),
    Golden(
        "block_return_not_last",
        """
        input x: f32[N, 3, 16, 16]
        block b(a) {
          return a
          c = relu(a)
        }
        y = b(x)
        output y
        """,
        (
            "net.conv:3:3: error: return must be the last statement of a block",
            "   3 |   return a",
            "     |   ^~~~~~~~",
        ),
    ),
    Golden(
        "block_named_like_op",
        """
        input x: f32[N, 3, 16, 16]
        block relu(a) { return a }
        y = relu(x)
        output y
        """,
        (
            "net.conv:2:7: error: block 'relu' has the name of a built-in op",
            "   2 | block relu(a) { return a }",
            "     |       ^~~~",
            "  hint: rename the block",
        ),
    ),
    Golden(
        "block_recursion",
        """
        input x: f32[N, 3, 16, 16]
        block b(a) { return b(a) }
        y = b(x)
        output y
        """,
        (
            "net.conv:2:21: error: block 'b' calls itself more than 64 levels deep",
            "   2 | block b(a) { return b(a) }",
            "     |                     ^~~~",
            "  hint: blocks are inlined at every call, so recursion must stop within 64 levels",
            "net.conv:2:21: note: in block 'b' called here (63 nested calls)",
            "   2 | block b(a) { return b(a) }",
            "     |                     ^~~~",
            "net.conv:3:5: note: in block 'b' called here",
            "   3 | y = b(x)",
            "     |     ^~~~",
        ),
    ),
    Golden(
        "block_body_lowering_error",
        """
        input x: f32[N, 3, 16, 16]
        block b(a) {
          c = conv2d(a, 4, kernal=3)
          return c
        }
        y = b(x)
        output y
        """,
        (
            "net.conv:3:20: error: conv2d has no argument 'kernal'",
            "   3 |   c = conv2d(a, 4, kernal=3)",
            "     |                    ^~~~~~~~",
            "  hint: did you mean 'kernel'?",
            "net.conv:6:5: note: in block 'b' called here",
            "   6 | y = b(x)",
            "     |     ^~~~",
        ),
    ),
    Golden(
        "block_body_shape_error",
        """
        input x: f32[N, 3, 16, 16]
        block b(a, k) {
          c = conv2d(a, 4, kernel=k)
          return c
        }
        y = b(x, 3)
        z = b(x, 17)
        output y
        output z
        """,
        (
            "net.conv:3:27: error: conv2d: kernel 17 is larger than the padded input on axis H: "
            "16 + padding 0+0 = 16",
            "   3 |   c = conv2d(a, 4, kernel=k)",
            "     |                           ^",
            "  hint: use padding=same, a smaller kernel, or a larger input",
            "net.conv:7:5: note: in block 'b' called here",
            "   7 | z = b(x, 17)",
            "     |     ^~~~~~~~",
        ),
    ),
    Golden(
        "block_body_error_two_calls",
        """
        input x: f32[N, 3, 16, 16]
        block b(a) {
          c = conv2d(a, 4, kernel=[3, 30])
          return c
        }
        y = b(x)
        z = b(x)
        output y
        output z
        """,
        (
            "net.conv:3:27: error: conv2d: kernel 30 is larger than the padded input on axis W: "
            "16 + padding 0+0 = 16",
            "   3 |   c = conv2d(a, 4, kernel=[3, 30])",
            "     |                           ^~~~~~~",
            "  hint: use padding=same, a smaller kernel, or a larger input",
            "net.conv:6:5: note: in block 'b' called here",
            "   6 | y = b(x)",
            "     |     ^~~~",
            "net.conv:7:5: note: in block 'b' called here",
            "   7 | z = b(x)",
            "     |     ^~~~",
        ),
    ),
    Golden(
        "nested_blocks",
        """
        input x: f32[N, 3, 16, 16]
        block inner(a) { return conv2d(a, 4, kernel=3, padding=sam) }
        block outer(a) { return inner(a) }
        y = outer(x)
        output y
        """,
        (
            "net.conv:2:56: error: conv2d: padding: expected valid, same, same_lower, causal, "
            "an integer, a list per axis, or a list of [before, after] pairs; found 'sam'",
            "   2 | block inner(a) { return conv2d(a, 4, kernel=3, padding=sam) }",
            "     |                                                        ^~~",
            "  hint: did you mean 'same'?",
            "net.conv:3:25: note: in block 'inner' called here",
            "   3 | block outer(a) { return inner(a) }",
            "     |                         ^~~~~~~~",
            "net.conv:4:5: note: in block 'outer' called here",
            "   4 | y = outer(x)",
            "     |     ^~~~~~~~",
        ),
    ),
    Golden(
        "keyword_passed_to_block",
        """
        input x: f32[N, 3, 16, 16]
        block b(a, n) { return conv2d(a, 4, kernel=n) }
        y = b(x, k)
        output y
        """,
        (
            "net.conv:3:10: error: unknown name 'k'",
            "   3 | y = b(x, k)",
            "     |          ^",
            "net.conv:3:5: note: in block 'b' called here",
            "   3 | y = b(x, k)",
            "     |     ^~~~~~~",
        ),
    ),
]
SHAPES = [
    Golden(
        "kernel_too_large",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=[3, 17])
        output y
        """,
        (
            "net.conv:2:25: error: conv2d: kernel 17 is larger than the padded input on axis W: "
            "16 + padding 0+0 = 16",
            "   2 | y = conv2d(x, 8, kernel=[3, 17])",
            "     |                         ^~~~~~~",
            "  hint: use padding=same, a smaller kernel, or a larger input",
        ),
    ),
    Golden(
        "dilation_too_large",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3, dilation=8)
        output y
        """,
        (
            "net.conv:2:37: error: conv2d: kernel 3 (effective 17 with dilation 8) is larger than "
            "the padded input on axis H: 16 + padding 0+0 = 16",
            "   2 | y = conv2d(x, 8, kernel=3, dilation=8)",
            "     |                                     ^",
            "  hint: use padding=same, a smaller dilation, or a larger input",
        ),
    ),
    Golden(
        "channels_not_divisible",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3, groups=2)
        output y
        """,
        (
            "net.conv:2:35: error: conv2d: input channels 3 are not divisible by groups=2",
            "   2 | y = conv2d(x, 8, kernel=3, groups=2)",
            "     |                                   ^",
            "  hint: groups splits the channels into equal parts",
        ),
    ),
    Golden(
        "out_channels_not_divisible",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=1, groups=3)
        output y
        """,
        (
            "net.conv:2:35: error: conv2d: out_channels 8 is not divisible by groups=3",
            "   2 | y = conv2d(x, 8, kernel=1, groups=3)",
            "     |                                   ^",
            "  hint: groups splits the channels into equal parts",
        ),
    ),
    Golden(
        "add_shapes",
        """
        input x: f32[N, 3, 16, 16]
        a = conv2d(x, 21, kernel=3)
        b = conv2d(x, 21, kernel=2)
        output y = a + b
        """,
        (
            "net.conv:4:12: error: add: shapes [N,21,14,14] and [N,21,15,15] do not broadcast: "
            "H is 14 vs 15",
            "   4 | output y = a + b",
            "     |            ^~~~~",
            "  hint: crop the larger one to match: crop(b, like=a)",
        ),
    ),
    Golden(
        "add_call_shapes",
        """
        input x: f32[N, 3, 16, 16]
        a = conv2d(x, 21, kernel=2)
        b = conv2d(x, 21, kernel=3)
        output y = add(a, b)
        """,
        (
            "net.conv:4:12: error: add: shapes [N,21,15,15] and [N,21,14,14] do not broadcast: "
            "H is 15 vs 14",
            "   4 | output y = add(a, b)",
            "     |            ^~~~~~~~~",
            "  hint: crop the larger one to match: crop(a, like=b)",
        ),
    ),
    Golden(
        "mul_shapes",
        """
        input x: f32[N, 3, 16, 16]
        a = conv2d(x, 21, kernel=1)
        b = conv2d(x, 7, kernel=1)
        output y = a * b
        """,
        (
            "net.conv:4:12: error: mul: shapes [N,21,16,16] and [N,7,16,16] do not broadcast: "
            "channels is 21 vs 7",
            "   4 | output y = a * b",
            "     |            ^~~~~",
            "  hint: a 1x1 convolution can change the channel count",
        ),
    ),
    Golden(
        "concat_spatial",
        """
        input x: f32[N, 3, 16, 16]
        a = conv2d(x, 4, kernel=3)
        output y = concat(x, a)
        """,
        (
            "net.conv:3:12: error: concat: inputs must match in all but channels (concat joins "
            "along channels): input 1 is [N,3,16,16], input 2 is [N,4,14,14]",
            "   3 | output y = concat(x, a)",
            "     |            ^~~~~~~~~~~~",
            "  hint: crop, pad or upscale one of them first",
        ),
    ),
    Golden(
        "upscale_skip",
        """
        input x: f32[N, 3, 15, 15]
        p = max_pool2d(x, 2)
        u = upscale(p, 2)
        output y = u + x
        """,
        (
            "net.conv:4:12: error: add: shapes [N,3,14,14] and [N,3,15,15] do not broadcast: "
            "H is 14 vs 15",
            "   4 | output y = u + x",
            "     |            ^~~~~",
            "  hint: crop the larger one to match: crop(x, like=u)",
        ),
    ),
    Golden(
        "crop_larger_than_input",
        """
        input x: f32[N, 3, 16, 16]
        output y = crop(x, size=[20, 8])
        """,
        (
            "net.conv:2:25: error: crop: cannot crop 20 from 16 on axis H: the input [N,3,16,16] "
            "is smaller than the crop",
            "   2 | output y = crop(x, size=[20, 8])",
            "     |                         ^~~~~~~",
            "  hint: crop only shrinks; pad(...) or upscale(...) grows a tensor",
        ),
    ),
    Golden(
        "crop_offset_past_end",
        """
        input x: f32[N, 3, 16, 16]
        output y = crop(x, size=[8, 8], offset=[10, 0])
        """,
        (
            "net.conv:2:40: error: crop: a crop of 8 at offset 10 needs 18 on axis H, but the "
            "input [N,3,16,16] has 16",
            "   2 | output y = crop(x, size=[8, 8], offset=[10, 0])",
            "     |                                        ^~~~~~~",
        ),
    ),
    Golden(
        "crop_needs_like_or_size",
        """
        input x: f32[N, 3, 16, 16]
        output y = crop(x)
        """,
        (
            "net.conv:2:12: error: crop: needs like=TENSOR or size=[...] to know the output size",
            "   2 | output y = crop(x)",
            "     |            ^~~~~~~",
        ),
    ),
    Golden(
        "crop_like_and_size",
        """
        input x: f32[N, 3, 16, 16]
        output y = crop(x, like=x, size=[3, 3])
        """,
        (
            "net.conv:2:25: error: crop: give like=TENSOR or size=[...], not both",
            "   2 | output y = crop(x, like=x, size=[3, 3])",
            "     |                         ^",
        ),
    ),
    Golden(
        "causal_on_conv2d",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3, padding=causal)
        output y
        """,
        (
            "net.conv:2:36: error: conv2d: padding=causal is only defined for 1-D (sequence) ops",
            "   2 | y = conv2d(x, 8, kernel=3, padding=causal)",
            "     |                                    ^~~~~~",
        ),
    ),
    Golden(
        "output_padding",
        """
        input x: f32[N, 3, 16, 16]
        y = conv_transpose2d(x, 8, kernel=3, stride=2, output_padding=2)
        output y
        """,
        (
            "net.conv:2:63: error: conv_transpose2d: output_padding 2 must be smaller than "
            "max(stride, dilation) = 2",
            "   2 | y = conv_transpose2d(x, 8, kernel=3, stride=2, output_padding=2)",
            "     |                                                               ^",
        ),
    ),
    Golden(
        "bilinear_3d",
        """
        input v: f32[N, 3, 4, 8, 8]
        output y = upscale(v, 2, mode=bilinear)
        """,
        (
            "net.conv:2:31: error: upscale: mode=bilinear is for 2-D inputs; this input is 3-D "
            "[N,3,4,8,8]",
            "   2 | output y = upscale(v, 2, mode=bilinear)",
            "     |                               ^~~~~~~~",
            "  hint: mode=linear interpolates along every spatial axis of any rank",
        ),
    ),
    Golden(
        "pixel_shuffle_channels",
        """
        input x: f32[N, 3, 16, 16]
        output y = pixel_shuffle(x, 2)
        """,
        (
            "net.conv:2:29: error: pixel_shuffle: factor 2 needs channels divisible by 2*2 = 4, "
            "found 3 channels",
            "   2 | output y = pixel_shuffle(x, 2)",
            "     |                             ^",
        ),
    ),
    Golden(
        "reflect_pad",
        """
        input x: f32[N, 3, 16, 16]
        output y = pad(x, [16, 1], mode=reflect)
        """,
        (
            "net.conv:2:19: error: pad: reflect padding 16 must be smaller than the input size 16 "
            "on axis H",
            "   2 | output y = pad(x, [16, 1], mode=reflect)",
            "     |                   ^~~~~~~",
        ),
    ),
    Golden(
        "annotation",
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernel=3) : [N, 8, 16, 16]
        output y
        """,
        (
            "net.conv:2:28: error: shape annotation does not hold: expected [N,8,16,16], found "
            "[N,8,14,14]",
            "   2 | y = conv2d(x, 8, kernel=3) : [N, 8, 16, 16]",
            "     |                            ^~~~~~~~~~~~~~~~",
            "  hint: H is 14, not 16; W is 14, not 16",
        ),
    ),
    Golden(
        "annotation_rank",
        """
        input x: f32[N, 3, 16, 16]
        output y = conv2d(x, 8, kernel=3) : [N, 8, 14]
        """,
        (
            "net.conv:2:35: error: shape annotation does not hold: expected [N,8,14], found "
            "[N,8,14,14]",
            "   2 | output y = conv2d(x, 8, kernel=3) : [N, 8, 14]",
            "     |                                   ^~~~~~~~~~~~",
            "  hint: the value has 4 dims, the annotation 3",
        ),
    ),
    Golden(
        "annotation_in_block",
        """
        input x: f32[N, 3, 16, 16]
        block b(a, ch) {
          c = conv2d(a, ch, kernel=3) : [N, ch, 16, 16]
          return c
        }
        output y = b(x, 4)
        """,
        (
            "net.conv:3:31: error: shape annotation does not hold: expected [N,4,16,16], found "
            "[N,4,14,14]",
            "   3 |   c = conv2d(a, ch, kernel=3) : [N, ch, 16, 16]",
            "     |                               ^~~~~~~~~~~~~~~~~",
            "  hint: H is 14, not 16; W is 14, not 16",
            "net.conv:6:12: note: in block 'b' called here",
            "   6 | output y = b(x, 4)",
            "     |            ^~~~~~~",
        ),
    ),
    Golden(
        "conv2d_rank3",
        """
        input s: f32[N, 3, 16]
        output y = conv2d(s, 8, kernel=3)
        """,
        (
            "net.conv:2:19: error: conv2d: expected a 2-D input [N, C, H, W] (rank 4), found "
            "[N,3,16] (rank 3)",
            "   2 | output y = conv2d(s, 8, kernel=3)",
            "     |                   ^",
            "  hint: conv1d takes a 1-D input",
        ),
    ),
    Golden(
        "pads_count",
        """
        input x: f32[N, 3, 16, 16]
        output y = pad(x, [1])
        """,
        (
            "net.conv:2:19: error: pad: pads: expected 2 values (one per spatial axis), found 1",
            "   2 | output y = pad(x, [1])",
            "     |                   ^~~",
        ),
    ),
]
DECLARATIONS = [
    Golden(
        "symbolic_channel",
        """
        input x: f32[N, C, 16, 16]
        output y = relu(x)
        """,
        (
            "net.conv:1:17: error: input 'x': the channel count (dim 2) must be a fixed size, "
            "found 'C'",
            "   1 | input x: f32[N, C, 16, 16]",
            "     |                 ^",
            "  hint: the weights of the first layer depend on it; write it as an integer",
        ),
    ),
    Golden(
        "unknown_dtype",
        """
        input x: f16[N, 3, 16, 16]
        output y = relu(x)
        """,
        (
            "net.conv:1:10: error: input 'x': unknown dtype 'f16'; expected f32 or f64",
            "   1 | input x: f16[N, 3, 16, 16]",
            "     |          ^~~",
        ),
    ),
    Golden(
        "too_few_dims",
        """
        input x: f32[N]
        output y = relu(x)
        """,
        (
            "net.conv:1:1: error: input 'x' has 1 dim; expected [N, F] (features) or "
            "[N, C, ...] with 1 to 3 spatial dims (2 to 5 dims in all)",
            "   1 | input x: f32[N]",
            "     | ^~~~~~~~~~~~~~~",
        ),
    ),
    Golden(
        "zero_dim",
        """
        input x: f32[N, 0, 16, 16]
        output y = relu(x)
        """,
        (
            "net.conv:1:17: error: input 'x': dimension sizes must be positive, found 0",
            "   1 | input x: f32[N, 0, 16, 16]",
            "     |                 ^",
        ),
    ),
    Golden(
        "duplicate_input",
        """
        input x: f32[N, 3, 16, 16]
        input x: f32[N, 3, 8, 8]
        output y = relu(x)
        """,
        (
            "net.conv:2:7: error: 'x' is already defined",
            "   2 | input x: f32[N, 3, 8, 8]",
            "     |       ^",
            "  hint: give the second one another name",
            "net.conv:1:7: note: 'x' was first defined here",
            "   1 | input x: f32[N, 3, 16, 16]",
            "     |       ^",
        ),
    ),
    Golden(
        "duplicate_output",
        """
        input x: f32[N, 3, 16, 16]
        output y = relu(x)
        output y = sigmoid(x)
        """,
        (
            "net.conv:3:8: error: output 'y' is declared twice",
            "   3 | output y = sigmoid(x)",
            "     |        ^",
        ),
    ),
    Golden(
        "no_outputs",
        """
        input x: f32[N, 3, 16, 16]
        y = relu(x)
        """,
        (
            "net.conv:2:12: error: the network declares no outputs",
            "   2 | y = relu(x)",
            "     |            ^",
            "  hint: declare one: output y = ... (or output NAME for a variable)",
        ),
    ),
    Golden(
        "no_inputs",
        """
        output y = relu(x)
        """,
        (
            "net.conv:1:17: error: unknown name 'x'",
            "   1 | output y = relu(x)",
            "     |                 ^",
            "net.conv:1:19: error: the network declares no inputs",
            "   1 | output y = relu(x)",
            "     |                   ^",
            "  hint: declare one: input x: f32[N, 3, 224, 224]",
            "2 errors",
        ),
    ),
    Golden(
        "output_number",
        """
        input x: f32[N, 3, 16, 16]
        output y = 3
        """,
        (
            "net.conv:2:12: error: output 'y' must be a tensor, found the number 3",
            "   2 | output y = 3",
            "     |            ^",
        ),
    ),
    Golden(
        "output_number_variable",
        """
        input x: f32[N, 3, 16, 16]
        k = 3
        output k
        """,
        (
            "net.conv:3:8: error: output 'k' must be a tensor, found the number 3",
            "   3 | output k",
            "     |        ^",
        ),
    ),
]
MULTI = [
    Golden(
        "independent_errors_in_source_order",
        """
        input x: f32[N, 3, 16, 16]
        a = conv2d(x, 8, kernal=3)
        b = conv2d(x, 8, kernel=40)
        c = conv2d(x, 8, kernel=3, padding=sam)
        d = x // x
        e = concat(x, conv2d(x, 4, kernel=3))
        output a
        output b
        output c
        output d
        output e
        """,
        (
            "net.conv:2:18: error: conv2d has no argument 'kernal'",
            "   2 | a = conv2d(x, 8, kernal=3)",
            "     |                  ^~~~~~~~",
            "  hint: did you mean 'kernel'?",
            "net.conv:3:25: error: conv2d: kernel 40 is larger than the padded input on axis H: "
            "16 + padding 0+0 = 16",
            "   3 | b = conv2d(x, 8, kernel=40)",
            "     |                         ^~",
            "  hint: use padding=same, a smaller kernel, or a larger input",
            "net.conv:4:36: error: conv2d: padding: expected valid, same, same_lower, causal, "
            "an integer, a list per axis, or a list of [before, after] pairs; found 'sam'",
            "   4 | c = conv2d(x, 8, kernel=3, padding=sam)",
            "     |                                    ^~~",
            "  hint: did you mean 'same'?",
            "net.conv:5:5: error: '//' between a tensor and a tensor is not defined; on tensors, "
            "+, -, *, / are",
            "   5 | d = x // x",
            "     |     ^~~~~~",
            "net.conv:6:5: error: concat: inputs must match in all but channels (concat joins "
            "along channels): input 1 is [N,3,16,16], input 2 is [N,4,14,14]",
            "   6 | e = concat(x, conv2d(x, 4, kernel=3))",
            "     |     ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~",
            "  hint: crop, pad or upscale one of them first",
            "5 errors",
        ),
    ),
    Golden(
        "no_cascade_after_shape_error",
        """
        input x: f32[N, 3, 16, 16]
        a = conv2d(x, 8, kernel=40)
        b = relu(a) : [N, 1, 1, 1]
        c = b + x
        d = conv2d(c, 3, kernel=999)
        output d : [N, 3, 1, 1]
        """,
        (
            "net.conv:2:25: error: conv2d: kernel 40 is larger than the padded input on axis H: "
            "16 + padding 0+0 = 16",
            "   2 | a = conv2d(x, 8, kernel=40)",
            "     |                         ^~",
            "  hint: use padding=same, a smaller kernel, or a larger input",
        ),
    ),
    Golden(
        "no_cascade_after_lowering_error",
        """
        input x: f32[N, 3, 16, 16]
        a = conv2d(x, 8, kernal=3)
        b = relu(a) : [N, 1, 1, 1]
        c = crop(b, like=x)
        output c
        """,
        (
            "net.conv:2:18: error: conv2d has no argument 'kernal'",
            "   2 | a = conv2d(x, 8, kernal=3)",
            "     |                  ^~~~~~~~",
            "  hint: did you mean 'kernel'?",
        ),
    ),
    Golden(
        "no_cascade_after_bad_input",
        """
        input x: f16[N, 3, 16, 16]
        y = conv2d(x, 4, kernel=3)
        output y
        """,
        (
            "net.conv:1:10: error: input 'x': unknown dtype 'f16'; expected f32 or f64",
            "   1 | input x: f16[N, 3, 16, 16]",
            "     |          ^~~",
        ),
    ),
    Golden(
        "no_cascade_after_bad_loop",
        """
        input x: f32[N, 3, 16, 16]
        for d in range(depth) {
          y = conv2d(x, 4, kernel=3, dilation=d)
        }
        output y
        """,
        (
            "net.conv:2:16: error: unknown name 'depth'",
            "   2 | for d in range(depth) {",
            "     |                ^~~~~",
        ),
    ),
    Golden(
        "no_cascade_from_broken_block",
        """
        input x: f32[N, 3, 16, 16]
        block b(a) {
          c = relu(a)
        }
        y = b(x)
        z = b(y)
        output z
        """,
        (
            "net.conv:2:7: error: block 'b' does not end with a return statement",
            "   2 | block b(a) {",
            "     |       ^",
            "  hint: end the block with `return VALUE`",
        ),
    ),
    Golden(
        "loop_body_error_once",
        """
        input x: f32[N, 3, 16, 16]
        for i in range(3) {
          x = conv2d(x, 3, kernal=3)
        }
        output x
        """,
        (
            "net.conv:3:20: error: conv2d has no argument 'kernal'",
            "   3 |   x = conv2d(x, 3, kernal=3)",
            "     |                    ^~~~~~~~",
            "  hint: did you mean 'kernel'?",
        ),
    ),
]


ALL_GOLDEN = [*BINDING, *BLOCKS, *SHAPES, *DECLARATIONS, *MULTI]


@pytest.mark.parametrize("case", ALL_GOLDEN, ids=[case.name for case in ALL_GOLDEN])
def test_golden_diagnostic(case: Golden) -> None:
    err = compile_error(case.source)
    assert str(err).split("\n") == list(case.expected)
    assert err.render() == str(err)


def test_goldens_have_unique_names() -> None:
    names = [case.name for case in ALL_GOLDEN]
    assert len(names) == len(set(names))


# ---- the structure behind the text ---------------------------------------------------------


def test_diagnostic_fields_of_an_unknown_keyword() -> None:
    err = compile_error(
        """
        input x: f32[N, 3, 16, 16]
        y = conv2d(x, 8, kernal=3)
        output y
        """
    )
    (diag,) = err.diagnostics
    assert (diag.severity, diag.message, diag.hint) == (
        "error",
        "conv2d has no argument 'kernal'",
        "did you mean 'kernel'?",
    )
    assert diag.span is not None
    assert (diag.span.source.name, diag.span.line, diag.span.column) == ("net.conv", 2, 18)
    assert (diag.span.end_line, diag.span.end_column) == (2, 26)
    assert diag.notes == ()


def test_block_notes_are_notes_pointing_at_each_call() -> None:
    err = compile_error(
        """
        input x: f32[N, 3, 16, 16]
        block b(a) { return conv2d(a, 4, kernel=[3, 30]) }
        y = b(x)
        z = b(y)
        output z
        """
    )
    (diag,) = err.diagnostics
    assert diag.span is not None and (diag.span.line, diag.span.column) == (2, 41)
    # z = b(y) never runs its body: y failed, so its copy of the error is not repeated.
    (note,) = diag.notes
    assert note.span is not None
    assert (note.severity, note.message, note.span.line, note.span.column) == (
        "note",
        "in block 'b' called here",
        3,
        5,
    )


def test_every_independent_error_is_reported_in_source_order() -> None:
    case = next(c for c in MULTI if c.name == "independent_errors_in_source_order")
    err = compile_error(case.source)
    positions = [(d.span.line, d.span.column) for d in err.diagnostics if d.span is not None]
    assert positions == [(2, 18), (3, 25), (4, 36), (5, 5), (6, 5)]
    assert all(d.severity == "error" for d in err.diagnostics)


def test_compile_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.conv"
    path.write_text("input x: f32[N, 3, 8, 8]\noutput y = conv2d(x, 4, kernel=9)\n")
    with pytest.raises(ConvdslError) as info:
        convdsl.compile_file(path, backend="numpy")
    assert str(info.value).split("\n")[0] == (
        f"{path}:2:32: error: conv2d: kernel 9 is larger than the padded input on axis H: "
        "8 + padding 0+0 = 8"
    )


# ---- what must keep compiling next to the errors above -------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # An annotation dim naming a block parameter means its value; `_` matches anything.
        """
        input x: f32[N, 3, 16, 16]
        block b(a, ch) { c = conv2d(a, ch, kernel=3) : [N, ch, 14, _]  return c }
        output y = b(x, 4) : [N, 4, 14, 14]
        """,
        # A keyword value passes through a block parameter to an op.
        """
        input x: f32[N, 3, 16, 16]
        block b(a, act=relu) { return conv2d(a, 4, kernel=1, activation=act) }
        output y = b(x, act=sigmoid)
        output z = b(x)
        """,
        # Recursion is allowed while it stops (here via an empty loop at n = 0).
        """
        input x: f32[N, 3, 16, 16]
        block b(a, n) {
          for i in range(n) { a = b(a, n - 1) }
          return relu(a)
        }
        output y = b(x, 3)
        """,
        # Reassigning a variable (also an input's name) is how loops build layers.
        """
        input x: f32[N, 3, 16, 16]
        for i in range(2) { x = conv2d(x, 3, kernel=3, padding=same) }
        output x
        """,
    ],
    ids=["annotation-names", "keyword-through-block", "bounded-recursion", "reassignment"],
)
def test_valid_programs_compile(text: str) -> None:
    convdsl.compile_string(source_of(text), "ok.conv", backend="numpy")


# ---- never another exception type ----------------------------------------------------------

ODD_CALLS = [
    "conv2d(x, 4, kernel=0)",
    "conv2d(x, 4, kernel=[])",
    "conv2d(x, 4, kernel=[3, 3, 3])",
    "conv2d(x, 4, kernel=3, stride=0)",
    "conv2d(x, 4, kernel=3, dilation=0)",
    "conv2d(x, 4, kernel=3, padding=[[1]])",
    "conv2d(x, 4, kernel=3, padding=[[1, -1], [0, 0]])",
    "conv2d(x, 4, kernel=3, padding=1.5)",
    "conv2d(x, 4, kernel=3, groups=0)",
    "conv2d(x, 0, kernel=3)",
    "conv2d(x, 4.5, kernel=3)",
    "conv2d(x, x, kernel=3)",
    "conv2d(4, 4, kernel=3)",
    "conv2d([x, x], 4, kernel=3)",
    "conv2d()",
    "depthwise2d(x, kernel=3, multiplier=0)",
    "conv_transpose2d(x, 4, kernel=3, padding=same, output_padding=1)",
    "conv_transpose2d(x, 4, kernel=3, padding=causal)",
    "conv_transpose2d(x, 4, kernel=3, output_padding=-1)",
    "max_pool2d(x, 3, padding=3)",
    "avg_pool2d(s, 3)",
    "global_avg_pool(4)",
    "leaky_relu(x, alpha=x)",
    "gelu(x, approximate=true)",
    "batch_norm(x, eps=0)",
    "concat(x)",
    "concat()",
    "concat(x, s)",
    "concat(x, 3)",
    "upscale(x, 0)",
    "upscale(x, 2, mode=trilinear)",
    "upscale(x, 2, align_corners=true)",
    "pixel_shuffle(x, 0)",
    "pixel_shuffle(s, 2)",
    "pad(x, same)",
    "pad(x, -1)",
    "pad(x, 1, mode=reflec)",
    "crop(x, size=[0, 0])",
    "crop(x, like=s)",
    "crop(x, like=3)",
    "crop(x, size=[3, 3], offset=centre)",
    "crop(x, size=20, offset=center)",
    "add(x, s)",
    "add(2, 3)",
    "len(x)",
    "min(x, 1)",
    "range(1, 2, 0)",
    "x // x",
    "x / 0",
    "x - s",
    "clip(x)",
    "softplus(x, beta=0)",
    "x ** 2",
    "(1 / 0) * x",
    "2 ** 1000",
    "[x, x]",
]


@pytest.mark.parametrize("call", ODD_CALLS)
def test_odd_arguments_are_user_errors_on_their_line(call: str) -> None:
    text = f"input x: f32[N, 4, 16, 16]\ninput s: f32[N, 4, 16]\noutput y = {call}\n"
    try:
        convdsl.compile_string(text, "odd.conv", backend="numpy")
    except ConvdslError as err:
        (diag,) = err.diagnostics
        assert diag.span is not None and diag.span.source.name == "odd.conv"
        assert diag.span.line == 3 and diag.span.column >= 12
    except InternalError as err:  # pragma: no cover - the failure being tested for
        pytest.fail(f"internal error instead of a diagnostic: {err}")
    else:
        pytest.fail("no error reported")
