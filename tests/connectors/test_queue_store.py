"""The embedded queue's own table: its messages, its migrations, its retention; SQLite and PostgreSQL alike.

The state store knows no system: the queue connector makes, migrates and prunes its table itself, in the
database its URL names. Stores made before that hold the table (their migration v4 made it) with messages in
it: the queue adopts it, and the messages are received after the upgrade.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from typing import Any

import psycopg
import pytest

from connectors.queue.store import MIGRATIONS, NewerQueue, QueueNotReady, open_queue
from engine.errors import TransientError
from engine.state import POSTGRES, SQLITE, open_store, stored_version
from engine.state.sql import MIGRATIONS as STORE_MIGRATIONS

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def url(store_url: str) -> str:
    """The shared store_url fixture (tests/conftest.py): a fresh store on each backend."""
    return store_url


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _raw_connection(url: str) -> Any:
    """A plain DB-API connection to the URL's database (PostgreSQL: inside the URL's schema)."""
    if url.startswith("sqlite:"):
        return sqlite3.connect(url.removeprefix("sqlite:///"))
    schema = url.rsplit("schema=", 1)[1]
    conn = psycopg.connect(PG_DSN)
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    conn.execute(f'SET search_path TO "{schema}"')
    return conn


def _tables(url: str) -> set[str]:
    conn = _raw_connection(url)
    try:
        if url.startswith("sqlite:"):
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        else:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            ).fetchall()
        return {row[0] for row in rows} - {"sqlite_sequence"}
    finally:
        conn.close()


def _old_store(url: str, version: int) -> Any:
    """A store as the state store's own migrations made it up to ``version`` (the queue did not own a table then);
    the open connection, to put data in."""
    dialect = POSTGRES if url.startswith("postgres") else SQLITE
    conn = _raw_connection(url)
    for step in STORE_MIGRATIONS[:version]:
        for statement in step:
            conn.execute(statement.format(id=dialect.id_column, real=dialect.real, blob=dialect.blob))
    conn.execute("CREATE TABLE seamline_schema (version INTEGER NOT NULL)")
    conn.execute(f"INSERT INTO seamline_schema (version) VALUES ({version})")
    return conn


# -- messages ----------------------------------------------------------------------------------------------


def test_publish_receive_ack_and_redelivery(url: str, clock: Clock) -> None:
    queue = open_queue(url, clock=clock)
    try:
        assert queue.publish("stock", b'{"sku": "A"}', "m1", {"source": "wms"})
        assert not queue.publish("stock", b'{"sku": "A"}', "m1")  # the same message id is recognised
        assert queue.publish("stock", b"\xff not utf-8", "m2")
        assert queue.publish("other", b"{}", "m1")  # ids are per queue
        first = queue.receive("stock", 10, lease=30)
        assert [(m.message_id, m.body, m.attempts) for m in first] == [
            ("m1", b'{"sku": "A"}', 1),
            ("m2", b"\xff not utf-8", 1),
        ]
        assert first[0].headers == {"source": "wms"}
        assert queue.receive("stock", 10, lease=30) == []  # leased: hidden from other consumers
        queue.ack([first[0].id])
        queue.nack(first[1].id, delay=5)
        assert queue.depth("stock") == {"ready": 0, "unacked": 1, "acked": 1}
        clock.now += 6
        (again,) = queue.receive("stock", 10, lease=30)
        assert (again.message_id, again.attempts) == ("m2", 2)
        clock.now += 31  # a consumer that died holding it: the lease ends and it comes back
        (third,) = queue.receive("stock", 10, lease=30)
        assert (third.message_id, third.attempts) == ("m2", 3)
        queue.ack([third.id])
        clock.now += 60
        assert queue.receive("stock", 10, lease=30) == []
    finally:
        queue.close()


def test_a_publish_is_durable_when_it_returns_seen_by_another_connection(url: str) -> None:
    publisher, consumer = open_queue(url), open_queue(url)
    try:
        assert publisher.publish("q", b"{}", "m1")
        publisher.close()
        assert [m.message_id for m in consumer.receive("q", 10, lease=30)] == ["m1"]
    finally:
        consumer.close()


def test_prune_deletes_messages_acked_before_the_cutoff_and_never_an_unacked_one(url: str, clock: Clock) -> None:
    queue = open_queue(url, clock=clock)
    try:
        for message_id in ("old-acked", "old-open"):
            queue.publish("q", b"{}", message_id)
        queue.publish("elsewhere", b"{}", "old-acked")
        received = {m.message_id: m.id for m in queue.receive("q", 10, lease=300)}
        queue.ack([received["old-acked"], *(m.id for m in queue.receive("elsewhere", 10, lease=30))])
        clock.now += 40 * 86400  # old-open's consumer died long ago: it is ready again, never pruned
        queue.publish("q", b"{}", "new-acked")
        queue.ack([m.id for m in queue.receive("q", 10, lease=30) if m.message_id == "new-acked"])

        cutoff = clock.now - 30 * 86400
        assert queue.prune(cutoff, queues=["q"], chunk=1) == 1  # chunk 1: the loop goes round
        assert queue.depth("q") == {"ready": 0, "unacked": 1, "acked": 1}
        assert queue.depth("elsewhere")["acked"] == 1  # another system's queue: its own to prune
        assert queue.prune(cutoff) == 1
        assert queue.prune(cutoff) == 0
        assert queue.publish("q", b"{}", "old-acked")  # forgotten: published again, it is new
        assert not queue.publish("q", b"{}", "new-acked")  # still recognised
    finally:
        queue.close()


# -- its own table and migrations ---------------------------------------------------------------------------


def test_a_database_of_its_own_holds_only_the_queues_table_and_version(url: str) -> None:
    queue = open_queue(url)
    try:
        assert queue.schema_version() == len(MIGRATIONS)
    finally:
        queue.close()
    assert _tables(url) == {"queue_messages", "seamline_queue_schema"}
    assert not stored_version(url)  # not taken for a state store (no version, or none at all)
    open_queue(url).close()  # opening it again changes nothing
    assert _tables(url) == {"queue_messages", "seamline_queue_schema"}


@pytest.mark.parametrize("first", ["queue", "store"])
def test_a_store_made_before_the_queue_owned_its_table_keeps_its_messages(url: str, clock: Clock, first: str) -> None:
    """The store's migration v4 made queue_messages; an upgrade adopts it, and its messages are received."""
    conn = _old_store(url, 4)
    placeholders = ", ".join(["%s" if url.startswith("postgres") else "?"] * 7)
    insert = (
        "INSERT INTO queue_messages (queue, message_id, body, headers, available_at, attempts, created_at, acked_at) "
        f"VALUES ({placeholders}, {{}})"
    )
    now = clock.now
    conn.execute(insert.format(now - 10), ("stock", "m0", b'{"n": 0}', "{}", now - 20, 1, now - 20))  # acked
    conn.execute(insert.format("NULL"), ("stock", "m1", b'{"n": 1}', '{"key": "A"}', now - 5, 0, now - 5))  # ready
    conn.execute(insert.format("NULL"), ("stock", "m2", b'{"n": 2}', "{}", now + 30, 1, now - 5))  # received, leased
    conn.commit()
    conn.close()

    if first == "store":
        open_store(url, clock=clock).close()
    queue = open_queue(url, clock=clock)
    try:
        assert queue.schema_version() == len(MIGRATIONS)
        (message,) = queue.receive("stock", 10, lease=30)  # the unacked message survived the upgrade
        assert (message.message_id, message.body, message.headers, message.attempts) == (
            "m1",
            b'{"n": 1}',
            {"key": "A"},
            1,
        )
        assert not queue.publish("stock", b"{}", "m0")  # an acked id is still recognised
        assert queue.depth("stock") == {"ready": 0, "unacked": 2, "acked": 1}
        clock.now += 31  # the message in flight before the upgrade comes back when its lease ends
        assert sorted((m.message_id, m.attempts) for m in queue.receive("stock", 10, lease=30)) == [
            ("m1", 2),
            ("m2", 2),
        ]
    finally:
        queue.close()
    store = open_store(url, clock=clock)  # the store migrates on past its v4 around the adopted table
    try:
        assert store.schema_version() == len(STORE_MIGRATIONS)
        assert not hasattr(store, "publish")  # the store knows no queue
    finally:
        store.close()
    again = open_queue(url, clock=clock)
    try:
        assert again.depth("stock") == {"ready": 0, "unacked": 2, "acked": 1}
    finally:
        again.close()


def test_the_queue_leaves_its_table_to_a_store_not_yet_migrated_that_far(url: str) -> None:
    """A store below v4 makes the table when it is migrated; made by the queue first, the store could not open."""
    _old_store(url, 3).commit()
    with pytest.raises(QueueNotReady, match="at schema version 3") as refused:
        open_queue(url)
    assert isinstance(refused.value, TransientError)  # the store's own migration comes, then the queue works
    assert "queue_messages" not in _tables(url)
    open_store(url).close()
    queue = open_queue(url)
    try:
        assert queue.publish("q", b"{}", "m1")
    finally:
        queue.close()


def test_a_queue_schema_newer_than_this_seamline_is_refused(url: str) -> None:
    open_queue(url).close()
    conn = _raw_connection(url)
    conn.execute("UPDATE seamline_queue_schema SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(NewerQueue, match=f"schema version 99, newer than this seamline knows \\({len(MIGRATIONS)}\\)"):
        open_queue(url)


@pytest.mark.postgres
def test_queues_opened_together_on_a_fresh_postgresql_schema_all_open() -> None:
    """The queue's migrations run under the schema lock: the second waits, then finds nothing left to do."""
    for _ in range(5):
        schema = f"t_{uuid.uuid4().hex[:10]}"
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def start(
            url: str = f"{PG_DSN}?schema={schema}",
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                open_queue(url).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            version = conn.execute(f'SELECT version FROM "{schema}".seamline_queue_schema').fetchall()
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        assert errors == [] and version == [(len(MIGRATIONS),)]
