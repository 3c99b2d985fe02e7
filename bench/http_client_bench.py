"""CPU per request of the HTTP clients the HTTP kit could send through, against the same sink.

The target is `bench/wire.py sink` in its own process (~40 us of CPU per request). This process sends
N small keep-alive PUTs (a 60-byte JSON body, the headers a connector write carries) over C connections,
C at a time, through each client in turn, and reads its own CPU time (time.process_time) around them:

  - httpx.AsyncClient (httpcore's pool), what the connector started with;
  - aiohttp.ClientSession on its own;
  - the kit's pool (engine/kit/http/wire.py: asyncio protocols, httptools' parser; proxy, TLS and
    answer caps included);
  - aiohttp's client behind the kit's Transport adapter (AiohttpTransport below: the same proxy rule,
    TLS context and caps, its answer turned into the kit's Answer), the one to beat;
  - HttpConnection.write, the whole connector write through the kit's Session (URL from the record,
    JSON encoding, auth, the answer's id), over each of the two, as the daemon's workers call it;
  - the same write with OAuth 1.0a (each request signed by oauthlib): the one write path, signed.

Usage:  python3 bench/http_client_bench.py [--requests 8000] [--connections 16] [--passes 2]
Prints a markdown table; best pass per client. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from connectors.http import HttpOptions  # noqa: E402
from connectors.http.client import HttpConnection  # noqa: E402
from engine.connector import ConnectContext  # noqa: E402
from engine.kit.http.proxy import ProxyRule  # noqa: E402
from engine.kit.http.session import Transport  # noqa: E402
from engine.kit.http.wire import (  # noqa: E402
    MAX_BODY,
    MAX_DECODED,
    Answer,
    AnswerTimedOut,
    BadAnswer,
    ConnectFailed,
    Dropped,
    Pool,
    TooLarge,
)

BODY = json.dumps({"sku": "M-000001", "qty": 5, "plant": "1000", "sent_at": 0.0}).encode()
HEADERS = {"Accept": "application/json", "User-Agent": "seamline-bench", "Content-Type": "application/json"}

Send = Callable[[int], Awaitable[int]]


class AiohttpTransport:
    """aiohttp's client behind the kit's Transport adapter, doing what the kit's pool does: one session
    with at most ``max_connections`` connections, the same proxy rule, TLS context and answer caps."""

    def __init__(
        self,
        *,
        max_connections: int = 16,
        ssl_context: ssl.SSLContext | None = None,
        proxy: ProxyRule | None = None,
        max_body: int = MAX_BODY,
        max_decoded: int = MAX_DECODED,
    ) -> None:
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self.proxy = proxy
        self.max_body = max_body
        self.max_decoded = max_decoded
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.max_connections, ssl=self.ssl_context or True)
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=True
        )

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
        if self._session is None:
            self._session = self._open()
        proxy_url: str | None = None
        if self.proxy is not None:
            parts = url.split("/", 3)
            scheme, authority = parts[0].rstrip(":"), parts[2]
            host, _, port = authority.rpartition(":") if authority.count(":") == 1 else (authority, "", "")
            found = self.proxy(scheme, host or authority, int(port) if port else (443 if scheme == "https" else 80))
            proxy_url = found.shown() if found is not None else None
        timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=read)
        try:
            async with self._session.request(
                method,
                url,
                headers=list(headers),
                data=body,
                allow_redirects=False,
                proxy=proxy_url,
                timeout=timeout,
            ) as response:
                length = response.content_length
                if length is not None and length > self.max_body:
                    raise TooLarge("the answer's body is too large", limit=self.max_body, what="body")
                chunks = []
                size = 0
                async for chunk in response.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > self.max_decoded:
                        raise TooLarge("the answer's body decodes too large", limit=self.max_decoded, what="decoded")
                    chunks.append(chunk)
                kept = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in response.raw_headers
                    if k.lower() not in (b"content-encoding", b"transfer-encoding")
                ]
                return Answer(response.status, response.reason or "", kept, b"".join(chunks))
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"could not connect: {exc}") from exc
        except aiohttp.ServerTimeoutError as exc:
            raise AnswerTimedOut(f"no answer within {read:g}s") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise Dropped(f"the server closed the connection before a whole answer: {exc}", heard=False) from exc
        except aiohttp.ClientPayloadError as exc:
            raise BadAnswer(f"the answer's body cannot be read: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def through_httpx(base: str, connections: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=connections))

    async def send(i: int) -> int:
        headers = {**HEADERS, "Idempotency-Key": str(i)}
        answer = await client.put(f"{base}/stock/M-{i:06d}", content=BODY, headers=headers)
        return answer.status_code

    return send, client.aclose


async def through_aiohttp(base: str, connections: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))

    async def send(i: int) -> int:
        headers = {**HEADERS, "Idempotency-Key": str(i)}
        async with session.put(f"{base}/stock/M-{i:06d}", data=BODY, headers=headers) as answer:
            await answer.read()
            return answer.status

    return send, session.close


def _transport(name: str, connections: int) -> Transport:
    rule = ProxyRule("environment")
    if name == "aiohttp":
        return AiohttpTransport(max_connections=connections, proxy=rule)
    return Pool(max_connections=connections, proxy=rule)


def through(name: str) -> Callable[[str, int], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]]:
    async def make(base: str, connections: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
        transport = _transport(name, connections)

        async def send(i: int) -> int:
            headers = [*HEADERS.items(), ("Idempotency-Key", str(i))]
            url = f"{base}/stock/M-{i:06d}"
            answer = await transport.request("PUT", url, headers, BODY, connect=10, read=10, pool=10)
            return answer.status

        return send, transport.aclose

    return make


def connector(name: str, auth: dict[str, Any] | None = None) -> Callable[..., Any]:
    async def make(base: str, connections: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
        options = HttpOptions.model_validate(
            {
                "connector": "http",
                "url": base,
                "limits": {"timeout": "10s", "concurrency": connections},
                "endpoints": {"stock": {"path": "/stock/{sku}", "method": "PUT"}},
                **({"auth": auth} if auth else {}),
            }
        )
        context = ConnectContext(system="shop", client="bench")
        connection = HttpConnection(options, context, transport=_transport(name, connections))

        async def send(i: int) -> int:
            record = {"sku": f"M-{i:06d}", "qty": 5, "plant": "1000", "sent_at": 0.0}
            receipt = await connection.write("stock", record, key=record["sku"], mode="upsert", idempotency_key=str(i))
            return int(receipt.split()[0])

        return send, connection.close

    return make


OAUTH1 = {"oauth1": {"consumer_key": "ck", "consumer_secret": "cs", "access_token": "at", "access_token_secret": "ts"}}
CLIENTS = {
    "httpx.AsyncClient (httpcore)": through_httpx,
    "aiohttp.ClientSession, on its own": through_aiohttp,
    "the kit's pool (engine/kit/http/wire.py)": through("pool"),
    "aiohttp behind the kit's Transport adapter": through("aiohttp"),
    "HttpConnection.write over the kit's pool (the whole connector write)": connector("pool"),
    "HttpConnection.write over aiohttp behind the adapter": connector("aiohttp"),
    "HttpConnection.write over the kit's pool, OAuth 1.0a signed": connector("pool", OAUTH1),
}


async def measure(make: Callable[..., Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]], base: str,
                  requests: int, connections: int) -> tuple[float, float]:  # fmt: skip
    send, close = await make(base, connections)
    gate = asyncio.Semaphore(connections)

    async def one(i: int) -> None:
        async with gate:
            status = await send(i)
            if status != 200:
                raise SystemExit(f"the sink answered {status}")

    await asyncio.gather(*(one(i) for i in range(connections * 4)))  # connections open, caches warm
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await close()
    return 1e6 * cpu / requests, requests / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    try:
        import uvloop

        run: Callable[[Awaitable[tuple[float, float]]], tuple[float, float]] = uvloop.run
    except ImportError:
        run = asyncio.run
    port = free_port()
    command = [sys.executable, str(HERE / "wire.py"), "sink", "--port", str(port)]
    sink = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert sink.stdout is not None
        sink.stdout.readline()  # "ready <port>"
        base = f"http://127.0.0.1:{port}"
        rows = []
        for name, make in CLIENTS.items():
            results = [run(measure(make, base, args.requests, args.connections)) for _ in range(args.passes)]
            cpu, rate = min(r[0] for r in results), max(r[1] for r in results)
            rows.append((name, cpu, rate))
    finally:
        sink.terminate()
    print(f"## {args.requests:,} keep-alive PUTs over {args.connections} connections, best of {args.passes}\n")
    print("| client | client CPU us per request | requests/s |")
    print("|---|---:|---:|")
    for name, cpu, rate in rows:
        print(f"| {name} | {cpu:.0f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
