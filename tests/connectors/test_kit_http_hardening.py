"""The HTTP kit's hardened wire, over real loopback sockets: proxies, TLS with a client certificate,
caps on an answer, a gzip bomb, and error texts that never quote a header's value.

Every server here is written for the case: an asyncio origin (plain or TLS, asking for a client
certificate or not) and a small proxy that tunnels ``CONNECT`` and forwards absolute-form requests.
Certificates are made with openssl for the module: a CA, a server certificate for localhost and
127.0.0.1, and a client certificate, each signed by the CA.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
import socket
import ssl
import subprocess
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from connectors.http import HttpOptions
from connectors.http.client import HttpConnection
from connectors.magento import MagentoOptions
from connectors.magento.client import MagentoConnection
from connectors.magento.fake import FakeMagento
from connectors.salesforce import SalesforceOptions
from connectors.salesforce.client import SalesforceConnection
from connectors.salesforce.fake import FakeSalesforce
from engine.connector import ConnectContext
from engine.errors import SeamlineError, TerminalError, TransientError

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


# -- servers -----------------------------------------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def answer_bytes(status: str = "200 OK", body: bytes = b'{"ok": true}', *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo(request: bytes, writer: asyncio.StreamWriter) -> None:
    """Answers with the request line it got, as JSON."""
    line = request.split(b"\r\n", 1)[0].decode()
    writer.write(answer_bytes(body=json.dumps({"line": line}).encode()))
    await writer.drain()


@contextlib.asynccontextmanager
async def origin(handler: Handler = echo, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """A keep-alive server on loopback whose every request ``handler`` answers; yields its base URL."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader)
                await handler(request, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
    finally:
        server.close()


@dataclass
class LoopbackProxy:
    """A small http proxy: CONNECT tunnels, absolute-form requests forwarded (one per connection)."""

    credentials: str | None = None  # user:password it asks for, else none
    lines: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> LoopbackProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request(reader)
            head, _, body = request.partition(b"\r\n\r\n")
            line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
            self.lines.append(line)
            given = headers.get("proxy-authorization")
            self.authorizations.append(given)
            if self.credentials and given != "Basic " + base64.b64encode(self.credentials.encode()).decode():
                page = b"<html>credentials, please</html>"  # a refusal with a body, as squid sends one
                writer.write(
                    b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\n'
                    + f"Content-Length: {len(page)}\r\n\r\n".encode()
                    + page
                )
                await writer.drain()
                return
            method, target, _version = line.split(" ")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            kept = [h for h in header_lines if not h.lower().startswith(("proxy-authorization", "connection"))]
            origin_form = f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1"
            up_writer.write(("\r\n".join([origin_form, *kept, "Connection: close"]) + "\r\n\r\n").encode() + body)
            await up_writer.drain()
            answer_head = (await up_reader.readuntil(b"\r\n\r\n"))[:-4]
            lines = [h for h in answer_head.split(b"\r\n") if not h.lower().startswith(b"connection:")]
            length = next((int(h.split(b":", 1)[1]) for h in lines if h.lower().startswith(b"content-length:")), 0)
            answer_body = await up_reader.readexactly(length)
            up_writer.close()
            writer.write(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + answer_body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.contextmanager
def blocking_tls_server(context: ssl.SSLContext) -> Iterator[str]:
    """A TLS server on a thread, one request per connection, answering with the client certificate's
    subject: OpenSSL's own server, so a refused handshake sends its alert as a real server does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(3)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    peer = tls.getpeercert()
                    subject = dict(item[0] for item in peer["subject"]) if peer else None
                    tls.sendall(answer_bytes("200 OK", json.dumps({"client": subject}).encode(), "Connection: close"))
            except OSError:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


# -- certificates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path

    def server_context(self, *, require_client: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(self.ca))
        return context


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(folder: Path, name: str, subject: str, extensions: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             cwd=folder)  # fmt: skip
    (folder / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
             "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=seamline test CA",
             *ca_ext, "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=some other CA",
             *ca_ext, "-keyout", "other.key", "-out", "other.pem", cwd=folder)  # fmt: skip
    common = "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
    _signed(folder, "server", "/CN=localhost",
            common + "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")  # fmt: skip
    _signed(folder, "client", "/CN=seamline", common + "extendedKeyUsage=clientAuth\n")
    return Pki(
        folder / "ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
        folder / "other.pem",
    )


# -- the connection under test -----------------------------------------------------------------------


def connection(url: str, *, masked: list[str] | None = None, base_dir: str = "", **extra: Any) -> HttpConnection:
    options = HttpOptions.model_validate(
        {
            "connector": "http",
            "url": url,
            "limits": {"timeout": "3s"},
            "endpoints": {"get": {"path": "/items"}, "put": {"path": "/items/{id}", "method": "PUT"}},
            **extra,
        }
    )
    sink = masked if masked is not None else []
    return HttpConnection(options, ConnectContext(system="erp", client="t", mask=sink.append, base_dir=base_dir))


async def failure(action: Awaitable[Any]) -> SeamlineError:
    try:
        await action
    except SeamlineError as exc:
        return exc
    raise AssertionError("no error")


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# -- header values never in error texts -------------------------------------------------------------


def test_an_answer_that_does_not_decode_names_no_header_value_and_is_not_called_a_drop() -> None:
    """Reproduced before the kit: the error quoted every response header (the cookie too) and said
    "the connection dropped before an answer"."""
    garbage = b"\x1f\x8b\x08\x00not gzip at all"

    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer_bytes("200 OK", garbage, "Content-Encoding: gzip", "Set-Cookie: sid=TOPSECRET-COOKIE"))
        await writer.drain()

    async def scenario() -> SeamlineError:
        async with origin(answer) as url, connection(url) as conn:
            return await failure(conn.call("get", {}, timeout=2))

    error = run(scenario)
    assert isinstance(error, TransientError)
    assert "TOPSECRET" not in str(error) and "Set-Cookie" not in str(error)
    assert "dropped" not in str(error)
    assert str(error).startswith("erp: GET /items: protocol error: the answer's gzip body does not decode")


# -- caps on an answer -------------------------------------------------------------------------------


def test_an_answer_over_max_response_size_is_refused_and_the_connection_serves_again() -> None:
    big = b'{"items": ["' + b"x" * (2 * 1024 * 1024) + b'"]}'

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/items/1" in request.split(b"\r\n", 1)[0]:
            writer.write(answer_bytes(body=b'{"id": 1}'))
        else:
            writer.write(answer_bytes(body=big))
        await writer.drain()

    async def scenario() -> tuple[SeamlineError, str]:
        async with origin(answer) as url, connection(url, max_response_size="1MiB") as conn:
            error = await failure(conn.call("get", {}, timeout=2))
            after = await conn.write("put", {"id": 1}, key=1, mode="upsert", idempotency_key="k")
            return error, after

    error, after = run(scenario)
    assert isinstance(error, TerminalError)
    assert "larger than 1 MiB" in str(error) and "max_response_size" in str(error)
    assert after == "200 id=1"


def test_a_body_that_runs_to_the_close_is_capped_too() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        for _ in range(64):  # 4 MiB, no length given: only the close would end it
            writer.write(b"y" * 65536)
            await writer.drain()
        writer.close()

    async def scenario() -> SeamlineError:
        async with origin(answer) as url, connection(url, max_response_size="1MiB") as conn:
            return await failure(conn.call("get", {}, timeout=2))

    error = run(scenario)
    assert isinstance(error, TerminalError) and "max_response_size" in str(error)


def _bomb(inflated: int) -> bytes:
    """A gzip body of ``inflated`` zero bytes, made a chunk at a time (it compresses ~1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    parts = [packer.compress(chunk) for _ in range(inflated // len(chunk))]
    return b"".join([*parts, packer.flush()])


def test_a_gzip_bomb_is_refused_at_max_decoded_size_in_bounded_memory() -> None:
    bomb = _bomb(256 * 1024 * 1024)  # 256 MiB of zeros in ~250 KB
    assert len(bomb) < 1024 * 1024

    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer_bytes("200 OK", bomb, "Content-Encoding: gzip"))
        await writer.drain()

    async def scenario() -> SeamlineError:
        async with origin(answer) as url, connection(url, max_decoded_size="4MiB") as conn:
            return await failure(conn.call("get", {}, timeout=5))

    tracemalloc.start()
    try:
        error = run(scenario)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, TerminalError)
    assert "decodes to more than 4 MiB" in str(error) and "max_decoded_size" in str(error)
    assert peak < 24 * 1024 * 1024, f"decoding took {peak / 1024**2:.0f} MiB at its peak"


def test_a_gzip_answer_under_the_cap_is_decoded() -> None:
    payload = json.dumps({"items": [{"id": n} for n in range(1000)]}).encode()

    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer_bytes("200 OK", gzip.compress(payload), "Content-Encoding: gzip"))
        await writer.drain()

    async def scenario() -> Any:
        async with origin(answer) as url, connection(url, max_decoded_size="1MiB") as conn:
            return await conn.call("get", {}, timeout=2)

    assert run(scenario) == json.loads(payload)


# -- proxies -----------------------------------------------------------------------------------------


def test_the_proxy_option_forwards_plain_http_in_absolute_form() -> None:
    async def scenario() -> tuple[Any, list[str]]:
        async with LoopbackProxy() as proxy, origin() as url, connection(url, proxy=proxy.url) as conn:
            answer = await conn.call("get", {"q": "a b"}, timeout=2)
            return answer, proxy.lines

    answer, lines = run(scenario)
    port = urlsplit(lines[0].split(" ")[1]).port
    assert lines == [f"GET http://127.0.0.1:{port}/items?q=a+b HTTP/1.1"]
    assert answer == {"line": "GET /items?q=a+b HTTP/1.1"}  # what the origin got from the proxy


def test_https_goes_through_the_environments_proxy_in_a_connect_tunnel(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[list[Any], list[str]]:
        async with LoopbackProxy() as proxy, origin(tls=pki.server_context()) as url:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            async with connection(url, tls={"ca_bundle": str(pki.ca)}) as conn:
                answers = [await conn.call("get", {}, timeout=2) for _ in range(3)]
            return answers, proxy.lines

    answers, lines = run(scenario)
    assert answers == [{"line": "GET /items HTTP/1.1"}] * 3
    assert len(lines) == 1 and lines[0].startswith("CONNECT localhost:") and lines[0].endswith(" HTTP/1.1")


def test_no_proxy_and_direct_bypass_the_environments_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[str]:
        async with LoopbackProxy() as proxy, origin() as url:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            async with connection(url) as conn:
                await conn.call("get", {}, timeout=2)  # through the proxy
            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.0/8")
            async with connection(url) as conn:
                await conn.call("get", {}, timeout=2)  # exempt
            monkeypatch.delenv("NO_PROXY")
            async with connection(url, proxy="direct") as conn:
                await conn.call("get", {}, timeout=2)  # never a proxy
            return proxy.lines

    assert len(run(scenario)) == 1


def test_a_proxy_that_wants_credentials_is_terminal_and_its_password_never_shows(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[SeamlineError, SeamlineError, Any, list[str | None], list[str]]:
        async with LoopbackProxy(credentials="svc:pr0xy-pa55word") as proxy, origin(tls=pki.server_context()) as url:
            host = proxy.url.split("//")[1]
            masked: list[str] = []
            tls = {"ca_bundle": str(pki.ca)}
            async with connection(url, proxy=proxy.url, tls=tls) as conn:
                refused = await failure(conn.call("get", {}, timeout=2))
            async with connection(url, proxy=f"http://svc:wrong-pa55word@{host}", tls=tls, masked=masked) as conn:
                wrong = await failure(conn.call("get", {}, timeout=2))
            async with connection(url, proxy=f"http://svc:pr0xy-pa55word@{host}", tls=tls, masked=masked) as conn:
                answer = await conn.call("get", {}, timeout=2)
            return refused, wrong, answer, proxy.authorizations, masked

    with caplog.at_level(logging.DEBUG, logger="seamline.connectors.http"):
        refused, wrong, answer, authorizations, masked = run(scenario)
    for error in (refused, wrong):
        assert isinstance(error, TerminalError) and error.status == 407
        assert "refused the tunnel" in str(error) and "407 Proxy Authentication Required" in str(error)
        assert "pa55word" not in str(error)
    assert answer == {"line": "GET /items HTTP/1.1"}
    assert (
        authorizations[0] is None and authorizations[2] == "Basic " + base64.b64encode(b"svc:pr0xy-pa55word").decode()
    )
    assert "pr0xy-pa55word" in masked and "pa55word" not in caplog.text


def test_a_proxy_the_client_cannot_speak_to_is_named_not_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "socks5://user:secret-pw@127.0.0.1:1080")

    async def scenario() -> SeamlineError:
        async with connection("http://127.0.0.1:9") as conn:
            return await failure(conn.call("get", {}, timeout=1))

    error = run(scenario)
    assert isinstance(error, TerminalError)
    assert "HTTP_PROXY" in str(error) and "http:// proxies only" in str(error) and "secret-pw" not in str(error)


def test_magento_and_salesforce_take_the_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kit is every HTTP connector's: the same proxy rule holds for magento and salesforce."""
    product = {"sku": "P-1", "name": "P", "attribute_set_id": 4, "price": 1.5, "type_id": "simple"}

    async def scenario(shop: FakeMagento, org: FakeSalesforce) -> list[str]:
        async with LoopbackProxy() as proxy:
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            context = ConnectContext(system="shop", client="t")
            magento = MagentoOptions.model_validate(
                {"connector": "magento", "url": shop.url, "auth": {"bearer": {"token": "tok-123456"}}}
            )
            async with MagentoConnection(magento, context) as conn:
                await conn.write("products", product, key="P-1", mode="upsert", idempotency_key="k1")
            salesforce = SalesforceOptions.model_validate(
                {
                    "connector": "salesforce",
                    "url": org.url,
                    "auth": {"token_url": org.token_url, "client_id": "app", "client_secret": "s3-secret"},
                }
            )
            async with SalesforceConnection(salesforce, context) as conn:
                await conn.write("accounts", {"Name": "A"}, key="A-1", mode="upsert", idempotency_key="k2")
            return proxy.lines

    with (
        FakeMagento(port=0, integration_token="tok-123456") as shop,
        FakeSalesforce(port=0, clients={"app": "s3-secret"}) as org,
    ):
        lines = run(lambda: scenario(shop, org))
    assert any("/rest/default/V1/products/P-1 HTTP/1.1" in line and line.startswith("PUT http://") for line in lines)
    assert any("/services/oauth2/token" in line for line in lines)
    assert any("/sobjects/Account/Seamline_Id__c/A-1" in line for line in lines)


# -- TLS: a CA bundle and a client certificate ------------------------------------------------------


def test_mutual_tls_with_a_client_certificate(pki: Pki) -> None:
    tls = {"ca_bundle": str(pki.ca), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    tls_1_2 = pki.server_context(require_client=True)
    tls_1_2.maximum_version = ssl.TLSVersion.TLSv1_2

    async def call(url: str, options: dict[str, Any]) -> Any:
        async with connection(url, tls=options) as conn:
            try:
                return await conn.call("get", {}, timeout=2)
            except SeamlineError as exc:
                return exc

    with blocking_tls_server(pki.server_context(require_client=True)) as url:
        shown = run(lambda: call(url, tls))
        without = run(lambda: call(url, {"ca_bundle": str(pki.ca)}))
    with blocking_tls_server(tls_1_2) as url:
        shown_1_2 = run(lambda: call(url, tls))
        without_1_2 = run(lambda: call(url, {"ca_bundle": str(pki.ca)}))
    assert shown == shown_1_2 == {"client": {"commonName": "seamline"}}
    # Refused: over TLS 1.2 in the handshake, named by the server's alert; over TLS 1.3 after it, when
    # the request meets the alert (or the reset): transient either way, and never a library exception.
    assert isinstance(without_1_2, TransientError) and "alert handshake failure" in str(without_1_2), without_1_2
    assert isinstance(without, TransientError), without


def test_a_server_the_ca_bundle_does_not_vouch_for_is_refused(pki: Pki) -> None:
    async def scenario() -> SeamlineError:
        async with origin(tls=pki.server_context()) as url, connection(url, tls={"ca_bundle": str(pki.other_ca)}) as c:
            return await failure(c.call("get", {}, timeout=2))

    error = run(scenario)
    assert isinstance(error, TransientError) and "CERTIFICATE_VERIFY_FAILED" in str(error)


def test_tls_files_are_relative_to_the_spec_and_a_missing_one_is_named(pki: Pki) -> None:
    async def scenario() -> tuple[Any, SeamlineError]:
        async with origin(tls=pki.server_context()) as url:
            async with connection(url, tls={"ca_bundle": pki.ca.name}, base_dir=str(pki.ca.parent)) as conn:
                ok = await conn.call("get", {}, timeout=2)
            async with connection(url, tls={"ca_bundle": "nowhere/ca.pem"}, base_dir=str(pki.ca.parent)) as conn:
                missing = await failure(conn.call("get", {}, timeout=2))
            return ok, missing

    ok, missing = run(scenario)
    assert ok == {"line": "GET /items HTTP/1.1"}
    assert isinstance(missing, TerminalError)
    assert f"tls.ca_bundle {pki.ca.parent / 'nowhere/ca.pem'}: cannot be read" in str(missing)


def test_a_client_key_that_does_not_match_is_named_and_its_password_never_shows(pki: Pki) -> None:
    tls = {
        "ca_bundle": str(pki.ca),
        "client_cert": str(pki.client_cert),
        "client_key": str(pki.server_key),
        "client_key_password": "key-pa55word",
    }

    async def scenario() -> SeamlineError:
        async with connection("https://localhost:9", tls=tls) as conn:
            return await failure(conn.call("get", {}, timeout=1))

    error = run(scenario)
    assert isinstance(error, TerminalError) and "tls.client_cert" in str(error) and "cannot be used" in str(error)
    assert "key-pa55word" not in str(error)
