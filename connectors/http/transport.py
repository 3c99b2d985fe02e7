"""The wire under the http connector: httpx's request and response model, aiohttp's connection pool.

Why not httpx's own transport: on this project's machine kind, httpcore spends ~950 µs of CPU per
small keep-alive request; aiohttp's C-accelerated HTTP/1.1 parser and pool do the same in ~150 µs,
and the connector is the daemon's hottest path (bench/README.md, "Runtime"). httpx's Request,
Response, URL and Headers stay the connector's vocabulary, so everything above this module (auth,
pagination, error translation, logging) is unchanged, and any ``httpx.AsyncBaseTransport`` (a test's
``httpx.MockTransport``, httpx's own) can still be passed in instead.

aiohttp's exceptions are turned into httpx's here, by meaning, so the connection translates one
family of errors into the engine's Transient/Terminal tree.

``AiohttpTransport.exchange`` is the same exchange without the model, for the one path where building
it costs more than the rest of the request: a record write answered 2xx (the model is built only when
there is an error to explain; ``HttpConnection.write``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from engine.errors import TerminalError, TransientError

__all__ = ["TRANSPORT_ERRORS", "AiohttpTransport", "Answer", "as_httpx_error", "as_response", "send", "translate"]

# What aiohttp and the socket below it raise for a request that did not get an answer.
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, OSError, ValueError)


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole HTTP answer, without httpx's model around it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    content: bytes


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One pooled aiohttp session per connection, opened on the first request (it needs a running loop)."""

    def __init__(self, *, max_connections: int = 16) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, enable_cleanup_closed=True)
            # No cookie jar, no default headers, no decompression surprises: the connection sets what it sends.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True
            )
        return self._session

    async def exchange(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None, timeout: dict[str, Any]
    ) -> Answer:
        """One request and its whole answer; raises one of ``TRANSPORT_ERRORS`` when there is none."""
        session = self._open()
        async with session.request(
            method,
            url,
            headers=list(headers),
            data=body,
            allow_redirects=False,
            timeout=_timeout(timeout),
            skip_auto_headers=("Content-Type",) if body is None else (),
        ) as answer:
            content = await answer.read()
            # The body is already decoded; drop what would make httpx decode it again.
            decoded = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers]
            headers = [(k, v) for k, v in decoded if k.lower() not in ("content-encoding", "transfer-encoding")]
            return Answer(answer.status, answer.reason or "", headers, content)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        try:
            answer = await self.exchange(
                request.method, str(request.url), request.headers.multi_items(), request.content or None, timeout
            )
        except TRANSPORT_ERRORS as exc:
            raise as_httpx_error(exc, request) from exc
        return as_response(answer, request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _timeout(limits: dict[str, Any]) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        connect=limits.get("pool"),
        sock_connect=limits.get("connect"),
        sock_read=limits.get("read"),
    )


def as_response(answer: Answer, request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        answer.status,
        headers=answer.headers,
        content=answer.content,
        request=request,
        extensions={"reason_phrase": answer.reason.encode("latin-1", "replace"), "http_version": b"HTTP/1.1"},
    )


def as_httpx_error(exc: BaseException, request: httpx.Request) -> httpx.HTTPError | httpx.InvalidURL:
    """The httpx exception that means what ``exc`` means (checked from the most specific)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text, request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(text, request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(text, request=request)
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return httpx.InvalidURL(text)
    if isinstance(exc, aiohttp.ClientResponseError):  # a malformed answer: status line or headers
        return httpx.RemoteProtocolError(text, request=request)
    return httpx.ReadError(text, request=request)  # ClientOSError and other dropped connections


LIBRARY_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, httpx.CookieConflict)


async def send(
    transport: httpx.AsyncBaseTransport,
    request: httpx.Request,
    *,
    where: str,
    mask: Callable[[str], str] = str,
) -> httpx.Response:
    """One exchange with its answer read; every library failure leaves as the engine's error, by meaning.

    ``where`` opens each message ("erp: PUT /products/4711"); ``mask`` hides secrets in the ones that
    may quote a URL.
    """
    try:
        response = await transport.handle_async_request(request)
        await response.aread()
    except LIBRARY_ERRORS as exc:
        raise translate(exc, request, where=where, mask=mask) from exc
    return response


def translate(
    exc: BaseException, request: httpx.Request, *, where: str, mask: Callable[[str], str] = str
) -> TransientError | TerminalError:
    """The engine's error for an httpx failure: connection trouble and timeouts are transient, a request
    httpx refuses is terminal."""
    if isinstance(exc, httpx.TimeoutException):
        limits = request.extensions.get("timeout", {})
        seconds = limits.get("read") or limits.get("connect")
        within = f" within {seconds:g}s" if seconds else ""
        return TransientError(f"{where}: no answer{within} ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return TransientError(
            mask(f"{where}: could not connect to {request.url.host}:{request.url.port or ''} ({exc})")
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return TransientError(f"{where}: the connection dropped before an answer ({exc})")
    if isinstance(exc, httpx.ProxyError | httpx.NetworkError):
        return TransientError(f"{where}: network error ({exc})")
    return TerminalError(mask(f"{where}: {type(exc).__name__}: {exc}"))
