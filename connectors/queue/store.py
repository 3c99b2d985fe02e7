"""The embedded queue's own table, its migrations and the SQL that uses it.

The state store knows no system: the queue keeps its messages in the database its URL names (the
daemon's own state database by default: the same SQLite file, the same PostgreSQL schema) but
creates, migrates, reads and prunes its table itself. Of the state package it uses only
:func:`engine.state.open_database`, which opens that database as the store does and knows no table.

Schema changes are numbered steps (:data:`MIGRATIONS`), each applied in its own transaction under the
lock every schema change in the database takes (the store's migrations take the same one), and
recorded in ``seamline_queue_schema``. A step that has shipped is never edited: add a new one.

Before the queue owned it, the table was made by the state store's own migration v4 (it still is, in
a store created now: that step shipped and stays as it was). The queue's first step adopts a table
made so, with its messages, instead of creating it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.errors import TerminalError, TransientError
from engine.state import SqlDatabase, open_database

__all__ = ["MIGRATIONS", "NewerQueue", "QueueMessage", "QueueNotReady", "QueueStore", "open_queue"]

VERSION_TABLE = "seamline_queue_schema"

# The state store's version table and its migration that made queue_messages before the queue owned it
# (engine/state/sql.py, shipped). A store below that step makes the table itself when it is migrated, and would
# fail to if the queue had made it first: see QueueStore.migrate.
STORE_VERSION_TABLE = "seamline_schema"
STORE_MADE_THE_TABLE = 4

# Each step is a list of statements; {id}, {real}, {blob} are filled from the dialect.
MIGRATIONS: list[list[str]] = [
    [
        # v1: the messages. A received message is hidden until available_at (its lease ends); ack sets acked_at,
        # and the row stays so a message id published again is recognised (until it is pruned). The same table,
        # to the letter, as the state store's migration v4 made: IF NOT EXISTS adopts one made so, messages and
        # all (its rows keep their ids, their leases and their acks).
        """CREATE TABLE IF NOT EXISTS queue_messages (
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
        "CREATE INDEX IF NOT EXISTS queue_open ON queue_messages (queue, available_at) WHERE acked_at IS NULL",
    ],
]


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """A message as :meth:`QueueStore.receive` hands it out: hidden from others until acked or its lease ends."""

    id: int
    queue: str
    message_id: str
    body: bytes
    headers: dict[str, Any]
    attempts: int  # deliveries so far, this one included


class NewerQueue(TerminalError):
    """The queue's schema is newer than this seamline's: refused, never used half-understood."""

    def __init__(self, found: int, known: int, url: str) -> None:
        super().__init__(
            f"the queue table in {url} has schema version {found}, newer than this seamline knows ({known}): a "
            "newer seamline wrote it; upgrade seamline to use it"
        )
        self.found, self.known = found, known


class QueueNotReady(TransientError):
    """The database holds a state store not yet migrated as far as making the queue's table: its own migration does.

    The store's migration v4 creates the table; made by the queue first, that step would fail and the store
    could not be opened. The daemon migrates its store before its connections use it: this passes as soon as
    one has (or the store's migration running right now has ended).
    """

    def __init__(self, url: str, store_version: int) -> None:
        super().__init__(
            f"the state store in {url} is at schema version {store_version}; the queue's table comes with its "
            f"migration {STORE_MADE_THE_TABLE}: start seamline on that store once to migrate it"
        )


class QueueStore:
    """The queues kept in one database; migrated when opened. One connection, one transaction at a time."""

    def __init__(self, db: SqlDatabase, *, clock: Callable[[], float] = time.time) -> None:
        """Takes ``db`` over (closed with the queue store, and when migrating it fails)."""
        self.db = db
        self.url = db.url
        self._clock = clock
        try:
            self.migrate()
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self.db.close()

    # -- migrations ----------------------------------------------------------------------------
    def schema_version(self) -> int:
        with self.db.transaction() as cur:
            return self._version(cur)

    def _version(self, cur: Any) -> int:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
        cur.execute(f"SELECT version FROM {VERSION_TABLE}")
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def migrate(self, target: int | None = None) -> int:
        """Apply the steps this database has not had yet, each in its own transaction, under the schema lock.

        Two processes opening the queue together wait for each other (the second finds nothing left to do); a
        state store migrating the same database meanwhile is waited for too. A queue schema newer than this
        seamline knows is refused.
        """
        goal = len(MIGRATIONS) if target is None else target
        dialect = self.db.dialect
        while True:
            with self.db.transaction() as cur:
                self.db.lock_schema(cur)
                version = self._version(cur)
                if version > len(MIGRATIONS):
                    raise NewerQueue(version, len(MIGRATIONS), self.url)
                if version >= goal:
                    return version
                if version == 0:
                    self._check_store(cur)
                for statement in MIGRATIONS[version]:
                    cur.execute(statement.format(id=dialect.id_column, real=dialect.real, blob=dialect.blob))
                if version == 0:
                    cur.execute(self.db.sql(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)"), (1,))
                else:
                    cur.execute(self.db.sql(f"UPDATE {VERSION_TABLE} SET version = ?"), (version + 1,))

    def _check_store(self, cur: Any) -> None:
        """Refuse (for now) to make the table in a database whose state store would make it later itself."""
        if self.db.has_table(cur, "queue_messages") or not self.db.has_table(cur, STORE_VERSION_TABLE):
            return  # adopted, or no store here
        cur.execute(f"SELECT version FROM {STORE_VERSION_TABLE}")
        row = cur.fetchone()
        store_version = int(row[0]) if row else 0
        if store_version < STORE_MADE_THE_TABLE:
            raise QueueNotReady(self.url, store_version)

    # -- messages ------------------------------------------------------------------------------
    def publish(self, queue: str, body: bytes, message_id: str, headers: Mapping[str, Any] | None = None) -> bool:
        """Add a message durably (committed when this returns); False when ``message_id`` was already published to
        ``queue`` (and not pruned since)."""
        now = self._clock()
        with self.db.transaction() as cur:
            cur.execute(
                self.db.sql(
                    "INSERT INTO queue_messages (queue, message_id, body, headers, available_at, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (queue, message_id) DO NOTHING"
                ),
                (queue, message_id, body, json.dumps(dict(headers or {})), now, now),
            )
            return bool(cur.rowcount > 0)

    def receive(self, queue: str, limit: int, lease: float) -> list[QueueMessage]:
        """Up to ``limit`` messages, oldest first, each hidden for ``lease`` seconds unless acked before."""
        now = self._clock()
        with self.db.transaction() as cur:
            cur.execute(
                self.db.sql(
                    "SELECT i.id FROM queue_messages i WHERE i.queue = ? AND i.acked_at IS NULL "
                    f"AND i.available_at <= ? ORDER BY i.available_at, i.id LIMIT ?{self.db.dialect.skip_locked}"
                ),
                (queue, now, limit),
            )
            ids = [int(row[0]) for row in cur.fetchall()]
            if not ids:
                return []
            where, params = self.db.in_("id", ids)
            cur.execute(
                self.db.sql(f"UPDATE queue_messages SET available_at = ?, attempts = attempts + 1 WHERE {where}"),
                (now + lease, *params),
            )
            cur.execute(
                self.db.sql(
                    f"SELECT id, queue, message_id, body, headers, attempts FROM queue_messages WHERE {where} "
                    "ORDER BY id"
                ),
                params,
            )
            return [
                QueueMessage(int(r[0]), r[1], r[2], bytes(r[3]), json.loads(r[4]), int(r[5])) for r in cur.fetchall()
            ]

    def ack(self, message_ids: Sequence[int]) -> None:
        """The received messages ``message_ids`` (each a :attr:`QueueMessage.id`) were handled: never handed out
        again."""
        if not message_ids:
            return
        where, params = self.db.in_("id", message_ids)
        with self.db.transaction() as cur:
            cur.execute(
                self.db.sql(f"UPDATE queue_messages SET acked_at = ? WHERE {where} AND acked_at IS NULL"),
                (self._clock(), *params),
            )

    def nack(self, message_id: int, delay: float) -> None:
        """Give a received message (its :attr:`QueueMessage.id`) back, visible again after ``delay`` seconds."""
        with self.db.transaction() as cur:
            cur.execute(
                self.db.sql("UPDATE queue_messages SET available_at = ? WHERE id = ? AND acked_at IS NULL"),
                (self._clock() + delay, message_id),
            )

    def depth(self, queue: str) -> dict[str, int]:
        """Messages of ``queue``: ready, unacked (received, lease running) and acked (kept until pruned)."""
        now = self._clock()
        with self.db.transaction() as cur:
            cur.execute(
                self.db.sql(
                    "SELECT CASE WHEN acked_at IS NOT NULL THEN 'acked' WHEN available_at <= ? THEN 'ready' "
                    "ELSE 'unacked' END AS state, COUNT(*) FROM queue_messages WHERE queue = ? GROUP BY state"
                ),
                (now, queue),
            )
            counts = dict.fromkeys(("ready", "unacked", "acked"), 0)
            counts.update({row[0]: int(row[1]) for row in cur.fetchall()})
            return counts

    # -- retention -----------------------------------------------------------------------------
    def prune(self, before: float, *, queues: Sequence[str] | None = None, chunk: int = 5000) -> int:
        """Delete messages acked before ``before`` (epoch seconds), of ``queues`` (None: all), a chunk per
        transaction (publishers never wait long); returns how many. Unacked messages are never deleted.

        A message id pruned is forgotten: published again after that, it is taken as new (as the inbox
        forgets a delivered key after the same retention).
        """
        where, params = ("", ()) if queues is None else self.db.in_("queue", list(queues))
        sql = self.db.sql(
            "DELETE FROM queue_messages WHERE id IN (SELECT id FROM queue_messages WHERE acked_at < ?"
            + (f" AND {where}" if where else "")
            + " LIMIT ?)"
        )
        total = 0
        while True:
            with self.db.transaction() as cur:
                cur.execute(sql, (before, *params, chunk))
                deleted = max(int(cur.rowcount), 0)
            total += deleted
            if deleted < chunk:
                return total


def open_queue(
    url: str,
    *,
    clock: Callable[[], float] = time.time,
    lock_timeout: float = 30.0,
    durability: Literal["full", "relaxed"] = "full",
) -> QueueStore:
    """The queues in the database the state URL ``url`` names, their table made or migrated first.

    ``lock_timeout`` and ``durability`` as for :func:`engine.state.open_store` (a publish is on disk when it
    returns, by default).
    """
    return QueueStore(open_database(url, lock_timeout=lock_timeout, durability=durability), clock=clock)
