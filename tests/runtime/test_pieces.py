"""The runtime's parts on their own: breaker, backoff, budget, identities, cursors, secrets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from engine.connector import Limits
from engine.errors import UsageError
from engine.runtime.guards import Backoff, Breaker, Budget
from engine.runtime.identity import identify
from engine.runtime.inbox import Inbox
from engine.runtime.triggers import shift_cursor
from engine.secrets import Masker, render_values
from engine.spec.model import Flow
from engine.state import Delivered, Finished, NewItem, open_store


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_then_half_opens_then_closes() -> None:
    clock = FakeClock()
    breaker = Breaker(threshold=3, cooldown=2.0, clock=clock)
    for _ in range(2):
        breaker.failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 2.1
    assert breaker.state == "half-open"
    assert breaker.allow()  # one trial
    assert not breaker.allow()  # and only one
    breaker.failure()  # the trial failed: open again, twice as long
    assert breaker.state == "open" and breaker.remaining() == pytest.approx(4.0)
    clock.now += 4.1
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0


def test_backoff_grows_is_jittered_capped_and_honours_retry_after() -> None:
    backoff = Backoff(base=1.0, cap=30.0)
    for attempts in range(10):
        ceiling = min(30.0, 2.0**attempts)
        for _ in range(20):
            assert ceiling / 2 <= backoff.delay(attempts) <= ceiling
    assert backoff.delay(0, retry_after=12.0) == 12.0


def test_budget_limits_concurrency_and_rate() -> None:
    async def scenario() -> tuple[int, float]:
        budget = Budget(Limits(rate="20/s", concurrency=2, timeout="5s"))
        assert budget.timeout == 5.0
        peak = 0
        running = 0

        async def call() -> None:
            nonlocal peak, running
            async with budget.slot():
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.01)
                running -= 1

        started = time.monotonic()
        await asyncio.gather(*(call() for _ in range(30)))
        return peak, time.monotonic() - started

    peak, elapsed = asyncio.run(scenario())
    assert peak == 2
    # 30 calls at 20/s with a full bucket of 20: at least ~0.5 s must pass. A lower bound on a
    # rate limiter is its contract, not a speed assertion.
    assert elapsed >= 0.45


def test_identity_uses_source_id_and_cursor_version() -> None:
    flow = Flow.model_validate(
        {
            "trigger": {"schedule": "15m"},
            "source": {"system": "erp", "read": "products", "cursor": "changed", "id": "Product"},
            "target": {"system": "shop", "write": "products"},
        }
    )
    record = {"Product": "4711", "changed": "2025-01-01T10:00:00Z"}
    business, key = identify(flow, record)
    assert business == "4711" and key.startswith("4711@2025-01-01T10:00:00Z#")
    # a re-read of the same row (the overlap window) is the same key; a new version is a new key
    assert identify(flow, dict(record))[1] == key
    assert identify(flow, {"Product": "4711", "changed": "2025-01-02T10:00:00Z"})[1] != key
    # a different row with the same id and version is a different record, never dropped as a duplicate
    assert identify(flow, {**record, "x": 1})[1] != key


def test_identity_of_events_uses_event_id_and_message_id() -> None:
    flow = Flow.model_validate(
        {
            "trigger": {"event": {"webhook": "/hooks/stock", "id": "material"}},
            "target": {"system": "shop", "write": "source-items"},
        }
    )
    assert identify(flow, {"material": "M1", "qty": 3}, message_id="msg-9") == ("M1", "M1@msg-9")
    business, key = identify(flow, {"qty": 3})  # no id field: the content names it, but never dedupes it
    assert business.startswith("#") and key.startswith(business + "@~")
    assert identify(flow, {"qty": 3})[1] != key


@pytest.mark.parametrize(
    ("value", "overlap", "expected"),
    [
        ("2025-01-01T10:00:00Z", 60, "2025-01-01T09:59:00Z"),
        ("2025-01-01T10:00:00+00:00", 1, "2025-01-01T09:59:59+00:00"),
        ("1700000000", 60, "1699999940"),
        ("opaque-token", 60, "opaque-token"),
    ],
)
def test_cursor_overlap_window(value: str, overlap: float, expected: str) -> None:
    assert shift_cursor(value, overlap) == expected


def test_secrets_render_late_and_are_masked(tmp_path: pytest.TempPathFactory) -> None:
    masker = Masker()
    secrets = tmp_path / "secrets"  # type: ignore[operator]
    secrets.mkdir()
    (secrets / "ERP_PASSWORD").write_text("hunter2-xyz\n", encoding="utf-8")
    environ = {"SEAMLINE_SECRETS_DIR": str(secrets), "ERP_URL": "https://erp.example", "TOKEN": "tok-123456"}
    rendered = render_values(
        {
            "url": "{{ env.ERP_URL }}/api",
            "auth": {"password": "{{ secret.ERP_PASSWORD }}", "token": "{{ secret.TOKEN }}"},
        },
        masker=masker,
        environ=environ,
    )
    assert rendered == {"url": "https://erp.example/api", "auth": {"password": "hunter2-xyz", "token": "tok-123456"}}
    assert masker("login failed for hunter2-xyz with tok-123456") == "login failed for *** with ***"
    with pytest.raises(UsageError, match=r"environment variable MISSING is not set \(needed by systems.erp.url\)"):
        render_values("{{ env.MISSING }}", masker=masker, environ={}, where="systems.erp.url")


def test_templates_cannot_reach_python() -> None:
    with pytest.raises(UsageError, match="cannot render the template"):
        render_values("{{ env.__class__.__mro__ }}", masker=Masker(), environ={})


def test_schedule_next_fire_from_cron_and_interval() -> None:
    from datetime import UTC, datetime

    from engine.runtime.triggers import ScheduleTrigger

    def trigger(schedule: object) -> ScheduleTrigger:
        flow = Flow.model_validate(
            {
                "trigger": {"schedule": schedule},
                "source": {"system": "erp", "read": "products"},
                "target": {"system": "shop", "write": "products"},
            }
        )
        compiled = type("C", (), {"flow": flow, "name": "catalog"})()
        return ScheduleTrigger(compiled, None, None, None, None, None)  # type: ignore[arg-type]

    noon = datetime(2025, 1, 15, 12, 10, tzinfo=UTC).timestamp()
    assert trigger("0 */4 * * *").next_fire(noon) == datetime(2025, 1, 15, 16, 0, tzinfo=UTC).timestamp()
    assert trigger("15m").next_fire(noon) == noon + 900
    assert trigger({"cron": "30 2 * * 1"}).next_fire(noon) == datetime(2025, 1, 20, 2, 30, tzinfo=UTC).timestamp()


def test_group_commit_gathers_one_tick_into_one_transaction(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    commits = Inbox(store)

    def item(n: int) -> NewItem:
        return NewItem("f", f"k{n}", f"k{n}", {"n": n}, "test")

    async def scenario() -> list[int]:
        return await asyncio.gather(
            commits.put([item(1), item(2)]),
            commits.put([item(2), item(3)]),  # k2 is already in the same batch: not new
            commits.put([item(1)]),
        )

    assert asyncio.run(scenario()) == [2, 1, 0]
    assert commits.transactions == 1
    claimed = store.claim("w", 10, lease=30)
    assert len(claimed) == 3

    async def finish() -> None:
        await asyncio.gather(
            commits.finish(Finished(claimed[0].id, Delivered("f", "k1", "shop.products", "200"))),
            commits.finish(Finished(claimed[1].id)),
            commits.finish(Finished(claimed[2].id)),
        )

    asyncio.run(finish())
    assert commits.transactions == 2
    assert store.depth()["done"] == 3
    assert store.delivered("f", "k1", "shop.products")
    store.close()


def test_group_commit_failure_reaches_every_waiter_and_acknowledges_none(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    commits = Inbox(store)
    store.close()  # every transaction now fails

    async def scenario() -> list[object]:
        return await asyncio.gather(
            commits.put([NewItem("f", "k1", "k1", {}, "test")]), commits.finish(Finished(1)), return_exceptions=True
        )

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, Exception) for o in outcomes), outcomes
    assert commits.transactions == 0


CLAIM_SPEC = """\
seamline: 1
client: claimtest
systems:
  shop:
    connector: http
    url: "{url}"
    endpoints:
      stock: {{ path: "/stock/{{sku}}", method: PUT }}
flows:
  stock:
    trigger: {{ event: {{ webhook: /hooks/stock, id: sku }} }}
    transform: '{{ "sku": sku }}'
    target: {{ system: shop, write: stock, key: sku }}
"""


def _shop_delivery(tmp_path: Path, store: Any, shop_url: str, log: Any) -> tuple[Any, Inbox, Any]:
    """(the shop's connection, the inbox, a Delivery) for CLAIM_SPEC's stock flow against ``shop_url``."""
    from connectors.http import CONNECTOR as HTTP
    from connectors.http import HttpOptions
    from engine.connector import ConnectContext, default_registry
    from engine.flow import load_client
    from engine.runtime.metrics import Metrics
    from engine.runtime.system import System
    from engine.runtime.worker import Delivery

    (tmp_path / "seamline.yaml").write_text(CLAIM_SPEC.format(url=shop_url), encoding="utf-8")
    client = load_client(tmp_path / "seamline.yaml", environ={})
    options = HttpOptions.model_validate(client.report.merged.data["systems"]["shop"])
    connection = HTTP.open(options, ConnectContext(system="shop", client="pooltest"))
    inbox = Inbox(store)
    systems = {"shop": System("shop", connection, Budget(None), Breaker())}
    return connection, inbox, Delivery(client, inbox, systems, default_registry(), Metrics("c"), log)


def test_a_claim_the_store_refuses_is_logged_and_the_workers_go_on_once_it_answers(tmp_path: Path) -> None:
    """A store busy past its lock timeout fails the claim: logged, tried again, and nothing is lost."""
    import io
    import json
    import sqlite3

    from connectors.http.fake import FakeHttpServer
    from engine.runtime.logs import JsonLog
    from engine.runtime.worker import WorkerPool

    state = tmp_path / "state.db"
    store = open_store(f"sqlite:///{state}", lock_timeout=0.05)
    store.enqueue([NewItem("stock", f"S{n}", f"S{n}", {"sku": f"S{n}"}, "test") for n in range(5)])
    stream = io.StringIO()
    with FakeHttpServer(port=0) as shop:
        connection, inbox, delivery = _shop_delivery(tmp_path, store, shop.url, JsonLog("claimtest", Masker(), stream))
        blocker = sqlite3.connect(state, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the file: every claim times out

        async def scenario() -> None:
            pool = WorkerPool(delivery, size=2, idle=0.01)
            pool.start()
            until = time.monotonic() + 10
            while "claim_failed" not in stream.getvalue() and time.monotonic() < until:
                await asyncio.sleep(0.02)
            assert shop.applied_count("/stock/") == 0
            blocker.execute("ROLLBACK")
            while shop.applied_count("/stock/") < 5 and time.monotonic() < until + 10:
                await asyncio.sleep(0.05)
            pool.stop()
            await pool.join()
            await connection.close()

        asyncio.run(scenario())
        inbox.close()
        failed = [json.loads(line) for line in stream.getvalue().splitlines() if '"claim_failed"' in line]
        assert failed and "locked" in str(failed[0]["error"])
        assert sorted(w["path"] for w in shop.writes("/stock/")) == [f"/stock/S{n}" for n in range(5)]
    blocker.close()
    store.close()


def _in_hand(tmp_path: Path, records: list[dict[str, str]], held_text: int) -> tuple[int, int, list[str]]:
    """(most items in flight at once, as the store saw them; most record text the pool held; paths written) while
    a 64-worker pool delivers ``records`` to a shop that takes 50 ms per write."""
    from connectors.http.fake import FakeHttpServer
    from engine.runtime.logs import JsonLog
    from engine.runtime.worker import WorkerPool

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    store.enqueue([NewItem("stock", r["sku"], r["sku"], r, "test") for r in records])
    with FakeHttpServer(port=0) as shop:
        shop.configure(latency=0.05)
        connection, inbox, delivery = _shop_delivery(tmp_path, store, shop.url, JsonLog("holdtest", Masker()))
        seen: list[int] = []
        held: list[int] = []

        async def scenario() -> None:
            pool = WorkerPool(delivery, size=64, idle=0.01, held_text=held_text)
            pool.start()
            until = time.monotonic() + 30
            while shop.applied_count("/stock/") < len(records) and time.monotonic() < until:
                seen.append((await inbox.run(store.depth))["inflight"])
                held.append(pool.holding)
                await asyncio.sleep(0.005)
            pool.stop()
            await pool.join()
            await connection.close()

        asyncio.run(scenario())
        inbox.close()
        written = sorted(w["path"] for w in shop.writes("/stock/"))
    store.close()
    return max(seen), max(held), written


def test_a_pool_holds_no_more_record_text_than_its_budget_and_many_small_records_at_once(tmp_path: Path) -> None:
    """Was: a pool held size + size/4 records whatever their length (80 of 15 MB each at 64 workers). Now the
    store hands out only what fits into the pool's text budget (its oldest record always), however the records'
    length changes; small records fill the workers."""
    budget, big = 250_000, 100_000
    records = [{"sku": f"S{n:03d}"} for n in range(100)] + [{"sku": f"B{n:02d}", "note": "x" * big} for n in range(20)]
    most, held, written = _in_hand(tmp_path / "mixed", records, held_text=budget)
    assert written == sorted(f"/stock/{r['sku']}" for r in records)  # every record once
    assert held <= budget + big + 100, held  # the budget, and at most the one record the store always hands out
    assert most > 16, most  # the small ones side by side: the shop's 50 ms is waited for together
    bigs = [{"sku": f"B{n:02d}", "note": "x" * big} for n in range(30)]
    most, held, written = _in_hand(tmp_path / "big", bigs, held_text=budget)
    assert written == [f"/stock/B{n:02d}" for n in range(30)]
    assert most <= 3 and held <= budget + big + 100, (most, held)  # 80 fit the workers; 3 fit the text budget


def test_a_record_that_waits_past_its_lease_in_a_pool_stays_that_pools_and_is_written_once(tmp_path: Path) -> None:
    """Two pools on one store, as two processes: writes take 0.9 s, leases last 0.6 s. Was: a record waiting its
    turn (in flight, or ready for the next free worker) lost its lease, and the other pool claimed it and wrote it
    again. Now each pool renews what it holds every third of its lease."""
    from connectors.http.fake import FakeHttpServer
    from engine.runtime.logs import JsonLog
    from engine.runtime.worker import WorkerPool

    url = f"sqlite:///{tmp_path / 'state.db'}"
    stores = [open_store(url), open_store(url)]
    stores[0].enqueue([NewItem("stock", f"S{n}", f"S{n}", {"sku": f"S{n}"}, "test") for n in range(4)])
    for n in range(2):
        (tmp_path / f"p{n}").mkdir()
    with FakeHttpServer(port=0) as shop:
        shop.configure(latency=0.9)
        parts = [
            _shop_delivery(tmp_path / f"p{n}", store, shop.url, JsonLog("leasetest", Masker()))
            for n, store in enumerate(stores)
        ]

        async def scenario() -> None:
            pools = [
                WorkerPool(delivery, size=1, lease=0.6, idle=0.01, name=f"w{n}")
                for n, (_, _, delivery) in enumerate(parts)
            ]
            for pool in pools:
                pool.start()
            until = time.monotonic() + 30
            while shop.applied_count("/stock/") < 4 and time.monotonic() < until:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # a second copy on its way would arrive now
            for pool in pools:
                pool.stop()
            for pool in pools:
                await pool.join()
            for connection, _, _ in parts:
                await connection.close()

        asyncio.run(scenario())
        for _, inbox, _ in parts:
            inbox.close()
        written = sorted(w["path"] for w in shop.writes("/stock/"))
    for store in stores:
        store.close()
    assert written == [f"/stock/S{n}" for n in range(4)]  # each once: no copy went out


def test_a_pool_that_stood_still_leaves_what_another_process_took_meanwhile_and_says_so(tmp_path: Path) -> None:
    """The pool's process stands still past its lease, and another process takes the items it held. On waking,
    the write that was on its way ends (the other may send it too, under the same idempotency key); the record
    that waited for a worker is left to the other process, never started here; both are logged as lost."""
    import io
    import json
    import threading

    from connectors.http.fake import FakeHttpServer
    from engine.runtime.logs import JsonLog
    from engine.runtime.worker import WorkerPool

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store, other = open_store(url), open_store(url)
    store.enqueue([NewItem("stock", f"S{n}", f"S{n}", {"sku": f"S{n}"}, "test") for n in range(4)])
    taken: list[str] = []
    stream = io.StringIO()
    with FakeHttpServer(port=0) as shop:
        shop.configure(latency=0.3)
        connection, inbox, delivery = _shop_delivery(tmp_path, store, shop.url, JsonLog("losttest", Masker(), stream))

        async def scenario() -> None:
            pool = WorkerPool(delivery, size=1, lease=1.0, idle=0.01)  # holds 2: one on its way, one ready
            pool.start()
            until = time.monotonic() + 10
            while not (pool.in_flight and pool.holding > len('{"sku": "S0"}')) and time.monotonic() < until:
                await asyncio.sleep(0.001)
            # the other process claims once this pool's leases have run out, while its loop stands still
            grab = threading.Timer(1.5, lambda: taken.extend(i.key for i in other.claim("other", 10, lease=60)))
            grab.start()
            time.sleep(2.5)  # the whole process stands still (a blocking call on the loop)
            grab.join()
            await asyncio.sleep(1.0)
            pool.stop()
            await pool.join()
            await connection.close()

        asyncio.run(scenario())
        inbox.close()
        written = [w["path"] for w in shop.writes("/stock/")]
    store.close()
    other.close()
    assert taken == ["S0", "S1", "S2", "S3"]  # the two in hand here, and the two waiting in the store
    assert written == ["/stock/S0"]  # on its way when the process stopped; S1 was never started here
    lost = [json.loads(line) for line in stream.getvalue().splitlines() if '"lease_lost"' in line]
    # S1 for certain; S0 too when a renewal ran before its finish committed
    assert {2} <= {i for e in lost for i in e["items"]} <= {1, 2}, lost


def test_backoff_delays_for_the_same_attempt_are_spread_across_the_jitter_range() -> None:
    # Full jitter exists so that many workers failing together do not all retry at the same instant:
    # one attempt's delays must differ, and cover the range rather than cluster at one end.
    backoff = Backoff(base=1.0, cap=30.0)
    for attempts in (0, 3, 8):
        ceiling = min(30.0, 2.0**attempts)
        delays = [backoff.delay(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
        # 200 uniform draws all in one fifth of the range: about 1e-19, i.e. never by chance
        assert min(delays) < ceiling * 0.6 and max(delays) > ceiling * 0.9, (attempts, min(delays), max(delays))
