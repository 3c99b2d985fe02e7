"""An independent judge of Magento requests: Magento 2.4.8's published schema, read with jsonschema.

The connector and the fake hold requests to the schema with their own checker
(:mod:`connectors.magento.schema`, fed by a file derived from the reference). The tests must not trust
that checker to judge itself, so this module validates a request body with ``jsonschema`` directly
against the reference file beside the project (``../shared/reference/magento/admin-schema-2.4.8.json``).
Without the reference (it is not part of the repository) the derived file stands in for it.

Used by the Magento connector tests: :func:`held_to_the_full_schema` records every request a
:class:`~connectors.magento.fake.FakeMagento` receives during a test and fails the test when one of
them breaks the schema.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jsonschema import Draft4Validator

from connectors.magento import derive_schema
from connectors.magento.fake import FakeMagento

__all__ = ["NOT_REQUIRED", "Captured", "held_to_the_full_schema", "reference_problems", "route_of"]

# The only required fields the check lets a request leave out, and why: a company that is not rejected has
# neither a reject reason nor a rejection time (Magento answers null for both, which the schema cannot say).
NOT_REQUIRED = {"company-data-company-interface": ("reject_reason", "rejected_at")}

_PATH = re.compile(r"^/rest(?:/(?!async/)[A-Za-z0-9_]+)?/(?P<mode>async/bulk/|async/)?(?P<route>V1/.*)$")

Captured = tuple[str, str, bytes]  # method, request target, body


@functools.cache
def _reference() -> dict[str, Any]:
    """The reference document (or the derived request schema when the reference is absent), with the
    exemptions of :data:`NOT_REQUIRED` applied."""
    if derive_schema.REFERENCE.exists():
        document = json.loads(derive_schema.REFERENCE.read_text(encoding="utf-8"))
        routes = {
            f"{method.upper()} {route}": next(
                (p["schema"] for p in operation.get("parameters", []) if p.get("in") == "body"), None
            )
            for route, operations in document["paths"].items()
            for method, operation in operations.items()
        }
        definitions = copy.deepcopy(document["definitions"])
    else:
        derived = json.loads(derive_schema.REQUESTS.read_text(encoding="utf-8"))
        routes = {key: entry["body"] for key, entry in derived["routes"].items()}
        definitions = copy.deepcopy(derived["definitions"])
    for name, fields in NOT_REQUIRED.items():
        required = definitions[name].get("required", [])
        definitions[name]["required"] = [field for field in required if field not in fields]
    return {"routes": routes, "definitions": definitions}


def route_of(method: str, path: str) -> tuple[str, bool] | None:
    """(the schema's route key, whether the body is a bulk list of that route's bodies) for a request path."""
    match = _PATH.match(path)
    if match is None:
        return None
    wanted = "/" + match.group("route")
    candidates = []
    for key in _reference()["routes"]:
        verb, _, route = key.partition(" ")
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(route)) + "$"
        if verb == method and re.match(pattern, wanted):
            candidates.append(key)
    if not candidates:
        return None
    candidates.sort(key=lambda key: key.count("{"))  # /V1/products/base-prices before /V1/products/{sku}
    return candidates[0], match.group("mode") == "async/bulk/"


def reference_problems(method: str, path: str, body: Any) -> list[str]:
    """What in one request body breaks Magento's published schema (an empty list: nothing)."""
    found = route_of(method, path)
    if found is None:
        return [f"{method} {path}: no such route in Magento's schema"]
    key, bulk = found
    schema = _reference()["routes"][key]
    if schema is None:
        return [] if body in (None, b"", "") else [f"{method} {path}: {key} takes no body"]
    validator = Draft4Validator({**schema, "definitions": _reference()["definitions"]})
    bodies = body if bulk and isinstance(body, list) else [body]
    return [
        f"{method} {path}: " + ".".join(str(part) for part in error.absolute_path) + f": {error.message}"
        for item in bodies
        for error in validator.iter_errors(item)
    ]


@contextmanager
def held_to_the_full_schema() -> Iterator[list[Captured]]:
    """Record every request any FakeMagento receives inside the block; on leaving it, fail (AssertionError)
    when a request with a body breaks Magento's published schema."""
    captured: list[Captured] = []
    original = FakeMagento.handle

    def recording(self: FakeMagento, method: str, target: str, raw: bytes, *args: Any, **kwargs: Any) -> Any:
        captured.append((method, target, raw))
        return original(self, method, target, raw, *args, **kwargs)

    FakeMagento.handle = recording  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        FakeMagento.handle = original  # type: ignore[method-assign]
    problems = [
        problem
        for method, target, raw in captured
        if method != "GET" and raw.strip() and not target.startswith("/__fake/")  # the fake's admin API
        for problem in reference_problems(method, target.partition("?")[0], json.loads(raw))
    ]
    assert not problems, "requests that break Magento's schema:\n" + "\n".join(problems)
