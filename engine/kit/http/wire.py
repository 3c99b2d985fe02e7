"""A lean HTTP/1.1 client: keep-alive connections over asyncio protocols, answers parsed by httptools.

Why our own and not aiohttp's client: a connector's write is the daemon's hottest path, and on this
project's machine kind aiohttp's client behind the same adapter spends about twice the CPU of this one
on a small keep-alive request (bench/http_client_bench.py; bench/README.md, "HTTP client"). The part
that is easy to get wrong, parsing what a server answers (chunked bodies, interim 1xx answers,
malformed lines), is llhttp, Node.js's parser, through httptools (MagicStack's binding, the one uvicorn
uses). What is left here is small: a pool of connections per origin, the request's bytes, timeouts, a
proxy, caps on what an answer may cost, and decoding a compressed body.

What it does:
- at most ``max_connections`` requests in flight per pool; idle connections are kept for reuse
  (dropped after ``KEEP_IDLE`` seconds or when the server closes them);
- no redirects followed, no cookies;
- a proxy when ``proxy`` names one for the origin (:mod:`engine.kit.http.proxy`): a plain-http
  request goes to the proxy in absolute form, an https one through a ``CONNECT`` tunnel, TLS inside it;
- a request on a reused connection that the server closed before answering is sent once more on a
  new connection when its method is idempotent (the server never saw it);
- ``read`` is the longest silence while waiting for the answer, ``connect`` bounds opening a
  connection (proxy tunnel and TLS handshake included), ``pool`` the wait for a free slot;
- an answer costs bounded memory: its head at most ``MAX_HEAD`` bytes, its body as sent at most
  ``max_body``, decoded (gzip, deflate) at most ``max_decoded``; past a cap the answer is refused
  (:class:`TooLarge`) and its connection closed, so a "zip bomb" stops at the cap.

Failures are this module's exceptions, each a subclass of the builtin one that means the same, so
callers map them by meaning (:func:`engine.kit.http.session.transport_error`). No failure quotes
a header's value: a server's headers carry cookies and tokens.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import string
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httptools

from engine.kit.http.proxy import Proxy

__all__ = [
    "MAX_BODY",
    "MAX_DECODED",
    "Answer",
    "AnswerTimedOut",
    "BadAnswer",
    "ConnectFailed",
    "ConnectTimedOut",
    "Dropped",
    "InvalidRequest",
    "Pool",
    "PoolTimedOut",
    "ProxyRefused",
    "TooLarge",
    "sent_url",
]

KEEP_IDLE = 15.0  # seconds an idle connection is kept; servers close theirs after 5-75 s
MAX_HEAD = 64 * 1024  # status line and headers of one answer (llhttp itself sets no bound)
MAX_BODY = 32 * 1024**2  # default cap of a body as sent
MAX_DECODED = 128 * 1024**2  # default cap of a body once its Content-Encoding is undone
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_DEFAULTED = frozenset({"host", "content-length", "transfer-encoding", "accept-encoding"})
# Reserved and already-escaped characters stay as they are; spaces, quotes, non-ASCII and the like are escaped.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
# An escape of a character a path (query) may hold as it is, is sent as that character: the wire this
# client sends is the one aiohttp's client (yarl) sent before it, so a server keyed on raw paths sees
# the same path. %2F, %2B, %3F and, in a query, %26, %3D, %3B stay escaped: they mean something else bare.
_PLAIN_IN_PATH = frozenset("@!$&'()*,;=:~-._" + string.ascii_letters + string.digits)
_PLAIN_IN_QUERY = _PLAIN_IN_PATH - frozenset("&=;") | frozenset("/?")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

Origin = tuple[str, str, int]  # scheme, host, port: connections are pooled by this
ProxyFor = Callable[[str, str, int], Proxy | None]


class ConnectFailed(OSError):
    """No connection: refused, unknown host, a proxy that is down, or a TLS handshake that failed."""


class ProxyRefused(ConnectFailed):
    """The proxy answered the tunnel request (``CONNECT``) with something else than 2xx."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


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


class TooLarge(BadAnswer):
    """The answer is over a cap: its head, its body as sent, or its body decoded."""

    def __init__(self, message: str, *, limit: int, what: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.what = what  # "head", "body" or "decoded"


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
    origin: Origin
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


def sent_url(url: str) -> str:
    """``url`` as this client puts it on the wire (host in IDNA, path and query escaped as sent): what an
    OAuth 1.0a signature must cover, since the server checks it against what it received."""
    target = _target(url)
    return f"{target.origin[0]}://{target.host_header}{target.path}"


def _requote(text: str, plain: frozenset[str]) -> str:
    quoted = quote(text, safe=_TARGET_SAFE)
    if "%" not in quoted:
        return quoted

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in plain else match.group(0).upper()

    return _ESCAPE.sub(one, _LONE_PERCENT.sub("%25", quoted))


def _head(
    method: str,
    target: _Target,
    headers: Iterable[tuple[str, str]],
    body: bytes | None,
    proxy: Proxy | None = None,
) -> bytes:
    path = target.path
    if proxy is not None:  # plain http through a proxy: the request names the whole URL
        path = f"http://{target.host_header}{path}"
    lines = [f"{method} {path} HTTP/1.1\r\n"]
    given: set[str] = set()
    for name, value in headers:
        both = name + value
        if "\r" in both or "\n" in both or "\0" in both or not name or ":" in name:
            raise InvalidRequest(f"header {name!r} has a line break, a NUL or a colon where none may be")
        lowered = name.lower()
        if lowered in _DEFAULTED:
            given.add(lowered)
        lines.append(f"{name}: {value}\r\n")
    if "host" not in given:
        lines.insert(1, f"Host: {target.host_header}\r\n")
    if proxy is not None and proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
    if "accept-encoding" not in given:
        # What aiohttp's client asked for: a large page comes compressed, and a server that labels a body
        # gzip without being asked (trytond does, for a streamed answer) is then telling the truth.
        lines.append("Accept-Encoding: gzip, deflate\r\n")
    if not given & {"content-length", "transfer-encoding"} and (body is not None or method in _BODY_METHODS):
        lines.append(f"Content-Length: {len(body) if body is not None else 0}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _size(count: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= factor:
            return f"{count / factor:g} {unit}"
    return f"{count} B"


def _decoded(
    headers: list[tuple[str, str]], content: bytes, max_decoded: int = MAX_DECODED
) -> tuple[list[tuple[str, str]], bytes]:
    """The body without its Content-Encoding, and the headers without the ones that described the wire.

    Decoding stops one byte past ``max_decoded``: a body that inflates beyond it is refused, and never
    holds more than that in memory.
    """
    encoding = ""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-encoding":
            encoding = value.strip().lower()
        elif lowered != "transfer-encoding":
            kept.append((name, value))
    if encoding in ("", "identity") or not content:
        if len(content) > max_decoded:
            raise TooLarge(f"the answer's body is larger than {_size(max_decoded)}", limit=max_decoded, what="decoded")
        return kept, content
    try:
        if encoding in ("gzip", "x-gzip"):
            return kept, _inflate(content, 16 + zlib.MAX_WBITS, max_decoded, members=True)
        if encoding == "deflate":  # zlib-wrapped as the RFC says, or raw deflate as some servers send
            try:
                return kept, _inflate(content, zlib.MAX_WBITS, max_decoded, members=False)
            except zlib.error:
                return kept, _inflate(content, -zlib.MAX_WBITS, max_decoded, members=False)
    except zlib.error as exc:
        raise BadAnswer(f"the answer's {encoding} body does not decode: {exc}") from None
    raise BadAnswer(f"the answer is encoded as '{encoding}', which this client never asked for and cannot decode")


def _inflate(content: bytes, wbits: int, limit: int, *, members: bool) -> bytes:
    """``content`` inflated, at most ``limit`` bytes of it; every member of a gzip body (concatenated
    members are valid gzip), bytes after the last one are an error."""
    parts = []
    total = 0
    while content:
        member = zlib.decompressobj(wbits)
        # One call per member: asked for one byte more than the room left, an output that fills it means
        # the body is over the cap; an output that does not means the member's input was all used.
        out = member.decompress(content, limit - total + 1)
        total += len(out)
        if total > limit:
            raise TooLarge(
                f"the answer's body decodes to more than {_size(limit)}; refused (a compressed body that "
                "inflates this far is a 'zip bomb' or a page far larger than expected)",
                limit=limit,
                what="decoded",
            )
        parts.append(out)
        if not member.eof:
            raise zlib.error("the body ends in the middle of a compressed stream")
        if not members:
            break
        content = member.unused_data
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer gathered by httptools' callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int = MAX_BODY) -> None:
        self.loop = self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self._max_body = max_body
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
        self._head_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
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
        except httptools.HttpParserCallbackError as exc:  # a callback refused the answer (over a cap, a second one)
            cause = exc.__context__
            self._fail(cause if isinstance(cause, BadAnswer) else BadAnswer(f"the server's answer is refused ({exc})"))
            self.close()
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
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        if not self._headers_done:  # a chunked body's trailers are not the answer's headers
            self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            raise TooLarge(
                f"the answer's status line and headers are larger than {_size(MAX_HEAD)}", limit=MAX_HEAD, what="head"
            )

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
        self._body_size += len(body)
        if self._body_size > self._max_body:
            raise TooLarge(
                f"the answer's body is larger than {_size(self._max_body)}", limit=self._max_body, what="body"
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._reason.clear()
            self._headers = []
            self._body = []
            self._body_size = 0
            return
        self._complete = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, self._parser.should_keep_alive()))

    # -- use -----------------------------------------------------------------------------------
    async def exchange(
        self, method: str, request: bytes, body: bytes | None, read: float | None, max_decoded: int
    ) -> tuple[Answer, bool]:
        """Send one request; its answer and whether this connection may carry another."""
        assert self.transport is not None
        self._waiter = self._loop.create_future()
        self._head_only = method == "HEAD"
        self._heard = False
        self._headers_done = self._framed = self._complete = False
        self._reason.clear()
        self._headers = []
        self._head_size = 0
        self._body = []
        self._body_size = 0
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
        if self._body_size > self._max_body:  # a body that ran to the close: the parser saw no end to stop at
            raise TooLarge(
                f"the answer's body is larger than {_size(self._max_body)}", limit=self._max_body, what="body"
            )
        headers, content = _decoded(self._headers, b"".join(self._body), max_decoded)
        self._body = []
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


class _Tunnel(asyncio.Protocol):
    """A connection to a proxy until its answer to ``CONNECT``: the head, then TLS takes the socket over.

    The answer is the head and whether more bytes came after it: a refusal may carry a body, a tunnel
    must not (the server speaks only after our TLS hello)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[tuple[bytes, bool]] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self.answer.set_result((bytes(self._buffer[:end]), end + 4 < len(self._buffer)))
        elif len(self._buffer) > MAX_HEAD:
            self.answer.set_exception(BadAnswer("the proxy's answer to CONNECT has no end"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            why = f": {exc}" if exc else ""
            self.answer.set_exception(ConnectFailed(f"the proxy closed the connection before it answered CONNECT{why}"))


class Pool:
    """Keep-alive connections to any number of origins, at most ``max_connections`` in use at once.

    ``ssl_context`` verifies https servers (default: the system's CAs, hostname checked); ``proxy``
    names the proxy for an origin, or None to go direct; ``max_body`` and ``max_decoded`` cap an answer.
    """

    def __init__(
        self,
        *,
        max_connections: int = 16,
        ssl_context: ssl.SSLContext | None = None,
        proxy: ProxyFor | None = None,
        max_body: int = MAX_BODY,
        max_decoded: int = MAX_DECODED,
    ) -> None:
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._ssl = ssl_context
        self._proxy_for = proxy
        self._proxies: dict[Origin, Proxy | None] = {}
        self.max_body = max_body
        self.max_decoded = max_decoded
        self._idle: dict[Origin, list[_Connection]] = {}
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
        proxy = self._proxy(target.origin)
        head = _head(method, target, headers, body, proxy if target.origin[0] == "http" else None)
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
                    connection = await self._open(target.origin, proxy, connect)
                try:
                    reply, keep = await connection.exchange(method, head, body, read, self.max_decoded)
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

    def _proxy(self, origin: Origin) -> Proxy | None:
        if self._proxy_for is None:
            return None
        try:
            return self._proxies[origin]
        except KeyError:
            found = self._proxies[origin] = self._proxy_for(*origin)
            return found

    def _take(self, origin: Origin) -> tuple[_Connection | None, bool]:
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

    def _give_back(self, origin: Origin, connection: _Connection, keep: bool) -> None:
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

    async def _open(self, origin: Origin, proxy: Proxy | None, connect: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context: Any = None
        if scheme == "https":
            context = self._ssl if self._ssl is not None else _default_context()
        where = f"{host}:{port}" if proxy is None else f"{host}:{port} through the proxy {proxy.host}:{proxy.port}"
        try:
            async with asyncio.timeout(connect):
                if proxy is None:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(loop, self.max_body),
                        host,
                        port,
                        ssl=context,
                        server_hostname=host if context else None,
                    )
                elif scheme == "http":  # the proxy forwards each request, named in full
                    _, connection = await loop.create_connection(
                        lambda: _Connection(loop, self.max_body), proxy.host, proxy.port
                    )
                else:
                    connection = await self._tunnel(loop, host, port, proxy, context)
        except TimeoutError:
            within = f" within {connect:g}s" if connect else ""
            raise ConnectTimedOut(f"could not connect to {where}{within}") from None
        except (ConnectFailed, BadAnswer):
            raise
        except OSError as exc:
            raise ConnectFailed(f"could not connect to {where}: {exc}") from exc
        self.opened += 1
        return connection

    async def _tunnel(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, proxy: Proxy, context: ssl.SSLContext
    ) -> _Connection:
        """A connection to ``host:port`` through ``proxy``'s CONNECT tunnel, TLS end to end inside it."""
        transport, tunnel = await loop.create_connection(lambda: _Tunnel(loop), proxy.host, proxy.port)
        try:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            lines = [f"CONNECT {authority} HTTP/1.1\r\n", f"Host: {authority}\r\n"]
            if proxy.authorization:
                lines.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
            transport.write("".join([*lines, "\r\n"]).encode("latin-1"))
            head, more = await tunnel.answer
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise BadAnswer("the proxy's answer to CONNECT is not HTTP/1.1")
            status = int(parts[1])
            if not 200 <= status < 300:
                answer = f"{status} {parts[2] if len(parts) > 2 else ''}".rstrip()
                raise ProxyRefused(
                    f"the proxy {proxy.host}:{proxy.port} refused the tunnel to {authority}: {answer}", status=status
                )
            if more:  # bytes before our TLS hello: not a tunnel
                raise BadAnswer("the proxy sent bytes after its answer to CONNECT")
            connection = _Connection(loop, self.max_body)
            secured = await loop.start_tls(transport, connection, context, server_hostname=host)
            if secured is None:  # the loop closed the transport
                raise ConnectFailed(f"the TLS handshake with {authority} through the proxy did not complete")
            connection.connection_made(secured)
            return connection
        except BaseException:
            transport.close()
            raise

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
