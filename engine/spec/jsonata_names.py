"""What a JSONata expression names, read from the parser's syntax tree (not with regular expressions).

``validate`` checks that every function an expression calls exists, every ``$lookups.<table>`` and
``$constants.<name>`` it reads is declared in the spec, and that ``$lookup`` is given a table, not a
table's name: ``$lookup($lookups.uom, unit)`` is the one form; ``$lookup("uom", unit)`` looks the key up
in the string "uom" and silently gives nothing. Strings, comments and regexes never count as names,
and a function the expression defines itself (``$f := function($x) {...}``) is not checked.

The tree is jsonata-python's (a dependency whatever backend evaluates), walked generically, so a
construct this module does not know is still searched for names inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Name", "names_used"]

Kind = Literal["function", "lookups", "constants", "table-as-string"]


@dataclass(frozen=True, slots=True)
class Name:
    kind: Kind
    name: str
    offset: int  # where the name starts in the expression's text


def names_used(text: str) -> list[Name]:
    """Functions called, tables and constants read, and ``$lookup`` calls given a string; [] if it does not parse."""
    try:
        import jsonata
        from jsonata.parser import Parser

        tree = jsonata.Jsonata(text).ast
    except Exception:  # a syntax error: compiling reports it, with its position
        return []
    nodes = list(_walk(tree, Parser.Symbol, set()))
    defined = {_var_name(n.lhs) for n in nodes if _type(n) == "bind" and _var_name(getattr(n, "lhs", None))}
    for node in nodes:
        if _type(node) == "lambda":
            defined.update(_var_name(a) for a in getattr(node, "arguments", None) or [] if _var_name(a))
    found: list[Name] = []
    for node in nodes:
        kind = _type(node)
        if kind in ("function", "partial"):
            procedure = getattr(node, "procedure", None)
            name = _var_name(procedure)
            if name and name not in defined:
                found.append(Name("function", name, _start(text, procedure, "$" + name)))
            arguments = getattr(node, "arguments", None) or []
            if name == "lookup" and arguments and _type(arguments[0]) == "string":
                found.append(Name("table-as-string", str(arguments[0].value), _start(text, arguments[0], None)))
        elif kind == "path":
            steps = getattr(node, "steps", None) or []
            if len(steps) >= 2 and _type(steps[0]) == "variable" and steps[0].value in ("lookups", "constants"):
                second = steps[1]
                if _type(second) in ("name", "string") and isinstance(second.value, str):
                    section: Kind = "lookups" if steps[0].value == "lookups" else "constants"
                    found.append(Name(section, second.value, _start(text, second, None)))
    return sorted(set(found), key=lambda n: (n.offset, n.kind, n.name))


def _type(node: Any) -> str:
    return str(getattr(node, "type", "") or "")


def _var_name(node: Any) -> str:
    return str(node.value) if _type(node) == "variable" and isinstance(getattr(node, "value", None), str) else ""


def _walk(node: Any, symbol: type, seen: set[int]) -> Iterator[Any]:
    """Every syntax node under ``node``, once each (the parser shares some nodes between parents)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list | tuple):
            stack.extend(current)
            continue
        if isinstance(current, dict):
            stack.extend(current.values())
            continue
        if not isinstance(current, symbol) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for key, value in vars(current).items():
            if key not in ("value", "position", "type", "id", "lbp", "nud", "led", "parser"):
                stack.append(value)


def _start(text: str, node: Any, token: str | None) -> int:
    """Where ``node``'s token starts: the parser keeps where it ends."""
    end = getattr(node, "position", None)
    if not isinstance(end, int):
        return 0
    if token is None:
        value = node.value
        if _type(node) == "string":
            # a string literal: back from its end over the closing quote to the opening one
            opening = max(text.rfind('"', 0, end - 1), text.rfind("'", 0, end - 1))
            return max(opening, 0)
        if _type(node) == "name" and end > 0 and text[end - 1 : end] == "`":
            return max(text.rfind("`", 0, end - 1), 0)
        token = str(value)
    start = end - len(token)
    return max(start, 0) if text[start:end] == token else max(text.rfind(token, 0, end), 0)
