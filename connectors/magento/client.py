"""The magento connector's connection: Magento 2.4's REST API over one HTTP kit session per system.

Who calls what is documented on :class:`engine.connector.Connection`. The wire, auth (OAuth 1.0a
signatures, bearer, the admin token and its cache), error translation, logging and the searchCriteria
query are the kit's (:mod:`engine.kit.http`); this module adds what is Magento's own: the routes,
the record each entity takes, the admin token request, bulk, and what Magento's answers mean.

What ``write`` does with each entity's record (one record per call)::

    products        PUT  /V1/products/{sku}  {"product": record}; mode create: POST /V1/products;
                    mode update: only if the SKU exists; mode delete (or disable): the product is
                    disabled (status 2), never deleted. With ``bulk: true``: gathered into
                    POST /async/bulk/V1/products, see below.
    source-items    POST /V1/inventory/source-items  {"sourceItems": [record]}
    base-prices     POST /V1/products/base-prices    {"prices": [record]}   (also tier-prices,
                    special-prices: /V1/products/tier-prices, /V1/products/special-price); Magento
                    answers 200 with a list of failures: each becomes the TerminalError's reason
    customers       found by email (and website_id when given), else by taxvat; then
                    PUT /V1/customers/{id} (what the record leaves out is kept) or POST /V1/customers
    companies       Adobe Commerce B2B: found by company_email, then PUT /V1/company/{id} or
                    POST /V1/company/; super_user_id, when absent, is the customer with the
                    company's email. On Open Source (404 "Request does not match any route.") the
                    error says this Magento has no B2B module.
    order-comments  POST /V1/orders/{id}/comments  {"statusHistory": record}     (once-only, see below)
    invoices        POST /V1/order/{id}/invoice    record   (shipments: /ship, credit-memos: /refund;
                    once-only, see below)
    order-status    {increment_id | order_id, status, comment, invoiced, shipped, shipped_on, tracks,
                     notify, visible_on_front, capture}: invoice what is not invoiced yet, ship what is
                    not shipped yet (both read from the order's item quantities), then add the comment
                    (with the status) unless one of the order's comments since it entered that status
                    already says it; the comment comes last, so after a crash the order shows it only
                    if the rest was done. Writing the same record again changes nothing: not once-only.

The order entities name their order with ``increment_id`` (looked up with a search) or ``order_id``
(Magento's entity_id); those two fields are the connector's, the rest is Magento's body.

``check(entity, record)`` runs before each write (the worker calls it): the request the record becomes is
held to Magento's published request schema (``schema_requests.json``, see :mod:`connectors.magento.schema`),
to the letter: exact JSON types (no numeric strings for numbers, no numbers for strings:
``custom_attributes[].value`` is text), no nulls (leave a field out instead), every required field, no
unknown field (Magento's "Property ... does not have accessor method"). What the connector adds itself
is not asked of the record: an order comment's ``parent_id`` and flags, a document comment's reference,
a company's ``super_user_id``. A record that fails is a TerminalError naming every bad JSON path, e.g.
``product.price: 'abc' is not of type 'number'``, and is never sent. Every request ``write`` sends is
held to the same schema again just before it goes (a body the connector composed, or a record
written without ``check``): one that breaks it is never sent either.

Companies: Magento's company schema requires ``street``, ``customer_group_id``,
``sales_representative_id`` (the admin user who looks after the company) and ``super_user_id``. The
mapping sends the first three (they are business data); the connector sends the super user (the
customer with the company's email for a new company; on an update, what the company has, as for
every required field the record leaves out). ``reject_reason`` and ``rejected_at`` are never sent:
only a rejected company has them.

Once-only writes and how a resend is checked (``find_effect``, called by the runtime before it sends
again a write whose earlier outcome is unknown). Each such write carries a reference of its own,
``[seamline ref <16 hex>]`` (the start of the SHA-256 of its idempotency key, the same on every attempt),
on the last line of a comment the customer does not see: Magento's bodies have no other free field for
it (the ``extension_attributes`` of comments, tracks and creation arguments declare no field we could
set; an unknown one is refused), and the body stays valid against the published schema::

    order-comments  the reference is appended to the comment's text unless the comment is shown on the
                    storefront (is_visible_on_front) or e-mailed (is_customer_notified). Found: one of
                    the order's comments (GET /V1/orders/{id}/comments) carries it. A comment the
                    customer sees is sent as it is and found by content: a comment of the order with the
                    same text and, when the record names one, the same status (so an identical comment
                    already on the order from before counts as this one: skipped, never doubled).
    invoices        the reference goes into the document's comment (appended to the record's comment, or
    shipments       as the whole comment, is_visible_on_front 0) unless the customer sees that comment
    credit-memos    (is_visible_on_front, or appendComment with notify: it goes into the e-mail). Found:
                    one of the order's documents of that kind (GET /V1/invoices|shipments|creditmemos
                    filtered on order_id; a document listed without its comments has them read from
                    GET /V1/<kind>/{id}/comments) has a comment carrying it. A customer-facing one is
                    found by content: a document of the order with exactly the record's item quantities,
                    all its track numbers and its comment text (those the record gives); a record giving
                    none of them (the whole rest of the order, no comment) is found when a document of
                    that kind exists and the order has nothing left to invoice, ship or refund.

The order is named as for the write; an order Magento does not know has no effect (None).

``exists`` (create-only fields): ``products`` by ``GET /V1/products/{sku}`` (404: no), ``customers`` by
the search a write does; None for the rest.

Bulk (``bulk: true``): ``write("products", ...)`` calls that arrive within ``bulk_wait`` of each
other (up to ``bulk_size``) become one ``POST /async/bulk/V1/products``; the connection then polls
``GET /V1/bulk/{uuid}/status`` until no operation is open, and each write returns or raises its own
operation's result: complete -> a receipt, failed or rejected -> TerminalError (only that record is
dead-lettered), retriably failed -> TransientError. A 4xx for the whole request splits the batch
and sends each record alone, so one bad record never fails its neighbours.

Errors: everything :mod:`engine.kit.http.session` says (timeouts, 429, 5xx are transient; other 4xx
terminal, quoting Magento's message with its ``%1``/``%name`` parameters filled in). With an admin
token, a 401 (Magento's answer to an expired token) fetches a new token once and repeats the request;
a second 401 is a TerminalError that says the fresh token was refused too.

Reads (``orders``, ``customers``, ``products``, ``companies``, ``shipments``, ``invoices``): a
searchCriteria filter ``<cursor> gteq <since>`` (an ISO time becomes Magento's ``Y-m-d H:i:s`` in
UTC), sorted on the cursor and then the entity id (a unique key, so pages neither skip nor repeat
rows), page after page until an empty page or ``total_count``. Each ``filter`` entry is one more
group: ``{field: value}`` is eq, ``{field: [a, b]}`` is in, ``{field: {condition: value}}`` names it.

Store scope is in the path: ``/rest/<store_code>/V1/...``; with ``store_code: all`` the catalog
(products, prices, source items) goes to ``/rest/all/V1`` and the rest to the default store
(``/rest/V1``), as Magento takes ``all`` for the catalog only.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from connectors.magento import MagentoOptions
from connectors.magento.schema import request_problems, schema_problems
from engine.connector import (
    Checker,
    ConnectContext,
    EffectFinder,
    ExistenceChecker,
    Gathering,
    Source,
    Target,
    closest,
    parse_duration,
)
from engine.errors import SeamlineError, TerminalError, TransientError
from engine.kit.http.auth import Auth, OAuth1, Token, TokenAuth, TokenCache, bearer
from engine.kit.http.errors import server_message, status_error, transient_status
from engine.kit.http.pagination import MagentoFilter, Pagination, magento_condition, magento_criteria, walk
from engine.kit.http.session import NO_BODY, Session, Transport
from engine.kit.http.urls import MissingValue, fill_path, placeholders, query_value

__all__ = ["MagentoConnection", "magento_time", "reference_of"]


MAGENTO_TIME: Final = "%Y-%m-%d %H:%M:%S"
NO_ROUTE: Final = "does not match any route"
REMEMBERED: Final = 50_000  # idempotency keys of recent successful writes, per connection
POLL_CEILING: Final = 5.0

# bulk operation statuses (Magento\AsynchronousOperations\Api\Data\OperationInterface)
COMPLETE, RETRIABLY_FAILED, FAILED, OPEN, REJECTED = 1, 2, 3, 4, 5

ORDER_REF: Final = ("increment_id", "order_id")
REFERENCE_MARK: Final = "seamline ref"
DOCUMENTS_PAGE: Final = 100  # documents per page when listing an order's invoices, shipments or credit memos


# -- the schema check ---------------------------------------------------------------------------

# Each write route and the request it sends, as Magento's published schema names it: the body of every
# request the connection sends is held to that schema first (connectors.magento.schema).
REQUEST_ROUTES: Final[dict[str, str]] = {
    "product.put": "PUT /V1/products/{sku}",
    "product.post": "POST /V1/products",
    "bulk.products": "POST /async/bulk/V1/products",
    "source-items": "POST /V1/inventory/source-items",
    "base-prices": "POST /V1/products/base-prices",
    "tier-prices": "POST /V1/products/tier-prices",
    "special-prices": "POST /V1/products/special-price",
    "customer.create": "POST /V1/customers",
    "customer.update": "PUT /V1/customers/{customerId}",
    "company.create": "POST /V1/company/",
    "company.update": "PUT /V1/company/{companyId}",
    "order.comment": "POST /V1/orders/{id}/comments",
    "order.invoice": "POST /V1/order/{orderId}/invoice",
    "order.ship": "POST /V1/order/{orderId}/ship",
    "order.refund": "POST /V1/order/{orderId}/refund",
}

# What a company update keeps of the company when the record leaves it out: Magento's PUT replaces the
# company, and its schema requires these (a company record need not repeat its super user).
COMPANY_KEPT: Final = ("super_user_id", "customer_group_id", "sales_representative_id", "street")

# Stand-ins for what the connector fills in only when it sends (an order's id, a super user's id, the
# reference of a once-only write): the check holds the body the record becomes, so it needs a value there.
_SOME_ID: Final = 1
_SOME_REFERENCE: Final = f"[{REFERENCE_MARK} {'0' * 16}]"


def _filled(path: str, request: Any) -> str:
    """A route's path with the placeholders the request can fill (``{product.sku}`` -> ``4711``), for messages."""

    def value(match: re.Match[str]) -> str:
        found: Any = request
        for part in match.group(1).split("."):
            found = found.get(part) if isinstance(found, dict) else None
        return match.group(0) if found is None or isinstance(found, dict | list) else str(found)

    return re.sub(r"\{([^}]+)\}", value, path)


def _shown(problems: list[str]) -> str:
    text = "; ".join(problems[:8])
    return text + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")


@dataclass(frozen=True, slots=True)
class _Shape:
    """The request an entity's record becomes, for the check: ``route``'s body is ``{wrap: record}``
    (``[record]`` when listed), or what ``fill`` makes of the record, the way the writer makes it."""

    route: str
    wrap: str | None = None
    listed: bool = False
    own: tuple[str, ...] = ()  # the connector's fields: not sent, checked against OWN_SCHEMA
    needs: tuple[tuple[str, ...], ...] = ()  # each tuple: one of these fields must be there
    fill: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def body(self, record: Mapping[str, Any]) -> Any:
        rest = {k: v for k, v in record.items() if k not in self.own}
        if self.fill is not None:
            rest = self.fill(rest)
        if self.wrap is None:
            return rest
        return {self.wrap: [rest] if self.listed else rest}

    def where(self, name: str) -> str:
        if self.wrap is None:
            return name
        return f"{self.wrap}[0].{name}" if self.listed else f"{self.wrap}.{name}"


OWN_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"increment_id": {"type": "string"}, "order_id": {"type": "integer"}},
}

ORDER_STATUS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "increment_id": {"type": "string"},
        "order_id": {"type": "integer"},
        "status": {"type": "string"},
        "comment": {"type": "string"},
        "invoiced": {"type": "boolean"},
        "shipped": {"type": "boolean"},
        "shipped_on": {"type": "string"},
        "tracks": {"type": "array", "items": {"$ref": "#/definitions/sales-data-shipment-track-creation-interface"}},
        "notify": {"type": "boolean"},
        "visible_on_front": {"type": "boolean"},
        "capture": {"type": "boolean"},
    },
}


def _company_body(record: Mapping[str, Any], super_user_id: int | None) -> dict[str, Any]:
    """A company's body: the record, with its super user (a customer id) when the record names none."""
    body = dict(record)
    if body.get("super_user_id") is None and super_user_id is not None:
        body["super_user_id"] = super_user_id
    return body


def _history_body(record: Mapping[str, Any], order_id: int, reference: str) -> dict[str, Any]:
    """An order comment's statusHistory: the record's fields, the reference on the last line of a comment
    the customer does not see, the customer flags (0 unless given) and the order as its parent."""
    history = {k: v for k, v in record.items() if k not in ORDER_REF}
    if not _history_seen_by_customer(history):
        history["comment"] = _with_reference(history.get("comment"), reference)
    history.setdefault("is_customer_notified", 0)
    history.setdefault("is_visible_on_front", 0)
    history["parent_id"] = order_id
    return history


@functools.cache
def _shapes() -> dict[str, _Shape]:
    own, needs = ORDER_REF, (ORDER_REF,)
    document = functools.partial(_referenced_document, reference=_SOME_REFERENCE)
    return {
        "products": _Shape("PUT /V1/products/{sku}", "product", needs=(("sku",),)),
        "source-items": _Shape(
            "POST /V1/inventory/source-items", "sourceItems", True, needs=(("sku",), ("source_code",))
        ),
        "base-prices": _Shape("POST /V1/products/base-prices", "prices", True, needs=(("sku",),)),
        "tier-prices": _Shape("POST /V1/products/tier-prices", "prices", True, needs=(("sku",),)),
        "special-prices": _Shape("POST /V1/products/special-price", "prices", True, needs=(("sku",),)),
        "customers": _Shape("POST /V1/customers", "customer", needs=(("email",),)),
        "companies": _Shape(
            "POST /V1/company/", "company", needs=(("company_email",),), fill=lambda r: _company_body(r, _SOME_ID)
        ),
        "order-comments": _Shape(
            "POST /V1/orders/{id}/comments",
            "statusHistory",
            own=own,
            needs=needs,
            fill=lambda r: _history_body(r, _SOME_ID, _SOME_REFERENCE),
        ),
        "invoices": _Shape("POST /V1/order/{orderId}/invoice", own=own, needs=needs, fill=document),
        "shipments": _Shape("POST /V1/order/{orderId}/ship", own=own, needs=needs, fill=document),
        "credit-memos": _Shape("POST /V1/order/{orderId}/refund", own=own, needs=needs, fill=document),
        "order-status": _Shape("", needs=(ORDER_REF,)),  # the connector's own record: ORDER_STATUS_SCHEMA
    }


def _record_problems(entity: str, shape: _Shape, record: dict[str, Any]) -> list[str]:
    """What in a record breaks the schema of the request it becomes (and of the connector's own fields),
    then the fields the connector itself needs (an order to name, a key to find the record by)."""
    if entity == "order-status":
        problems = schema_problems(record, ORDER_STATUS_SCHEMA)
    else:
        problems = request_problems(shape.route, shape.body(record))
        problems += schema_problems({k: v for k, v in record.items() if k in shape.own}, OWN_SCHEMA)
    said = {p.path for p in problems}
    found = [str(p) for p in problems]
    for fields in shape.needs:
        where = shape.where(fields[0])
        if where not in said and all(record.get(name) in (None, "") for name in fields):
            found.append(f"{where}: missing" + (f" (or {fields[1]})" if len(fields) > 1 else ""))
    return found


# -- routes -------------------------------------------------------------------------------------


def _endpoints(store: str) -> dict[str, dict[str, str]]:
    """The generic http connection's endpoints for one store scope.

    Path placeholders come from the request (the body, for writes): a dotted one reads inside it
    (``{product.sku}``). Where the body has no field for the path's id (ship, invoice, refund), the
    request carries it under the route parameter's own name, ``orderId``; Magento lets a route
    parameter override a body parameter of the same name, so it is harmless there.
    """
    catalog = f"/rest/{store}/V1"
    other = "/rest/V1" if store == "all" else f"/rest/{store}/V1"
    routes = {
        "product.put": ("PUT", f"{catalog}/products/{{product.sku}}"),
        "product.post": ("POST", f"{catalog}/products"),
        "product.get": ("GET", f"{catalog}/products/{{sku}}"),
        "products.list": ("GET", f"{catalog}/products"),
        "bulk.products": ("POST", f"/rest/{store}/async/bulk/V1/products"),
        "bulk.status": ("GET", f"{other}/bulk/{{bulkUuid}}/status"),
        "source-items": ("POST", f"{catalog}/inventory/source-items"),
        "base-prices": ("POST", f"{catalog}/products/base-prices"),
        "tier-prices": ("POST", f"{catalog}/products/tier-prices"),
        "special-prices": ("POST", f"{catalog}/products/special-price"),
        "customer.create": ("POST", f"{other}/customers"),
        "customer.update": ("PUT", f"{other}/customers/{{customer.id}}"),
        "customers.list": ("GET", f"{other}/customers/search"),
        "company.create": ("POST", f"{other}/company/"),
        "company.update": ("PUT", f"{other}/company/{{company.id}}"),
        "companies.list": ("GET", f"{other}/company/"),
        "orders.list": ("GET", f"{other}/orders"),
        "order.get": ("GET", f"{other}/orders/{{id}}"),
        "order.comment": ("POST", f"{other}/orders/{{statusHistory.parent_id}}/comments"),
        "order.invoice": ("POST", f"{other}/order/{{orderId}}/invoice"),
        "order.ship": ("POST", f"{other}/order/{{orderId}}/ship"),
        "order.refund": ("POST", f"{other}/order/{{orderId}}/refund"),
        "order.comments": ("GET", f"{other}/orders/{{id}}/comments"),
        "shipments.list": ("GET", f"{other}/shipments"),
        "invoices.list": ("GET", f"{other}/invoices"),
        "creditmemos.list": ("GET", f"{other}/creditmemos"),
        "shipment.comments": ("GET", f"{other}/shipment/{{id}}/comments"),
        "invoice.comments": ("GET", f"{other}/invoices/{{id}}/comments"),
        "creditmemo.comments": ("GET", f"{other}/creditmemo/{{id}}/comments"),
    }
    return {name: {"method": method, "path": path} for name, (method, path) in routes.items()}


# entity -> (list route, its unique id field: the second sort key)
READS: Final[dict[str, tuple[str, str]]] = {
    "orders": ("orders.list", "entity_id"),
    "customers": ("customers.list", "id"),
    "products": ("products.list", "id"),
    "companies": ("companies.list", "id"),
    "shipments": ("shipments.list", "entity_id"),
    "invoices": ("invoices.list", "entity_id"),
}

Filter = MagentoFilter  # field, value, condition_type: the kit builds the searchCriteria query from them
READ_PAGES: Final = Pagination(style="magento")


def magento_time(value: str) -> str:
    """An ISO time as Magento stores and compares it: ``Y-m-d H:i:s`` in UTC; anything else as it is."""
    try:
        stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return value
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC)
    return stamp.strftime(MAGENTO_TIME)


def _fill(message: str, parameters: Any) -> str:
    """A price-update result's text: Magento sends named placeholders with a plain list of values
    (``"Invalid attribute %fieldName = %fieldValue."``, ``["SKU", "4711"]``), so fill them in order."""
    text = server_message({"message": message, "parameters": parameters})
    if isinstance(parameters, list) and "%" in text:
        values = iter(str(p) for p in parameters if not isinstance(p, dict))
        parts = text.split("%")
        rebuilt = [parts[0]]
        for part in parts[1:]:
            name = len(part) - len(part.lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"))
            value = next(values, None) if name else None
            rebuilt.append(value + part[name:] if value is not None else "%" + part)
        text = "".join(rebuilt)
    return text


def _copy(error: SeamlineError) -> SeamlineError:
    """The same error for another waiting write (an exception object is raised once)."""
    if isinstance(error, TransientError):
        return TransientError(str(error), retry_after=error.retry_after, status=error.status)
    if isinstance(error, TerminalError):
        return TerminalError(str(error), status=error.status)
    return TransientError(str(error))


def _left(order: Mapping[str, Any], done: str, limit: str = "qty_ordered") -> bool:
    """Whether any order line still has quantity to invoice, ship (up to what was ordered) or refund
    (up to what was invoiced: ``limit="qty_invoiced"``)."""
    for item in order.get("items") or []:
        if item.get("parent_item_id"):
            continue  # configurable children follow their parent
        try:
            if float(item.get(limit) or 0) - float(item.get(done) or 0) > 0:
                return True
        except (TypeError, ValueError):
            continue
    return False


def _already_said(order: Mapping[str, Any], comment: Any, status: Any) -> bool:
    """Whether the order's comments since it last entered another status already say ``comment``
    (with ``status``, when given): how order-status adds its comment once, even when someone else
    commented after it. A comment said before the order left this status and came back is said again."""
    histories = [h for h in order.get("status_histories") or [] if isinstance(h, dict)]
    histories.sort(key=lambda h: (str(h.get("created_at") or ""), int(h.get("entity_id") or 0)), reverse=True)
    current = status or order.get("status")
    for history in histories:
        if (history.get("comment") or "") == (comment or "") and status in (None, "", history.get("status")):
            return True
        if history.get("status") not in (None, "", current):
            return False
    return False


# -- once-only writes: the reference they carry, and how a resend is checked ---------------------------


def reference_of(idempotency_key: str) -> str:
    """The reference a once-only write leaves in Magento: ``[seamline ref <16 hex>]``, the start of the
    SHA-256 of the write's idempotency key (the same on every attempt of one write, short, and showing
    nothing of the record)."""
    return f"[{REFERENCE_MARK} {hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]}]"


def _flag(value: Any) -> bool:
    """A Magento flag as the deserializer reads it: true, 1, "1" and "true" are set; anything else is not."""
    return value is True or value == 1 or (isinstance(value, str) and value.strip().lower() in ("1", "true"))


def _with_reference(text: Any, reference: str) -> str:
    """A comment's text with the reference on a line of its own at the end (or the reference alone)."""
    said = "" if text is None else str(text).rstrip()
    return f"{said}\n{reference}" if said else reference


def _document_seen_by_customer(body: Mapping[str, Any]) -> bool:
    """Whether the customer sees a document's comment: shown on the storefront, or e-mailed with the
    document (``appendComment`` with ``notify``: ShipOrder, InvoiceOrder and RefundOrder put it in the mail)."""
    comment = body.get("comment")
    visible = isinstance(comment, Mapping) and _flag(comment.get("is_visible_on_front"))
    return visible or (_flag(body.get("appendComment")) and _flag(body.get("notify")))


def _referenced_document(body: dict[str, Any], reference: str) -> dict[str, Any]:
    """An invoice, shipment or credit memo body carrying ``reference`` in its comment, unless the customer
    sees that comment (then the body is sent as it is, and a resend is checked by its content)."""
    comment = body.get("comment")
    if _document_seen_by_customer(body) or not isinstance(comment, Mapping | None):
        return body
    given = dict(comment or {})
    given["comment"] = _with_reference(given.get("comment"), reference)
    given.setdefault("is_visible_on_front", 0)
    return {**body, "comment": given}


def _history_seen_by_customer(history: Mapping[str, Any]) -> bool:
    """Whether the customer sees an order comment: on the storefront, or in the e-mail Magento sends with it."""
    return _flag(history.get("is_visible_on_front")) or _flag(history.get("is_customer_notified"))


def _quantities(lines: Any) -> dict[int, float]:
    """``{order_item_id: qty}`` of a document's (or a body's) item lines; unreadable lines are left out."""
    found: dict[int, float] = {}
    for line in lines if isinstance(lines, list) else []:
        try:
            qty = float(line.get("qty") or 0)
            if qty > 0:
                found[int(line["order_item_id"])] = found.get(int(line["order_item_id"]), 0.0) + qty
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return found


def _comment_texts(document: Mapping[str, Any]) -> list[str]:
    return [str(c.get("comment") or "") for c in document.get("comments") or [] if isinstance(c, Mapping)]


def _same_content(body: Mapping[str, Any], document: Mapping[str, Any]) -> bool:
    """Whether a document Magento has is the one ``body`` asks for, by what the body names: its item
    quantities (all of them, exactly), its track numbers (all there) and its comment text (there)."""
    if body.get("items") and _quantities(body["items"]) != _quantities(document.get("items")):
        return False
    wanted = {str(t.get("track_number")) for t in body.get("tracks") or [] if isinstance(t, Mapping)}
    have = {str(t.get("track_number")) for t in document.get("tracks") or [] if isinstance(t, Mapping)}
    if not wanted <= have:
        return False
    comment = body.get("comment")
    text = str(comment.get("comment") or "").strip() if isinstance(comment, Mapping) else ""
    return not text or text in (t.strip() for t in _comment_texts(document))


def _fingerprinted(body: Mapping[str, Any]) -> bool:
    """Whether a document body names anything to recognise it by (items, tracks or a comment text)."""
    comment = body.get("comment")
    text = comment.get("comment") if isinstance(comment, Mapping) else None
    return bool(body.get("items") or body.get("tracks") or (text not in (None, "")))


# -- bulk -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    record: dict[str, Any]
    future: asyncio.Future[str]


def _settle(job: _Job, result: str | SeamlineError) -> None:
    if job.future.done():  # the write was cancelled (the runtime's timeout): nobody waits for it
        return
    if isinstance(result, str):
        job.future.set_result(result)
    else:
        job.future.set_exception(result)


class _Batcher:
    """Gathers concurrent writes into batches: a batch leaves ``wait`` seconds after its first record
    joined, or at once when it holds ``size`` records; ``send`` settles each record's future."""

    def __init__(
        self,
        send: Callable[[list[_Job]], Awaitable[None]],
        *,
        size: int,
        wait: float,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._send = send
        self.log = log
        self.size = size
        self.wait = wait
        self._jobs: list[_Job] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, record: dict[str, Any]) -> str:
        loop = asyncio.get_running_loop()
        job = _Job(record, loop.create_future())
        self._jobs.append(job)
        if len(self._jobs) >= self.size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait, self._flush)
        return await job.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        jobs, self._jobs = self._jobs, []
        if jobs:
            task = asyncio.get_running_loop().create_task(self._run(jobs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, jobs: list[_Job]) -> None:
        try:
            await self._send(jobs)
        except SeamlineError as exc:
            for job in jobs:
                _settle(job, _copy(exc))
        except Exception as exc:  # a bug must not leave writes waiting forever
            self.log.exception("bulk batch failed")
            for job in jobs:
                _settle(job, TransientError(f"bulk batch failed: {exc!r}"))
        finally:
            for job in jobs:
                _settle(job, TransientError("the bulk request ended without a result for this record"))

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            _settle(job, TransientError("the connection closed before the bulk request was sent"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- the connection ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Listing:
    """One Magento list route as the kit's page source: each page is the route with its searchCriteria."""

    connection: MagentoConnection
    route: str
    entity: str

    @property
    def system(self) -> str:
        return self.connection.system

    async def page(self, url: str, params: list[tuple[str, str]]) -> tuple[Any, Any]:
        return await self.connection._list(self.route, dict(params)), None

    def items(self, body: Any, path: str, response: Any) -> list[Any]:
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise TerminalError(f"{self.system}: reading {self.entity}: the answer has no list of items")
        return items

    def follow(self, response: Any, link: str) -> str:
        raise AssertionError("magento pages are numbered; there is no link to follow")


# (connection, entity, record, mode, reference) -> receipt; the reference (reference_of the idempotency key) is
# what a once-only write leaves in Magento so that find_effect can recognise it
Writer = Callable[["MagentoConnection", str, dict[str, Any], str, str], Awaitable[str]]


class MagentoConnection(Source, Target, Checker, Gathering, ExistenceChecker, EffectFinder):
    """An open connection to one Magento system: its routes, auth and bulk gathering (module docstring).

    What flows may name is declared once: ``READS`` (source.read: entity -> its list route and id field) and
    ``WRITES`` (target.write: entity -> its writer, at the end of the class); the connector kind derives its
    operations from them.
    """

    READS: ClassVar[Mapping[str, tuple[str, str]]] = READS

    def __init__(self, options: MagentoOptions, context: ConnectContext, *, transport: Transport | None = None) -> None:
        self.options = options
        self.context = context
        self.system = context.system
        self._endpoints = _endpoints(options.store_code)
        self.http = Session.for_system("magento", options, context, transport=transport)
        self.log, self.timeout = self.http.logger, self.http.timeout
        self.http.use(self._auth())
        self._remembered: OrderedDict[str, str] = OrderedDict()
        self._b2b: bool | None = {"yes": True, "no": False}.get(options.b2b)
        self._poll = parse_duration(options.bulk_poll)
        self._batcher = (
            _Batcher(self._send_bulk, size=options.bulk_size, wait=parse_duration(options.bulk_wait), log=self.log)
            if options.bulk
            else None
        )

    def _auth(self) -> Auth:
        auth = self.options.auth
        if auth.oauth1 is not None:
            return OAuth1(
                auth.oauth1.consumer_key,
                auth.oauth1.consumer_secret,
                auth.oauth1.access_token,
                auth.oauth1.access_token_secret,
            )
        if auth.bearer is not None:
            return bearer(auth.bearer.token)
        assert auth.admin is not None  # the model holds exactly one
        return TokenAuth(
            TokenCache(self._admin_token),
            credential="admin token",
            hint=f"Magento refused a freshly issued admin token for user '{auth.admin.username}' too: check that "
            "the user's role allows this resource (System > Permissions > User Roles)",
            fixed_secrets=(auth.admin.password,),
        )

    # -- lifecycle ------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        await self.http.aclose()

    async def __aenter__(self) -> MagentoConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- the Connection contract ----------------------------------------------------------------
    def check(self, entity: str, record: Any) -> None:
        """Before a write: a record whose request would break Magento's published schema is terminal and is
        never sent. The check holds the body the record becomes, with what the connector adds (an order's
        id, a company's super user, a comment's reference) stood in for; see :mod:`connectors.magento.schema`."""
        shape = _shapes().get(entity)
        if shape is None:
            raise self._unknown(entity, "write", _shapes())
        if not isinstance(record, dict):
            raise TerminalError(f"{self.system}.{entity}: the record is a {type(record).__name__}, not an object")
        problems = _record_problems(entity, shape, record)
        if problems:
            raise TerminalError(
                f"{self.system}.{entity}: the record does not fit Magento's schema, not sent: {_shown(problems)}"
            )

    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        """Write one record of ``entity`` (see the module docstring); returns a receipt for the ledger.

        Magento cannot deduplicate, so the connection remembers the receipts of its recent writes: the
        same ``idempotency_key`` again returns the first receipt and sends nothing.
        """
        writer = self.WRITES.get(entity)
        if writer is None:
            raise self._unknown(entity, "write", self.WRITES)
        if not isinstance(record, dict):
            raise TerminalError(f"{self.system}.{entity}: the record is a {type(record).__name__}, not an object")
        if mode not in ("upsert", "create", "update", "delete", "disable"):
            raise TerminalError(f"{self.system}.{entity}: unknown mode '{mode}' (upsert, create, update, delete)")
        remembered = f"{entity}\n{idempotency_key}"
        receipt = self._remembered.get(remembered)
        if receipt is not None:
            self._remembered.move_to_end(remembered)
            return receipt
        receipt = await writer(self, entity, record, mode, reference_of(idempotency_key))
        self._remembered[remembered] = receipt
        if len(self._remembered) > REMEMBERED:
            self._remembered.popitem(last=False)
        return receipt

    async def read(
        self,
        entity: str,
        *,
        since: str | None = None,
        cursor_field: str | None = None,
        page_size: int = 100,
        filter: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[list[Any]]:
        """Pages of ``entity`` changed at or after ``since``, oldest first (see the module docstring)."""
        if entity not in self.READS:
            raise self._unknown(entity, "read", self.READS)
        route, id_field = self.READS[entity]
        size = self.options.page_size if "page_size" in self.options.model_fields_set else page_size
        filters: list[Filter] = []
        if since is not None and cursor_field:
            filters.append((cursor_field, magento_time(since), "gteq"))
        filters += [magento_condition(name, value) for name, value in (filter or {}).items()]
        sorts = [cursor_field, id_field] if cursor_field and cursor_field != id_field else [id_field]
        async for items in walk(_Listing(self, route, entity), "", magento_criteria(filters, sorts), READ_PAGES, size):
            if items:
                yield items

    async def find_effect(self, entity: str, record: Any, *, key: Any, idempotency_key: str) -> str | None:
        """Whether a once-only write whose earlier outcome is unknown took effect (the EffectFinder role).

        Called by a worker before it sends an order comment, invoice, shipment or credit memo again; the
        rule for each is in the module docstring (our reference when the write carried one, else the
        content). Returns a receipt naming what Magento has, or None (then the write is sent). An order
        Magento does not know has nothing: None, and the write then fails with the order's 404. Any other
        entity is safe to send again and is not checked here: a TerminalError says so.
        """
        if not isinstance(record, dict):
            raise TerminalError(f"{self.system}.{entity}: the record is a {type(record).__name__}, not an object")
        reference = reference_of(idempotency_key)
        if entity == "order-comments":
            return await self._find_order_comment(record, reference)
        document = _DOCUMENTS.get(entity)
        if document is None:
            raise TerminalError(
                f"{self.system}: magento checks only its once-only writes (order-comments, invoices, shipments, "
                f"credit-memos) for an earlier effect; '{entity}' is safe to send again, so nothing asks"
            )
        return await self._find_document(document, record, reference)

    async def exists(self, entity: str, record: Any, *, key: Any) -> bool | None:
        """Whether Magento has the record already (the ExistenceChecker role, for create-only fields).

        Called by a worker before writing to a target with ``create_only`` or ``update_only`` fields.
        ``products``: ``GET /V1/products/{sku}`` (a 404 is no). ``customers``: the search a write does
        (email and website, else taxvat). Any other entity: None (the runtime then asks its ledger).
        """
        if not isinstance(record, dict):
            return None
        if entity == "products":
            return await self._product(self._required(record, "sku", entity)) is not None
        if entity == "customers":
            self._required(record, "email", entity)
            found, _how = await self._find_customer(record)
            return found is not None
        return None

    def gathers_writes(self, entity: str, mode: str) -> bool:
        """Whether writes of ``entity`` wait to be gathered into a bulk (the runtime then holds no slot per record)."""
        return self._batcher is not None and entity == "products" and mode in ("upsert", "create")

    # -- products -------------------------------------------------------------------------------
    async def _write_product(self, entity: str, record: dict[str, Any], mode: str, _reference: str) -> str:
        sku = self._required(record, "sku", entity)
        if mode in ("delete", "disable"):
            return await self._disable(sku)
        if mode == "update" and await self._product(sku) is None:
            raise TerminalError(
                f"{self.system}: product {sku!r} does not exist and the target's mode is update "
                "(use upsert to create it)",
                status=404,
            )
        if self._batcher is not None:
            return await self._batcher.submit(record)
        route = "product.post" if mode == "create" else "product.put"
        answer = await self._call(route, {"product": record})
        return f"product {sku} id={_id(answer)}"

    async def _product(self, sku: str) -> dict[str, Any] | None:
        try:
            answer = await self._call("product.get", {"sku": sku})
        except TerminalError as exc:
            if exc.status == 404:
                return None
            raise
        return answer if isinstance(answer, dict) else None

    async def _disable(self, sku: str) -> str:
        """Discontinued: status 2 (disabled). Magento keeps the product, its orders and its URLs."""
        current = await self._product(sku)
        if current is None:
            return f"product {sku} is not in Magento: nothing to disable"
        if str(current.get("status")) == "2":
            return f"product {sku} id={_id(current)} already disabled"
        answer = await self._call("product.put", {"product": {"sku": sku, "status": 2}})
        return f"product {sku} id={_id(answer)} disabled (status 2; never deleted)"

    async def _send_bulk(self, jobs: list[_Job]) -> None:
        """One bulk request for ``jobs``, then its status until every operation has ended."""
        jobs = [job for job in jobs if not job.future.done() and self._fits_bulk(job)]
        if not jobs:
            return
        try:
            answer = await self._call("bulk.products", [{"product": job.record} for job in jobs])
        except TerminalError as exc:
            if len(jobs) > 1 and exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 403):
                # The whole request was refused for one body: send each alone, so only that one fails.
                self.log.info("%s: bulk of %d refused (%s); sending each record alone", self.system, len(jobs), exc)
                await asyncio.gather(*(self._send_alone(job) for job in jobs))
                return
            raise
        uuid = answer.get("bulk_uuid") if isinstance(answer, dict) else None
        if not isinstance(uuid, str) or not uuid:
            raise TerminalError(f"{self.system}: the bulk answer has no bulk_uuid: {str(answer)[:200]}")
        items = {i.get("id"): i for i in answer.get("request_items") or [] if isinstance(i, dict)}
        open_jobs: dict[int, _Job] = {}
        for index, job in enumerate(jobs):
            item = items.get(index)
            if item is not None and item.get("status") not in (None, "accepted"):
                why = item.get("error_message") or item.get("status")
                _settle(job, TerminalError(f"{self.system}: product {job.record.get('sku')}: bulk {uuid}: {why}"))
            else:
                open_jobs[index] = job
        self.log.debug("%s: bulk %s sent with %d operations", self.system, uuid, len(jobs))
        await self._await_bulk(uuid, open_jobs)

    def _fits_bulk(self, job: _Job) -> bool:
        """Whether a gathered product's body fits Magento's schema; one that does not fails alone, unsent,
        so it never makes Magento refuse the whole bulk."""
        try:
            self._hold_to_schema("product.post", {"product": job.record})
        except TerminalError as exc:
            _settle(job, exc)
            return False
        return True

    async def _send_alone(self, job: _Job) -> None:
        try:
            await self._send_bulk([job])
        except SeamlineError as exc:
            _settle(job, exc)

    async def _await_bulk(self, uuid: str, jobs: dict[int, _Job]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        wait = self._poll
        first = True
        while jobs:
            if not first:
                await asyncio.sleep(max(0.0, min(wait, deadline - loop.time())))
                wait = min(wait * 2, POLL_CEILING)
            first = False
            try:
                status = await self._call("bulk.status", {"bulkUuid": uuid})
            except TransientError as exc:
                if loop.time() < deadline:
                    continue
                raise TransientError(f"{self.system}: bulk {uuid}: cannot read its status: {exc}") from exc
            except TerminalError as exc:
                # Accepted operations may have run: the runtime sends them again (an upsert repeats safely).
                raise TransientError(f"{self.system}: bulk {uuid}: cannot read its status: {exc}") from exc
            for index, operation in _operations(status, sorted(jobs)).items():
                result = self._bulk_result(uuid, index, operation, jobs[index].record)
                if result is not None:
                    _settle(jobs.pop(index), result)
            if jobs and loop.time() >= deadline:
                raise TransientError(
                    f"{self.system}: bulk {uuid}: {len(jobs)} operation(s) still open after {self.timeout:g}s; "
                    "is Magento's async.operations.all consumer running? "
                    "(bin/magento queue:consumers:start async.operations.all)"
                )

    def _bulk_result(
        self, uuid: str, index: int, operation: Mapping[str, Any], record: Mapping[str, Any]
    ) -> str | SeamlineError | None:
        """One operation's outcome for its write; None while it is still open."""
        status = operation.get("status")
        sku = record.get("sku")
        message = operation.get("result_message") or ""
        where = f"{self.system}: product {sku}: bulk {uuid} operation {index}"
        if status == COMPLETE:
            return f"product {sku}: bulk {uuid} operation {index} complete"
        if status == RETRIABLY_FAILED:
            return TransientError(f"{where} failed, retriably: {message}")
        if status == FAILED:
            return TerminalError(f"{where} failed: {message}")
        if status == REJECTED:
            return TerminalError(f"{where} was rejected: {message}")
        return None

    # -- inventory and prices -------------------------------------------------------------------
    async def _write_source_item(self, entity: str, record: dict[str, Any], mode: str, _reference: str) -> str:
        self._no_delete(entity, mode)
        sku = self._required(record, "sku", entity)
        await self._call("source-items", {"sourceItems": [record]})
        return f"source item {sku}@{record.get('source_code')} saved"

    async def _write_price(self, entity: str, record: dict[str, Any], mode: str, _reference: str) -> str:
        self._no_delete(entity, mode)
        sku = self._required(record, "sku", entity)
        answer = await self._call(entity, {"prices": [record]})
        if isinstance(answer, list) and answer:
            reasons = [
                _fill(str(f.get("message", "")), f.get("parameters")) if isinstance(f, dict) else str(f) for f in answer
            ]
            raise TerminalError(f"{self.system}: {entity} for {sku}: Magento refused it: {'; '.join(reasons)}")
        return f"{_PRICES[entity]} {sku} saved"

    # -- customers and companies ----------------------------------------------------------------
    async def _write_customer(self, entity: str, record: dict[str, Any], mode: str, _reference: str) -> str:
        self._no_delete(entity, mode)
        email = self._required(record, "email", entity)
        if mode == "create":
            answer = await self._call("customer.create", {"customer": record})
            return f"customer id={_id(answer)} created"
        found, how = await self._find_customer(record)
        if found is None:
            if mode == "update":
                raise TerminalError(f"{self.system}: no customer with email {email!r} to update (mode update)")
            answer = await self._call("customer.create", {"customer": record})
            return f"customer id={_id(answer)} created"
        # Magento's PUT replaces the customer: what the record leaves out of its required fields is kept.
        kept = {k: found[k] for k in ("email", "firstname", "lastname", "website_id", "group_id") if k in found}
        customer_id = self._key_of(found, "id", "customer")
        answer = await self._call("customer.update", {"customer": {**kept, **record, "id": customer_id}})
        return f"customer id={_id(answer)} updated (matched by {how})"

    async def _find_customer(self, record: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
        scope: list[Filter] = []
        if record.get("website_id") is not None:
            scope.append(magento_condition("website_id", record["website_id"]))
        found = await self._search("customers.list", [("email", str(record["email"]), "eq"), *scope])
        if found:
            return found[0], "email"
        taxvat = record.get("taxvat")
        if taxvat in (None, ""):
            return None, ""
        found = await self._search("customers.list", [("taxvat", str(taxvat), "eq"), *scope])
        if len(found) > 1:
            raise TerminalError(
                f"{self.system}: {len(found)} customers share taxvat {taxvat!r} and none has email "
                f"{record['email']!r}; cannot tell which one to update"
            )
        return (found[0], "taxvat") if found else (None, "")

    async def _write_company(self, entity: str, record: dict[str, Any], mode: str, _reference: str) -> str:
        self._no_delete(entity, mode)
        if self._b2b is False and self.options.b2b == "no":
            raise TerminalError(
                f"{self.system}: companies need Adobe Commerce B2B, and this system is declared with b2b: no"
            )
        if self._b2b is False:
            raise self._no_b2b("companies.list")
        email = self._required(record, "company_email", entity)
        try:
            existing = (
                [] if mode == "create" else await self._search("companies.list", [("company_email", email, "eq")])
            )
            self._b2b = True
            if existing:
                # Magento's PUT replaces the company: what it requires and the record leaves out is kept.
                kept = {k: existing[0][k] for k in COMPANY_KEPT if existing[0].get(k) is not None}
                given = {k: v for k, v in record.items() if v is not None or k not in kept}
                body = {**kept, **given, "id": self._key_of(existing[0], "id", "company")}
                answer = await self._call("company.update", {"company": _company_body(body, None)})
                return f"company id={_id(answer)} updated"
            if mode == "update":
                raise TerminalError(f"{self.system}: no company with email {email!r} to update (mode update)")
            super_user_id = None
            if record.get("super_user_id") is None:
                admins = await self._search("customers.list", [("email", email, "eq")])
                if not admins:
                    raise TerminalError(
                        f"{self.system}: company {record.get('company_name')!r} needs a super user (its admin "
                        f"customer) and no customer has its email {email!r}; write the customer first or set "
                        "super_user_id"
                    )
                super_user_id = self._key_of(admins[0], "id", "customer")
            body = _company_body(record, super_user_id)
            answer = await self._call("company.create", {"company": body})
            return f"company id={_id(answer)} created"
        except TerminalError as exc:
            if exc.status == 404 and NO_ROUTE in str(exc):
                self._b2b = False
                raise self._no_b2b("companies.list") from exc
            raise

    def _no_b2b(self, route: str) -> TerminalError:
        endpoint = self._endpoints[route]
        return TerminalError(
            f"{self.system}: this Magento has no B2B module: {endpoint['method']} {endpoint['path']} answered 404 "
            "'Request does not match any route.' (Magento Open Source has no companies); companies need Adobe "
            "Commerce with B2B — remove the companies target for this system, or set b2b: no to say so",
            status=404,
        )

    # -- orders -----------------------------------------------------------------------------------
    async def _order_ref(self, record: Mapping[str, Any]) -> tuple[int, dict[str, Any] | None, str]:
        """(entity_id, the order when it had to be looked up, how to name it) for an order entity's record."""
        raw = record.get("order_id")
        if raw not in (None, ""):
            try:
                return int(raw), None, f"order id={int(raw)}"
            except (TypeError, ValueError):
                raise TerminalError(f"{self.system}: order_id {raw!r} is not a number") from None
        increment = record.get("increment_id")
        if increment in (None, ""):
            raise TerminalError(f"{self.system}: the record names no order: give increment_id or order_id")
        found = await self._search("orders.list", [("increment_id", str(increment), "eq")])
        if not found:
            raise TerminalError(f"{self.system}: no order with increment_id {increment!r}", status=404)
        return self._key_of(found[0], "entity_id", "order"), found[0], f"order {increment}"

    async def _write_order_comment(self, entity: str, record: dict[str, Any], mode: str, reference: str) -> str:
        """A status history entry; an internal one (neither shown nor e-mailed to the customer) carries
        ``reference`` on its last line, so that a resend can be checked (see ``find_effect``)."""
        self._no_delete(entity, mode)
        order_id, _, name = await self._order_ref(record)
        await self._call("order.comment", {"statusHistory": _history_body(record, order_id, reference)})
        return f"{name}: comment added"

    async def _write_order_document(self, entity: str, record: dict[str, Any], mode: str, reference: str) -> str:
        """An invoice, shipment or credit memo: the record is the route's body plus its order; its comment
        carries ``reference`` unless the customer sees that comment (see ``find_effect``)."""
        self._no_delete(entity, mode)
        document = _DOCUMENTS[entity]
        order_id, _, name = await self._order_ref(record)
        body = _referenced_document({k: v for k, v in record.items() if k not in ORDER_REF}, reference)
        answer = await self._call(document.create, {**body, "orderId": order_id})
        return f"{name}: {document.kind} id={answer}"

    async def _write_order_status(self, entity: str, record: dict[str, Any], mode: str, _reference: str) -> str:
        self._no_delete(entity, mode)
        order_id, order, name = await self._order_ref(record)
        if order is None:
            order = await self._call("order.get", {"id": order_id})
            if not isinstance(order, dict):
                raise TerminalError(f"{self.system}: {name}: the answer is not an order")
        notify = bool(record.get("notify", False))
        done: list[str] = []
        if record.get("invoiced") and _left(order, "qty_invoiced"):
            invoice = {"orderId": order_id, "capture": bool(record.get("capture", False)), "notify": notify}
            done.append(f"invoice id={await self._call('order.invoice', invoice)}")
        if record.get("shipped") and _left(order, "qty_shipped"):
            body: dict[str, Any] = {"orderId": order_id, "notify": notify}
            if record.get("tracks"):
                body["tracks"] = record["tracks"]
            if record.get("shipped_on"):
                body["appendComment"] = False
                body["comment"] = {"comment": f"Shipped on {record['shipped_on']}", "is_visible_on_front": 0}
            done.append(f"shipment id={await self._call('order.ship', body)}")
        comment, status = record.get("comment"), record.get("status")
        if (comment or status) and (done or not _already_said(order, comment, status)):
            history: dict[str, Any] = {
                "comment": comment or "",
                "is_customer_notified": int(notify),
                "is_visible_on_front": int(bool(record.get("visible_on_front", False))),
                "parent_id": order_id,
            }
            if status:
                history["status"] = status
            await self._call("order.comment", {"statusHistory": history})
            done.append(f"comment ({status})" if status else "comment")
        return f"{name} id={order_id}: " + (", ".join(done) if done else "already up to date")

    # -- once-only writes: finding an earlier effect ---------------------------------------------
    async def _order_for_check(self, record: Mapping[str, Any]) -> tuple[int, str] | None:
        """(entity_id, how to name it) of the record's order; None when Magento has no such order."""
        try:
            order_id, _, name = await self._order_ref(record)
        except TerminalError as exc:
            if exc.status == 404:
                return None
            raise
        return order_id, name

    async def _find_order_comment(self, record: Mapping[str, Any], reference: str) -> str | None:
        """An internal comment: one of the order's comments carries ``reference``. One the customer sees
        (it carries no reference): one has the same text and, when the record names one, the same status."""
        found = await self._order_for_check(record)
        if found is None:
            return None
        order_id, name = found
        try:
            answer = await self._call("order.comments", {"id": order_id})
        except TerminalError as exc:
            if exc.status == 404:
                return None
            raise
        items = answer.get("items") if isinstance(answer, dict) else None
        histories = [h for h in items if isinstance(h, dict)] if isinstance(items, list) else []
        if not _history_seen_by_customer(record):
            hits = [h for h in histories if reference in str(h.get("comment") or "")]
            how = f"it carries {reference}"
        else:
            text, status = str(record.get("comment") or "").strip(), record.get("status")
            hits = [
                h
                for h in histories
                if str(h.get("comment") or "").strip() == text and status in (None, "", h.get("status"))
            ]
            how = "same text and status"
        if not hits:
            return None
        return f"{name}: comment already there (history id={hits[0].get('entity_id')}; {how})"

    async def _find_document(self, document: _Document, record: Mapping[str, Any], reference: str) -> str | None:
        """The order's invoice, shipment or credit memo that an earlier attempt of this write made, if any."""
        found = await self._order_for_check(record)
        if found is None:
            return None
        order_id, name = found
        body = {k: v for k, v in record.items() if k not in ORDER_REF}
        documents = await self._documents(document, order_id)
        newest_first = sorted(documents, key=lambda d: int(d.get("entity_id") or 0), reverse=True)
        if not _document_seen_by_customer(body):
            hits = [d for d in newest_first if any(reference in text for text in _comment_texts(d))]
            how = f"it carries {reference}"
        elif _fingerprinted(body):
            hits = [d for d in newest_first if _same_content(body, d)]
            how = "same items, tracks and comment"
        else:
            order = await self._call("order.get", {"id": order_id})
            left = isinstance(order, dict) and _left(order, document.done, document.limit)
            hits = [] if left else newest_first[:1]
            how = f"the order has nothing left for another {document.kind}"
        if not hits:
            return None
        return f"{name}: {document.kind} id={hits[0].get('entity_id')} already there ({how})"

    async def _documents(self, document: _Document, order_id: int) -> list[dict[str, Any]]:
        """Every document of one kind on the order, each with its comments (fetched one by one when the
        list leaves them out)."""
        listed: list[dict[str, Any]] = []
        page = 1
        while True:
            criteria = magento_criteria([("order_id", str(order_id), "eq")], ["entity_id"], DOCUMENTS_PAGE, page)
            body = await self._call(document.listing, dict(criteria))
            items = body.get("items") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise TerminalError(f"{self.system}: listing the {document.kind}s of order id={order_id}: no items")
            listed += [item for item in items if isinstance(item, dict)]
            total = body.get("total_count")
            if not items or len(items) < DOCUMENTS_PAGE or (isinstance(total, int) and len(listed) >= total):
                break
            page += 1
        for item in listed:
            if not isinstance(item.get("comments"), list):
                answer = await self._call(document.comments, {"id": self._key_of(item, "entity_id", document.kind)})
                comments = answer.get("items") if isinstance(answer, dict) else None
                item["comments"] = comments if isinstance(comments, list) else []
        return listed

    # -- requests -------------------------------------------------------------------------------
    async def _call(self, route: str, request: Any) -> Any:
        """One request on the route's method and path; returns its JSON (None for an empty body).

        ``{name}`` placeholders in the path come from ``request`` (dotted ones read inside it); a GET sends
        the request's other plain fields as its query, any other method sends the request as the JSON body.
        A write's body is held to Magento's published schema first (:data:`REQUEST_ROUTES`): one that
        breaks it is a TerminalError naming each problem, and is never sent. With an admin token, a 401
        fetches a new token once (the kit's TokenAuth)."""
        self._hold_to_schema(route, request)
        endpoint = self._endpoints[route]
        method, path = endpoint["method"], endpoint["path"]
        try:
            url = fill_path(path, request)
        except MissingValue as missing:
            keys = ", ".join(sorted(request)) if isinstance(request, dict) else type(request).__name__
            raise TerminalError(
                f"{self.system}: '{route}' needs '{missing.name}' for its path {path}, "
                f"and the record has no such plain value (it has: {keys or 'nothing'})"
            ) from None
        params: list[tuple[str, str]] = []
        body: Any = NO_BODY
        if method == "GET":
            used = placeholders(path)
            if isinstance(request, dict):
                params = [
                    (k, query_value(v))
                    for k, v in request.items()
                    if k not in used and v is not None and not isinstance(v, dict)
                ]
        elif method != "DELETE":
            body = request
        response = await self.http.send(method, url, params=params, json=body)
        if not response.ok:
            raise self.http.error(response)
        return self.http.json(response, allow_empty=True)

    def _hold_to_schema(self, route: str, request: Any) -> None:
        schema_route = REQUEST_ROUTES.get(route)
        if schema_route is None:
            return
        problems = request_problems(schema_route, request)
        if problems:
            endpoint = self._endpoints[route]
            raise TerminalError(
                f"{self.system}: {endpoint['method']} {_filled(endpoint['path'], request)}: the body would break "
                f"Magento's schema, not sent: {_shown([str(p) for p in problems])}"
            )

    async def _list(self, route: str, params: dict[str, str]) -> Any:
        try:
            return await self._call(route, params)
        except TerminalError as exc:
            if exc.status == 404 and NO_ROUTE in str(exc) and route == "companies.list":
                self._b2b = False
                raise self._no_b2b(route) from exc
            raise

    async def _search(self, route: str, filters: list[Filter], size: int = 2) -> list[dict[str, Any]]:
        body = await self._list(route, dict(magento_criteria(filters, [], size, 1)))
        items = body.get("items") if isinstance(body, dict) else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    async def _admin_token(self) -> Token[str]:
        """POST /rest/V1/integration/admin/token (neither the request nor the answer is logged)."""
        admin = self.options.auth.admin
        assert admin is not None
        where = "admin token (POST /rest/V1/integration/admin/token)"
        response = await self.http.send(
            "POST",
            "/rest/V1/integration/admin/token",
            json={"username": admin.username, "password": admin.password},
            what=where,
            sensitive=True,
            authorize=False,
        )
        try:
            body: Any = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        status = response.status
        if status == 200 and isinstance(body, str) and body:
            self.http.remember_secret(body)
            self.log.debug("%s: admin token fetched", self.system)
            return Token(body)  # Magento does not say how long it lasts: kept until a request is answered 401
        message = self._mask(server_message(body, response.text) or response.reason)
        text = f"{self.system}: {where} -> {status}: {message}"
        if transient_status(status):
            raise status_error(text, status, response.header)
        if status == 200:
            raise TerminalError(f"{self.system}: {where}: the answer is not a token: {message}")
        if "2fa" in message.lower():
            hint = "this Magento has two-factor auth on (Magento_TwoFactorAuth): use an integration (auth: oauth1)"
        elif status == 401:
            hint = (
                f"check the username ('{admin.username}') and password; "
                "Magento locks the user for 30 minutes after 6 failures"
            )
        else:
            hint = "check the url (the token route is under /rest)"
        raise TerminalError(f"{text} ({hint})", status=status)

    # -- small helpers ----------------------------------------------------------------------------
    def _mask(self, text: str) -> str:
        return self.http.mask(text)

    def _key_of(self, item: Mapping[str, Any], name: str, what: str) -> int:
        """The id of an entity Magento found; a search answer without it is terminal, not a crash."""
        try:
            return int(item[name])
        except (KeyError, TypeError, ValueError):
            raise TerminalError(f"{self.system}: Magento found the {what} but its answer has no {name}") from None

    def _required(self, record: Mapping[str, Any], name: str, entity: str) -> str:
        value = record.get(name)
        if value in (None, "") or isinstance(value, dict | list):
            raise TerminalError(f"{self.system}.{entity}: the record has no {name} (it has: {', '.join(record)})")
        return str(value)

    def _no_delete(self, entity: str, mode: str) -> None:
        if mode in ("delete", "disable"):
            raise TerminalError(
                f"{self.system}.{entity}: mode '{mode}' is not supported (only products are disabled, "
                "never deleted; other entities are not removed by seamline)"
            )

    def _unknown(self, name: str, use: str, known: Mapping[str, Any]) -> TerminalError:
        near = closest(name, known)
        hint = f" — did you mean '{near}'?" if near else ""
        return TerminalError(f"{self.system}: magento cannot {use} '{name}'{hint} (it can: {', '.join(sorted(known))})")

    WRITES: ClassVar[Mapping[str, Writer]] = {
        "products": _write_product,
        "source-items": _write_source_item,
        "base-prices": _write_price,
        "tier-prices": _write_price,
        "special-prices": _write_price,
        "customers": _write_customer,
        "companies": _write_company,
        "order-comments": _write_order_comment,
        "invoices": _write_order_document,
        "shipments": _write_order_document,
        "credit-memos": _write_order_document,
        "order-status": _write_order_status,
    }


_PRICES: Final = {"base-prices": "base price", "tier-prices": "tier price", "special-prices": "special price"}


@dataclass(frozen=True, slots=True)
class _Document:
    """How one kind of order document is made, listed and counted."""

    create: str  # the route that makes it (POST /V1/order/{orderId}/ship ...)
    kind: str  # its name in receipts
    listing: str  # the searchCriteria route that lists them (filtered on order_id)
    comments: str  # the route that lists one document's comments
    done: str  # the order item quantity it adds to
    limit: str  # ... up to this one


_DOCUMENTS: Final = {
    "invoices": _Document(
        "order.invoice", "invoice", "invoices.list", "invoice.comments", "qty_invoiced", "qty_ordered"
    ),
    "shipments": _Document(
        "order.ship", "shipment", "shipments.list", "shipment.comments", "qty_shipped", "qty_ordered"
    ),
    "credit-memos": _Document(
        "order.refund", "credit memo", "creditmemos.list", "creditmemo.comments", "qty_refunded", "qty_invoiced"
    ),
}


def _operations(status: Any, indexes: list[int]) -> dict[int, Mapping[str, Any]]:
    """Operations of a bulk status by their index in the request.

    Magento numbers a bulk's operations by their position in the request (``operation_key``); if the
    ids do not look like that (an older build numbering them by table row), they are taken in order.
    """
    listed = [
        op for op in (status.get("operations_list") if isinstance(status, dict) else None) or [] if isinstance(op, dict)
    ]
    by_id = {op.get("id"): op for op in listed}
    if all(index in by_id for index in indexes):
        return {index: by_id[index] for index in indexes}
    ordered = sorted(listed, key=lambda op: int(op.get("id") or 0))
    return {index: ordered[index] for index in indexes if index < len(ordered)}


def _id(answer: Any) -> str:
    if isinstance(answer, dict):
        for name in ("id", "entity_id"):
            if answer.get(name) is not None:
                return str(answer[name])
    return "?"
