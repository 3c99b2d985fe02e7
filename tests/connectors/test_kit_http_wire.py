"""The HTTP kit's lean HTTP/1.1 client (engine/kit/http/wire.py), against real sockets.

Each server here is an asyncio server written for the case: it answers exactly the bytes the case
needs (chunked, close-delimited, interim 100, silence, a dropped connection), and counts connections.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
import subprocess
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from engine.errors import TransientError
from engine.kit.http.session import Request, transport_error
from engine.kit.http.wire import (
    AnswerTimedOut,
    BadAnswer,
    ConnectFailed,
    Dropped,
    InvalidRequest,
    Pool,
    PoolTimedOut,
    _decoded,
)

Handler = Callable[[bytes, asyncio.StreamWriter, int], Awaitable[bool]]  # (request, writer, number) -> keep open


class Server:
    """Reads whole requests (Content-Length bodies) and lets ``handler`` answer each."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                if not await self.handler(request, writer, len(self.requests)):
                    return
        finally:
            self.open_now -= 1
            writer.close()


def ok(body: bytes = b'{"ok": true}', *extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: application/json", *extra, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def answer_ok(_request: bytes, writer: asyncio.StreamWriter, _n: int) -> bool:
    writer.write(ok())
    await writer.drain()
    return True


def answer_ok_after(seconds: float) -> Handler:
    async def answer(_request: bytes, writer: asyncio.StreamWriter, _n: int) -> bool:
        await asyncio.sleep(seconds)
        return await answer_ok(_request, writer, _n)

    return answer


def run(scenario: Callable[[], Awaitable[object]]) -> object:
    return asyncio.run(scenario())  # type: ignore[arg-type]


# -- connections -------------------------------------------------------------------------------------
def test_keep_alive_one_connection_carries_every_sequential_request() -> None:
    async def scenario() -> None:
        async with Server(answer_ok) as server:
            pool = Pool(max_connections=4)
            for i in range(20):
                answer = await pool.request("PUT", f"{server.url}/items/{i}", [("X-N", str(i))], b"{}", read=2)
                assert (answer.status, answer.content) == (200, b'{"ok": true}')
            await pool.aclose()
        assert (server.connections, pool.opened, len(server.requests)) == (1, 1, 20)

    run(scenario)


def test_a_pool_works_again_under_a_new_event_loop() -> None:
    async def serve() -> tuple[asyncio.Server, str]:
        server = await asyncio.start_server(lambda r, w: Server(answer_ok)._serve(r, w), "127.0.0.1", 0)
        return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def once(pool: Pool) -> int:
        server, url = await serve()
        async with server:
            return (await pool.request("GET", url, [], None, read=2)).status

    pool = Pool()
    assert [asyncio.run(once(pool)), asyncio.run(once(pool))] == [200, 200]
    assert pool.opened == 2


def test_no_more_than_max_connections_are_in_use_at_once() -> None:
    async def scenario() -> None:
        async with Server(answer_ok_after(0.03)) as server:
            pool = Pool(max_connections=2)
            answers = await asyncio.gather(*(pool.request("GET", f"{server.url}/x", [], None) for _ in range(10)))
            await pool.aclose()
        assert [a.status for a in answers] == [200] * 10
        assert server.most_open <= 2 and server.connections == 2

    run(scenario)


def test_the_request_bytes_are_plain_http_1_1() -> None:
    async def scenario() -> bytes:
        async with Server(answer_ok) as server:
            pool = Pool()
            await pool.request("POST", f"{server.url}/a b/ü?q=1&r=x y", [("Idempotency-Key", "k1")], b'{"n":1}')
            await pool.request("POST", f"{server.url}/empty", [], None)
            await pool.request("GET", f"{server.url}/get", [], None)
            await pool.aclose()
            host = f"Host: 127.0.0.1:{server.url.rsplit(':', 1)[1]}\r\n"
            gzip = "Accept-Encoding: gzip, deflate\r\n"
            assert server.requests[1] == f"POST /empty HTTP/1.1\r\n{host}{gzip}Content-Length: 0\r\n\r\n".encode()
            assert server.requests[2] == f"GET /get HTTP/1.1\r\n{host}{gzip}\r\n".encode()
            return server.requests[0]

    first = run(scenario)
    assert isinstance(first, bytes)
    assert first.startswith(b"POST /a%20b/%C3%BC?q=1&r=x%20y HTTP/1.1\r\nHost: 127.0.0.1:")
    head, body = first.split(b"\r\n\r\n")
    assert head.endswith(b"\r\nIdempotency-Key: k1\r\nAccept-Encoding: gzip, deflate\r\nContent-Length: 7")
    assert body == b'{"n":1}'


def test_escapes_of_plain_path_characters_are_sent_plain_and_the_others_kept() -> None:
    async def scenario() -> list[bytes]:
        async with Server(answer_ok) as server:
            pool = Pool()
            await pool.request("GET", f"{server.url}/contacts/ada%40example.com/a%2Fb%2b?x=%26%3d%40", [], None)
            await pool.aclose()
            return [r.split(b"\r\n", 1)[0] for r in server.requests]

    assert run(scenario) == [b"GET /contacts/ada@example.com/a%2Fb%2B?x=%26%3D@ HTTP/1.1"]


# -- answers -----------------------------------------------------------------------------------------
def test_chunked_close_delimited_and_interim_answers_are_read_whole() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    ]

    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answers[n - 1])
        await writer.drain()
        return n < 3

    async def scenario() -> list[tuple[int, bytes, list[str]]]:
        async with Server(answer) as server:
            pool = Pool()
            got = []
            for _ in answers:
                reply = await pool.request("GET", f"{server.url}/x", [], None, read=2)
                got.append((reply.status, reply.content, [name for name, _ in reply.headers]))
            await pool.aclose()
            return got

    assert run(scenario) == [
        (200, b"hello world", []),  # the body is whole; the chunked framing is not passed on
        (201, b"ok", ["Content-Length"]),
        (200, b"until the end", ["Connection"]),
    ]


def test_chunked_trailers_stay_out_of_the_headers_and_another_transfer_coding_runs_to_the_close() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 42\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\nto the end",
    ]

    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answers[n - 1])
        await writer.drain()
        return n < 2

    async def scenario() -> list[tuple[bytes, list[str]]]:
        async with Server(answer) as server:
            pool = Pool()
            got = []
            for _ in answers:
                reply = await pool.request("GET", server.url, [], None, read=2)
                got.append((reply.content, [name for name, _ in reply.headers]))
            await pool.aclose()
            return got

    assert run(scenario) == [(b"ok", []), (b"to the end", ["Connection"])]


def test_a_gzip_body_of_several_members_is_decoded_whole_and_a_truncated_one_refused() -> None:
    two = gzip.compress(b"one ") + gzip.compress(b"two")
    assert _decoded([("Content-Encoding", "gzip")], two) == ([], b"one two")
    with pytest.raises(BadAnswer, match="gzip body does not decode"):
        _decoded([("Content-Encoding", "gzip")], two[:-4])


def test_a_deflate_answer_is_decoded_raw_or_wrapped() -> None:
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    bodies = [zlib.compress(b"wrapped"), raw.compress(b"raw") + raw.flush()]

    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(ok(bodies[n - 1], "Content-Encoding: deflate"))
        await writer.drain()
        return True

    async def scenario() -> list[bytes]:
        async with Server(answer) as server:
            pool = Pool()
            got = [(await pool.request("GET", server.url, [], None)).content for _ in bodies]
            await pool.aclose()
            return got

    assert run(scenario) == [b"wrapped", b"raw"]


def test_an_answer_to_head_has_no_body_and_a_brotli_answer_is_refused() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        else:
            writer.write(ok(b"xx", "Content-Encoding: br"))
        await writer.drain()
        return True

    async def scenario() -> None:
        async with Server(answer) as server:
            pool = Pool()
            head = await pool.request("HEAD", server.url, [], None, read=2)
            assert (head.status, head.content) == (200, b"")
            with pytest.raises(BadAnswer, match="'br'"):
                await pool.request("GET", server.url, [], None, read=2)
            await pool.aclose()

    run(scenario)


def test_a_garbled_answer_is_a_bad_answer_and_its_connection_is_not_reused() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n" if n == 1 else ok())
        await writer.drain()
        return True

    async def scenario() -> None:
        async with Server(answer) as server:
            pool = Pool()
            with pytest.raises(BadAnswer, match="not valid HTTP"):
                await pool.request("GET", server.url, [], None, read=2)
            assert (await pool.request("GET", server.url, [], None, read=2)).status == 200
            await pool.aclose()
        assert server.connections == 2

    run(scenario)


# -- failures ----------------------------------------------------------------------------------------
def test_an_idle_connection_the_server_dropped_is_retried_once_for_a_put_never_for_a_post() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n in (2, 5):  # the second request on each first connection: closed without an answer
            return False
        writer.write(ok())
        await writer.drain()
        return True

    async def scenario() -> None:
        async with Server(answer) as server:
            pool = Pool()
            await pool.request("PUT", server.url, [], b"1")
            assert (await pool.request("PUT", server.url, [], b"2")).status == 200  # sent again, new connection
            assert len(server.requests) == 3 and server.connections == 2
            await pool.aclose()
            pool = Pool()
            await pool.request("POST", server.url, [], b"4")
            with pytest.raises(Dropped, match="closed the connection before a whole answer"):
                await pool.request("POST", server.url, [], b"5")  # the server may have acted on it: not sent again
            assert len(server.requests) == 5
            await pool.aclose()

    run(scenario)


def test_a_second_answer_to_one_request_is_refused_and_its_connection_not_reused() -> None:
    """Bytes after a whole answer are never added to it nor left for the next request to read as its answer."""

    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(ok(b"first") + ok(b"STRAY", "X-Stray: 1"))
        elif n == 2:
            writer.write(ok(b"second") + b"HTTP/1.1 500 Stray\r\nContent-Length: 5\r\n")
        else:
            writer.write(ok(b"third"))
        await writer.drain()
        return True

    async def scenario() -> list[object]:
        async with Server(answer) as server:
            pool = Pool()
            got: list[object] = []
            for _ in range(3):
                try:
                    reply = await pool.request("GET", server.url, [], None, read=2)
                    got.append((reply.status, reply.content))
                except BadAnswer as exc:
                    got.append(str(exc))
            await pool.aclose()
            got.append(server.connections)
            return got

    # Each answer is its own, whole; each connection that carried a stray is closed, never reused.
    assert run(scenario) == [(200, b"first"), (200, b"second"), (200, b"third"), 3]


def test_a_connection_reset_in_the_middle_of_a_body_that_runs_to_the_close_is_dropped() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter, _n: int) -> bool:
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"id": 12')
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer.transport.abort()
        return False

    async def scenario() -> None:
        async with Server(answer) as server:
            pool = Pool()
            with pytest.raises(Dropped):
                await pool.request("GET", server.url, [], None, read=2)
            await pool.aclose()

    run(scenario)


def test_an_answer_cut_short_is_dropped_not_taken_as_whole() -> None:
    cuts = [b"HTTP/1.1 200 OK\r\nContent-Ty", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]

    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(cuts[n - 1])
        await writer.drain()
        return False

    async def scenario() -> None:
        async with Server(answer) as server:
            pool = Pool()
            for _ in cuts:
                with pytest.raises(Dropped) as dropped:
                    await pool.request("PUT", server.url, [], b"x", read=2)
                assert dropped.value.heard  # the server saw it: a PUT that was answered in part is not sent again
            assert len(server.requests) == 2
            await pool.aclose()

    run(scenario)


def test_silence_longer_than_read_times_out_but_a_slow_steady_answer_does_not() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await asyncio.sleep(2)
            return False
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        for part in (b"a", b"b", b"c", b"d"):  # 0.6 s in all, never more than 0.15 s quiet
            await asyncio.sleep(0.15)
            writer.write(part)
            await writer.drain()
        return True

    async def scenario() -> None:
        async with Server(answer) as server:
            pool = Pool()
            with pytest.raises(AnswerTimedOut, match=r"no answer within 0\.4s"):
                await pool.request("GET", server.url, [], None, read=0.4)
            assert (await pool.request("GET", server.url, [], None, read=0.4)).content == b"abcd"
            await pool.aclose()

    run(scenario)


def test_the_resend_goes_to_a_new_connection_when_every_idle_one_was_closed() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n in (3, 4):  # the server's idle timeout closed both pooled connections: each drops its next request
            return False
        await asyncio.sleep(0.02)  # the first two overlap: two connections are opened and kept
        writer.write(ok())
        await writer.drain()
        return True

    async def scenario() -> None:
        async with Server(answer) as server:
            pool = Pool()
            await asyncio.gather(*(pool.request("PUT", server.url, [], b"x") for _ in range(2)))
            assert pool.opened == 2
            await asyncio.gather(*(pool.request("PUT", server.url, [], b"y") for _ in range(2)))
            assert pool.opened == 4 and len(server.requests) == 6
            await pool.aclose()

    run(scenario)


def test_waiting_too_long_for_a_free_connection_says_the_request_was_not_sent() -> None:
    async def scenario() -> None:
        async with Server(answer_ok_after(0.5)) as server:
            pool = Pool(max_connections=1)
            busy = asyncio.create_task(pool.request("GET", server.url, [], None))
            await asyncio.sleep(0.05)
            with pytest.raises(PoolTimedOut, match=r"all 1 connections stayed busy for 0\.1s"):
                await pool.request("GET", server.url, [], None, pool=0.1)
            await busy
            busy = asyncio.create_task(pool.request("GET", server.url, [], None))
            await asyncio.sleep(0.05)
            with pytest.raises(PoolTimedOut) as caught:
                await pool.request("GET", server.url, [], None, pool=0.1)
            error = transport_error(caught.value, Request("GET", server.url + "/", {}, None, 0.1), "erp")
            assert isinstance(error, TransientError) and str(error) == (
                "erp: GET /: not sent: every connection to the system stayed busy for 0.1s"
            )
            await busy
            await pool.aclose()

    run(scenario)


def test_a_cancelled_request_gives_its_slot_back() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await asyncio.sleep(1)
            return False
        writer.write(ok())
        await writer.drain()
        return True

    async def scenario() -> None:
        async with Server(answer) as server:
            pool = Pool(max_connections=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await pool.request("GET", server.url, [], None)
            assert (await pool.request("GET", server.url, [], None, pool=0.5)).status == 200
            await pool.aclose()

    run(scenario)


def test_a_refused_connection_and_requests_that_cannot_be_sent() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = Pool()
        with pytest.raises(ConnectFailed, match=f"could not connect to 127.0.0.1:{port}"):
            await pool.request("GET", f"http://127.0.0.1:{port}/", [], None, connect=1)
        with pytest.raises(InvalidRequest, match="line break"):
            await pool.request("GET", f"http://127.0.0.1:{port}/", [("X-Evil", "a\r\nInjected: 1")], None)
        with pytest.raises(InvalidRequest, match="unsupported URL scheme 'ftp'"):
            await pool.request("GET", "ftp://example.com/", [], None)

    run(scenario)


# -- TLS ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_with_a_trusted_certificate_and_refused_with_an_unknown_one(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ok(b"secure"))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=served)
        url = f"https://localhost:{server.sockets[0].getsockname()[1]}/x"
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = Pool(ssl_context=trusting)
        assert (await pool.request("GET", url, [], None, connect=2, read=2)).content == b"secure"
        await pool.aclose()
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await Pool().request("GET", url, [], None, connect=2, read=2)  # the system's CAs do not know it
        server.close()

    run(scenario)
