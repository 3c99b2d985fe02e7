"""Group commits on every store: a batch of new items and finished ones in one transaction, and several stores
claiming from one inbox at once (the daemon's --processes, replicas on one PostgreSQL schema)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from engine.state import Delivered, Finished, NewItem, Remember, StateStore, open_store
from engine.state.sql import SqlStore

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    s = open_store(store_url)
    yield s
    s.close()


def change(key: str, business_key: str, flow: str = "stock") -> NewItem:
    return NewItem(flow, key, business_key, {"key": key})


def done(item_id: int, key: str, flow: str = "stock") -> Finished:
    return Finished(item_id, Delivered(flow, key, "shop", "ok"))


def test_a_batch_says_per_item_whether_it_was_new(store: StateStore) -> None:
    store.enqueue([change("a1", "A")])
    added = store.commit_batch(
        [change("a1", "A"), change("b1", "B"), change("b1", "B"), change("a2", "A"), change("b2", "B")]
    )
    # stored before, new, the same dedupe id again in the batch, new, new
    assert added == [False, True, False, True, True]
    assert store.depth()["pending"] == 4


def test_a_claim_takes_only_the_records_that_fit_its_text_budget_and_always_the_oldest(store: StateStore) -> None:
    """The worker pool's memory bound lives here: the store measures the records before it hands them out."""
    store.enqueue([NewItem("stock", f"k{n}", f"K{n}", {"note": "x" * 1000}) for n in range(6)])
    one = len(store.claim("w", 10, 60.0, text_budget=0)[0].text)  # nothing fits: the oldest comes anyway
    assert one > 1000
    assert [i.key for i in store.claim("w", 10, 60.0, text_budget=2 * one)] == ["k1", "k2"]
    assert [i.key for i in store.claim("w", 10, 60.0, text_budget=2 * one - 1)] == ["k3"]
    assert [i.key for i in store.claim("w", 10, 60.0)] == ["k4", "k5"]  # no budget: as many as the limit


def test_only_the_first_change_of_a_key_in_a_batch_is_claimed_and_the_rest_follow_in_order(store: StateStore) -> None:
    store.commit_batch([change("a1", "A"), change("b1", "B"), change("a2", "A"), change("a3", "A"), change("b2", "B")])
    order: list[str] = []
    while claimed := store.claim("w", 10, lease=30):
        assert len({item.business_key for item in claimed}) == len(claimed)  # one per key at a time
        order += [item.key for item in claimed]
        store.commit_batch(done=[done(item.id, item.key) for item in claimed])
    assert order == ["a1", "b1", "a2", "b2", "a3"]
    assert store.depth() == {"pending": 0, "inflight": 0, "done": 5, "dead": 0}


def test_a_change_stored_in_the_batch_that_finishes_its_keys_head_is_claimed_next(store: StateStore) -> None:
    store.enqueue([change("a1", "A"), change("b1", "B")])
    heads = store.claim("w", 10, lease=30)
    # the webhook's a2 and b2 and the workers' a1 and b1 in one group commit
    added = store.commit_batch([change("a2", "A"), change("b2", "B")], [done(i.id, i.key) for i in heads])
    assert added == [True, True]
    assert sorted(item.key for item in store.claim("w", 10, lease=30)) == ["a2", "b2"]


def test_a_batch_finishes_each_item_with_its_own_outcome_and_ledger_entry(store: StateStore) -> None:
    store.enqueue([change("a1", "A"), change("b1", "B"), change("c1", "C")])
    a, b, c = store.claim("w", 10, lease=30)
    store.commit_batch(
        done=[
            done(a.id, a.key),
            Finished(b.id, outcome="skipped: stale"),
            Finished(c.id, Delivered("stock", "c1", "shop", "ok"), Remember("stock", "C", "7", ("shop",))),
        ]
    )
    assert [(store.item(i.id).status, store.item(i.id).outcome) for i in (a, b, c)] == [  # type: ignore[union-attr]
        ("done", "delivered"),
        ("done", "skipped: stale"),
        ("done", "delivered"),
    ]
    assert store.delivered("stock", "a1", "shop") and store.delivered("stock", "c1", "shop")
    assert not store.delivered("stock", "b1", "shop")
    store.enqueue([change("c2", "C")])
    (next_c,) = store.claim("w", 10, lease=30)
    assert (next_c.key, next_c.latest, next_c.known) == ("c2", "7", frozenset({"shop"}))


def test_a_claim_carries_what_its_key_knows_ledger_versions_targets_and_intents(store: StateStore) -> None:
    store.enqueue([change("a1", "A")])
    store.record_delivery("stock", "a1", "erp", "ok", remember=Remember("stock", "A", "3", ("erp",)))
    store.mark_intent("stock", "a1", "mail")
    (item,) = store.claim("w", 10, lease=30)
    assert item.delivered == frozenset({"erp"})
    assert item.known == frozenset({"erp"})
    assert item.latest == "3"
    assert item.intents == frozenset({"mail"})
    assert item.payload == {"key": "a1"}
    store.enqueue([change("b1", "B")])
    (fresh,) = store.claim("w", 10, lease=30)
    assert (fresh.delivered, fresh.known, fresh.latest, fresh.intents) == (frozenset(), frozenset(), None, frozenset())


def test_a_renewed_lease_keeps_its_items_and_renewal_says_which_ones_another_worker_took(store_url: str) -> None:
    """The worker pool renews what it holds: a renewed item is no one else's to claim, one whose lease ran out
    while no one took it is renewed all the same, and one another worker took is named, not taken back."""
    now = [time.time()]
    mine, theirs = open_store(store_url, clock=lambda: now[0]), open_store(store_url, clock=lambda: now[0])
    try:
        mine.enqueue([change(f"k{n}", f"K{n}") for n in range(3)])
        held = [item.id for item in mine.claim("a", 3, lease=10)]
        now[0] += 8
        assert mine.renew("a", held[:2], 10) == []  # k0 and k1 are a's until +18; k2 until +10
        now[0] += 4
        assert [item.key for item in theirs.claim("b", 3, lease=100)] == ["k2"]
        now[0] += 20  # every lease of a's ran out, and no one took k0 or k1
        assert mine.renew("a", held, 10) == [held[2]]
        assert theirs.claim("b", 3, lease=10) == []
        assert mine.renew("a", [], 10) == []
    finally:
        mine.close()
        theirs.close()


def test_stores_claiming_at_once_never_share_an_item_and_keep_each_keys_order(store_url: str) -> None:
    """Two delivery stores and a webhook's store on one inbox: every item is claimed once, finished once, and each
    business key's changes are claimed in the order they came, whatever batch they came or finished in."""
    keys, per_key = 12, 15
    producer = open_store(store_url)
    workers = [open_store(store_url) for _ in range(2)]
    claimed_in_order: list[tuple[str, str]] = []  # (business key, dedupe id) in the order the claims returned
    order_lock = threading.Lock()
    failures: list[BaseException] = []
    feeding = threading.Event()

    def feed() -> None:
        try:
            for n in range(per_key):  # each batch: one new change of every key
                producer.commit_batch([change(f"{k}-{n:03d}", f"K{k}") for k in range(keys)])
        except BaseException as exc:  # pragma: no cover - shown by the assertion below
            failures.append(exc)
        finally:
            feeding.set()

    def work(store: StateStore, name: str) -> None:
        try:
            idle = 0
            while idle < 20:
                claimed = store.claim(name, 5, lease=300)
                if not claimed:
                    idle = idle + 1 if feeding.is_set() else 0
                    continue
                idle = 0
                # recorded before the finish commits: a key's next change is claimed after this
                with order_lock:
                    claimed_in_order.extend((item.business_key, item.key) for item in claimed)
                # a new item and the finished ones in one group commit, as the daemon's primary makes them
                new = [change(f"{i.key}-echo", f"E{i.business_key}") for i in claimed[:1] if i.business_key[0] == "K"]
                store.commit_batch(new, [done(item.id, item.key) for item in claimed])
        except BaseException as exc:  # pragma: no cover - shown by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=feed)]
    threads += [threading.Thread(target=work, args=(s, f"w{i}")) for i, s in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert not failures, failures
        every = [key for _, key in claimed_in_order]
        assert len(every) == len(set(every))  # no item claimed twice
        assert len([key for key in every if not key.endswith("-echo")]) == keys * per_key
        assert producer.depth() == {"pending": 0, "inflight": 0, "done": len(every), "dead": 0}
        assert producer.deliveries() == len(every)
        for k in range(keys):
            changes = [key for business_key, key in claimed_in_order if business_key == f"K{k}"]
            assert changes == [f"{k}-{n:03d}" for n in range(per_key)]  # each key's changes in the order they came
    finally:
        for s in (producer, *workers):
            s.close()


@pytest.mark.postgres
def test_a_postgresql_store_opened_on_an_empty_inbox_stops_reading_the_whole_table_as_it_grows() -> None:
    """The statements are prepared while the inbox is empty, when reading the whole table is the cheap plan; the
    store has them planned again as it works, so a grown inbox is read through its indexes."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = open_store(f"{PG_DSN}?schema={schema}")
    assert isinstance(store, SqlStore)

    def cycles(count: int, start: int) -> None:
        claimed: list[Finished] = []
        for n in range(start, start + count):
            store.commit_batch([change(f"{n}-{i}", f"K{n}-{i}") for i in range(8)], claimed)
            claimed = [done(item.id, item.key) for item in store.claim("w", 8, lease=30)]
        store.commit_batch(done=claimed)

    def whole_table_reads() -> int:
        store._autocommit("SELECT pg_stat_force_next_flush()", ())  # the store's backend counts its scans
        time.sleep(0.2)
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            row = conn.execute(
                "SELECT seq_scan FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'inbox'", (schema,)
            ).fetchone()
        return int(row[0]) if row else 0

    try:
        cycles(300, 0)  # 2,400 items, 600 transactions: planned again at 32, 64, ... 512
        before = whole_table_reads()
        cycles(50, 300)
        assert whole_table_reads() == before
        assert store.depth() == {"pending": 0, "inflight": 0, "done": 2800, "dead": 0}
    finally:
        store.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.postgres
def test_a_dedupe_id_stored_meanwhile_under_another_key_never_leaves_the_batchs_key_without_a_head() -> None:
    """Hostile input: a sender reuses one event id for two records of different keys, and the two arrive at once.
    The batch's first change of key A loses the insert to the other transaction (same dedupe id, key B), so its
    next change of A is the first one stored: it must be A's head, or A's changes would wait forever."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = f"{PG_DSN}?schema={schema}"
    store = open_store(url)
    try:
        with psycopg.connect(PG_DSN, autocommit=False) as other:
            other.execute(f'SET search_path TO "{schema}"')
            # the other transaction stores the reused id under key B and has not committed yet
            other.execute(
                "INSERT INTO inbox (flow, key, business_key, payload, source, available_at, created_at, head) "
                "VALUES ('stock', 'reused', 'B', '{}', 'test', 0, 0, 1)"
            )
            added: list[bool] = []
            batch = threading.Thread(
                target=lambda: added.extend(store.commit_batch([change("reused", "A"), change("a2", "A")]))
            )
            batch.start()
            time.sleep(0.5)  # the batch waits on the reused id's unique entry until the other one commits
            other.commit()
            batch.join(10)
        assert added == [False, True]
        claimed = {item.key for item in store.claim("w", 10, lease=30)}
        assert claimed == {"reused", "a2"}  # B's change, and A's only change: A's head
    finally:
        store.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
