"""One house for the engine (issue 15): one async inbox owns the store, a System wraps every call of a system.

- a store stalled for 5 s does not stall /healthz, and a webhook is answered within a bound (accepted or 503);
- schedule reads, request triggers and writes all pass the system's breaker and budget;
- real-time calls go ahead of batch work on the same budget;
- a local check that refuses a payload never closes a half-open breaker, and a bug during the half-open
  trial does not leave the breaker refusing every call.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.http.fake import FakeHttpServer
from engine.connector import ConnectorKind, Limits, Registry, SystemOptions
from engine.errors import SpecError, TerminalError, TransientError, UsageError
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.runtime.guards import Breaker, Budget
from engine.runtime.system import BreakerOpen, MissingRole, System


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SPEC = """\
seamline: 1
client: house
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    limits: { rate: 10/s, concurrency: 1, timeout: 2s }
    endpoints:
      products: { path: /products, pagination: { style: page, page_size: 2 } }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
      products: { path: "/products/{sku}", method: PUT }
flows:
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    target: { system: shop, write: stock, key: sku }
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: shop, write: products, key: sku }
"""


@pytest.fixture
def fakes() -> Iterator[tuple[FakeHttpServer, FakeHttpServer]]:
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        yield erp, shop


@asynccontextmanager
async def running(root: Path, env: dict[str, str], **options: Any) -> AsyncIterator[Daemon]:
    (root / "seamline.yaml").write_text(SPEC, encoding="utf-8")
    opts = DaemonOptions(
        port=free_port(), dev=True, workers=2, drain_timeout=5, state_url=f"sqlite:///{root / 's.db'}", **options
    )
    daemon = Daemon(root / "seamline.yaml", opts, environ={**os.environ, **env}, log_stream=io.StringIO())
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


# -- 1. one async inbox --------------------------------------------------------------------------------


def test_a_store_stalled_for_5_s_stalls_neither_healthz_nor_a_webhook_past_its_bound(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    """Was: synchronous store calls on the loop waited up to 30 s for SQLite's lock, freezing every request."""
    erp, shop = fakes

    async def scenario() -> tuple[list[float], int, float, int]:
        async with running(
            tmp_path, {"ERP_URL": erp.url, "SHOP_URL": shop.url}, accept_timeout=1.0, schedules=False
        ) as daemon:
            base = f"http://127.0.0.1:{daemon.options.port}"
            blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
            blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file for 5 s
            release = threading.Timer(5.0, lambda: blocker.execute("ROLLBACK"))
            release.start()
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    health: list[float] = []
                    for _ in range(5):
                        started = time.monotonic()
                        assert (await client.get(f"{base}/healthz")).status_code == 200
                        health.append(time.monotonic() - started)
                    started = time.monotonic()
                    answer = await client.post(f"{base}/hooks/stock", json={"sku": "S", "qty": 1})
                    webhook = time.monotonic() - started
                    status = answer.status_code
                    # once the store is back, the event sent again is taken
                    await asyncio.sleep(5.5)
                    later = (await client.post(f"{base}/hooks/stock", json={"sku": "S", "qty": 1})).status_code
            finally:
                release.join()
                blocker.close()
            return health, status, webhook, later

    health, status, webhook, later = asyncio.run(scenario())
    assert max(health) < 0.5, health
    assert status in (202, 503) and webhook < 2.0, (status, webhook)
    assert later == 202


# -- 3. a System around every call ---------------------------------------------------------------------


def test_a_schedule_read_takes_its_systems_budget_and_stops_at_an_open_breaker(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    """Was: schedule reads took no budget token and no breaker check: limits.rate did not protect the ERP."""
    erp, shop = fakes
    erp.seed("/products", [{"id": f"P{n}", "sku": f"P{n}", "changed": "2025-01-01T00:00:00Z"} for n in range(12)])

    async def scenario() -> tuple[float, dict[str, int], str]:
        async with running(tmp_path, {"ERP_URL": erp.url, "SHOP_URL": shop.url}, schedules=False) as daemon:
            schedule = daemon.schedules["catalog"]
            erp_system = daemon.systems["erp"]
            erp_system.budget._tokens = 0.0  # the bucket empty: 6 pages at 10/s take at least half a second
            started = time.monotonic()
            counts = await schedule.run_once()
            took = time.monotonic() - started
            for _ in range(erp_system.breaker.threshold):
                erp_system.breaker.failure()  # the ERP failing: its breaker opens
            await schedule.run_once()
            return took, counts, schedule.last_error

    took, counts, error = asyncio.run(scenario())
    assert counts["pages"] == 6 and counts["read"] == 12
    assert took >= 0.5, took
    assert "circuit open" in error
    assert [r["method"] for r in erp.requests()].count("GET") == 6  # the open breaker kept the pass away


def test_real_time_calls_go_ahead_of_batch_work_on_the_same_budget() -> None:
    """Was: under load the demo's contract price got 503 'over its request budget'."""

    async def scenario() -> list[str]:
        budget = Budget(Limits(concurrency=1))
        order: list[str] = []

        async def call(name: str, priority: str) -> None:
            async with budget.slot(priority):  # type: ignore[arg-type]
                order.append(name)
                await asyncio.sleep(0.01)

        async with budget.slot("batch"):  # batch work holds the one slot
            waiting = [asyncio.create_task(call(f"batch-{n}", "batch")) for n in range(3)]
            await asyncio.sleep(0.01)
            waiting.append(asyncio.create_task(call("price", "realtime")))
            await asyncio.sleep(0.01)
        await asyncio.gather(*waiting)
        return order

    assert asyncio.run(scenario())[0] == "price"


class _Conn:
    """A connection whose next call does what the test says."""

    async def close(self) -> None:
        return None


def _system(threshold: int = 2) -> System:
    return System("erp", _Conn(), Budget(Limits(timeout="1s")), Breaker(threshold=threshold, cooldown=0.05))  # type: ignore[arg-type]


def _half_open(system: System) -> None:
    for _ in range(system.breaker.threshold):
        system.breaker.failure()
    time.sleep(0.06)
    assert system.breaker.state == "half-open"


def test_a_bug_during_the_half_open_trial_lets_the_next_call_be_the_trial() -> None:
    """Was: an unexpected exception during the trial left the breaker refusing every call until a restart."""

    async def scenario() -> str:
        system = _system()
        _half_open(system)
        with pytest.raises(RuntimeError):
            async with system.call():
                raise RuntimeError("a bug")
        async with system.call():  # not BreakerOpen: this one is the trial now
            pass
        return system.breaker.state

    assert asyncio.run(scenario()) == "closed"


def test_an_answer_closes_a_half_open_breaker_a_transient_failure_opens_it_again() -> None:
    async def scenario() -> list[str]:
        system = _system()
        states = []
        _half_open(system)
        with pytest.raises(TransientError):
            async with system.call():
                raise TransientError("503")
        states.append(system.breaker.state)
        with pytest.raises(BreakerOpen):
            async with system.call():
                pass
        await asyncio.sleep(0.2)
        with pytest.raises(TerminalError):
            async with system.call():
                raise TerminalError("422 the record is wrong: the system is up")
        states.append(system.breaker.state)
        return states

    assert asyncio.run(scenario()) == ["open", "closed"]


def test_a_payload_the_local_check_refuses_never_closes_a_half_open_breaker(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    """Was: a failed local check() counted as the system answering and closed a half-open breaker."""
    erp, shop = fakes
    spec = SPEC.replace(
        'stock: { path: "/stock/{sku}", method: PUT }',
        'stock: { path: "/stock/{sku}", method: PUT, schema: { type: object, required: [qty] } }',
    )

    async def scenario() -> tuple[str, str]:
        (tmp_path / "seamline.yaml").write_text(spec, encoding="utf-8")
        opts = DaemonOptions(
            port=free_port(), dev=True, workers=1, drain_timeout=5, state_url=f"sqlite:///{tmp_path / 's.db'}"
        )
        env = {**os.environ, "ERP_URL": erp.url, "SHOP_URL": shop.url}
        daemon = Daemon(tmp_path / "seamline.yaml", opts, environ=env, log_stream=io.StringIO())
        await daemon.start()
        try:
            breaker = daemon.systems["shop"].breaker
            breaker.cooldown = 0.05
            for _ in range(breaker.threshold):
                breaker.failure()
            await asyncio.sleep(0.06)
            before = breaker.state
            async with httpx.AsyncClient() as client:
                await client.post(f"http://127.0.0.1:{daemon.options.port}/hooks/stock", json={"sku": "NOQTY"})
            deadline = time.monotonic() + 5
            while daemon.metrics.get("dead_lettered", "stock") < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            return before, breaker.state
        finally:
            await daemon.stop()

    before, after = asyncio.run(scenario())
    assert before == "half-open" and after == "half-open"  # nothing was sent: no verdict on the shop
    assert shop.writes() == []


# -- the registry is injected; a flow asking a system for a role its connector lacks is refused at bind -----------

PIM_SPEC = """\
seamline: 1
client: house
systems:
  pim: { connector: pim }
flows:
  catalog:
    trigger: { schedule: 1h }
    source: { system: pim, read: products, id: sku }
    target: { system: pim, write: products, key: sku }
"""


class _WriteOnly:
    """A connection that can only be written to: no read() at all, not a stub that says it cannot."""

    async def close(self) -> None:
        return None

    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        return "ok"


def _pim_registry(*, runnable: bool) -> Registry:
    registry = Registry()
    registry.register(
        ConnectorKind(
            name="pim",
            options=SystemOptions,
            description="a product information system, declared by the test",
            reads=frozenset({"products"}),
            writes=frozenset({"products"}),
            connect=(lambda _options, _context: _WriteOnly()) if runnable else None,  # type: ignore[arg-type,return-value]
        )
    )
    return registry


def _daemon(root: Path, registry: Registry) -> Daemon:
    (root / "seamline.yaml").write_text(PIM_SPEC, encoding="utf-8")
    opts = DaemonOptions(port=free_port(), dev=True, state_url=f"sqlite:///{root / 's.db'}", serve_http=False)
    return Daemon(root / "seamline.yaml", opts, environ={}, log_stream=io.StringIO(), registry=registry)


def test_the_daemon_runs_with_the_registry_it_is_given(tmp_path: Path) -> None:
    """The spec is held to the injected registry: with no kinds at all, 'pim' is unknown."""
    with pytest.raises(SpecError, match="unknown connector 'pim'"):
        _daemon(tmp_path, Registry())


def test_a_kind_that_cannot_run_is_named_when_the_daemon_starts(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, _pim_registry(runnable=False))

    async def scenario() -> None:
        try:
            await daemon.start()
        finally:
            await daemon.stop()

    with pytest.raises(UsageError, match=r"cannot run yet.*pim"):
        asyncio.run(scenario())


def test_a_source_without_the_source_role_is_refused_at_bind_not_at_its_first_read(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path, _pim_registry(runnable=True))

    async def scenario() -> None:
        try:
            await daemon.start()
        finally:
            await daemon.stop()

    with pytest.raises(MissingRole) as refused:
        asyncio.run(scenario())
    assert str(refused.value).startswith("system 'pim' (pim) cannot be read (source.read): its connector has no Source")


def test_a_system_looks_its_roles_up_once() -> None:
    system = System("pim", _WriteOnly(), Budget(None), Breaker(), kind="pim")  # type: ignore[arg-type]
    assert system.target is system.connection
    assert system.checker is None and system.gathering is None and system.effects is None
    for capability in ("read", "call", "consume"):
        with pytest.raises(MissingRole):
            system.require(capability)


# -- operations are declared once, by the connection class -----------------------------------------------


def test_each_built_in_kind_declares_its_operations_once_in_its_connection_class() -> None:
    """A role played has a dispatch table (or the spec names the operations); a role not played has none."""
    from engine.connector import Caller, Source, Target, default_registry

    for kind in default_registry():
        implementation = kind.implementation()
        assert implementation is not None, f"{kind.name}: built-in kinds run"
        assert not (kind.reads or kind.writes or kind.calls), f"{kind.name} declares operations twice"
        for role, table in ((Source, "READS"), (Target, "WRITES"), (Caller, "CALLS")):
            capability = {"READS": "read", "WRITES": "write", "CALLS": "call"}[table]
            declared = frozenset(getattr(implementation, table, ()))
            if issubclass(implementation, role):
                assert declared or kind.operations_in or kind.any_write, (
                    f"{kind.name}: {implementation.__name__} plays {role.__name__} with an empty {table}"
                )
                assert kind.operations(capability) == declared  # type: ignore[arg-type]
            else:
                assert not declared, f"{kind.name}: {table} without the {role.__name__} role"
                assert not kind.operations(capability)  # type: ignore[arg-type]


def test_salesforce_option_names_follow_the_connection_tables() -> None:
    """The options' entity names (for the JSON Schema) are the connection's READS and WRITES, not a second list."""
    from typing import get_args

    from connectors.salesforce import ReadEntity, WriteEntity
    from connectors.salesforce.client import SalesforceConnection

    assert set(get_args(WriteEntity)) == set(SalesforceConnection.WRITES)
    assert set(get_args(ReadEntity)) == set(SalesforceConnection.READS)
