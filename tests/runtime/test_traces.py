"""Traces (issue 16, item 4): one trace per record from its trigger to every target, W3C traceparent in and out.

Real parts: the daemon in process, its HTTP API taking webhooks, contract fakes as targets (they see the headers
sent), SQLite state (and PostgreSQL for the migration); the spans are read from the SDK's in-memory exporter, and
the OTLP export itself from a fake collector.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse
from engine.errors import UsageError
from engine.runtime import tracing
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.state import DeadLetter, InboxItem, NewItem, open_store
from engine.state.sql import MIGRATIONS

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

SPEC = """\
seamline: 1
client: traced
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    endpoints:
      products: { path: /products }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
      products: { path: "/products/{sku}", method: PUT }
  crm:
    connector: http
    url: "{{ env.CRM_URL }}"
    endpoints:
      levels: { path: "/levels/{sku}", method: PUT }
flows:
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    target: { system: shop, write: stock, key: sku }
  both:
    trigger: { event: { webhook: /hooks/both, id: sku } }
    targets:
      - { system: shop, write: stock, key: sku }
      - { system: crm, write: levels, key: sku }
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: shop, write: products, key: sku }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Fakes:
    """The three systems, each remembering the headers of every request it was sent; a path in ``refuse`` is
    answered 422 (a terminal refusal: the record goes to dead letters)."""

    def __init__(self, erp: FakeHttpServer, shop: FakeHttpServer, crm: FakeHttpServer) -> None:
        self.erp, self.shop, self.crm = erp, shop, crm
        self.seen: dict[str, list[FakeRequest]] = {"erp": [], "shop": [], "crm": []}
        self.refuse: set[str] = set()
        for name, fake in (("erp", erp), ("shop", shop), ("crm", crm)):
            fake.intercept = self._keep(name)

    def _keep(self, name: str) -> Callable[[FakeRequest], FakeResponse | None]:
        def keep(request: FakeRequest) -> FakeResponse | None:
            self.seen[name].append(request)
            if request.path in self.refuse:
                return FakeResponse(422, {"message": "qty must be whole"})
            return None  # on to the store: the fake answers as it always does

        return keep

    def writes(self, name: str, path: str) -> list[FakeRequest]:
        return [r for r in self.seen[name] if r.method == "PUT" and r.path == path]

    @property
    def env(self) -> dict[str, str]:
        return {"ERP_URL": self.erp.url, "SHOP_URL": self.shop.url, "CRM_URL": self.crm.url}


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop, FakeHttpServer(port=0) as crm:
        yield Fakes(erp, shop, crm)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, every span kept in memory as it ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


@asynccontextmanager
async def running(root: Path, fakes: Fakes, *, schedules: bool = False) -> AsyncIterator[Daemon]:
    (root / "seamline.yaml").write_text(SPEC, encoding="utf-8")
    options = DaemonOptions(
        port=free_port(),
        dev=True,
        workers=2,
        drain_timeout=5,
        state_url=f"sqlite:///{root / 's.db'}",
        schedules=schedules,
    )
    daemon = Daemon(root / "seamline.yaml", options, environ={**os.environ, **fakes.env}, log_stream=io.StringIO())
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def post(daemon: Daemon, path: str, body: Any, headers: dict[str, str] | None = None) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"http://127.0.0.1:{daemon.options.port}{path}", json=body, headers=headers)
    assert answer.status_code == 202, answer.text


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def traceparent(span: ReadableSpan) -> str:
    """The W3C traceparent naming ``span`` (its flags as the SDK set them: sampled, and random for a new trace)."""
    assert span.context is not None
    return f"00-{trace_of(span)}-{span_id(span)}-{int(span.context.trace_flags):02x}"


def parent_id(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


async def dead_letters(daemon: Daemon, wait_for: int = 0) -> list[DeadLetter]:
    """The daemon's dead letters (through its inbox, as the daemon reads its store), once ``wait_for`` are there."""
    assert daemon.inbox is not None
    inbox = daemon.inbox
    for _ in range(500):
        letters = await inbox.run(inbox.store.dead_letters)
        if len(letters) >= wait_for:
            return letters
        await asyncio.sleep(0.02)
    raise AssertionError(f"never {wait_for} dead letters")


def log_lines(daemon: Daemon) -> list[dict[str, Any]]:
    stream = daemon.log.stream
    assert isinstance(stream, io.StringIO)
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


# -- a webhook's trace, continued to the target -------------------------------------------------------------


def test_a_webhook_traceparent_is_continued_through_the_record_to_its_target(
    tmp_path: Path, fakes: Fakes, spans: InMemorySpanExporter
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, fakes) as daemon:
            await post(daemon, "/hooks/stock", {"sku": "A-1", "qty": 4}, {"traceparent": f"00-{TRACE}-{PARENT}-01"})
            await until(lambda: bool(named(spans, "deliver stock")), "the record's delivery ended")

    asyncio.run(scenario())
    (receive,) = named(spans, "receive stock")
    (deliver,) = named(spans, "deliver stock")
    (transform,) = named(spans, "transform stock")
    (write,) = named(spans, "write shop.stock")
    # one trace, the sender's: receive is a child of its span, the rest hang below receive
    assert {trace_of(s) for s in (receive, deliver, transform, write)} == {TRACE}
    assert parent_id(receive) == PARENT
    assert parent_id(deliver) == span_id(receive)
    assert parent_id(transform) == parent_id(write) == span_id(deliver)
    assert (receive.kind, deliver.kind, write.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CLIENT)
    assert dict(write.attributes or {}) == {
        "seamline.flow": "stock",
        "seamline.business_key": "A-1",
        "seamline.target": "shop.stock",
        "seamline.target_system": "shop",
        "seamline.write": "stock",
        "seamline.outcome": "written",
    }
    assert (deliver.attributes or {})["seamline.outcome"] == "delivered"
    assert (receive.attributes or {})["seamline.outcome"] == "received"
    # the target was told the write span: its own spans can join the record's trace
    (sent,) = fakes.writes("shop", "/stock/A-1")
    assert sent.header("traceparent") == traceparent(write)


def test_without_a_traceparent_each_record_starts_its_own_trace(
    tmp_path: Path, fakes: Fakes, spans: InMemorySpanExporter
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, fakes) as daemon:
            await post(daemon, "/hooks/stock", [{"sku": "B-1", "qty": 1}, {"sku": "B-2", "qty": 2}])
            await until(lambda: len(named(spans, "deliver stock")) == 2, "both records delivered")

    asyncio.run(scenario())
    receives = {(s.attributes or {})["seamline.business_key"]: s for s in named(spans, "receive stock")}
    assert set(receives) == {"B-1", "B-2"} and all(s.parent is None for s in receives.values())
    assert trace_of(receives["B-1"]) != trace_of(receives["B-2"])  # one webhook, two records: two traces
    for sku, receive in receives.items():
        (write,) = [s for s in named(spans, "write shop.stock") if trace_of(s) == trace_of(receive)]
        assert (write.attributes or {})["seamline.business_key"] == sku
        (sent,) = fakes.writes("shop", f"/stock/{sku}")
        assert sent.header("traceparent") == traceparent(write)


def test_a_schedule_read_starts_one_trace_per_record(tmp_path: Path, fakes: Fakes, spans: InMemorySpanExporter) -> None:
    fakes.erp.seed("/products", [{"sku": "P1", "changed": "1"}, {"sku": "P2", "changed": "2"}])

    async def scenario() -> None:
        async with running(tmp_path, fakes, schedules=True):
            await until(lambda: len(named(spans, "deliver catalog")) == 2, "both products delivered")

    asyncio.run(scenario())
    receives = named(spans, "receive catalog")
    assert len({trace_of(s) for s in receives}) == 2 and all(s.parent is None for s in receives)
    # the read itself is no record's: its requests carry no traceparent; each write carries its record's
    assert all(r.header("traceparent") is None for r in fakes.seen["erp"])
    for receive in receives:
        (write,) = [s for s in named(spans, "write shop.products") if trace_of(s) == trace_of(receive)]
        sku = str((write.attributes or {})["seamline.business_key"])
        assert fakes.writes("shop", f"/products/{sku}")[0].header("traceparent") == traceparent(write)


def test_two_targets_are_two_write_spans_in_the_records_one_trace(
    tmp_path: Path, fakes: Fakes, spans: InMemorySpanExporter
) -> None:
    async def scenario() -> None:
        async with running(tmp_path, fakes) as daemon:
            await post(daemon, "/hooks/both", {"sku": "C-1", "qty": 7})
            await until(lambda: bool(named(spans, "deliver both")), "the record's delivery ended")

    asyncio.run(scenario())
    (deliver,) = named(spans, "deliver both")
    writes = {(s.attributes or {})["seamline.target"]: s for s in named(spans, "write ")}
    assert set(writes) == {"shop.stock", "crm.levels"}
    assert {trace_of(s) for s in writes.values()} == {trace_of(deliver)}
    assert {parent_id(s) for s in writes.values()} == {span_id(deliver)}
    assert (writes["crm.levels"].attributes or {})["seamline.target_system"] == "crm"
    # each target was told its own write span
    (to_shop,) = fakes.writes("shop", "/stock/C-1")
    (to_crm,) = fakes.writes("crm", "/levels/C-1")
    assert to_shop.header("traceparent") == traceparent(writes["shop.stock"])
    assert to_crm.header("traceparent") == traceparent(writes["crm.levels"])


# -- dead letters and log lines name their trace ------------------------------------------------------------


def test_a_dead_lettered_record_keeps_its_trace_id_in_the_letter_and_the_log_line(
    tmp_path: Path, fakes: Fakes, spans: InMemorySpanExporter
) -> None:
    fakes.refuse.add("/stock/D-1")

    async def scenario() -> tuple[list[DeadLetter], list[dict[str, Any]]]:
        async with running(tmp_path, fakes) as daemon:
            await post(daemon, "/hooks/stock", {"sku": "D-1", "qty": 0.5}, {"traceparent": f"00-{TRACE}-{PARENT}-01"})
            await until(lambda: bool(named(spans, "deliver stock")), "the record's attempt ended")
            return await dead_letters(daemon, 1), log_lines(daemon)

    letters, lines = asyncio.run(scenario())
    (letter,) = letters
    assert letter.error_kind == "terminal" and letter.trace_id == TRACE
    (line,) = [line for line in lines if line["event"] == "dead_letter"]
    assert line["trace_id"] == TRACE
    assert all("trace_id" not in line for line in lines if line["event"] in ("started", "stopping", "stopped"))
    (deliver,) = named(spans, "deliver stock")
    (write,) = named(spans, "write shop.stock")
    for span in (deliver, write):
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})["seamline.outcome"] == "dead_lettered"
    (event,) = [e for e in write.events if e.name == "dead_letter"]
    assert (event.attributes or {})["seamline.kind"] == "terminal"
    (refused,) = fakes.writes("shop", "/stock/D-1")  # the refused write was in the trace too
    assert refused.header("traceparent") == traceparent(write)


def test_a_webhook_that_is_not_json_is_rejected_in_its_senders_trace(
    tmp_path: Path, fakes: Fakes, spans: InMemorySpanExporter
) -> None:
    async def scenario() -> list[DeadLetter]:
        async with running(tmp_path, fakes) as daemon:
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.post(
                    f"http://127.0.0.1:{daemon.options.port}/hooks/stock",
                    content=b"{not json",
                    headers={"Traceparent": f"00-{TRACE}-{PARENT}-01", "Content-Type": "application/json"},
                )
            assert answer.status_code == 202
            return await dead_letters(daemon, 1)

    (letter,) = asyncio.run(scenario())
    assert (letter.error_kind, letter.trace_id) == ("rejected", TRACE)
    (receive,) = named(spans, "receive stock")
    assert parent_id(receive) == PARENT and receive.status.status_code == StatusCode.ERROR
    assert (receive.attributes or {})["seamline.outcome"] == "rejected"


# -- off by default -----------------------------------------------------------------------------------------


def test_tracing_is_off_by_default_nothing_stored_nothing_sent_no_trace_ids(tmp_path: Path, fakes: Fakes) -> None:
    assert not tracing.enabled() and tracing.configure({}) is None  # no OTEL_* variable: no exporter
    fakes.refuse.add("/stock/F-2")

    async def scenario() -> tuple[list[DeadLetter], list[dict[str, Any]], list[InboxItem | None]]:
        async with running(tmp_path, fakes) as daemon:
            sent = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
            await post(daemon, "/hooks/stock", {"sku": "F-1", "qty": 1}, sent)
            await post(daemon, "/hooks/stock", {"sku": "F-2", "qty": 1}, sent)
            letters = await dead_letters(daemon, 1)
            await until(lambda: bool(fakes.writes("shop", "/stock/F-1")), "F-1 written")
            assert daemon.inbox is not None
            items = [await daemon.inbox.run(daemon.inbox.store.item, n) for n in (1, 2)]
            return letters, log_lines(daemon), items

    letters, lines, items = asyncio.run(scenario())
    assert sorted(r.path for r in fakes.seen["shop"]) == ["/stock/F-1", "/stock/F-2"]
    assert [r.header("traceparent") for r in fakes.seen["shop"]] == [None, None]  # the sender's not passed on
    assert [item.traceparent if item else "?" for item in items] == [None, None]  # nothing stored
    assert [letter.trace_id for letter in letters] == [""]
    assert all("trace_id" not in line for line in lines)


def test_configure_reads_the_standard_variables_and_asks_for_nothing_by_default() -> None:
    for environ in (
        {},
        {"OTEL_SERVICE_NAME": "acme"},  # a name is no exporter
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"},
    ):
        assert tracing.configure(environ) is None, environ
        assert not tracing.enabled()
    with pytest.raises(UsageError, match="zipkin"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(UsageError, match="grpc"):
        tracing.configure({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert not tracing.enabled()


def test_an_otlp_endpoint_in_the_environment_exports_the_records_spans_to_the_collector(
    tmp_path: Path, fakes: Fakes
) -> None:
    """The real exporter, OTLP over HTTP (protobuf), to a collector that keeps what it was sent."""
    with FakeHttpServer(port=0) as collector:
        received: list[ExportTraceServiceRequest] = []

        def take(request: FakeRequest) -> FakeResponse:
            received.append(ExportTraceServiceRequest.FromString(request.body))
            return FakeResponse(200, {})

        collector.route("POST", "/v1/traces", take)
        provider = tracing.configure(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_EXPORTER_OTLP_HEADERS": "x-team=integration",
                "OTEL_SERVICE_NAME": "acme-integration",
            },
            client="traced",
        )
        assert provider is not None and tracing.enabled()
        try:

            async def scenario() -> None:
                async with running(tmp_path, fakes) as daemon:
                    await post(daemon, "/hooks/stock", {"sku": "E-1", "qty": 3})
                    await until(lambda: bool(fakes.writes("shop", "/stock/E-1")), "E-1 written")
                    await asyncio.sleep(0.1)  # the attempt's span ends just after the write

            asyncio.run(scenario())
            assert provider.force_flush(10_000)
        finally:
            tracing.shutdown()
        assert not tracing.enabled()
        names: set[str] = set()
        resource: dict[str, str] = {}
        for request in received:
            for spans_of in request.resource_spans:
                resource |= {a.key: a.value.string_value for a in spans_of.resource.attributes}
                names |= {span.name for scoped in spans_of.scope_spans for span in scoped.spans}
        assert {"receive stock", "deliver stock", "write shop.stock"} <= names
        assert resource["service.name"] == "acme-integration" and resource["seamline.client"] == "traced"
        sent = [r for r in collector.requests() if r["path"] == "/v1/traces"]
        assert sent and all(r["status"] == 200 for r in sent)


# -- the store keeps a record's trace (migration v7) ----------------------------------------------------------


def _back_to_v6(store_url: str) -> None:
    """The store as the release before traces left it: v6, without the two columns (its rows kept)."""
    statements = [
        "DROP INDEX IF EXISTS inbox_business_key",  # v8 and v9, which came after
        "ALTER TABLE ledger DROP COLUMN request",
        "ALTER TABLE inbox DROP COLUMN traceparent",
        "ALTER TABLE dead_letters DROP COLUMN trace_id",
        "UPDATE seamline_schema SET version = 6",
    ]
    if store_url.startswith("sqlite:"):
        import sqlite3

        lite = sqlite3.connect(store_url.removeprefix("sqlite:///"))
        for statement in statements:
            lite.execute(statement)
        lite.commit()
        lite.close()
        return
    schema = store_url.rsplit("schema=", 1)[1]
    with psycopg.connect(PG_DSN) as pg:
        pg.execute(f'SET search_path TO "{schema}"')
        for statement in statements:
            pg.execute(statement)


def test_migration_v7_gives_a_v6_store_the_trace_columns_and_keeps_its_rows(store_url: str) -> None:
    assert len(MIGRATIONS) >= 7
    first = open_store(store_url)
    first.enqueue([NewItem("stock", "old@1", "old", {"sku": "old"}, "test")])
    first.close()
    _back_to_v6(store_url)

    store = open_store(store_url)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        traceparent = f"00-{TRACE}-{PARENT}-01"
        store.enqueue([NewItem("stock", "new@1", "new", {"sku": "new"}, "test", traceparent=traceparent)])
        claimed = {item.key: item for item in store.claim("w", 10, lease=30)}
        assert claimed["old@1"].traceparent is None  # a row from before: not traced, still delivered
        assert claimed["new@1"].traceparent == traceparent  # what another process's worker continues
        store.dead_letter(claimed["new@1"].id, "refused", error_kind="terminal", trace_id=TRACE)
        store.dead_letter(claimed["old@1"].id, "refused", error_kind="terminal")
        bad = NewItem("stock", "bad@1", "bad", {"raw": "{"}, "test", traceparent=traceparent)
        assert store.reject(bad, "not JSON", trace_id=TRACE)
        letters = {letter.key: letter.trace_id for letter in store.dead_letters()}
        assert letters == {"new@1": TRACE, "old@1": "", "bad@1": TRACE}
        (item,) = [store.item(claimed["new@1"].id)]
        assert item is not None and item.traceparent == traceparent
    finally:
        store.close()
