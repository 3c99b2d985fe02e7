"""The options every HTTP-based system takes besides its own: proxy, TLS and caps on an answer.

A connector's options model declares them by subclassing :class:`WireOptions` beside
:class:`~engine.connector.SystemOptions` (``class HttpOptions(SystemOptions, WireOptions)``); the JSON
Schema and the docs come from these fields. Example::

    systems:
      erp:
        connector: http
        url: https://erp.example.com
        proxy: http://proxy.corp.example:3128     # or 'direct'; default 'environment' (HTTPS_PROXY, NO_PROXY)
        tls:
          ca_bundle: certs/corp-ca.pem           # trust this CA for this system (relative to the spec file)
          client_cert: certs/seamline.pem        # mTLS: the certificate seamline shows
          client_key: certs/seamline.key
        max_response_size: 32MiB                 # an answer as sent
        max_decoded_size: 128MiB                 # an answer once gzip/deflate is undone

This module is imported when a spec is validated: it imports no HTTP machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from engine.connector import Size, parse_size
from engine.kit.http.proxy import ENVIRONMENT, check_proxy_setting

__all__ = ["ProxySetting", "TlsOptions", "WireOptions", "WireSettings", "wire_settings"]

DEFAULT_MAX_RESPONSE = "32MiB"
DEFAULT_MAX_DECODED = "128MiB"

ProxySetting = Annotated[
    str,
    AfterValidator(check_proxy_setting),
    Field(
        description=(
            "How this system's requests reach it: 'environment' (the default) goes through the proxy "
            "HTTPS_PROXY / HTTP_PROXY name unless NO_PROXY exempts the host; 'direct' never uses a proxy; "
            "an http:// URL (with user:password@ when the proxy asks for them) sends every request through "
            "that proxy. https URLs go through an http proxy in a CONNECT tunnel, TLS end to end."
        ),
        examples=["environment", "direct", "http://proxy.corp.example:3128"],
    ),
]


class TlsOptions(BaseModel):
    """How seamline checks this system's certificate, and the certificate it shows (mutual TLS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ca_bundle: str | None = Field(
        None,
        description="PEM file of the CA certificates trusted for this system, instead of the machine's (a private "
        "or corporate CA). A relative path is relative to the folder of the spec file that declares the system.",
        examples=["certs/corp-ca.pem"],
    )
    client_cert: str | None = Field(
        None,
        description="PEM file of the client certificate seamline presents when the server asks for one (mutual "
        "TLS); it may hold the private key too.",
        examples=["certs/seamline-erp.pem"],
    )
    client_key: str | None = Field(
        None,
        description="PEM file of the client certificate's private key, when client_cert does not hold it.",
        examples=["certs/seamline-erp.key"],
    )
    client_key_password: str | None = Field(
        None, description="Password of an encrypted client_key; write it as '{{ secret.NAME }}'."
    )

    @model_validator(mode="after")
    def _key_needs_a_cert(self) -> Self:
        if (self.client_key is not None or self.client_key_password is not None) and self.client_cert is None:
            raise ValueError("client_key and client_key_password go with a client_cert; set client_cert too")
        return self


class WireOptions(BaseModel):
    """Proxy, TLS and answer caps of an HTTP-based system (mixed into its connector's options model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    proxy: ProxySetting = ENVIRONMENT
    tls: TlsOptions | None = Field(
        None, description="A CA bundle to trust and a client certificate to present (mTLS), for https URLs."
    )
    max_response_size: Size = Field(
        DEFAULT_MAX_RESPONSE,
        description="Largest answer read from this system, as it comes over the wire; a larger one is refused "
        "(a terminal error naming this option) and its connection closed.",
        examples=["32MiB", "200MiB"],
    )
    max_decoded_size: Size = Field(
        DEFAULT_MAX_DECODED,
        description="Largest answer once its gzip or deflate encoding is undone; decoding stops there, so a "
        "small compressed answer that inflates without end (a 'zip bomb') costs at most this much memory.",
        examples=["128MiB", "1GiB"],
    )


@dataclass(frozen=True, slots=True)
class WireSettings:
    """What the session needs of a system's wire options, read from any options model."""

    proxy: str = ENVIRONMENT
    tls: TlsOptions | None = None
    max_response: int = parse_size(DEFAULT_MAX_RESPONSE)
    max_decoded: int = parse_size(DEFAULT_MAX_DECODED)


def wire_settings(options: Any) -> WireSettings:
    """The wire settings of a connector's options: its :class:`WireOptions` fields, or the defaults for an
    options model that has not taken them (yet)."""
    tls = getattr(options, "tls", None)
    return WireSettings(
        proxy=str(getattr(options, "proxy", ENVIRONMENT) or ENVIRONMENT),
        tls=tls if isinstance(tls, TlsOptions) else None,
        max_response=parse_size(str(getattr(options, "max_response_size", DEFAULT_MAX_RESPONSE))),
        max_decoded=parse_size(str(getattr(options, "max_decoded_size", DEFAULT_MAX_DECODED))),
    )
