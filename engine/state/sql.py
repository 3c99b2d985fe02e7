"""The state store in SQL, for SQLite and PostgreSQL alike; only the dialect differs.

Schema changes are migrations: numbered steps applied in order inside a transaction and recorded in
``seamline_schema``, so an existing store is upgraded in place, never recreated.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

from engine.errors import SeamlineError
from engine.state.base import (
    DaemonRecord,
    DeadLetter,
    Delivered,
    Finished,
    InboxItem,
    NewItem,
    RecordChange,
    Remember,
    ReplayRecord,
    RunRecord,
    TimelineEvent,
    payload_text,
)

__all__ = ["MIGRATIONS", "Dialect", "NewerStore", "SqlStore"]


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    id_column: str  # an auto-incrementing integer primary key
    real: str
    placeholder: str  # "?" or "%s"
    skip_locked: str  # "" or " FOR UPDATE SKIP LOCKED"
    blob: str = "BLOB"  # a column of raw bytes


UNLIMITED_TEXT = 2**62  # a claim's text budget when none is given

# Each step is a list of statements; {id}, {real} are filled from the dialect. Never edit a step
# that has shipped: add a new one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE inbox (
            id {id},
            flow TEXT NOT NULL,
            key TEXT NOT NULL,
            business_key TEXT NOT NULL,
            payload TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            available_at {real} NOT NULL,
            lease_until {real},
            worker TEXT,
            created_at {real} NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            UNIQUE (flow, key))""",
        "CREATE INDEX inbox_ready ON inbox (status, available_at)",
        "CREATE INDEX inbox_order ON inbox (flow, business_key, id)",
        """CREATE TABLE ledger (
            flow TEXT NOT NULL,
            key TEXT NOT NULL,
            target TEXT NOT NULL,
            delivered_at {real} NOT NULL,
            response TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (flow, key, target))""",
        """CREATE TABLE cursors (
            flow TEXT PRIMARY KEY,
            value TEXT,
            updated_at {real} NOT NULL)""",
        """CREATE TABLE dead_letters (
            id {id},
            item_id INTEGER NOT NULL,
            flow TEXT NOT NULL,
            reason TEXT NOT NULL,
            error_kind TEXT NOT NULL,
            target TEXT NOT NULL DEFAULT '',
            created_at {real} NOT NULL,
            replayed_at {real})""",
        """CREATE TABLE runs (
            id {id},
            flow TEXT NOT NULL,
            kind TEXT NOT NULL,
            started_at {real} NOT NULL,
            finished_at {real},
            status TEXT NOT NULL,
            counts TEXT NOT NULL DEFAULT '{{}}')""",
    ],
    [
        # v2: dead letters say which spec version produced them, so a replay after a fix can be told apart
        "ALTER TABLE dead_letters ADD COLUMN spec_version TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX dead_letters_flow ON dead_letters (flow, replayed_at)",
    ],
    [
        # v3: delivered rows stay for dedupe; claims must not scan them. Partial indexes hold only the
        # open rows (a claim with a one-flow filter used to read the flow's whole history).
        "CREATE INDEX inbox_open_order ON inbox (flow, business_key, id) WHERE status IN ('pending', 'inflight')",
        "CREATE INDEX inbox_open_ready ON inbox (available_at) WHERE status = 'pending'",
        "CREATE INDEX inbox_open_lease ON inbox (lease_until) WHERE status = 'inflight'",
        "DROP INDEX inbox_order",
        "DROP INDEX inbox_ready",
    ],
    [
        # v4: the embedded durable queue (connectors/queue): event flows on one machine without a broker.
        # A received message is hidden until available_at (its lease); ack sets acked_at, and the row
        # stays so a message id published again is recognised.
        # Kept as it shipped (a shipped step is never edited), but the table is no longer the store's: the
        # queue connector owns it from here on. Its own first migration (connectors/queue/store.py, recorded in
        # seamline_queue_schema) adopts the table this step made, messages and all, and the store never reads,
        # writes or prunes it.
        """CREATE TABLE queue_messages (
            id {id},
            queue TEXT NOT NULL,
            message_id TEXT NOT NULL,
            body {blob} NOT NULL,
            headers TEXT NOT NULL DEFAULT '{{}}',
            available_at {real} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at {real} NOT NULL,
            acked_at {real},
            UNIQUE (queue, message_id))""",
        "CREATE INDEX queue_open ON queue_messages (queue, available_at) WHERE acked_at IS NULL",
    ],
    [
        # v5: the record model (engine/state/base.py). An item's version and outcome; per business key the
        # version last delivered and the targets that took it; intents of once-only writes in flight.
        "ALTER TABLE inbox ADD COLUMN version TEXT",
        "ALTER TABLE inbox ADD COLUMN outcome TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE key_state (
            flow TEXT NOT NULL,
            business_key TEXT NOT NULL,
            target TEXT NOT NULL,
            version TEXT,
            updated_at {real} NOT NULL,
            PRIMARY KEY (flow, business_key, target))""",
        """CREATE TABLE intents (
            flow TEXT NOT NULL,
            key TEXT NOT NULL,
            target TEXT NOT NULL,
            started_at {real} NOT NULL,
            PRIMARY KEY (flow, key, target))""",
        # the daemons running on this store and the spec version each runs (a replay compares it with the disk)
        """CREATE TABLE daemons (
            name TEXT PRIMARY KEY,
            spec_version TEXT NOT NULL,
            started_at {real} NOT NULL,
            seen_at {real} NOT NULL)""",
        # every dlq replay: when, which letters, how many went back, how many were skipped as superseded
        """CREATE TABLE replays (
            id {id},
            at {real} NOT NULL,
            flow TEXT NOT NULL DEFAULT '',
            letters TEXT NOT NULL DEFAULT '[]',
            replayed INTEGER NOT NULL DEFAULT 0,
            skipped INTEGER NOT NULL DEFAULT 0,
            forced INTEGER NOT NULL DEFAULT 0,
            spec_version TEXT NOT NULL DEFAULT '',
            by TEXT NOT NULL DEFAULT '')""",
    ],
    [
        # v6: claims that stay cheap as the inbox grows. Each business key's oldest open item is its head; only
        # heads are claimed, from a partial index of ready heads, so a claim never walks the changes queued
        # behind an item in flight (on PostgreSQL with a backlog that walk took ~1 s per claim).
        "ALTER TABLE inbox ADD COLUMN head INTEGER NOT NULL DEFAULT 0",
        "UPDATE inbox SET head = 1 WHERE status IN ('pending', 'inflight') AND NOT EXISTS (SELECT 1 FROM inbox o "
        "WHERE o.flow = inbox.flow AND o.business_key = inbox.business_key AND o.id < inbox.id "
        "AND o.status IN ('pending', 'inflight'))",
        "CREATE INDEX inbox_ready_heads ON inbox (available_at, id) WHERE status = 'pending' AND head = 1",
        "DROP INDEX inbox_open_ready",
        # the inbox churns (every item is inserted, updated twice, later deleted): vacuum it early and often,
        # so dead index entries never pile up in front of the claims
        "postgres: ALTER TABLE inbox SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 5000, "
        "autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0.05, fillfactor = 80)",
    ],
    [
        # v7: traces. An item carries its record's W3C traceparent from the trigger to whichever process delivers
        # it (--processes); a dead letter keeps the trace id of the attempt that gave up, to find the trace by.
        "ALTER TABLE inbox ADD COLUMN traceparent TEXT",
        "ALTER TABLE dead_letters ADD COLUMN trace_id TEXT NOT NULL DEFAULT ''",
    ],
    [
        # v8: a record's timeline by business key (the operator's "what happened to order 100000123"): finished
        # items too, so not the open-items index of v6.
        "CREATE INDEX inbox_business_key ON inbox (business_key, flow)",
    ],
    [
        # v9: the ledger keeps what was sent (masked, cut short by the worker) beside the target's answer, for the
        # timeline's request/response summary.
        "ALTER TABLE ledger ADD COLUMN request TEXT NOT NULL DEFAULT ''",
    ],
    [
        # v10 (PostgreSQL): a group commit (SqlStore.commit_batch) as one call, so one statement in one round trip.
        # As statements of its own (lock, ledger, done, next heads, insert) it was a wait of the store's thread for
        # each, and under load each wait ended only when the event loop let go of the GIL (up to 5 ms): the
        # transaction took ~10 ms of which ~1 ms was work. A VOLATILE function's statements each read with a
        # snapshot of their own: the ones after the keys' locks see every commit made before the locks were held.
        "postgres: CREATE OR REPLACE FUNCTION seamline_commit_batch(p_now DOUBLE PRECISION, p_flows TEXT[], "
        "p_keys TEXT[], p_business_keys TEXT[], p_payloads TEXT[], p_sources TEXT[], p_available DOUBLE PRECISION[], "
        "p_versions TEXT[], p_traces TEXT[], p_done BIGINT[], p_outcomes TEXT[], p_ledger_flows TEXT[], "
        "p_ledger_keys TEXT[], p_ledger_targets TEXT[], p_responses TEXT[], p_requests TEXT[]) "
        "RETURNS TABLE (out_flow TEXT, out_key TEXT) LANGUAGE plpgsql VOLATILE AS $fn$ "
        "BEGIN "
        # the keys of the new items and of the finished ones, locked in one order (byte order, as _lock_keys)
        "PERFORM count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM (SELECT k FROM (SELECT n.f || chr(31) "
        "|| n.b AS k FROM unnest(p_flows, p_business_keys) AS n(f, b) UNION SELECT i.flow || chr(31) || "
        'i.business_key FROM inbox i WHERE i.id = ANY(p_done)) AS named ORDER BY k COLLATE "C") AS ordered; '
        "IF cardinality(p_done) > 0 THEN "
        "INSERT INTO ledger (flow, key, target, delivered_at, response, request) SELECT e.f, e.k, e.t, p_now, e.r, "
        "e.q FROM unnest(p_ledger_flows, p_ledger_keys, p_ledger_targets, p_responses, p_requests) "
        "AS e(f, k, t, r, q) ON CONFLICT (flow, key, target) DO NOTHING; "
        "UPDATE inbox SET status = 'done', lease_until = NULL, outcome = d.o, head = 0 "
        "FROM unnest(p_done, p_outcomes) AS d(i, o) WHERE inbox.id = d.i; "
        # a statement of its own: it sees the items above done, and the next open change of each key is its head
        "UPDATE inbox SET head = 1 WHERE id = ANY(ARRAY(SELECT (SELECT n.id FROM inbox n WHERE n.flow = d.flow "
        "AND n.business_key = d.business_key AND n.id > d.id AND n.status IN ('pending', 'inflight') "
        "ORDER BY n.id LIMIT 1) FROM inbox d WHERE d.id = ANY(p_done))); "
        "END IF; "
        # the first of each dedupe id in the batch that the inbox does not have, in batch order (ids in arrival
        # order); the head of its key when no open item of the key is stored and none comes before it in the batch
        # (the keys' locks make the checks exact: the same dedupe id stored meanwhile by another transaction, the
        # conflict skipped below, would have to come under another business key)
        "IF cardinality(p_flows) > 0 THEN "
        "RETURN QUERY WITH batch AS (SELECT * FROM unnest(p_flows, p_keys, p_business_keys, p_payloads, p_sources, "
        "p_available, p_versions, p_traces) WITH ORDINALITY AS b(f, k, b, p, s, a, v, t, n)), "
        "fresh AS (SELECT DISTINCT ON (b.f, b.k) * FROM batch b WHERE NOT EXISTS (SELECT 1 FROM inbox i "
        "WHERE i.flow = b.f AND i.key = b.k) ORDER BY b.f, b.k, b.n), "
        "stored AS (INSERT INTO inbox (flow, key, business_key, payload, source, available_at, created_at, version, "
        "traceparent, head) SELECT x.f, x.k, x.b, x.p, x.s, x.a, p_now, x.v, x.t, CASE WHEN row_number() OVER "
        "(PARTITION BY x.f, x.b ORDER BY x.n) = 1 AND NOT EXISTS (SELECT 1 FROM inbox o WHERE o.flow = x.f "
        "AND o.business_key = x.b AND o.status IN ('pending', 'inflight')) THEN 1 ELSE 0 END FROM fresh x "
        "ORDER BY x.n ON CONFLICT (flow, key) DO NOTHING RETURNING inbox.flow, inbox.key) "
        "SELECT stored.flow, stored.key FROM stored; "
        # A key's first change in the batch may have lost its insert to a transaction that stored the same dedupe
        # id meanwhile under another key (a sender reusing an event id): the key's first open change is its head
        # whatever the batch assumed, or the key's changes would wait forever.
        "UPDATE inbox SET head = 1 WHERE head = 0 AND id = ANY(ARRAY(SELECT (SELECT o.id FROM inbox o "
        "WHERE o.flow = k.f AND o.business_key = k.b AND o.status IN ('pending', 'inflight') ORDER BY o.id LIMIT 1) "
        "FROM (SELECT DISTINCT f, b FROM unnest(p_flows, p_business_keys) AS u(f, b)) AS k)); "
        "END IF; "
        "END $fn$",
    ],
]


_TIMELINE_ITEMS = (
    "SELECT id, flow, key, business_key, version, source, status, attempts, outcome, last_error, created_at, payload "
    "FROM inbox WHERE business_key = ?"
)


def _if_absent(statement: str) -> str:
    """A step's CREATE TABLE / CREATE INDEX as CREATE ... IF NOT EXISTS (the shipped text of a step never changes).

    A connector that keeps its own table in the same database may have created one of the store's old tables
    first (the embedded queue's ``queue_messages``, which store step v4 created before the queue owned it).
    """
    for kind in ("CREATE TABLE ", "CREATE INDEX "):
        if statement.startswith(kind) and not statement.startswith(kind + "IF NOT EXISTS"):
            return kind + "IF NOT EXISTS " + statement[len(kind) :]
    return statement


class NewerStore(SeamlineError):
    """The store's schema is newer than this seamline's: refused, never opened half-understood."""

    def __init__(self, found: int, known: int, url: str) -> None:
        super().__init__(
            f"the state store {url} has schema version {found}, newer than this seamline knows ({known}): a newer "
            "seamline wrote it; upgrade seamline to use it (see: seamline state version CLIENT)"
        )
        self.found, self.known = found, known


KEY_VERSION = ""  # key_state's target for the business key's own version (a target label is never empty)

_ITEM_COLUMNS = (
    "id, flow, key, business_key, payload, source, status, attempts, created_at, last_error, version, outcome, "
    "traceparent"
)


def _item(row: Sequence[Any], **known: Any) -> InboxItem:
    """An item from its ``_ITEM_COLUMNS``; ``known``: what a claim read beside them (delivered, known, ...)."""
    return InboxItem(
        id=int(row[0]),
        flow=row[1],
        key=row[2],
        business_key=row[3],
        text=row[4],
        source=row[5],
        status=row[6],
        attempts=int(row[7]),
        created_at=float(row[8]),
        last_error=row[9],
        version=row[10],
        outcome=row[11],
        traceparent=row[12],
        **known,
    )


# One ledger entry: what a target accepted (a second entry for the same item and target is a no-op).
_LEDGER_ENTRY = (
    "INSERT INTO ledger (flow, key, target, delivered_at, response, request) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (flow, key, target) DO NOTHING"
)

# PostgreSQL's group commit (SqlStore.commit_batch): the function of migration v10, its arguments as arrays.
_POSTGRES_COMMIT_BATCH = (
    "SELECT out_flow, out_key FROM seamline_commit_batch(%s, %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::double precision[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::text[], %s::text[])"
)

# What a claim hands out with each item (SqlStore._known's answers), read in the claim's own statement on PostgreSQL:
# its targets in the ledger, the targets its business key went to, the key's newest version, its intents.
_POSTGRES_CLAIM_KNOWN = (
    "SELECT c.*, ARRAY(SELECT l.target FROM ledger l WHERE l.flow = c.flow AND l.key = c.key), "
    "ARRAY(SELECT k.target FROM key_state k WHERE k.flow = c.flow AND k.business_key = c.business_key "
    "AND k.target <> ''), (SELECT k.version FROM key_state k WHERE k.flow = c.flow "
    "AND k.business_key = c.business_key AND k.target = ''), "
    "ARRAY(SELECT n.target FROM intents n WHERE n.flow = c.flow AND n.key = c.key) FROM claimed c ORDER BY c.id"
)


def _claimed(row: Sequence[Any]) -> InboxItem:
    """An item as PostgreSQL's claim reads it: the item's columns (_ITEM_COLUMNS), then what _POSTGRES_CLAIM_KNOWN
    adds."""
    return _item(
        row,
        delivered=frozenset(row[13]),
        known=frozenset(row[14]),
        latest=row[15],
        intents=frozenset(row[16]),
    )


class SqlStore:
    """A :class:`~engine.state.base.StateStore` over a DB-API connection (one per store, guarded by a lock)."""

    def __init__(
        self,
        url: str,
        dialect: Dialect,
        connect: Callable[[], Any],
        *,
        clock: Callable[[], float] = time.time,
        begin: Callable[[Any], None] | None = None,
    ):
        """``begin(cursor)`` opens each transaction (SQLite: BEGIN IMMEDIATE with its own wait for the lock);
        without it, the driver's implicit transaction is used (PostgreSQL)."""
        self.url = url
        self.dialect = dialect
        self._begin_tx = begin
        self._connect = connect
        self._conn = connect()
        self._lock = threading.RLock()
        self._clock = clock
        self._transactions = 0  # on this connection: when to plan its prepared statements again (_replan_due)
        self.migrate()

    # -- plumbing ------------------------------------------------------------------------------
    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        """``column IN (...)`` for ``values``: on PostgreSQL ``= ANY(%s)`` with one array, so the statement's text
        is the same whatever the count and psycopg prepares it once (a new text per count is parsed and planned
        every time); on SQLite a plain list of placeholders."""
        if self.dialect.name == "postgres":
            return f"{column} = ANY(%s)", (list(values),)
        return f"{column} IN ({', '.join('?' for _ in values)})", tuple(values)

    def _sql(self, text: str) -> str:
        return text.replace("?", self.dialect.placeholder) if self.dialect.placeholder != "?" else text

    @contextmanager
    def _tx(self, *, pipelined: bool = False) -> Iterator[Any]:
        """A cursor in a transaction, committed when the block ends, rolled back when it raises.

        ``pipelined`` (PostgreSQL): the block's statements and the COMMIT go to the server together instead of a
        round trip each. A result read inside the block waits for its statement (and those before it); one read
        after the block does not. For a group commit that remembers key state (see :meth:`_autocommit` on why
        round trips cost so much here).
        """
        with self._lock:
            cur = self._conn.cursor()
            try:
                self._begin(cur)
                self._transactions += 1
                if self._replan_due():
                    cur.execute("DISCARD PLANS")
                with self._conn.pipeline() if pipelined and self.dialect.name == "postgres" else nullcontext():
                    yield cur
                    self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def _autocommit(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """PostgreSQL: one statement as a transaction of its own (committed, durably, before it answers); its rows.

        One round trip, where BEGIN, the statement and COMMIT were three. Each is a wait of the store's thread,
        and under load the wait ends only when the event loop lets go of the GIL (within the interpreter's switch
        interval, 5 ms): three statements in a transaction took ~5.9 ms beside a busy thread, one ~0.7 ms.
        """
        with self._lock:
            self._transactions += 1
            self._conn.autocommit = True
            try:
                with self._conn.cursor() as cur:
                    if self._replan_due():
                        cur.execute("DISCARD PLANS")
                    cur.execute(sql, params)
                    rows: list[Any] = cur.fetchall()
                    return rows
            finally:
                if not self._conn.closed:
                    self._conn.autocommit = False

    def _replan_due(self) -> bool:
        """PostgreSQL: whether to have this connection's statements planned again (DISCARD PLANS: psycopg's prepared
        statements and the plans of seamline_commit_batch's statements are kept, their plans are made anew).

        psycopg prepares a statement on its fifth use, and PostgreSQL keeps the generic plan it then makes until
        the table's statistics change. A store opened on a fresh or empty schema plans while the inbox has a
        page or two: sequential scans, kept while the inbox grows to thousands of rows before autovacuum's
        first ANALYZE, a minute later (each claim and completion read the whole table: a fresh daemon did ~640
        events/s instead of ~970 in the runtime bench). Planned again after 32, 64, ... 4,096 transactions and
        then every 4,096 (a dozen plans each time, well under a millisecond per thousand transactions), a plan
        never outlives the table it was made for by much.
        """
        if self.dialect.name != "postgres":
            return False
        n = self._transactions
        return (n >= 32 and n & (n - 1) == 0) or n % 4096 == 0

    def _begin(self, cur: Any) -> None:
        if self._begin_tx is not None:
            self._begin_tx(cur)  # SQLite: take the write lock up front, no upgrade deadlocks

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- migrations ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        with self._tx() as cur:
            return self._version(cur)

    def _lock_migrations(self, cur: Any) -> None:
        if self.dialect.name == "postgres":
            # held until the transaction ends; the schema's own name keeps clients apart
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('seamline-migrate:' || current_schema(), 0))")

    def _version(self, cur: Any) -> int:
        cur.execute("CREATE TABLE IF NOT EXISTS seamline_schema (version INTEGER NOT NULL)")
        cur.execute("SELECT version FROM seamline_schema")
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def migrate(self, target: int | None = None) -> int:
        """Apply the steps this store has not had yet, each in its own transaction, under a lock.

        Two daemons started together on a fresh PostgreSQL schema would otherwise run the same steps at once
        and deadlock; the second waits for the first and then finds nothing left to do (SQLite's BEGIN
        IMMEDIATE already serializes them). A store whose schema is newer than this seamline knows is
        refused: its data may mean what this version cannot read.
        """
        goal = len(MIGRATIONS) if target is None else target
        while True:
            with self._tx() as cur:
                self._lock_migrations(cur)
                version = self._version(cur)
                if version > len(MIGRATIONS):
                    raise NewerStore(version, len(MIGRATIONS), self.url)
                if version >= goal:
                    return version
                for statement in MIGRATIONS[version]:
                    dialect, _, body = statement.partition(": ") if statement.startswith("postgres: ") else ("", "", "")
                    if dialect and dialect != self.dialect.name:
                        continue
                    cur.execute(
                        _if_absent(body or statement).format(
                            id=self.dialect.id_column, real=self.dialect.real, blob=self.dialect.blob
                        )
                    )
                if version == 0:
                    cur.execute(self._sql("INSERT INTO seamline_schema (version) VALUES (?)"), (1,))
                else:
                    cur.execute(self._sql("UPDATE seamline_schema SET version = ?"), (version + 1,))

    # -- inbox ---------------------------------------------------------------------------------
    def enqueue(self, items: Sequence[NewItem]) -> int:
        return sum(self.commit_batch(items))

    def _insert(self, cur: Any, items: Sequence[NewItem]) -> list[bool]:
        """SQLite: store ``items``; per item, whether it was new."""
        now = self._clock()
        # head: no open item of the key before it (SELECT ... WHERE true: SQLite's upsert after an INSERT ... SELECT)
        sql = self._sql(
            "INSERT INTO inbox (flow, key, business_key, payload, source, available_at, created_at, version, "
            "traceparent, head) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN EXISTS (SELECT 1 FROM inbox o "
            "WHERE o.flow = ? AND o.business_key = ? AND o.status IN ('pending', 'inflight')) THEN 0 ELSE 1 END "
            "WHERE true "
            "ON CONFLICT (flow, key) DO NOTHING"
        )
        added = []
        for item in items:
            payload = payload_text(item.payload)
            cur.execute(
                sql,
                (
                    item.flow,
                    item.key,
                    item.business_key,
                    payload,
                    item.source,
                    now + item.group_window,
                    now,
                    item.version,
                    item.traceparent,
                    item.flow,
                    item.business_key,
                ),
            )
            added.append(cur.rowcount > 0)
        return added

    @staticmethod
    def _added(items: Sequence[NewItem], rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Per item, whether it was new, from the (flow, dedupe id) rows PostgreSQL's group commit stored."""
        stored = {(row[0], row[1]) for row in rows}
        added = []
        for item in items:
            name = (item.flow, item.key)
            added.append(name in stored)
            stored.discard(name)  # the same dedupe id again in the batch: not new
        return added

    def _lock_keys(self, cur: Any, keys: Sequence[tuple[str, str]], item_ids: Sequence[int] = ()) -> None:
        """PostgreSQL: one key's enqueue and completion wait for each other (held until the transaction ends).

        Without it, an item enqueued while the key's head completes could see the head still open (so not be
        a head) while the completion did not see it yet (so not promote it): the key would stall. ``keys`` are
        (flow, business key) pairs, ``item_ids`` stored items whose keys to lock too. Taken in one statement,
        in one order (byte order: COLLATE "C"), so two batches never deadlock (a group commit that locked its
        new items' keys and then its finished items' could: another batch taking the same two keys the other
        way round). SQLite has one writer at a time.
        """
        if self.dialect.name != "postgres" or not (keys or item_ids):
            return
        names = sorted({f"{flow}\x1f{business_key}" for flow, business_key in keys})
        cur.execute(
            "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM (SELECT k FROM (SELECT k FROM "
            "unnest(%s::text[]) AS k UNION SELECT flow || chr(31) || business_key FROM inbox "
            'WHERE id = ANY(%s::bigint[])) AS named ORDER BY k COLLATE "C") AS ordered',
            (names, list(item_ids)),
        )

    def _promote_next(self, cur: Any, item_ids: Sequence[int]) -> None:
        """The items left the open set (done or dead): the next open item of each one's key is its head now."""
        if not item_ids:
            return
        self._lock_keys(cur, (), item_ids)
        chosen, params = self._in("d.id", item_ids)
        cur.execute(
            self._sql(
                "UPDATE inbox SET head = 1 WHERE id IN (SELECT (SELECT n.id FROM inbox n WHERE n.flow = d.flow "
                "AND n.business_key = d.business_key AND n.id > d.id AND n.status IN ('pending', 'inflight') "
                f"ORDER BY n.id LIMIT 1) FROM inbox d WHERE {chosen})"
            ),
            params,
        )

    def _lock_keys_of(self, cur: Any, item_ids: Sequence[int]) -> None:
        """:meth:`_lock_keys` for the keys of these items, in one statement."""
        self._lock_keys(cur, (), item_ids)

    def commit_batch(self, new: Sequence[NewItem] = (), done: Sequence[Finished] = ()) -> list[bool]:
        if self.dialect.name == "postgres":
            return self._commit_batch_postgres(new, done)
        with self._tx() as cur:
            added = self._insert(cur, new)
            self._finish_all(cur, done)
            return added

    def _commit_batch_postgres(self, new: Sequence[NewItem], done: Sequence[Finished]) -> list[bool]:
        """The group commit as one call of seamline_commit_batch (migration v10), a transaction of its own.

        What it does not do (key state to remember, intents to clear: the record model's flows) goes before it in
        the same transaction, sent with it in one round trip.
        """
        if not new and not done:
            return []
        now = self._clock()
        entries = [f.delivery for f in done if f.delivery is not None]
        params = (
            now,
            [item.flow for item in new],
            [item.key for item in new],
            [item.business_key for item in new],
            [payload_text(item.payload) for item in new],
            [item.source for item in new],
            [now + item.group_window for item in new],
            [item.version for item in new],
            [item.traceparent for item in new],
            [f.item_id for f in done],
            [f.outcome[:500] for f in done],
            [e.flow for e in entries],
            [e.key for e in entries],
            [e.target for e in entries],
            [e.response[:4000] for e in entries],
            [e.request[:4000] for e in entries],
        )
        if not any(f.remember is not None for f in done) and not any(e.once_only for e in entries):
            return self._added(new, self._autocommit(_POSTGRES_COMMIT_BATCH, params))
        with self._lock, self._conn.cursor() as out:
            with self._tx(pipelined=True) as cur:
                self._settle_keys(cur, done, entries)
                out.execute(_POSTGRES_COMMIT_BATCH, params)
            return self._added(new, out.fetchall())  # read after the commit: one round trip

    def _settle_keys(self, cur: Any, done: Sequence[Finished], entries: Sequence[Delivered]) -> None:
        """What finished items teach their keys: once-only writes no longer in flight, versions and targets."""
        self._forget_intents(cur, entries)
        for finished in done:
            if finished.remember is not None:
                self._remember(cur, finished.remember)

    def _forget_intents(self, cur: Any, entries: Sequence[Delivered]) -> None:
        """The once-only writes these ledger entries answer are no longer in flight."""
        for entry in entries:
            if entry.once_only:
                cur.execute(
                    self._sql("DELETE FROM intents WHERE flow = ? AND key = ? AND target = ?"),
                    (entry.flow, entry.key, entry.target),
                )

    def _finish_all(self, cur: Any, done: Sequence[Finished]) -> None:
        """SQLite: many items done in a few statements: the ledger, the key state, the status per outcome, the next
        heads."""
        if not done:
            return
        entries = [f.delivery for f in done if f.delivery is not None]
        self._settle_keys(cur, done, entries)
        if entries:
            now = self._clock()
            cur.executemany(
                self._sql(_LEDGER_ENTRY),
                [(e.flow, e.key, e.target, now, e.response[:4000], e.request[:4000]) for e in entries],
            )
        by_outcome: dict[str, list[int]] = {}
        for finished in done:
            by_outcome.setdefault(finished.outcome[:500], []).append(finished.item_id)
        for outcome, ids in by_outcome.items():
            chosen, params = self._in("id", ids)
            cur.execute(
                self._sql(
                    f"UPDATE inbox SET status = 'done', lease_until = NULL, outcome = ?, head = 0 WHERE {chosen}"
                ),
                (outcome, *params),
            )
        self._promote_next(cur, [f.item_id for f in done])

    def claim(
        self,
        worker: str,
        limit: int,
        lease: float,
        flows: Sequence[str] | None = None,
        *,
        text_budget: int | None = None,
    ) -> list[InboxItem]:
        now = self._clock()
        flow_filter = ready_filter = ""
        flows_params: tuple[str, ...] = ()
        if flows:
            # An expression, so no planner walks the (flow, key) index, i.e. a flow's whole history. Except in
            # PostgreSQL's ready walk: there the expression made it guess the filter selective, fetch every ready
            # head and sort them; on the plain column it walks the ready-heads index in order to the limit.
            in_flows, flows_params = self._in("(i.flow || '')", flows)
            flow_filter = f" AND {in_flows}"
            ready_filter = f" AND {self._in('i.flow', flows)[0]}" if self.dialect.name == "postgres" else flow_filter
        # Two index walks, each stopping after ``limit`` hits: ready heads in available_at order (oldest first;
        # rows waiting out a backoff are never read, nor changes queued behind their key's head) and expired
        # leases in lease order. Only open rows are in those partial indexes, so delivered history never slows
        # a claim either. Per-key order needs no check here: only a key's head is ever claimed (see head).
        ready = (
            f"SELECT i.id FROM inbox i WHERE i.status = 'pending' AND i.head = 1 AND i.available_at <= ?"
            f"{ready_filter} ORDER BY i.available_at, i.id LIMIT ?{self.dialect.skip_locked}"
        )
        expired = (
            f"SELECT i.id FROM inbox i WHERE i.status = 'inflight' AND i.lease_until < ?{flow_filter} "
            f"ORDER BY i.lease_until, i.id LIMIT ?{self.dialect.skip_locked}"
        )
        # One statement marks and reads the claimed items: the oldest `limit` of both walks, and of those, in order,
        # as many as fit into ``text_budget`` characters of record text (the first one whatever its length): the
        # claim itself never loads more than that, however long the records waiting are.
        # (PostgreSQL's octet_length reads a long value's stored size, not the value; SQLite's length counts.)
        size = "octet_length" if self.dialect.name == "postgres" else "length"
        chosen = (
            f"WITH candidates AS (SELECT id FROM ({expired}) AS e UNION ALL SELECT id FROM ({ready}) AS r), "
            "oldest AS (SELECT id FROM candidates ORDER BY id LIMIT ?), "
            f"sized AS (SELECT o.id, ROW_NUMBER() OVER w AS n, SUM({size}(x.payload)) OVER w AS upto "
            "FROM oldest o JOIN inbox x ON x.id = o.id WINDOW w AS (ORDER BY o.id)), "
            "chosen AS (SELECT id FROM sized WHERE n = 1 OR upto <= ?)"
        )
        mark = (
            "UPDATE inbox SET status = 'inflight', lease_until = ?, worker = ? WHERE id IN (SELECT id FROM chosen) "
            f"RETURNING {_ITEM_COLUMNS}"
        )
        budget = UNLIMITED_TEXT if text_budget is None else text_budget
        params = (now, *flows_params, limit, now, *flows_params, limit, limit, budget, now + lease, worker)
        if self.dialect.name == "postgres":  # and what the items' keys know, in the same statement
            rows = self._autocommit(self._sql(f"{chosen}, claimed AS ({mark}) {_POSTGRES_CLAIM_KNOWN}"), params)
            return [_claimed(row) for row in rows]
        with self._tx() as cur:
            cur.execute(self._sql(f"{chosen} {mark}"), params)
            rows = sorted(cur.fetchall(), key=lambda row: int(row[0]))
            if not rows:
                return []
            done, known, latest, intents = self._known(cur, [int(row[0]) for row in rows])
        return [  # each item made once, with what its key knows
            _item(
                row,
                delivered=frozenset(done.get(int(row[0]), ())),
                known=frozenset(known.get(int(row[0]), ())),
                latest=latest.get(int(row[0])),
                intents=frozenset(intents.get(int(row[0]), ())),
            )
            for row in rows
        ]

    def _known(
        self, cur: Any, ids: Sequence[int]
    ) -> tuple[dict[int, set[str]], dict[int, set[str]], dict[int, str], dict[int, set[str]]]:
        """Per claimed item, in one statement: its targets in the ledger, the targets its business key went to
        before, the key's newest delivered version, and its once-only targets in flight (intents)."""
        chosen, params = self._in("i.id", ids)
        cur.execute(
            self._sql(
                "SELECT 'l', i.id, l.target, NULL FROM inbox i JOIN ledger l ON l.flow = i.flow AND l.key = i.key "
                f"WHERE {chosen} UNION ALL "
                "SELECT 'k', i.id, k.target, k.version FROM inbox i JOIN key_state k ON k.flow = i.flow "
                f"AND k.business_key = i.business_key WHERE {chosen} UNION ALL "
                "SELECT 'n', i.id, n.target, NULL FROM inbox i JOIN intents n ON n.flow = i.flow AND n.key = i.key "
                f"WHERE {chosen}"
            ),
            (*params, *params, *params),
        )
        done: dict[int, set[str]] = {}
        known: dict[int, set[str]] = {}
        latest: dict[int, str] = {}
        intents: dict[int, set[str]] = {}
        for kind, item_id, target, version in cur.fetchall():
            item = int(item_id)
            if kind == "l":
                done.setdefault(item, set()).add(target)
            elif kind == "n":
                intents.setdefault(item, set()).add(target)
            elif target == KEY_VERSION:
                if version is not None:
                    latest[item] = version
            else:
                known.setdefault(item, set()).add(target)
        return done, known, latest, intents

    def complete(self, item_id: int, *, delivery: Delivered | None = None) -> None:
        self.commit_batch(done=[Finished(item_id, delivery)])

    def finish(self, finished: Finished) -> None:
        self.commit_batch(done=[finished])

    def _remember(self, cur: Any, what: Remember) -> None:
        now = self._clock()
        upsert = self._sql(
            "INSERT INTO key_state (flow, business_key, target, version, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (flow, business_key, target) DO UPDATE SET "
            + ("version = excluded.version, " if what.version is not None else "")
            + "updated_at = excluded.updated_at"
        )
        if what.version is not None:
            cur.execute(upsert, (what.flow, what.business_key, KEY_VERSION, what.version, now))
        for target in what.targets:
            cur.execute(
                self._sql(
                    "INSERT INTO key_state (flow, business_key, target, version, updated_at) VALUES (?, ?, ?, NULL, ?) "
                    "ON CONFLICT (flow, business_key, target) DO UPDATE SET updated_at = excluded.updated_at"
                ),
                (what.flow, what.business_key, target, now),
            )

    def absorb(self, item: InboxItem, window: float, names: Sequence[str]) -> InboxItem:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT id, payload FROM inbox WHERE flow = ? AND business_key = ? AND id > ? "
                    "AND status = 'pending' AND created_at <= ? ORDER BY id"
                ),
                (item.flow, item.business_key, item.id, item.created_at + window),
            )
            parts = cur.fetchall()
            if not parts:
                return item
            payload = item.payload if isinstance(item.payload, dict) else {"rows": [item.payload]}
            rows = list(payload.get("rows") or [])
            for _, part in parts:
                joined = json.loads(part)
                rows.extend(joined.get("rows") or [] if isinstance(joined, dict) else [joined])
            merged = {**payload, "rows": rows}
            marks = ", ".join("?" for _ in parts)
            cur.execute(
                self._sql(f"UPDATE inbox SET status = 'done', lease_until = NULL, outcome = ? WHERE id IN ({marks})"),
                (f"skipped: merged into item {item.id}", *(int(p[0]) for p in parts)),
            )
            text = payload_text(merged)
            cur.execute(self._sql("UPDATE inbox SET payload = ? WHERE id = ?"), (text, item.id))
        return replace(item, text=text)

    def retry_later(self, item_id: int, delay: float, error: str, *, count_attempt: bool = True) -> None:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "UPDATE inbox SET status = 'pending', attempts = attempts + ?, available_at = ?, "
                    "lease_until = NULL, last_error = ? WHERE id = ?"
                ),
                (1 if count_attempt else 0, self._clock() + delay, error[:4000], item_id),
            )

    def release(self, item_ids: Sequence[int]) -> None:
        if not item_ids:
            return
        marks = ", ".join("?" for _ in item_ids)
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "UPDATE inbox SET status = 'pending', lease_until = NULL "
                    f"WHERE status = 'inflight' AND id IN ({marks})"
                ),
                tuple(item_ids),
            )

    def renew(self, worker: str, item_ids: Sequence[int], lease: float) -> list[int]:
        if not item_ids:
            return []
        chosen, params = self._in("id", item_ids)
        with self._tx() as cur:
            cur.execute(
                self._sql(f"UPDATE inbox SET lease_until = ? WHERE status = 'inflight' AND worker = ? AND {chosen}"),
                (self._clock() + lease, worker, *params),
            )
            cur.execute(
                self._sql(f"SELECT id FROM inbox WHERE status = 'inflight' AND worker <> ? AND {chosen}"),
                (worker, *params),
            )
            return sorted(int(row[0]) for row in cur.fetchall())

    def inflight_workers(self) -> list[str]:
        with self._tx() as cur:
            cur.execute("SELECT DISTINCT worker FROM inbox WHERE status = 'inflight' AND worker IS NOT NULL")
            return sorted(str(row[0]) for row in cur.fetchall())

    def requeue_inflight(self, worker: str | None = None) -> int:
        back = "UPDATE inbox SET status = 'pending', lease_until = NULL WHERE status = 'inflight'"
        with self._tx() as cur:
            if worker is None:
                cur.execute(back)
            else:
                cur.execute(self._sql(back + " AND worker = ?"), (worker,))
            return max(int(cur.rowcount), 0)

    def dead_letter(
        self,
        item_id: int,
        reason: str,
        *,
        error_kind: str,
        target: str = "",
        spec_version: str = "",
        trace_id: str = "",
    ) -> int:
        now = self._clock()
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "UPDATE inbox SET status = 'dead', lease_until = NULL, last_error = ?, head = 0 WHERE id = ?"
                ),
                (reason[:4000], item_id),
            )
            self._promote_next(cur, [item_id])
            cur.execute(self._sql("SELECT flow FROM inbox WHERE id = ?"), (item_id,))
            row = cur.fetchone()
            flow = row[0] if row else ""
            cur.execute(
                self._sql(
                    "INSERT INTO dead_letters (item_id, flow, reason, error_kind, target, created_at, spec_version, "
                    "trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
                ),
                (item_id, flow, reason[:4000], error_kind, target, now, spec_version, trace_id),
            )
            return int(cur.fetchone()[0])

    def reject(self, item: NewItem, reason: str, *, trace_id: str = "") -> int:
        now = self._clock()
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO inbox (flow, key, business_key, payload, source, status, available_at, "
                    "created_at, last_error, outcome, traceparent) VALUES (?, ?, ?, ?, ?, 'dead', ?, ?, ?, 'rejected', "
                    "?) ON CONFLICT (flow, key) DO NOTHING RETURNING id"
                ),
                (
                    item.flow,
                    item.key,
                    item.business_key,
                    payload_text(item.payload),
                    item.source,
                    now,
                    now,
                    reason[:4000],
                    item.traceparent,
                ),
            )
            row = cur.fetchone()
            if row is None:
                return 0  # the same unreadable message came before; it is in dead letters already
            cur.execute(
                self._sql(
                    "INSERT INTO dead_letters (item_id, flow, reason, error_kind, target, created_at, spec_version, "
                    "trace_id) VALUES (?, ?, ?, 'rejected', '', ?, '', ?) RETURNING id"
                ),
                (int(row[0]), item.flow, reason[:4000], now, trace_id),
            )
            return int(cur.fetchone()[0])

    def depth(self, flow: str | None = None) -> dict[str, int]:
        sql = "SELECT status, COUNT(*) FROM inbox" + (" WHERE flow = ?" if flow else "") + " GROUP BY status"
        with self._tx() as cur:
            cur.execute(self._sql(sql), (flow,) if flow else ())
            counts = {status: 0 for status in ("pending", "inflight", "done", "dead")}
            counts.update({row[0]: int(row[1]) for row in cur.fetchall()})
            return counts

    def depth_by_flow(self) -> dict[str, dict[str, int]]:
        with self._tx() as cur:
            cur.execute(self._sql("SELECT flow, status, COUNT(*) FROM inbox GROUP BY flow, status"))
            counts: dict[str, dict[str, int]] = {}
            for flow, status, count in cur.fetchall():
                per_flow = counts.setdefault(flow, {s: 0 for s in ("pending", "inflight", "done", "dead")})
                per_flow[status] = int(count)
            return counts

    def item(self, item_id: int) -> InboxItem | None:
        with self._tx() as cur:
            cur.execute(self._sql(f"SELECT {_ITEM_COLUMNS} FROM inbox WHERE id = ?"), (item_id,))
            row = cur.fetchone()
            return _item(row) if row else None

    # -- ledger --------------------------------------------------------------------------------
    def delivered(self, flow: str, key: str, target: str) -> bool:
        with self._tx() as cur:
            cur.execute(
                self._sql("SELECT 1 FROM ledger WHERE flow = ? AND key = ? AND target = ?"),
                (flow, key, target),
            )
            return cur.fetchone() is not None

    def record_delivery(
        self,
        flow: str,
        key: str,
        target: str,
        response: str = "",
        *,
        remember: Remember | None = None,
        once_only: bool = False,
        request: str = "",
    ) -> None:
        with self._tx() as cur:
            self._record_delivery(cur, Delivered(flow, key, target, response, once_only, request))
            if remember is not None:
                self._remember(cur, remember)

    def _record_delivery(self, cur: Any, entry: Delivered) -> None:
        cur.execute(
            self._sql(_LEDGER_ENTRY),
            (entry.flow, entry.key, entry.target, self._clock(), entry.response[:4000], entry.request[:4000]),
        )
        self._forget_intents(cur, [entry])

    def mark_intent(self, flow: str, key: str, target: str) -> None:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO intents (flow, key, target, started_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (flow, key, target) DO NOTHING"
                ),
                (flow, key, target, self._clock()),
            )

    def clear_intent(self, flow: str, key: str, target: str) -> None:
        with self._tx() as cur:
            cur.execute(self._sql("DELETE FROM intents WHERE flow = ? AND key = ? AND target = ?"), (flow, key, target))

    def deliveries(self, flow: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM ledger" + (" WHERE flow = ?" if flow else "")
        with self._tx() as cur:
            cur.execute(self._sql(sql), (flow,) if flow else ())
            return int(cur.fetchone()[0])

    # -- cursors -------------------------------------------------------------------------------
    def get_cursor(self, flow: str) -> str | None:
        with self._tx() as cur:
            cur.execute(self._sql("SELECT value FROM cursors WHERE flow = ?"), (flow,))
            row = cur.fetchone()
            return row[0] if row else None

    def set_cursor(self, flow: str, value: str | None) -> None:
        with self._tx() as cur:
            if value is None:
                cur.execute(self._sql("DELETE FROM cursors WHERE flow = ?"), (flow,))
                return
            cur.execute(
                self._sql(
                    "INSERT INTO cursors (flow, value, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (flow) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
                ),
                (flow, value, self._clock()),
            )

    def cursors(self) -> dict[str, str]:
        with self._tx() as cur:
            cur.execute("SELECT flow, value FROM cursors ORDER BY flow")
            return {row[0]: row[1] for row in cur.fetchall()}

    # -- dead letters --------------------------------------------------------------------------
    def timeline(self, business_key: str, *, flow: str | None = None, limit: int = 20) -> list[RecordChange]:
        sql = _TIMELINE_ITEMS + (" AND flow = ?" if flow else "") + " ORDER BY id DESC LIMIT ?"
        params: tuple[Any, ...] = (business_key, flow, limit) if flow else (business_key, limit)
        with self._tx() as cur:
            cur.execute(self._sql(sql), params)
            items = cur.fetchall()
            if not items:
                return []
            events: dict[int, list[TimelineEvent]] = {
                int(row[0]): [TimelineEvent(float(row[10]), "received", source=row[5])] for row in items
            }
            by_key = {(row[1], row[2]): int(row[0]) for row in items}
            where, args = self._in("key", sorted({row[2] for row in items}))
            cur.execute(
                self._sql(f"SELECT flow, key, target, delivered_at, response, request FROM ledger WHERE {where}"), args
            )
            for item_flow, key, target, delivered_at, response, request in cur.fetchall():
                if (item_id := by_key.get((item_flow, key))) is not None:
                    delivered = TimelineEvent(
                        float(delivered_at), "delivered", target=target, receipt=response, request=request
                    )
                    events[item_id].append(delivered)
            where, args = self._in("item_id", sorted(events))
            cur.execute(
                self._sql(
                    "SELECT id, item_id, reason, error_kind, target, created_at, replayed_at FROM dead_letters "
                    f"WHERE {where}"
                ),
                args,
            )
            for letter, item_id, reason, kind, target, created_at, replayed_at in cur.fetchall():
                found = events[int(item_id)]
                found.append(
                    TimelineEvent(
                        float(created_at), "dead_lettered", target=target, reason=reason, kind=kind, letter=int(letter)
                    )
                )
                if replayed_at is not None:
                    found.append(TimelineEvent(float(replayed_at), "replayed", letter=int(letter)))
        return [
            RecordChange(
                id=int(row[0]),
                flow=row[1],
                dedupe_key=row[2],
                business_key=row[3],
                version=row[4],
                source=row[5],
                status=row[6],
                attempts=int(row[7]),
                outcome=row[8],
                last_error=row[9],
                created_at=float(row[10]),
                record=json.loads(row[11]),
                events=tuple(sorted(events[int(row[0])], key=lambda e: e.at)),
            )
            for row in items
        ]

    def dead_letters(
        self, flow: str | None = None, *, include_replayed: bool = False, letter_id: int | None = None
    ) -> list[DeadLetter]:
        where = []
        params: list[Any] = []
        if letter_id is not None:
            where.append("d.id = ?")
            params.append(letter_id)
        if flow:
            where.append("d.flow = ?")
            params.append(flow)
        if not include_replayed:
            where.append("d.replayed_at IS NULL")
        sql = (
            "SELECT d.id, d.item_id, d.flow, i.key, i.business_key, i.payload, d.reason, d.error_kind, d.target, "
            "d.spec_version, d.created_at, d.replayed_at, d.trace_id "
            "FROM dead_letters d JOIN inbox i ON i.id = d.item_id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY d.id"
        )
        with self._tx() as cur:
            cur.execute(self._sql(sql), tuple(params))
            return [
                DeadLetter(
                    id=int(r[0]),
                    item_id=int(r[1]),
                    flow=r[2],
                    key=r[3],
                    business_key=r[4],
                    payload=json.loads(r[5]),
                    reason=r[6],
                    error_kind=r[7],
                    target=r[8],
                    spec_version=r[9],
                    created_at=float(r[10]),
                    replayed_at=float(r[11]) if r[11] is not None else None,
                    trace_id=r[12],
                )
                for r in cur.fetchall()
            ]

    def superseded(self, dead_letter_ids: Sequence[int]) -> list[int]:
        if not dead_letter_ids:
            return []
        marks = ", ".join("?" for _ in dead_letter_ids)
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT d.id FROM dead_letters d JOIN inbox i ON i.id = d.item_id "
                    f"WHERE d.id IN ({marks}) AND d.replayed_at IS NULL AND EXISTS (SELECT 1 FROM inbox n "
                    "WHERE n.flow = i.flow AND n.business_key = i.business_key AND n.id > i.id AND n.status = 'done') "
                    "ORDER BY d.id"
                ),
                tuple(dead_letter_ids),
            )
            return [int(row[0]) for row in cur.fetchall()]

    def replay(self, dead_letter_ids: Sequence[int], *, include_superseded: bool = False) -> int:
        if not include_superseded:
            stale = set(self.superseded(dead_letter_ids))
            dead_letter_ids = [i for i in dead_letter_ids if i not in stale]
        if not dead_letter_ids:
            return 0
        now = self._clock()
        marks = ", ".join("?" for _ in dead_letter_ids)
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    f"SELECT id, item_id, error_kind FROM dead_letters WHERE replayed_at IS NULL AND id IN ({marks})"
                ),
                tuple(dead_letter_ids),
            )
            rows = cur.fetchall()
            self._lock_keys_of(cur, [int(row[1]) for row in rows])
            for letter_id, item_id, kind in rows:
                if kind == "unknown":  # the person replaying it checked the target: the write is sent
                    cur.execute(
                        self._sql(
                            "DELETE FROM intents WHERE EXISTS (SELECT 1 FROM inbox i WHERE i.id = ? "
                            "AND i.flow = intents.flow AND i.key = intents.key)"
                        ),
                        (item_id,),
                    )
                cur.execute(
                    self._sql(
                        "UPDATE inbox SET status = 'pending', attempts = 0, available_at = ?, lease_until = NULL, "
                        "outcome = '', head = CASE WHEN EXISTS (SELECT 1 FROM inbox o WHERE o.flow = inbox.flow "
                        "AND o.business_key = inbox.business_key AND o.id < inbox.id "
                        "AND o.status IN ('pending', 'inflight')) THEN 0 ELSE 1 END WHERE id = ? AND status = 'dead'"
                    ),
                    (now, item_id),
                )
                # an older change back in the open set is its key's head: a newer one still waiting is not
                cur.execute(
                    self._sql(
                        "UPDATE inbox SET head = 0 WHERE id IN (SELECT n.id FROM inbox n, inbox r WHERE r.id = ? "
                        "AND r.head = 1 AND n.flow = r.flow AND n.business_key = r.business_key AND n.id > r.id "
                        "AND n.status = 'pending' AND n.head = 1)"
                    ),
                    (item_id,),
                )
                cur.execute(self._sql("UPDATE dead_letters SET replayed_at = ? WHERE id = ?"), (now, letter_id))
            return len(rows)

    # -- daemons and replays --------------------------------------------------------------------
    def register_daemon(self, name: str, spec_version: str, *, gone: bool = False) -> None:
        """A daemon says it runs ``spec_version`` (at start, then every little while); ``gone`` when it stops."""
        now = self._clock()
        with self._tx() as cur:
            if gone:
                cur.execute(self._sql("DELETE FROM daemons WHERE name = ?"), (name,))
                return
            cur.execute(
                self._sql(
                    "INSERT INTO daemons (name, spec_version, started_at, seen_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET spec_version = excluded.spec_version, seen_at = excluded.seen_at"
                ),
                (name, spec_version, now, now),
            )

    def daemons(self, seen_within: float) -> list[DaemonRecord]:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT name, spec_version, started_at, seen_at FROM daemons WHERE seen_at >= ? ORDER BY name"
                ),
                (self._clock() - seen_within,),
            )
            return [DaemonRecord(r[0], r[1], float(r[2]), float(r[3])) for r in cur.fetchall()]

    def record_replay(self, replay: ReplayRecord) -> int:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO replays (at, flow, letters, replayed, skipped, forced, spec_version, by) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
                ),
                (
                    self._clock(),
                    replay.flow,
                    json.dumps(list(replay.letters)),
                    replay.replayed,
                    replay.skipped,
                    int(replay.forced),
                    replay.spec_version,
                    replay.by,
                ),
            )
            return int(cur.fetchone()[0])

    def replays(self, limit: int = 20) -> list[ReplayRecord]:
        with self._tx() as cur:
            cur.execute(
                self._sql(
                    "SELECT id, at, flow, letters, replayed, skipped, forced, spec_version, by FROM replays "
                    "ORDER BY id DESC LIMIT ?"
                ),
                (limit,),
            )
            return [
                ReplayRecord(
                    flow=r[2],
                    letters=tuple(json.loads(r[3])),
                    replayed=int(r[4]),
                    skipped=int(r[5]),
                    forced=bool(r[6]),
                    spec_version=r[7],
                    by=r[8],
                    id=int(r[0]),
                    at=float(r[1]),
                )
                for r in cur.fetchall()
            ]

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, flow: str, kind: str) -> int:
        with self._tx() as cur:
            cur.execute(
                self._sql("INSERT INTO runs (flow, kind, started_at, status) VALUES (?, ?, ?, 'running') RETURNING id"),
                (flow, kind, self._clock()),
            )
            return int(cur.fetchone()[0])

    def finish_run(self, run_id: int, status: str, counts: dict[str, int]) -> None:
        with self._tx() as cur:
            cur.execute(
                self._sql("UPDATE runs SET finished_at = ?, status = ?, counts = ? WHERE id = ?"),
                (self._clock(), status, json.dumps(counts, sort_keys=True), run_id),
            )

    def runs(self, flow: str | None = None, limit: int = 20) -> list[RunRecord]:
        sql = (
            "SELECT id, flow, kind, started_at, finished_at, status, counts FROM runs"
            + (" WHERE flow = ?" if flow else "")
            + " ORDER BY id DESC LIMIT ?"
        )
        with self._tx() as cur:
            cur.execute(self._sql(sql), (flow, limit) if flow else (limit,))
            return [
                RunRecord(
                    id=int(r[0]),
                    flow=r[1],
                    kind=r[2],
                    started_at=float(r[3]),
                    finished_at=float(r[4]) if r[4] is not None else None,
                    status=r[5],
                    counts=json.loads(r[6]),
                )
                for r in cur.fetchall()
            ]

    # -- retention -----------------------------------------------------------------------------
    def prune(self, before: float, *, chunk: int = 5000) -> dict[str, int]:
        """Delete finished work older than ``before``, a chunk per transaction (writers never wait long)."""
        statements = {
            # a ledger entry goes with its delivered item; one whose item is still open or dead stays
            "ledger": "DELETE FROM ledger WHERE rowid IN (SELECT l.rowid FROM ledger l WHERE l.delivered_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.flow = l.flow AND i.key = l.key "
            "AND i.status IN ('pending', 'inflight', 'dead')) LIMIT ?)",
            "inbox": "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox WHERE status = 'done' AND created_at < ? "
            "LIMIT ?)",
            "dead_letters": "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters "
            "WHERE replayed_at < ? LIMIT ?)",
            "runs": "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE finished_at < ? LIMIT ?)",
            # what a business key last had: forgotten with the rest, so a change older than the retention
            # arriving after that is taken as new (as a message id seen again after it is)
            "key_state": "DELETE FROM key_state WHERE (flow, business_key, target) IN (SELECT flow, business_key, "
            "target FROM key_state WHERE updated_at < ? LIMIT ?)",
        }
        if self.dialect.name == "postgres":  # no rowid there: the ledger's key columns name a row
            statements["ledger"] = (
                "DELETE FROM ledger WHERE (flow, key, target) IN (SELECT l.flow, l.key, l.target FROM ledger l "
                "WHERE l.delivered_at < ? AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.flow = l.flow "
                "AND i.key = l.key AND i.status IN ('pending', 'inflight', 'dead')) LIMIT ?)"
            )
        counts = dict.fromkeys(statements, 0)
        for what, sql in statements.items():
            while True:
                with self._tx() as cur:
                    cur.execute(self._sql(sql), (before, chunk))
                    deleted = max(int(cur.rowcount), 0)
                counts[what] += deleted
                if deleted < chunk:
                    break
        return counts
