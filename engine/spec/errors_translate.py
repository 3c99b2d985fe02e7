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
from dataclasses import replace
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
    "bool": "a boolean",
    "NoneType": "an empty value",
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
    if isinstance(value, dict | list) or value is None:
        return word
    return f"{word} ({_show(value)})"


def _show(value: Any) -> str:
    """A value as the spec author wrote it: strings quoted, booleans lower-case, long text cut."""
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return text[:37] + "..." if len(text) > 40 else text


def _field(path: JsonPath) -> str:
    return str(path[-1]) if path and isinstance(path[-1], str) else "the value"


def _nearest(value: str, valid: Sequence[str]) -> str | None:
    """closest(), and a case-only difference ('get' for 'GET') counts as near."""
    by_case = [v for v in valid if v.lower() == value.lower()]
    return by_case[0] if by_case else closest(value, valid)


_YAML_WORDS = {"bool": "a boolean", "int": "a number", "float": "a number", "date": "a date", "null": "null"}


def _yaml_retyped(merged: MergedSpec, path: JsonPath) -> tuple[str, str] | None:
    """(raw text, what YAML made of it) when an unquoted scalar was read as a non-string."""
    info = merged.scalars.get(path)
    if info is not None and info.style is None and info.resolved in _YAML_WORDS:
        return info.raw, _YAML_WORDS[info.resolved]
    return None


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
        diagnostic = _one(err, error_type, path, rel, model_path, merged, model)
        if "[key]" in err["loc"]:  # the name of an entry is wrong ('Price:'): point at the name, not its body
            key = merged.key_mark(path)
            diagnostic = replace(diagnostic, file=key.file, line=key.line, column=key.column)
        diagnostics.append(diagnostic)
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
    ctx = err.get("ctx") or {}
    field = _field(path)
    retyped = _yaml_retyped(merged, path)
    if error_type == "literal_error":
        options = re.findall(r"'([^']*)'|(\d+)", str(ctx.get("expected", "")))
        valid = [a or b for a, b in options]
        expected = f"expected one of: {', '.join(valid)}"
        if retyped is not None and retyped[0] in valid:
            raw, word = retyped  # 'b2b: yes' is the boolean true to YAML, not the text 'yes'
            message = f"{field}: YAML read the unquoted {raw} as {word} ({_show(value)}); quote it: '{raw}'"
            return _diag(message, mark, where, "type", f"{field} takes the text values: {', '.join(valid)}")
        if isinstance(value, str) and value in valid:
            return _diag(f"{field} '{value}' is quoted text; write it without quotes: {value}", mark, where, "type")
        guess = _nearest(str(value), valid)
        message = f"{field} {_show(value)} is not valid; {expected}"
        if guess and guess != str(value):
            message += f" — did you mean '{guess}'?"
        return _diag(message, mark, where, "invalid-value")
    if error_type in ("value_error", "assertion_error"):
        message = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return _diag(message, mark if not isinstance(value, dict) else merged.key_mark(path), where, "invalid-value")
    if error_type in _EXPECTED:
        expected = _EXPECTED[error_type]
        message = f"expected {expected}, got {_describe_value(value)}"
        if retyped is not None:
            raw, word = retyped
            if field == "transform":
                message = (
                    f"transform was read by YAML as {word} ({raw}), not as JSONata text; "
                    "quote it or write it as a '|' block"
                )
            elif value is None:
                hint = f"write a value after '{field}:', or remove the key"
            else:
                message = (
                    f"{field}: YAML read the unquoted {raw} as {word} ({_show(value)}), but {expected} is expected; "
                    f"quote it: '{raw}'"
                )
        return _diag(message, mark, where, "type", hint)
    if error_type == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if pattern.startswith("^/") and isinstance(value, str) and not value.startswith("/"):
            return _diag(f"{field} {_show(value)} must start with '/'", mark, where, "invalid-value")
        message = f"{field} {_show(value)} does not have the expected form ({pattern})"
        return _diag(message, mark, where, "invalid-value")
    if error_type in _BOUNDS:
        key, words = _BOUNDS[error_type]
        return _diag(f"{field} {_show(value)} is {words} {ctx.get(key)}", mark, where, "invalid-value")
    if error_type in ("too_short", "too_long", "string_too_short", "string_too_long"):
        unit = "character" if error_type.startswith("string") else "item"
        if error_type.endswith("short"):
            need = f"at least {_count(ctx.get('min_length'), unit)}"
        else:
            need = f"at most {_count(ctx.get('max_length'), unit)}"
        size = ctx.get("actual_length", len(value) if isinstance(value, str | list | dict) else None)
        has = "is empty" if size == 0 else f"has {_count(size, unit)}"
        return _diag(f"{field} {has}; it needs {need}", mark, where, "invalid-value")
    message = str(err.get("msg", "invalid value"))
    return _diag(message, mark, where, error_type)


def _count(n: Any, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


_BOUNDS = {
    "greater_than_equal": ("ge", "below the minimum"),
    "less_than_equal": ("le", "above the maximum"),
    "greater_than": ("gt", "not above"),
    "less_than": ("lt", "not below"),
}


def _diag(message: str, mark: Any, where: str, code: str, hint: str = "") -> Diagnostic:
    return Diagnostic(Severity.ERROR, message, mark.file, mark.line, mark.column, path=where, code=code, hint=hint)
