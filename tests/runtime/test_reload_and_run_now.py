"""Hot reload and run-now through a running daemon (issue 16, items 5 and 6).

A reload validates the spec on disk and refuses a broken one (the old keeps running, the reasons say
where); a good one is swapped in after the workers finished the records they hold, which keep the version
they started with. Run-now starts a schedule flow's pass at once, through the same loop as its timer.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.http.fake import FakeHttpServer
from engine.runtime.daemon import Daemon, DaemonOptions

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SPEC = """\
seamline: 1
client: reloading
systems:
  erp:
    connector: http
    url: "{{{{ env.ERP_URL }}}}"
    endpoints:
      products: {{ path: /products }}
  shop:
    connector: http
    url: "{{{{ env.SHOP_URL }}}}"
    endpoints:
      products: {{ path: "/products/{{sku}}", method: PUT }}
      stock: {{ path: "/stock/{{sku}}", method: PUT }}
flows:
  catalog:
    trigger: {{ schedule: {{ every: 1h }} }}
    source: {{ system: erp, read: products, cursor: changed, id: sku }}
    target: {{ system: shop, write: products, key: sku }}
  stock:
    trigger: {{ event: {{ webhook: {webhook}, id: sku }} }}
    transform: '{{ "sku": sku, "qty": qty, "version": {version} }}'
    target: {{ system: shop, write: stock, key: sku }}
"""


def spec_text(version: int, webhook: str = "/hooks/stock") -> str:
    return SPEC.format(version=version, webhook=webhook)


@pytest.fixture
def fakes() -> Iterator[tuple[FakeHttpServer, FakeHttpServer]]:
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        yield erp, shop


@asynccontextmanager
async def running(root: Path, erp: FakeHttpServer, shop: FakeHttpServer, **extra: Any) -> AsyncIterator[Daemon]:
    settings: dict[str, Any] = {"drain_timeout": 5, **extra}
    options = DaemonOptions(port=free_port(), dev=True, workers=2, state_url=f"sqlite:///{root / 's.db'}", **settings)
    env = {**os.environ, "ERP_URL": erp.url, "SHOP_URL": shop.url}
    daemon = Daemon(root / "seamline.yaml", options, environ=env, log_stream=io.StringIO())
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def events(daemon: Daemon) -> list[dict[str, Any]]:
    stream = daemon.log.stream
    assert isinstance(stream, io.StringIO)
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


async def until(check: Any, seconds: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:g}s: {what}")
        await asyncio.sleep(0.02)


async def post(daemon: Daemon, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(f"http://127.0.0.1:{daemon.options.port}{path}", json=body, timeout=10)


def stock_bodies(shop: FakeHttpServer, sku: str) -> list[dict[str, Any]]:
    return [entry["body"] for entry in shop.writes(f"/stock/{sku}")]


# -- run now -------------------------------------------------------------------------------------------------


def test_run_now_starts_a_schedule_pass_at_once_and_says_busy_unknown_or_not_a_schedule(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    (tmp_path / "seamline.yaml").write_text(spec_text(1), encoding="utf-8")

    async def scenario() -> None:
        async with running(tmp_path, erp, shop) as daemon:
            schedule = daemon.schedules["catalog"]
            await until(lambda: schedule.last_run > 0 and not schedule.running, what="the first pass")
            first = schedule.last_run
            erp.seed("/products", [{"id": "A", "sku": "A", "changed": "2026-01-01T00:00:00Z"}])
            # the next timed pass is an hour away: only run-now delivers A within the test
            result = await daemon.run_now("catalog")
            assert (result.status, result.flow) == ("started", "catalog"), result
            await until(lambda: shop.applied_count("/products/A") == 1, what="A delivered by the pass run now")
            assert schedule.last_run > first

            erp.configure(latency=1.0)  # the next pass holds in its read
            assert (await daemon.run_now("catalog")).status == "started"
            await until(lambda: schedule.running, what="the slow pass to start")
            busy = await daemon.run_now("catalog")
            assert busy.status == "busy" and "running" in busy.message
            erp.configure(latency=0.0)

            unknown = await daemon.run_now("catalgo")
            assert unknown.status == "unknown" and "catalog" in unknown.message  # it names the flows that run
            webhook = await daemon.run_now("stock")
            assert webhook.status == "not_a_schedule" and "webhook" in webhook.message
            assert any(e["event"] == "run_now" and e["flow"] == "catalog" for e in events(daemon))

    asyncio.run(scenario())


def test_run_now_runs_a_pass_when_schedules_are_not_looped_here(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    (tmp_path / "seamline.yaml").write_text(spec_text(1), encoding="utf-8")
    erp.seed("/products", [{"id": "B", "sku": "B", "changed": "2026-01-01T00:00:00Z"}])

    async def scenario() -> None:
        async with running(tmp_path, erp, shop, schedules=False) as daemon:
            await asyncio.sleep(0.3)
            assert shop.applied_count("/products/B") == 0, "no schedule loop here: nothing read by itself"
            assert (await daemon.run_now("catalog")).status == "started"
            await until(lambda: shop.applied_count("/products/B") == 1, what="B delivered by the pass run now")

    asyncio.run(scenario())


# -- reload ----------------------------------------------------------------------------------------------


def test_a_reload_swaps_in_the_new_spec_and_its_webhook_paths(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    spec = tmp_path / "seamline.yaml"
    spec.write_text(spec_text(1), encoding="utf-8")

    async def scenario() -> None:
        async with running(tmp_path, erp, shop) as daemon:
            before = daemon.spec_version
            assert (await post(daemon, "/hooks/stock", {"sku": "S1", "qty": 1})).status_code == 202
            await until(lambda: stock_bodies(shop, "S1"), what="S1 under version 1")

            same = await daemon.reload()
            assert same.reloaded and same.spec_version == before and "nothing to reload" in same.message

            spec.write_text(spec_text(2, webhook="/hooks/stock-v2"), encoding="utf-8")
            assert daemon.spec_version_on_disk() != before  # what the console shows as "the spec on disk differs"
            result = await daemon.reload()
            assert result.reloaded, result
            assert (result.previous, result.spec_version) == (
                before,
                daemon.spec_version,
            ) and result.spec_version != before
            assert (await post(daemon, "/hooks/stock", {"sku": "S2", "qty": 2})).status_code == 404
            assert (await post(daemon, "/hooks/stock-v2", {"sku": "S2", "qty": 2})).status_code == 202
            await until(lambda: stock_bodies(shop, "S2"), what="S2 under version 2")
            assert stock_bodies(shop, "S1")[-1]["version"] == 1
            assert stock_bodies(shop, "S2")[-1]["version"] == 2
            logged = [e for e in events(daemon) if e["event"] == "reloaded"]
            assert logged and logged[-1]["previous"] == before and logged[-1]["spec_version"] == result.spec_version
            # the heartbeat says the new version: `dlq replay` compares the spec on disk with it
            assert daemon.spec_version_on_disk() == daemon.spec_version

    asyncio.run(scenario())


def test_a_broken_spec_is_refused_with_its_reasons_and_the_old_one_keeps_running(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    spec = tmp_path / "seamline.yaml"
    spec.write_text(spec_text(1), encoding="utf-8")

    async def scenario() -> None:
        async with running(tmp_path, erp, shop) as daemon:
            before = daemon.spec_version
            spec.write_text(spec_text(2).replace("system: shop, write: stock", "system: shopp, write: stock"), "utf-8")
            refused = await daemon.reload()
            assert not refused.reloaded and refused.spec_version == refused.previous == before
            assert refused.errors and any("shopp" in e and "seamline.yaml:" in e for e in refused.errors), refused
            assert f"version {before} keeps running" in refused.message
            assert any(e["event"] == "reload_refused" for e in events(daemon))
            assert (await post(daemon, "/hooks/stock", {"sku": "S3", "qty": 3})).status_code == 202
            await until(lambda: stock_bodies(shop, "S3"), what="S3 still delivered by version 1")
            assert stock_bodies(shop, "S3")[-1]["version"] == 1

            spec.write_text("seamline: 1\nclient: [broken", encoding="utf-8")  # not even YAML
            assert not (await daemon.reload()).reloaded
            assert daemon.spec_version == before

    asyncio.run(scenario())


def test_a_record_in_flight_during_a_reload_finishes_with_the_version_it_started_with(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    spec = tmp_path / "seamline.yaml"
    spec.write_text(spec_text(1), encoding="utf-8")

    async def scenario() -> None:
        async with running(tmp_path, erp, shop) as daemon:
            shop.configure(latency=0.8)  # the write of S4 is on its way while the reload comes
            assert (await post(daemon, "/hooks/stock", {"sku": "S4", "qty": 4})).status_code == 202
            assert daemon.pool is not None
            pool = daemon.pool
            await until(lambda: pool.in_flight == 1, what="S4 in a worker's hands")
            spec.write_text(spec_text(2), encoding="utf-8")
            reload = asyncio.create_task(daemon.reload())
            await asyncio.sleep(0.1)
            # a webhook during the swap waits for it, then is taken by the new version
            late = asyncio.create_task(post(daemon, "/hooks/stock", {"sku": "S5", "qty": 5}))
            assert (await reload).reloaded
            assert (await late).status_code == 202
            shop.configure(latency=0.0)
            await until(lambda: stock_bodies(shop, "S5"), what="S5 delivered")
            assert [b["version"] for b in stock_bodies(shop, "S4")] == [1], "S4 was written once, by version 1"
            assert [b["version"] for b in stock_bodies(shop, "S5")] == [2]

    asyncio.run(scenario())


def test_a_write_that_outlasts_the_drain_goes_back_to_the_inbox_and_is_delivered_once_by_the_new_version(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    """Past drain_timeout the old worker is cancelled and its record given back at once (not after its lease, a
    minute): the new version delivers it, the target applies it once (the same idempotency key)."""
    erp, shop = fakes
    spec = tmp_path / "seamline.yaml"
    spec.write_text(spec_text(1), encoding="utf-8")

    async def scenario() -> None:
        async with running(tmp_path, erp, shop, drain_timeout=0.5) as daemon:
            shop.configure(latency=2.0)
            assert (await post(daemon, "/hooks/stock", {"sku": "S6", "qty": 6})).status_code == 202
            assert daemon.pool is not None
            pool = daemon.pool
            await until(lambda: pool.in_flight == 1, what="S6 in a worker's hands")
            spec.write_text(spec_text(2), encoding="utf-8")
            assert (await daemon.reload()).reloaded
            shop.configure(latency=0.0)
            assert [e["items"] for e in events(daemon) if e["event"] == "given_back"] == [1]
            assert daemon.inbox is not None
            inbox = daemon.inbox

            async def depth() -> dict[str, int]:
                return await inbox.run(inbox.store.depth)

            deadline = time.monotonic() + 10
            while (await depth())["done"] != 1:
                assert time.monotonic() < deadline, f"S6 not delivered after the reload: {await depth()}"
                await asyncio.sleep(0.05)
            assert await depth() == {"pending": 0, "inflight": 0, "done": 1, "dead": 0}
            await asyncio.sleep(2.2)  # the old, cancelled request reaches the shop now, if it reaches it at all
            assert shop.applied_count("/stock/S6") == 1

    asyncio.run(scenario())


def test_sighup_reloads_the_daemon_process(tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]) -> None:
    """The signal an operator (or systemd's ExecReload) sends: the outcome is in the JSON log."""
    erp, shop = fakes
    spec = tmp_path / "seamline.yaml"
    spec.write_text(spec_text(1), encoding="utf-8")
    port = free_port()
    log_path = tmp_path / "daemon.log"
    env = {**os.environ, "ERP_URL": erp.url, "SHOP_URL": shop.url}
    command = [sys.executable, "-m", "engine.cli", "run", str(tmp_path), "--dev", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=REPO)
    try:

        def logged(event: str) -> list[dict[str, Any]]:
            lines = log_path.read_text(encoding="utf-8").splitlines()
            return [e for e in (json.loads(line) for line in lines if line.startswith("{")) if e["event"] == event]

        deadline = time.monotonic() + 20
        while not logged("started"):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)
        spec.write_text(spec_text(2), encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        while not logged("reloaded"):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"no reload logged:\n{log_path.read_text()}"
            time.sleep(0.05)
        response = httpx.post(f"http://127.0.0.1:{port}/hooks/stock", json={"sku": "H1", "qty": 1}, timeout=10)
        assert response.status_code == 202
        while not stock_bodies(shop, "H1"):
            assert time.monotonic() < deadline + 10, "H1 not delivered after the reload"
            time.sleep(0.05)
        assert stock_bodies(shop, "H1")[-1]["version"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log_path.read_text()


def test_the_version_on_disk_follows_an_edit_of_a_lookup_table_and_stays_put_without_one(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    """The console asks for it on every page: it is loaded again only when one of the spec's files changed, and
    a code table is one of them (a fixed table is a new version)."""
    erp, shop = fakes
    (tmp_path / "units.csv").write_text("unit,factor\nPC,1\n", encoding="utf-8")
    text = spec_text(1).replace("flows:\n", "lookups:\n  units: units.csv\nflows:\n", 1)
    text = text.replace('"version": 1 }', '"version": 1, "factor": $lookup($lookups.units, "PC") }')
    (tmp_path / "seamline.yaml").write_text(text, encoding="utf-8")

    async def scenario() -> None:
        async with running(tmp_path, erp, shop) as daemon:
            first = daemon.spec_version_on_disk()
            assert first == daemon.spec_version == daemon.spec_version_on_disk()
            (tmp_path / "units.csv").write_text("unit,factor\nPC,1\nBOX,12\n", encoding="utf-8")
            edited = daemon.spec_version_on_disk()
            assert edited is not None and edited != first and daemon.spec_version_on_disk() == edited
            (tmp_path / "seamline.yaml").write_text("seamline: 1\nclient: [broken", encoding="utf-8")
            assert daemon.spec_version_on_disk() is None
            (tmp_path / "seamline.yaml").write_text(text, encoding="utf-8")
            assert daemon.spec_version_on_disk() == edited

    asyncio.run(scenario())
