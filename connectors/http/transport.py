"""The wire under the http connector: httpx's request and response model, aiohttp's connection pool.

Why not httpx's own transport: on this project's machine kind, httpcore spends ~950 µs of CPU per
small keep-alive request; aiohttp's C-accelerated HTTP/1.1 parser and pool do the same in ~150 µs,
and the connector is the daemon's hottest path (bench/README.md, "Runtime"). httpx's Request,
Response, URL and Headers stay the connector's vocabulary, so everything above this module (auth,
pagination, error translation, logging) is unchanged, and any ``httpx.AsyncBaseTransport`` (a test's
``httpx.MockTransport``, httpx's own) can still be passed in instead.

aiohttp's exceptions are turned into httpx's here, by meaning, so the connection translates one
family of errors into the engine's Transient/Terminal tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import httpx

from engine.errors import TerminalError, TransientError

__all__ = ["AiohttpTransport", "send"]


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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        timeout = request.extensions.get("timeout", {})
        body = request.content or None
        try:
            async with session.request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                data=body,
                allow_redirects=False,
                timeout=_timeout(timeout),
                skip_auto_headers=("Content-Type",) if body is None else (),
            ) as answer:
                content = await answer.read()
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers]
                status, reason = answer.status, answer.reason or ""
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise _as_httpx(exc, request) from exc
        # The body is already decoded; drop what would make httpx decode it again.
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "transfer-encoding")]
        return httpx.Response(
            status,
            headers=headers,
            content=content,
            request=request,
            extensions={"reason_phrase": reason.encode("latin-1", "replace"), "http_version": b"HTTP/1.1"},
        )

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


def _as_httpx(exc: BaseException, request: httpx.Request) -> httpx.HTTPError | httpx.InvalidURL:
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


async def send(
    transport: httpx.AsyncBaseTransport,
    request: httpx.Request,
    *,
    where: str,
    mask: Callable[[str], str] = str,
) -> httpx.Response:
    """One exchange with its answer read; every library failure leaves as the engine's error, by meaning.

    ``where`` opens each message ("erp: PUT /products/4711"); ``mask`` hides secrets in the ones that
    may quote a URL. Connection trouble and timeouts are transient, a request httpx refuses is terminal.
    """
    try:
        response = await transport.handle_async_request(request)
        await response.aread()
    except httpx.TimeoutException as exc:
        limits = request.extensions.get("timeout", {})
        seconds = limits.get("read") or limits.get("connect")
        within = f" within {seconds:g}s" if seconds else ""
        raise TransientError(f"{where}: no answer{within} ({type(exc).__name__})") from exc
    except httpx.ConnectError as exc:
        raise TransientError(
            mask(f"{where}: could not connect to {request.url.host}:{request.url.port or ''} ({exc})")
        ) from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError) as exc:
        raise TransientError(f"{where}: the connection dropped before an answer ({exc})") from exc
    except (httpx.ProxyError, httpx.NetworkError) as exc:
        raise TransientError(f"{where}: network error ({exc})") from exc
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, httpx.CookieConflict) as exc:
        raise TerminalError(mask(f"{where}: {type(exc).__name__}: {exc}")) from exc
    return response
