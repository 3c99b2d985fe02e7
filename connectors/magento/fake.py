"""A fake Magento 2.4.8 REST API: a real HTTP server for tests, crash tests and demos.

::

    with FakeMagento(port=0) as shop:                 # .url is http://127.0.0.1:<port>
        token = shop.issue_token()                    # or POST /rest/V1/integration/admin/token
        shop.seed_order({"customer_email": "a@b.c", "items": [{"sku": "A", "qty_ordered": 1}]})
        shop.fail_next(2, status=429, retry_after="3")
        ...                                           # point a magento connector at shop.url
        shop.writes(); shop.applied_count()           # the write log: every applied write
        shop.effects(order_id)                        # {comments, shipments, invoices, creditmemos} of one order
        shop.request_count("/async/bulk/")            # every request answered (or dropped)
        shop.expire_tokens()                          # admin tokens issued so far stop working

    seamline fake magento --port 8082 [--no-auth] [--no-b2b] [--token T] [--seed seed.json] [--source CODE]...

Routes live under ``/rest/<store>/V1/`` (``/rest/V1/`` is the default store; any store code is
accepted, ``all`` included; data is global, store scope is not modelled): products (upsert by SKU,
list with searchCriteria), inventory source items, base/tier/special prices, customers, companies
(Adobe Commerce B2B; ``b2b=False`` answers them like Open Source: 404 "Request does not match any
route."), orders (list, get, comments added and listed, ship, invoice, refund), the shipments, invoices
and credit memos they create (lists with searchCriteria; each document keeps the body's ``comment`` and a
shipment its ``tracks``, in the shapes Magento answers them; ``GET /V1/shipment|invoices|creditmemo/{id}/comments``
lists one document's comments; ``document_comments_in_lists=False`` leaves them out of the invoice and credit
memo lists, as some builds do), the bulk API (``/async/bulk/V1/products``,
``/async/V1/products`` and ``/V1/bulk/{uuid}/status``) and the admin token.

Besides the write log, every request is counted (:meth:`FakeMagento.requests`, :meth:`request_count`):
how a benchmark tells HTTP requests sent from writes applied.

Request bodies are held to Magento's full request schema (``schema_requests.json``, derived from the
published schema by ``derive_schema.py``; the rules are :mod:`connectors.magento.schema`'s), as the
connector's pre-send check holds them, and refused the way Magento's web API deserializer words it:
a missing wrapper key or required field is a 400 ``"%fieldName" is required. Enter and try again.``; a
value of the wrong JSON type (a numeric string for a number, a number for a string such as
``custom_attributes[].value``, null for any field) is a 400 ``The "%value" value's type is invalid. The
"%type" type was expected.``; an unknown field in a data object is a 400 ``Property "%1" does not have
accessor method "%2" in class "%3".`` (``strict_unknown_fields=False`` ignores it, and the fake drops it).
Magento itself casts more than it refuses; the fake does not, so nothing that leans on PHP's casts
passes here and fails on another Magento. Only a company's ``reject_reason`` and ``rejected_at`` may be
left out of the schema's ``required`` lists (see :data:`connectors.magento.schema.NOT_REQUIRED`). Beyond
the schema, the runtime minimum is checked (a new product needs a name, an attribute set and a price; a
customer an email, first and last name; a company its name, email and super user).

Answers are checked too, strictly (:func:`response_problems`: exact types, no unknown fields, the
schema's required keys present): an answer of the fake that breaks the schema becomes a 500 naming
the problem (``check_responses=False`` turns that off), so the fake cannot drift from Magento's shapes.

Auth (``auth=False`` turns it off): a bearer admin token from ``POST /V1/integration/admin/token``
(``users``; it expires after ``token_ttl`` seconds, after which the caller is a guest: 401 "The
consumer isn't authorized to access %resources."), a fixed ``integration_token`` used as a bearer
token (never expires), or an integration's OAuth 1.0a signature (``oauth1=(consumer_key,
consumer_secret, access_token, access_token_secret)``; HMAC-SHA256, query parameters signed, nonces
single-use, timestamps within 600 s).

Faults, applied before auth, in this order: ``drop_next`` closes the socket unanswered, ``latency``
waits, ``fail_next`` answers N requests with a status (and ``Retry-After``), ``error_rate`` answers
that share of requests with ``error_status`` (seeded, so runs repeat).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import functools
import hashlib
import hmac
import json
import random
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from connectors.magento.schema import (
    BULK_OF,
    Problem,
    request_body_schema,
    request_definitions,
    request_problems,
    request_routes,
)
from engine.connector import closest
from engine.fakeserver import ServedFake, TrackingHTTPServer, listen, serve_until_signalled

__all__ = ["FakeMagento", "main", "response_problems"]

SCHEMA_FILE = Path(__file__).resolve().with_name("schema_subset.json")

NO_ROUTE = {"message": "Request does not match any route.", "trace": None}
NO_PRODUCT = {"message": "The product that was requested doesn't exist. Verify the product and try again."}
NO_ENTITY = {"message": "The entity that was requested doesn't exist. Verify the entity and try again."}
BAD_LOGIN = {
    "message": "The account sign-in was incorrect or your account is disabled temporarily. "
    "Please wait and try again later."
}
TYPE_ERROR = 'The "%value" value\'s type is invalid. The "%type" type was expected. Verify and try again.'
REQUIRED = '"%fieldName" is required. Enter and try again.'
NO_ACCESSOR = 'Property "%1" does not have accessor method "%2" in class "%3".'
BULK_SUCCESS = "Service execution success Magento\\Catalog\\Model\\ProductRepository\\Interceptor::save"

# bulk operation statuses (Magento\AsynchronousOperations\Api\Data\OperationInterface)
COMPLETE, RETRIABLY_FAILED, FAILED, OPEN, REJECTED = 1, 2, 3, 4, 5

ADMIN = "/__fake/"
SEED_KEYS = ("customers", "orders", "products", "sources")

_PATH = re.compile(r"^/rest(?:/(?!async/)(?P<store>[A-Za-z0-9_]+))?/(?P<mode>async/bulk/|async/)?V1/(?P<route>.*)$")
_FILTER = re.compile(
    r"^searchCriteria\[(?:filter_groups|filterGroups)\]\[(\d+)\]\[filters\]\[(\d+)\]\[(field|value|condition_type|conditionType)\]$"
)
_SORT = re.compile(r"^searchCriteria\[(?:sort_orders|sortOrders)\]\[(\d+)\]\[(field|direction)\]$")
_INT = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class _Answer(Exception):
    """Raised inside a handler to answer at once (an error, usually)."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error(status: int, message: str, parameters: list[Any] | dict[str, Any] | None = None) -> _Answer:
    body: dict[str, Any] = {"message": message}
    if parameters is not None:
        body["parameters"] = parameters
    return _Answer(status, body)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


@functools.cache
def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return loaded


def _php_class(definition: str) -> str:
    """``catalog-data-product-interface`` -> ``Magento\\Catalog\\Api\\Data\\ProductInterface`` (by convention)."""
    module, _, rest = definition.partition("-data-")

    def camel(text: str) -> str:
        return "".join(part.capitalize() for part in text.split("-"))

    return f"Magento\\{camel(module)}\\Api\\Data\\{camel(rest)}"


def _accessor(name: str) -> str:
    return "get" + "".join(part.capitalize() for part in name.split("_"))


_PHP_TYPES = {"integer": "int", "number": "float", "boolean": "bool", "string": "string", "array": "array"}


def _refusal(problem: Problem) -> _Answer:
    """Magento's 400 for the first problem of a body (its web API deserializer stops at the first one)."""
    if problem.kind == "missing":
        return _error(400, REQUIRED, {"fieldName": problem.field})
    if problem.kind == "unknown":
        pascal = _accessor(problem.field)[3:]
        return _error(400, NO_ACCESSOR, [pascal, _accessor(problem.field), _php_class(problem.owner or "")])
    expected = _PHP_TYPES.get(problem.expected) or _php_class(problem.owner or "object")
    shown = "null" if problem.kind == "null" else _show(problem.value)
    return _error(400, TYPE_ERROR, {"value": shown, "type": expected})


class _Validator:
    """Holds request bodies to Magento's full request schema (:mod:`connectors.magento.schema`) and keeps
    of a body what the fake stores: without ``strict_unknown_fields`` an undeclared field of a data object
    is dropped (as Magento ignores it), and an integral float for an integer becomes an int."""

    def __init__(self, strict_unknown_fields: bool) -> None:
        self.definitions = request_definitions()
        self.strict_unknown_fields = strict_unknown_fields

    def body(self, value: Any, route: str | None) -> Any:
        """The body to store, once it fits ``route``'s request schema; else raises Magento's 400."""
        if route is None:
            return value
        if not isinstance(value, dict | list):
            raise _error(400, "Decoding error: %1", ["the request body is not a JSON object"])
        problems = [
            p
            for p in request_problems(route, value, unknown_fields=self.strict_unknown_fields)
            if not (p.kind == "unknown" and p.owner is None)  # a parameter the service does not take is ignored
        ]
        if problems:
            raise _refusal(problems[0])
        schema = request_body_schema(BULK_OF.get(route, route))
        if isinstance(value, list):
            return [self.keep(item, schema, None) for item in value]
        return self.keep(value, schema, None)

    def keep(self, value: Any, schema: dict[str, Any], owner: str | None) -> Any:
        if "$ref" in schema:
            owner = str(schema["$ref"]).rsplit("/", 1)[-1]
            schema = self.definitions[owner]
        kind = schema.get("type", "object" if "properties" in schema else None)
        if kind == "object" and isinstance(value, dict) and "properties" in schema:
            properties = schema["properties"]
            return {
                name: self.keep(item, properties[name], owner) if name in properties else item
                for name, item in value.items()
                if name in properties or owner is None
            }
        if kind == "array" and isinstance(value, list):
            return [self.keep(item, schema.get("items", {}), owner) for item in value]
        if kind == "integer" and isinstance(value, float):
            return int(value)
        return value


def response_problems(value: Any, schema: dict[str, Any] | None, where: str = "$") -> list[str]:
    """What in an answer breaks a schema of the subset, checked strictly (exact types, no unknown fields,
    required keys present; null stands for an absent value): how the fake keeps its own answers honest."""
    if schema is None or value is None:
        return []
    owner = None
    if "$ref" in schema:
        owner = str(schema["$ref"]).rsplit("/", 1)[-1]
        schema = _schema()["definitions"][owner]
    kind = schema.get("type", "object" if "properties" in schema else None)
    exact: dict[str, tuple[type, ...]] = {
        "integer": (int,),
        "number": (int, float),
        "boolean": (bool,),
        "string": (str,),
        "array": (list,),
        "object": (dict,),
    }
    wanted = exact.get(str(kind))
    if wanted is not None and (
        not isinstance(value, wanted) or (isinstance(value, bool) and kind in ("integer", "number"))
    ):
        return [f"{where}: {value!r} is not of type {kind}"]
    problems: list[str] = []
    if kind == "object":
        properties = schema.get("properties", {})
        problems += [f"{where}: missing required {n!r}" for n in schema.get("required", []) if n not in value]
        for name, item in value.items():
            if name not in properties:
                problems.append(f"{where}: unknown field {name!r} for {owner or 'object'}")
            elif not (owner == "framework-attribute-interface" and name == "value"):
                problems += response_problems(item, properties[name], f"{where}.{name}")
    elif kind == "array":
        for index, item in enumerate(value):
            problems += response_problems(item, schema.get("items", {}), f"{where}[{index}]")
    return problems


def _seed_list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key}: a list of {key}, not a {type(value).__name__}")
    return value


def _source_code(source: Any, where: str) -> str:
    """An MSI source code from a seed entry: ``"eu_central"`` or ``{"source_code": "eu_central", ...}``."""
    code = source.get("source_code") if isinstance(source, dict) else source
    if not isinstance(code, str) or not code:
        raise ValueError(f'{where}: a source is a code or {{"source_code": code}}; got {source!r}')
    return code


def _seed_fits(where: str, route: str, body: dict[str, Any]) -> None:
    """A seed entry is held to the schema of the request that would create it."""
    problems = request_problems(route, body)
    if problems:
        raise ValueError(f"{where}: {problems[0]}")


def _seeded(where: str, store: Callable[[], Any]) -> None:
    """Store one seed entry; Magento's refusal of it (the runtime minimum) becomes a ValueError naming it."""
    try:
        store()
    except _Answer as refused:
        raise ValueError(f"{where}: {_said(refused.body)}") from None


def _said(body: Any) -> str:
    """An error body's message with its parameters filled in (``%1``, ``%name``)."""
    text = str(body.get("message", "")) if isinstance(body, dict) else str(body)
    parameters = body.get("parameters") if isinstance(body, dict) else None
    if isinstance(parameters, list):
        for position, value in enumerate(parameters, 1):
            text = text.replace(f"%{position}", str(value))
    elif isinstance(parameters, dict):
        for name, value in parameters.items():
            text = text.replace(f"%{name}", str(value))
    return text


def _oauth_enc(value: str) -> str:
    return quote(value, safe="~")


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _compare(left: Any, right: Any) -> int | None:
    if left is None:
        return None
    a, b = _number(left), _number(right)
    if a is None or b is None:
        x, y = str(left), str(right)
        return int(x > y) - int(x < y)
    return int(a > b) - int(a < b)


def _matches(item: dict[str, Any], spec: dict[str, str]) -> bool:
    actual = item.get(spec.get("field", ""))
    if actual is None:  # custom attributes are searchable too
        for attribute in item.get("custom_attributes") or []:
            if attribute.get("attribute_code") == spec.get("field"):
                actual = attribute.get("value")
    condition = spec.get("condition_type") or spec.get("conditionType") or "eq"
    value = spec.get("value", "")
    if condition == "null":
        return actual is None
    if condition == "notnull":
        return actual is not None
    if condition in ("in", "nin"):
        inside = actual is not None and str(actual) in [v.strip() for v in value.split(",")]
        return inside if condition == "in" else not inside
    if condition in ("like", "nlike"):
        pattern = "^" + ".*".join(re.escape(part) for part in value.split("%")) + "$"
        hit = actual is not None and re.match(pattern, str(actual), re.IGNORECASE) is not None
        return hit if condition == "like" else not hit
    compared = _compare(actual, value)
    if compared is None:
        return False
    return {
        "eq": compared == 0,
        "neq": compared != 0,
        "gt": compared > 0,
        "gteq": compared >= 0,
        "from": compared >= 0,
        "moreq": compared >= 0,
        "lt": compared < 0,
        "lteq": compared <= 0,
        "to": compared <= 0,
    }.get(condition, False)


def _search(items: list[dict[str, Any]], query: list[tuple[str, str]]) -> dict[str, Any]:
    """Magento's search result envelope for ``items`` under a searchCriteria query (empty past the end).

    A list route without any ``searchCriteria`` parameter is a 400, as on a live 2.4 instance (the
    service parameter is not optional; ``?searchCriteria=`` or ``searchCriteria[pageSize]=N`` satisfy it)."""
    if not any(name.startswith("searchCriteria") for name, _ in query):
        raise _error(400, REQUIRED, {"fieldName": "searchCriteria"})
    groups: dict[int, dict[int, dict[str, str]]] = {}
    sorts: dict[int, dict[str, str]] = {}
    size: int | None = None
    current = 1
    for name, value in query:
        if match := _FILTER.match(name):
            key = "condition_type" if match.group(3) == "conditionType" else match.group(3)
            groups.setdefault(int(match.group(1)), {}).setdefault(int(match.group(2)), {})[key] = value
        elif match := _SORT.match(name):
            sorts.setdefault(int(match.group(1)), {})[match.group(2)] = value
        elif name in ("searchCriteria[pageSize]", "searchCriteria[currentPage]"):
            if _INT.match(value) is None:
                raise _error(400, TYPE_ERROR, {"value": value, "type": "int"})
            if name.endswith("[pageSize]"):
                size = int(value)
            else:
                current = int(value)
    found = [copy.deepcopy(item) for item in items]
    for _, group in sorted(groups.items()):
        found = [item for item in found if any(_matches(item, spec) for spec in group.values())]
    for order in reversed([sorts[k] for k in sorted(sorts)]):
        name = order.get("field", "")
        found.sort(
            key=lambda item: (_number(item.get(name)) is None, _number(item.get(name)) or 0, str(item.get(name, ""))),
            reverse=order.get("direction", "ASC").upper() == "DESC",
        )
    total = len(found)
    if size is not None and size > 0:
        found = found[(max(current, 1) - 1) * size : max(current, 1) * size]
    echo: dict[str, Any] = {
        "filter_groups": [
            {"filters": [dict(spec, condition_type=spec.get("condition_type", "eq")) for _, spec in sorted(g.items())]}
            for _, g in sorted(groups.items())
        ]
    }
    if sorts:
        echo["sort_orders"] = [sorts[k] for k in sorted(sorts)]
    if size is not None:
        echo["page_size"] = size
    echo["current_page"] = current
    return {"items": found, "search_criteria": echo, "total_count": total}


@dataclass(slots=True)
class _Faults:
    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 500
    fail_next: int = 0
    fail_status: int = 503
    fail_retry_after: str | None = None
    drop_next: int = 0


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    store: str
    mode: str  # "", "async/" or "async/bulk/"
    route: str  # after V1/, still percent-encoded
    query: list[tuple[str, str]]
    raw: bytes
    authorization: str
    host: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(slots=True)
class _Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["_Request"], tuple[int, Any]]

# ACL resource named in the 401 answer, by the first segment of the route
_RESOURCES = {
    "products": "Magento_Catalog::products",
    "inventory": "Magento_InventoryApi::source_item",
    "customers": "Magento_Customer::manage",
    "company": "Magento_Company::index",
    "orders": "Magento_Sales::sales",
    "order": "Magento_Sales::sales",
    "bulk": "Magento_Logging::system_magento_logging_bulk_operations",
}


# customer group codes of a fresh install, and the id Magento uses for ALL GROUPS in tier prices
_GROUPS = {"ALL GROUPS": 32000, "NOT LOGGED IN": 0, "GENERAL": 1, "WHOLESALE": 2, "RETAILER": 3}


class _Server(TrackingHTTPServer):
    fake: FakeMagento

    def __init__(self, address: tuple[str, int], fake: FakeMagento) -> None:
        super().__init__(address, _RequestHandler, fake)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout: the answer of a write it no longer waits for) is part of the
        # tests, not a fault of the fake.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "seamline-fake-magento/0.1"
    timeout = 30
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        response = self.server.fake.handle(
            self.command, self.path, raw, self.headers.get("Authorization") or "", self.headers.get("Host") or ""
        )
        if response is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = b"" if response.body is None else json.dumps(response.body, separators=(",", ":")).encode()
        self.send_response(response.status)
        for name, value in {"Content-Type": "application/json; charset=utf-8", **response.headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class FakeMagento(ServedFake):
    """See the module docstring. ``port=0`` picks a free port; :attr:`url` says which."""

    thread_name = "fake-magento"

    def _make_server(self) -> TrackingHTTPServer:
        return _Server((self.host, self.port), self)

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        b2b: bool = True,
        auth: bool = True,
        users: dict[str, str] | None = None,
        token_ttl: float = 4 * 3600,
        integration_token: str | None = None,
        oauth1: tuple[str, str, str, str] | None = None,
        strict_unknown_fields: bool = True,
        check_responses: bool = True,
        bulk_auto_run: bool = True,
        document_comments_in_lists: bool = True,
        sources: tuple[str, ...] = ("default",),
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.b2b = b2b
        self.auth = auth
        self.users = dict(users if users is not None else {"admin": "admin123"})
        self.token_ttl = token_ttl
        self.integration_token = integration_token
        self.oauth1 = oauth1
        self.bulk_auto_run = bulk_auto_run
        self.document_comments_in_lists = document_comments_in_lists
        self.check_responses = check_responses
        self.sources = set(sources)
        self._validator = _Validator(strict_unknown_fields)
        self._seed = seed
        self._lock = threading.RLock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            ("POST", re.compile(r"^integration/admin/token$"), self._token, False),
            ("POST", re.compile(r"^products$"), self._product_save, False),
            ("GET", re.compile(r"^products$"), self._product_list, False),
            ("PUT", re.compile(r"^products/(?P<sku>[^/]+)$"), self._product_save, False),
            ("GET", re.compile(r"^products/(?P<sku>[^/]+)$"), self._product_get, False),
            ("POST", re.compile(r"^inventory/source-items$"), self._source_items_save, False),
            ("GET", re.compile(r"^inventory/source-items$"), self._source_items_list, False),
            ("POST", re.compile(r"^products/base-prices$"), self._base_prices, False),
            ("POST", re.compile(r"^products/tier-prices$"), self._tier_prices, False),
            ("POST", re.compile(r"^products/special-price$"), self._special_prices, False),
            ("POST", re.compile(r"^customers$"), self._customer_create, False),
            ("GET", re.compile(r"^customers/search$"), self._customer_list, False),
            ("PUT", re.compile(r"^customers/(?P<customerId>\d+)$"), self._customer_update, False),
            ("GET", re.compile(r"^customers/(?P<customerId>\d+)$"), self._customer_get, False),
            ("POST", re.compile(r"^company/?$"), self._company_save, True),
            ("GET", re.compile(r"^company/?$"), self._company_list, True),
            ("PUT", re.compile(r"^company/(?P<companyId>\d+)$"), self._company_save, True),
            ("GET", re.compile(r"^company/(?P<companyId>\d+)$"), self._company_get, True),
            ("GET", re.compile(r"^orders$"), self._order_list, False),
            ("GET", re.compile(r"^orders/(?P<id>\d+)$"), self._order_get, False),
            ("POST", re.compile(r"^orders/(?P<id>\d+)/comments$"), self._order_comment, False),
            ("POST", re.compile(r"^order/(?P<orderId>\d+)/ship$"), self._order_ship, False),
            ("POST", re.compile(r"^order/(?P<orderId>\d+)/invoice$"), self._order_invoice, False),
            ("POST", re.compile(r"^order/(?P<orderId>\d+)/refund$"), self._order_refund, False),
            ("GET", re.compile(r"^orders/(?P<id>\d+)/comments$"), self._order_comments, False),
            ("GET", re.compile(r"^shipments$"), self._shipment_list, False),
            ("GET", re.compile(r"^invoices$"), self._invoice_list, False),
            ("GET", re.compile(r"^creditmemos$"), self._creditmemo_list, False),
            ("GET", re.compile(r"^shipment/(?P<id>\d+)/comments$"), self._shipment_comments, False),
            ("GET", re.compile(r"^invoices/(?P<id>\d+)/comments$"), self._invoice_comments, False),
            ("GET", re.compile(r"^creditmemo/(?P<id>\d+)/comments$"), self._creditmemo_comments, False),
            ("GET", re.compile(r"^bulk/(?P<bulkUuid>[^/]+)/status$"), self._bulk_status, False),
        ]
        self._clear()

    # -- state ----------------------------------------------------------------------------------
    def _clear(self) -> None:
        self.products: dict[str, dict[str, Any]] = {}
        self.source_items: dict[tuple[str, str], dict[str, Any]] = {}
        self.special_prices: list[dict[str, Any]] = []
        self.customers: dict[int, dict[str, Any]] = {}
        self.companies: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}
        self.shipments: dict[int, dict[str, Any]] = {}
        self.invoices: dict[int, dict[str, Any]] = {}
        self.creditmemos: dict[int, dict[str, Any]] = {}
        self.bulks: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, float] = {}
        self._nonces: set[str] = set()
        self._log: list[dict[str, Any]] = []
        self._requests: list[tuple[str, str, int]] = []
        self._ids: dict[str, int] = {}
        self._faults = _Faults()
        self._random = random.Random(self._seed)

    def reset(self) -> None:
        """Forget every entity, token, bulk, log entry and fault."""
        with self._lock:
            self._clear()

    def _next_id(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def issue_token(self) -> str:
        """A fresh admin token, as POST /V1/integration/admin/token would give."""
        with self._lock:
            token = secrets.token_hex(16)
            self._tokens[token] = time.monotonic() + self.token_ttl
            return token

    def seed_product(self, product: dict[str, Any]) -> dict[str, Any]:
        """Store a product as if saved (not logged); answers it with its id and dates."""
        with self._lock:
            return copy.deepcopy(self._upsert_product(str(product["sku"]), copy.deepcopy(product)))

    def seed_customer(self, customer: dict[str, Any]) -> dict[str, Any]:
        """Store a customer as if created (not logged); answers it with its id and dates. Raises ValueError
        when the customer has no email, first or last name, or its email is taken on its website."""
        with self._lock:
            try:
                return copy.deepcopy(self._store_customer(copy.deepcopy(customer)))
            except _Answer as refused:
                raise ValueError(_said(refused.body)) from None

    def seed_order(self, order: dict[str, Any]) -> dict[str, Any]:
        """Store an order (not logged); missing ids, increment id, state and dates are filled in."""
        with self._lock:
            entity_id = int(order.get("entity_id") or self._next_id("order"))
            self._ids["order"] = max(self._ids.get("order", 0), entity_id)
            now = _now()
            stored: dict[str, Any] = {
                "entity_id": entity_id,
                "increment_id": f"{entity_id:09d}",
                "state": "new",
                "status": "pending",
                "created_at": now,
                "updated_at": now,
                "customer_is_guest": 1,
                "base_grand_total": 0,
                "grand_total": 0,
                "total_paid": 0,
                "status_histories": [],
                **copy.deepcopy(order),
            }
            for item in stored.setdefault("items", []):
                item.setdefault("item_id", self._next_id("order_item"))
                item.setdefault("order_id", entity_id)
                item.setdefault("qty_ordered", 1)
                item.setdefault("qty_invoiced", 0)
                item.setdefault("qty_shipped", 0)
                item.setdefault("qty_refunded", 0)
            self.orders[entity_id] = stored
            return copy.deepcopy(stored)

    def seed(self, data: Mapping[str, Any]) -> dict[str, int]:
        """Load seed data, as ``seamline fake magento --seed FILE`` does: ``{"sources": [code, ...],
        "products": [...], "customers": [...], "orders": [...]}`` (each key optional). Products and
        customers are held to the same schema and runtime minimum as a request that creates them; nothing
        is logged as a write. Answers how many of each were loaded; a ValueError names the first bad entry
        (``products[2]: product.price: '9' is not of type 'number'``); the entries before it stay loaded."""
        if not isinstance(data, Mapping):
            raise ValueError(f"seed data is an object with {', '.join(SEED_KEYS)}; got {type(data).__name__}")
        for key in data:
            if key not in SEED_KEYS:
                near = closest(str(key), SEED_KEYS)
                hint = f" — did you mean '{near}'?" if near else ""
                raise ValueError(f"unknown key {key!r}{hint} (a seed file has: {', '.join(SEED_KEYS)})")
        lists = {key: _seed_list(data, key) for key in SEED_KEYS}
        with self._lock:
            for index, source in enumerate(lists["sources"]):
                self.sources.add(_source_code(source, f"sources[{index}]"))
            for index, product in enumerate(lists["products"]):
                where = f"products[{index}]"
                _seed_fits(where, "PUT /V1/products/{sku}", {"product": product})
                _seeded(where, functools.partial(self._upsert_product, str(product["sku"]), copy.deepcopy(product)))
            for index, customer in enumerate(lists["customers"]):
                where = f"customers[{index}]"
                _seed_fits(where, "POST /V1/customers", {"customer": customer})
                _seeded(where, functools.partial(self._store_customer, copy.deepcopy(customer)))
            for index, order in enumerate(lists["orders"]):
                if not isinstance(order, dict):
                    raise ValueError(f"orders[{index}]: an order is an object, not {type(order).__name__}")
                self.seed_order(order)
        return {key: len(lists[key]) for key in SEED_KEYS}

    def writes(self) -> list[dict[str, Any]]:
        """The write log, oldest first: every applied write (method, path, body, status); bulk operations
        appear when they run, with their ``bulk_uuid``."""
        with self._lock:
            return copy.deepcopy(self._log)

    def applied_count(self, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for entry in self._log if path_contains in entry["path"])

    def effects(self, order_id: int) -> dict[str, int]:
        """What one order has: its comments (status history entries), shipments, invoices and credit memos.

        How a test proves a once-only write took effect exactly once (a resend after a crash found the
        first one instead of making a second)."""
        with self._lock:
            order = self.orders.get(int(order_id))
            documents = {"shipments": self.shipments, "invoices": self.invoices, "creditmemos": self.creditmemos}
            counts = {"comments": len(order["status_histories"]) if order is not None else 0}
            for kind, stored in documents.items():
                counts[kind] = sum(1 for document in stored.values() if document["order_id"] == int(order_id))
            return counts

    def requests(self) -> list[dict[str, Any]]:
        """Every request the fake received, oldest first: method, path, query (decoded pairs) and the
        status it answered (0 when the connection was dropped unanswered)."""
        with self._lock:
            listed = list(self._requests)
        out = []
        for method, target, status in listed:
            path, _, query = target.partition("?")
            out.append({"method": method, "path": path, "query": parse_qsl(query), "status": status})
        return out

    def request_count(self, path_contains: str = "", method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, t, _ in self._requests if path_contains in t.partition("?")[0] and method in (None, m))

    def expire_tokens(self) -> int:
        """Make every admin token issued so far expire now (as after its 4 h); answers how many."""
        with self._lock:
            now = time.monotonic()
            for token in self._tokens:
                self._tokens[token] = min(self._tokens[token], now)
            return len(self._tokens)

    # -- faults ---------------------------------------------------------------------------------
    def configure(self, **knobs: Any) -> None:
        """Set fault knobs: latency (s), error_rate (0..1), error_status, drop_next (count),
        fail_next ({count, status, retry_after} or a count)."""
        with self._lock:
            faults = self._faults
            for name, value in knobs.items():
                if name == "fail_next":
                    spec = value if isinstance(value, dict) else {"count": value}
                    faults.fail_next = int(spec.get("count", 1))
                    faults.fail_status = int(spec.get("status", 503))
                    after = spec.get("retry_after")
                    faults.fail_retry_after = None if after is None else str(after)
                elif name in ("latency", "error_rate"):
                    setattr(faults, name, float(value))
                elif name in ("error_status", "drop_next"):
                    setattr(faults, name, int(value))
                else:
                    raise ValueError(
                        f"unknown fault knob {name!r}; known: drop_next, error_rate, error_status, fail_next, latency"
                    )

    def faults(self) -> dict[str, Any]:
        """The fault knobs as they are now (as ``configure`` takes them)."""
        with self._lock:
            f = self._faults
            fail = {"count": f.fail_next, "status": f.fail_status, "retry_after": f.fail_retry_after}
            knobs = {"latency": f.latency, "error_rate": f.error_rate, "error_status": f.error_status}
            return {**knobs, "fail_next": fail, "drop_next": f.drop_next}

    def fail_next(self, count: int, status: int = 503, *, retry_after: str | None = None) -> None:
        self.configure(fail_next={"count": count, "status": status, "retry_after": retry_after})

    def drop_next(self, count: int = 1) -> None:
        self.configure(drop_next=count)

    def _fault_body(self, status: int) -> dict[str, Any]:
        if status == 429:
            return {"message": "Too Many Requests", "trace": None}
        if status >= 500:
            return {
                "message": "Internal Error. Details are available in Magento log file. "
                f"Report ID: webapi-{self._random.getrandbits(48):012x}"
            }
        return {"message": f"Injected error {status}"}

    # -- the request path -----------------------------------------------------------------------
    def handle(self, method: str, target: str, raw: bytes, authorization: str = "", host: str = "") -> _Response | None:
        """Answer one request; None means: drop the connection without answering."""
        if target.startswith(ADMIN):
            return self._admin(method, target, raw)
        response = self._answer(method, target, raw, authorization, host)
        with self._lock:
            self._requests.append((method, target, 0 if response is None else response.status))
        return response

    def _admin(self, method: str, target: str, raw: bytes) -> _Response:
        """``/__fake/...``: the admin API for other processes (never faulted, never authenticated, not counted)."""
        parts = urlsplit(target)
        what = (method, parts.path[len(ADMIN) :].strip("/"))
        try:
            body = json.loads(raw) if raw.strip() else {}
            if what == ("GET", "health"):
                return _Response(200, {"ok": True})
            if what == ("GET", "log"):
                return _Response(200, self.writes())
            if what == ("GET", "requests"):
                return _Response(200, self.requests())
            if what[1] == "faults" and method in ("GET", "POST"):
                if method == "POST":
                    self.configure(**body)
                return _Response(200, self.faults())
            if what == ("POST", "seed"):
                return _Response(200, self.seed(body))
            if what == ("POST", "reset"):
                self.reset()
                return _Response(200, {"ok": True})
        except (ValueError, TypeError) as exc:
            return _Response(400, {"message": str(exc)})
        known = "GET log, GET requests, GET health, GET|POST faults, POST seed, POST reset"
        return _Response(404, {"message": f"no admin endpoint {method} {parts.path} (there are: {known})"})

    def _answer(self, method: str, target: str, raw: bytes, authorization: str, host: str) -> _Response | None:
        with self._lock:
            faults = self._faults
            if faults.drop_next > 0:
                faults.drop_next -= 1
                return None
            latency = faults.latency
        if latency > 0:
            time.sleep(latency)
        with self._lock:
            if faults.fail_next > 0:
                faults.fail_next -= 1
                headers = {"Retry-After": faults.fail_retry_after} if faults.fail_retry_after is not None else {}
                return _Response(faults.fail_status, self._fault_body(faults.fail_status), headers)
            if faults.error_rate > 0 and self._random.random() < faults.error_rate:
                return _Response(faults.error_status, self._fault_body(faults.error_status))
            try:
                return self._dispatch(method, target, raw, authorization, host or f"{self.host}:{self.port}")
            except _Answer as answer:
                return _Response(answer.status, answer.body, answer.headers)

    def _dispatch(self, method: str, target: str, raw: bytes, authorization: str, host: str) -> _Response:
        parts = urlsplit(target)
        match = _PATH.match(parts.path)
        if match is None:
            raise _Answer(404, NO_ROUTE)
        request = _Request(
            method=method,
            path=parts.path,
            store=match.group("store") or "default",
            mode=match.group("mode") or "",
            route=match.group("route"),
            query=parse_qsl(parts.query, keep_blank_values=True),
            raw=raw,
            authorization=authorization,
            host=host,
        )
        if raw.strip():
            try:
                request.body = json.loads(raw)
            except ValueError as exc:
                raise _error(400, "Decoding error: %1", [str(exc)]) from exc
        if request.mode:
            return self._async(request)
        for verb, pattern, handler, b2b_only in self._routes:
            found = pattern.match(request.route)
            if found is None or verb != method or (b2b_only and not self.b2b):
                continue
            request.params = {k: unquote(v) for k, v in found.groupdict().items()}
            if handler != self._token:
                self._authorize(request)
            entry = self._route_entry(method, pattern)
            sent = copy.deepcopy(request.body)
            request.body = self._validator.body(
                request.body, None if method == "GET" else self._body_route(method, pattern)
            )
            status, body = handler(request)
            if self.check_responses and entry is not None and entry["response"] is not None:
                problems = response_problems(body, entry["response"])
                if problems:
                    raise _error(500, "The fake's answer breaks the schema: %1", ["; ".join(problems)])
            if method != "GET":
                self._log.append({"method": method, "path": request.path, "body": sent, "status": status})
            return _Response(status, body)
        raise _Answer(404, NO_ROUTE)

    @staticmethod
    @functools.cache
    def _route_entry(method: str, pattern: re.Pattern[str]) -> dict[str, Any] | None:
        """The subset's ``routes`` entry (body and 200 answer schemas) for one of our routes."""
        routes: dict[str, Any] = _schema()["routes"]
        for key, entry in routes.items():
            verb, _, route = key.partition(" ")
            candidate = re.sub(r"\{[^}]+\}", "1", route[len("/V1/") :])
            if verb == method and pattern.match(candidate):
                found: dict[str, Any] = entry
                return found
        return None

    @staticmethod
    @functools.cache
    def _body_route(method: str, pattern: re.Pattern[str]) -> str | None:
        """The request schema's route for one of our write routes (None: it takes no body)."""
        for key in request_routes():
            verb, _, route = key.partition(" ")
            candidate = re.sub(r"\{[^}]+\}", "1", route[len("/V1/") :])
            if verb == method and route.startswith("/V1/") and pattern.match(candidate):
                return key
        return None

    def _authorize(self, request: _Request) -> None:
        if not self.auth:
            return
        scheme, _, token = request.authorization.partition(" ")
        if scheme.lower() == "bearer" and token:
            if self.integration_token is not None and secrets.compare_digest(token, self.integration_token):
                return
            expires = self._tokens.get(token)
            if expires is not None:
                if time.monotonic() < expires:
                    return
                del self._tokens[token]  # an expired token makes the caller a guest
        if scheme.lower() == "oauth" and self.oauth1 is not None and self._oauth1_valid(request, token):
            return
        resource = _RESOURCES.get(request.route.split("/", 1)[0], "Magento_Backend::admin")
        raise _error(401, "The consumer isn't authorized to access %resources.", {"resources": resource})

    def _oauth1_valid(self, request: _Request, header: str) -> bool:
        """An integration's RFC 5849 signature (HMAC-SHA256, or SHA1), with its query parameters, a fresh
        timestamp (600 s) and an unused nonce."""
        assert self.oauth1 is not None
        consumer_key, consumer_secret, access_token, token_secret = self.oauth1
        given = {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header)}
        digests = {"HMAC-SHA256": hashlib.sha256, "HMAC-SHA1": hashlib.sha1}
        method = given.get("oauth_signature_method", "")
        if (
            given.get("oauth_consumer_key") != consumer_key
            or given.get("oauth_token") != access_token
            or method not in digests
            or not given.get("oauth_timestamp", "").isdigit()
            or abs(time.time() - int(given["oauth_timestamp"])) > 600
            or not given.get("oauth_nonce")
            or given["oauth_nonce"] in self._nonces
        ):
            return False
        params = [
            *request.query,
            *((k, v) for k, v in given.items() if k.startswith("oauth_") and k != "oauth_signature"),
        ]
        normalized = "&".join(f"{k}={v}" for k, v in sorted((_oauth_enc(k), _oauth_enc(v)) for k, v in params))
        host = request.host.lower()
        if host.endswith(":80"):
            host = host[:-3]
        base = "&".join((request.method.upper(), _oauth_enc(f"http://{host}{request.path}"), _oauth_enc(normalized)))
        key = f"{_oauth_enc(consumer_secret)}&{_oauth_enc(token_secret)}"
        expected = base64.b64encode(hmac.new(key.encode(), base.encode(), digests[method]).digest()).decode()
        if not secrets.compare_digest(expected, given.get("oauth_signature", "")):
            return False
        self._nonces.add(given["oauth_nonce"])
        return True

    # -- auth -----------------------------------------------------------------------------------
    def _token(self, request: _Request) -> tuple[int, Any]:
        body = request.body
        if self.users.get(str(body["username"])) != str(body["password"]):
            raise _Answer(401, BAD_LOGIN)
        return 200, self.issue_token()

    # -- products -------------------------------------------------------------------------------
    def _upsert_product(self, sku: str, data: dict[str, Any]) -> dict[str, Any]:
        existing = self.products.get(sku)
        now = _now()
        if existing is None:
            missing = [name for name in ("name", "attribute_set_id", "price") if data.get(name) in (None, "")]
            if data.get("type_id") not in (None, "simple", "virtual") and "price" in missing:
                missing.remove("price")
            if missing:
                raise _error(400, 'The value of attribute "%1" must be set', [missing[0]])
            product: dict[str, Any] = {
                "id": self._next_id("product"),
                "sku": sku,
                "type_id": "simple",
                "status": 1,
                "visibility": 4,
                "created_at": now,
                "extension_attributes": {"website_ids": [1]},
                "custom_attributes": [],
            }
        else:
            product = existing
        for name, value in data.items():
            if name == "custom_attributes" and isinstance(value, list):
                by_code = {a["attribute_code"]: a for a in product.get("custom_attributes", [])}
                by_code.update({a["attribute_code"]: a for a in value if isinstance(a, dict)})
                product["custom_attributes"] = list(by_code.values())
            elif name == "extension_attributes" and isinstance(value, dict):
                product.setdefault("extension_attributes", {}).update(value)
            elif name not in ("id", "created_at", "updated_at"):
                product[name] = value
        product["sku"] = sku
        for name in ("price", "weight"):
            if product.get(name) is not None:
                product[name] = float(product[name]) if "." in str(product[name]) else int(product[name])
        for name in ("attribute_set_id", "status", "visibility"):
            if product.get(name) is not None:
                product[name] = int(product[name])
        product["updated_at"] = now
        self.products[sku] = product
        return product

    def _product_save(self, request: _Request) -> tuple[int, Any]:
        data = dict(request.body["product"])
        sku = request.params.get("sku") or str(data.get("sku") or "")
        if not sku:
            raise _error(400, REQUIRED, {"fieldName": "sku"})
        if request.method == "POST" and "sku" not in data:
            raise _error(400, REQUIRED, {"fieldName": "sku"})
        return 200, copy.deepcopy(self._upsert_product(sku, data))

    def _product_get(self, request: _Request) -> tuple[int, Any]:
        product = self.products.get(request.params["sku"])
        if product is None:
            raise _Answer(404, NO_PRODUCT)
        return 200, copy.deepcopy(product)

    def _product_list(self, request: _Request) -> tuple[int, Any]:
        return 200, _search(list(self.products.values()), request.query)

    # -- inventory and prices -------------------------------------------------------------------
    def _source_items_save(self, request: _Request) -> tuple[int, Any]:
        errors: list[dict[str, Any]] = []
        items = request.body["sourceItems"]
        for item in items:
            for name in ("sku", "source_code"):
                if item.get(name) in (None, ""):
                    errors.append({"message": '"%field" can not be empty.', "parameters": {"field": name}})
            if item.get("source_code") not in (None, "") and item["source_code"] not in self.sources:
                errors.append(
                    {"message": 'Source with code "%code" does not exist.', "parameters": {"code": item["source_code"]}}
                )
        if errors:
            raise _Answer(400, {"message": "Validation Failed", "errors": errors})
        for item in items:
            stored = {"quantity": 0, "status": 0, **item}
            self.source_items[(str(item["sku"]), str(item["source_code"]))] = stored
        return 200, []

    def _source_items_list(self, request: _Request) -> tuple[int, Any]:
        return 200, _search(list(self.source_items.values()), request.query)

    def _price_failures(self, prices: list[dict[str, Any]], required: tuple[str, ...]) -> list[dict[str, Any]]:
        failures: list[dict[str, Any]] = []
        for price in prices:
            sku = price.get("sku")
            for name in required:
                if price.get(name) is None:
                    failures.append({"message": REQUIRED, "parameters": [name]})
            if sku is not None and str(sku) not in self.products:
                failures.append({"message": "Invalid attribute %fieldName = %fieldValue.", "parameters": ["SKU", sku]})
            value = _number(price.get("price"))
            if value is not None and value < 0:
                failures.append(
                    {"message": "Invalid attribute %fieldName = %fieldValue.", "parameters": ["Price", price["price"]]}
                )
        return failures

    def _base_prices(self, request: _Request) -> tuple[int, Any]:
        prices: list[dict[str, Any]] = request.body["prices"]
        failures = self._price_failures(prices, ("price", "store_id", "sku"))
        if failures:
            return 200, failures
        for price in prices:
            self._upsert_product(str(price["sku"]), {"price": price["price"]})
        return 200, []

    def _tier_prices(self, request: _Request) -> tuple[int, Any]:
        prices: list[dict[str, Any]] = request.body["prices"]
        required = ("price", "price_type", "website_id", "sku", "customer_group", "quantity")
        failures = self._price_failures(prices, required)
        for price in prices:
            if str(price.get("customer_group", "ALL GROUPS")).upper() not in _GROUPS:
                failures.append(
                    {
                        "message": "No such entity with Customer Group = %value.",
                        "parameters": [str(price["customer_group"])],
                    }
                )
            if price.get("price_type") not in (None, "fixed", "discount"):
                failures.append(
                    {
                        "message": "Invalid attribute %fieldName = %fieldValue.",
                        "parameters": ["Price Type", price["price_type"]],
                    }
                )
        if failures:
            return 200, failures
        for price in prices:
            product = self.products[str(price["sku"])]
            group_id = _GROUPS[str(price["customer_group"]).upper()]
            tiers = [
                t
                for t in product.get("tier_prices", [])
                if (t["customer_group_id"], t["qty"]) != (group_id, price["quantity"])
            ]
            tier: dict[str, Any] = {
                "customer_group_id": group_id,
                "qty": price["quantity"],
                "value": price["price"],
                "extension_attributes": {"website_id": price["website_id"]},
            }
            if price["price_type"] == "discount":
                tier["extension_attributes"]["percentage_value"] = price["price"]
            tiers.append(tier)
            product["tier_prices"] = tiers
        return 200, []

    def _special_prices(self, request: _Request) -> tuple[int, Any]:
        prices: list[dict[str, Any]] = request.body["prices"]
        failures = self._price_failures(prices, ("price", "store_id", "sku", "price_from", "price_to"))
        if failures:
            return 200, failures
        for price in prices:
            self.special_prices = [
                p
                for p in self.special_prices
                if (p["sku"], p["store_id"], p["price_from"]) != (price["sku"], price["store_id"], price["price_from"])
            ]
            self.special_prices.append(dict(price))
        return 200, []

    # -- customers ------------------------------------------------------------------------------
    def _customer_fields(self, customer: dict[str, Any]) -> None:
        for name in ("email", "firstname", "lastname"):
            if customer.get(name) in (None, ""):
                raise _error(400, REQUIRED, {"fieldName": name})

    def _customer_email_taken(self, email: str, website_id: Any, other_than: int | None) -> bool:
        return any(
            c["email"].lower() == email.lower() and str(c.get("website_id")) == str(website_id) and cid != other_than
            for cid, c in self.customers.items()
        )

    def _customer_create(self, request: _Request) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._store_customer(dict(request.body["customer"])))

    def _store_customer(self, data: dict[str, Any]) -> dict[str, Any]:
        """A new customer as POST /V1/customers saves it: ids, dates and the defaults of a fresh store."""
        self._customer_fields(data)
        website_id = data.get("website_id", 1)
        if self._customer_email_taken(str(data["email"]), website_id, None):
            raise _error(400, "A customer with the same email address already exists in an associated website.")
        now = _now()
        customer = {"group_id": 1, "store_id": 1, "website_id": 1, "addresses": [], **data}
        customer.update(id=self._next_id("customer"), created_at=now, updated_at=now)
        for address in customer["addresses"]:
            address.setdefault("id", self._next_id("address"))
            address["customer_id"] = customer["id"]
        self.customers[customer["id"]] = customer
        return customer

    def _customer_get(self, request: _Request) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._customer(request.params["customerId"]))

    def _customer(self, raw_id: str) -> dict[str, Any]:
        customer = self.customers.get(int(raw_id))
        if customer is None:
            raise _error(
                404, "No such entity with %fieldName = %fieldValue", {"fieldName": "customerId", "fieldValue": raw_id}
            )
        return customer

    def _customer_update(self, request: _Request) -> tuple[int, Any]:
        customer = self._customer(request.params["customerId"])
        data = dict(request.body["customer"])
        merged = {**customer, **data, "id": customer["id"], "created_at": customer["created_at"]}
        self._customer_fields(merged)
        if self._customer_email_taken(str(merged["email"]), merged.get("website_id"), customer["id"]):
            raise _error(400, "A customer with the same email address already exists in an associated website.")
        for address in merged.get("addresses") or []:
            address.setdefault("id", self._next_id("address"))
            address["customer_id"] = customer["id"]
        merged["updated_at"] = _now()
        self.customers[customer["id"]] = merged
        return 200, copy.deepcopy(merged)

    def _customer_list(self, request: _Request) -> tuple[int, Any]:
        return 200, _search(list(self.customers.values()), request.query)

    # -- companies (Adobe Commerce B2B) ---------------------------------------------------------
    def _company_save(self, request: _Request) -> tuple[int, Any]:
        data = dict(request.body["company"])
        if "companyId" in request.params:
            current = self.companies.get(int(request.params["companyId"]))
            if current is None:
                raise _error(
                    404,
                    "No such entity with %fieldName = %fieldValue",
                    {"fieldName": "id", "fieldValue": request.params["companyId"]},
                )
            company = {**current, **data, "id": current["id"]}
        elif data.get("id") is not None and int(data["id"]) in self.companies:
            company = {**self.companies[int(data["id"])], **data}
        else:
            company = {
                "status": 1,
                "customer_group_id": 1,
                "sales_representative_id": 1,
                "reject_reason": None,
                "rejected_at": None,
                **data,
            }
            company["id"] = self._next_id("company")
        for name in ("company_name", "company_email", "super_user_id"):
            if company.get(name) in (None, ""):
                raise _error(400, REQUIRED, {"fieldName": name})
        self.companies[int(company["id"])] = company
        return 200, copy.deepcopy(company)

    def _company_get(self, request: _Request) -> tuple[int, Any]:
        company = self.companies.get(int(request.params["companyId"]))
        if company is None:
            raise _error(
                404,
                "No such entity with %fieldName = %fieldValue",
                {"fieldName": "id", "fieldValue": request.params["companyId"]},
            )
        return 200, copy.deepcopy(company)

    def _company_list(self, request: _Request) -> tuple[int, Any]:
        return 200, _search(list(self.companies.values()), request.query)

    # -- orders ---------------------------------------------------------------------------------
    def _order(self, raw_id: str) -> dict[str, Any]:
        order = self.orders.get(int(raw_id))
        if order is None:
            raise _Answer(404, NO_ENTITY)
        return order

    def _order_get(self, request: _Request) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._order(request.params["id"]))

    def _order_list(self, request: _Request) -> tuple[int, Any]:
        return 200, _search(list(self.orders.values()), request.query)

    def _order_comment(self, request: _Request) -> tuple[int, Any]:
        order = self._order(request.params["id"])
        history = dict(request.body["statusHistory"])
        if history.get("comment") is None and history.get("status") is None:
            raise _error(400, REQUIRED, {"fieldName": "comment"})
        history.update(
            entity_id=self._next_id("history"), parent_id=order["entity_id"], created_at=_now(), entity_name="order"
        )
        history.setdefault("status", order["status"])
        order["status_histories"].insert(0, history)
        order["status"] = history["status"]
        order["updated_at"] = _now()
        return 200, True

    def _order_ship(self, request: _Request) -> tuple[int, Any]:
        order = self._order(request.params["orderId"])
        lines = self._document_lines(order, request.body, "qty_shipped", "qty_ordered")
        if not lines:
            raise _error(
                400, "Shipment Document Validation Error(s):\nThe order does not allow a shipment to be created."
            )
        for item, qty in lines:
            item["qty_shipped"] = (_number(item["qty_shipped"]) or 0) + qty
        self._advance(order)
        body = request.body or {}
        document = self._document("shipment", order, lines, body)
        document["tracks"] = [self._track(track, document) for track in body.get("tracks") or []]
        document["packages"] = []
        self.shipments[document["entity_id"]] = document
        return 200, document["entity_id"]

    def _track(self, given: dict[str, Any], shipment: dict[str, Any]) -> dict[str, Any]:
        """A track as Magento stores it (sales-data-shipment-track-interface): unset numbers are null."""
        now = _now()
        return {
            "entity_id": self._next_id("track"),
            "order_id": shipment["order_id"],
            "parent_id": shipment["entity_id"],
            "track_number": given.get("track_number"),
            "title": given.get("title"),
            "carrier_code": given.get("carrier_code"),
            "weight": None,
            "qty": None,
            "description": None,
            "created_at": now,
            "updated_at": now,
        }

    def _order_invoice(self, request: _Request) -> tuple[int, Any]:
        order = self._order(request.params["orderId"])
        lines = self._document_lines(order, request.body, "qty_invoiced", "qty_ordered")
        if not lines:
            raise _error(400, "The order does not allow an invoice to be created.")
        for item, qty in lines:
            item["qty_invoiced"] = (_number(item["qty_invoiced"]) or 0) + qty
        if all(_number(i["qty_invoiced"]) == _number(i["qty_ordered"]) for i in order["items"]):
            order["total_paid"] = order["grand_total"]
        self._advance(order)
        document = self._document("invoice", order, lines, request.body)
        self.invoices[document["entity_id"]] = document
        return 200, document["entity_id"]

    def _order_refund(self, request: _Request) -> tuple[int, Any]:
        order = self._order(request.params["orderId"])
        lines = self._document_lines(order, request.body, "qty_refunded", "qty_invoiced")
        if not lines:
            raise _error(400, "The most money available to refund is %1.", ["0"])
        for item, qty in lines:
            item["qty_refunded"] = (_number(item.get("qty_refunded")) or 0) + qty
        if all(_number(i.get("qty_refunded")) == _number(i["qty_ordered"]) for i in order["items"]):
            order["state"] = order["status"] = "closed"
        order["updated_at"] = _now()
        document = self._document("creditmemo", order, lines, request.body)
        del document["total_qty"]  # a credit memo has none (sales-data-creditmemo-interface)
        for line, (item, _qty) in zip(document["items"], lines, strict=True):
            line.update(entity_id=self._next_id("creditmemo_item"), base_price=item.get("base_price"), base_cost=None)
        self.creditmemos[document["entity_id"]] = document
        return 200, document["entity_id"]

    @staticmethod
    def _document_lines(order: dict[str, Any], body: Any, done: str, limit: str) -> list[tuple[dict[str, Any], float]]:
        """(order item, qty) a shipment/invoice/credit memo takes: the body's items, else all that is left."""
        left = {int(i["item_id"]): (_number(i[limit]) or 0) - (_number(i.get(done)) or 0) for i in order["items"]}
        wanted: dict[int, float] = dict(left)
        if isinstance(body, dict) and body.get("items"):
            wanted = {}
            for line in body["items"]:
                item_id = int(line.get("order_item_id") or 0)
                if item_id not in left:
                    raise _error(400, "The order item with ID %1 does not exist.", [str(item_id)])
                qty = _number(line.get("qty")) or 0
                if qty > left[item_id]:
                    raise _error(400, "The quantity to take for item %1 is more than is left.", [str(item_id)])
                wanted[item_id] = qty
        by_id = {int(i["item_id"]): i for i in order["items"]}
        return [(by_id[item_id], qty) for item_id, qty in wanted.items() if qty > 0]

    def _document(
        self, kind: str, order: dict[str, Any], lines: list[tuple[dict[str, Any], float]], body: Any
    ) -> dict[str, Any]:
        """A shipment, invoice or credit memo, with the body's ``comment`` stored on it as Magento does
        (ShipOrder, InvoiceOrder and RefundOrder keep it whatever ``appendComment`` says; it only decides
        whether the comment goes into the customer's e-mail, so it is ``is_customer_notified`` with ``notify``)."""
        entity_id = self._next_id(kind)
        now = _now()
        body = body if isinstance(body, dict) else {}
        comments: list[dict[str, Any]] = []
        given = body.get("comment")
        if isinstance(given, dict) and given.get("comment") not in (None, ""):
            notified = bool(body.get("appendComment")) and bool(body.get("notify"))
            comments.append(
                {
                    "entity_id": self._next_id(f"{kind}_comment"),
                    "parent_id": entity_id,
                    "comment": given["comment"],
                    "is_customer_notified": int(notified),
                    "is_visible_on_front": int(given.get("is_visible_on_front") or 0),
                    "created_at": now,
                }
            )
        return {
            "entity_id": entity_id,
            "increment_id": f"{entity_id:09d}",
            "order_id": order["entity_id"],
            "created_at": now,
            "updated_at": now,
            "total_qty": sum(qty for _, qty in lines),
            "items": [{"order_item_id": item["item_id"], "sku": item.get("sku"), "qty": qty} for item, qty in lines],
            "comments": comments,
        }

    def _listed(self, documents: dict[int, dict[str, Any]], request: _Request, *, bare: bool = False) -> dict[str, Any]:
        """A document search; with ``document_comments_in_lists=False`` invoices and credit memos (``bare``)
        come without their comments, which their schemas allow (a shipment's requires them), as some
        Magento builds list them; then only ``GET /V1/<kind>/{id}/comments`` has them."""
        found = _search(list(documents.values()), request.query)
        if bare and not self.document_comments_in_lists:
            for item in found["items"]:
                item.pop("comments", None)
        return found

    def _shipment_list(self, request: _Request) -> tuple[int, Any]:
        return 200, self._listed(self.shipments, request)

    def _invoice_list(self, request: _Request) -> tuple[int, Any]:
        return 200, self._listed(self.invoices, request, bare=True)

    def _creditmemo_list(self, request: _Request) -> tuple[int, Any]:
        return 200, self._listed(self.creditmemos, request, bare=True)

    @staticmethod
    def _comment_list(documents: dict[int, dict[str, Any]], raw_id: str) -> tuple[int, Any]:
        """``GET /V1/<kind>/{id}/comments``: a comment search result (an unknown id lists nothing, as Magento's
        comment collection filtered on a missing parent does)."""
        document = documents.get(int(raw_id))
        items = copy.deepcopy(document["comments"]) if document is not None else []
        return 200, {"items": items, "search_criteria": {"filter_groups": []}, "total_count": len(items)}

    def _shipment_comments(self, request: _Request) -> tuple[int, Any]:
        return self._comment_list(self.shipments, request.params["id"])

    def _invoice_comments(self, request: _Request) -> tuple[int, Any]:
        return self._comment_list(self.invoices, request.params["id"])

    def _creditmemo_comments(self, request: _Request) -> tuple[int, Any]:
        return self._comment_list(self.creditmemos, request.params["id"])

    def _order_comments(self, request: _Request) -> tuple[int, Any]:
        """``GET /V1/orders/{id}/comments``: the order's status history, newest first, as a search result."""
        histories = copy.deepcopy(self._order(request.params["id"])["status_histories"])
        return 200, {"items": histories, "search_criteria": {"filter_groups": []}, "total_count": len(histories)}

    @staticmethod
    def _advance(order: dict[str, Any]) -> None:
        shipped = all(_number(i["qty_shipped"]) == _number(i["qty_ordered"]) for i in order["items"])
        invoiced = all(_number(i["qty_invoiced"]) == _number(i["qty_ordered"]) for i in order["items"])
        order["state"] = order["status"] = "complete" if shipped and invoiced else "processing"
        order["updated_at"] = _now()

    # -- bulk and async -------------------------------------------------------------------------
    def _async(self, request: _Request) -> _Response:
        route = request.route.rstrip("/")
        if request.method == "GET" or (request.method, route) != ("POST", "products"):
            raise _Answer(404, NO_ROUTE)
        self._authorize(request)
        bodies = request.body if request.mode == "async/bulk/" else [request.body]
        if not isinstance(bodies, list):
            raise _error(400, "Decoding error: %1", ["a bulk request body is a JSON array of request bodies"])
        bodies = self._validator.body(bodies, "POST /async/bulk/V1/products")
        bulk_uuid = str(uuid.UUID(int=self._random.getrandbits(128), version=4))
        topic = "async.V1.products.POST"
        operations = []
        items = []
        for index, body in enumerate(bodies):
            message = json.dumps(body, separators=(",", ":"))
            items.append({"id": index, "data_hash": hashlib.sha256(message.encode()).hexdigest(), "status": "accepted"})
            operations.append(
                {"id": index, "status": OPEN, "result_message": None, "error_code": None, "body": copy.deepcopy(body)}
            )
        self.bulks[bulk_uuid] = {
            "bulk_id": bulk_uuid,
            "description": f"Topic {topic}",
            "start_time": _now(),
            "user_type": 2,
            "user_id": 1,
            "path": "/V1/products",
            "operations": operations,
        }
        if self.bulk_auto_run:
            self._run_bulk(bulk_uuid)
        return _Response(202, {"bulk_uuid": bulk_uuid, "request_items": items, "errors": False})

    def run_bulk(self) -> int:
        """Run the open bulk operations (the async.operations.all consumer); answers how many ran."""
        with self._lock:
            return sum(self._run_bulk(bulk_uuid) for bulk_uuid in list(self.bulks))

    def _run_bulk(self, bulk_uuid: str) -> int:
        bulk = self.bulks[bulk_uuid]
        ran = 0
        for operation in bulk["operations"]:
            if operation["status"] != OPEN:
                continue
            ran += 1
            try:
                data = dict(operation["body"]["product"])
                if "sku" not in data:
                    raise _error(400, REQUIRED, {"fieldName": "sku"})
                self._upsert_product(str(data["sku"]), data)
            except _Answer as failure:
                operation.update(status=FAILED, result_message=_said(failure.body), error_code=0)
                continue
            operation.update(status=COMPLETE, result_message=BULK_SUCCESS)
            self._log.append(
                {
                    "method": "POST",
                    "path": bulk["path"],
                    "body": copy.deepcopy(operation["body"]),
                    "status": 200,
                    "bulk_uuid": bulk_uuid,
                }
            )
        return ran

    def _bulk_status(self, request: _Request) -> tuple[int, Any]:
        bulk = self.bulks.get(request.params["bulkUuid"])
        if bulk is None:
            raise _error(400, "Bulk uuid %bulkUuid not exist", {"bulkUuid": request.params["bulkUuid"]})
        operations = [
            {k: operation[k] for k in ("id", "status", "result_message", "error_code")}
            for operation in bulk["operations"]
        ]
        body = {k: bulk[k] for k in ("bulk_id", "description", "start_time", "user_type", "user_id")}
        return 200, {**body, "operations_list": operations, "operation_count": len(operations)}


DEFAULT_TOKEN = "seamline-fake-magento"

CREDENTIALS_HELP = """\
credentials (what a spec's auth for this system says):
  admin user     auth: { admin: { username: admin, password: admin123 } }   (--user NAME:PASSWORD)
  bearer token   auth: { bearer: { token: seamline-fake-magento } }          (--token TOKEN; never expires)
  integration    auth: { oauth1: { consumer_key, consumer_secret, access_token, access_token_secret } }
                 (only with --oauth1 KEY:SECRET:TOKEN:TOKEN_SECRET)

seed file (--seed FILE, JSON): {"sources": ["eu_central"], "products": [...], "customers": [...],
"orders": [...]}; products and customers must fit Magento's schema as a request creating them would.

admin API (no credentials, never faulted): GET /__fake/log (the write log), GET /__fake/requests,
GET /__fake/health, GET|POST /__fake/faults (e.g. {"fail_next": {"count": 2, "status": 503}}),
POST /__fake/seed (as the seed file), POST /__fake/reset.
"""


def _oauth1(text: str) -> tuple[str, str, str, str]:
    parts = text.split(":")
    if len(parts) != 4 or not all(parts):
        raise argparse.ArgumentTypeError("--oauth1 takes KEY:SECRET:TOKEN:TOKEN_SECRET, four parts")
    return parts[0], parts[1], parts[2], parts[3]


def _seed_file(path: Path) -> dict[str, Any]:
    """The seed file's JSON; a ValueError says what is wrong with it."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"not a JSON seed file: {exc}") from None
    return data


def _banner(fake: FakeMagento, seeded: dict[str, int]) -> str:
    """What a spec needs to reach the fake: its URL, its credentials, its sources and where its write log is."""
    lines = [f"fake magento on {fake.url} (a spec's url; the REST API is under /rest/V1/)"]
    if not fake.auth:
        lines.append("  credentials: none needed (--no-auth)")
    else:
        for username, password in fake.users.items():
            lines.append(
                f"  admin user: {username} / {password}   (token: POST {fake.url}/rest/V1/integration/admin/token)"
            )
        if fake.integration_token is not None:
            lines.append(f"  bearer token: {fake.integration_token}")
        if fake.oauth1 is not None:
            names = ("consumer key", "consumer secret", "access token", "access token secret")
            lines += [f"  oauth1 {name}: {value}" for name, value in zip(names, fake.oauth1, strict=True)]
    lines.append(f"  sources: {', '.join(sorted(fake.sources))}")
    if any(seeded.values()):
        lines.append("  seeded: " + ", ".join(f"{count} {key}" for key, count in seeded.items() if key != "sources"))
    lines.append(f"  b2b (companies): {'yes' if fake.b2b else 'no, answered like Magento Open Source'}")
    lines.append(f"  write log: GET {fake.url}/__fake/log")
    lines.append("stop with Ctrl-C")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``seamline fake magento --port 8082``: serve until SIGINT/SIGTERM (the banner says how to reach it)."""
    parser = argparse.ArgumentParser(
        prog="seamline fake magento",
        description=__doc__.split("\n")[0],
        epilog=CREDENTIALS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8082, help="port to listen on (default: %(default)s)")
    parser.add_argument("--no-auth", action="store_true", help="answer without credentials")
    parser.add_argument("--no-b2b", action="store_true", help="answer like Magento Open Source (no companies)")
    parser.add_argument("--user", default="admin:admin123", help="admin NAME:PASSWORD for the token route")
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="a bearer token that never expires")
    parser.add_argument("--oauth1", type=_oauth1, metavar="KEY:SECRET:TOKEN:TOKEN_SECRET", help="an integration")
    parser.add_argument("--source", action="append", default=[], metavar="CODE", help="an MSI source (repeatable)")
    parser.add_argument("--seed", type=Path, metavar="FILE", help="sources, products, customers and orders (JSON)")
    args = parser.parse_args(argv)
    username, _, password = str(args.user).partition(":")
    fake = FakeMagento(
        port=args.port,
        host=args.host,
        auth=not args.no_auth,
        b2b=not args.no_b2b,
        users={username: password},
        integration_token=args.token or None,
        oauth1=args.oauth1,
        sources=("default", *args.source),
    )
    seeded = dict.fromkeys(SEED_KEYS, 0)
    if args.seed is not None:
        try:
            seeded = fake.seed(_seed_file(args.seed))
        except ValueError as exc:
            print(f"error: {args.seed}: {exc}", file=sys.stderr)
            return 1
    refused = listen(fake)
    if refused is not None:
        print(refused, file=sys.stderr)
        return 1
    return serve_until_signalled(fake, lambda: _banner(fake, seeded))


if __name__ == "__main__":
    raise SystemExit(main())
