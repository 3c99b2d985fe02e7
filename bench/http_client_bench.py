"""CPU per request of the HTTP clients the http connector could send through, against the same sink.

The target is `bench/wire.py sink` in its own process (~40 us of CPU per request). This process sends
N small keep-alive PUTs (a 60-byte JSON body, the headers a connector write carries) over C connections,
C at a time, through each client in turn, and reads its own CPU time (time.process_time) around them:

  - httpx.AsyncClient (httpcore's pool), what the connector started with;
  - aiohttp.ClientSession, what it used until connectors/http/wire.py;
  - seamline's pool (connectors/http/wire.py: asyncio protocols, httptools' parser);
  - HttpConnection.write, the whole connector write over that pool (URL from the record, JSON encoding,
    the answer's id), as the daemon's workers call it.

Usage:  python3 bench/http_client_bench.py [--requests 8000] [--connections 16] [--passes 2]
Prints a markdown table; best pass per client. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from connectors.http import HttpOptions  # noqa: E402
from connectors.http.client import HttpConnection  # noqa: E402
from connectors.http.wire import Pool  # noqa: E402
from engine.connector import ConnectContext  # noqa: E402

BODY = json.dumps({"sku": "M-000001", "qty": 5, "plant": "1000", "sent_at": 0.0}).encode()
HEADERS = {"Accept": "application/json", "User-Agent": "seamline-bench", "Content-Type": "application/json"}

Send = Callable[[int], Awaitable[int]]


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


async def through_pool(base: str, connections: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    pool = Pool(max_connections=connections)

    async def send(i: int) -> int:
        headers = [*HEADERS.items(), ("Idempotency-Key", str(i))]
        answer = await pool.request("PUT", f"{base}/stock/M-{i:06d}", headers, BODY, connect=10, read=10, pool=10)
        return answer.status

    return send, pool.aclose


async def through_connector(base: str, connections: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    options = HttpOptions.model_validate(
        {
            "connector": "http",
            "url": base,
            "limits": {"timeout": "10s", "concurrency": connections},
            "endpoints": {"stock": {"path": "/stock/{sku}", "method": "PUT"}},
        }
    )
    connection = HttpConnection(options, ConnectContext(system="shop", client="bench"))

    async def send(i: int) -> int:
        record = {"sku": f"M-{i:06d}", "qty": 5, "plant": "1000", "sent_at": 0.0}
        receipt = await connection.write("stock", record, key=record["sku"], mode="upsert", idempotency_key=str(i))
        return int(receipt.split()[0])

    return send, connection.close


CLIENTS = {
    "httpx.AsyncClient (httpcore)": through_httpx,
    "aiohttp.ClientSession": through_aiohttp,
    "seamline pool (connectors/http/wire.py)": through_pool,
    "HttpConnection.write over that pool (the whole connector write)": through_connector,
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
