"""The record model (DESIGN.md §2a): business key, dedupe id and version; grouping; create-only fields;
the Retry-After cap; one outcome per record read.

Each test reproduces a way records were lost, distorted or applied twice, then shows it fixed. The daemon
runs in process here (its real HTTP server, SQLite state, embedded queue or the real RabbitMQ), against real
HTTP fakes over loopback; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse
from engine.cli import main
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.state import open_store

DATA = Path(__file__).resolve().parent.parent / "connectors" / "data"
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

SHOP = """\
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    limits: { concurrency: 4, timeout: 2s, max_retry_after: 1s }
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
      products: { path: "/products/{sku}", method: PUT }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_spec(root: Path, systems: str, flows: str, client: str = "records") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = f"seamline: 1\nclient: {client}\nsystems:\n{SHOP}{systems}flows:\n{flows}"
    (root / "seamline.yaml").write_text(text, encoding="utf-8")
    return root / "seamline.yaml"


@pytest.fixture
def shop() -> Iterator[FakeHttpServer]:
    with FakeHttpServer(port=0) as fake:
        yield fake


@asynccontextmanager
async def running(spec: Path, env: dict[str, str], *, state_url: str | None = None) -> AsyncIterator[Daemon]:
    """The daemon in this process, its API on a free loopback port, until the block ends."""
    options = DaemonOptions(
        port=free_port(),
        dev=True,
        workers=4,
        drain_timeout=5,
        state_url=state_url or f"sqlite:///{spec.parent / 'state.db'}",
    )
    daemon = Daemon(spec, options, environ={**os.environ, **env}, log_stream=io.StringIO())
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def puts(shop: FakeHttpServer, path: str) -> list[Any]:
    """The bodies the target accepted for ``path``, in the order it applied them."""
    return [w["body"] for w in shop.writes(path) if not w["duplicate"] and 200 <= int(w["status"]) < 300]


def logged(daemon: Daemon) -> list[dict[str, Any]]:
    stream = daemon.log.stream
    assert isinstance(stream, io.StringIO)
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    total = 0.0
    for line in daemon.metrics.render().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- 1. A -> B -> A is three changes ------------------------------------------------------------------

WEBHOOK_STOCK = """\
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    target: { system: shop, write: stock, key: sku }
"""


def test_a_b_a_over_a_webhook_without_message_ids_ends_at_a(tmp_path: Path, shop: FakeHttpServer) -> None:
    """Was: the third post answered {"accepted": 0} and the target ended at 7 (a content hash as the version)."""
    spec = write_spec(tmp_path, "", WEBHOOK_STOCK)

    async def scenario() -> list[Any]:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            answers = []
            for qty in (5, 7, 5):
                response = await client.post(
                    f"http://127.0.0.1:{daemon.options.port}/hooks/stock",
                    json={"sku": "FLIP", "source": "default", "qty": qty},
                )
                answers.append(response.json())
                written = len(answers)
                # one at a time, as a sender that waits for each change to land
                await until(lambda n=written: len(puts(shop, "/stock/FLIP")) >= n, 10, f"change {qty} written")
            assert metric(daemon, "seamline_records_total", flow="stock", outcome="delivered") == 3
            return answers

    answers = asyncio.run(scenario())
    assert answers == [{"accepted": 1}] * 3
    assert [body["qty"] for body in puts(shop, "/stock/FLIP")] == [5, 7, 5]
    assert shop.resource("/stock/FLIP")["qty"] == 5


@pytest.mark.rabbitmq
def test_a_b_a_over_rabbitmq_without_message_ids_ends_at_a(tmp_path: Path, shop: FakeHttpServer) -> None:
    """Was: a message without message_id got a content-hash id, so the second 5 was taken for the first."""
    queue = f"seamline.test.aba.{uuid.uuid4().hex[:8]}"
    systems = '  bus: { connector: amqp, url: "{{ secret.AMQP_URL }}" }\n'
    flows = f"""\
  stock:
    trigger: {{ event: {{ system: bus, queue: {queue}, id: sku }} }}
    target: {{ system: shop, write: stock, key: sku }}
"""
    spec = write_spec(tmp_path, systems, flows)

    async def scenario() -> None:
        import aio_pika

        connection = await aio_pika.connect_robust(AMQP_URL)
        try:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True, auto_delete=False)
            async with running(spec, {"SHOP_URL": shop.url, "AMQP_URL": AMQP_URL}):
                for qty in (5, 7, 5):
                    body = json.dumps({"sku": "FLIP", "qty": qty}).encode()
                    await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
                await until(lambda: len(puts(shop, "/stock/FLIP")) >= 3, 15, "three changes written")
                await asyncio.sleep(0.2)
            await channel.queue_delete(queue)
        finally:
            await connection.close()

    asyncio.run(scenario())
    assert [body["qty"] for body in puts(shop, "/stock/FLIP")] == [5, 7, 5]


def test_a_b_a_through_the_embedded_queue_ends_at_a(tmp_path: Path, shop: FakeHttpServer) -> None:
    systems = f"""\
  bus:
    connector: queue
    url: "sqlite:///{tmp_path / "queue.db"}"
    queues: [stock.changed]
    poll: 20ms
"""
    flows = """\
  publish:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    target: { system: bus, write: stock.changed, key: sku }
  inventory:
    trigger: { event: { system: bus, queue: stock.changed, id: sku } }
    target: { system: shop, write: stock, key: sku }
"""
    spec = write_spec(tmp_path, systems, flows)

    async def scenario() -> None:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            for qty in (5, 7, 5):
                await client.post(f"http://127.0.0.1:{daemon.options.port}/hooks/stock", json={"sku": "F", "qty": qty})
                await until(
                    lambda q=qty: bool(puts(shop, "/stock/F")) and puts(shop, "/stock/F")[-1]["qty"] == q, 10, f"{qty}"
                )

    asyncio.run(scenario())
    assert [body["qty"] for body in puts(shop, "/stock/F")] == [5, 7, 5]


# -- 2. the dedupe id: a body field; a late duplicate never overwrites a newer change -------------------


@pytest.mark.rabbitmq
def test_a_late_duplicate_named_by_a_body_event_id_is_skipped_and_order_per_sku_holds(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    """Was: with no way to name event_id as the dedupe id, the re-sent e1 (120) overwrote e2 (95)."""
    queue = f"seamline.test.dedupe.{uuid.uuid4().hex[:8]}"
    systems = '  bus: { connector: amqp, url: "{{ secret.AMQP_URL }}" }\n'
    flows = f"""\
  stock:
    trigger: {{ event: {{ system: bus, queue: {queue}, id: sku, dedupe: event_id }} }}
    transform: '{{ "sku": sku, "qty": qty }}'
    target: {{ system: shop, write: stock, key: sku }}
"""
    spec = write_spec(tmp_path, systems, flows)

    async def scenario() -> None:
        import aio_pika

        connection = await aio_pika.connect_robust(AMQP_URL)
        try:
            channel = await connection.channel()
            await channel.declare_queue(queue, durable=True, auto_delete=False)
            async with running(spec, {"SHOP_URL": shop.url, "AMQP_URL": AMQP_URL}) as daemon:
                for event_id, qty in (("e1", 120), ("e2", 95), ("e1", 120)):  # e1 re-sent late, without an id
                    body = json.dumps({"event_id": event_id, "sku": "X", "qty": qty}).encode()
                    await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)
                await until(lambda: metric(daemon, "seamline_skips_total", reason="duplicate") >= 1, 15, "the dup")
                await until(lambda: len(puts(shop, "/stock/X")) >= 2, 15, "two changes written")
                await asyncio.sleep(0.3)
            await channel.queue_delete(queue)
        finally:
            await connection.close()

    asyncio.run(scenario())
    assert [body["qty"] for body in puts(shop, "/stock/X")] == [120, 95]
    assert shop.resource("/stock/X")["qty"] == 95


def test_a_dedupe_header_names_the_same_delivery_on_a_webhook(tmp_path: Path, shop: FakeHttpServer) -> None:
    flows = """\
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku, dedupe: "header:X-Event-Id" } }
    target: { system: shop, write: stock, key: sku }
"""
    spec = write_spec(tmp_path, "", flows)

    async def scenario() -> list[Any]:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{daemon.options.port}/hooks/stock"
            answers = []
            for event_id, qty in (("a", 1), ("b", 2), ("a", 1)):
                response = await client.post(url, json={"sku": "H", "qty": qty}, headers={"X-Event-Id": event_id})
                answers.append(response.json()["accepted"])
            await until(lambda: len(puts(shop, "/stock/H")) >= 2, 10, "two writes")
            return answers

    assert asyncio.run(scenario()) == [1, 1, 0]
    assert [body["qty"] for body in puts(shop, "/stock/H")] == [1, 2]


# -- the version: an older change never overwrites a newer one ----------------------------------------


def test_a_change_older_than_the_delivered_version_is_skipped_as_stale_and_counted(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    flows = """\
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku, version: seq } }
    target: { system: shop, write: stock, key: sku }
"""
    spec = write_spec(tmp_path, "", flows)

    async def scenario() -> Daemon:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{daemon.options.port}/hooks/stock"
            await client.post(url, json={"sku": "V", "qty": 95, "seq": 2})
            await until(lambda: len(puts(shop, "/stock/V")) >= 1, 10, "seq 2 written")
            await client.post(url, json={"sku": "V", "qty": 120, "seq": 1})  # an older change, late
            await until(lambda: metric(daemon, "seamline_skips_total", reason="stale") >= 1, 10, "the stale skip")
            await client.post(url, json={"sku": "V", "qty": 80, "seq": 3})
            await until(lambda: len(puts(shop, "/stock/V")) >= 2, 10, "seq 3 written")
            assert metric(daemon, "seamline_records_total", flow="stock", outcome="skipped") == 1
            assert any(e["event"] == "stale" and e["version"] == "1" for e in logged(daemon))
            return daemon

    asyncio.run(scenario())
    assert [body["qty"] for body in puts(shop, "/stock/V")] == [95, 80]


# -- 3. grouping rows into one record -------------------------------------------------------------------

MATERIALS = """\
  erp:
    connector: file
    directory: drop
    poll: 50ms
    settle: 0s
    drops:
      materials: { pattern: "sap_matmas_*.csv", format: csv, delimiter: ";", decimal_comma: true }
"""
# One product per MATNR from its language rows: the German name is the shop's, the English one an attribute;
# LVORM (flagged for deletion) disables it; the gross weight is in kilograms whatever unit the row has.
PRODUCT_FROM_ROWS = """\
(
  $first := rows[0];
  {
    "sku": $replace(MATNR, /^0+/, ""),
    "name": rows[SPRAS = "DE"].MAKTX,
    "name_en": rows[SPRAS = "EN"].MAKTX,
    "status": $first.LVORM = "X" ? 2 : 1,
    "weight_kg": $first.GEWEI = "G" ? $first.BRGEW / 1000 : $first.BRGEW,
    "languages": $count(rows)
  }
)
"""


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_group_by_collects_a_german_sap_exports_language_rows_into_one_product(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    (tmp_path / "transforms").mkdir(parents=True)
    (tmp_path / "transforms" / "product.jsonata").write_text(PRODUCT_FROM_ROWS, encoding="utf-8")
    flows = """\
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: materials, id: MATNR, group_by: MATNR }
    transform: transforms/product.jsonata
    target: { system: shop, write: products, key: sku }
"""
    spec = write_spec(tmp_path, MATERIALS, flows)
    (tmp_path / "drop").mkdir()
    shutil.copy(DATA / "sap_matmas_de.csv", tmp_path / "drop" / "sap_matmas_20250301.csv")
    state = f"sqlite:///{tmp_path / 'state.db'}"
    code, output = cli("run", str(spec), "--once", "--state", state, env={"SHOP_URL": shop.url})
    assert code == 0, output
    products = {body["sku"]: body for body in puts(shop, "/products/")}
    assert products == {
        "4711": {
            "sku": "4711",
            "name": "Kugelventil DN 25 Messing",
            "name_en": "Ball valve DN 25 brass",
            "status": 1,
            "weight_kg": 1.25,
            "languages": 2,
        },
        "4712": {
            "sku": "4712",
            "name": "Absperrschieber DN 50",
            "name_en": "Gate valve DN 50",
            "status": 2,
            "weight_kg": 12.5,
            "languages": 2,
        },
        "4713": {
            "sku": "4713",
            "name": "Dichtungsring Ø 40 × 3 NBR",
            "name_en": "O-ring 40 x 3 NBR",
            "status": 1,
            "weight_kg": 0.0045,
            "languages": 2,
        },
        "4714": {
            "sku": "4714",
            "name": "Schmierfett, lose (Lithiumseife, weiß)",
            "name_en": "Grease, bulk (lithium soap)",
            "status": 1,
            "weight_kg": 1.05,
            "languages": 2,
        },
    }
    row = next(line for line in output.splitlines() if "catalog" in line and "│" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:4] == ["catalog", "8", "4", "4"], output  # 8 rows read, 4 records, 4 delivered
    assert (tmp_path / "drop" / "archive" / "sap_matmas_20250301.csv").exists()


def test_rows_with_the_same_id_and_cursor_are_two_records_not_a_dropped_duplicate(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    """Was: `source: {id: MATNR, cursor: LAEDA}` read 6 rows, kept 4, and said nothing of the other 2."""
    flows = """\
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: materials, id: MATNR, cursor: LAEDA }
    transform: '{ "sku": MATNR, "name": MAKTX }'
    target: { system: shop, write: products, key: sku }
"""
    spec = write_spec(tmp_path, MATERIALS, flows)
    (tmp_path / "drop").mkdir()
    rows = ["MATNR;SPRAS;MAKTX;LAEDA"] + [
        f"{matnr};{lang};{name} {lang};20250301"
        for matnr, name in (("1", "a"), ("2", "b"), ("3", "c"))
        for lang in ("EN", "DE")
    ]
    (tmp_path / "drop" / "sap_matmas_1.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    code, output = cli(
        "run", str(spec), "--once", "--state", f"sqlite:///{tmp_path / 's.db'}", env={"SHOP_URL": shop.url}
    )
    assert code == 0, output
    assert len(puts(shop, "/products/")) == 6  # every row delivered: none dropped as a "duplicate"
    row = next(line for line in output.splitlines() if "catalog" in line and "│" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")][:4] == ["catalog", "6", "6", "6"], output


# -- 5. the Retry-After cap ------------------------------------------------------------------------------


def test_a_day_long_retry_after_is_capped_and_does_not_park_the_key(tmp_path: Path, shop: FakeHttpServer) -> None:
    """Was: one 429 with Retry-After: 86400 parked the SKU, and every newer change of it, for a day."""
    spec = write_spec(tmp_path, "", WEBHOOK_STOCK)
    answered: list[int] = []

    def throttle_once(request: FakeRequest) -> FakeResponse | None:
        if request.method == "PUT" and not answered:
            answered.append(429)
            return FakeResponse(429, {"message": "slow down"}, headers={"Retry-After": "86400"})
        return None

    shop.intercept = throttle_once

    async def scenario() -> Daemon:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{daemon.options.port}/hooks/stock"
            await client.post(url, json={"sku": "R", "qty": 1})
            await client.post(url, json={"sku": "R", "qty": 2})
            started = time.monotonic()
            await until(lambda: len(puts(shop, "/stock/R")) >= 2, 10, "both changes written after the cap")
            assert time.monotonic() - started < 10
            capped = [e for e in logged(daemon) if e["event"] == "retry_after_capped"]
            assert capped and capped[0]["asked"] == 86400 and capped[0]["cap"] == 1
            return daemon

    asyncio.run(scenario())
    assert [body["qty"] for body in puts(shop, "/stock/R")] == [1, 2]


# -- 6/7. accounting: a file with one bad IDoc ------------------------------------------------------------


def test_a_file_with_one_bad_idoc_delivers_the_good_one_rejects_the_bad_one_and_the_pass_says_so(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    """Was: the good IDoc was delivered, the whole file went to rejected/, run --once exited 0, runs said ok."""
    systems = """\
  erp:
    connector: file
    directory: drop
    poll: 50ms
    settle: 0s
    drops:
      materials: { pattern: "MATMAS*.xml", format: idoc }
"""
    flows = """\
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: materials, id: E1MARAM.MATNR }
    transform: '{ "sku": $replace(E1MARAM.MATNR, /^0+/, ""), "status": E1MARAM.LVORM = "X" ? 2 : 1 }'
    target: { system: shop, write: products, key: sku }
"""
    spec = write_spec(tmp_path, systems, flows)
    (tmp_path / "drop").mkdir()
    shutil.copy(DATA / "files" / "MATMAS05_missing_segment.xml", tmp_path / "drop" / "MATMAS05_mixed.xml")
    state = f"sqlite:///{tmp_path / 'state.db'}"
    env = {"SHOP_URL": shop.url}
    code, output = cli("run", str(spec), "--once", "--state", state, env=env)
    assert code == 1, output  # something was rejected: the pass is not clean
    assert [body["sku"] for body in puts(shop, "/products/")] == ["4712"]
    row = next(line for line in output.splitlines() if "catalog" in line and "│" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells == ["catalog", "2", "1", "1", "0", "0", "1", "0"], output  # read, records, delivered, .., rejected

    code, output = cli("runs", str(spec), "--state", state, env=env)
    assert " partial " in output and "rejected=1" in output, output
    code, output = cli("dlq", "list", str(spec), "--state", state, env=env)
    assert "E1MARAM" in output and "line 32" in output, output
    store = open_store(state)
    try:
        (letter,) = store.dead_letters("catalog")
        assert letter.error_kind == "rejected" and "MATMAS05_mixed.xml: line 32" in letter.reason
    finally:
        store.close()
    archived = tmp_path / "drop" / "archive"
    assert (archived / "MATMAS05_mixed.xml").exists() and not (tmp_path / "drop" / "rejected").exists()
    assert "line 32" in (archived / "MATMAS05_mixed.xml.reason.txt").read_text(encoding="utf-8")


def test_every_record_read_has_one_outcome_on_metrics(tmp_path: Path, shop: FakeHttpServer) -> None:
    """delivered + skipped + dead-lettered + rejected = what came in, on /metrics."""
    flows = """\
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku, version: seq } }
    transform: 'qty = "drop" ? null : { "sku": sku, "qty": $number(qty) }'
    target: { system: shop, write: stock, key: sku }
"""
    spec = write_spec(tmp_path, "", flows)

    async def scenario() -> dict[str, float]:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{daemon.options.port}/hooks/stock"
            sent = [
                ({"sku": "A", "qty": "1", "seq": 1}, {"X-Message-Id": "m1"}),  # delivered
                ({"sku": "A", "qty": "1", "seq": 1}, {"X-Message-Id": "m1"}),  # duplicate
                ({"sku": "B", "qty": "drop", "seq": 1}, {}),  # the transform gives nothing
                ({"sku": "C", "qty": "not a number", "seq": 1}, {}),  # a transform error: dead letter
            ]
            for body, headers in sent:
                await client.post(url, json=body, headers=headers)
            await client.post(url, content=b"{not json", headers={"Content-Type": "application/json"})  # rejected
            outcomes = ("delivered", "skipped", "dead_lettered", "rejected")
            await until(
                lambda: sum(metric(daemon, "seamline_records_total", outcome=o) for o in outcomes) >= 5,
                10,
                "5 outcomes",
            )
            return {o: metric(daemon, "seamline_records_total", outcome=o) for o in outcomes}

    assert asyncio.run(scenario()) == {"delivered": 1, "skipped": 2, "dead_lettered": 1, "rejected": 1}


# -- 4. a replica that restarts takes its own claims back at once -------------------------------------------


@pytest.mark.postgres
def test_a_replica_restarted_on_postgresql_reclaims_its_dead_processs_items_without_waiting_out_the_lease(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    """Was: after kill -9 on PostgreSQL the keys in flight stalled until their 60 s lease ran out."""
    import subprocess
    import sys

    import psycopg

    from engine.runtime.processes import delivery_worker
    from engine.state import NewItem

    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    schema = f"t_{uuid.uuid4().hex[:10]}"
    state = f"{dsn}?schema={schema}"
    spec = write_spec(tmp_path, "", WEBHOOK_STOCK)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    store = open_store(state)
    try:
        store.enqueue([NewItem("stock", "K@1", "K", {"sku": "K", "qty": 3}, "test")])
        store.enqueue([NewItem("stock", "L@1", "L", {"sku": "L", "qty": 4}, "test")])
        assert len(store.claim(delivery_worker(0, dead_pid), 1, lease=600)) == 1  # K: the dead process's claim
        assert len(store.claim("other-host:1", 1, lease=600)) == 1  # L: a live replica elsewhere holds it
    finally:
        store.close()

    async def scenario() -> None:
        async with running(spec, {"SHOP_URL": shop.url}, state_url=state):
            await until(lambda: bool(puts(shop, "/stock/K")), 10, "K delivered long before its 600 s lease")
            await asyncio.sleep(0.3)

    try:
        asyncio.run(scenario())
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert puts(shop, "/stock/K") == [{"sku": "K", "qty": 3}]
    assert puts(shop, "/stock/L") == []  # another host's claim is its lease's to end


# -- 3. create-only fields ----------------------------------------------------------------------------


def test_create_only_fields_go_to_a_target_that_never_had_the_key_and_not_after(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    """Without a connector that can say whether the shop has the record, the ledger says: delivered before."""
    flows = """\
  items:
    trigger: { event: { webhook: /hooks/items, id: sku } }
    target: { system: shop, write: products, key: sku, create_only: [price] }
"""
    spec = write_spec(tmp_path, "", flows)

    async def scenario() -> None:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{daemon.options.port}/hooks/items"
            await client.post(url, json={"sku": "N", "name": "new", "price": 0})
            await until(lambda: len(puts(shop, "/products/N")) >= 1, 10, "the create")
            await client.post(url, json={"sku": "N", "name": "renamed", "price": 0})
            await until(lambda: len(puts(shop, "/products/N")) >= 2, 10, "the update")

    asyncio.run(scenario())
    assert puts(shop, "/products/N") == [{"sku": "N", "name": "new", "price": 0}, {"sku": "N", "name": "renamed"}]


# -- validate points at reads whose ids cannot tell rows or changes apart -----------------------------------


def test_validate_warns_where_a_reads_id_and_version_can_be_equal_for_different_rows(tmp_path: Path) -> None:
    from engine.spec import validate_spec

    flows = """\
  rows:
    trigger: { schedule: 1h }
    source: { system: erp, read: materials, id: MATNR }
    target: { system: shop, write: products, key: sku }
  grouped:
    trigger: { schedule: 1h }
    source: { system: erp, read: materials, id: MATNR, group_by: MATNR }
    target: { system: shop, write: products, key: sku }
  api:
    trigger: { schedule: 1h }
    source: { system: api, read: items, id: sku }
    target: { system: shop, write: products, key: sku }
"""
    api = """\
  api:
    connector: http
    url: https://erp.example.com
    endpoints: { items: { path: /items } }
"""
    spec = write_spec(tmp_path, MATERIALS + api, flows)
    report = validate_spec(spec, environ={"SHOP_URL": "http://x"})
    warned = {(d.path, d.code) for d in report.diagnostics if d.severity.value == "warning"}
    assert ("flows.rows.source", "rows-per-id") in warned
    assert ("flows.grouped.source", "rows-per-id") not in warned  # grouped: the rows are one record
    assert ("flows.api.source", "no-version") in warned  # every pass delivers everything again
    assert ("flows.rows.source", "no-version") not in warned  # a file drop's rows carry their own ids
    message = next(d for d in report.diagnostics if d.code == "rows-per-id")
    assert "source.group_by: MATNR" in message.hint


def test_an_event_group_collects_the_messages_of_one_key_within_its_window(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    """Order lines pushed one by one become one order, lines in arrival order; another key is its own group."""
    flows = """\
  orders:
    trigger: { event: { webhook: /hooks/lines, group_by: order_id, window: 400ms } }
    transform: '{ "sku": order_id, "lines": [rows.{ "line": line, "qty": qty }] }'
    target: { system: shop, write: products, key: sku }
"""
    spec = write_spec(tmp_path, "", flows)

    async def scenario() -> Daemon:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{daemon.options.port}/hooks/lines"
            for line, order in ((1, "O1"), (2, "O1"), (1, "O2"), (3, "O1")):
                await client.post(url, json={"order_id": order, "line": line, "qty": line * 10})
            await until(lambda: len(puts(shop, "/products/")) >= 2, 10, "two grouped orders")
            await asyncio.sleep(0.6)  # nothing more comes: each group was delivered once
            assert metric(daemon, "seamline_skips_total", reason="merged") == 2
            assert metric(daemon, "seamline_records_total", outcome="delivered") == 2
            return daemon

    asyncio.run(scenario())
    assert puts(shop, "/products/O1") == [
        {"sku": "O1", "lines": [{"line": 1, "qty": 10}, {"line": 2, "qty": 20}, {"line": 3, "qty": 30}]}
    ]
    assert puts(shop, "/products/O2") == [{"sku": "O2", "lines": [{"line": 1, "qty": 10}]}]


def test_create_only_fields_reach_magento_for_a_new_product_only_and_never_overwrite_its_price(
    tmp_path: Path,
) -> None:
    """Was: a placeholder price (Magento refuses a new simple product without one) overwrote the real price
    on every later IDoc. Magento's GET /V1/products/{sku} says whether the product is there."""
    from connectors.magento.fake import FakeMagento

    token = "create-only-token"
    systems = """\
  commerce:
    connector: magento
    url: "{{ env.MAGENTO_URL }}"
    auth: { bearer: { token: "{{ secret.MAGENTO_TOKEN }}" } }
"""
    flows = """\
  catalog:
    trigger: { event: { webhook: /hooks/materials, id: sku } }
    transform: '{ "sku": sku, "name": name, "price": 0, "attribute_set_id": 4, "type_id": "simple" }'
    target: { system: commerce, write: products, key: sku, create_only: [price, attribute_set_id] }
"""
    spec = write_spec(tmp_path, systems, flows)
    with FakeMagento(port=0, integration_token=token) as magento:

        async def scenario() -> None:
            env = {"MAGENTO_URL": magento.url, "MAGENTO_TOKEN": token, "SHOP_URL": "http://127.0.0.1:9"}
            async with running(spec, env) as daemon, httpx.AsyncClient() as client:
                url = f"http://127.0.0.1:{daemon.options.port}/hooks/materials"
                await client.post(url, json={"sku": "4711", "name": "Ball valve"})
                await until(lambda: "4711" in magento.products, 10, "the new product")
                magento.seed_product({**magento.products["4711"], "price": 129.0})  # the real price, set in Magento
                await client.post(url, json={"sku": "4711", "name": "Ball valve DN 25"})
                await until(lambda: magento.products["4711"]["name"] == "Ball valve DN 25", 10, "the rename")

        asyncio.run(scenario())
        sent = [w["body"]["product"] for w in magento.writes() if "/products" in w["path"]]
        assert sent[0]["price"] == 0 and sent[0]["attribute_set_id"] == 4  # new: the placeholder goes with it
        assert "price" not in sent[1] and "attribute_set_id" not in sent[1]  # existing: never overwritten
        assert magento.products["4711"]["price"] == 129.0


def test_content_dedupes_only_inside_a_window_the_spec_opts_into(tmp_path: Path, shop: FakeHttpServer) -> None:
    flows = """\
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku, dedupe_window: 2s } }
    target: { system: shop, write: stock, key: sku }
"""
    spec = write_spec(tmp_path, "", flows)

    async def scenario() -> list[int]:
        async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{daemon.options.port}/hooks/stock"
            accepted = []
            await asyncio.sleep(2.0 - time.time() % 2.0 + 0.05)  # early in a window: both copies fall in it
            for _ in range(2):  # a publisher re-sending without any id, at once: one delivery
                accepted.append((await client.post(url, json={"sku": "W", "qty": 5})).json()["accepted"])
            await until(lambda: len(puts(shop, "/stock/W")) >= 1, 10, "the first")
            await asyncio.sleep(2.1)  # outside the window the same content is a new change
            accepted.append((await client.post(url, json={"sku": "W", "qty": 5})).json()["accepted"])
            await until(lambda: len(puts(shop, "/stock/W")) >= 2, 10, "the later one")
            return accepted

    assert asyncio.run(scenario()) == [1, 0, 1]
