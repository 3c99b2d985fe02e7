"""The http connector over the HTTP kit's session and wire, against raw answers from a real socket."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

import pytest

from connectors.http import HttpOptions
from connectors.http.client import HttpConnection
from engine.connector import ConnectContext
from engine.errors import TerminalError, TransientError
from engine.kit.http.wire import Answer as WireAnswer

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


class Recorder:
    """A stand-in for the kit's pool: records each request and answers it from ``reply``."""

    def __init__(self, reply: Callable[[str, str, dict[str, str], bytes | None], WireAnswer]) -> None:
        self.reply = reply
        self.seen: list[tuple[str, str, dict[str, str], bytes | None]] = []

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
    ) -> WireAnswer:
        fields = dict(headers)
        self.seen.append((method, url, fields, body))
        return self.reply(method, url, fields, body)

    async def aclose(self) -> None:
        pass


def test_another_transport_can_be_passed_in() -> None:
    body = json.dumps({"message": "Invalid %1", "parameters": ["sku"]}).encode()
    recorder = Recorder(lambda *_: WireAnswer(400, "Bad Request", [("Content-Type", "application/json")], body))

    async def scenario() -> None:
        async with _connection("http://erp.invalid", transport=recorder) as connection:
            with pytest.raises(TerminalError, match="Invalid sku"):
                await connection.write("put", {"id": 7}, key=7, mode="upsert", idempotency_key="k")

    asyncio.run(scenario())
    assert [url for _, url, _, _ in recorder.seen] == ["http://erp.invalid/items/7"]
    assert recorder.seen[0][2]["idempotency-key"] == "k"


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


AUTHS = {
    "bearer": {"bearer": {"token": "s3cret-token"}},
    "oauth1": {
        "oauth1": {
            "consumer_key": "ck",
            "consumer_secret": "cs-secret",
            "access_token": "at-token",
            "access_token_secret": "ats-secret",
        }
    },
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_a_write_takes_one_path_whatever_the_auth_or_the_log_level(case: str) -> None:
    """There is one write path: what is sent and everything the caller sees is the same at DEBUG as at
    INFO, and with a signed auth as with a static one (only the Authorization value differs)."""
    heads: list[dict[str, str]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        lines = request.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
        fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        heads.append({"line": lines[0], **fields, "body": request.split(b"\r\n\r\n", 1)[1].decode()})
        writer.write(ANSWERS[case])
        await writer.drain()
        writer.close()

    async def write(auth: str) -> str:
        server, url = await _serve(answer)
        extra = {"auth": AUTHS[auth], "headers": {"X-Tenant": "acme"}}
        async with server, _connection(url, extra=extra) as connection:
            try:
                return await connection.write(
                    "put", {"id": "a/b", "n": 1}, key="a/b", mode="upsert", idempotency_key="k1"
                )
            except (TerminalError, TransientError) as exc:
                return f"{type(exc).__name__}: {exc} retry_after={getattr(exc, 'retry_after', None)}"

    logger = logging.getLogger("seamline.connectors.http")
    outcomes = []
    for level in (logging.INFO, logging.DEBUG):
        logger.setLevel(level)
        try:
            outcomes += [asyncio.run(write("bearer")), asyncio.run(write("oauth1"))]
        finally:
            logger.setLevel(logging.NOTSET)
    assert len(set(outcomes)) == 1, outcomes
    assert "s3cret-token" not in outcomes[0]
    ours = ("line", "idempotency-key", "content-type", "accept", "user-agent", "x-tenant", "body")
    assert all({k: head.get(k) for k in ours} == {k: heads[0].get(k) for k in ours} for head in heads)
    assert heads[0]["line"] == "PUT /items/a%2Fb HTTP/1.1" and heads[0]["authorization"] == "Bearer s3cret-token"
    assert heads[1]["authorization"].startswith("OAuth ") and heads[2]["authorization"] == heads[0]["authorization"]


def test_a_write_the_server_never_takes_fails_the_same_at_any_log_level() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def write() -> str:
        async with _connection(f"http://127.0.0.1:{port}") as connection:
            with pytest.raises(TransientError) as caught:
                await connection.write("put", {"id": 7}, key=7, mode="upsert", idempotency_key="k")
        return str(caught.value)

    logger = logging.getLogger("seamline.connectors.http")
    texts = []
    for level in (logging.INFO, logging.DEBUG):
        logger.setLevel(level)
        try:
            texts.append(asyncio.run(write()))
        finally:
            logger.setLevel(logging.NOTSET)
    assert texts[0] == texts[1] and "could not connect to 127.0.0.1" in texts[0]


def test_the_auth_header_replaces_a_default_header_of_the_same_name_in_any_case() -> None:
    recorder = Recorder(lambda *_: WireAnswer(204, "No Content", [], b""))
    extra = {"auth": {"bearer": {"token": "tok-123456"}}, "headers": {"AUTHORIZATION": "Basic old", "X-A": "1"}}

    async def scenario() -> None:
        async with _connection("http://erp.invalid", extra=extra, transport=recorder) as connection:
            await connection.write("put", {"id": 7}, key=7, mode="upsert", idempotency_key="k")

    asyncio.run(scenario())
    (_, _, headers, _) = recorder.seen[0]
    assert headers["authorization"] == "Bearer tok-123456" and headers["x-a"] == "1"
    assert [name for name in headers if name.lower() == "authorization"] == ["authorization"]
