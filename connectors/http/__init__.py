"""A generic REST system: endpoints named in the spec, with auth and pagination.

Runnable: :mod:`connectors.http.client` implements the connection over the HTTP kit
(:mod:`engine.kit.http`: session, auth, errors, pagination, wire; opened lazily, so validating a
spec never loads the wire), and :mod:`connectors.http.fake` is a real HTTP server that behaves like
a generic REST API for tests and demos. A system's ``proxy``, ``tls`` (CA bundle, client certificate)
and answer caps are the kit's options (:mod:`engine.kit.http.options`).

Once-only writes: a POST is taken to create something each time it is sent (``once``, default true
for POST, false for PUT, PATCH and DELETE), so when its earlier outcome is unknown (a crash, a timeout)
seamline asks the endpoint's ``check`` before sending it again, and dead-letters it as "outcome unknown"
when the endpoint declares none::

    endpoints:
      shipments:
        path: /orders/{order_id}/shipments
        method: POST                       # once-only by default
        check:
          path: /orders/{order_id}/shipments?idempotency_key={$idempotency_key}
          found: items                     # non-empty: the shipment exists; the write is recorded, not sent
          receipt: items.0.id
      price-sync: { path: /prices, method: POST, once: false }   # the server dedupes on Idempotency-Key

Why POST is once-only by default: a POST that is not deduplicated creates a second sales order or
business partner when resent (SAP's OData services do), and a duplicate is worse than a dead letter a
person can replay. No spec or test here writes with POST to a system that relied on a blind resend;
a system that deduplicates says so with ``once: false``.

How a read passes the cursor (``source.cursor`` and the value to start from):

* ``none``, ``page``, ``offset``, ``next-link``, ``cursor``: a query parameter named by the endpoint's
  ``since_param`` (default ``{field}_gte``, so ``updated_at_gte=2024-01-31T00:00:00Z``); the source's
  ``filter`` entries become further query parameters.
* ``odata``: ``$filter=<field> ge <literal>`` (``datetimeoffset'…'`` for a timestamp with a zone,
  ``datetime'…'`` without one, a quoted string otherwise), and ``$orderby=<field>``.
* ``magento``: a ``searchCriteria`` filter group ``<field> gteq <since>`` and a sort on the field;
  each ``filter`` entry is one more group (``{field: value}`` is ``eq``, ``{field: [a, b]}`` is ``in``,
  ``{field: {condition: value}}`` names the condition; booleans are sent as 1 and 0), built as the
  magento connector builds it (:func:`engine.kit.http.pagination.magento_criteria`).
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.connector import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    Capability,
    ConnectorKind,
    OAuth1Auth,
    OAuth2ClientCredentials,
    SystemOptions,
    Url,
)
from engine.kit.http.options import WireOptions
from engine.kit.http.pagination import Pagination

__all__ = ["CONNECTOR", "HttpOptions"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpAuth(_Strict):
    """Exactly one of the supported schemes."""

    bearer: BearerAuth | None = None
    basic: BasicAuth | None = None
    oauth2: OAuth2ClientCredentials | None = Field(
        None, description="Client credentials: the token is fetched, cached until it expires, refreshed once on a 401."
    )
    oauth1: OAuth1Auth | None = Field(None, description="OAuth 1.0a, HMAC-SHA256 signatures (a Magento integration).")
    api_key: ApiKeyAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [n for n in ("bearer", "basic", "oauth2", "oauth1", "api_key") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "auth needs exactly one of bearer, basic, oauth2, oauth1, api_key "
                f"(found {', '.join(chosen) or 'none'})"
            )
        return self


class EffectCheck(_Strict):
    """How seamline asks the system whether a once-only write already took effect.

    Sent as a GET when a once-only write's earlier attempt has no known outcome (the daemon died while
    it was in flight, or it timed out): found, the write is recorded as done and not sent again; not
    found (the path at ``found`` is missing or empty, or the server answers 404), it is sent.
    """

    path: str = Field(
        description=(
            "Path (and query) of the GET under the system's url. {name} placeholders come from the record "
            "(URL-encoded; dotted names read inside it); {$idempotency_key} is the write's idempotency key, "
            "the Idempotency-Key header its attempts were sent with."
        ),
        examples=["/orders/{order_id}/shipments?idempotency_key={$idempotency_key}", "/sales-orders/{reference}"],
    )
    found: str | None = Field(
        None,
        description="Dotted path in the answer that is non-empty when the effect exists (e.g. items, d.results); "
        "when left out, the answer itself: right for a GET of one resource (a 404 says it is not there), "
        "wrong for a list, whose envelope is never empty: name where its items are.",
        examples=["items", "d.results"],
    )
    receipt: str | None = Field(
        None,
        description="Dotted path of the value recorded as the receipt (e.g. items.0.id); default: the id of "
        "what was found (its id, entity_id or uuid).",
        examples=["items.0.id"],
    )


class Endpoint(_Strict):
    path: str = Field(
        description="Path under the system's url; {name} placeholders come from the record (URL-encoded).",
        examples=["/products/{sku}"],
    )
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    pagination: Pagination | None = None
    schema_: dict[str, Any] | None = Field(
        None,
        alias="schema",
        description="JSON Schema (draft 2020-12) a record must satisfy before it is written here; a record that "
        "does not is dead-lettered with the failing JSON path and never sent.",
    )
    since_param: str = Field(
        "{field}_gte",
        description=(
            "Query parameter that carries the cursor on reads (generic styles); {field} is the source's cursor field."
        ),
    )
    once: bool | None = Field(
        None,
        description=(
            "Whether a write here must happen once: sending it again would do it again (a POST that creates "
            "a document each time). Default: true for POST, false for PUT, PATCH and DELETE. A once-only "
            "write whose earlier outcome is unknown is looked up with `check` before it is sent again, and "
            "dead-lettered as 'outcome unknown' when there is none. Set once: false for a POST the server "
            "deduplicates on the Idempotency-Key header seamline sends, or that is an upsert."
        ),
    )
    check: EffectCheck | None = Field(
        None, description="How to ask whether a once-only write here already took effect (see `once`)."
    )

    @property
    def once_only(self) -> bool:
        """Whether this endpoint's writes are once-only: ``once`` when given, else true for POST."""
        if self.method == "GET":
            return False
        return self.once if self.once is not None else self.method == "POST"

    @model_validator(mode="after")
    def _check_fits(self) -> Self:
        if self.method == "GET" and (self.once or self.check is not None):
            raise ValueError("once and check are for writes; this endpoint is a GET (it is read or called)")
        if self.check is not None and not self.once_only:
            raise ValueError(
                f"check is set, but a {self.method} here is taken as safe to send again, so it is never used; "
                "set once: true to check before a resend, or remove check"
            )
        return self


class HttpOptions(SystemOptions, WireOptions):
    """A REST system: its url, auth, default headers and named endpoints, with the proxy, TLS and answer-size
    options every HTTP-based system has."""

    url: Url
    auth: HttpAuth | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    endpoints: dict[str, Endpoint] = Field(
        default_factory=dict,
        description="Named operations; GET endpoints can be read or called, the others written or called.",
    )

    def declared_operations(self, capability: Capability) -> frozenset[str] | None:
        if capability == "read":
            return frozenset(n for n, e in self.endpoints.items() if e.method == "GET")
        if capability == "write":
            return frozenset(n for n, e in self.endpoints.items() if e.method != "GET")
        if capability == "call":
            return frozenset(self.endpoints)
        return frozenset()

    def declared_once_only(self) -> frozenset[str] | None:
        """The endpoints whose writes are once-only (``once``, by default every POST): the runtime checks
        them with ``check`` before a resend whose earlier outcome is unknown."""
        return frozenset(name for name, endpoint in self.endpoints.items() if endpoint.once_only)


CONNECTOR = ConnectorKind(
    name="http",
    options=HttpOptions,
    description="Any REST API: endpoints, auth and pagination declared in the spec",
    connection="connectors.http.client:HttpConnection",
    fake="connectors.http.fake:main",
    operations_in="endpoints",
)
