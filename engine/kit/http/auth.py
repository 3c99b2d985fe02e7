"""Auth strategies: what a session puts on each request, and what it does when the server answers 401.

::

    Auth (protocol)          authorize(request) sets the credentials; refused(used) after a 401
    ├── HeaderAuth           the same headers on every request: bearer(), basic(), api_key()
    ├── TokenAuth            a token fetched on first use and kept in a TokenCache until it expires;
    │                        a 401 forgets it, and the session sends the request once more with a new one
    │                        (OAuth 2.0 client credentials: oauth2_client_credentials(); a Magento admin
    │                        token; any login that hands out a token)
    └── OAuth1               each request signed (RFC 5849, HMAC-SHA256) by oauthlib

:class:`TokenCache` is the token cache on its own, for a session-like credential that is not a header
(Tryton's login). Every strategy names its secrets, so the session masks them wherever it logs or raises.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

from oauthlib.oauth1.rfc5849 import signature as oauth1_signature  # type: ignore[import-untyped]

from engine.kit.http.wire import sent_url

if TYPE_CHECKING:
    from engine.kit.http.session import Request, Session

__all__ = [
    "Auth",
    "HeaderAuth",
    "OAuth1",
    "Token",
    "TokenAuth",
    "TokenCache",
    "api_key",
    "basic",
    "bearer",
    "oauth1_authorization",
    "oauth1_base_string",
    "oauth2_client_credentials",
]

T = TypeVar("T")


class Auth(Protocol):
    """What a session asks of an auth strategy."""

    credential: str  # what a 401 refused, for the message: "token", "OAuth2 token", "signature"
    hint: str  # what to check when a fresh credential is refused too

    def secrets(self) -> Iterable[str]:
        """Values never to show: the session masks them in logs and errors."""
        ...

    def masked_headers(self) -> Iterable[str]:
        """Header names (lower case) whose values are never logged."""
        ...

    async def authorize(self, request: Request) -> object | None:
        """Put the credentials on ``request``; returns what was used (a token), for ``refused``."""
        ...

    def refused(self, used: object | None) -> bool:
        """The server answered 401 to a request authorized with ``used``: forget it; True when a fresh
        credential may be accepted (the session then sends the request once more)."""
        ...


@dataclass(slots=True)
class HeaderAuth:
    """Credentials that are the same on every request (a bearer token, a user and password, an API key)."""

    headers: dict[str, str]
    values: tuple[str, ...] = ()
    credential: str = "credentials"
    hint: str = ""

    def secrets(self) -> Iterable[str]:
        return self.values

    def masked_headers(self) -> Iterable[str]:
        return [name.lower() for name in self.headers]

    async def authorize(self, request: Request) -> object | None:
        for name, value in self.headers.items():
            request.headers[name.lower()] = value  # a request's header names are lower case
        return None

    def refused(self, used: object | None) -> bool:
        return False  # the same credentials again would be refused again


def bearer(token: str) -> HeaderAuth:
    return HeaderAuth({"Authorization": f"Bearer {token}"}, (token,), "token")


def basic(username: str, password: str) -> HeaderAuth:
    pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return HeaderAuth({"Authorization": f"Basic {pair}"}, (password, pair), "password")


def api_key(header: str, key: str) -> HeaderAuth:
    return HeaderAuth({header: key}, (key,), "API key")


@dataclass(frozen=True, slots=True)
class Token(Generic[T]):
    """A credential and how long it is good for (None: until a server refuses it)."""

    value: T
    lifetime: float | None = None


@dataclass(slots=True)
class TokenCache(Generic[T]):
    """A credential fetched on first use and kept until it is about to expire or is refused.

    ``fetch`` runs once however many requests wait for it (a lock); a token with a lifetime is
    renewed a little early (10% of its lifetime, at most 30 s), so a request never leaves with one
    that expires on the way.
    """

    fetch: Callable[[], Awaitable[Token[T]]]
    value: T | None = None
    expires_at: float = 0.0
    fetched: int = 0  # how many times a credential was fetched
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def fresh(self) -> T | None:
        if self.value is not None and time.monotonic() < self.expires_at:
            return self.value
        return None

    async def get(self) -> T:
        cached = self.fresh()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self.fresh()
            if cached is not None:
                return cached
            token = await self.fetch()
            seconds = token.lifetime
            if seconds is None:
                self.expires_at = float("inf")  # no expiry given: keep it until it is refused
            else:
                self.expires_at = time.monotonic() + seconds - min(30.0, seconds * 0.1)
            self.value = token.value
            self.fetched += 1
            return token.value

    def forget(self, used: T) -> None:
        """Drop ``used`` unless another request has already replaced it."""
        if self.value is used or self.value == used:
            self.value = None


@dataclass(slots=True)
class TokenAuth:
    """A fetched token sent as ``<scheme> <token>`` in ``header``; a 401 fetches a new one, once."""

    cache: TokenCache[str]
    scheme: str = "Bearer"
    header: str = "Authorization"
    credential: str = "token"
    hint: str = ""
    fixed_secrets: tuple[str, ...] = ()

    def secrets(self) -> Iterable[str]:
        return self.fixed_secrets

    def masked_headers(self) -> Iterable[str]:
        return [self.header.lower()]

    async def authorize(self, request: Request) -> object | None:
        token = await self.cache.get()
        request.headers[self.header.lower()] = f"{self.scheme} {token}" if self.scheme else token
        return token

    def refused(self, used: object | None) -> bool:
        if isinstance(used, str):
            self.cache.forget(used)
            return True
        return False


def oauth2_client_credentials(
    session: Session,
    *,
    token_url: str,
    client_id: str,
    client_secret: str,
    scope: str | None = None,
    what: str = "OAuth2 token request",
    refused_hint: str = "check client_id, client_secret and scope",
    accepted: Callable[[dict[str, Any]], None] | None = None,
    credential: str = "OAuth2 token",
    hint: str = "",
) -> TokenAuth:
    """OAuth 2.0 client credentials (RFC 6749 4.4): the token is fetched with ``session`` (never logged),
    cached for its ``expires_in``, and fetched again once when a request with it is answered 401.

    ``accepted`` sees the token answer first (Salesforce checks its instance_url there). A refused
    token request is a TerminalError ending with ``refused_hint``; a 408, 429 or 5xx one is transient.
    """

    async def fetch() -> Token[str]:
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
        if scope:
            form["scope"] = scope
        parts = urlsplit(token_url)
        where = f"{what} to {parts.hostname}{parts.path or '/'}"
        response = await session.send("POST", token_url, form=form, what=where, sensitive=True, authorize=False)
        if not response.ok:
            raise session.error(response, where, hint=refused_hint, reason_in_text=False)
        body = session.json(response, where)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise session.terminal(f"{where}: the answer has no access_token")
        session.remember_secret(token)
        if accepted is not None:
            accepted(body)
        lifetime = body.get("expires_in")
        try:
            seconds: float | None = float(lifetime)
        except (TypeError, ValueError):
            seconds = None
        session.logger.debug("%s: %s: token fetched (expires in %s s)", session.system, what, lifetime)
        return Token(token, seconds)

    return TokenAuth(TokenCache(fetch), credential=credential, hint=hint, fixed_secrets=(client_secret,))


def _enc(value: str) -> str:
    """RFC 5849 3.6 percent-encoding: everything but unreserved characters (RFC 3986)."""
    return quote(value, safe="~")


def oauth1_base_string(method: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The RFC 5849 3.4.1 signature base string: method, base URI, and the normalized parameters.

    ``params`` are the decoded parameters that take part (the query's, the oauth_* ones, and a form
    body's); the query in ``url`` is ignored here, so pass its parameters in ``params``.
    """
    base_uri = oauth1_signature.base_string_uri(url)
    normalized = oauth1_signature.normalize_parameters(list(params))
    return str(oauth1_signature.signature_base_string(method.upper(), base_uri, normalized))


_SIGNERS: dict[str, Callable[[str, Any], str]] = {
    "HMAC-SHA256": oauth1_signature.sign_hmac_sha256_with_client,
    "HMAC-SHA1": oauth1_signature.sign_hmac_sha1_with_client,
}


@dataclass(frozen=True, slots=True)
class _SigningKey:
    """The two secrets of an HMAC signature, under the names oauthlib's signers read."""

    client_secret: str
    resource_owner_secret: str


def oauth1_authorization(
    method: str,
    url: str,
    *,
    consumer_key: str,
    consumer_secret: str,
    token: str,
    token_secret: str,
    nonce: str | None = None,
    timestamp: str | None = None,
    signature_method: str = "HMAC-SHA256",
    version: str | None = "1.0",
    body_params: Iterable[tuple[str, str]] = (),
) -> str:
    """The ``Authorization: OAuth ...`` header value for one request, signed per RFC 5849 by oauthlib.

    The query parameters of ``url`` are part of the signature (Magento checks them). HMAC-SHA1 is
    accepted only so the RFC's own test vectors can be checked; integrations sign with HMAC-SHA256.
    """
    sign = _SIGNERS.get(signature_method)
    if sign is None:
        raise ValueError(f"unsupported OAuth 1.0a signature method {signature_method!r}; use HMAC-SHA256")
    oauth = {
        "oauth_consumer_key": consumer_key,
        "oauth_nonce": nonce or secrets.token_hex(16),
        "oauth_signature_method": signature_method,
        "oauth_timestamp": timestamp or str(int(time.time())),
        "oauth_token": token,
    }
    if version is not None:
        oauth["oauth_version"] = version
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    base = oauth1_base_string(method, url, [*query, *oauth.items(), *body_params])
    oauth["oauth_signature"] = sign(base, _SigningKey(consumer_secret, token_secret))
    return "OAuth " + ", ".join(f'{k}="{_enc(v)}"' for k, v in sorted(oauth.items()))


@dataclass(slots=True)
class OAuth1:
    """OAuth 1.0a, every request signed with HMAC-SHA256 (a Magento integration's credentials)."""

    consumer_key: str
    consumer_secret: str
    token: str
    token_secret: str
    credential: str = "OAuth 1.0a signature"
    hint: str = "check the integration's consumer and access token secrets"

    def secrets(self) -> Iterable[str]:
        return (self.consumer_secret, self.token_secret, self.token)

    def masked_headers(self) -> Iterable[str]:
        return ("authorization",)

    async def authorize(self, request: Request) -> object | None:
        body_params: list[tuple[str, str]] = []
        if request.header("Content-Type", "").startswith("application/x-www-form-urlencoded") and request.body:
            body_params = parse_qsl(request.body.decode(), keep_blank_values=True)
        request.headers["authorization"] = oauth1_authorization(
            request.method,
            sent_url(request.url),
            consumer_key=self.consumer_key,
            consumer_secret=self.consumer_secret,
            token=self.token,
            token_secret=self.token_secret,
            body_params=body_params,
        )
        return None

    def refused(self, used: object | None) -> bool:
        return False
