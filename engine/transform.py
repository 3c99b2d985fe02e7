"""The JSONata evaluator behind one interface: compile once per flow, then evaluate per record.

Where an expression came from matters for every error: a ``.jsonata`` file, or a block scalar
inside the YAML spec. :class:`ExpressionSource` keeps that origin and maps an offset inside the
expression back to ``file:line:col``, so a JSONata error points where the author can fix it.
Every failure leaves this module as a :class:`~engine.errors.TransformError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import jsonata

from engine.errors import TransformError

__all__ = ["JSONATA_BUILTINS", "Expression", "ExpressionSource", "called_functions", "compile_expression"]

# The function library of JSONata 2.x (https://docs.jsonata.org/); anything else a spec calls
# must be bound by seamline or defined in the expression itself.
_BUILTIN_NAMES = (
    "string length substring substringBefore substringAfter uppercase lowercase trim pad contains "
    "split join "
    "match replace eval base64encode base64decode encodeUrlComponent encodeUrl decodeUrlComponent decodeUrl "
    "number abs floor ceil round power sqrt random formatNumber formatBase formatInteger parseInteger "
    "sum max min average boolean not exists count append sort reverse shuffle distinct zip keys "
    "lookup spread "
    "merge sift each error assert type map filter single reduce now millis fromMillis toMillis"
)
JSONATA_BUILTINS = frozenset(_BUILTIN_NAMES.split())

_CALL = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_ASSIGNED = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*:=")
_PARAMS = re.compile(r"function\s*\(([^)]*)\)")
_STRINGS_AND_COMMENTS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|/\*.*?\*/', re.S)


@dataclass(frozen=True, slots=True)
class ExpressionSource:
    """An expression's text and where it was written.

    ``style`` is ``file`` (a .jsonata file: offsets map to its own lines), ``block`` (a YAML
    ``|`` block: line *i* of the text is file line ``line + i`` at column ``column``), or
    ``inline`` (a one-line YAML scalar starting at ``line``:``column``).
    """

    text: str
    file: str
    line: int = 1
    column: int = 1
    style: Literal["file", "block", "inline"] = "file"

    def position(self, offset: int) -> tuple[int, int]:
        """1-based file line and column of the 0-based ``offset`` inside the text."""
        offset = max(0, min(offset, len(self.text)))
        before = self.text[:offset]
        row = before.count("\n")
        col = offset - (before.rfind("\n") + 1)
        if self.style == "file":
            return 1 + row, 1 + col
        if self.style == "block":
            return self.line + row, self.column + col
        return self.line + row, (self.column + col) if row == 0 else 1 + col


def _mask_literals(text: str) -> str:
    """Blank out strings and comments (same length), so a regex scan finds only code."""
    return _STRINGS_AND_COMMENTS.sub(lambda m: " " * len(m.group(0)), text)


def called_functions(text: str) -> list[tuple[str, int]]:
    """Functions an expression calls that are neither defined nor bound in it: (name, offset)."""
    code = _mask_literals(text)
    defined = set(_ASSIGNED.findall(code))
    for params in _PARAMS.findall(code):
        defined.update(p.strip().lstrip("$") for p in params.split(",") if p.strip())
    return [(m.group(1), m.start()) for m in _CALL.finditer(code) if m.group(1) not in defined]


class Expression:
    """A compiled JSONata expression (compile once per flow, evaluate per record)."""

    def __init__(self, source: ExpressionSource, compiled: Any) -> None:
        self.source = source
        self._compiled = compiled

    def evaluate(self, data: Any, *, record_id: str = "") -> Any:
        try:
            return self._compiled.evaluate(data)
        except jsonata.JException as exc:
            raise _translate(exc, self.source, record_id) from None
        except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, RecursionError) as exc:
            raise TransformError(
                f"JSONata evaluation failed: {type(exc).__name__}: {exc}",
                file=self.source.file,
                line=self.source.line,
                column=self.source.column,
                record_id=record_id,
            ) from None


def compile_expression(source: ExpressionSource) -> Expression:
    """Compile ``source``; a syntax error becomes a TransformError pointing into the file."""
    if not source.text.strip():
        line, col = source.position(0)
        raise TransformError("the JSONata expression is empty", file=source.file, line=line, column=col)
    try:
        compiled = jsonata.Jsonata(source.text)
    except jsonata.JException as exc:
        raise _translate(exc, source) from None
    except (ValueError, TypeError, IndexError, KeyError, RecursionError) as exc:
        # jsonata-python raises raw exceptions on a few malformed inputs (an unclosed comment).
        line, col = source.position(len(source.text))
        raise TransformError(
            f"JSONata syntax error: {_describe_raw(exc, source.text)}",
            file=source.file,
            line=line,
            column=col,
        ) from None
    return Expression(source, compiled)


def _describe_raw(exc: Exception, text: str) -> str:
    if "/*" in text and text.count("/*") > text.count("*/"):
        return "comment '/*' is not closed with '*/'"
    return f"{type(exc).__name__}: {exc}"


def _translate(exc: Any, source: ExpressionSource, record_id: str = "") -> TransformError:
    code = getattr(exc, "error", "") or ""
    location = getattr(exc, "location", None)
    offset = (int(location) - 1) if isinstance(location, int) and location > 0 else 0
    line, col = source.position(offset)
    text = str(exc)
    kind = "syntax error" if code.startswith("S") else "error"
    return TransformError(
        f"JSONata {kind} {code}: {text}" if code else f"JSONata {kind}: {text}",
        file=source.file,
        line=line,
        column=col,
        code=code,
        record_id=record_id,
    )
