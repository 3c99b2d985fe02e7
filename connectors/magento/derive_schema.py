"""Regenerate the two files derived from Magento 2.4.8's REST schema: ``schema_subset.json`` and
``schema_requests.json``.

::

    python3 -m connectors.magento.derive_schema            # rewrite both files
    python3 -m connectors.magento.derive_schema --check    # exit 1 when a committed file is stale

The full schema lives beside the project (``../shared/reference/magento/admin-schema-2.4.8.json``,
Apache-2.0, Adobe); nothing in the package reads it at run time. Of each schema only the
machine-readable part is kept (types, properties, items, ``$ref``, ``required``): descriptions and
examples stay behind.

* ``schema_subset.json``: for the routes in :data:`ROUTES`, the request body, the query parameters and
  the 200 response, and every definition they (and :data:`ROOTS`) reach. The fake answers from it and
  checks its own answers against it.
* ``schema_requests.json``: for every route in :data:`ROUTES` that takes a body (every write the
  connector sends), the body schema, the path parameters, and every definition the bodies reach, each
  as complete as the reference has it (``required`` lists included). The connector's pre-send check and
  the fake's request check hold bodies to it (:mod:`connectors.magento.schema`). Written one route or
  definition per line, so a change in the reference reads as a small diff.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "ORIGIN",
    "REFERENCE",
    "REQUESTS",
    "SUBSET",
    "derive",
    "derive_requests",
    "main",
    "render",
    "render_requests",
]

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared/reference/magento/admin-schema-2.4.8.json"
SUBSET = Path(__file__).resolve().with_name("schema_subset.json")
REQUESTS = Path(__file__).resolve().with_name("schema_requests.json")

ORIGIN = {
    "file": "src/openapi/admin-schema-2.4.8.yaml (JSON copy: shared/reference/magento/admin-schema-2.4.8.json)",
    "repository": "https://github.com/AdobeDocs/commerce-webapi",
    "commit": "e2275b5623d47d248df025a9e2a276162e551699",
    "sha256_yaml": "44ef7c19fc610eff1b963ce0671109ddb21ffeef659eb1445786108fa7597c9e",
    "sha256_json": "25b9ce630bbbf4435721199d22ea3f7b809dccd59a5409676f93f8ad07a790ac",
    "license": "Apache-2.0, (c) Adobe; derived: descriptions removed, routes and definitions filtered",
    "generator": "connectors/magento/derive_schema.py",
}

# (method, route as in the schema) whose body and 200 answer the fake serves.
ROUTES: tuple[tuple[str, str], ...] = (
    ("post", "/V1/products"),
    ("get", "/V1/products"),
    ("put", "/V1/products/{sku}"),
    ("get", "/V1/products/{sku}"),
    ("post", "/V1/inventory/source-items"),
    ("get", "/V1/inventory/source-items"),
    ("post", "/V1/products/base-prices"),
    ("post", "/V1/products/tier-prices"),
    ("post", "/V1/products/special-price"),
    ("post", "/V1/customers"),
    ("put", "/V1/customers/{customerId}"),
    ("get", "/V1/customers/{customerId}"),
    ("get", "/V1/customers/search"),
    ("post", "/V1/company/"),
    ("get", "/V1/company/"),
    ("put", "/V1/company/{companyId}"),
    ("get", "/V1/company/{companyId}"),
    ("get", "/V1/orders"),
    ("get", "/V1/orders/{id}"),
    ("post", "/V1/orders/{id}/comments"),
    ("post", "/V1/order/{orderId}/ship"),
    ("post", "/V1/order/{orderId}/invoice"),
    ("post", "/V1/order/{orderId}/refund"),
    ("get", "/V1/orders/{id}/comments"),
    ("get", "/V1/shipments"),
    ("get", "/V1/invoices"),
    ("get", "/V1/creditmemos"),
    ("get", "/V1/shipment/{id}/comments"),
    ("get", "/V1/invoices/{id}/comments"),
    ("get", "/V1/creditmemo/{id}/comments"),
    ("get", "/V1/bulk/{bulkUuid}/status"),
    ("post", "/V1/integration/admin/token"),
)

# Definitions kept even when no route above names them directly.
ROOTS: tuple[str, ...] = (
    "catalog-data-product-interface",
    "inventory-api-data-source-item-interface",
    "catalog-data-base-price-interface",
    "catalog-data-tier-price-interface",
    "catalog-data-special-price-interface",
    "catalog-data-price-update-result-interface",
    "customer-data-customer-interface",
    "customer-data-address-interface",
    "company-data-company-interface",
    "sales-data-order-interface",
    "sales-data-order-item-interface",
    "sales-data-order-status-history-interface",
    "asynchronous-operations-data-bulk-operations-status-interface",
    "error-response",
)

_KEEP = frozenset({"type", "properties", "items", "$ref", "required", "additionalProperties", "enum", "format"})


def _strip(schema: Any) -> Any:
    if isinstance(schema, dict):
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "properties":
                out[key] = {name: _strip(sub) for name, sub in value.items()}
            elif key in _KEEP:
                out[key] = _strip(value)
        return out
    if isinstance(schema, list):
        return [_strip(item) for item in schema]
    return schema


def _refs(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [str(schema["$ref"]).rsplit("/", 1)[-1]] if "$ref" in schema else []
        for key, value in schema.items():
            if key != "$ref":
                found.extend(_refs(value))
        return found
    if isinstance(schema, list):
        return [name for item in schema for name in _refs(item)]
    return []


def derive(full: dict[str, Any]) -> dict[str, Any]:
    """The subset document built from the full Swagger document."""
    routes: dict[str, Any] = {}
    wanted = list(ROOTS)
    for method, route in ROUTES:
        operation = full["paths"][route][method]
        entry: dict[str, Any] = {"body": None, "query": [], "response": None}
        for parameter in operation.get("parameters", []):
            if parameter.get("in") == "body":
                entry["body"] = _strip(parameter["schema"])
            elif parameter.get("in") == "query":
                entry["query"].append(parameter["name"])
        ok = operation.get("responses", {}).get("200", {}).get("schema")
        entry["response"] = None if ok is None else _strip(ok)
        wanted.extend(_refs(entry["body"]) + _refs(entry["response"]))
        routes[f"{method.upper()} {route}"] = entry
    definitions: dict[str, Any] = {}
    while wanted:
        name = wanted.pop()
        if name in definitions:
            continue
        definitions[name] = _strip(full["definitions"][name])
        wanted.extend(_refs(definitions[name]))
    return {
        "origin": {**ORIGIN, "info_version": full["info"]["version"]},
        "routes": routes,
        "definitions": dict(sorted(definitions.items())),
    }


def render(full: dict[str, Any]) -> str:
    """The subset as the committed file's text (stable: sorted keys, one space indent, final newline)."""
    return json.dumps(derive(full), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _closure(full: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    """Every definition named in ``wanted`` and every one they reach, stripped, sorted by name."""
    definitions: dict[str, Any] = {}
    while wanted:
        name = wanted.pop()
        if name not in definitions:
            definitions[name] = _strip(full["definitions"][name])
            wanted.extend(_refs(definitions[name]))
    return dict(sorted(definitions.items()))


def derive_requests(full: dict[str, Any]) -> dict[str, Any]:
    """The request schema document: each written route's body and path parameters, and their definitions."""
    routes: dict[str, Any] = {}
    wanted: list[str] = []
    for method, route in ROUTES:
        parameters = full["paths"][route][method].get("parameters", [])
        body = next((p["schema"] for p in parameters if p.get("in") == "body"), None)
        if body is None:
            continue
        routes[f"{method.upper()} {route}"] = {
            "body": _strip(body),
            "path": sorted(p["name"] for p in parameters if p.get("in") == "path"),
        }
        wanted.extend(_refs(body))
    origin = {
        **ORIGIN,
        "info_version": full["info"]["version"],
        "license": "Apache-2.0, (c) Adobe; derived: descriptions removed, request bodies of the routes we write",
    }
    return {"origin": origin, "routes": dict(sorted(routes.items())), "definitions": _closure(full, wanted)}


def render_requests(full: dict[str, Any]) -> str:
    """The request schema as the committed file's text: compact, one route or definition per line."""

    def line(value: Any) -> str:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    document = derive_requests(full)
    sections = []
    for section in ("routes", "definitions"):
        entries = ",\n".join(f"{line(name)}:{line(value)}" for name, value in document[section].items())
        sections.append(f"{line(section)}:{{\n{entries}\n}}")
    return "{" + f"{line('origin')}:{line(document['origin'])},\n" + ",\n".join(sections) + "}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m connectors.magento.derive_schema", description=__doc__)
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--check", action="store_true", help="compare with the committed file; change nothing")
    args = parser.parse_args(argv)
    raw = args.reference.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != ORIGIN["sha256_json"]:
        print(f"warning: {args.reference} has sha256 {digest}, not {ORIGIN['sha256_json']}", file=sys.stderr)
    full = json.loads(raw)
    stale = False
    for path, text in ((SUBSET, render(full)), (REQUESTS, render_requests(full))):
        if args.check:
            differs = not path.exists() or path.read_text(encoding="utf-8") != text
            print(f"{path} is {'stale' if differs else 'up to date'}")
            stale = stale or differs
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({len(text):,} bytes)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
