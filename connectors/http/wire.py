"""A lean HTTP/1.1 client: keep-alive connections over asyncio protocols, answers parsed by httptools.

Why our own and not aiohttp's client: the connector's write is the daemon's hottest path, and on this
project's machine kind aiohttp's client spends ~200 µs of CPU on a small keep-alive request where
this spends ~85 µs (bench/http_client_bench.py; bench/README.md, "HTTP client"). The part that is
easy to get wrong, parsing what a server answers (chunked bodies, interim 1xx answers, malformed
lines), is llhttp, Node.js's parser, through httptools (MagicStack's binding, the one uvicorn uses).
What is left here is small: a pool of connections per origin, the request's bytes, timeouts, and
decoding a compressed body.

Behaviour kept from the client this replaces:
- at most ``max_connections`` requests in flight per pool; idle connections are kept for reuse
  (dropped after ``KEEP_IDLE`` seconds or when the server closes them);
- no redirects followed, no cookies, no proxy from the environment;
- a request on a reused connection that the server closed before answering is sent once more on a
  new connection when its method is idempotent (the server never saw it);
- ``read`` is the longest silence while waiting for the answer, ``connect`` bounds opening a
  connection (TLS handshake included), ``pool`` the wait for a free slot.

Failures are this module's exceptions, each a subclass of the builtin one that means the same, so
callers can map them by meaning (connectors/http/transport.py).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import string
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

__all__ = [
    "Answer",
    "AnswerTimedOut",
    "BadAnswer",
    "ConnectFailed",
    "ConnectTimedOut",
    "Dropped",
    "InvalidRequest",
    "Pool",
    "PoolTimedOut",
]

KEEP_IDLE = 15.0  # seconds an idle connection is kept; servers close theirs after 5-75 s
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_DEFAULTED = frozenset({"host", "content-length", "transfer-encoding", "accept-encoding"})
_UNSAFE_IN_HEADER = ("\r", "\n", "\0")
# Reserved and already-escaped characters stay as they are; spaces, quotes, non-ASCII and the like are escaped.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
# An escape of a character a path (query) may hold as it is, is sent as that character: the wire this
# client sends is the one aiohttp's client (yarl) sent before it, so a server keyed on raw paths sees
# the same path. %2F, %2B, %3F and, in a query, %26, %3D, %3B stay escaped: they mean something else bare.
_PLAIN_IN_PATH = frozenset("@!$&'()*,;=:~-._" + string.ascii_letters + string.digits)
_PLAIN_IN_QUERY = _PLAIN_IN_PATH - frozenset("&=;") | frozenset("/?")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class ConnectFailed(OSError):
    """No connection: refused, unknown host, or a TLS handshake that failed."""


class ConnectTimedOut(TimeoutError):
    """No connection within the ``connect`` limit."""


class PoolTimedOut(TimeoutError):
    """Every connection stayed in use for longer than the ``pool`` limit: the request was never sent."""


class AnswerTimedOut(TimeoutError):
    """The server went silent for longer than the ``read`` limit before its answer was whole."""


class Dropped(ConnectionError):
    """The connection closed before the answer was whole."""

    def __init__(self, message: str, *, heard: bool) -> None:
        super().__init__(message)
        self.heard = heard  # any byte of an answer arrived: the server saw the request


class BadAnswer(ConnectionError):
    """What the server sent is not HTTP/1.1 (or uses an encoding this client cannot decode)."""


class InvalidRequest(ValueError):
    """A URL or header this client refuses to send (wrong scheme, a line break in a header value)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer, its body decoded (no Content-Encoding or Transfer-Encoding left to undo)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    content: bytes


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port: connections are pooled by this
    host_header: str
    path: str  # the request-target: path and query, escaped


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidRequest(f"unsupported URL scheme '{parts.scheme}' in {url!r}: use http or https")
    host = parts.hostname
    if not host:
        raise InvalidRequest(f"no host in URL {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidRequest(f"bad port in URL {url!r}: {exc}") from None
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"
    path = _requote(parts.path or "/", _PLAIN_IN_PATH)
    if parts.query:
        path += "?" + _requote(parts.query, _PLAIN_IN_QUERY)
    return _Target((scheme, host, port), host_header, path)


def _requote(text: str, plain: frozenset[str]) -> str:
    quoted = quote(text, safe=_TARGET_SAFE)
    if "%" not in quoted:
        return quoted

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in plain else match.group(0).upper()

    return _ESCAPE.sub(one, _LONE_PERCENT.sub("%25", quoted))


def _head(method: str, target: _Target, headers: Iterable[tuple[str, str]], body: bytes | None) -> bytes:
    lines = [f"{method} {target.path} HTTP/1.1\r\n"]
    given: set[str] = set()
    for name, value in headers:
        if any(c in value or c in name for c in _UNSAFE_IN_HEADER) or not name or ":" in name:
            raise InvalidRequest(f"header {name!r} has a line break, a NUL or a colon where none may be")
        lowered = name.lower()
        if lowered in _DEFAULTED:
            given.add(lowered)
        lines.append(f"{name}: {value}\r\n")
    if "host" not in given:
        lines.insert(1, f"Host: {target.host_header}\r\n")
    if "accept-encoding" not in given:
        # What aiohttp's client asked for: a large page comes compressed, and a server that labels a body
        # gzip without being asked (trytond does, for a streamed answer) is then telling the truth.
        lines.append("Accept-Encoding: gzip, deflate\r\n")
    if not given & {"content-length", "transfer-encoding"} and (body is not None or method in _BODY_METHODS):
        lines.append(f"Content-Length: {len(body) if body is not None else 0}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _decoded(headers: list[tuple[str, str]], content: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """The body without its Content-Encoding, and the headers without the ones that described the wire."""
    encoding = ""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-encoding":
            encoding = value.strip().lower()
        elif lowered != "transfer-encoding":
            kept.append((name, value))
    if encoding in ("", "identity") or not content:
        return kept, content
    try:
        if encoding in ("gzip", "x-gzip"):
            return kept, _gunzip(content)
        if encoding == "deflate":  # zlib-wrapped as the RFC says, or raw deflate as some servers send
            try:
                return kept, zlib.decompress(content)
            except zlib.error:
                return kept, zlib.decompress(content, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise BadAnswer(f"the answer's {encoding} body does not decode: {exc} {headers}") from None
    raise BadAnswer(f"the answer is encoded as '{encoding}', which this client never asked for and cannot decode")


def _gunzip(content: bytes) -> bytes:
    """Every member of a gzip body (concatenated members are valid gzip); bytes after the last are an error."""
    parts = []
    while content:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        parts.append(member.decompress(content))
        if not member.eof:
            raise zlib.error("the gzip body ends in the middle of a member")
        content = member.unused_data
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer gathered by httptools' callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[tuple[int, bool]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_only = False
        self._heard = False
        self._last_data = 0.0
        self._reason = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: the parser knows where the body ends
        self._complete = False  # the final answer to the request in flight is whole

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: this connection can no longer be trusted
            return
        self._heard = True
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"the server's answer is not valid HTTP/1.1 ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed and exc is None:  # a body that ends when the server closes
            waiter.set_result((self._parser.get_status_code(), False))
            return
        why = f": {exc}" if exc else ""
        waiter.set_exception(Dropped(f"the server closed the connection before a whole answer{why}", heard=self._heard))

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request: raising makes feed_data fail, and the connection close
            raise BadAnswer("the server sent more than one answer to one request")

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._headers_done:  # a chunked body's trailers are not the answer's headers
            self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        framing = any(
            name.lower() == "content-length" or (name.lower() == "transfer-encoding" and "chunked" in value.lower())
            for name, value in self._headers
        )
        self._framed = framing or status in (204, 304) or status < 200
        self._headers_done = status >= 200
        if self._head_only and status >= 200 and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, False))  # no body follows; not reused (the parser expects one)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._reason.clear()
            self._headers = []
            self._body = []
            return
        self._complete = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, self._parser.should_keep_alive()))

    # -- use -----------------------------------------------------------------------------------
    async def exchange(
        self, method: str, request: bytes, body: bytes | None, read: float | None
    ) -> tuple[Answer, bool]:
        """Send one request; its answer and whether this connection may carry another."""
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self._head_only = method == "HEAD"
        self._heard = False
        self._headers_done = self._framed = self._complete = False
        self._reason.clear()
        self._headers = []
        self._body = []
        if body is None or len(body) > 16384:
            self.transport.writelines([request, body] if body else [request])
        else:
            self.transport.write(request + body)
        self._last_data = self._loop.time()
        if read:
            self._timer = self._loop.call_later(read, self._check_silence, read)
        try:
            status, keep = await self._waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None
        headers, content = _decoded(self._headers, b"".join(self._body))
        reason = self._reason.decode("latin-1", "replace")
        return Answer(status, reason, headers, content), keep and not self._head_only and not self.closed

    def _check_silence(self, read: float) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        quiet = self._loop.time() - self._last_data
        if quiet >= read:
            self._fail(AnswerTimedOut(f"no answer within {read:g}s"))
            self.close()
        else:
            self._timer = self._loop.call_later(read - quiet, self._check_silence, read)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to any number of origins, at most ``max_connections`` in use at once."""

    def __init__(self, *, max_connections: int = 16, ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._idle_count = 0
        self.opened = 0  # for tests and metrics: connections opened over the pool's life
        self._closed = False

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
    ) -> Answer:
        """One request and its whole answer (any status); raises this module's errors when there is none."""
        target = _target(url)
        head = _head(method, target, headers, body)
        if self._slots.locked():
            try:
                async with asyncio.timeout(pool):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolTimedOut(f"all {self.max_connections} connections stayed busy for {pool:g}s") from None
        else:
            await self._slots.acquire()
        try:
            for attempt in (1, 2):
                # The second attempt always opens a new connection: other idle ones may be stale as well.
                connection, reused = self._take(target.origin) if attempt == 1 else (None, False)
                if connection is None:
                    connection = await self._open(target.origin, connect)
                try:
                    reply, keep = await connection.exchange(method, head, body, read)
                except Dropped as exc:
                    connection.close()
                    if reused and not exc.heard and attempt == 1 and method in IDEMPOTENT:
                        continue  # the server had closed this idle connection: it never saw the request
                    raise
                except BaseException:  # a timeout, a cancel, a bad answer: the connection's state is unknown
                    connection.close()
                    raise
                self._give_back(target.origin, connection, keep)
                return reply
            raise AssertionError("unreachable: the second attempt returns or raises")
        finally:
            self._slots.release()

    def _take(self, origin: tuple[str, str, int]) -> tuple[_Connection | None, bool]:
        idle = self._idle.get(origin)
        loop = asyncio.get_running_loop()
        now = loop.time()
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.loop is not loop:  # kept from an event loop that has ended: its socket went with it
                continue
            if not connection.closed and now - connection.idle_since < KEEP_IDLE:
                return connection, True
            connection.close()
        return None, False

    def _give_back(self, origin: tuple[str, str, int], connection: _Connection, keep: bool) -> None:
        if not keep or connection.closed or self._closed:
            connection.close()
            return
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(origin, []).append(connection)
        self._idle_count += 1
        if self._idle_count > self.max_connections:  # idle ones to other origins: keep the newest
            self._drop_oldest_idle()

    def _drop_oldest_idle(self) -> None:
        oldest = min((c.idle_since, origin) for origin, cs in self._idle.items() if cs for c in cs[:1])
        connection = self._idle[oldest[1]].pop(0)
        self._idle_count -= 1
        connection.close()

    async def _open(self, origin: tuple[str, str, int], connect: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context: Any = None
        if scheme == "https":
            context = self._ssl if self._ssl is not None else _default_context()
        try:
            async with asyncio.timeout(connect):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError:
            within = f" within {connect:g}s" if connect else ""
            raise ConnectTimedOut(f"could not connect to {host}:{port}{within}") from None
        except OSError as exc:
            raise ConnectFailed(f"could not connect to {host}:{port}: {exc}") from exc
        self.opened += 1
        return connection

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        self._idle_count = 0


_CONTEXT: ssl.SSLContext | None = None


def _default_context() -> ssl.SSLContext:
    """The system's trusted CAs, hostname checked: made once, it reads the CA files."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = ssl.create_default_context()
    return _CONTEXT
