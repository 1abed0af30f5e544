"""Layer names that match a PyTorch ``state_dict``: computed names (``name="features.{i}"``),
named block calls (``name="layer1.0"``), integer segments (``0``, ``classifier.1``), duplicate
and malformed names reported at both places, and the payoff: networks built with ``torch.nn``
whose ``state_dict()`` binds by name, compared with the torch model in eval mode."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from textwrap import dedent

import numpy as np
import pytest
import torch
from conftest import assert_close
from torch import nn

import convdsl
from convdsl import ConvdslError, cli


def compile_src(text: str, **options: object) -> convdsl.Network:
    return convdsl.compile_string(dedent(text).lstrip("\n"), "net.conv", **options)  # type: ignore[arg-type]


def error_lines(text: str) -> list[str]:
    with pytest.raises(ConvdslError) as info:
        compile_src(text, backend="numpy")
    return str(info.value).split("\n")


def layer_names(net: convdsl.Network) -> list[str]:
    return [node.name for node in net.graph.nodes]


# ---- computed names ----------------------------------------------------------------------


def test_loop_variable_arithmetic_and_a_counter_name_layers() -> None:
    net = compile_src(
        """
        input x: f32[N, 3, 8, 8]
        h = x
        k = 0
        for c in [4, 5] {
          h = conv2d(h, c, kernel=3, padding=1, name="features.{k}")
          h = relu(h, name="features.{k + 1}")
          k = k + 2
        }
        for i in range(2) { h = conv2d(h, 3, kernel=1, name="head{i}.{2 * i + 1}") }
        output y = h
        """,
        backend="numpy",
        opt_level=0,
    )
    assert layer_names(net) == [
        "features.0",
        "features.1",
        "features.2",
        "features.3",
        "head0.1",
        "head1.3",
    ]
    assert list(net.params) == [
        "features.0.weight",
        "features.0.bias",
        "features.2.weight",
        "features.2.bias",
        "head0.1.weight",
        "head0.1.bias",
        "head1.3.weight",
        "head1.3.bias",
    ]


def test_integer_names_and_named_block_calls() -> None:
    net = compile_src(
        """
        input x: f32[N, 3, 8, 8]
        block basic(x, ch, tag) {
          conv1 = conv2d(x, ch, kernel=3, padding=1, bias=false)
          bn1 = batch_norm(conv1)
          c = conv2d(relu(bn1), ch, kernel=1, bias=false, name="conv{tag}")
          return relu(batch_norm(c, name="bn{tag}") + x)
        }
        h = conv2d(x, 4, kernel=1, name="0")
        for i in range(2) { h = basic(h, 4, 2, name="layer1.{i}") }
        output y = conv2d(h, 2, kernel=1, name="classifier.1")
        """,
        backend="numpy",
        opt_level=0,
    )
    assert [n for n in net.params if n.endswith(".weight")] == [
        "0.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv2.weight",
        "layer1.0.bn2.weight",
        "layer1.1.conv1.weight",
        "layer1.1.bn1.weight",
        "layer1.1.conv2.weight",
        "layer1.1.bn2.weight",
        "classifier.1.weight",
    ]
    # The returned op takes the call's name, as it does for a call named by its variable.
    assert "layer1.0" in layer_names(net) and "layer1.1" in layer_names(net)


def test_named_block_call_nests_inside_a_block_and_keeps_parameters_apart() -> None:
    net = compile_src(
        """
        input x: f32[N, 3, 8, 8]
        block cbr(x, ch) {
          return relu(batch_norm(conv2d(x, ch, kernel=1, bias=false, name="0"), name="1"))
        }
        block stage(x, ch, n) {
          h = x
          for j in range(n) { h = cbr(h, ch, name="blocks.{j}") }
          return h
        }
        a = stage(x, 4, 2, name="features.{1 + 1}")
        output y = stage(a, 4, 1)
        """,
        backend="numpy",
        opt_level=0,
    )
    assert [n for n in net.params if n.endswith(".weight")] == [
        "features.2.blocks.0.0.weight",
        "features.2.blocks.0.1.weight",
        "features.2.blocks.1.0.weight",
        "features.2.blocks.1.1.weight",
        "y.blocks.0.0.weight",
        "y.blocks.0.1.weight",
    ]


def test_string_values_and_names_through_a_parameter() -> None:
    net = compile_src(
        """
        input x: f32[N, 3, 8, 8]
        block proj(x, stem, at) { return conv2d(x, 2, kernel=1, name="{stem}.{at}") }
        h = x
        for part in ["down", "up"] { h = proj(h, part, len([h, h]), name="{part}_path") }
        output y = h
        """,
        backend="numpy",
    )
    assert list(net.params) == [
        "down_path.down.2.weight",
        "down_path.down.2.bias",
        "up_path.up.2.weight",
        "up_path.up.2.bias",
    ]


def test_integer_named_weights_round_trip_an_npz_file(tmp_path: Path) -> None:
    src = """
        input x: f32[N, 3, 5, 5]
        for i in range(2) { x = conv2d(x, 3, kernel=1, name="{i}") }
        output y = batch_norm(x, name="2")
        """
    net = compile_src(src, backend="numpy", seed=3)
    net.save_weights(tmp_path / "w.npz")
    again = compile_src(src, backend="numpy", weights=tmp_path / "w.npz")
    assert sorted(again.weights) == sorted(net.weights) and "0.weight" in again.weights
    for name, array in net.weights.items():
        np.testing.assert_array_equal(again.weights[name], array)


# ---- duplicates ------------------------------------------------------------------------


def test_a_fixed_name_in_a_loop_is_a_duplicate_at_one_place() -> None:
    assert error_lines(
        """
        input x: f32[N, 3, 8, 8]
        for i in range(2) { x = conv2d(x, 3, kernel=1, name="features.0") }
        output y = x
        """
    ) == [
        "net.conv:2:48: error: layer name 'features.0' is already used",
        '   2 | for i in range(2) { x = conv2d(x, 3, kernel=1, name="features.0") }',
        "     |                                                ^~~~~~~~~~~~~~~~~",
        "  hint: this call runs more than once; compute the name from a loop variable or "
        'block parameter, e.g. name="features.{i}"',
        "net.conv:2:48: note: 'features.0' was first used here (by an earlier run of this call)",
        '   2 | for i in range(2) { x = conv2d(x, 3, kernel=1, name="features.0") }',
        "     |                                                ^~~~~~~~~~~~~~~~~",
    ]


def test_a_name_given_twice_names_both_places() -> None:
    lines = error_lines(
        """
        input x: f32[N, 3, 8, 8]
        a = conv2d(x, 3, kernel=1, name="features.{1}")
        b = conv2d(a, 3, kernel=1)
        output y = conv2d(b, 3, kernel=1, name="features.1")
        """
    )
    assert lines[0] == "net.conv:4:35: error: layer name 'features.1' is already used"
    assert lines[3] == "  hint: give each layer its own name"
    assert lines[4] == "net.conv:2:28: note: 'features.1' was first used here"


def test_an_explicit_name_taken_by_a_variable_name_points_at_the_variable_layer() -> None:
    lines = error_lines(
        """
        input x: f32[N, 3, 8, 8]
        conv1 = conv2d(x, 3, kernel=1)
        output y = relu(x, name="conv1")
        """
    )
    assert lines[0] == "net.conv:3:20: error: layer name 'conv1' is already used"
    assert lines[4] == "net.conv:2:9: note: 'conv1' was first used here"


def test_a_block_call_name_used_twice_is_reported_at_both_calls() -> None:
    lines = error_lines(
        """
        input x: f32[N, 3, 8, 8]
        block b(x) { c = conv2d(x, 3, kernel=1)
          return relu(c) }
        h = b(x, name="layer1.0")
        output y = b(h, name="layer1.{0}")
        """
    )
    assert lines[0] == "net.conv:5:17: error: block call name 'layer1.0' is already used"
    assert lines[4] == "net.conv:4:10: note: 'layer1.0' was first used here"


def test_names_without_name_still_get_suffixes() -> None:
    net = compile_src(
        """
        input x: f32[N, 3, 8, 8]
        for i in range(3) { x = conv2d(x, 3, kernel=1) }
        output y = x
        """,
        backend="numpy",
    )
    assert layer_names(net)[:3] == ["x_1", "x_2", "x_3"]


# ---- malformed names and templates ------------------------------------------------------

# (the argument, the message, the text the caret starts at, the caret)
MALFORMED = [
    ('name="features.{i"', "unclosed '{' in a layer name", "{i", "^"),
    ('name="features.{j}"', "unknown name 'j'", "j", "^"),
    (
        'name="features.{x}"',
        "a field of a layer name needs an integer or a string, found a tensor",
        "{x}",
        "^~~",
    ),
    (
        'name="features.{i / 2}"',
        "a field of a layer name needs an integer or a string, found a float",
        "{i / 2}",
        "^~~~~~~",
    ),
    ('name="features.{0.5}"', "found a float", "{0.5}", "^~~~~"),
    ('name="f.{true}"', "found the boolean true", "{true}", "^~~~~~"),
    ('name="f.{[i]}"', "found a list of 1", "{[i]}", "^~~~~"),
    (
        'name="f.{i - 1}"',
        "this field of a layer name is -1; a name segment cannot be negative",
        "{i - 1}",
        "^~~~~~~",
    ),
    (
        'name="f.{x + 1}"',
        "a field of a layer name computes with numbers, found a tensor",
        "x + 1",
        "^",
    ),
    ('name="f.{relu(x)}"', "a field of a layer name cannot call 'relu'", "relu", "^~~~~~~"),
    ('name="f.}"', "unmatched '}' in a layer name", "}", "^"),
    ('name="f.{}"', "empty field '{}' in a layer name", "{}", "^~"),
    ('name="f.{{i}}"', "'{' inside a field of a layer name", "{i}", "^"),
    (
        'name="f.{i +}"',
        "unexpected end of the field; expected an expression",
        "{i +}",
        "^~~~~",
    ),
    ('name="f.{i ) 2}"', "unexpected ')' in a field of a layer name", ")", "^"),
    (
        'name="f..{i}"',
        "conv2d: name: 'f..0' is not a layer name: it has an empty segment "
        "(a leading, trailing or doubled '.')",
        "name=",
        "^~~~~~~~~~~~~",
    ),
    (
        'name="f.{i}x-1"',
        "conv2d: name: 'f.0x-1' is not a layer name: its segment '0x-1' is neither an "
        "identifier nor an integer",
        "name=",
        "^~~~~~~~~~~~~~~",
    ),
    ('name=""', "conv2d: name: '' is not a layer name: it is empty", "name=", "^~~~~~~"),
    ('name=".{i}"', "is not a layer name: it has an empty segment", "name=", "^~~~~~~~~~~"),
]


@pytest.mark.parametrize(("argument", "message", "at", "caret"), MALFORMED)
def test_malformed_names_point_at_the_fault(
    argument: str, message: str, at: str, caret: str
) -> None:
    line = f"for i in range(2) {{ x = conv2d(x, 3, kernel=1, {argument}) }}"
    column = line.index(argument) + argument.index(at) + 1
    lines = error_lines(f"input x: f32[N, 3, 8, 8]\n{line}\noutput y = x\n")
    assert lines[0].startswith(f"net.conv:2:{column}: error: "), lines[0]
    assert message in lines[0]
    assert lines[1] == f"   2 | {line}"
    assert lines[2] == "     | " + " " * (column - 1) + caret
    # One mistake in a loop body is one error, however often the loop runs it.
    assert sum(" error: " in text for text in lines) == 1, lines


def test_a_template_passed_as_a_value_is_not_formatted() -> None:
    lines = error_lines(
        """
        input x: f32[N, 3, 8, 8]
        block b(x, n) { return relu(x, name=n) }
        output y = b(x, "features.{i}")
        """
    )
    assert lines[0] == (
        "net.conv:2:32: error: relu: name: 'features.{i}' is not a layer name: its segment "
        "'{i}' is neither an identifier nor an integer"
    )
    assert lines[3].startswith("  hint: a name is formatted only where it is written as a literal")


def test_block_name_must_be_a_string_and_name_is_not_a_parameter() -> None:
    lines = error_lines(
        """
        input x: f32[N, 3, 8, 8]
        block b(x) { return relu(x) }
        output y = b(x, name=3)
        """
    )
    assert lines[0] == (
        "net.conv:3:17: error: block 'b': name: expected a layer name such as \"layer1.0\", "
        "found the number 3"
    )
    assert error_lines(
        """
        input x: f32[N, 3, 8, 8]
        block b(x, name) { return relu(x) }
        output y = b(x, 1)
        """
    )[:4] == [
        "net.conv:2:12: error: a block parameter cannot be called 'name'",
        "   2 | block b(x, name) { return relu(x) }",
        "     |            ^~~~",
        "  hint: name=... at a block call names the layers the call makes; rename the parameter",
    ]


def test_a_string_escape_before_a_field_keeps_the_column() -> None:
    lines = error_lines(
        """
        input x: f32[N, 3, 8, 8]
        output y = relu(x, name="a\\\\b{k}")
        """
    )
    assert lines[0] == "net.conv:2:31: error: unknown name 'k'"


# ---- the payoff: PyTorch state dicts bind by name -----------------------------------------


def randomize_batch_norms(model: nn.Module, seed: int) -> None:
    """Running statistics and affine parameters away from their identity defaults."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator))
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))


def state_dict_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: tensor.numpy() for name, tensor in model.state_dict().items()}


def check_against_torch(
    model: nn.Module, text: str, shapes: list[tuple[int, ...]], seed: int = 0
) -> None:
    """Bind ``model.state_dict()`` as-is (``num_batches_tracked`` included) to ``text`` on
    both backends, at -O0 and -O2, and compare with the model in eval mode."""
    model.eval()
    state = state_dict_arrays(model)
    assert any(k.endswith("num_batches_tracked") for k in state) == any(
        isinstance(m, nn.BatchNorm2d) for m in model.modules()
    )
    rng = np.random.default_rng(seed)
    for backend, opt_level in (("numpy", 0), ("numpy", 2), ("llvm", 2), ("llvm", 0)):
        net = compile_src(text, backend=backend, opt_level=opt_level)
        net.set_weights(state)
        for shape in shapes:
            x = rng.standard_normal(shape).astype(np.float32)
            with torch.no_grad():
                expected = model(torch.from_numpy(x))
            assert_close(net(x=x)["y"], expected)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    pad = (kernel - 1) // 2
    return [
        nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


SEQUENTIAL_CONV = """
    input x: f32[N, 3, H, W]
    h = conv2d(x, 17, kernel=3, padding=1, bias=false, name="0")
    h = batch_norm(h, name="1")
    h = relu(h, name="2")
    h = conv2d(h, 1, kernel=1, name="3")
    h = batch_norm(h, name="4")
    h = relu6(h, name="5")
    output y = conv2d(h, 3, kernel=3, stride=2, name="6")
    """


def test_sequential_state_dict_binds_by_integer_names() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        *conv_bn(3, 17, 3), nn.ReLU(), nn.Conv2d(17, 1, 1), nn.BatchNorm2d(1), nn.ReLU6(),
        nn.Conv2d(1, 3, 3, stride=2),
    )  # fmt: skip
    randomize_batch_norms(model, 1)
    check_against_torch(model, SEQUENTIAL_CONV, [(2, 3, 9, 7), (1, 3, 3, 3), (1, 3, 10, 4)])


class ConvBNReLU(nn.Sequential):
    """torchvision's MobileNetV2 ``Conv2dNormActivation``: children ``0``, ``1``, ``2``."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__(*conv_bn(cin, cout, kernel, stride, groups), nn.ReLU6())


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: ``conv.0`` expand, ``conv.1`` depthwise,
    ``conv.2``/``conv.3`` the linear projection and its batch norm."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            ConvBNReLU(cin, hidden),
            ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
            *conv_bn(hidden, cout, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class TinyMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNReLU(3, 8, 3, stride=2),
            InvertedResidual(8, 12, 2, 2),
            InvertedResidual(12, 12, 1, 2),
            InvertedResidual(12, 12, 1, 2),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(12, 5, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean((2, 3), keepdim=True)
        return self.classifier(pooled)


MOBILENET_CONV = """
    input x: f32[N, 3, H, W]
    block conv_bn_relu(x, out, kernel=1, stride=1, groups=1) {
      c = conv2d(x, out, kernel=kernel, stride=stride, padding=(kernel - 1) // 2,
                 groups=groups, bias=false, name="0")
      return relu6(batch_norm(c, name="1"), name="2")
    }
    block inverted_residual(x, out, stride, hidden) {
      e = conv_bn_relu(x, hidden, name="conv.0")
      d = conv_bn_relu(e, hidden, kernel=3, stride=stride, groups=hidden, name="conv.1")
      p = conv2d(d, out, kernel=1, bias=false, name="conv.2")
      return batch_norm(p, name="conv.3")
    }
    h = conv_bn_relu(x, 8, kernel=3, stride=2, name="features.0")
    h = inverted_residual(h, 12, 2, 16, name="features.1")
    for i in range(2, 4) { h = h + inverted_residual(h, 12, 1, 24, name="features.{i}") }
    output y = conv2d(global_avg_pool(h), 5, kernel=1, name="classifier.1")
    """


def test_mobilenet_style_state_dict_binds_with_computed_names() -> None:
    torch.manual_seed(0)
    model = TinyMobileNet()
    randomize_batch_norms(model, 2)
    names = set(compile_src(MOBILENET_CONV, backend="numpy").params)
    state = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert names == state  # every parameter, named exactly as torchvision would
    check_against_torch(model, MOBILENET_CONV, [(2, 3, 13, 11), (1, 3, 1, 1), (1, 3, 8, 17)])


VGG_CONV = """
    input x: f32[N, 3, 12, 14]
    h = x
    k = 0
    for c in [8, 8] {
      h = conv2d(h, c, kernel=3, padding=1, name="features.{k}")
      h = relu(h, name="features.{k + 1}")
      k = k + 2
    }
    h = max_pool2d(h, 2, name="features.{k}")
    h = relu(conv2d(h, 17, kernel=3, padding=1, name="features.{k + 1}"), name="features.{k + 2}")
    h = max_pool2d(h, 2, name="features.{k + 3}")
    output y = conv2d(h, 4, kernel=3, name="classifier.0")
    """


def test_vgg_style_state_dict_without_batch_norm() -> None:
    torch.manual_seed(3)
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(8, 17, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip
    classifier = nn.Sequential(nn.Conv2d(17, 4, 3))
    model = nn.Sequential(OrderedDict(features=features, classifier=classifier))
    check_against_torch(model, VGG_CONV, [(2, 3, 12, 14)])


def test_a_misnamed_state_dict_is_reported_with_close_matches() -> None:
    model = TinyMobileNet()
    state = state_dict_arrays(model)
    state["features.1.conv2.weight"] = state.pop("features.1.conv.2.weight")
    net = compile_src(MOBILENET_CONV, backend="numpy")
    with pytest.raises(ConvdslError) as info:
        net.set_weights(state, origin="state_dict")
    found = [(d.message, d.hint) for d in info.value.diagnostics]
    assert found == [
        (
            "state_dict: unexpected array 'features.1.conv2.weight': no layer has this parameter",
            "did you mean 'features.1.conv.2.weight'?",
        ),
        (
            "state_dict: missing parameter 'features.1.conv.2.weight' (expected f32[12,16,1,1])",
            "the weights have 'features.1.conv2.weight'; is it this one?",
        ),
    ]
    missing = info.value.diagnostics[1].span
    assert missing is not None and (missing.line, missing.column) == (10, 7)


def test_num_batches_tracked_is_accepted_only_beside_a_batch_norm() -> None:
    net = compile_src(SEQUENTIAL_CONV, backend="numpy")
    state = state_dict_arrays(nn.Sequential(*conv_bn(3, 17, 3)))  # only layers 0 and 1
    arrays = {**dict(net.weights), **state}
    net.set_weights(arrays)  # 1.num_batches_tracked: a batch norm's counter, ignored
    arrays["0.num_batches_tracked"] = np.array(0)
    with pytest.raises(ConvdslError) as info:
        net.set_weights(arrays)
    assert [d.message for d in info.value.diagnostics] == [
        "weights: unexpected array '0.num_batches_tracked': no layer has this parameter"
    ]


def test_check_lists_computed_names_of_a_symbolic_size_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mobile.conv"
    path.write_text(dedent(MOBILENET_CONV))
    assert cli.main(["check", str(path)]) == 0
    layers = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line]
    for name in ("features.0.0", "features.1.conv.1.0", "features.3.conv.3", "classifier.1"):
        assert name in layers, (name, layers)
