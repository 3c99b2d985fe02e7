"""The wire under the http connector: httpx's request and response model, our lean keep-alive pool.

Why not httpx's own transport: on this project's machine kind, httpcore spends ~1-2.5 ms of CPU per
small keep-alive request; aiohttp's client ~200 µs; ``connectors/http/wire.py`` (asyncio protocols,
httptools' parser) ~85 µs (bench/http_client_bench.py), and the connector is the daemon's hottest path
(bench/README.md, "HTTP client" and "Runtime"). httpx's Request, Response, URL and Headers stay the
connector's vocabulary, so everything above this module (auth, pagination, error translation, logging)
is unchanged, and any ``httpx.AsyncBaseTransport`` (a test's ``httpx.MockTransport``, httpx's own)
can still be passed in instead.

The pool's exceptions are turned into httpx's here, by meaning, so the connection translates one
family of errors into the engine's Transient/Terminal tree.

``PooledTransport.exchange`` is the same exchange without the model, for the one path where building
it costs more than the rest of the request: a record write answered 2xx (the model is built only when
there is an error to explain; ``HttpConnection.write``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from connectors.http.wire import (
    Answer,
    BadAnswer,
    ConnectFailed,
    ConnectTimedOut,
    Dropped,
    InvalidRequest,
    Pool,
    PoolTimedOut,
)
from engine.errors import TerminalError, TransientError

__all__ = ["TRANSPORT_ERRORS", "Answer", "PooledTransport", "as_httpx_error", "as_response", "send", "translate"]

# What the pool and the socket below it raise for a request that did not get an answer.
TRANSPORT_ERRORS = (TimeoutError, OSError, ValueError)


class PooledTransport(httpx.AsyncBaseTransport):
    """One pool of keep-alive connections per connection to a system (``connectors/http/wire.py``)."""

    def __init__(self, *, max_connections: int = 16, ssl_context: ssl.SSLContext | None = None) -> None:
        self.pool = Pool(max_connections=max_connections, ssl_context=ssl_context)

    async def exchange(
        self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes | None, timeout: dict[str, Any]
    ) -> Answer:
        """One request and its whole answer; raises one of ``TRANSPORT_ERRORS`` when there is none."""
        return await self.pool.request(
            method,
            url,
            headers,
            body,
            connect=timeout.get("connect"),
            read=timeout.get("read"),
            pool=timeout.get("pool"),
        )

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
        await self.pool.aclose()


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
    if isinstance(exc, ConnectTimedOut):
        return httpx.ConnectTimeout(text, request=request)
    if isinstance(exc, PoolTimedOut):
        return httpx.PoolTimeout(text, request=request)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(text, request=request)
    if isinstance(exc, ConnectFailed):
        return httpx.ConnectError(text, request=request)
    if isinstance(exc, Dropped | BadAnswer):
        return httpx.RemoteProtocolError(text, request=request)
    if isinstance(exc, InvalidRequest | ValueError):
        return httpx.InvalidURL(text)
    return httpx.ReadError(text, request=request)  # a write to a socket that broke, and other dropped connections


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
    if isinstance(exc, httpx.PoolTimeout):
        seconds = request.extensions.get("timeout", {}).get("pool")
        within = f" for {seconds:g}s" if seconds else ""
        return TransientError(f"{where}: not sent: every connection to the system stayed busy{within} (PoolTimeout)")
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
