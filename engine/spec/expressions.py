"""Find the text of a transform and where it was written: a .jsonata file or a YAML scalar.

The one place both ``validate`` and the runtime resolve a transform, so an error at run time points
where validate would have pointed: every character of an expression written in the spec is mapped
back to its line and column, through YAML's quoting, folding and escapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.connector import closest
from engine.spec.overlay import MergedSpec
from engine.spec.yamlsource import JsonPath, position_of, value_places
from engine.transform import ExpressionSource

__all__ = [
    "ExpressionRef",
    "PlacedSource",
    "did_you_mean_file",
    "expression_source",
    "is_file_reference",
    "value_positions",
]


@dataclass(frozen=True, slots=True)
class ExpressionRef:
    """The outcome of resolving a transform value: its source, or why it has none (and where)."""

    source: ExpressionSource | None
    problem: str = ""
    hint: str = ""
    code: str = ""
    file: str = ""  # set when the problem is inside another file (a transform that is not UTF-8)
    line: int = 0
    column: int = 0


@dataclass(frozen=True, slots=True)
class PlacedSource(ExpressionSource):
    """An expression written in the spec, with the file position of each of its characters.

    YAML folds, unquotes and unescapes what it reads, so an offset in the expression is mapped
    through ``places`` rather than by counting lines from the value's start.
    """

    places: tuple[tuple[int, int], ...] = ()

    def position(self, offset: int) -> tuple[int, int]:
        if not self.places:
            return self.line, self.column
        if offset < len(self.places):
            return self.places[max(offset, 0)]
        last = len(self.text.rstrip()) - 1  # the end of the expression: just past its last character
        if last < 0:
            return self.places[0]
        line, column = self.places[min(last, len(self.places) - 1)]
        return line, column + 1


def is_file_reference(value: str) -> bool:
    stripped = value.strip()
    return stripped.endswith(".jsonata") and "\n" not in stripped


def did_you_mean_file(location: Path, written: str) -> str:
    """' — did you mean ...?' naming a file beside the missing one, as the spec would write it."""
    try:
        siblings = [p.name for p in location.parent.iterdir() if p.is_file() and p.suffix == location.suffix]
    except OSError:
        return ""
    guess = closest(location.name, siblings)
    if guess is None:
        return ""
    head, sep, _ = written.rpartition("/")
    return f" — did you mean '{head}{sep}{guess}'?"


def expression_source(merged: MergedSpec, value: str, path: JsonPath) -> ExpressionRef:
    """Resolve the transform at ``path``: relative files against the spec file that named them."""
    stripped = value.strip()
    if is_file_reference(value):
        return _from_file(Path(os.path.normpath(Path(merged.origin(path)).parent / stripped)), stripped)
    mark = merged.mark(path)
    places = value_positions(merged, path, value)
    if places is not None:
        return ExpressionRef(PlacedSource(value, mark.file, mark.line, mark.column, "inline", places))
    return ExpressionRef(ExpressionSource(value, mark.file, mark.line, mark.column, "inline"))


def value_positions(merged: MergedSpec, path: JsonPath, value: str) -> tuple[tuple[int, int], ...] | None:
    """(line, column) in the spec file of each character of the string at ``path``, when known."""
    info = merged.scalars.get(path)
    if info is None:
        return None
    text = merged.texts.get(info.start.file, "")
    indexes = value_places(text, info, value)
    if indexes is None:
        return None
    return tuple(position_of(text, i) for i in indexes)


def _from_file(location: Path, written: str) -> ExpressionRef:
    if not location.is_file():
        return ExpressionRef(
            None,
            f"transform file '{written}' not found (looked for {location})" + did_you_mean_file(location, written),
            "transform paths are relative to the spec file that names them",
            "missing-file",
        )
    try:
        text = location.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raw: bytes = exc.object
        before = raw[: exc.start].decode("utf-8", errors="replace")
        line, column = position_of(before, len(before))
        message = f"byte 0x{raw[exc.start]:02x} is not UTF-8 text; save the transform as UTF-8"
        return ExpressionRef(None, message, code="encoding", file=str(location), line=line, column=column)
    except OSError as exc:
        return ExpressionRef(
            None, f"cannot read transform file '{written}': {exc.strerror or exc}", code="missing-file"
        )
    return ExpressionRef(ExpressionSource(text, str(location)))
