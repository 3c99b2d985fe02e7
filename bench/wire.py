"""A lean harness for the runtime benchmark: an HTTP sink, a load generator and a bare relay.

The benchmark runs on the same two cores as the daemon it measures, so every microsecond the harness
spends is taken from the daemon. The contract fakes (connectors/*/fake.py) check schemas and keep
idempotency state: right for tests, ~200 us of CPU per request here. These speak just enough
HTTP/1.1 (keep-alive, Content-Length bodies) to be a target and a client at ~40-50 us of CPU per request each:

- ``sink``: takes any PUT/POST, answers 200, logs (path, arrival time, Idempotency-Key, body) in
  memory; ``GET /__stats?prefix=P`` counts the writes under a path prefix, ``GET /__writes?prefix=P``
  lists them, ``POST /__reset`` forgets. Run it in its own process: ``python3 bench/wire.py sink``.
- ``Lanes``: ``concurrency`` keep-alive connections sending requests one after the other (closed
  loop) or at a given moment (open loop), over asyncio protocols rather than a client library.
- ``relay``: the floor, "the same work with no engine": an aiohttp server taking the webhook,
  shaping the event in Python and PUTting it to the sink with an aiohttp session, then answering
  202. No inbox, no transform language, no ledger: what a hand-written one-off integration does.
  ``relay --processes N`` runs N of them on one port (SO_REUSEPORT; the kernel spreads the connections
  over them), the way such a service is scaled to N cores behind one webhook URL; this process then
  only starts them, says ready, and stops them on SIGTERM.

Not a general HTTP implementation: no chunked bodies, no pipelining, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


def _head(buffer: bytearray) -> tuple[int, bytes, dict[bytes, bytes]] | None:
    """(end of headers, first line, lower-cased headers) once ``buffer`` holds a whole header block."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return end + 4, lines[0], headers


def _length(headers: dict[bytes, bytes]) -> int:
    if b"transfer-encoding" in headers:
        raise ValueError("bench/wire.py speaks Content-Length bodies only, not chunked ones")
    return int(headers.get(b"content-length", b"0"))


def _take(buffer: bytearray) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
    """The first whole message in ``buffer`` (first line, headers, body), removed from it; None if incomplete."""
    head = _head(buffer)
    if head is None:
        return None
    start, first, headers = head
    end = start + _length(headers)
    if len(buffer) < end:
        return None
    body = bytes(buffer[start:end])
    del buffer[:end]
    return first, headers, body


# -- the sink --------------------------------------------------------------------------------------
class Sink:
    """``counts_only``: keep the paths and keys seen, not each write (a million-record batch would hold ~1 GB)."""

    def __init__(self, counts_only: bool = False) -> None:
        self.log: list[tuple[str, float, str, bytes]] = []
        self.keys: set[str] = set()
        self.paths: set[str] = set()
        self.count = 0
        self.duplicates = 0
        self.counts_only = counts_only

    def write(self, path: str, key: str, body: bytes) -> None:
        if key and key in self.keys:
            self.duplicates += 1
        self.keys.add(key)
        if self.counts_only:
            self.count += 1
            self.paths.add(path)
            return
        self.log.append((path, time.time(), key, body))

    def control(self, method: bytes, target: str) -> bytes:
        url = urlsplit(target)
        prefix = parse_qs(url.query).get("prefix", [""])[0]
        if method == b"POST" and url.path == "/__reset":
            self.log.clear()
            self.keys.clear()
            self.paths.clear()
            self.count = self.duplicates = 0
            answer: Any = {"reset": True}
        elif url.path == "/__stats" and self.counts_only:
            distinct = sum(1 for p in self.paths if p.startswith(prefix)) if prefix else len(self.paths)
            answer = {"count": self.count, "distinct": distinct, "duplicates": self.duplicates}
        elif url.path == "/__stats":
            paths = [entry[0] for entry in self.log if entry[0].startswith(prefix)]
            answer = {"count": len(paths), "distinct": len(set(paths)), "duplicates": self.duplicates}
        elif url.path == "/__writes":
            answer = [
                {"path": p, "at": at, "key": k, "body": json.loads(b) if b else None}
                for p, at, k, b in self.log
                if p.startswith(prefix)
            ]
        else:
            answer = {"error": f"unknown control path {url.path}"}
        body = json.dumps(answer).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class SinkProtocol(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (message := _take(self.buffer)) is not None:
            first, headers, body = message
            method, target, _ = first.split(b" ", 2)
            path = target.decode()
            assert self.transport is not None
            if path.startswith("/__"):
                self.transport.write(self.sink.control(method, path))
            else:
                self.sink.write(path, headers.get(b"idempotency-key", b"").decode(), body)
                self.transport.write(OK)


async def serve_sink(port: int, counts_only: bool = False) -> None:
    sink = Sink(counts_only)
    server = await asyncio.get_running_loop().create_server(lambda: SinkProtocol(sink), "127.0.0.1", port)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


# -- the client ------------------------------------------------------------------------------------
class ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiting: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        message = _take(self.buffer)
        if message is None:
            return
        first, _, body = message
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result((int(first.split(b" ", 2)[1]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(ConnectionError(f"the server closed the connection: {exc}"))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiting


def request(method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def connect(url: str) -> ClientProtocol:
    parts = urlsplit(url)
    _, protocol = await asyncio.get_running_loop().create_connection(
        ClientProtocol, parts.hostname or "127.0.0.1", parts.port or 80
    )
    return protocol


async def call(url: str, method: str = "GET", body: bytes = b"") -> Any:
    """One request on a connection of its own; the answer's JSON."""
    protocol = await connect(url)
    try:
        status, answer = await protocol.send(request(method, urlsplit(url).path + _query(url), body))
    finally:
        assert protocol.transport is not None
        protocol.transport.close()
    if status != 200:
        raise RuntimeError(f"{method} {url} answered {status}: {answer[:200]!r}")
    return json.loads(answer)


def _query(url: str) -> str:
    query = urlsplit(url).query
    return f"?{query}" if query else ""


async def closed_loop(
    url: str, concurrency: int, count: int, make: Callable[[int], bytes], expect: int
) -> tuple[float, float, list[float]]:
    """``count`` requests over ``concurrency`` connections, each sent when the last one was answered;
    one answered with another status than ``expect`` is sent again after 50 ms (a 503 while the daemon
    starts). Returns (wall time of the first send, of the last answer, each accepted request's seconds)."""
    lanes = [await connect(url) for _ in range(concurrency)]
    numbers = iter(range(count))
    took: list[float] = []

    async def lane(protocol: ClientProtocol) -> None:
        for i in numbers:
            while True:
                began = time.perf_counter()
                status, _ = await protocol.send(make(i))
                if status == expect:
                    took.append(time.perf_counter() - began)
                    break
                await asyncio.sleep(0.05)

    started = time.time()
    await asyncio.gather(*(lane(p) for p in lanes))
    finished = time.time()
    for protocol in lanes:
        assert protocol.transport is not None
        protocol.transport.close()
    return started, finished, took


# -- the relay (the floor) -------------------------------------------------------------------------
async def serve_relay(port: int, target: str, reuse_port: bool = False) -> None:
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    async def hook(request: web.Request) -> web.Response:
        record = json.loads(await request.read())
        body = {"sku": record["material"], "qty": int(record["qty"]), "plant": record["plant"]}
        body["sent_at"] = record["sent_at"]
        headers = {"Content-Type": "application/json", "Idempotency-Key": f"{record['material']}#stock"}
        async with session.put(f"{target}/stock/{body['sku']}", data=json.dumps(body), headers=headers) as r:
            await r.read()
            if r.status >= 300:
                return web.json_response({"error": r.status}, status=502)
        return web.json_response({"accepted": 1}, status=202)

    app = web.Application()
    app.router.add_post("/hooks/stock", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port or None).start()
    print(f"ready {runner.addresses[0][1]}", flush=True)
    if not reuse_port:
        await asyncio.Event().wait()
    parent = os.getppid()
    while os.getppid() == parent:  # one of several: exit with the process that started it, however it ended
        await asyncio.sleep(1.0)


def relay_group(port: int, target: str, processes: int) -> None:
    """``processes`` relays sharing one port (SO_REUSEPORT), started and stopped by this process.

    The port is reserved here first (bound with SO_REUSEPORT, never listening, so it takes no
    connections) and the relays bind it too; once all are ready this socket is closed and the kernel
    spreads new connections over the relays' listening sockets by a hash of their addresses.
    """
    reserve = socket.socket()
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", port))
    port = reserve.getsockname()[1]
    command = [sys.executable, __file__, "relay", "--port", str(port), "--target", target, "--reuse-port"]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for child in children:
            assert child.stdout is not None
            if not child.stdout.readline().startswith("ready"):
                sys.exit("a relay process did not start")
        reserve.close()
        print(f"ready {port}", flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        sys.exit("a relay process exited")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", choices=["sink", "relay"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--target", help="relay: the sink's base URL")
    parser.add_argument("--processes", type=int, default=1, help="relay: this many processes on one port")
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # one of relay_group's
    parser.add_argument("--counts-only", action="store_true", help="sink: count writes, keep no bodies")
    args = parser.parse_args()
    try:
        import uvloop

        run: Callable[[Any], Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    if args.role == "sink":
        run(serve_sink(args.port, args.counts_only))
    else:
        if not args.target:
            sys.exit("relay needs --target")
        if args.processes > 1:
            relay_group(args.port, args.target, args.processes)
        else:
            run(serve_relay(args.port, args.target, args.reuse_port))


if __name__ == "__main__":
    main()
