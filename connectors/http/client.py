"""The http connector's connection: named endpoints over one HTTP kit session per system.

Who calls what is documented on :class:`engine.connector.Connection`. The requests, their auth, the
wire and the translation of failures are the kit's (:mod:`engine.kit.http.session`): every read,
call and write takes the same path, whatever the auth or the log level. What an http system's answers
mean, right where they enter (no library exception ever leaves)::

    timeout (connect, read, pool)               TransientError
    connection refused, reset or dropped        TransientError
    408, 425, 429, 5xx                          TransientError  (Retry-After -> retry_after, seconds)
    3xx                                         TerminalError   (redirects are not followed; names the Location)
    401 with oauth2                             the token is fetched again once; a second 401 is a TerminalError
    other 4xx                                   TerminalError   quoting the server's message
    an answer over max_response_size            TerminalError   (or over max_decoded_size once decoded)
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

from collections.abc import AsyncIterator, Mapping
from typing import Any

import jsonschema
import jsonschema.exceptions

from connectors.http import Endpoint, HttpOptions
from engine.connector import (
    Caller,
    Checker,
    ConnectContext,
    EffectFinder,
    JsonDocument,
    Source,
    Target,
    closest,
)
from engine.errors import TerminalError
from engine.kit.http.auth import (
    Auth,
    OAuth1,
    api_key,
    basic,
    bearer,
    oauth1_authorization,
    oauth1_base_string,
    oauth2_client_credentials,
)
from engine.kit.http.errors import parse_retry_after, server_message
from engine.kit.http.pagination import Pagination, read_params, walk
from engine.kit.http.session import NO_BODY, Response, Session, Transport
from engine.kit.http.urls import MissingValue, dig, fill_path, origin, path_of, placeholders, query_value, resolve

__all__ = [
    "HttpConnection",
    "oauth1_authorization",
    "oauth1_base_string",
    "parse_retry_after",
    "server_message",
]


def _nothing(value: Any) -> bool:
    """Whether a check's answer says "not there": missing, null, false, or an empty string, list or object."""
    return value is None or value is False or (isinstance(value, str | list | dict) and not value)


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


def _auth(options: HttpOptions, session: Session) -> Auth | None:
    auth = options.auth
    if auth is None:
        return None
    if auth.bearer is not None:
        return bearer(auth.bearer.token)
    if auth.basic is not None:
        return basic(auth.basic.username, auth.basic.password)
    if auth.api_key is not None:
        return api_key(auth.api_key.header, auth.api_key.key)
    if auth.oauth1 is not None:
        settings = auth.oauth1
        return OAuth1(
            settings.consumer_key, settings.consumer_secret, settings.access_token, settings.access_token_secret
        )
    assert auth.oauth2 is not None  # the model holds exactly one
    return oauth2_client_credentials(
        session,
        token_url=auth.oauth2.token_url,
        client_id=auth.oauth2.client_id,
        client_secret=auth.oauth2.client_secret,
        scope=auth.oauth2.scope,
        hint="check the client's grants and scope",
    )


class HttpConnection(Source, Target, Caller, Checker, EffectFinder):
    """An open connection to one http system: a kit session, its auth and its endpoints."""

    takes_documents = True  # a record's JSON text is the body as it is (write)

    def __init__(self, options: HttpOptions, context: ConnectContext, *, transport: Transport | None = None) -> None:
        self.options = options
        self.context = context
        self.system = context.system
        self.session = Session.for_system("http", options, context, headers=options.headers, transport=transport)
        self.log = self.session.logger
        self.session.use(_auth(options, self.session))
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    @property
    def timeout(self) -> float:
        return self.session.timeout

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        await self.session.aclose()

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

        A :class:`JsonDocument` is sent as its text; its values fill the path.

        ``{name}`` placeholders in the endpoint's path come from the record. ``mode`` does not change
        the method: the endpoint declares it. Returns ``"<status>"`` or ``"<status> id=<id>"``.
        """
        endpoint = self._endpoint(entity, "write")
        values = record.value if isinstance(record, JsonDocument) else record  # the path's {name}s
        url = self._path(endpoint.path, values, entity)
        response = await self._exchange(
            endpoint.method,
            url,
            json=NO_BODY if endpoint.method == "DELETE" else record,
            headers={"Idempotency-Key": idempotency_key},
        )
        found = _record_id(self.session.json(response, allow_empty=True))
        return f"{response.status} id={found}" if found is not None else str(response.status)

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
        url = self._path(effect.path, values, f"{entity}.check")
        try:
            response = await self._exchange("GET", url)
        except TerminalError as exc:
            if exc.status == 404:
                return None
            raise
        answer = self.session.json(response, allow_empty=True)
        hit = answer if effect.found is None else dig(answer, effect.found)
        if _nothing(hit):
            return None
        found = dig(answer, effect.receipt) if effect.receipt else _record_id(hit[0] if isinstance(hit, list) else hit)
        return f"already there: id={found}" if found not in (None, "") else "already there"

    async def call(self, operation: str, request: Any, *, timeout: float) -> Any:
        """One request to the endpoint named ``operation``; returns its JSON (None for an empty body).

        GET: placeholders come from ``request`` and its other plain fields become query parameters.
        Other methods: placeholders come from ``request``, which is sent whole as the JSON body.
        """
        endpoint = self._endpoint(operation, "call")
        url = self._path(endpoint.path, request, operation)
        params: list[tuple[str, str]] = []
        body: Any = NO_BODY
        if endpoint.method == "GET":
            used = placeholders(endpoint.path)
            if isinstance(request, dict):
                params = [
                    (k, query_value(v))
                    for k, v in request.items()
                    if k not in used and v is not None and not isinstance(v, dict)
                ]
        elif endpoint.method != "DELETE":
            body = request
        response = await self._exchange(endpoint.method, url, params=params, json=body, timeout=timeout)
        return self.session.json(response, allow_empty=True)

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
        used = placeholders(endpoint.path)
        url = self._path(endpoint.path, filters, entity)
        filters = {k: v for k, v in filters.items() if k not in used}
        params = read_params(pagination.style, endpoint.since_param, since, cursor_field, filters)
        previous: list[Any] | None = None
        async for page in walk(self, url, params, pagination, size):
            if page == previous:
                raise TerminalError(
                    f"{self.system}: reading '{entity}': the server sent the same page twice; "
                    f"check the endpoint's pagination (style {pagination.style})"
                )
            previous = page
            if page:
                yield page

    # -- the pages of a read (the kit's PageSource) ---------------------------------------------
    async def page(self, url: str, params: list[tuple[str, str]]) -> tuple[Any, Response]:
        response = await self._exchange("GET", url, params=params)
        return self.session.json(response), response

    def items(self, body: Any, path: str, response: Response) -> list[Any]:
        if isinstance(body, list):
            return body
        items = dig(body, path)
        if isinstance(items, list):
            return items
        keys = ", ".join(sorted(body)) if isinstance(body, dict) else type(body).__name__
        raise TerminalError(
            f"{self.system}: GET {path_of(response.url)}: no list of records at '{path}' in the response "
            f"(it has: {keys}); set the endpoint's pagination.items"
        )

    def follow(self, response: Response, link: str) -> str:
        target = resolve(response.url, link)
        if origin(target) != origin(self.session.base_url):
            raise TerminalError(
                f"{self.system}: GET {path_of(response.url)}: the next page is on another server "
                f"({origin(target)[1]}); credentials are only sent to the system's own url"
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

    def _path(self, path: str, values: Any, operation: str) -> str:
        """The endpoint's URL with its ``{name}`` placeholders filled from ``values`` (URL-encoded)."""
        try:
            return self.session.url(fill_path(path, values))
        except MissingValue as missing:
            keys = ", ".join(sorted(values)) if isinstance(values, dict) else type(values).__name__
            raise TerminalError(
                f"{self.system}: '{operation}' needs '{missing.name}' for its path {path}, "
                f"and the record has no such plain value (it has: {keys or 'nothing'})"
            ) from None

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json: Any = NO_BODY,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """One request through the session; a 2xx answer, else the error its status means."""
        response = await self.session.send(method, url, params=params, json=json, headers=headers, timeout=timeout)
        if not response.ok:
            raise self.session.error(response)
        return response
