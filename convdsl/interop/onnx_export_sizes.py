"""Size expressions as ONNX computations, for ops whose bounds depend on open input sizes.

A crop at ``offset=center`` of a network written for any size starts at ``(H+8-H)//2``-like
expressions of the input sizes. ONNX reads them at run time: ``Shape`` of the graph input that
declares the symbol, the dim sliced out, and the expression's polynomial (``Add``, ``Mul``),
floors (``floor(a/k) = (a - a mod k) / k``, exact with ONNX's floor-sign ``Mod``), ``Max`` and
``Min``, all in int64. Each distinct expression is computed once per model; the nodes are named
``sizes/...``. Plain ints become constants.
"""

from __future__ import annotations

from collections.abc import Sequence

from convdsl.diagnostics import error
from convdsl.interop.onnx_export import Builder, bare_symbol
from convdsl.ir.symbolic import Expr, Extreme, Floor, Size, Symbol

LAYER = "sizes"


def size_vector(b: Builder, layer: str, what: str, values: Sequence[Size]) -> str:
    """A 1-D int64 tensor of ``values`` for ``layer`` (a constant ``layer/what`` when every
    value is an int, else a Concat ``layer/what`` of the computed sizes)."""
    if is_fixed(values):
        return b.ints(f"{layer}/{what}", [int(v) for v in values])
    parts = [_scalar(b, v) for v in values]
    if len(parts) == 1:
        return parts[0]
    return b.add("Concat", parts, layer, what, axis=0)


def is_fixed(values: Sequence[object]) -> bool:
    return all(isinstance(v, int) for v in values)


def _scalar(b: Builder, value: Size) -> str:
    """``value`` as a one-element int64 tensor."""
    if isinstance(value, int):
        return _const(b, value)
    key = ("size", str(value))
    if key not in b.memo:
        b.memo[key] = _polynomial(b, value)
    return b.memo[key]


def _const(b: Builder, value: int) -> str:
    key = ("const", value)
    if key not in b.memo:
        b.memo[key] = b.ints(f"{LAYER}/{value}", [value])
    return b.memo[key]


def _polynomial(b: Builder, value: Expr) -> str:
    total: str | None = None
    for mono, coef in value.terms:
        factors = [_atom(b, atom) for atom in mono]
        if coef != 1 or not factors:
            factors.append(_const(b, coef))
        term = factors[0]
        for factor in factors[1:]:
            term = b.add("Mul", [term, factor], LAYER, "mul")
        total = term if total is None else b.add("Add", [total, term], LAYER, "add")
    assert total is not None
    return total


def _atom(b: Builder, atom: Symbol | Floor | Extreme) -> str:
    key = ("atom", atom)
    if key not in b.memo:
        b.memo[key] = _new_atom(b, atom)
    return b.memo[key]


def _new_atom(b: Builder, atom: Symbol | Floor | Extreme) -> str:
    if isinstance(atom, Symbol):
        return _symbol(b, atom.name)
    if isinstance(atom, Floor):
        num, den = _scalar(b, atom.num), _const(b, atom.den)
        rest = b.add("Mod", [num, den], LAYER, "mod")
        exact = b.add("Sub", [num, rest], LAYER, "sub")
        return b.add("Div", [exact, den], LAYER, "floor")
    first, second = (_scalar(b, arg) for arg in atom.args)
    return b.add(atom.which.capitalize(), [first, second], LAYER, atom.which)


def _symbol(b: Builder, name: str) -> str:
    """The size ``name`` read from the first graph input that declares it as a dim."""
    key = ("symbol", name)
    if key in b.memo:
        return b.memo[key]
    graph = b.graph
    for value_id in graph.inputs:
        for axis, dim in enumerate(graph.type_of(value_id).shape):
            if bare_symbol(dim) == name:
                shape = _shape(b, b.value(value_id))
                starts, ends = (
                    b.ints(f"{LAYER}/{name}.start", [axis]),
                    b.ints(f"{LAYER}/{name}.end", [axis + 1]),
                )
                b.memo[key] = b.add("Slice", [shape, starts, ends], LAYER, name)
                return b.memo[key]
    raise error(
        f"ONNX export: size {name} is not the size of an input axis, so the model cannot read it",
        hint=f"export for fixed sizes: --shape {name}=... (sizes= in Python)",
    )


def _shape(b: Builder, input_name: str) -> str:
    key = ("shape", input_name)
    if key not in b.memo:
        b.memo[key] = b.add("Shape", [input_name], LAYER, f"shape.{input_name}")
    return b.memo[key]
