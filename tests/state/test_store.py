"""One suite, every state store: SQLite (the embedded default) and PostgreSQL (scaled out)."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from engine.state import POSTGRES, SQLITE, Delivered, Finished, NewItem, StateStore, open_store
from engine.state.sql import MIGRATIONS

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(store_url: str, clock: Clock) -> Iterator[StateStore]:
    s = open_store(store_url, clock=clock)
    yield s
    s.close()


def items(*specs: tuple[str, str]) -> list[NewItem]:
    return [NewItem("catalog", key, bkey, {"key": key}) for key, bkey in specs]


def test_enqueue_is_idempotent_by_key(store: StateStore) -> None:
    assert store.enqueue(items(("k1", "a"), ("k2", "b"))) == 2
    assert store.enqueue(items(("k1", "a"), ("k3", "c"))) == 1
    assert store.depth() == {"pending": 3, "inflight": 0, "done": 0, "dead": 0}


def test_depth_by_flow_counts_each_flows_items_per_status(store: StateStore) -> None:
    store.enqueue([*items(("k1", "a"), ("k2", "b")), NewItem("stock", "s1", "M1", {"m": 1})])
    claimed = store.claim("w", 1, lease=30, flows=["catalog"])
    store.complete(claimed[0].id)
    store.reject(NewItem("stock", "s2", "M2", {"raw": "x"}), "message is not JSON")
    assert store.depth_by_flow() == {
        "catalog": {"pending": 1, "inflight": 0, "done": 1, "dead": 0},
        "stock": {"pending": 1, "inflight": 0, "done": 0, "dead": 1},
    }


def test_claim_keeps_order_per_business_key_and_parallelism_across_keys(store: StateStore) -> None:
    store.enqueue(items(("a1", "A"), ("a2", "A"), ("b1", "B"), ("a3", "A"), ("c1", "C")))
    first = store.claim("w1", 10, lease=30)
    assert [i.key for i in first] == ["a1", "b1", "c1"]  # one per key, oldest first
    assert store.claim("w2", 10, lease=30) == []  # a2 waits for a1
    store.complete(first[0].id)
    assert [i.key for i in store.claim("w2", 10, lease=30)] == ["a2"]


def test_a_dead_workers_lease_runs_out_and_the_item_is_claimed_again(store: StateStore, clock: Clock) -> None:
    store.enqueue(items(("k1", "a")))
    assert [i.key for i in store.claim("w1", 10, lease=30)] == ["k1"]
    clock.now += 29
    assert store.claim("w2", 10, lease=30) == []
    clock.now += 2
    again = store.claim("w2", 10, lease=30)
    assert [i.key for i in again] == ["k1"]


def test_retry_later_waits_and_counts_attempts(store: StateStore, clock: Clock) -> None:
    store.enqueue(items(("k1", "a"), ("k2", "a")))
    (item,) = store.claim("w", 10, lease=30)
    store.retry_later(item.id, delay=5, error="503 from target")
    assert store.claim("w", 10, lease=30) == []  # k2 keeps waiting behind k1: order per key
    clock.now += 6
    (again,) = store.claim("w", 10, lease=30)
    assert (again.key, again.attempts, again.last_error) == ("k1", 1, "503 from target")


def test_release_returns_claimed_items_without_an_attempt(store: StateStore) -> None:
    store.enqueue(items(("k1", "a"), ("k2", "b")))
    claimed = store.claim("w", 10, lease=300)
    store.release([i.id for i in claimed])
    again = store.claim("w", 10, lease=300)
    assert [(i.key, i.attempts) for i in again] == [("k1", 0), ("k2", 0)]


def test_requeue_inflight_gives_everything_claimed_back(store: StateStore) -> None:
    store.enqueue(items(("k1", "a"), ("k2", "b")))
    assert len(store.claim("w", 10, lease=300)) == 2
    assert store.requeue_inflight() == 2
    assert [(i.key, i.attempts) for i in store.claim("w2", 10, lease=300)] == [("k1", 0), ("k2", 0)]


def test_requeue_inflight_of_one_worker_leaves_the_others_claims(store: StateStore) -> None:
    store.enqueue(items(("k1", "a"), ("k2", "b")))
    store.claim("delivery-1.4242", 1, 60)
    store.claim("worker", 1, 60)
    assert store.requeue_inflight("delivery-1.4242") == 1
    assert store.depth()["pending"] == 1 and store.depth()["inflight"] == 1


def test_dead_letters_keep_the_reason_and_replay_puts_items_back(store: StateStore) -> None:
    store.enqueue(items(("k1", "a"), ("k2", "a")))
    (item,) = store.claim("w", 10, lease=30)
    letter = store.dead_letter(
        item.id, "400: SKU too long", error_kind="terminal", target="commerce.products", spec_version="abc123"
    )
    (dead,) = store.dead_letters("catalog")
    assert (dead.id, dead.key, dead.reason, dead.error_kind, dead.target, dead.spec_version) == (
        letter,
        "k1",
        "400: SKU too long",
        "terminal",
        "commerce.products",
        "abc123",
    )
    assert dead.payload == {"key": "k1"}
    assert [i.key for i in store.claim("w", 10, lease=30)] == ["k2"]  # a dead item no longer blocks its key
    assert store.replay([letter]) == 1
    assert store.replay([letter]) == 0  # a replayed letter is not replayed twice
    assert store.dead_letters() == []
    assert len(store.dead_letters(include_replayed=True)) == 1
    assert store.depth()["pending"] == 1


def test_ledger_records_each_target_once(store: StateStore) -> None:
    assert not store.delivered("orders", "o1", "erp.sales-orders")
    store.record_delivery("orders", "o1", "erp.sales-orders", "201")
    store.record_delivery("orders", "o1", "erp.sales-orders", "201")
    assert store.delivered("orders", "o1", "erp.sales-orders")
    assert not store.delivered("orders", "o1", "crm.orders")
    assert store.deliveries("orders") == 1


def test_a_claim_carries_the_targets_already_delivered_and_completion_records_the_last(store: StateStore) -> None:
    store.enqueue([NewItem("orders", "o1", "o1", {"n": 1}, "test"), NewItem("orders", "o2", "o2", {"n": 2}, "test")])
    store.record_delivery("orders", "o1", "erp.sales-orders", "201")
    first, second = store.claim("w", 10, lease=30)
    assert first.delivered == frozenset({"erp.sales-orders"})
    assert second.delivered == frozenset()
    store.complete(first.id, delivery=Delivered("orders", "o1", "crm.orders", "204"))
    assert store.delivered("orders", "o1", "crm.orders")
    assert store.item(first.id).status == "done"  # type: ignore[union-attr]
    store.complete(second.id)
    assert store.deliveries("orders") == 2


def test_cursors(store: StateStore) -> None:
    assert store.get_cursor("catalog") is None
    store.set_cursor("catalog", "2025-01-01T00:00:00Z")
    store.set_cursor("catalog", "2025-01-02T00:00:00Z")
    assert store.cursors() == {"catalog": "2025-01-02T00:00:00Z"}
    store.set_cursor("catalog", None)
    assert store.get_cursor("catalog") is None


def test_runs(store: StateStore) -> None:
    run = store.start_run("catalog", "schedule")
    store.finish_run(run, "ok", {"read": 3, "written": 3})
    (record,) = store.runs("catalog")
    assert (record.id, record.status, record.counts) == (run, "ok", {"read": 3, "written": 3})
    assert record.finished_at is not None


def test_two_connections_never_claim_the_same_item(store_url: str) -> None:
    first, second = open_store(store_url), open_store(store_url)
    try:
        first.enqueue([NewItem("catalog", f"k{i}", f"b{i}", {}) for i in range(200)])
        claimed: list[list[int]] = [[], []]

        def worker(index: int, s: StateStore) -> None:
            while batch := s.claim(f"w{index}", 7, lease=60):
                claimed[index].extend(i.id for i in batch)

        threads = [threading.Thread(target=worker, args=(n, s)) for n, s in enumerate((first, second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        all_ids = claimed[0] + claimed[1]
        assert len(all_ids) == 200
        assert len(set(all_ids)) == 200
    finally:
        first.close()
        second.close()


def test_schema_is_migrated_in_place_not_recreated(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = open_store(url)
    old.close()
    # Make it look like a v1 store holding data, then let a newer seamline open it.
    conn = sqlite3.connect(tmp_path / "old.db")
    for index in (
        "inbox_open_order",
        "inbox_ready_heads",
        "inbox_open_lease",
        "dead_letters_flow",
        "inbox_business_key",
    ):
        conn.execute(f"DROP INDEX {index}")
    conn.execute("CREATE INDEX inbox_ready ON inbox (status, available_at)")
    conn.execute("CREATE INDEX inbox_order ON inbox (flow, business_key, id)")
    conn.execute("ALTER TABLE dead_letters DROP COLUMN spec_version")
    conn.execute("ALTER TABLE dead_letters DROP COLUMN trace_id")
    conn.execute("ALTER TABLE ledger DROP COLUMN request")
    conn.execute("DROP TABLE queue_messages")
    for table in ("key_state", "intents", "daemons", "replays"):
        conn.execute(f"DROP TABLE {table}")
    for column in ("version", "outcome", "head", "traceparent"):
        conn.execute(f"ALTER TABLE inbox DROP COLUMN {column}")
    conn.execute("UPDATE seamline_schema SET version = 1")
    conn.execute(
        "INSERT INTO inbox (flow, key, business_key, payload, available_at, created_at) "
        "VALUES ('catalog', 'k1', 'a', '{}', 0, 0)"
    )
    conn.commit()
    conn.close()
    upgraded = open_store(url)
    try:
        assert upgraded.schema_version() == len(MIGRATIONS) == 10
        assert upgraded.depth()["pending"] == 1  # the data survived the upgrade
        (item,) = upgraded.claim("w", 1, lease=10)
        upgraded.dead_letter(item.id, "x", error_kind="terminal", spec_version="v2")
        assert upgraded.dead_letters()[0].spec_version == "v2"
    finally:
        upgraded.close()


def _raw_connection(store_url: str) -> Any:
    """A plain DB-API connection to the store's database (PostgreSQL: inside the URL's schema)."""
    if store_url.startswith("sqlite:"):
        return sqlite3.connect(store_url.removeprefix("sqlite:///"))
    schema = store_url.rsplit("schema=", 1)[1]
    conn = psycopg.connect(PG_DSN)
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    conn.execute(f'SET search_path TO "{schema}"')
    return conn


def test_a_store_made_by_the_first_release_is_migrated_with_its_data_on_every_backend(store_url: str) -> None:
    dialect = POSTGRES if store_url.startswith("postgres") else SQLITE
    placeholder = dialect.placeholder
    conn = _raw_connection(store_url)
    # The first release's schema, made by its own statements, holding a pending item and a delivered one.
    for statement in MIGRATIONS[0]:
        conn.execute(statement.format(id=dialect.id_column, real=dialect.real, blob=dialect.blob))
    conn.execute("CREATE TABLE seamline_schema (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO seamline_schema (version) VALUES (1)")
    insert = "INSERT INTO inbox (flow, key, business_key, payload, status, available_at, created_at) VALUES ({})"
    values = ", ".join([placeholder] * 7)
    conn.execute(insert.format(values), ("catalog", "k1", "a", '{"n": 1}', "pending", 0, 0))
    conn.execute(insert.format(values), ("catalog", "k0", "a", '{"n": 0}', "done", 0, 0))
    ledger = "INSERT INTO ledger (flow, key, target, delivered_at) VALUES ({}, 0)"
    conn.execute(ledger.format(", ".join([placeholder] * 3)), ("catalog", "k0", "shop.products"))
    conn.commit()
    conn.close()

    upgraded = open_store(store_url)
    try:
        assert upgraded.schema_version() == len(MIGRATIONS)
        assert upgraded.depth() == {"pending": 1, "inflight": 0, "done": 1, "dead": 0}  # the data survived
        assert upgraded.delivered("catalog", "k0", "shop.products")
        (item,) = upgraded.claim("w", 5, lease=10)
        assert (item.key, item.payload) == ("k1", {"n": 1})
        upgraded.dead_letter(item.id, "x", error_kind="terminal", spec_version="v2")  # a column v2 added
        assert upgraded.dead_letters()[0].spec_version == "v2"
        assert upgraded.enqueue(items(("k0", "a"))) == 0  # the old rows still dedupe new deliveries
    finally:
        upgraded.close()
    again = open_store(store_url)  # opening an up-to-date store changes nothing
    try:
        assert again.schema_version() == len(MIGRATIONS) and again.depth()["dead"] == 1
    finally:
        again.close()


@pytest.mark.parametrize("flows", [None, ["orders"]], ids=["all-flows", "one-flow"])
def test_claim_walks_only_open_rows_in_index_order_on_sqlite(tmp_path: Path, flows: list[str] | None) -> None:
    """Each claim query reads an open-rows index in order and stops at its limit: no sort of a backlog, no history.

    Checked on the plans SQLite makes for the statements the store really runs (captured by a trace).
    """
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    store.enqueue([NewItem("orders", f"o{n}", f"b{n % 3}", {"n": n}, "test") for n in range(50)])
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    assert store.claim("w", 5, lease=30, flows=flows)
    store._conn.set_trace_callback(None)  # type: ignore[attr-defined]
    (marking,) = [s for s in statements if s.lstrip().startswith("WITH candidates")]
    probe = sqlite3.connect(tmp_path / "state.db")
    plan = [row[3] for row in probe.execute(f"EXPLAIN QUERY PLAN {marking}")]
    # both walks read an open-rows index in order and stop at their limit (ready heads, expired leases)
    assert "SEARCH i USING INDEX inbox_ready_heads (available_at<?)" in plan, plan
    assert "SEARCH i USING INDEX inbox_open_lease (lease_until<?)" in plan, plan
    # every sort is of what a walk found (e, r: at most `limit` rows each) or of the oldest `limit` of those (o, read
    # with their payload's length for the text budget), never of a backlog; no table is scanned
    sorts = [n for n, line in enumerate(plan) if "TEMP B-TREE" in line]
    fed_by = {"SCAN e", "SCAN r", "SEARCH x USING INTEGER PRIMARY KEY (rowid=?)"}
    assert sorts and all(plan[n - 1] in fed_by for n in sorts), plan
    assert not [line for line in plan if line in ("SCAN i", "SCAN inbox", "SCAN x")], plan
    store.close()


def test_prune_deletes_finished_work_older_than_the_cutoff_and_nothing_open(store: StateStore, clock: Clock) -> None:
    store.enqueue([NewItem("orders", key, key, {"n": key}, "test") for key in ("old-done", "old-dead", "old-open")])
    old_done, old_dead, _old_open = store.claim("w", 10, lease=300)
    store.complete(old_done.id, delivery=Delivered("orders", "old-done", "erp.sales", "201"))
    store.record_delivery("orders", "old-open", "erp.sales", "201")  # its other target still fails: kept
    store.dead_letter(old_dead.id, "bad", error_kind="terminal")
    run = store.start_run("orders", "batch")
    store.finish_run(run, "ok", {})
    clock.now += 40 * 86400
    store.enqueue([NewItem("orders", "new-done", "new-done", {}, "test")])
    claimed = store.claim("w", 10, lease=300, flows=["orders"])  # old-open's lease ran out: it comes again
    new_done = next(i for i in claimed if i.key == "new-done")
    store.complete(new_done.id, delivery=Delivered("orders", "new-done", "erp.sales", "201"))

    counts = store.prune(clock.now - 30 * 86400, chunk=1)  # chunk 1: the loop goes round
    assert counts == {"ledger": 1, "inbox": 1, "dead_letters": 0, "runs": 1, "key_state": 0}
    assert store.delivered("orders", "new-done", "erp.sales")
    assert not store.delivered("orders", "old-done", "erp.sales")
    assert store.delivered("orders", "old-open", "erp.sales")
    assert store.depth("orders") == {"pending": 0, "inflight": 1, "done": 1, "dead": 1}
    assert len(store.dead_letters("orders")) == 1  # not replayed: an operator still has to look at it
    assert store.prune(clock.now - 30 * 86400) == dict.fromkeys(counts, 0)


def test_a_dead_letter_superseded_by_a_newer_delivered_change_is_not_replayed_unless_forced(
    store: StateStore,
) -> None:
    store.enqueue([NewItem("catalog", "v1", "SKU-1", {"price": 1}, "t"), NewItem("catalog", "w1", "SKU-2", {}, "t")])
    first, other = store.claim("w", 10, lease=30)
    store.dead_letter(first.id, "bad price", error_kind="terminal")
    store.dead_letter(other.id, "bad", error_kind="terminal")
    store.enqueue([NewItem("catalog", "v2", "SKU-1", {"price": 2}, "t")])  # the next change of SKU-1...
    (newer,) = store.claim("w", 10, lease=30)
    store.complete(newer.id)  # ...was delivered
    letters = {d.item_id: d.id for d in store.dead_letters("catalog")}
    assert store.superseded(list(letters.values())) == [letters[first.id]]
    assert store.replay(list(letters.values())) == 1  # SKU-2's letter only
    assert [i.key for i in store.claim("w", 10, lease=30)] == ["w1"]
    assert store.replay([letters[first.id]], include_superseded=True) == 1


# -- migrations: under a lock, and never onto a newer store --------------------------------------------------


@pytest.mark.postgres
def test_daemons_starting_together_on_a_fresh_postgresql_schema_all_start(tmp_path: Path) -> None:
    """Was: two daemons on a fresh schema deadlocked in their migrations, about one start in three."""
    import threading

    import psycopg

    dsn = "postgresql://postgres@127.0.0.1:5432/test"
    for _ in range(5):
        schema = f"t_{uuid.uuid4().hex[:10]}"
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def start(
            url: str = f"{dsn}?schema={schema}",
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                open_store(url).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            version = conn.execute(f'SELECT version FROM "{schema}".seamline_schema').fetchone()
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        assert errors == [] and version == (len(MIGRATIONS),)


def test_a_store_newer_than_this_seamline_is_refused_and_state_version_says_so(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from engine.cli import main
    from engine.state.sql import NewerStore

    url = f"sqlite:///{tmp_path / 'newer.db'}"
    open_store(url).close()
    conn = sqlite3.connect(tmp_path / "newer.db")
    conn.execute("UPDATE seamline_schema SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(NewerStore, match=f"schema version 99, newer than this seamline knows \\({len(MIGRATIONS)}\\)"):
        open_store(url)
    (tmp_path / "seamline.yaml").write_text("seamline: 1\nclient: newer\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["state", "version", str(tmp_path), "--state", url])
    assert result.exit_code == 1
    assert f"this seamline: schema {len(MIGRATIONS)}" in result.output
    assert "schema 99, newer than this seamline" in result.output
    result = CliRunner().invoke(main, ["runs", str(tmp_path), "--state", url])
    assert result.exit_code == 1 and "newer than this seamline knows" in result.output


def test_state_version_reads_without_migrating(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from engine.cli import main

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = open_store(url)
    store.close()
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("UPDATE seamline_schema SET version = 5")  # as if one step behind
    conn.commit()
    conn.close()
    (tmp_path / "seamline.yaml").write_text("seamline: 1\nclient: old\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["state", "version", str(tmp_path), "--state", url])
    assert result.exit_code == 0 and "schema 5, older: the daemon migrates it in place" in result.output
    conn = sqlite3.connect(tmp_path / "old.db")
    assert conn.execute("SELECT version FROM seamline_schema").fetchone() == (5,)  # untouched
    conn.close()


# -- heads: only a key's oldest open change is ever claimed, and the next one follows at once ----------------


def test_only_each_keys_head_is_claimed_and_the_next_change_follows_it_done_or_dead(store: StateStore) -> None:
    store.enqueue(items(("a1", "A"), ("a2", "A"), ("b1", "B"), ("a3", "A")))
    assert [i.key for i in store.claim("w", 10, lease=300)] == ["a1", "b1"]
    assert store.claim("w", 10, lease=300) == []  # a2 waits behind a1, in flight
    store.commit_batch([], [Finished(store_id(store, "a1"))])
    (a2,) = store.claim("w", 10, lease=300)
    assert a2.key == "a2"
    store.dead_letter(a2.id, "refused", error_kind="terminal")  # a dead change does not block the next one
    assert [i.key for i in store.claim("w", 10, lease=300)] == ["a3"]


def test_a_replayed_older_change_goes_before_a_newer_one_still_waiting(store: StateStore) -> None:
    store.enqueue(items(("a1", "A")))
    (a1,) = store.claim("w", 10, lease=300)
    letter = store.dead_letter(a1.id, "refused", error_kind="terminal")
    store.enqueue(items(("a2", "A")))  # the next change came, and waits
    assert store.replay([letter], include_superseded=True) == 1
    assert [i.key for i in store.claim("w", 10, lease=300)] == ["a1"]  # the older one first, alone
    store.commit_batch([], [Finished(a1.id)])
    assert [i.key for i in store.claim("w", 10, lease=300)] == ["a2"]


def store_id(store: StateStore, key: str) -> int:
    found = [i for i in (store.item(n) for n in range(1, 50)) if i is not None and i.key == key]
    return found[0].id


def test_a_records_timeline_lists_each_change_with_its_deliveries_and_dead_letter(store: StateStore) -> None:
    """What the console's "what happened to order 100000123" reads: every change of the key, newest first."""
    store.enqueue([NewItem("orders", "o1#1", "100000123", {"n": 1}, "webhook:/hooks/orders")])
    (first,) = store.claim("w", 1, lease=30)
    store.record_delivery("orders", "o1#1", "erp", "sale 7", request='{"order":"100000123"}')
    store.complete(first.id, delivery=Delivered("orders", "o1#1", "crm", "001xx", request='{"Name":"100000123"}'))
    store.enqueue([NewItem("orders", "o1#2", "100000123", {"n": 2}, "webhook:/hooks/orders")])
    store.enqueue([NewItem("orders", "o2#1", "100000999", {"n": 9}, "webhook:/hooks/orders")])
    (second,) = [i for i in store.claim("w", 2, lease=30) if i.business_key == "100000123"]
    store.dead_letter(second.id, "erp refused: no such customer", error_kind="terminal", target="erp")
    changes = store.timeline("100000123")
    assert [c.record for c in changes] == [{"n": 2}, {"n": 1}]  # newest first, the other order not there
    newest, oldest = changes
    assert [e.event for e in oldest.events] == ["received", "delivered", "delivered"]
    assert {(e.target, e.request, e.receipt) for e in oldest.events if e.event == "delivered"} == {
        ("erp", '{"order":"100000123"}', "sale 7"),
        ("crm", '{"Name":"100000123"}', "001xx"),
    }
    assert [e.event for e in newest.events] == ["received", "dead_lettered"]
    assert newest.events[1].reason == "erp refused: no such customer" and newest.events[1].target == "erp"
    assert store.timeline("100000123", flow="catalog") == [] and store.timeline("nobody") == []
