"""The daemon as a real subprocess against real HTTP fakes: crashes, outages, poison records, shutdown.

Every scenario counts what the target applied: each record exactly once, nothing lost. The fake does not
apply a resend with the same Idempotency-Key twice, as a well-behaved API would not, so the tests also count
every request the engine sent (``resent``): after a clean stop there are none, after kill -9 at most the
writes that were in flight when the process died. The crash, outage, poison and shutdown scenarios run on
both state stores.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from connectors.http.fake import FakeHttpServer
from engine.cli import main
from engine.state import Delivered, NewItem, open_store
from tests.runtime.harness import DaemonProcess, wait_for

SPEC = """\
seamline: 1
client: crashtest
systems:
  erp:
    connector: http
    url: "{{{{ env.ERP_URL }}}}"
    endpoints:
      products: {{ path: /products, pagination: {{ style: page, page_size: 25 }} }}
  shop:
    connector: http
    url: "{{{{ env.SHOP_URL }}}}"
    limits: {{ concurrency: 4, timeout: {timeout} }}
    endpoints:
      products: {{ path: "/products/{{sku}}", method: PUT }}
      stock: {{ path: "/stock/{{sku}}", method: PUT }}
flows:
  catalog:
    trigger: {{ schedule: {{ every: 1h }} }}
    source: {{ system: erp, read: products, cursor: changed, id: Product }}
    transform: transforms/product.jsonata
    target: {{ system: shop, write: products, key: sku }}
  stock:
    trigger: {{ event: {{ webhook: /hooks/stock, id: material }} }}
    transform: '{{ "sku": material, "qty": $number(qty) }}'
    target: {{ system: shop, write: stock, key: sku }}
"""
MAPPING = '{ "sku": Product, "price": $number(price) }'
FIXED_MAPPING = '{ "sku": Product, "price": price = "n/a" ? null : $number(price) }'
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def products(count: int, poison: set[int] | None = None) -> list[dict[str, str]]:
    # Many records share one 'changed' second: the overlap window must neither miss nor repeat them.
    return [
        {
            "id": f"P{i:04d}",
            "Product": f"P{i:04d}",
            "changed": f"2025-01-01T00:00:{i // 40:02d}Z",
            "price": "n/a" if poison and i in poison else f"{i}.50",
        }
        for i in range(count)
    ]


@pytest.fixture
def fakes() -> Iterator[tuple[FakeHttpServer, FakeHttpServer]]:
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        yield erp, shop


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: the daemon's own SQLite file next to the spec; else a fresh PostgreSQL schema, dropped after."""
    if request.param == "sqlite":
        yield None
        return
    schema = f"t_{uuid.uuid4().hex[:10]}"
    yield f"{PG_DSN}?schema={schema}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def write_spec(root: Path, *, timeout: str = "2s", mapping: str = MAPPING) -> Path:
    (root / "transforms").mkdir(parents=True, exist_ok=True)
    (root / "transforms" / "product.jsonata").write_text(mapping, encoding="utf-8")
    (root / "seamline.yaml").write_text(SPEC.format(timeout=timeout), encoding="utf-8")
    return root


def daemon_for(root: Path, erp: FakeHttpServer, shop: FakeHttpServer, **kwargs: object) -> DaemonProcess:
    env = {"ERP_URL": erp.url, "SHOP_URL": shop.url}
    return DaemonProcess(root, root / "state.db", env=env, **kwargs)  # type: ignore[arg-type]


def applied_once(shop: FakeHttpServer, prefix: str) -> Counter[str]:
    """How many times each resource was applied (idempotent replays excluded)."""
    return Counter(w["path"] for w in shop.writes(prefix) if not w["duplicate"] and 200 <= int(w["status"]) < 300)


def resent(shop: FakeHttpServer, prefix: str) -> dict[str, int]:
    """Resources the engine sent again after the target had accepted them: extra requests per path.

    The fake answers such a resend with the first answer and does not apply it (``duplicate``), so
    ``applied_once`` cannot see it; a target without idempotency keys would have applied it twice.
    """
    accepted = Counter(w["path"] for w in shop.writes(prefix) if 200 <= int(w["status"]) < 300)
    return {path: n - 1 for path, n in accepted.items() if n > 1}


# What the daemon logs when it gives an item back after it may have reached the target: such an item is sent
# again on purpose, with the same Idempotency-Key (a write that timed out may have been applied).
GIVEN_BACK = {"retry", "worker_error"}


def given_back(daemon: DaemonProcess) -> list[dict[str, object]]:
    """The daemon's log events that gave an item back after it may have reached its target."""
    return [e for e in daemon.log_events() if e.get("event") in GIVEN_BACK]


def item_key(write: dict[str, object]) -> str:
    """The inbox item a write was for: the engine's Idempotency-Key is the item's key, '#', the target's label."""
    return str(write["idempotency_key"]).rpartition("#")[0]


def assert_kill_resent_at_most_one_per_worker(shop: FakeHttpServer, prefix: str, daemon: DaemonProcess) -> None:
    """Only a write the target accepted just before the kill, whose ledger entry died with the process, is sent
    again because of the kill: at most one per worker. Everything delivered before that is in the ledger and
    never resent. A resend the daemon logged a reason for (a timeout, then a retry) is the retry path's and is
    told apart by the item's key; the message shows those events, so a failure says which it was."""
    events = given_back(daemon)
    retried = {str(e["key"]) for e in events}
    accepted = [w for w in shop.writes(prefix) if 200 <= int(w["status"]) < 300]
    by_kill = Counter(w["path"] for w in accepted if item_key(w) not in retried)
    by_kill = Counter({path: n - 1 for path, n in by_kill.items() if n > 1})
    assert sum(by_kill.values()) <= daemon.workers, (
        f"{sum(by_kill.values())} resends after the kill, {daemon.workers} workers: {by_kill}; "
        f"every resend: {resent(shop, prefix)}; given back with a reason: {events}"
    )


def test_kill_9_in_the_middle_of_a_batch_loses_and_duplicates_nothing(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], state_url: str | None
) -> None:
    erp, shop = fakes
    erp.seed("/products", products(300))
    shop.configure(latency=0.01)
    root = write_spec(tmp_path)
    daemon = daemon_for(root, erp, shop, state_url=state_url, lease=2.0)
    try:
        daemon.start()
        wait_for(lambda: shop.applied_count("/products/") >= 60, 30, "the first writes")
        daemon.kill9()
        assert shop.applied_count("/products/") < 300, "the batch finished before the kill; make it slower"
        daemon.start()
        wait_for(lambda: shop.applied_count("/products/") >= 300, 60, "every product written")
        time.sleep(0.5)  # anything extra would arrive now
    finally:
        daemon.stop()
    counts = applied_once(shop, "/products/")
    assert len(counts) == 300
    assert set(counts.values()) == {1}, [p for p, n in counts.items() if n > 1]
    assert_kill_resent_at_most_one_per_worker(shop, "/products/", daemon)


def test_a_daemon_that_stands_still_past_its_lease_sends_nothing_twice_without_a_word(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    """The process stops for longer than its lease (SIGSTOP: a paused VM, a stalled host), then goes on. Was: an
    item it held, ready for the next free worker, had lost its lease, the pool's own claim handed it out again,
    and it went out twice with nothing logged. Now the copy in hand goes on and the claim's is dropped. The
    writes that were in flight time out on waking (their answers came while the process stood still): those
    are given back and sent again on purpose, each logged as a retry. (SQLite only: the pool's side is the same
    on both stores, and tests/state/test_batches.py renews leases on both.)"""
    erp, shop = fakes
    erp.seed("/products", products(300))
    shop.configure(latency=0.01)
    daemon = daemon_for(write_spec(tmp_path), erp, shop, lease=2.0)
    try:
        daemon.start()
        wait_for(lambda: shop.applied_count("/products/") >= 60, 30, "the first writes")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGSTOP)
        time.sleep(3.0)
        daemon.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: shop.applied_count("/products/") >= 300, 60, "every product written")
        time.sleep(0.5)  # anything extra would arrive now
        # one outcome per record: the claim dropped as a copy of one in hand is no second delivery
        delivered = daemon.metric("seamline_records_total", flow="catalog", outcome="delivered")
    finally:
        daemon.stop()
    assert delivered == 300
    counts = applied_once(shop, "/products/")
    assert len(counts) == 300 and set(counts.values()) == {1}
    retried = {str(e["key"]) for e in given_back(daemon)}
    silent = [w["path"] for w in shop.writes("/products/") if w["duplicate"] and item_key(w) not in retried]
    assert silent == [], (silent, resent(shop, "/products/"))


def test_kill_9_in_the_middle_of_an_event_stream(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], state_url: str | None
) -> None:
    erp, shop = fakes
    shop.configure(latency=0.005)
    daemon = daemon_for(write_spec(tmp_path), erp, shop, state_url=state_url)
    sent = threading.Event()

    def sender() -> None:
        # An upstream that resends until it gets its 202, as a webhook source or a queue does.
        with httpx.Client(timeout=2) as client:
            for i in range(200):
                event = {"material": f"M{i:03d}", "qty": str(i)}
                while True:
                    try:
                        response = client.post(
                            f"{daemon.url}/hooks/stock", json=event, headers={"X-Message-Id": f"msg-{i}"}
                        )
                        if response.status_code == 202:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.05)
        sent.set()

    try:
        daemon.start()
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        wait_for(lambda: shop.applied_count("/stock/") >= 40, 30, "the first events written")
        daemon.kill9()
        time.sleep(0.3)
        daemon.start()
        assert sent.wait(60), "the sender could not deliver every event"
        wait_for(lambda: shop.applied_count("/stock/") >= 200, 60, "every event written")
        time.sleep(0.5)
    finally:
        daemon.stop()
    counts = applied_once(shop, "/stock/")
    assert len(counts) == 200
    assert set(counts.values()) == {1}
    assert shop.resource("/stock/M199") == {"sku": "M199", "qty": 199}
    assert_kill_resent_at_most_one_per_worker(shop, "/stock/", daemon)


def test_target_outage_opens_the_breaker_and_everything_arrives_after(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], state_url: str | None
) -> None:
    erp, shop = fakes
    erp.seed("/products", products(50))
    shop.configure(error_rate=1.0, error_status=500)
    daemon = daemon_for(write_spec(tmp_path, timeout="500ms"), erp, shop, state_url=state_url)
    try:
        daemon.start()
        wait_for(lambda: daemon.metric("seamline_breaker_state", system="shop") == 2, 20, "the breaker to open")
        shop.configure(error_rate=0.0, latency=2.0)  # now it answers, but too slowly: timeouts
        time.sleep(1.5)
        shop.configure(latency=0.0)
        wait_for(lambda: shop.applied_count("/products/") >= 50, 90, "every product written after the outage")
        assert daemon.metric("seamline_dead_lettered_total") == 0
        retried = daemon.metric("seamline_retried_total", flow="catalog")
        assert retried > 0 and daemon.metric("seamline_failed_total", flow="catalog") == retried
        wait_for(lambda: daemon.metric("seamline_written_total", flow="catalog") >= 50, 10, "the written count")
        assert daemon.metric("seamline_latency_seconds_count", flow="catalog") == 50  # one per record done
        assert daemon.metric("seamline_inbox_items", flow="catalog", status="done") == 50
        assert daemon.metric("seamline_inbox_items", flow="stock", status="pending") == 0  # shown, though idle
    finally:
        daemon.stop()
    assert set(applied_once(shop, "/products/").values()) == {1}
    store = open_store(daemon.state_url)
    try:
        assert store.dead_letters() == []
    finally:
        store.close()


def test_poison_records_are_dead_lettered_and_replayed_once_after_the_fix(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], state_url: str | None
) -> None:
    erp, shop = fakes
    erp.seed("/products", products(200, poison={17, 123}))
    root = write_spec(tmp_path)
    daemon = daemon_for(root, erp, shop, state_url=state_url)
    runner = CliRunner()
    state = ["--state", daemon.state_url]
    try:
        daemon.start()
        wait_for(lambda: shop.applied_count("/products/") >= 198, 30, "the good records")
        wait_for(lambda: daemon.metric("seamline_dead_lettered_total") >= 2, 10, "the poison records")
        assert daemon.metric("seamline_failed_total", flow="catalog") == 2
        assert daemon.metric("seamline_inbox_items", flow="catalog", status="dead") == 2
        listing = runner.invoke(main, ["dlq", "list", str(root), *state])
        assert listing.exit_code == 0, listing.output
        assert "2 dead letter(s)" in listing.output
        assert "D3030" in listing.output and "P0017" in listing.output and "P0123" in listing.output
        letter_id = listing.output.splitlines()[1].split()[0]  # the first row under the header
        shown = json.loads(
            runner.invoke(main, ["dlq", "show", str(root), letter_id, "--format", "json", *state]).output
        )
        assert shown["record"]["price"] == "n/a" and shown["kind"] == "terminal"
        assert "transforms/product.jsonata" in shown["reason"]
        daemon.terminate()
        first_version = next(e["spec_version"] for e in daemon.log_events() if e["event"] == "started")
        assert shown["spec_version"] == first_version  # the letter names the spec (and mappings) that made it

        # The architect fixes the mapping; the daemon restarts with it; the operator replays.
        (root / "transforms" / "product.jsonata").write_text(FIXED_MAPPING, encoding="utf-8")
        daemon.start()
        fixed_version = [e["spec_version"] for e in daemon.log_events() if e["event"] == "started"][-1]
        assert fixed_version != first_version  # a changed mapping file is a new spec version
        replay = runner.invoke(main, ["dlq", "replay", str(root), "--flow", "catalog", *state])
        assert replay.output.strip() == "replayed 2 dead letter(s)"
        wait_for(lambda: shop.applied_count("/products/") >= 200, 30, "the replayed records")
        again = runner.invoke(main, ["dlq", "replay", str(root), "--flow", "catalog", *state])
        assert again.output.strip() == "replayed 0 dead letter(s)"
        time.sleep(0.5)
    finally:
        daemon.stop()
    counts = applied_once(shop, "/products/")
    assert len(counts) == 200 and set(counts.values()) == {1}
    assert shop.resource("/products/P0017") == {"sku": "P0017", "price": None}
    assert resent(shop, "/products/") == {}


def test_sigterm_under_load_drains_and_loses_nothing(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], state_url: str | None
) -> None:
    erp, shop = fakes
    erp.seed("/products", products(300))
    shop.configure(latency=0.01)
    daemon = daemon_for(write_spec(tmp_path), erp, shop, state_url=state_url)
    try:
        daemon.start()
        wait_for(lambda: shop.applied_count("/products/") >= 50, 30, "the first writes")
        assert daemon.terminate() == 0
        logged = daemon.log_events()
        events = [e["event"] for e in logged]
        assert "stopping" in events and events[-1] == "stopped"
        # the dev install has uvloop (seamline[fast]); the daemon runs on it and says so
        assert next(e for e in logged if e["event"] == "started")["loop"] == "uvloop"
        daemon.start()
        wait_for(lambda: shop.applied_count("/products/") >= 300, 60, "every product written")
        time.sleep(0.5)
    finally:
        daemon.stop()
    counts = applied_once(shop, "/products/")
    assert len(counts) == 300 and set(counts.values()) == {1}
    assert resent(shop, "/products/") == {}  # the drain finished what it had sent: nothing went out twice


def test_while_it_drains_the_daemon_is_not_ready_and_turns_new_events_away_to_be_sent_again(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    shop.configure(latency=3.0)  # the write in hand keeps the drain going while the test looks
    daemon = daemon_for(write_spec(tmp_path, timeout="10s"), erp, shop)
    try:
        daemon.start()
        event = json.dumps({"material": "M1", "qty": "2"}).encode()
        assert httpx.post(f"{daemon.url}/hooks/stock", content=event).status_code == 202
        wait_for(lambda: shop.peak_in_flight >= 1, 10, "the write to be in flight")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{daemon.url}/readyz").status_code == 503, 5, "/readyz to say not ready")
        assert httpx.get(f"{daemon.url}/readyz").json() == {"status": "stopping"}
        turned_away = httpx.post(f"{daemon.url}/hooks/stock", content=b'{"material": "M2", "qty": "1"}')
        assert turned_away.status_code == 503 and turned_away.headers["Retry-After"] == "5"
        assert daemon.proc.wait(30) == 0
    finally:
        daemon.stop()
    assert applied_once(shop, "/stock/") == {"/stock/M1": 1}  # the drain finished the write in hand
    store = open_store(daemon.state_url)
    try:
        assert store.depth() == {"pending": 0, "inflight": 0, "done": 1, "dead": 0}  # M2 was never taken in
    finally:
        store.close()


def test_api_needs_a_token_off_dev_and_serves_health_metrics_and_requests(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    root = write_spec(tmp_path)
    daemon = daemon_for(root, erp, shop)
    try:
        daemon.start()
        assert httpx.get(f"{daemon.url}/healthz").json() == {"status": "ok"}
        response = httpx.post(f"{daemon.url}/hooks/stock", content=b"not json", headers={"X-Message-Id": "bad-1"})
        assert response.status_code == 202  # acknowledged: the bad message is kept in dead letters
        wait_for(lambda: daemon.metric("seamline_dead_lettered_total", flow="stock") == 1, 5, "the bad message")
        assert "seamline_inbox_items" in httpx.get(f"{daemon.url}/metrics").text
    finally:
        daemon.stop()
    result = CliRunner().invoke(main, ["run", str(root), "--host", "0.0.0.0", "--dev"])
    assert result.exit_code == 2 and "only allowed on a loopback address" in result.output
    result = CliRunner().invoke(main, ["run", str(root)], env={"SEAMLINE_API_TOKEN": ""})
    assert result.exit_code == 2 and "needs a token" in result.output


def test_with_a_token_every_path_but_health_refuses_a_request_without_it_and_takes_nothing_in(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    root = write_spec(tmp_path)
    token = "s3cret-api-token-4711"
    daemon = daemon_for(root, erp, shop, token=token)
    right = {"Authorization": f"Bearer {token}"}
    wrong = {"Authorization": "Bearer guess"}
    event = json.dumps({"material": "M1", "qty": "3"}).encode()
    try:
        daemon.start()
        assert httpx.get(f"{daemon.url}/healthz").status_code == 200  # probes need no token
        assert httpx.get(f"{daemon.url}/readyz").status_code == 200
        for headers in ({}, wrong, {"Authorization": token}):  # none, a wrong one, one without "Bearer "
            refused = httpx.post(f"{daemon.url}/hooks/stock", content=event, headers=headers)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
            assert refused.json() == {"error": "missing or wrong bearer token"}
            assert httpx.get(f"{daemon.url}/metrics", headers=headers).status_code == 401
            assert httpx.get(f"{daemon.url}/no/such/path", headers=headers).status_code == 401
        assert daemon.metric("seamline_received_total", flow="stock") == 0  # nothing refused was taken in
        assert httpx.post(f"{daemon.url}/hooks/stock", content=event, headers=right).status_code == 202
        wait_for(lambda: shop.resource("/stock/M1") is not None, 10, "the accepted event at the shop")
        assert daemon.metric("seamline_received_total", flow="stock") == 1
    finally:
        daemon.stop()
    assert token not in daemon.log_path.read_text(encoding="utf-8")


def test_the_daemon_keeps_each_system_within_the_concurrency_and_rate_of_its_limits(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    erp.seed("/products", products(160))
    shop.configure(latency=0.02)
    root = write_spec(tmp_path)
    spec = root / "seamline.yaml"
    limited = spec.read_text(encoding="utf-8").replace(
        "limits: { concurrency: 4, timeout: 2s }", "limits: { concurrency: 4, rate: 40/s, timeout: 2s }"
    )
    assert limited != spec.read_text(encoding="utf-8")
    spec.write_text(limited, encoding="utf-8")
    daemon = daemon_for(root, erp, shop, workers=12)  # three times more workers than the shop may take
    try:
        daemon.start()
        wait_for(lambda: shop.applied_count("/products/") >= 160, 60, "every product written")
    finally:
        daemon.stop()
    assert shop.peak_in_flight <= 4  # held by the budget of the workers and by the connector's pool, each alone
    # A token bucket of 40 lets a burst of 40 through, then 40 a second: at most 80 writes start in any second,
    # and the fake stamps a write when it ends, so up to 4 begun just before may end inside it (84). Without
    # the rate, the 4 connections at 20 ms a write would do all 160 within about a second.
    stamps = sorted(w["at"] for w in shop.writes("/products/"))
    busiest = max(sum(1 for t in stamps[i:] if t < start + 1.0) for i, start in enumerate(stamps))
    assert busiest <= 90, f"{busiest} writes in one second"


def test_a_secret_the_target_echoes_back_in_its_errors_never_reaches_the_daemon_log(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    secret = "shop-bearer-9f8e7d6c5b"
    root = write_spec(tmp_path)
    spec = root / "seamline.yaml"
    with_auth = spec.read_text(encoding="utf-8").replace(
        "    limits: { concurrency: 4, timeout: 2s }",
        '    auth: { bearer: { token: "{{ secret.SHOP_TOKEN }}" } }\n    limits: { concurrency: 4, timeout: 2s }',
    )
    assert with_auth != spec.read_text(encoding="utf-8")
    spec.write_text(with_auth, encoding="utf-8")
    shop.configure(auth={"bearer": secret})
    # A careless upstream that quotes the credentials it was sent in its error bodies.
    shop.fail_next(2, status=503, body={"message": f"overloaded; request had Authorization: Bearer {secret}"})
    daemon = DaemonProcess(
        root, root / "state.db", env={"ERP_URL": erp.url, "SHOP_URL": shop.url, "SHOP_TOKEN": secret}
    )
    try:
        daemon.start()
        event = json.dumps({"material": "M7", "qty": "1"}).encode()
        assert httpx.post(f"{daemon.url}/hooks/stock", content=event).status_code == 202
        wait_for(lambda: shop.resource("/stock/M7") is not None, 20, "the write after two refusals")
    finally:
        daemon.stop()
    log = daemon.log_path.read_text(encoding="utf-8")
    retries = [e for e in daemon.log_events() if e["event"] == "retry"]
    assert len(retries) == 2 and all("overloaded" in str(e["reason"]) for e in retries)  # the body is quoted...
    assert secret not in log  # ...with the secret masked


def test_the_daemon_prunes_work_finished_before_the_retention_window_at_start(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes
    root = write_spec(tmp_path)
    long_ago = time.time() - 90 * 86400
    old = open_store(f"sqlite:///{root / 'state.db'}", clock=lambda: long_ago)
    old.enqueue([NewItem("stock", f"old-{n}", f"M{n}", {"material": f"M{n}", "qty": "1"}, "test") for n in range(7)])
    for item in old.claim("w", 10, lease=60):
        old.complete(item.id, delivery=Delivered("stock", item.key, "shop.stock", "200"))
    old.close()
    daemon = daemon_for(root, erp, shop)
    try:
        daemon.start()
        wait_for(lambda: any(e["event"] == "pruned" for e in daemon.log_events()), 20, "the start-up prune")
    finally:
        daemon.stop()
    pruned = next(e for e in daemon.log_events() if e["event"] == "pruned")
    assert (pruned["inbox"], pruned["ledger"]) == (7, 7)
    assert pruned["older_than_s"] == 30 * 86400  # the default state.retention


FANOUT_SPEC = """\
seamline: 1
client: fanout
systems:
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
  crm:
    connector: http
    url: "{{ env.CRM_URL }}"
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
flows:
  stock:
    trigger: { event: { webhook: /hooks/stock, id: material } }
    transform: '{ "sku": material, "qty": $number(qty) }'
    targets:
      - { system: shop, write: stock, key: sku }
      - { system: crm, write: stock, key: sku }
"""


def test_a_later_targets_failure_never_sends_an_earlier_target_its_write_again(
    tmp_path: Path, state_url: str | None
) -> None:
    (tmp_path / "seamline.yaml").write_text(FANOUT_SPEC, encoding="utf-8")
    with FakeHttpServer(port=0) as shop, FakeHttpServer(port=0) as crm:
        crm.fail_next(6, status=503)  # each of the three events is refused twice by the second target
        env = {"SHOP_URL": shop.url, "CRM_URL": crm.url}
        daemon = DaemonProcess(tmp_path, tmp_path / "state.db", env=env, state_url=state_url)
        try:
            daemon.start()
            for n in range(3):
                event = json.dumps({"material": f"M{n}", "qty": str(n)}).encode()
                assert httpx.post(f"{daemon.url}/hooks/stock", content=event).status_code == 202
            wait_for(lambda: crm.applied_count("/stock/") >= 3, 30, "the second target after its refusals")
            assert daemon.metric("seamline_retried_total", flow="stock") == 6
        finally:
            daemon.stop()
        # The ledger kept the first target's write: each retry went to the second target only.
        assert Counter(w["path"] for w in shop.writes("/stock/")) == {f"/stock/M{n}": 1 for n in range(3)}
        assert applied_once(crm, "/stock/") == {f"/stock/M{n}": 1 for n in range(3)}


# The same two systems, each the target of a flow of its own.
TWO_SHOPS_SPEC = (
    FANOUT_SPEC.split("flows:\n")[0]
    + """flows:
  shop-stock:
    trigger: { event: { webhook: /hooks/shop, id: material } }
    transform: '{ "sku": material, "qty": $number(qty) }'
    target: { system: shop, write: stock, key: sku }
  crm-stock:
    trigger: { event: { webhook: /hooks/crm, id: material } }
    transform: '{ "sku": material, "qty": $number(qty) }'
    target: { system: crm, write: stock, key: sku }
"""
)


def test_one_systems_outage_opens_only_its_breaker_and_the_other_systems_flows_go_on(tmp_path: Path) -> None:
    (tmp_path / "seamline.yaml").write_text(TWO_SHOPS_SPEC, encoding="utf-8")
    with FakeHttpServer(port=0) as shop, FakeHttpServer(port=0) as crm:
        shop.configure(error_rate=1.0, error_status=500)
        daemon = DaemonProcess(tmp_path, tmp_path / "state.db", env={"SHOP_URL": shop.url, "CRM_URL": crm.url})
        try:
            daemon.start()
            for n in range(10):
                event = json.dumps({"material": f"M{n}", "qty": str(n)}).encode()
                assert httpx.post(f"{daemon.url}/hooks/shop", content=event).status_code == 202
            wait_for(lambda: daemon.metric("seamline_breaker_state", system="shop") == 2, 20, "shop's breaker to open")
            for n in range(10):
                event = json.dumps({"material": f"M{n}", "qty": str(n)}).encode()
                assert httpx.post(f"{daemon.url}/hooks/crm", content=event).status_code == 202
            wait_for(lambda: crm.applied_count("/stock/") >= 10, 20, "the crm's writes while the shop is down")
            assert daemon.metric("seamline_breaker_state", system="crm") == 0
            assert daemon.metric("seamline_written_total", flow="shop-stock") == 0
            shop.configure(error_rate=0.0)
            wait_for(lambda: shop.applied_count("/stock/") >= 10, 60, "the shop's writes after it recovered")
            assert daemon.metric("seamline_dead_lettered_total") == 0
        finally:
            daemon.stop()
