"""The http connector's wire (connectors/http/transport.py) against raw answers from a real socket."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
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


def _connection(url: str, *, extra: dict[str, object] | None = None, **kwargs: object) -> HttpConnection:
    options = HttpOptions.model_validate(
        {
            "connector": "http",
            "url": url,
            "limits": {"timeout": "2s"},
            "endpoints": {"put": {"path": "/items/{id}", "method": "PUT"}, "get": {"path": "/items"}},
            **(extra or {}),
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


def _answer(status: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


ANSWERS = {
    "created": _answer("201 Created", b'{"id": 7}', Content_Type="application/json"),
    "no content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "plain text id": _answer("200 OK", b"A-123", Content_Type="text/plain"),
    "refused": _answer(
        "422 Unprocessable", b'{"message": "Invalid %1", "parameters": ["n"]}', Content_Type="application/json"
    ),
    "busy": _answer("503 Busy", b"busy", Retry_After="7"),
    "redirect": _answer("301 Moved", Location="http://elsewhere/items"),
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_a_write_answers_the_same_on_the_direct_path_and_through_httpx_model(case: str) -> None:
    """Writes over the default pool skip httpx's Request/Response; another transport keeps them.
    What is sent and everything the caller sees must not tell the two apart."""
    heads: list[dict[str, str]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        heads.append({"line": lines[0], **fields, "body": request.split(b"\r\n\r\n", 1)[1].decode()})
        writer.write(ANSWERS[case])
        await writer.drain()
        writer.close()

    async def write(**kwargs: object) -> str:
        server, url = await _serve(answer)
        extra = {"auth": {"bearer": {"token": "s3cret-token"}}, "headers": {"X-Tenant": "acme"}}
        async with server, _connection(url, extra=extra, **kwargs) as connection:
            try:
                return await connection.write(
                    "put", {"id": "a/b", "n": 1}, key="a/b", mode="upsert", idempotency_key="k1"
                )
            except (TerminalError, TransientError) as exc:
                return f"{type(exc).__name__}: {exc} retry_after={getattr(exc, 'retry_after', None)}"

    direct = asyncio.run(write())
    modelled = asyncio.run(write(transport=httpx.AsyncHTTPTransport()))
    assert direct == modelled
    assert "s3cret-token" not in direct
    ours = ("line", "authorization", "idempotency-key", "content-type", "accept", "user-agent", "x-tenant", "body")
    assert {k: heads[0].get(k) for k in ours} == {k: heads[1].get(k) for k in ours}
    assert heads[0]["line"] == "PUT /items/a%2Fb HTTP/1.1" and heads[0]["authorization"] == "Bearer s3cret-token"


def test_a_write_the_server_never_takes_fails_the_same_on_both_paths() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def write(**kwargs: object) -> str:
        async with _connection(f"http://127.0.0.1:{port}", **kwargs) as connection:
            with pytest.raises(TransientError) as caught:
                await connection.write("put", {"id": 7}, key=7, mode="upsert", idempotency_key="k")
        return str(caught.value).split(" (", 1)[0]

    assert asyncio.run(write()) == asyncio.run(write(transport=httpx.AsyncHTTPTransport()))
