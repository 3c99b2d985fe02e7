"""Adobe Commerce / Magento 2.4 over its REST API.

Declared here: the options a ``magento`` system takes and the entities a flow may read or write.
Operation names follow the REST resources in Magento 2.4.8's published schema
(../shared/reference/magento/): ``products`` is ``PUT /V1/products/{sku}``, ``source-items`` is
``POST /V1/inventory/source-items``, and so on.

Runnable: :mod:`connectors.magento.client` implements the connection (opened lazily, so validating a
spec never imports httpx); its docstring says what each entity's record looks like, how each is
written and read, and how Magento's answers become errors. Every request body it sends is held to
Magento's published request schema, to the letter (:mod:`connectors.magento.schema`, fed by
``schema_requests.json``, derived from the reference by :mod:`connectors.magento.derive_schema`).
:mod:`connectors.magento.fake` is a real HTTP server that behaves like Magento for tests and demos, and
refuses what that schema refuses; ``seamline fake magento`` serves it from the command line.

Once-only writes (``once_only``): ``order-comments``, ``invoices``, ``shipments`` and ``credit-memos``
each add a document or a comment to an order every time they are sent, so a resend whose earlier
outcome is unknown is first checked with the connection's ``find_effect`` (the rule per entity is in
:mod:`connectors.magento.client`). ``order-status`` is not one of them: it reads the order and does
only what is missing (an invoice while something is left to invoice, a shipment while something is
left to ship, its comment unless the order already says it since it entered that status), so sending
it again changes nothing. Every other entity is a PUT or an upsert by its key.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.connector import (
    BearerAuth,
    ConnectorKind,
    Duration,
    OAuth1Auth,
    SystemOptions,
    Url,
)
from engine.kit.http.options import WireOptions

__all__ = ["CONNECTOR", "MagentoOptions"]


class AdminTokenAuth(BaseModel):
    """An admin user's token from POST /V1/integration/admin/token (expires; refreshed once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    username: str
    password: str = Field(description="Write it as '{{ secret.NAME }}'.")


class MagentoAuth(BaseModel):
    """Exactly one way to authenticate: an integration's OAuth 1.0a, an admin token, or a bearer token."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    oauth1: OAuth1Auth | None = None
    admin: AdminTokenAuth | None = None
    bearer: BearerAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [name for name in ("oauth1", "admin", "bearer") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"auth needs exactly one of oauth1, admin, bearer (found {', '.join(chosen) or 'none'})")
        return self


class MagentoOptions(SystemOptions, WireOptions):
    url: Url = Field(description="Base URL of the store, without /rest.", examples=["https://shop.example.com"])
    auth: MagentoAuth
    store_code: str = Field(
        "default",
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description=(
            "Store view for /rest/<store_code>/V1/...; 'all' writes the catalog (products, prices, source "
            "items) at global scope, and everything else then goes to the default store (/rest/V1/...)."
        ),
        examples=["default", "de", "all"],
    )
    bulk: bool = Field(
        False,
        description=(
            "Products go through Magento's bulk API: concurrent writes are gathered for bulk_wait or up to "
            "bulk_size records into one POST /async/bulk/V1/products, then the bulk status is polled and each "
            "write answers with its own operation's result. Needs Magento's async.operations.all consumer "
            "running, and the system's limits.timeout must cover its delay."
        ),
    )
    bulk_size: int = Field(
        100, ge=1, le=5000, description="Most records in one bulk request (Magento's async limit is 5000)."
    )
    bulk_wait: Duration = Field("50ms", description="How long the first write of a bulk waits for others to join it.")
    bulk_poll: Duration = Field(
        "500ms", description="First wait between bulk status polls; it grows to 5s while operations stay open."
    )
    page_size: int = Field(100, ge=1, le=1000, description="searchCriteria[pageSize] for reads.")
    b2b: Literal["auto", "yes", "no"] = Field(
        "auto",
        description=(
            "Whether the instance has the B2B modules (companies); 'auto' learns it from the first company "
            "request (a 404 'Request does not match any route.' means no); 'no' refuses company writes unsent."
        ),
    )


CONNECTOR = ConnectorKind(
    name="magento",
    options=MagentoOptions,
    description="Adobe Commerce / Magento 2.4 REST API",
    connection="connectors.magento.client:MagentoConnection",
    once_only=frozenset({"order-comments", "invoices", "shipments", "credit-memos"}),
    fake="connectors.magento.fake:main",
)
