"""Turn pydantic's validation errors into located, readable diagnostics.

Pydantic says *what* is wrong at a ``loc``; the spec author needs *where* (``file:line:col``),
in the spec's words, with the valid options and the nearest match. The positions come from the
merged spec; the valid keys come from the model found at the error's path.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.connector import closest
from engine.errors import Diagnostic, Severity
from engine.spec.overlay import MergedSpec
from engine.spec.yamlsource import JsonPath, format_path

__all__ = ["translate_validation_error"]

_TYPE_WORDS = {
    "str": "a string",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "NoneType": "nothing (null)",
    "dict": "a map",
    "list": "a list",
    "date": "a date",
    "datetime": "a timestamp",
}
_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a map of keys",
    "model_type": "a map of keys",
    "model_attributes_type": "a map of keys",
    "list_type": "a list",
    "date_type": "a date (YYYY-MM-DD)",
    "date_parsing": "a date (YYYY-MM-DD)",
    "date_from_datetime_parsing": "a date (YYYY-MM-DD)",
}


def _describe_value(value: Any) -> str:
    word = _TYPE_WORDS.get(type(value).__name__, type(value).__name__)
    if isinstance(value, dict | list):
        return word
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{word} ({text})"


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional, Annotated and unions opened up)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _step(annotation: Any, part: str | int) -> Any:
    for candidate in _unwrap(annotation):
        origin = typing.get_origin(candidate)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and isinstance(part, str):
            field = candidate.model_fields.get(part)
            if field is not None:
                return field.annotation
        elif origin is dict:
            return typing.get_args(candidate)[1]
        elif origin is list and isinstance(part, int):
            return typing.get_args(candidate)[0]
    return None


def _model_at(root: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    annotation: Any = root
    for part in path:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    for candidate in _unwrap(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _child(current: Any, part: str | int) -> tuple[bool, Any]:
    if isinstance(current, dict) and isinstance(part, str) and part in current:
        return True, current[part]
    if isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
        return True, current[part]
    return False, None


def _resolve_loc(data: Any, loc: Sequence[str | int], error_type: str) -> tuple[JsonPath, list[str | int]]:
    """Follow ``loc`` through the data; parts that are pydantic's own (union tags) are dropped.

    Returns the path as it exists in the data, and the model path used to find valid keys.
    """
    path: list[str | int] = []
    current = data
    last = len(loc) - 1
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        found, child = _child(current, part)
        if found:
            path.append(part)
            current = child
        elif i == last and error_type == "missing" and isinstance(part, str):
            path.append(part)
        # anything else is a union member's tag ('str', 'list[str]', 'function-after[...]')
    return tuple(path), list(path)


def translate_validation_error(
    exc: ValidationError,
    merged: MergedSpec,
    model: type[BaseModel],
    prefix: JsonPath = (),
) -> list[Diagnostic]:
    data = merged.data
    for part in prefix:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int):
            data = data[part]
    diagnostics: list[Diagnostic] = []
    seen: set[JsonPath] = set()
    for err in exc.errors(include_url=False):
        error_type = err["type"]
        rel, model_path = _resolve_loc(data, err["loc"], error_type)
        path = (*prefix, *rel)
        if path in seen:
            continue  # one message per place: union branches repeat each other
        seen.add(path)
        diagnostics.append(_one(err, error_type, path, rel, model_path, merged, model))
    return diagnostics


def _one(
    err: Any,
    error_type: str,
    path: JsonPath,
    rel: JsonPath,
    model_path: list[str | int],
    merged: MergedSpec,
    model: type[BaseModel],
) -> Diagnostic:
    hint = ""
    where = format_path(path)
    if error_type == "missing":
        name = str(path[-1])
        parent = path[:-1]
        mark = merged.key_mark(parent) if parent else merged.mark(())
        owner = f"'{format_path(parent)}'" if parent else "the spec"
        message = f"missing required key '{name}' in {owner}"
        return _diag(message, mark, where, "missing")
    if error_type == "extra_forbidden":
        name = str(path[-1])
        owner_model = _model_at(model, model_path[:-1])
        valid = sorted(owner_model.model_fields) if owner_model else []
        guess = closest(name, valid)
        message = f"unknown key '{name}'"
        if guess:
            message += f" — did you mean '{guess}'?"
        if valid:
            hint = "valid keys here: " + ", ".join(valid)
        return _diag(message, merged.key_mark(path), where, "unknown-key", hint)
    value = err.get("input")
    mark = merged.mark(path)
    if error_type == "literal_error":
        options = re.findall(r"'([^']*)'|(\d+)", str(err.get("ctx", {}).get("expected", "")))
        valid = [a or b for a, b in options]
        guess = closest(str(value), valid)
        field = f"{path[-1]} " if path and isinstance(path[-1], str) else ""
        shown = repr(value) if isinstance(value, str) else _describe_value(value)
        message = f"{field}{shown} is not valid; expected one of: {', '.join(valid)}"
        if guess and guess != str(value):
            message += f" — did you mean '{guess}'?"
        return _diag(message, mark, where, "invalid-value")
    if error_type in ("value_error", "assertion_error"):
        message = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return _diag(message, mark if not isinstance(value, dict) else merged.key_mark(path), where, "invalid-value")
    if error_type in _EXPECTED:
        expected = _EXPECTED[error_type]
        message = f"expected {expected}, got {_describe_value(value)}"
        info = merged.scalars.get(path)
        if info is not None and info.style is None and info.resolved in ("bool", "int", "float", "NoneType", "date"):
            word = {"bool": "a boolean", "int": "a number", "float": "a number", "date": "a date"}.get(
                info.resolved, "null"
            )
            if path and path[-1] == "transform":
                message = (
                    f"transform was read by YAML as {word} ({info.raw}), not as JSONata text; "
                    "quote it or write it as a '|' block"
                )
            else:
                hint = f"YAML read the unquoted {info.raw!r} as {word}; quote it: '{info.raw}'"
        return _diag(message, mark, where, "type", hint)
    if error_type == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        message = f"{_describe_value(value)} does not have the expected form ({pattern})"
        return _diag(message, mark, where, "invalid-value")
    if error_type in (
        "too_short",
        "too_long",
        "greater_than_equal",
        "less_than_equal",
        "greater_than",
        "less_than",
        "string_too_short",
        "string_too_long",
    ):
        message = f"{_describe_value(value)}: " + str(err.get("msg", "")).lower()
        return _diag(message, mark, where, "invalid-value")
    message = str(err.get("msg", "invalid value"))
    return _diag(message, mark, where, error_type)


def _diag(message: str, mark: Any, where: str, code: str, hint: str = "") -> Diagnostic:
    return Diagnostic(Severity.ERROR, message, mark.file, mark.line, mark.column, path=where, code=code, hint=hint)
