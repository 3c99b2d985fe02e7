"""The http connector's wire (connectors/http/transport.py) against raw answers from a real socket."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest

from connectors.http import HttpOptions
from connectors.http.client import HttpConnection
from engine.connector import ConnectContext
from engine.errors import TerminalError, TransientError

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def _connection(url: str, **kwargs: object) -> HttpConnection:
    options = HttpOptions.model_validate(
        {
            "connector": "http",
            "url": url,
            "limits": {"timeout": "2s"},
            "endpoints": {"put": {"path": "/items/{id}", "method": "PUT"}, "get": {"path": "/items"}},
        }
    )
    return HttpConnection(options, ConnectContext(system="erp", client="t"), **kwargs)  # type: ignore[arg-type]


async def _serve(answer: Answer) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def test_a_gzip_answer_is_decoded_once() -> None:
    payload = gzip.compress(json.dumps({"items": [{"id": 1}]}).encode())

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    async def scenario() -> object:
        server, url = await _serve(answer)
        async with server, _connection(url) as connection:
            return await connection.call("get", {}, timeout=2)

    assert asyncio.run(scenario()) == {"items": [{"id": 1}]}


def test_a_garbled_status_line_is_transient() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server, url = await _serve(answer)
        async with server, _connection(url) as connection:
            with pytest.raises(TransientError, match=r"dropped|protocol|Invalid|connection"):
                await connection.write("put", {"id": 7}, key=7, mode="upsert", idempotency_key="k")

    asyncio.run(scenario())


def test_a_server_that_never_answers_is_a_transient_timeout() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    async def scenario() -> None:
        server, url = await _serve(answer)
        async with server, _connection(url) as connection:
            with pytest.raises(TransientError, match=r"no answer within 0\.2s"):
                await connection.call("get", {}, timeout=0.2)

    asyncio.run(scenario())


def test_another_httpx_transport_can_be_passed_in() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(400, json={"message": "Invalid %1", "parameters": ["sku"]})

    async def scenario() -> None:
        async with _connection("http://erp.invalid", transport=httpx.MockTransport(handler)) as connection:
            with pytest.raises(TerminalError, match="Invalid sku"):
                await connection.write("put", {"id": 7}, key=7, mode="upsert", idempotency_key="k")

    asyncio.run(scenario())
    assert [str(r.url) for r in seen] == ["http://erp.invalid/items/7"]
    assert seen[0].headers["Idempotency-Key"] == "k"
