"""Symbolic sizes: integer expressions over named dimensions (``H``, ``W``, ``L``...).

A spatial dimension an input leaves open (``input x: f32[N, 3, H, W]``) flows through the shape
rules as an ``Expr``: a polynomial with integer coefficients over *atoms* — a symbol,
``floor(e / k)``, ``max(a, b)`` or ``min(a, b)``. The rules compute with it as with an int
(``+ - * // %`` and comparisons), so the window formulas of ``geometry`` are written once for
both. Arithmetic that cancels every symbol gives back a plain ``int``.

Normal form keeps equal sizes equal and printable: ``floor((H - 2) / 2) + 1`` is ``H//2``,
``floor(floor(H/2)/2)`` is ``H//4``, ``-floor(-H/2)`` is ``ceil(H/2)``. Two expressions with the
same normal form are equal; others may still be equal for every size, which ``decide`` finds.

A comparison of expressions is a ``Cond``. Its truth is decided by evaluating it at every size
of a sample (``Domain``): all sizes from 1 to a few hundred, and two full periods of the
expression's floors at a large size. The expressions are quasi-polynomial (polynomial within each
residue class of the periods, linear in each symbol), so two periods at a large size settle the
behaviour of every large size; small sizes are enumerated. When the sample disagrees the
condition depends on the size: inside ``assuming`` the caller chooses a branch and the condition
becomes a constraint on the sizes (see ``passes.shapes``); elsewhere it is an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Union, overload

import numpy as np

SMALL = {1: 512, 2: 96, 3: 20}
"""Sizes 1..SMALL[k] are enumerated per symbol when a condition involves k symbols."""
LARGE = 2**24
"""Where the periodic regime is sampled (two periods from a multiple of the period)."""
RANDOM_POINTS = 8192
"""Sample points drawn for a condition on more than 3 sizes."""
MAX_PERIOD = 2048
"""Periods longer than this are sampled over MAX_PERIOD sizes only."""


class SymbolicError(TypeError):
    """An operation on symbolic sizes that has no exact symbolic form (e.g. ``H / 3``)."""


class Undecided(Exception):
    """A comparison of sizes that holds for some sizes and not others, outside ``assuming``."""

    def __init__(self, cond: Cond) -> None:
        super().__init__(f"depends on the input size: {cond}")
        self.cond = cond


# ---- atoms and expressions -----------------------------------------------------------------


class _Atom:
    """Atoms compare by structure (``struct``), never by deciding a condition."""

    __slots__ = ("_struct",)

    def struct(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Atom) and self.struct() == other.struct()

    def __hash__(self) -> int:
        return hash(self.struct())


class Symbol(_Atom):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def struct(self) -> tuple[Any, ...]:
        return ("s", self.name)

    def __str__(self) -> str:
        return self.name


class Floor(_Atom):
    """``floor(num / den)``, ``den >= 2``, in normal form (see ``floordiv``)."""

    __slots__ = ("den", "num")

    def __init__(self, num: Expr, den: int) -> None:
        self.num = num
        self.den = den

    def struct(self) -> tuple[Any, ...]:
        return ("f", _struct(self.num), self.den)

    def __str__(self) -> str:
        rest, const = self.num.split_constant()
        if const == self.den - 1 and isinstance(rest, Expr) and rest.is_simple():
            return f"ceil({rest}/{self.den})"
        text = str(self.num)
        return f"{text}//{self.den}" if self.num.is_simple() else f"({text})//{self.den}"


class Extreme(_Atom):
    """``max(a, b)`` or ``min(a, b)`` (``which``), arguments in a fixed order."""

    __slots__ = ("args", "which")

    def __init__(self, which: str, args: tuple[Size, Size]) -> None:
        self.which = which
        self.args = args

    def struct(self) -> tuple[Any, ...]:
        return ("m", self.which, _struct(self.args[0]), _struct(self.args[1]))

    def __str__(self) -> str:
        return f"{self.which}({self.args[0]}, {self.args[1]})"


def _struct(value: Size) -> Any:
    if isinstance(value, int):
        return value
    return tuple((tuple(a.struct() for a in mono), coef) for mono, coef in value.terms)


Atom = Union[Symbol, Floor, Extreme]  # noqa: UP007 (a runtime alias)
Monomial = tuple[Atom, ...]
Size = Union[int, "Expr"]


def _atom_key(atom: Atom) -> tuple[int, str]:
    order = 0 if isinstance(atom, Symbol) else 1 if isinstance(atom, Floor) else 2
    return order, str(atom)


def _mono_key(mono: Monomial) -> tuple[int, list[tuple[int, str]]]:
    return len(mono), [_atom_key(a) for a in mono]


class Expr:
    """A polynomial over atoms with integer coefficients; never a constant (that is an int)."""

    __slots__ = ("_hash", "terms")

    def __init__(self, terms: tuple[tuple[Monomial, int], ...]) -> None:
        self.terms = terms
        self._hash = hash(terms)

    # -- construction --
    @staticmethod
    def make(coefs: Mapping[Monomial, int]) -> Size:
        items = [(m, c) for m, c in coefs.items() if c != 0]
        if all(not m for m, _ in items):
            return sum(c for _, c in items)
        items.sort(key=lambda item: _mono_key(item[0]) if item[0] else (99, []))
        return Expr(tuple(items))

    def coefs(self) -> dict[Monomial, int]:
        return dict(self.terms)

    def split_constant(self) -> tuple[Size, int]:
        """(this without its constant term, the constant term)."""
        coefs = self.coefs()
        const = coefs.pop((), 0)
        return Expr.make(coefs), const

    def is_simple(self) -> bool:
        """One atom with coefficient 1: printed without parentheses."""
        return len(self.terms) == 1 and self.terms[0][1] == 1 and len(self.terms[0][0]) == 1

    def symbols(self) -> frozenset[str]:
        found: set[str] = set()
        for mono, _ in self.terms:
            for atom in mono:
                found |= _atom_symbols(atom)
        return frozenset(found)

    def period(self) -> int:
        """The lcm of every floor's denominator (the period of the expression's residues)."""
        result = 1
        for mono, _ in self.terms:
            for atom in mono:
                result = math.lcm(result, _atom_period(atom))
        return result

    # -- arithmetic --
    def __add__(self, other: object) -> Size:
        if not isinstance(other, int | Expr):
            return NotImplemented
        coefs = self.coefs()
        for mono, c in _terms(other):
            coefs[mono] = coefs.get(mono, 0) + c
        return Expr.make(coefs)

    __radd__ = __add__

    def __neg__(self) -> Size:
        return Expr.make({m: -c for m, c in self.terms})

    def __sub__(self, other: object) -> Size:
        if not isinstance(other, int | Expr):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other: object) -> Size:
        if not isinstance(other, int):
            return NotImplemented
        return other + (-self)

    def __mul__(self, other: object) -> Size:
        if not isinstance(other, int | Expr):
            return NotImplemented
        coefs: dict[Monomial, int] = {}
        for m1, c1 in self.terms:
            for m2, c2 in _terms(other):
                mono = tuple(sorted(m1 + m2, key=_atom_key))
                coefs[mono] = coefs.get(mono, 0) + c1 * c2
        return Expr.make(coefs)

    __rmul__ = __mul__

    def __floordiv__(self, other: object) -> Size:
        if not isinstance(other, int):
            raise SymbolicError(f"{self} // {other}: sizes divide only by a fixed integer")
        return floordiv(self, other)

    def __rfloordiv__(self, other: object) -> Size:
        raise SymbolicError(f"{other} // {self}: sizes divide only by a fixed integer")

    def __mod__(self, other: object) -> Size:
        if not isinstance(other, int):
            raise SymbolicError(f"{self} % {other}: only a fixed integer modulus")
        return self - other * floordiv(self, other)

    def __truediv__(self, other: object) -> Size:
        raise SymbolicError(f"{self} / {other}: sizes divide only with //")

    def __pow__(self, other: object) -> Size:
        if not isinstance(other, int) or other < 0:
            raise SymbolicError(f"{self} ** {other}: only a fixed non-negative power")
        result: Size = 1
        for _ in range(other):
            result = result * self
        return result

    def __int__(self) -> int:
        raise SymbolicError(f"{self} is a symbolic size, not a fixed integer")

    # -- comparisons (a Cond decides itself when used as a bool) --
    def __eq__(self, other: object) -> Any:
        if not isinstance(other, int | Expr):
            return NotImplemented
        if isinstance(other, Expr) and other.terms == self.terms:
            return True
        return Cond(self - other, "==")

    def __ne__(self, other: object) -> Any:
        if not isinstance(other, int | Expr):
            return NotImplemented
        if isinstance(other, Expr) and other.terms == self.terms:
            return False
        return Cond(self - other, "!=")

    def __lt__(self, other: object) -> Cond:
        return Cond(self - _size(other), "<")

    def __le__(self, other: object) -> Cond:
        return Cond(self - _size(other), "<=")

    def __gt__(self, other: object) -> Cond:
        return Cond(self - _size(other), ">")

    def __ge__(self, other: object) -> Cond:
        return Cond(self - _size(other), ">=")

    def __hash__(self) -> int:
        return self._hash

    def __bool__(self) -> bool:
        raise SymbolicError(f"{self} is a symbolic size, not a truth value")

    def __repr__(self) -> str:
        return f"Expr({self})"

    def __str__(self) -> str:
        parts: list[str] = []
        # A positive term leads where there is one: `ceil(H/2) - H//2`, not `-H//2 + ...`.
        leading = sorted(self.terms, key=lambda item: item[1] < 0 or not item[0])
        for mono, coef in leading:
            magnitude = abs(coef)
            if not mono:
                body = str(magnitude)
            else:
                factors = "*".join(_factor_text(a, len(mono) > 1 or magnitude != 1) for a in mono)
                body = factors if magnitude == 1 else f"{magnitude}*{factors}"
            if not parts:
                parts.append(body if coef > 0 else f"-({body})" if "/" in body else f"-{body}")
            else:
                parts.append(f" + {body}" if coef > 0 else f" - {body}")
        return "".join(parts)


def _factor_text(atom: Atom, in_product: bool) -> str:
    text = str(atom)
    return f"({text})" if in_product and isinstance(atom, Floor) and "//" in text else text


def _size(value: object) -> Size:
    if not isinstance(value, int | Expr):
        raise SymbolicError(f"cannot compare a size with {value!r}")
    return value


def _terms(value: Size) -> tuple[tuple[Monomial, int], ...]:
    return value.terms if isinstance(value, Expr) else (((), value),)


def _atom_symbols(atom: Atom) -> frozenset[str]:
    if isinstance(atom, Symbol):
        return frozenset({atom.name})
    if isinstance(atom, Floor):
        return atom.num.symbols()
    return frozenset().union(*(a.symbols() for a in atom.args if isinstance(a, Expr)))


def _atom_period(atom: Atom) -> int:
    if isinstance(atom, Symbol):
        return 1
    if isinstance(atom, Floor):
        return math.lcm(atom.den, atom.num.period())
    return math.lcm(*(a.period() if isinstance(a, Expr) else 1 for a in atom.args))


def symbol(name: str) -> Expr:
    return Expr((((Symbol(name),), 1),))


def is_symbolic(value: object) -> bool:
    return isinstance(value, Expr)


def floordiv(value: Size, k: int) -> Size:
    """``floor(value / k)`` in normal form, for a positive integer ``k``."""
    if k <= 0:
        raise SymbolicError(f"{value} // {k}: sizes divide only by a positive integer")
    if isinstance(value, int):
        return value // k
    if k == 1:
        return value
    quotient: dict[Monomial, int] = {}
    rest: dict[Monomial, int] = {}
    for mono, coef in value.terms:
        if not mono:
            quotient[()] = coef // k
            rest[()] = coef % k
        elif coef % k == 0:
            quotient[mono] = coef // k
        else:
            rest[mono] = coef
    return Expr.make(quotient) + _floor_atom(rest, k)


def _floor_atom(rest: dict[Monomial, int], k: int) -> Size:
    """``floor(sum(rest) / k)`` where every coefficient but the constant's is not a multiple
    of ``k`` and ``0 <= constant < k``."""
    const = rest.pop((), 0)
    if not rest:
        return const // k
    variable = [(m, c) for m, c in sorted(rest.items(), key=lambda item: _mono_key(item[0]))]
    if variable[0][1] < 0:  # floor(-a/k) = -floor((a + k - 1)/k): lead with a positive term
        negated = {m: -c for m, c in rest.items()}
        negated[()] = -const + k - 1
        return -floordiv(Expr.make(negated), k)
    if len(variable) == 1 and variable[0][1] == 1 and len(variable[0][0]) == 1:
        (atom,) = variable[0][0]
        if isinstance(atom, Floor):  # floor((floor(a/m) + c)/k) = floor((a + c*m)/(m*k))
            return floordiv(atom.num + const * atom.den, atom.den * k)
    g = math.gcd(k, *(c for _, c in variable))
    if g > 1:  # floor((g*a + c)/(g*k')) = floor((a + c//g)/k')
        reduced = {m: c // g for m, c in variable}
        reduced[()] = const // g
        return floordiv(Expr.make(reduced), k // g)
    num = Expr.make({**rest, (): const})
    assert isinstance(num, Expr)
    return Expr((((Floor(num, k),), 1),))


@overload
def maximum(a: int, b: int) -> int: ...
@overload
def maximum(a: Size, b: Size) -> Size: ...
def maximum(a: Size, b: Size) -> Size:
    """``max(a, b)``; an atom only when which is larger depends on the size."""
    return _extreme("max", a, b)


@overload
def minimum(a: int, b: int) -> int: ...
@overload
def minimum(a: Size, b: Size) -> Size: ...
def minimum(a: Size, b: Size) -> Size:
    return _extreme("min", a, b)


def _extreme(which: str, a: Size, b: Size) -> Size:
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b) if which == "max" else min(a, b)
    ge = decide(Cond(a - b, ">="), Domain())
    le = decide(Cond(a - b, "<="), Domain())
    if ge is True:
        return a if which == "max" else b
    if le is True:
        return b if which == "max" else a
    args = tuple(sorted((a, b), key=str))
    return Expr((((Extreme(which, (args[0], args[1])),), 1),))


def ceildiv(value: Size, k: int) -> Size:
    return -floordiv(-value, k)


# ---- evaluation ----------------------------------------------------------------------------

Env = Mapping[str, Any]  # symbol -> int, or an int64 array of sample sizes


def evaluate(value: Size, env: Env) -> Any:
    """``value`` with every symbol replaced by ``env``'s int (or int64 array)."""
    if isinstance(value, int):
        return value
    total: Any = 0
    for mono, coef in value.terms:
        product: Any = coef
        for atom in mono:
            product = product * _evaluate_atom(atom, env)
        total = total + product
    return total


def _evaluate_atom(atom: Atom, env: Env) -> Any:
    if isinstance(atom, Symbol):
        return env[atom.name]
    if isinstance(atom, Floor):
        return evaluate(atom.num, env) // atom.den
    a, b = (evaluate(arg, env) for arg in atom.args)
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b) if atom.which == "max" else min(a, b)
    return np.maximum(a, b) if atom.which == "max" else np.minimum(a, b)


def substitute(value: Size, sizes: Mapping[str, int]) -> int:
    """The concrete size once every symbol is bound."""
    result = evaluate(value, sizes)
    return int(result)


# ---- conditions ----------------------------------------------------------------------------

_COMPARE = {
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}
_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


@dataclass(frozen=True, slots=True, eq=False)
class Cond:
    """``diff op 0``: a comparison of two sizes, at least one symbolic."""

    diff: Size
    op: str

    def __bool__(self) -> bool:
        active = _ACTIVE.get()
        verdict = decide(self, active.domain if active is not None else Domain())
        if verdict is not None:
            return verdict
        if active is None:
            raise Undecided(self)
        return active.choose(self)

    def negated(self) -> Cond:
        return Cond(self.diff, _NEGATE[self.op])

    def symbols(self) -> frozenset[str]:
        return self.diff.symbols() if isinstance(self.diff, Expr) else frozenset()

    def same(self, other: Cond) -> bool:
        return self.op == other.op and _struct(self.diff) == _struct(other.diff)

    def holds(self, sizes: Env) -> Any:
        return _COMPARE[self.op](evaluate(self.diff, sizes), 0)

    def __str__(self) -> str:
        """``H//16 == 2*(H//32)``: positive terms on the left, the others on the right."""
        left: dict[Monomial, int] = {}
        right: dict[Monomial, int] = {}
        for mono, coef in _terms(self.diff):
            if mono and coef > 0:
                left[mono] = coef
            elif mono:
                right[mono] = -coef
        const = dict(_terms(self.diff)).get((), 0)
        op = self.op
        if not left:  # -H + 3 >= 0  ->  H <= 3
            left, right, const, op = right, {}, -const, _NEGATE_SIDES[op]
        if right:
            right[()] = -const
        return f"{Expr.make(left)} {op} {Expr.make(right) if right else -const}"


_NEGATE_SIDES = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


@dataclass
class Domain:
    """The sizes still possible: the sample of ``decide``, filtered by recorded constraints."""

    constraints: list[Cond] = field(default_factory=list)

    def points(self, names: frozenset[str], period: int) -> dict[str, np.ndarray]:
        """Combinations of sample sizes of ``names`` satisfying the constraints on them: every
        combination for up to 3 names, ``RANDOM_POINTS`` drawn ones (a fixed seed) for more."""
        ordered = sorted(names)
        count = len(ordered)
        small = np.arange(1, SMALL.get(count, SMALL[3]) + 1, dtype=np.int64)
        period = min(period, MAX_PERIOD if count == 1 else 64)
        base = LARGE // period * period if count == 1 else 2**12 // period * period + period
        large = np.arange(base, base + 2 * period, dtype=np.int64)
        axis = np.concatenate([small, large])
        if count <= 3:
            grids = np.meshgrid(*([axis] * count), indexing="ij")
            env = {name: grid.ravel() for name, grid in zip(ordered, grids, strict=True)}
        else:
            rng = np.random.default_rng(0)
            env = {name: rng.choice(axis, RANDOM_POINTS) for name in ordered}
        keep = np.ones(next(iter(env.values())).size, dtype=bool)
        for cond in self.constraints:
            if cond.symbols() <= names:
                keep &= cond.holds(env)
        return {name: values[keep] for name, values in env.items()}

    def empty(self, names: frozenset[str]) -> bool:
        period = math.lcm(1, *(c.diff.period() for c in self.constraints
                               if isinstance(c.diff, Expr)))  # fmt: skip
        return next(iter(self.points(names, period).values())).size == 0


def decide(cond: Cond, domain: Domain) -> bool | None:
    """True or False when ``cond`` is the same at every size ``domain`` allows; else None."""
    if not isinstance(cond.diff, Expr):
        return bool(_COMPARE[cond.op](cond.diff, 0))
    names = cond.symbols()
    period = cond.diff.period()
    for other in domain.constraints:
        if other.symbols() <= names and isinstance(other.diff, Expr):
            period = math.lcm(period, other.diff.period())
    env = domain.points(names, period)
    if next(iter(env.values())).size == 0:
        return None
    results = cond.holds(env)
    if results.all():
        return True
    if not results.any():
        return False
    return None


# ---- choosing branches -----------------------------------------------------------------------


class Assumptions:
    """Undecided conditions met while a shape rule runs, and the branch chosen for each.

    ``choices`` replays earlier decisions (for backtracking); a new condition is assumed False
    first (rules test for errors: ``if out < 1: raise ...``)."""

    def __init__(self, domain: Domain, choices: list[bool]) -> None:
        self.domain = domain
        self.choices = choices
        self.made: list[tuple[Cond, bool]] = []

    def choose(self, cond: Cond) -> bool:
        index = len(self.made)
        value = self.choices[index] if index < len(self.choices) else False
        self.made.append((cond, value))
        self.domain = Domain([*self.domain.constraints, cond if value else cond.negated()])
        return value

    def constraints(self) -> list[Cond]:
        return [cond if value else cond.negated() for cond, value in self.made]


_ACTIVE: ContextVar[Assumptions | None] = ContextVar("convdsl_assumptions", default=None)


@contextmanager
def assuming(assumptions: Assumptions) -> Iterator[Assumptions]:
    """Within: an undecided condition takes the branch ``assumptions`` chooses (per thread)."""
    token = _ACTIVE.set(assumptions)
    try:
        yield assumptions
    finally:
        _ACTIVE.reset(token)


# ---- exact quotients in annotations ---------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Ratio:
    """``num / den`` written in a shape annotation (``H/2``): a size equal to it must be an
    exact quotient, i.e. ``size * den == num``."""

    num: Size
    den: int

    def matches(self, size: Size) -> Any:
        """Whether ``size`` equals this quotient (a ``Cond`` when that depends on the sizes)."""
        return size * self.den == self.num

    def substitute(self, sizes: Mapping[str, int]) -> int | Ratio:
        num = substitute(self.num, sizes)
        return num // self.den if num % self.den == 0 else Ratio(num, self.den)

    def __str__(self) -> str:
        num = str(self.num)
        simple = isinstance(self.num, int) or self.num.is_simple()
        return f"{num}/{self.den}" if simple else f"({num})/{self.den}"
