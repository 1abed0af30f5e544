"""The ``.conv`` text an ONNX import writes: names, literals, statements, annotations, weights.

``Program`` collects input declarations and one statement per ONNX node (or a few nested calls
for a composed op) and renders them. Variable names are identifiers that shadow no keyword, op
or built-in; layer names given with ``name="..."`` are dotted names the language accepts
(``layer1.0.conv1``), unique, and the prefix of the parameters written to the weights.
Shape annotations come from convdsl's own shape inference of the unannotated text
(``render(shapes)``), written as the language's size expressions (``(H + 1)//2``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from convdsl.ir.ops import OPS
from convdsl.ir.symbolic import Expr, Extreme, Floor, Symbol
from convdsl.ir.types import Dim, DType

RESERVED = frozenset(
    {"network", "input", "output", "block", "return", "for", "in"}
    | {"range", "min", "max", "len", "true", "false", "none", "same", "same_lower", "valid"}
    | {"causal", "center", "_"}
    | set(OPS)
    | {choice for op in OPS.values() for arg in op.args for choice in arg.choices}
)
"""Names a variable must not take: reserved words, built-ins, ops and keyword values."""

ANNOTATION_COLUMN = 56


class Raw(str):
    """Text written as it is: a variable or a keyword value (``padding=same``)."""


def number(value: float, dtype: DType = DType.F32) -> str:
    """The shortest decimal that reads back as ``value`` in ``dtype`` (``0.1``, ``1e-05``)."""
    scalar = np.float32(value) if dtype is DType.F32 else np.float64(value)
    if float(scalar).is_integer() and abs(float(scalar)) < 2**53:
        return str(int(scalar))
    positional = np.format_float_positional(scalar, unique=True, trim="-")
    scientific = np.format_float_scientific(scalar, unique=True, trim="-")
    return min(positional, scientific, key=len)


def literal(value: object, dtype: DType = DType.F32) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return number(float(value), dtype)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v, dtype) for v in value) + "]"
    raise TypeError(f"no .conv literal for {value!r}")


def call(op: str, *args: object, dtype: DType = DType.F32, **kwargs: object) -> str:
    """``op(a, b, key=value)``; keyword arguments that are None are left out."""
    parts = [literal(a, dtype) for a in args]
    parts += [f"{k}={literal(v, dtype)}" for k, v in kwargs.items() if v is not None]
    return f"{op}({', '.join(parts)})"


def per_axis(values: Sequence[int]) -> int | list[int]:
    """One integer when every axis has the same, else the list."""
    return values[0] if len(set(values)) == 1 else list(values)


_SPLIT = re.compile(r"[^A-Za-z0-9_]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def layer_name(hint: str) -> str:
    """``hint`` as a dotted layer name: segments split at other characters, each made an
    identifier or an integer (``/features/features.0/Conv`` gives ``features.features.0.Conv``)."""
    segments = [s for s in _SPLIT.split(hint) if s]
    fixed = [s if _IDENT.fullmatch(s) or s.isdigit() else f"_{s}" for s in segments]
    return ".".join(fixed)


def identifier(hint: str, fallback: str) -> str:
    """``hint`` as a variable name: dots and other characters become ``_``."""
    text = "_".join(s for s in _SPLIT.split(hint) if s)
    if not text:
        return fallback
    return text if _IDENT.fullmatch(text) else f"{fallback}_{text}"


@dataclass
class Statement:
    targets: list[str]
    expr: str
    layer: str  # the layer that computes the value (for its annotation)
    output: bool = False
    comment: str | None = None


class Program:
    def __init__(self, name: str, dtype: DType) -> None:
        base = identifier(name, "imported")
        self.name = f"{base}_net" if base in RESERVED else base
        self.dtype = dtype
        self.header: list[str] = []
        self.inputs: list[str] = []
        self.statements: list[Statement] = []
        self.outputs: list[str] = []
        self.weights: dict[str, np.ndarray] = {}
        self._variables: set[str] = set()
        self._layers: set[str] = set()

    def reserve(self, name: str) -> None:
        """A name taken by something other than a variable (a batch or size name)."""
        self._variables.add(name)
        self._layers.add(name)

    def variable(self, hint: str, fallback: str = "v") -> str:
        base = identifier(hint, fallback)
        name, suffix = base, 0
        while name in RESERVED or name in self._variables or name in self._layers:
            suffix += 1
            name = f"{base}_{suffix}"
        self._variables.add(name)
        self._layers.add(name)
        return name

    def layer(self, hint: str, fallback: str) -> tuple[str, str | None]:
        """(variable, name given with ``name=`` or None) for a layer with parameters."""
        wanted = layer_name(hint)
        if not wanted or _IDENT.fullmatch(wanted):
            var = self.variable(wanted or fallback, fallback)
            return var, None
        name, suffix = wanted, 0
        while name in self._layers:
            suffix += 1
            name = f"{wanted}_{suffix}"
        self._layers.add(name)
        return self.variable(name, fallback), name

    def given_name(self, hint: str, fallback: str) -> str:
        """A unique layer name for ``name="..."`` (the value's variable is named otherwise)."""
        wanted = layer_name(hint) or fallback
        name, suffix = wanted, 0
        while name in self._layers or name in RESERVED:
            suffix += 1
            name = f"{wanted}_{suffix}"
        self._layers.add(name)
        self._variables.add(name)
        return name

    def param(self, layer: str, role: str, array: np.ndarray) -> None:
        self.weights[f"{layer}.{role}"] = np.ascontiguousarray(array, dtype=self.dtype.numpy)

    def emit(self, statement: Statement) -> None:
        self.statements.append(statement)

    def render(self, shapes: Mapping[str, tuple[Dim, ...]] | None = None) -> str:
        """The ``.conv`` text; ``shapes`` (by layer name) adds an annotation to each statement."""
        lines = [*self.header, f"network {self.name}", "", *self.inputs, ""]
        for st in self.statements:
            if st.comment:
                lines.append(f"# {st.comment}")
            head = "output " if st.output else ""
            text = f"{head}{', '.join(st.targets)} = {st.expr}"
            shape = shapes.get(st.layer) if shapes is not None and len(st.targets) == 1 else None
            if shape is not None:
                text = f"{text.ljust(ANNOTATION_COLUMN - 1)} : [{', '.join(map(dim_text, shape))}]"
            lines.append(text)
        if self.outputs:
            lines += ["", *self.outputs]
        return "\n".join(lines) + "\n"


def dim_text(dim: Dim) -> str:
    """A dim as an annotation accepts it; ``_`` for one it cannot spell (``max(H, 3)``)."""
    if isinstance(dim, int | str):
        return str(dim)
    try:
        return _expr_text(dim)
    except ValueError:
        return "_"


def _expr_text(expr: Expr) -> str:
    parts: list[str] = []
    for mono, coef in sorted(expr.terms, key=lambda item: item[1] < 0 or not item[0]):
        magnitude = abs(coef)
        if not mono:
            body = str(magnitude)
        else:
            wrap = len(mono) > 1 or magnitude != 1
            factors = [_atom_text(atom, wrap) for atom in mono]
            body = "*".join(factors if magnitude == 1 else [str(magnitude), *factors])
        if not parts:
            parts.append(body if coef > 0 else f"0 - {body}")
        else:
            parts.append(f" + {body}" if coef > 0 else f" - {body}")
    return "".join(parts) or "0"


def _atom_text(atom: object, in_product: bool) -> str:
    if isinstance(atom, Symbol):
        return atom.name
    if isinstance(atom, Floor):
        num = atom.num
        inner = _expr_text(num)
        simple = isinstance(num, Expr) and len(num.terms) == 1 and num.terms[0][1] == 1
        text = f"{inner}//{atom.den}" if simple and "//" not in inner else f"({inner})//{atom.den}"
        return f"({text})" if in_product else text
    if isinstance(atom, Extreme):
        raise ValueError("min/max has no annotation form")
    raise ValueError(f"unknown atom {atom!r}")
