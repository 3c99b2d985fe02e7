"""One system's HTTP session: every request of an HTTP-based connector goes through :meth:`Session.send`.

What a session does with a request, always in this order (one path, whatever the auth or log level)::

    url      the system's url joined with the path, the query added          (urls.py)
    trace    the current write span as ``traceparent``, when tracing is on    (engine/runtime/tracing.py)
    auth     the strategy puts its credentials on it                          (auth.py)
    log      at DEBUG: method, URL, headers (credentials masked), body clipped
    wire     the pool sends it and reads the whole answer                     (wire.py: proxy, TLS, caps)
    401      a strategy that can fetch a fresh credential does, and the request goes once more;
             a second 401 is a TerminalError
    answer   returned whatever its status: the connector decides what it means, with error() for
             the usual meaning (errors.py)

Failures below HTTP leave as the engine's errors, by meaning (:func:`transport_error`)::

    no free connection within the timeout             TransientError  "not sent: every connection ... busy"
    no connection / no answer within the timeout      TransientError  "no answer within Ns"
    refused, reset, dropped, TLS handshake failed     TransientError
    an answer that is not HTTP, or does not decode    TransientError  "the server's answer could not be read"
    an answer over max_response_size / decoded size   TerminalError   naming the option
    a proxy asking for credentials (407)              TerminalError
    a URL or header that cannot be sent               TerminalError
    tls options naming a file that cannot be used     TerminalError   (each request, until the spec is fixed)

Every text a session logs or raises passes through its masker, which knows the auth strategy's
secrets, every token it fetched and the proxy's password; header values are never quoted in errors.
The connector never retries on its own (the runtime owns retries); the one exception is the single
fresh credential after a 401.
"""

from __future__ import annotations

import json as jsonlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import quote, urlencode

from engine.connector import ConnectContext, JsonDocument, SystemOptions, parse_duration, system_log
from engine.errors import SeamlineError, TerminalError, TransientError
from engine.kit.http.auth import Auth
from engine.kit.http.errors import server_message, status_error
from engine.kit.http.options import WireSettings, wire_settings
from engine.kit.http.proxy import ProxyRule
from engine.kit.http.tls import TlsSetupError, ssl_context
from engine.kit.http.urls import join, path_of, with_query
from engine.kit.http.wire import (
    Answer,
    BadAnswer,
    ConnectFailed,
    ConnectTimedOut,
    Dropped,
    Pool,
    PoolTimedOut,
    ProxyRefused,
    TooLarge,
)
from engine.runtime import tracing
from engine.secrets import Masker

__all__ = ["NO_BODY", "Request", "Response", "Session", "Transport", "transport_error"]

MASK: Final = "***"
NO_BODY: Final[Any] = object()
SENSITIVE_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_LOG_BODY_LIMIT: Final = 1000
# What the pool and the socket below it raise for a request that did not get an answer.
TRANSPORT_ERRORS: Final = (TimeoutError, OSError, ValueError)


DEFAULT_TIMEOUT: Final = 30.0  # seconds a request may take when the system's limits.timeout says nothing


class Transport(Protocol):
    """What a session sends through: :class:`~engine.kit.http.wire.Pool`, or a test's stand-in."""

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        *,
        connect: float | None = None,
        read: float | None = None,
        pool: float | None = None,
    ) -> Answer: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Request:
    """One request as it will be sent; header names are lower case."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    timeout: float
    what: str | None = None  # how messages name it; default "<METHOD> <path>"

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def where(self) -> str:
        return self.what if self.what is not None else f"{self.method} {path_of(self.url)}"


@dataclass(slots=True)
class Response:
    """A whole answer (its body decoded) and the request it answers."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    content: bytes
    request: Request

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def url(self) -> str:
        return self.request.url

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def link(self, rel: str) -> str | None:
        """The URL of the ``Link`` header's entry with ``rel`` (RFC 8288), if any."""
        for value in (v for k, v in self.headers if k.lower() == "link"):
            for entry in value.split(","):
                target, _, params = entry.strip().partition(";")
                rels = {
                    p.split("=", 1)[1].strip().strip('"').lower()
                    for p in params.split(";")
                    if p.strip().lower().startswith("rel=")
                }
                if rel in " ".join(rels).split() and target.strip().startswith("<"):
                    return target.strip()[1:].rstrip(">")
        return None


class Session:
    """Requests to one system: its url, default headers, auth strategy, masker, timeout and pool."""

    def __init__(
        self,
        context: ConnectContext,
        *,
        url: str,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        wire: WireSettings | None = None,
        headers: Mapping[str, str] | None = None,
        auth: Auth | None = None,
        timeout: float = 30.0,
        max_connections: int = 16,
        transport: Transport | None = None,
        describe: Callable[[Response], str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.context = context
        self.system = context.system
        self.base_url = url.rstrip("/") + "/"
        self.logger = logger
        self.timeout = timeout
        self.auth: Auth | None = None
        self.masker = Masker()  # the secrets this session knows, replaced in whatever it logs or raises
        self._describe = describe
        self._headers = {name.lower(): value for name, value in (headers or {}).items()}
        self._masked_headers = set(SENSITIVE_HEADERS)
        settings = wire or WireSettings()
        self.settings = settings
        self._setup_error: str | None = None
        context_ssl: ssl.SSLContext | None = None
        try:
            context_ssl = ssl_context(settings.tls, context.base_dir)
        except TlsSetupError as exc:
            self._setup_error = str(exc)
        if settings.tls is not None and settings.tls.client_key_password:
            self.remember_secret(settings.tls.client_key_password)
        proxy = ProxyRule(settings.proxy, environ)
        for secret in proxy.secrets:
            self.remember_secret(secret)
        self.use(auth)
        self.transport: Transport = (
            transport
            if transport is not None
            else Pool(
                max_connections=max_connections,
                ssl_context=context_ssl,
                proxy=proxy,
                max_body=settings.max_response,
                max_decoded=settings.max_decoded,
            )
        )

    @classmethod
    def for_system(
        cls,
        kind: str,
        options: SystemOptions,
        context: ConnectContext,
        *,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        connections: int = 16,
        transport: Transport | None = None,
        describe: Callable[[Response], str] | None = None,
    ) -> Session:
        """The session of one system of connector ``kind``, from its options as every HTTP connector reads them:
        ``url``, ``limits`` (timeout, default 30s; concurrency, default ``connections``), the wire options (proxy,
        TLS, answer caps), JSON accepted, a ``seamline-<kind>`` user agent, and the system's logger."""
        limits = options.limits
        return cls(
            context,
            url=url if url is not None else str(getattr(options, "url", "")),
            logger=system_log(kind, context.system),
            wire=wire_settings(options),
            headers={"Accept": "application/json", "User-Agent": f"seamline-{kind}/0.1", **(headers or {})},
            timeout=parse_duration(limits.timeout) if limits and limits.timeout else DEFAULT_TIMEOUT,
            max_connections=limits.concurrency if limits and limits.concurrency else connections,
            transport=transport,
            describe=describe,
        )

    def use(self, auth: Auth | None) -> None:
        """Authorize requests with ``auth`` (a strategy that fetches tokens is made with the session, so it
        comes after it); its secrets are masked from now on."""
        self.auth = auth
        if auth is not None:
            for secret in auth.secrets():
                self.remember_secret(secret)
            self._masked_headers.update(name.lower() for name in auth.masked_headers())

    async def aclose(self) -> None:
        await self.transport.aclose()

    # -- sending ---------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        """``path`` under the system's url (a whole URL stays as it is)."""
        return join(self.base_url, path)

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Iterable[tuple[str, str]] | None = None,
        json: Any = NO_BODY,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        what: str | None = None,
        sensitive: bool = False,
        authorize: bool = True,
    ) -> Response:
        """Send one request (``url`` a path under the system's url, or a whole URL) and return its answer,
        whatever its status. ``json`` or ``form`` is the body; ``what`` names it in messages (default
        ``<METHOD> <path>``); ``sensitive`` keeps both bodies out of the log (a token request)."""
        if self._setup_error is not None:
            raise TerminalError(self.mask(f"{self.system}: {self._setup_error}"))
        merged = self._headers.copy()
        body: bytes | None = None
        if isinstance(json, JsonDocument):  # JSON text a transform made: sent as it is, not decoded and encoded
            body = json.text.encode()
            merged["content-type"] = "application/json"
        elif json is not NO_BODY:
            try:
                body = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":")).encode()
            except (TypeError, ValueError) as exc:
                where = what or f"{method} {path_of(self.url(url))}"
                raise TerminalError(f"{self.system}: {where}: the record is not JSON: {exc}") from exc
            merged["content-type"] = "application/json"
        elif form is not None:
            body = urlencode(form).encode()
            merged["content-type"] = "application/x-www-form-urlencoded"
        if headers:
            for name, value in headers.items():
                merged[name.lower()] = value
        # With tracing on, a request made while a record's write span is current carries it as W3C traceparent:
        # the target's own traces join the record's. Nothing is added when tracing is off.
        tracing.inject(merged)
        if "://" not in url:
            url = self.url(url)
        request = Request(
            method,
            with_query(url, params) if params else url,
            merged,
            body,
            self.timeout if timeout is None else timeout,
            what,
        )
        auth = self.auth if authorize else None
        used = await self._authorize(auth, request) if auth is not None else None
        response = await self._exchange(request, sensitive)
        if response.status == 401 and auth is not None and auth.refused(used):
            self.logger.debug("%s: 401 with a cached %s; fetching a new one", self.system, auth.credential)
            await self._authorize(auth, request)
            response = await self._exchange(request, sensitive)
            if response.status == 401:
                hint = f" ({auth.hint})" if auth.hint else ""
                raise TerminalError(
                    self.mask(
                        f"{self.system}: {request.where} -> 401 even with a freshly fetched {auth.credential}: "
                        f"{self.message(response)}{hint}"
                    ),
                    status=401,
                )
        return response

    async def _authorize(self, auth: Auth, request: Request) -> object | None:
        try:
            return await auth.authorize(request)
        except ValueError as exc:  # a URL the signer cannot read
            raise transport_error(exc, request, self.system, self.mask) from exc

    async def _exchange(self, request: Request, sensitive: bool) -> Response:
        debug = self.logger.isEnabledFor(logging.DEBUG)
        if debug:
            self.logger.debug(
                "%s",
                self.mask(
                    f"http request {request.method} {request.url} headers={self._for_log(request.headers.items())} "
                    f"body={'<not logged>' if sensitive else _clip(request.body)}"
                ),
            )
            started = time.perf_counter()
        seconds = request.timeout
        try:
            answer = await self.transport.request(
                request.method,
                request.url,
                request.headers.items(),
                request.body,
                connect=seconds,
                read=seconds,
                pool=seconds,
            )
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, request, self.system, self.mask) from exc
        response = Response(answer.status, answer.reason, answer.headers, answer.content, request)
        if debug:
            self.logger.debug(
                "%s",
                self.mask(
                    f"http response {request.method} {request.url} -> {response.status} "
                    f"in {1000 * (time.perf_counter() - started):.0f} ms "
                    f"headers={self._for_log(response.headers)} "
                    f"body={'<not logged>' if sensitive else _clip(response.content)}"
                ),
            )
        return response

    # -- answers ---------------------------------------------------------------------------------
    def message(self, response: Response) -> str:
        """The server's own words about ``response`` (masked): the connector's ``describe``, else the
        common body shapes (:func:`~engine.kit.http.errors.server_message`)."""
        if self._describe is not None:
            return self.mask(self._describe(response))
        try:
            body: Any = jsonlib.loads(response.content) if response.content else None
        except ValueError:
            body = None
        return self.mask(server_message(body, response.text))

    def error(
        self,
        response: Response,
        what: str | None = None,
        *,
        hint: str = "",
        reason_in_text: bool = True,
        transient: bool | None = None,
    ) -> TransientError | TerminalError:
        """The usual error for a non-2xx answer: ``<system>: <what> -> <status> <reason>: <server's message>``,
        transient for 408, 425, 429 and 5xx (with Retry-After), terminal otherwise (``hint`` appended)."""
        status = response.status
        message = self.message(response)
        where = what if what is not None else response.request.where
        if reason_in_text:
            text = f"{self.system}: {where} -> {status} {response.reason}".rstrip() + (
                f": {message}" if message else ""
            )
        else:
            text = f"{self.system}: {where} -> {status}: {message or response.reason}"
        error = status_error(self.mask(text), status, response.header, transient=transient)
        if hint and isinstance(error, TerminalError):
            return TerminalError(f"{error} ({hint})", status=status)
        return error

    def raise_for_status(self, response: Response, what: str | None = None) -> None:
        if not response.ok:
            raise self.error(response, what)

    def json(self, response: Response, what: str | None = None, *, allow_empty: bool = False) -> Any:
        """The answer's JSON; an empty body is None when ``allow_empty`` (else terminal), and a body that is
        not JSON is its text when ``allow_empty`` (else terminal, quoting its start)."""
        where = what if what is not None else response.request.where
        if not response.content.strip():
            if allow_empty:
                return None
            raise TerminalError(f"{self.system}: {where}: empty answer")
        try:
            return jsonlib.loads(response.content)
        except ValueError:
            if allow_empty:
                return response.text
            kind = response.header("Content-Type") or "no content type"
            raise TerminalError(
                f"{self.system}: {where}: the answer is not JSON ({kind}): "
                + self.mask(server_message(None, response.text))
            ) from None

    def terminal(self, text: str, *, status: int | None = None) -> TerminalError:
        """A TerminalError about this system: ``<system>: <text>``, masked."""
        return TerminalError(self.mask(f"{self.system}: {text}"), status=status)

    # -- secrets, logs ---------------------------------------------------------------------------
    def remember_secret(self, value: str) -> None:
        """A value never to show (a token fetched at run time): masked here and by the runtime."""
        self.masker.add(value)
        self.masker.add(quote(value, safe="~"))  # as it appears in a URL or a signature base string
        self.context.mask(value)

    def mask(self, text: str) -> str:
        return self.masker(text)

    def _for_log(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        return {k.lower(): (MASK if k.lower() in self._masked_headers else v) for k, v in headers}


def transport_error(
    exc: BaseException, request: Request, system: str, mask: Callable[[str], str] = str
) -> SeamlineError:
    """The engine's error for a request that got no answer (checked from the most specific)."""
    where = f"{system}: {request.where}"
    seconds = request.timeout
    if isinstance(exc, PoolTimedOut):
        return TransientError(f"{where}: not sent: every connection to the system stayed busy for {seconds:g}s")
    if isinstance(exc, ConnectTimedOut):
        return TransientError(f"{where}: no answer within {seconds:g}s (ConnectTimeout: {exc})")
    if isinstance(exc, TimeoutError):
        return TransientError(f"{where}: no answer within {seconds:g}s (ReadTimeout)")
    if isinstance(exc, ProxyRefused):
        if exc.status == 407:
            return TerminalError(
                mask(f"{where}: {exc} (the proxy wants credentials: put user:password@ in the proxy's URL)"),
                status=407,
            )
        return TransientError(mask(f"{where}: {exc}"), status=exc.status)
    if isinstance(exc, TooLarge):
        option = "max_decoded_size" if exc.what == "decoded" else "max_response_size"
        if exc.what == "head":
            return TerminalError(f"{where}: {exc}; refused")
        return TerminalError(
            f"{where}: {exc}; refused (the system's {option}; raise it, or ask for smaller pages, if the answer is "
            "expected to be this large)"
        )
    if isinstance(exc, ConnectFailed):
        return TransientError(mask(f"{where}: {exc}"))
    if isinstance(exc, Dropped):
        return TransientError(mask(f"{where}: the connection dropped before an answer ({exc})"))
    if isinstance(exc, BadAnswer):
        return TransientError(mask(f"{where}: protocol error: {exc}"))
    if isinstance(exc, ValueError):  # InvalidRequest, UnusableProxy: nothing was sent
        return TerminalError(mask(f"{where}: cannot send: {exc}"))
    return TransientError(mask(f"{where}: the connection dropped before an answer ({exc})"))


def _clip(content: bytes | None) -> str:
    if not content:
        return "<empty>"
    text = content.decode("utf-8", errors="replace")
    return text if len(text) <= _LOG_BODY_LIMIT else text[:_LOG_BODY_LIMIT] + f"… ({len(text)} chars)"
