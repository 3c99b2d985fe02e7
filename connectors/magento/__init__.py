"""Adobe Commerce / Magento 2.4 over its REST API.

Declared here: the options a ``magento`` system takes and the entities a flow may read or write.
Operation names follow the REST resources in Magento 2.4.8's published schema
(../shared/reference/magento/): ``products`` is ``PUT /V1/products/{sku}``, ``source-items`` is
``POST /V1/inventory/source-items``, and so on.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.connector import BearerAuth, ConnectorKind, OAuth1Auth, SystemOptions, Url

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


class MagentoOptions(SystemOptions):
    url: Url = Field(description="Base URL of the store, without /rest.", examples=["https://shop.example.com"])
    auth: MagentoAuth
    store_code: str = Field("default", description="Store view for /rest/<store_code>/V1/...; 'all' for global scope.")
    bulk: bool = Field(False, description="Send batch writes through /async/bulk/V1/... and poll the bulk status.")
    page_size: int = Field(100, ge=1, le=1000, description="searchCriteria[pageSize] for reads.")
    b2b: Literal["auto", "yes", "no"] = Field(
        "auto", description="Whether the instance has the B2B modules (companies); 'auto' asks it."
    )


CONNECTOR = ConnectorKind(
    name="magento",
    options=MagentoOptions,
    description="Adobe Commerce / Magento 2.4 REST API",
    reads=frozenset({"orders", "customers", "products", "companies", "shipments", "invoices"}),
    writes=frozenset(
        {
            "products",
            "source-items",
            "base-prices",
            "tier-prices",
            "special-prices",
            "customers",
            "companies",
            "order-comments",
            "order-status",
            "invoices",
            "shipments",
            "credit-memos",
        }
    ),
)
