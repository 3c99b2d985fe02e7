"""A fake Magento 2.4.8 REST API: a real HTTP server for tests, crash tests and demos.

::

    with FakeMagento(port=0) as shop:                 # .url is http://127.0.0.1:<port>
        token = shop.issue_token()                    # or POST /rest/V1/integration/admin/token
        shop.seed_order({"customer_email": "a@b.c", "items": [{"sku": "A", "qty_ordered": 1}]})
        shop.fail_next(2, status=429, retry_after="3")
        ...                                           # point a magento connector at shop.url
        shop.writes(); shop.applied_count()           # the write log: every applied write
        shop.request_count("/async/bulk/")            # every request answered (or dropped)
        shop.expire_tokens()                          # admin tokens issued so far stop working

    python3 -m connectors.magento.fake --port 8082 [--no-auth] [--no-b2b]

Routes live under ``/rest/<store>/V1/`` (``/rest/V1/`` is the default store; any store code is
accepted, ``all`` included; data is global, store scope is not modelled): products (upsert by SKU,
list with searchCriteria), inventory source items, base/tier/special prices, customers, companies
(Adobe Commerce B2B; ``b2b=False`` answers them like Open Source: 404 "Request does not match any
route."), orders (list, get, comments, ship, invoice, refund), the shipments and invoices they
create (lists with searchCriteria), the bulk API (``/async/bulk/V1/products``,
``/async/V1/products`` and ``/V1/bulk/{uuid}/status``) and the admin token.

Besides the write log, every request is counted (:meth:`FakeMagento.requests`, :meth:`request_count`):
how a benchmark tells HTTP requests sent from writes applied.

Request bodies are checked against ``schema_subset.json`` (derived from Magento's published schema
by ``derive_schema.py``) the way Magento's web API deserializer does it: wrapper keys the route
requires (``product``, ``prices``, ``customer`` ...) must be there; a known field of the wrong type
is a 400 ``The "%value" value's type is invalid. The "%type" type was expected.``; numeric strings
pass for numbers and a number passes for a string (PHP casts them); ``custom_attributes[].value`` may
be an array; an unknown field in a data object is a 400 ``Property "%1" does not have accessor
method "%2" in class "%3".`` (``strict_unknown_fields=False`` ignores it). The schema's ``required``
lists are docblock artefacts and are not enforced; the runtime minimum is (a new product needs a
name, an attribute set and a price; a customer an email, first and last name; a company its name,
email and super user). Known fields are stored cast to their schema type, as PHP setters cast them.

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
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from engine.fakeserver import ServedFake, TrackingHTTPServer, serve_until_signalled

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


class _Validator:
    """Checks a request body against a schema of the subset, leniently where Magento's deserializer is."""

    def __init__(self, strict_unknown_fields: bool) -> None:
        self.definitions: dict[str, Any] = _schema()["definitions"]
        self.strict_unknown_fields = strict_unknown_fields

    def body(self, value: Any, schema: dict[str, Any] | None) -> Any:
        """The body with every known field cast to its schema type (as PHP setters do); raises a 400."""
        if schema is None:
            return value
        if not isinstance(value, dict):
            raise _error(400, "Decoding error: %1", ["the request body is not a JSON object"])
        for name in schema.get("required", []):
            if value.get(name) is None:
                raise _error(400, REQUIRED, {"fieldName": name})
        properties = schema.get("properties", {})
        return {
            name: self.check(item, properties[name], None) if name in properties and item is not None else item
            for name, item in value.items()
        }

    def check(self, value: Any, schema: dict[str, Any], owner: str | None) -> Any:
        if "$ref" in schema:
            owner = str(schema["$ref"]).rsplit("/", 1)[-1]
            schema = self.definitions[owner]
        kind = schema.get("type", "object" if "properties" in schema else None)
        if kind == "object":
            if not isinstance(value, dict):
                raise _error(400, TYPE_ERROR, {"value": _show(value), "type": _php_class(owner or "object")})
            properties = schema.get("properties", {})
            out: dict[str, Any] = {}
            for name, item in value.items():
                if name not in properties:
                    if self.strict_unknown_fields and owner is not None:
                        pascal = _accessor(name)[3:]
                        raise _error(400, NO_ACCESSOR, [pascal, _accessor(name), _php_class(owner)])
                    continue  # ignored, as Magento does when it does not complain
                if item is None or (owner == "framework-attribute-interface" and name == "value"):
                    out[name] = item  # value: typed as a string; real payloads send arrays (category_ids)
                else:
                    out[name] = self.check(item, properties[name], owner)
            return out
        if kind == "array":
            if not isinstance(value, list):
                raise _error(400, TYPE_ERROR, {"value": _show(value), "type": "array"})
            return [None if item is None else self.check(item, schema.get("items", {}), owner) for item in value]
        if kind == "integer":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and _INT.match(value.strip()) is not None:
                return int(value)
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _error(400, TYPE_ERROR, {"value": _show(value), "type": "int"})
        if kind == "number":
            if isinstance(value, int | float) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and _NUMBER.match(value.strip()) is not None:
                number = float(value)
                return int(number) if number.is_integer() and "." not in value else number
            raise _error(400, TYPE_ERROR, {"value": _show(value), "type": "float"})
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if value in (0, 1, "0", "1", "true", "false"):
                return value in (1, "1", "true")
            raise _error(400, TYPE_ERROR, {"value": _show(value), "type": "bool"})
        if kind == "string":
            if isinstance(value, dict | list):
                raise _error(400, TYPE_ERROR, {"value": _show(value), "type": "string"})
            if isinstance(value, bool):
                return "1" if value else ""
            return value if isinstance(value, str) else _show(value)
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
            ("GET", re.compile(r"^shipments$"), self._shipment_list, False),
            ("GET", re.compile(r"^invoices$"), self._invoice_list, False),
            ("GET", re.compile(r"^creditmemos$"), self._creditmemo_list, False),
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

    def writes(self) -> list[dict[str, Any]]:
        """The write log, oldest first: every applied write (method, path, body, status); bulk operations
        appear when they run, with their ``bulk_uuid``."""
        with self._lock:
            return copy.deepcopy(self._log)

    def applied_count(self, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for entry in self._log if path_contains in entry["path"])

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
        response = self._answer(method, target, raw, authorization, host)
        with self._lock:
            self._requests.append((method, target, 0 if response is None else response.status))
        return response

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
                request.body, None if method == "GET" or entry is None else entry["body"]
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
        data = dict(request.body["customer"])
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
        return 200, copy.deepcopy(customer)

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
        document = self._document("shipment", order, lines)
        document["tracks"] = [dict(track) for track in body.get("tracks") or []]
        self.shipments[document["entity_id"]] = document
        return 200, document["entity_id"]

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
        document = self._document("invoice", order, lines)
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
        document = self._document("creditmemo", order, lines)
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

    def _document(self, kind: str, order: dict[str, Any], lines: list[tuple[dict[str, Any], float]]) -> dict[str, Any]:
        entity_id = self._next_id(kind)
        now = _now()
        return {
            "entity_id": entity_id,
            "increment_id": f"{entity_id:09d}",
            "order_id": order["entity_id"],
            "created_at": now,
            "updated_at": now,
            "total_qty": sum(qty for _, qty in lines),
            "items": [{"order_item_id": item["item_id"], "sku": item.get("sku"), "qty": qty} for item, qty in lines],
        }

    def _shipment_list(self, request: _Request) -> tuple[int, Any]:
        return 200, _search(list(self.shipments.values()), request.query)

    def _invoice_list(self, request: _Request) -> tuple[int, Any]:
        return 200, _search(list(self.invoices.values()), request.query)

    def _creditmemo_list(self, request: _Request) -> tuple[int, Any]:
        return 200, _search(list(self.creditmemos.values()), request.query)

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
        schema = _schema()["routes"]["POST /V1/products"]["body"]
        bodies = [self._validator.body(body, schema) for body in bodies]
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
                text = str(failure.body.get("message", ""))
                parameters = failure.body.get("parameters")
                if isinstance(parameters, list):
                    for position, value in enumerate(parameters, 1):
                        text = text.replace(f"%{position}", str(value))
                elif isinstance(parameters, dict):
                    for name, value in parameters.items():
                        text = text.replace(f"%{name}", str(value))
                operation.update(status=FAILED, result_message=text, error_code=0)
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


def main(argv: list[str] | None = None) -> int:
    """``python3 -m connectors.magento.fake --port 8082``: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python3 -m connectors.magento.fake", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--no-auth", action="store_true", help="answer without a bearer token")
    parser.add_argument("--no-b2b", action="store_true", help="answer like Magento Open Source (no companies)")
    parser.add_argument("--user", default="admin:admin123", help="admin username:password for the token route")
    args = parser.parse_args(argv)
    username, _, password = str(args.user).partition(":")
    fake = FakeMagento(
        port=args.port, host=args.host, auth=not args.no_auth, b2b=not args.no_b2b, users={username: password}
    )
    return serve_until_signalled(fake, lambda: f"fake magento on {fake.url}/rest/V1/")


if __name__ == "__main__":
    raise SystemExit(main())
