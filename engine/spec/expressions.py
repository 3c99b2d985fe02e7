"""Find the text of a transform and where it was written: a .jsonata file or a YAML block."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.spec.overlay import MergedSpec
from engine.spec.yamlsource import JsonPath
from engine.transform import ExpressionSource

__all__ = ["ExpressionRef", "expression_source", "is_file_reference"]


@dataclass(frozen=True, slots=True)
class ExpressionRef:
    """The outcome of resolving a transform value: its source, or why it has none."""

    source: ExpressionSource | None
    problem: str = ""
    hint: str = ""


def is_file_reference(value: str) -> bool:
    stripped = value.strip()
    return stripped.endswith(".jsonata") and "\n" not in stripped


def expression_source(merged: MergedSpec, value: str, path: JsonPath) -> ExpressionRef:
    """Resolve the transform at ``path``: relative files against the spec file that named them."""
    stripped = value.strip()
    if is_file_reference(value):
        location = Path(os.path.normpath(Path(merged.origin(path)).parent / stripped))
        if not location.is_file():
            return ExpressionRef(
                None,
                f"transform file '{stripped}' not found (looked for {location})",
                "transform paths are relative to the spec file that names them",
            )
        try:
            text = location.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            return ExpressionRef(None, f"cannot read transform file '{stripped}': {exc}")
        return ExpressionRef(ExpressionSource(text, str(location)))
    info = merged.scalars.get(path)
    mark = merged.mark(path)
    if info is not None and info.style in ("|", ">"):
        lines = merged.texts.get(mark.file, "").splitlines()
        first_content = mark.line  # 0-based index of the line after the '|' indicator
        while first_content < len(lines) and not lines[first_content].strip():
            first_content += 1
        indent = 0
        if first_content < len(lines):
            indent = len(lines[first_content]) - len(lines[first_content].lstrip(" "))
        leading_blank = len(value) - len(value.lstrip("\n"))
        return ExpressionRef(ExpressionSource(value, mark.file, first_content + 1 - leading_blank, indent + 1, "block"))
    quote = 1 if info is not None and info.style in ("'", '"') else 0
    return ExpressionRef(ExpressionSource(value, mark.file, mark.line, mark.column + quote, "inline"))
