"""A generic REST system: endpoints named in the spec, with auth, pagination and retries."""

from __future__ import annotations

from typing import Literal, Self

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

__all__ = ["CONNECTOR", "HttpOptions"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpAuth(_Strict):
    """Exactly one of the supported schemes."""

    bearer: BearerAuth | None = None
    basic: BasicAuth | None = None
    oauth2: OAuth2ClientCredentials | None = None
    oauth1: OAuth1Auth | None = None
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


class Pagination(_Strict):
    style: Literal["none", "page", "offset", "next-link", "cursor", "odata", "magento"] = "none"
    page_size: int = Field(100, ge=1, le=10000)
    page_param: str = "page"
    size_param: str = "size"
    items: str = Field("items", description="Where the records are in a response body (a dotted path).")
    next: str | None = Field(None, description="Where the next link or cursor is, for next-link/cursor styles.")


class Endpoint(_Strict):
    path: str = Field(description="Path under the system's url; {name} placeholders come from the record.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    pagination: Pagination | None = None


class HttpOptions(SystemOptions):
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


CONNECTOR = ConnectorKind(
    name="http",
    options=HttpOptions,
    description="Any REST API: endpoints, auth, pagination and retries declared in the spec",
)
