"""Tryton ERP (8.0 LTS) over JSON-RPC with session auth, or REST with a bearer key."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.connector import BearerAuth, ConnectorKind, SessionAuth, SystemOptions, Url

__all__ = ["CONNECTOR", "TrytonOptions"]


class TrytonAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    session: SessionAuth | None = None
    bearer: BearerAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.session is None) == (self.bearer is None):
            raise ValueError("auth needs exactly one of session (JSON-RPC login) or bearer (REST key)")
        return self


class TrytonOptions(SystemOptions):
    url: Url = Field(description="Server URL without the database, e.g. http://127.0.0.1:8000.")
    database: str = Field(description="Database name; the API lives at <url>/<database>/rpc/.")
    auth: TrytonAuth
    warehouse: str | None = Field(None, description="Warehouse location code for stock reads and sales.")
    language: str = "en"


CONNECTOR = ConnectorKind(
    name="tryton",
    options=TrytonOptions,
    description="Tryton ERP: products, stock, parties, sales, shipments, invoices",
    reads=frozenset({"products", "stock", "parties", "sales", "shipments", "invoices", "prices"}),
    writes=frozenset({"parties", "sales", "products"}),
    calls=frozenset({"price", "stock", "party"}),
)
