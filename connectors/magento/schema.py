"""Magento 2.4.8's request schema, held to the letter: what the connector checks before it sends a body
and what the fake refuses.

The schema is ``schema_requests.json`` in this package, derived from Magento's published REST schema
(AdobeDocs/commerce-webapi, Apache-2.0; see :mod:`connectors.magento.derive_schema` and the file's
``origin``); nothing reads the reference beside the project at run time.

Magento's deserializer is more forgiving than its schema (PHP casts ``"12.5"`` to a number and ``1`` to
``"1"``); a body that leans on that breaks the published contract, and a change of Magento's may stop
forgiving it, so we hold bodies to the schema as written:

* a value must have its declared JSON type: an integer is a JSON integer (``4`` or ``4.0``), a number
  any JSON number, a string a JSON string, a boolean ``true``/``false``: no numeric strings, no 0/1
  for booleans, no numbers for strings; ``custom_attributes[].value`` is a string
  (``framework-attribute-interface``), so ``1250.5`` must be sent as ``"1250.5"``;
* null is no value of any type (Swagger 2.0 has no nullable): leave the field out instead;
* every field a definition lists as ``required`` must be there, except the two of
  :data:`NOT_REQUIRED` (a company's ``reject_reason`` and ``rejected_at``: only a rejected company has
  them; Magento answers null for both on every other company, a value the schema cannot express, and
  Adobe's own examples create companies without them);
* a field a data object does not declare is an error (Magento answers 400 ``Property "X" does not have
  accessor method``); at the top of a body, the route's path parameters are allowed too (Magento takes
  them from the path, as the connector's ``orderId`` beside a shipment's body).

Bulk routes (``/async/bulk/V1/...``) are not in the published schema: their body is a list of the
synchronous route's bodies (see :data:`BULK_OF`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from engine.connector import closest

__all__ = [
    "BULK_OF",
    "NOT_REQUIRED",
    "Problem",
    "request_body_schema",
    "request_definitions",
    "request_problems",
    "request_routes",
    "schema_problems",
]

REQUESTS_FILE: Final = Path(__file__).resolve().with_name("schema_requests.json")

NOT_REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "company-data-company-interface": ("reject_reason", "rejected_at"),
}

BULK_OF: Final[Mapping[str, str]] = {"POST /async/bulk/V1/products": "POST /V1/products"}

ATTRIBUTE: Final = "framework-attribute-interface"
_PYTHON_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "integer": (int, float),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}

Kind = Literal["type", "null", "missing", "unknown"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing in a body that breaks the schema: where (a JSON path such as ``product.price``), what kind
    of problem, the value found, the type the schema wants, the definition that says so, and for an unknown
    field the nearest declared one."""

    path: str
    kind: Kind
    value: Any = None
    expected: str = ""
    owner: str | None = None
    near: str | None = None

    def __str__(self) -> str:
        where = self.path or "the body"
        if self.kind == "null":
            return f"{where}: null is not allowed (Magento's schema has no null: leave the field out)"
        if self.kind == "missing":
            return f"{where}: missing (required by Magento's {self.owner or 'route body'})"
        if self.kind == "unknown":
            return f"{where}: unknown field (not in {_owner(self.owner)}){self.hint()}"
        return f"{where}: {self.value!r} is not of type '{self.expected}'{self.hint()}"

    def hint(self) -> str:
        """What to send instead, when there is an obvious answer."""
        if self.kind == "unknown":
            return f" — did you mean '{self.near}'?" if self.near else ""
        if self.expected == "string" and isinstance(self.value, int | float) and not isinstance(self.value, bool):
            return f' (send it as text: "{_text(self.value)}")'
        return ""

    @property
    def field(self) -> str:
        """The last name of the path (``price`` of ``product.price``; ``value`` of ``…[2].value``)."""
        return self.path.rsplit(".", 1)[-1]


def _owner(owner: str | None) -> str:
    return f"Magento's {owner}" if owner else "this body"


def _text(value: int | float) -> str:
    """A number as the text a mapping should send: ``1250.5`` -> ``1250.5``, ``12.0`` -> ``12``."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@functools.cache
def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(REQUESTS_FILE.read_text(encoding="utf-8"))
    return loaded


def request_routes() -> list[str]:
    """The routes whose bodies can be checked (``"PUT /V1/products/{sku}"``, …, and the bulk ones)."""
    return sorted([*_document()["routes"], *BULK_OF])


def request_body_schema(route: str) -> dict[str, Any]:
    """The body schema of one route of the request document (its ``$ref`` name definitions of the document)."""
    body: dict[str, Any] = _document()["routes"][route]["body"]
    return body


def request_definitions() -> dict[str, Any]:
    """The definitions the request document's bodies reach, by name."""
    definitions: dict[str, Any] = _document()["definitions"]
    return definitions


def request_problems(route: str, body: Any, *, unknown_fields: bool = True) -> list[Problem]:
    """Everything in ``body`` that breaks the published schema of ``route``'s request body (empty: it fits).

    ``route`` is ``"<METHOD> <route as the schema writes it>"``; ``unknown_fields=False`` lets undeclared
    fields pass (the fake's ``strict_unknown_fields=False``). A route the schema does not know is a KeyError.
    """
    if route in BULK_OF:
        if not isinstance(body, list):
            return [Problem("", "type", body, "array")]
        inner = BULK_OF[route]
        return [
            Problem(f"[{index}].{p.path}" if p.path else f"[{index}]", p.kind, p.value, p.expected, p.owner, p.near)
            for index, item in enumerate(body)
            for p in request_problems(inner, item, unknown_fields=unknown_fields)
        ]
    entry = _document()["routes"][route]
    checker = _Checker(_document()["definitions"], unknown_fields)
    return checker.top(body, entry["body"], frozenset(entry["path"]))


def schema_problems(value: Any, schema: Mapping[str, Any], path: str = "") -> list[Problem]:
    """Everything in ``value`` that breaks ``schema``, a schema of our own whose ``$ref`` names definitions of
    the request document (the connector's own record shapes, such as order-status, are held this way)."""
    return _Checker(_document()["definitions"], True).value(value, schema, path, None)


class _Checker:
    """One walk of a body against a schema of the request document (rules in the module docstring)."""

    def __init__(self, definitions: Mapping[str, Any], unknown_fields: bool) -> None:
        self.definitions = definitions
        self.unknown_fields = unknown_fields

    def top(self, body: Any, schema: Mapping[str, Any], path_parameters: frozenset[str]) -> list[Problem]:
        if not isinstance(body, dict):
            return [Problem("", "null" if body is None else "type", body, "object")]
        return self.object(body, schema, "", None, path_parameters)

    def value(self, value: Any, schema: Mapping[str, Any], path: str, owner: str | None) -> list[Problem]:
        if "$ref" in schema:
            owner = str(schema["$ref"]).rsplit("/", 1)[-1]
            schema = self.definitions[owner]
        kind = str(schema.get("type", "object"))
        if value is None:
            return [Problem(path, "null", None, kind, owner)]
        if not _is(value, kind):
            return [Problem(path, "type", value, kind, owner)]
        if kind == "object":
            return self.object(value, schema, path, owner, frozenset())
        if kind == "array":
            items = schema.get("items", {})
            return [p for i, item in enumerate(value) for p in self.value(item, items, f"{path}[{i}]", owner)]
        return []

    def object(
        self, value: dict[str, Any], schema: Mapping[str, Any], path: str, owner: str | None, extra: frozenset[str]
    ) -> list[Problem]:
        properties: Mapping[str, Any] = schema.get("properties", {})
        if not properties and "properties" not in schema:
            return []  # a free-form object: anything goes
        found: list[Problem] = []
        for name, item in value.items():
            where = _join(path, name)
            if name in properties:
                found += self.value(item, properties[name], where, owner)
            elif name not in extra and self.unknown_fields:
                found.append(Problem(where, "unknown", item, "", owner, closest(name, properties)))
        exempt = NOT_REQUIRED.get(owner or "", ())
        for name in schema.get("required", []):
            if name not in value and name not in exempt:
                found.append(Problem(_join(path, name), "missing", None, "", owner))
        return found


def _is(value: Any, kind: str) -> bool:
    """Whether a JSON value has the schema type ``kind`` (an integral float counts as an integer, as in JSON)."""
    wanted = _PYTHON_TYPES.get(kind)
    if wanted is None:
        return True
    if isinstance(value, bool):
        return kind == "boolean"
    if not isinstance(value, wanted):
        return False
    return kind != "integer" or not isinstance(value, float) or value.is_integer()
