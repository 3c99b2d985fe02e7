"""The http connector's connection: httpx requests over one pooled transport per system (see ``transport.py``).

Who calls what is documented on :class:`engine.connector.Connection`. This module adds how an http
system answers are translated, right where they enter (no httpx exception ever leaves it)::

    timeout (connect, read, write, pool)        TransientError
    connection refused, reset or dropped        TransientError
    408, 425, 429, 5xx                          TransientError  (Retry-After -> retry_after, seconds)
    3xx                                         TerminalError   (redirects are not followed; names the Location)
    401 with oauth2                             the token is fetched again once; a second 401 is a TerminalError
    other 4xx                                   TerminalError   quoting the server's message
    a 2xx body that is not what the endpoint    TerminalError
    declares (not JSON, no items at the path)

The connector never retries on its own (the runtime owns retries, backoff and the breaker); the one
exception is the single token refresh on a 401 with OAuth2 client credentials.

Once-only endpoints (``once``, by default every POST): ``find_effect`` sends the endpoint's ``check``
before a resend whose earlier outcome is unknown (see :mod:`connectors.http`).

Requests and responses are logged on the ``seamline.connectors.http`` logger at DEBUG, with the
Authorization and API-key headers and every secret value masked; a token request and its answer
are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import jsonschema
import jsonschema.exceptions

from connectors.http import Endpoint, HttpOptions, Pagination
from connectors.http.transport import TRANSPORT_ERRORS, PooledTransport, as_httpx_error, as_response, send, translate
from engine.connector import ConnectContext, MessageHandler, OAuth2ClientCredentials, closest, parse_duration
from engine.errors import TerminalError, TransientError
from engine.secrets import Masker

__all__ = [
    "HttpConnection",
    "oauth1_authorization",
    "oauth1_base_string",
    "parse_retry_after",
    "server_message",
]

logger = logging.getLogger("seamline.connectors.http")

DEFAULT_TIMEOUT: Final = 30.0
USER_AGENT: Final = "seamline-http/0.1"
MASK: Final = "***"
_SENSITIVE_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_MAGENTO_PARAM = re.compile(r"%(\w+)")
_LOG_BODY_LIMIT: Final = 1000
_NO_BODY: Final = object()


# -- small pure helpers (exported for tests and for other connectors' inspiration) -----------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds to wait: a number of seconds or an HTTP-date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _substitute(template: str, parameters: Any) -> str:
    """Magento's '%1' (positional) and '%name' (named) placeholders, filled from ``parameters``."""
    positional: list[Any] = parameters if isinstance(parameters, list) else []
    named: dict[str, Any] = {}
    if isinstance(parameters, dict):
        named = dict(parameters)
    for entry in positional:  # the published schema's form: [{"fieldName": ..., "fieldValue": ...}]
        if isinstance(entry, dict):
            named.update(entry)

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.isdigit() and 0 < int(name) <= len(positional) and not isinstance(positional[int(name) - 1], dict):
            return str(positional[int(name) - 1])
        if name in named:
            return str(named[name])
        return match.group(0)

    return _MAGENTO_PARAM.sub(fill, template)


def server_message(body: Any, text: str = "") -> str:
    """The server's own explanation of an error, from the common body shapes; '' when it gave none.

    Magento ``{"message": "... %1", "parameters": [...]}`` (placeholders filled, ``errors`` appended),
    OData ``{"error": {"code", "message": {"value"}}}``, OAuth ``{"error", "error_description"}``,
    RFC 7807 ``{"title", "detail"}``, a bare JSON string, or else the start of the text.
    """
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            result = _substitute(message, body.get("parameters"))
            errors = body.get("errors")
            if isinstance(errors, list):
                details = [
                    _substitute(e["message"], e.get("parameters"))
                    for e in errors
                    if isinstance(e, dict) and isinstance(e.get("message"), str)
                ]
                if details:
                    result += " (" + "; ".join(details) + ")"
            return result
        error = body.get("error")
        if isinstance(error, dict):
            inner = error.get("message")
            if isinstance(inner, dict):
                inner = inner.get("value")
            if isinstance(inner, str):
                code = error.get("code")
                return f"{code}: {inner}" if code else inner
        if isinstance(error, str):
            description = body.get("error_description")
            return f"{error}: {description}" if isinstance(description, str) and description else error
        for name in ("detail", "title", "error_message", "msg"):
            value = body.get(name)
            if isinstance(value, str) and value:
                return value
        errors = body.get("errors")
        if isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors):
            return "; ".join(errors)
    if isinstance(body, str) and body:
        return body
    flat = " ".join(text.split())
    return flat[:300] + ("…" if len(flat) > 300 else "")


def _enc(value: str) -> str:
    """RFC 5849 3.6 percent-encoding: everything but unreserved characters (RFC 3986)."""
    return quote(value, safe="~")


def oauth1_base_string(method: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The RFC 5849 3.4.1 signature base string: method, base URI, and the normalized parameters.

    ``params`` are the decoded parameters that take part (the query's, the oauth_* ones, and a form
    body's); the query in ``url`` is ignored here, so pass its parameters in ``params``.
    """
    parsed = httpx.URL(url)
    scheme = parsed.scheme.lower()
    host = parsed.host.lower()
    default_port = {"http": 80, "https": 443}.get(scheme)
    authority = host if parsed.port in (None, default_port) else f"{host}:{parsed.port}"
    path = parsed.raw_path.decode("ascii").split("?", 1)[0] or "/"
    base_uri = f"{scheme}://{authority}{path}"
    pairs = sorted((_enc(k), _enc(v)) for k, v in params)
    normalized = "&".join(f"{k}={v}" for k, v in pairs)
    return "&".join((method.upper(), _enc(base_uri), _enc(normalized)))


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
    """The ``Authorization: OAuth ...`` header value for one request, signed per RFC 5849.

    The query parameters of ``url`` are part of the signature (Magento checks them). HMAC-SHA1 is
    accepted only so the RFC's own test vectors can be checked; integrations sign with HMAC-SHA256.
    """
    digests = {"HMAC-SHA256": hashlib.sha256, "HMAC-SHA1": hashlib.sha1}
    if signature_method not in digests:
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
    query = parse_qsl(httpx.URL(url).query.decode("ascii"), keep_blank_values=True)
    base = oauth1_base_string(method, url, [*query, *oauth.items(), *body_params])
    key = f"{_enc(consumer_secret)}&{_enc(token_secret)}"
    digest = hmac.new(key.encode(), base.encode(), digests[signature_method]).digest()
    oauth["oauth_signature"] = base64.b64encode(digest).decode("ascii")
    return "OAuth " + ", ".join(f'{k}="{_enc(v)}"' for k, v in sorted(oauth.items()))


def _dig(body: Any, path: str) -> Any:
    """The value at a dotted path ('d.results'); None when any step is missing."""
    current = body
    for step in path.split("."):
        if isinstance(current, dict) and step in current:
            current = current[step]
        elif isinstance(current, list) and step.isdigit() and int(step) < len(current):
            current = current[int(step)]
        else:
            return None
    return current


def _nothing(value: Any) -> bool:
    """Whether a check's answer says "not there": missing, null, false, or an empty string, list or object."""
    return value is None or value is False or (isinstance(value, str | list | dict) and not value)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_query_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _odata_literal(value: str) -> str:
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value
    quoted = value.replace("'", "''")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:.]+", value):
        return f"datetime'{quoted}'"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:.]+(Z|[+-]\d{2}:\d{2})", value):
        return f"datetimeoffset'{quoted}'"
    return f"'{quoted}'"


# -- the connection ---------------------------------------------------------------------------------


class _OAuth2Token:
    """Client-credentials token: fetched on first use, cached until shortly before it expires."""

    def __init__(self, settings: OAuth2ClientCredentials) -> None:
        self.settings = settings
        self.value: str | None = None
        self.expires_at = 0.0
        self.lock = asyncio.Lock()

    def fresh(self) -> str | None:
        if self.value is not None and time.monotonic() < self.expires_at:
            return self.value
        return None

    def invalidate(self, used: str) -> None:
        if self.value == used:
            self.value = None


class HttpConnection:
    """An open connection to one http system: a pooled client, its auth and its endpoints."""

    def __init__(
        self,
        options: HttpOptions,
        context: ConnectContext,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = options
        self.context = context
        self.system = context.system
        self._base = options.url.rstrip("/") + "/"
        self.base_url = httpx.URL(self._base)
        limits = options.limits
        self.timeout = parse_duration(limits.timeout) if limits and limits.timeout else DEFAULT_TIMEOUT
        pool = limits.concurrency if limits and limits.concurrency else 16
        self._mask = Masker()  # the secrets this connection knows, replaced in whatever it logs or raises
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}
        self._masked_headers = set(_SENSITIVE_HEADERS)
        auth = options.auth
        self._oauth2 = _OAuth2Token(auth.oauth2) if auth is not None and auth.oauth2 is not None else None
        if auth is not None:
            for value in self._static_secrets():
                self._remember_secret(value)
            if auth.api_key is not None:
                self._masked_headers.add(auth.api_key.header.lower())
        self._headers = httpx.Headers({"Accept": "application/json", "User-Agent": USER_AGENT, **options.headers})
        self._transport = transport if transport is not None else PooledTransport(max_connections=pool)
        self._direct = self._direct_headers()

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> HttpConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- the Connection contract --------------------------------------------------------------
    def check(self, entity: str, record: Any) -> None:
        """Before a write: a record that fails the endpoint's ``schema`` is terminal and never sent."""
        endpoint = self._endpoint(entity, "write")
        if endpoint.schema_ is None:
            return
        validator = self._validators.get(entity)
        if validator is None:
            validator = self._validators[entity] = jsonschema.Draft202012Validator(endpoint.schema_)
        error = jsonschema.exceptions.best_match(validator.iter_errors(record))
        if error is not None:
            raise TerminalError(
                f"the record fails {self.system}.{entity}'s schema at {error.json_path}: {error.message}"
            )

    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        """Send ``record`` to the endpoint named ``entity`` (its method; JSON body; ``Idempotency-Key``).

        ``{name}`` placeholders in the endpoint's path come from the record. ``mode`` does not change
        the method: the endpoint declares it. Returns ``"<status>"`` or ``"<status> id=<id>"``.
        """
        endpoint = self._endpoint(entity, "write")
        body = _NO_BODY if endpoint.method == "DELETE" else record
        headers = {"Idempotency-Key": idempotency_key}
        if self._direct is not None and not logger.isEnabledFor(logging.DEBUG):
            status, found = await self._write_direct(
                endpoint.method, self._url_text(endpoint.path, record, entity), body, headers
            )
        else:
            url = self._url(endpoint.path, record, entity)
            response = await self._exchange(endpoint.method, url, body=body, headers=headers, timeout=None)
            status, found = response.status_code, _record_id(self._json(response, allow_empty=True))
        return f"{status} id={found}" if found is not None else str(status)

    async def find_effect(self, entity: str, record: Any, *, key: Any, idempotency_key: str) -> str | None:
        """Whether a once-only write whose earlier outcome is unknown took effect (the EffectFinder role).

        Called by a worker before it sends again a write to an endpoint that is ``once`` (by default every
        POST). Sends the endpoint's ``check``: a GET whose ``{name}`` placeholders come from the record and
        ``{$idempotency_key}`` is the key the write was sent with. Found (the answer's ``found`` path, or the
        answer itself, is non-empty): a receipt with the id at ``receipt``. Not found, or 404: None, and the
        write is sent. No ``check`` declared: a TerminalError naming the option to set, so the runtime
        dead-letters the record as "outcome unknown" instead of sending it twice. 5xx, 429 and timeouts are
        transient, as for any request.
        """
        endpoint = self._endpoint(entity, "check")
        if not endpoint.once_only:
            raise TerminalError(
                f"{self.system}.{entity}: a {endpoint.method} here is taken as safe to send again (once: false), "
                "so there is nothing to check"
            )
        effect = endpoint.check
        if effect is None:
            raise TerminalError(
                f"{self.system}.{entity}: {endpoint.method} {endpoint.path} is once-only and has no check: set "
                f"endpoints.{entity}.check so seamline can tell whether the earlier attempt took effect (or "
                "once: false if the server deduplicates on the Idempotency-Key header)"
            )
        values = {**(record if isinstance(record, dict) else {}), "$idempotency_key": idempotency_key}
        url = self._url(effect.path, values, f"{entity}.check")
        try:
            response = await self._exchange("GET", url, timeout=None)
        except TerminalError as exc:
            if exc.status == 404:
                return None
            raise
        answer = self._json(response, allow_empty=True)
        hit = answer if effect.found is None else _dig(answer, effect.found)
        if _nothing(hit):
            return None
        found = _dig(answer, effect.receipt) if effect.receipt else _record_id(hit[0] if isinstance(hit, list) else hit)
        return f"already there: id={found}" if found not in (None, "") else "already there"

    def _direct_headers(self) -> dict[str, str] | None:
        """The headers of every write when writes can skip httpx's model: our pool and static credentials.

        Building httpx's URL, Request and Response costs ~150 µs of CPU per write here, as much as the
        exchange itself (bench/README.md); a write needs only the status and the id in the answer. OAuth
        (signed per request, or a token to renew) and any other transport keep the model.
        """
        credentials = self._static_credentials()
        if not isinstance(self._transport, PooledTransport) or credentials is None:
            return None
        headers = {k.lower(): v for k, v in self._headers.items()}
        headers.update((k.lower(), v) for k, v in credentials.items())
        return headers

    def _static_credentials(self) -> dict[str, str] | None:
        """The header that carries credentials the same on every request; None when they are signed or renewed."""
        auth = self.options.auth
        if auth is None:
            return {}
        if auth.bearer is not None:
            return {"Authorization": f"Bearer {auth.bearer.token}"}
        if auth.basic is not None:
            pair = f"{auth.basic.username}:{auth.basic.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        if auth.api_key is not None:
            return {auth.api_key.header: auth.api_key.key}
        return None  # OAuth 1.0a signs each request; OAuth 2 tokens are fetched and renewed

    async def _write_direct(self, method: str, url: str, body: Any, headers: dict[str, str]) -> tuple[int, str | None]:
        """A write straight through ``PooledTransport.exchange``; the same errors as ``_exchange``'s."""
        assert self._direct is not None and isinstance(self._transport, PooledTransport)
        merged = dict(self._direct)
        merged.update((k.lower(), v) for k, v in headers.items())
        content = None
        if body is not _NO_BODY:
            content = self._encode(method, urlsplit(url).path, body)
            merged["content-type"] = "application/json"
        limits = self._limits(None)
        try:
            answer = await self._transport.exchange(method, url, merged.items(), content, limits)
        except TRANSPORT_ERRORS as exc:
            request = self._build(method, url, content=content, headers=merged)
            where = f"{self.system}: {method} {_path(request.url)}"
            raise translate(as_httpx_error(exc, request), request, where=where, mask=self._mask) from exc
        if not 200 <= answer.status < 300:
            request = self._build(method, url, content=content, headers=merged)
            self._raise_for_status(request, as_response(answer, request))
        if not answer.content.strip():
            return answer.status, None
        try:
            parsed: Any = json.loads(answer.content)
        except ValueError:
            parsed = answer.content.decode("utf-8", errors="replace")
        return answer.status, _record_id(parsed)

    async def call(self, operation: str, request: Any, *, timeout: float) -> Any:
        """One request to the endpoint named ``operation``; returns its JSON (None for an empty body).

        GET: placeholders come from ``request`` and its other plain fields become query parameters.
        Other methods: placeholders come from ``request``, which is sent whole as the JSON body.
        """
        endpoint = self._endpoint(operation, "call")
        url = self._url(endpoint.path, request, operation)
        params: list[tuple[str, str]] = []
        body: Any = _NO_BODY
        if endpoint.method == "GET":
            used = {name.strip() for name in _PLACEHOLDER.findall(endpoint.path)}
            if isinstance(request, dict):
                params = [
                    (k, _query_value(v))
                    for k, v in request.items()
                    if k not in used and v is not None and not isinstance(v, dict)
                ]
        elif endpoint.method != "DELETE":
            body = request
        response = await self._exchange(endpoint.method, url, params=params, body=body, timeout=timeout)
        return self._json(response, allow_empty=True)

    async def read(
        self,
        entity: str,
        *,
        since: str | None = None,
        cursor_field: str | None = None,
        page_size: int = 100,
        filter: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[list[Any]]:
        """Pages of the endpoint named ``entity``, following its pagination style (see the package doc).

        Empty pages are not yielded. A page size declared on the endpoint wins over ``page_size``.
        """
        endpoint = self._endpoint(entity, "read")
        pagination = endpoint.pagination or Pagination()
        size = pagination.page_size if "page_size" in pagination.model_fields_set else page_size
        filters = dict(filter or {})
        used = {name.strip() for name in _PLACEHOLDER.findall(endpoint.path)}
        url = self._url(endpoint.path, filters, entity)
        filters = {k: v for k, v in filters.items() if k not in used}
        walk = {
            "none": self._read_single,
            "page": self._read_numbered,
            "offset": self._read_numbered,
            "next-link": self._read_linked,
            "cursor": self._read_linked,
            "odata": self._read_odata,
            "magento": self._read_magento,
        }[pagination.style]
        params = self._read_params(endpoint, pagination, since, cursor_field, filters)
        previous: list[Any] | None = None
        async for page in walk(url, params, pagination, size):
            if page == previous:
                raise TerminalError(
                    f"{self.system}: reading '{entity}': the server sent the same page twice; "
                    f"check the endpoint's pagination (style {pagination.style})"
                )
            previous = page
            if page:
                yield page

    async def consume(self, queue: str, handler: MessageHandler) -> None:
        raise TerminalError("http systems have no queues; use a webhook event trigger")

    # -- reading --------------------------------------------------------------------------------
    def _read_params(
        self,
        endpoint: Endpoint,
        pagination: Pagination,
        since: str | None,
        cursor_field: str | None,
        filter: Mapping[str, Any] | None,
    ) -> list[tuple[str, str]]:
        filters = dict(filter or {})
        params: list[tuple[str, str]] = []
        if pagination.style == "magento":
            group = 0
            if since is not None and cursor_field:
                params += _magento_filter(group, cursor_field, since, "gteq")
                group += 1
            for name, value in filters.items():
                if isinstance(value, dict) and len(value) == 1:
                    ((condition, operand),) = value.items()
                    params += _magento_filter(group, name, _query_value(operand), str(condition))
                else:
                    params += _magento_filter(group, name, _query_value(value), "eq")
                group += 1
            if cursor_field:
                params += [
                    ("searchCriteria[sortOrders][0][field]", cursor_field),
                    ("searchCriteria[sortOrders][0][direction]", "ASC"),
                ]
            return params
        if pagination.style == "odata":
            clauses = [f"({filters.pop('$filter')})"] if "$filter" in filters else []
            if since is not None and cursor_field:
                clauses.append(f"{cursor_field} ge {_odata_literal(since)}")
            if clauses:
                params.append(("$filter", " and ".join(clauses)))
            if cursor_field and "$orderby" not in filters:
                params.append(("$orderby", cursor_field))
        elif since is not None and cursor_field:
            params.append((endpoint.since_param.replace("{field}", cursor_field), since))
        params += [(name, _query_value(value)) for name, value in filters.items() if value is not None]
        return params

    async def _get_page(self, url: httpx.URL, params: list[tuple[str, str]]) -> tuple[Any, httpx.Response]:
        response = await self._exchange("GET", url, params=params, timeout=None)
        return self._json(response, allow_empty=False), response

    def _items(self, body: Any, path: str, response: httpx.Response) -> list[Any]:
        if isinstance(body, list):
            return body
        items = _dig(body, path)
        if isinstance(items, list):
            return items
        keys = ", ".join(sorted(body)) if isinstance(body, dict) else type(body).__name__
        raise TerminalError(
            f"{self.system}: GET {_path(response.url)}: no list of records at '{path}' in the response "
            f"(it has: {keys}); set the endpoint's pagination.items"
        )

    async def _read_single(
        self, url: httpx.URL, params: list[tuple[str, str]], pagination: Pagination, size: int
    ) -> AsyncIterator[list[Any]]:
        body, response = await self._get_page(url, params)
        yield self._items(body, pagination.items, response)

    async def _read_numbered(
        self, url: httpx.URL, params: list[tuple[str, str]], pagination: Pagination, size: int
    ) -> AsyncIterator[list[Any]]:
        by_offset = pagination.style == "offset"
        position = 0 if by_offset else pagination.first_page
        seen = 0
        while True:
            name = pagination.offset_param if by_offset else pagination.page_param
            query = [*params, (name, str(position)), (pagination.size_param, str(size))]
            body, response = await self._get_page(url, query)
            items = self._items(body, pagination.items, response)
            yield items
            seen += len(items)
            if _last_page(items, size, seen, _total(body)):
                return
            position = position + len(items) if by_offset else position + 1

    async def _read_linked(
        self, url: httpx.URL, params: list[tuple[str, str]], pagination: Pagination, size: int
    ) -> AsyncIterator[list[Any]]:
        linked = pagination.style == "next-link"
        query: list[tuple[str, str]] | None = [*params, (pagination.size_param, str(size))]
        target = url
        tokens: set[str] = set()
        while True:
            body, response = await self._get_page(target, query or [])
            items = self._items(body, pagination.items, response)
            yield items
            if linked:
                link = _dig(body, pagination.next) if pagination.next else _dig(body, "next")
                if not link and pagination.next is None:
                    link = response.links.get("next", {}).get("url")
                if not isinstance(link, str) or not link or not items:
                    return
                target = self._follow(response, link)
                query = None
                token = str(target)
            else:
                token_value = _dig(body, pagination.next or "next_cursor")
                if token_value in (None, "") or not items:
                    return
                token = _query_value(token_value)
                query = [*params, (pagination.size_param, str(size)), (pagination.cursor_param, token)]
            if token in tokens:
                raise TerminalError(f"{self.system}: GET {_path(url)}: the server sent the same next page twice")
            tokens.add(token)

    async def _read_odata(
        self, url: httpx.URL, params: list[tuple[str, str]], pagination: Pagination, size: int
    ) -> AsyncIterator[list[Any]]:
        # Client-driven windows ($top/$skip) of `size` records; inside a window the server may page
        # on its own (d.__next or @odata.nextLink), which is followed as is.
        explicit_items = "items" in pagination.model_fields_set
        window_start = 0
        in_window = 0
        target = url
        query: list[tuple[str, str]] = [*params, ("$top", str(size)), ("$skip", "0")]
        while True:
            body, response = await self._get_page(target, query)
            if explicit_items:
                path = pagination.items
            elif isinstance(body, dict) and "d" in body:
                path = "d" if isinstance(body["d"], list) else "d.results"
            else:
                path = "value"
            items = self._items(body, path, response)
            yield items
            in_window += len(items)
            link = _dig(body, "d.__next") or (body.get("@odata.nextLink") if isinstance(body, dict) else None)
            if isinstance(link, str) and link and items:
                target = self._follow(response, link)
                query = []
                continue
            if in_window < size:
                return
            window_start += size
            in_window = 0
            target = url
            query = [*params, ("$top", str(size)), ("$skip", str(window_start))]

    async def _read_magento(
        self, url: httpx.URL, params: list[tuple[str, str]], pagination: Pagination, size: int
    ) -> AsyncIterator[list[Any]]:
        page = 1
        seen = 0
        while True:
            query = [*params, ("searchCriteria[pageSize]", str(size)), ("searchCriteria[currentPage]", str(page))]
            body, response = await self._get_page(url, query)
            items = self._items(body, pagination.items, response)
            yield items
            seen += len(items)
            if _last_page(items, size, seen, _total(body)):
                return
            page += 1

    def _follow(self, response: httpx.Response, link: str) -> httpx.URL:
        target = response.url.join(link)
        if (target.scheme, target.host, target.port) != (self.base_url.scheme, self.base_url.host, self.base_url.port):
            raise TerminalError(
                f"{self.system}: GET {_path(response.url)}: the next page is on another server ({target.host}); "
                "credentials are only sent to the system's own url"
            )
        return target

    # -- requests -------------------------------------------------------------------------------
    def _endpoint(self, name: str, use: str) -> Endpoint:
        endpoint = self.options.endpoints.get(name)
        if endpoint is None:
            known = sorted(self.options.endpoints)
            near = closest(name, known)
            hint = f" — did you mean '{near}'?" if near else ""
            raise TerminalError(
                f"{self.system}: no endpoint named '{name}' to {use}{hint} (endpoints: {', '.join(known) or 'none'})"
            )
        return endpoint

    def _url(self, path: str, values: Any, operation: str) -> httpx.URL:
        return httpx.URL(self._url_text(path, values, operation))

    def _url_text(self, path: str, values: Any, operation: str) -> str:
        def fill(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            value = _dig(values, name) if isinstance(values, dict) else None
            if value is None or isinstance(value, dict | list):
                keys = ", ".join(sorted(values)) if isinstance(values, dict) else type(values).__name__
                raise TerminalError(
                    f"{self.system}: '{operation}' needs '{name}' for its path {path}, "
                    f"and the record has no such plain value (it has: {keys or 'nothing'})"
                )
            return quote(_query_value(value), safe="")

        filled = _PLACEHOLDER.sub(fill, path)
        if "://" in filled:
            return filled
        # Concatenated, not URL.join(): the same result for a spec's paths, at a third of the cost on the hot path.
        return self._base + filled.lstrip("/")

    async def _exchange(
        self,
        method: str,
        url: httpx.URL,
        *,
        params: list[tuple[str, str]] | None = None,
        body: Any = _NO_BODY,
        headers: dict[str, str] | None = None,
        timeout: float | None,
    ) -> httpx.Response:
        """Send one request with auth; translate every failure; return a 2xx response."""
        content: bytes | None = None
        request_headers = dict(headers or {})
        if body is not _NO_BODY:
            content = self._encode(method, _path(url), body)
            request_headers["Content-Type"] = "application/json"
        request = self._build(
            method,
            url,
            params=tuple(params) if params else None,
            content=content,
            headers=request_headers,
            timeout=timeout,
        )
        used = await self._authorize(request)
        response = await self._send(request)
        if response.status_code == 401 and self._oauth2 is not None and used is not None:
            self._oauth2.invalidate(used)
            logger.debug("%s: 401 with a cached OAuth2 token; fetching a new one", self.system)
            await self._authorize(request)
            response = await self._send(request)
            if response.status_code == 401:
                raise TerminalError(
                    self._mask(
                        f"{self.system}: {method} {_path(request.url)} -> 401 even with a freshly fetched OAuth2 token "
                        f"(check the client's grants and scope): {self._message(response)}"
                    ),
                    status=401,
                )
        self._raise_for_status(request, response)
        return response

    def _encode(self, method: str, where: str, body: Any) -> bytes:
        try:
            return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise TerminalError(f"{self.system}: {method} {where}: the record is not JSON: {exc}") from exc

    def _limits(self, timeout: float | None) -> dict[str, float]:
        seconds = self.timeout if timeout is None else timeout
        return {"connect": seconds, "read": seconds, "write": seconds, "pool": seconds}

    def _build(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        params: tuple[tuple[str, str], ...] | None = None,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Request:
        """A request with the system's default headers and timeout (``timeout`` overrides the read and connect)."""
        merged = self._headers.copy()
        if headers:
            merged.update(headers)
        try:
            return httpx.Request(
                method,
                url,
                params=params,
                content=content,
                data=data,
                headers=merged,
                extensions={"timeout": self._limits(timeout)},
            )
        except (httpx.InvalidURL, httpx.HTTPError, TypeError, ValueError) as exc:
            raise TerminalError(self._mask(f"{self.system}: {method} {url}: cannot build the request: {exc}")) from exc

    async def _authorize(self, request: httpx.Request) -> str | None:
        """Put the credentials on ``request``; returns the OAuth2 token used, if any."""
        static = self._static_credentials()
        if static is not None:
            request.headers.update(static)
            return None
        auth = self.options.auth
        assert auth is not None  # without auth the credentials are static: none
        if auth.oauth1 is not None:
            body_params: list[tuple[str, str]] = []
            if request.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                body_params = parse_qsl(request.content.decode(), keep_blank_values=True)
            request.headers["Authorization"] = oauth1_authorization(
                request.method,
                str(request.url),
                consumer_key=auth.oauth1.consumer_key,
                consumer_secret=auth.oauth1.consumer_secret,
                token=auth.oauth1.access_token,
                token_secret=auth.oauth1.access_token_secret,
                body_params=body_params,
            )
        elif self._oauth2 is not None:
            token = await self._oauth2_token()
            request.headers["Authorization"] = f"Bearer {token}"
            return token
        return None

    async def _oauth2_token(self) -> str:
        assert self._oauth2 is not None
        cached = self._oauth2.fresh()
        if cached is not None:
            return cached
        async with self._oauth2.lock:
            cached = self._oauth2.fresh()
            if cached is not None:
                return cached
            settings = self._oauth2.settings
            form = {
                "grant_type": "client_credentials",
                "client_id": settings.client_id,
                "client_secret": settings.client_secret,
            }
            if settings.scope:
                form["scope"] = settings.scope
            request = self._build("POST", settings.token_url, data=form)
            response = await self._send(request, sensitive=True)
            where = f"{self.system}: OAuth2 token request to {request.url.host}{_path(request.url)}"
            if not response.is_success:
                message = self._message(response)
                status = response.status_code
                text = self._mask(f"{where} -> {status}: {message or response.reason_phrase}")
                if status in (408, 425, 429) or status >= 500:
                    retry = parse_retry_after(response.headers.get("Retry-After"))
                    raise TransientError(text, retry_after=retry, status=status)
                raise TerminalError(text + " (check client_id, client_secret and scope)", status=status)
            body = self._json(response, allow_empty=False)
            token = body.get("access_token") if isinstance(body, dict) else None
            if not isinstance(token, str) or not token:
                raise TerminalError(f"{where}: the answer has no access_token")
            self._remember_secret(token)
            lifetime = body.get("expires_in")
            try:
                seconds: float | None = float(lifetime)
            except (TypeError, ValueError):
                seconds = None
            if seconds is None:
                self._oauth2.expires_at = float("inf")  # no expiry given: keep it until a 401
            else:
                self._oauth2.expires_at = time.monotonic() + seconds - min(30.0, seconds * 0.1)
            self._oauth2.value = token
            logger.debug("%s: OAuth2 token fetched (expires in %s s)", self.system, lifetime)
            return token

    async def _send(self, request: httpx.Request, *, sensitive: bool = False) -> httpx.Response:
        where = f"{self.system}: {request.method} {_path(request.url)}"
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s",
                self._mask(
                    f"http request {request.method} {request.url} headers={self._headers_for_log(request.headers)} "
                    f"body={'<not logged>' if sensitive else _clip(request.content)}"
                ),
            )
        started = time.perf_counter()
        response = await send(self._transport, request, where=where, mask=self._mask)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "%s",
                self._mask(
                    f"http response {request.method} {request.url} -> {response.status_code} "
                    f"in {1000 * (time.perf_counter() - started):.0f} ms "
                    f"headers={self._headers_for_log(response.headers)} "
                    f"body={'<not logged>' if sensitive else _clip(response.content)}"
                ),
            )
        return response

    def _raise_for_status(self, request: httpx.Request, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        message = self._message(response)
        text = f"{self.system}: {request.method} {_path(request.url)} -> {status} {response.reason_phrase}"
        if message:
            text += f": {message}"
        text = self._mask(text)
        if status in (408, 425, 429) or status >= 500:
            retry = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientError(text, retry_after=retry, status=status)
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            raise TerminalError(f"{text} (redirected to {location}; set the url to the final address)", status=status)
        raise TerminalError(text, status=status)

    # -- bodies, secrets, logs ------------------------------------------------------------------
    def _json(self, response: httpx.Response, *, allow_empty: bool) -> Any:
        if not response.content.strip():
            if allow_empty:
                return None
            raise TerminalError(f"{self.system}: {response.request.method} {_path(response.url)}: empty answer")
        try:
            return json.loads(response.content)
        except ValueError:
            if allow_empty:
                return response.text
            kind = response.headers.get("Content-Type", "no content type")
            raise TerminalError(
                f"{self.system}: {response.request.method} {_path(response.url)}: the answer is not JSON ({kind}): "
                + self._mask(server_message(None, response.text))
            ) from None

    def _message(self, response: httpx.Response) -> str:
        try:
            body: Any = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        return self._mask(server_message(body, response.text))

    def _static_secrets(self) -> list[str]:
        auth = self.options.auth
        if auth is None:
            return []
        values: list[str] = []
        if auth.bearer is not None:
            values.append(auth.bearer.token)
        if auth.basic is not None:
            values.append(auth.basic.password)
            pair = f"{auth.basic.username}:{auth.basic.password}".encode()
            values.append(base64.b64encode(pair).decode("ascii"))
        if auth.api_key is not None:
            values.append(auth.api_key.key)
        if auth.oauth2 is not None:
            values.append(auth.oauth2.client_secret)
        if auth.oauth1 is not None:
            values += [auth.oauth1.consumer_secret, auth.oauth1.access_token_secret, auth.oauth1.access_token]
        return values

    def _remember_secret(self, value: str) -> None:
        self._mask.add(value)
        self._mask.add(_enc(value))  # as it appears in a URL or a signature base string
        self.context.mask(value)

    def _headers_for_log(self, headers: httpx.Headers) -> dict[str, str]:
        return {k: (MASK if k.lower() in self._masked_headers else v) for k, v in headers.items()}


def _magento_filter(group: int, field: str, value: str, condition: str) -> list[tuple[str, str]]:
    prefix = f"searchCriteria[filter_groups][{group}][filters][0]"
    return [(f"{prefix}[field]", field), (f"{prefix}[value]", value), (f"{prefix}[condition_type]", condition)]


def _last_page(items: list[Any], size: int, seen: int, total: int | None) -> bool:
    """An empty page ends a read; so does reaching the total the server gave, or else a short page."""
    if not items:
        return True
    if total is not None:
        return seen >= total
    return len(items) < size


def _total(body: Any) -> int | None:
    if isinstance(body, dict):
        for name in ("total_count", "total", "totalCount"):
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _record_id(body: Any) -> str | None:
    if isinstance(body, dict):
        for name in ("id", "entity_id", "Id", "ID", "uuid"):
            value = body.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return str(value)
        return None
    if isinstance(body, int | str) and not isinstance(body, bool) and str(body) and len(str(body)) <= 64:
        return str(body)
    return None


def _path(url: httpx.URL) -> str:
    """The path as sent (percent-encoded, so '/a%2Fb' and '/a/b' stay apart), without the query."""
    return url.raw_path.decode("ascii").split("?", 1)[0]


def _clip(content: bytes) -> str:
    if not content:
        return "<empty>"
    text = content.decode("utf-8", errors="replace")
    return text if len(text) <= _LOG_BODY_LIMIT else text[:_LOG_BODY_LIMIT] + f"… ({len(text)} chars)"
