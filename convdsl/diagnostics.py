"""Source text, spans, diagnostics and the two exception kinds.

A *user error* (``ConvdslError``) carries one or more ``Diagnostic``s, each pointing at a
``Span`` of the user's source, and renders as ``file:line:col: error: ...`` followed by the
source line and a caret. A compiler bug is an ``InternalError``: it says so and names what the
compiler was doing, so it is never mistaken for a mistake in the user's network.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Source:
    """A named source text (a ``.conv`` file, or ``<string>`` for source given in code)."""

    name: str
    text: str

    def line(self, lineno: int) -> str:
        """The 1-based line ``lineno`` without its newline ('' when out of range)."""
        lines = self.text.splitlines()
        return lines[lineno - 1] if 1 <= lineno <= len(lines) else ""


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source: 1-based line and column of its start and end (end exclusive)."""

    source: Source = field(repr=False, compare=False)
    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def whole_file(source: Source) -> Span:
        return Span(source, 1, 1, 1, 1)

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message about one place: ``error`` or ``note``; ``hint`` says how to fix it."""

    message: str
    span: Span | None = None
    severity: str = "error"
    hint: str | None = None
    notes: tuple[Diagnostic, ...] = ()

    def render(self) -> str:
        """``file:line:col: error: message``, the source line, a caret under the span, hints."""
        head = f"{self.span}: " if self.span is not None else ""
        out = [f"{head}{self.severity}: {self.message}"]
        if self.span is not None:
            out.extend(_caret_lines(self.span))
        if self.hint:
            out.append(f"  hint: {self.hint}")
        out.extend(note.render() for note in self.notes)
        return "\n".join(out)


def _caret_lines(span: Span) -> list[str]:
    text = span.source.line(span.line)
    if not text and span.line > len(span.source.text.splitlines()):
        return []
    gutter = f"{span.line:>4} | "
    start = max(span.column - 1, 0)
    if span.end_line == span.line and span.end_column > span.column:
        width = span.end_column - span.column
    else:
        width = max(len(text.rstrip()) - start, 1)
    # Tabs keep their width so the caret lines up under the offending text.
    pad = "".join("\t" if ch == "\t" else " " for ch in text[:start])
    return [gutter + text, " " * (len(gutter) - 2) + "| " + pad + "^" + "~" * (width - 1)]


class ConvdslError(Exception):
    """A mistake in what the user gave convdsl (source, weights, inputs, options).

    ``diagnostics`` holds every problem found, in source order; ``str(err)`` renders them all.
    """

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic]) -> None:
        diags = (diagnostics,) if isinstance(diagnostics, Diagnostic) else tuple(diagnostics)
        if not diags:
            raise InternalError("ConvdslError raised with no diagnostics")
        self.diagnostics: tuple[Diagnostic, ...] = diags
        super().__init__(self.render())

    def render(self) -> str:
        text = "\n".join(d.render() for d in self.diagnostics)
        errors = sum(d.severity == "error" for d in self.diagnostics)
        if errors > 1:
            text += f"\n{errors} errors"
        return text


class InternalError(Exception):
    """A bug in convdsl, not in the user's input."""

    def __init__(self, message: str, span: Span | None = None) -> None:
        where = f" (while handling {span})" if span is not None else ""
        super().__init__(f"internal error: this is a bug in convdsl{where}: {message}")


def call_notes(calls: Iterable[tuple[str, Span]]) -> tuple[Diagnostic, ...]:
    """'in block B called here' notes for the block calls (innermost first) that led to an
    error; a run of one call repeated (recursion) is one note with its count."""
    runs: list[tuple[str, Span, int]] = []
    for block, span in calls:
        if runs and runs[-1][0] == block and runs[-1][1] == span:
            runs[-1] = (block, span, runs[-1][2] + 1)
        else:
            runs.append((block, span, 1))
    return tuple(
        Diagnostic(
            f"in block '{block}' called here" + (f" ({count} nested calls)" if count > 1 else ""),
            span,
            severity="note",
        )
        for block, span, count in runs
    )


def error(message: str, span: Span | None = None, hint: str | None = None) -> ConvdslError:
    """A one-diagnostic user error, ready to raise."""
    return ConvdslError(Diagnostic(message, span, hint=hint))


class DiagnosticSink:
    """Collects diagnostics so a stage can report every problem, not only the first."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def error(self, message: str, span: Span | None = None, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(message, span, hint=hint))

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics.extend(diagnostics)

    def raise_if_errors(self) -> None:
        if any(d.severity == "error" for d in self.diagnostics):
            ordered = sorted(_merge_repeats(self.diagnostics), key=_position)
            raise ConvdslError(ordered)


def _position(diag: Diagnostic) -> tuple[int, int]:
    return (diag.span.line, diag.span.column) if diag.span is not None else (0, 0)


def _key(diag: Diagnostic) -> tuple[object, ...]:
    where = (
        None
        if diag.span is None
        else (
            diag.span.source.name,
            diag.span.line,
            diag.span.column,
            diag.span.end_line,
            diag.span.end_column,
        )
    )
    return (diag.severity, diag.message, where, diag.hint)


def _merge_repeats(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """One mistake in a block body called twice is one diagnostic, noting every call site."""
    merged: dict[tuple[object, ...], Diagnostic] = {}
    for diag in diagnostics:
        first = merged.get(_key(diag))
        if first is None:
            merged[_key(diag)] = diag
            continue
        seen = {_key(note) for note in first.notes}
        extra = tuple(note for note in diag.notes if _key(note) not in seen)
        merged[_key(diag)] = Diagnostic(
            first.message, first.span, first.severity, first.hint, first.notes + extra
        )
    return list(merged.values())
