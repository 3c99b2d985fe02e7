"""State: inbox, idempotency ledger, cursors, dead letters and run history, behind one contract.

``open_store(url)`` picks the implementation from the URL:

- ``sqlite:///path/to/client.db`` (the embedded default: WAL, one file per client),
  ``sqlite:///:memory:`` for throwaway runs;
- ``postgresql://user@host:5432/db?schema=acme`` for replicas sharing state; each client lives in
  its own schema, created on first use.

The store knows no system. A connector that keeps tables of its own (the embedded queue) opens the
same database with ``open_database(url)``: a connection made as the store makes its own, transactions,
and the lock schema changes take; the tables and their migrations are the connector's.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from engine.errors import UsageError
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
    StateStore,
    TimelineEvent,
    payload_text,
)
from engine.state.sql import Dialect, SqlStore

__all__ = [
    "DaemonRecord",
    "DeadLetter",
    "Delivered",
    "Finished",
    "InboxItem",
    "NewItem",
    "RecordChange",
    "Remember",
    "ReplayRecord",
    "RunRecord",
    "SqlDatabase",
    "StateStore",
    "TimelineEvent",
    "default_state_url",
    "hold_sqlite_owner",
    "open_database",
    "open_store",
    "payload_text",
    "state_exists",
    "stored_version",
]

SQLITE = Dialect("sqlite", "INTEGER PRIMARY KEY AUTOINCREMENT", "REAL", "?", "")
POSTGRES = Dialect(
    "postgres", "BIGSERIAL PRIMARY KEY", "DOUBLE PRECISION", "%s", " FOR UPDATE OF i SKIP LOCKED", blob="BYTEA"
)
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def default_state_url(
    client: str, spec_file: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The embedded default: one SQLite file per client, found from the spec, never from the working directory.

    ``$SEAMLINE_HOME/<client>.db`` when SEAMLINE_HOME is set (all clients' state in one place), else
    ``.seamline/<client>.db`` beside the client's spec file: every command run for that spec, from any
    directory, finds the same file.
    """
    home = (environ if environ is not None else os.environ).get("SEAMLINE_HOME")
    if home:
        base = Path(home)
    elif spec_file is not None:
        base = Path(spec_file).resolve().parent / ".seamline"
    else:
        base = Path(".seamline")
    return f"sqlite:///{base / (client + '.db')}"


def stored_version(url: str) -> int | None:
    """The schema version of the store at ``url`` as it is, read without migrating it; None when there is none."""
    if not state_exists(url):
        return None
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        path = _sqlite_path(url)
        if path == ":memory:":
            return None
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT version FROM seamline_schema").fetchone()
        except sqlite3.OperationalError:
            return 0  # a file without seamline's tables
        finally:
            conn.close()
        return int(row[0]) if row else 0
    import psycopg

    dsn, schema = _postgres_dsn(url)
    with psycopg.connect(dsn) as pg:
        found = pg.execute(f'SELECT version FROM "{schema}".seamline_schema').fetchone()
    return int(found[0]) if found else 0


def state_exists(url: str) -> bool:
    """Whether a store is at ``url`` already, looked at without creating one (read-only commands ask this)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        path = _sqlite_path(url)
        return path == ":memory:" or Path(path).is_file()
    if scheme in ("postgresql", "postgres"):
        import psycopg

        dsn, schema = _postgres_dsn(url)
        try:
            with psycopg.connect(dsn) as conn:
                row = conn.execute(
                    "SELECT 1 FROM information_schema.tables "
                    "WHERE table_schema = %s AND table_name = 'seamline_schema'",
                    (schema,),
                ).fetchone()
        except psycopg.OperationalError as exc:
            raise UsageError(f"cannot connect to the state database {_mask(url)}: {str(exc).strip()}") from None
        return row is not None
    return True


def open_store(
    url: str,
    *,
    clock: Callable[[], float] = time.time,
    lock_timeout: float = 30.0,
    durability: Literal["full", "relaxed"] = "full",
) -> StateStore:
    """The store ``url`` names; ``clock`` is injectable so tests can move time (leases, backoff).

    ``lock_timeout``: how long a SQLite write waits for another writer before it fails.
    ``durability``: "full", a commit is on disk when it returns (SQLite ``synchronous=FULL``); "relaxed", it
    survives a crash of the process but not of the machine (``synchronous=NORMAL``; the spec's
    ``state.durability``).
    """
    shown, dialect, connect, begin = _sql_parts(url, lock_timeout, durability)
    return SqlStore(shown, dialect, connect, clock=clock, begin=begin)


class SqlDatabase:
    """The database a state URL names, for a connector that keeps tables of its own there (the embedded queue).

    It knows no table. It opens one connection as the store opens its own (SQLite: WAL, the durability asked
    for, a write waits ``lock_timeout`` for another writer; PostgreSQL: the client's schema, created on first
    use, on the search path), runs one transaction at a time on it, and takes the lock every schema change in
    that database is made under (the store's migrations take the same one): a connector's migrations and the
    store's never run at once.
    """

    def __init__(
        self, url: str, dialect: Dialect, connect: Callable[[], Any], begin: Callable[[Any], None] | None = None
    ) -> None:
        self.url = url  # passwords masked
        self.dialect = dialect
        self._begin = begin
        self._conn = connect()
        self._lock = threading.RLock()

    def sql(self, text: str) -> str:
        """``text`` with its ``?`` placeholders written as the dialect writes them."""
        return text.replace("?", self.dialect.placeholder) if self.dialect.placeholder != "?" else text

    def in_(self, column: str, values: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
        """``column IN (...)`` for ``values`` and its parameters (PostgreSQL: ``= ANY(%s)``, one text whatever the
        count, so psycopg prepares it once)."""
        if self.dialect.name == "postgres":
            return f"{column} = ANY(%s)", (list(values),)
        return f"{column} IN ({', '.join('?' for _ in values)})", tuple(values)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside a transaction, committed when the block ends and rolled back when it raises.

        SQLite: BEGIN IMMEDIATE, the write lock taken up front (waiting up to ``lock_timeout`` for it).
        """
        with self._lock:
            cur = self._conn.cursor()
            try:
                if self._begin is not None:
                    self._begin(cur)
                yield cur
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def lock_schema(self, cur: Any) -> None:
        """Hold, until the transaction ends, the lock schema changes in this database are made under.

        PostgreSQL: the advisory lock the store's migrations take (SqlStore._lock_migrations), per schema;
        SQLite: nothing more, BEGIN IMMEDIATE already serialises every writer of the file.
        """
        if self.dialect.name == "postgres":
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('seamline-migrate:' || current_schema(), 0))")

    def has_table(self, cur: Any, name: str) -> bool:
        """Whether this database (PostgreSQL: the URL's schema) has a table ``name``."""
        if self.dialect.name == "postgres":
            cur.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = %s",
                (name,),
            )
        else:
            cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cur.fetchone() is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_database(
    url: str, *, lock_timeout: float = 30.0, durability: Literal["full", "relaxed"] = "full"
) -> SqlDatabase:
    """The database the state URL ``url`` names, opened as :func:`open_store` opens it, without the store's tables.

    For a connector that keeps tables of its own beside the store's (it creates and migrates them itself).
    """
    shown, dialect, connect, begin = _sql_parts(url, lock_timeout, durability)
    return SqlDatabase(shown, dialect, connect, begin)


def _sql_parts(
    url: str, lock_timeout: float, durability: str
) -> tuple[str, Dialect, Callable[[], Any], Callable[[Any], None] | None]:
    """(the URL as shown, the dialect, how to connect, how to begin a transaction) for a state URL."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        begin = functools.partial(_begin_immediate, lock_timeout)
        return url, SQLITE, _sqlite_connect(url, lock_timeout, durability), begin
    if scheme in ("postgresql", "postgres"):
        return _mask(url), POSTGRES, _postgres_connect(url), None
    raise UsageError(f"state URL '{_mask(url)}' has an unknown scheme; use sqlite:///path.db or postgresql://...")


def _sqlite_path(url: str) -> str:
    path = url.split("sqlite://", 1)[1]
    return path[1:] if path.startswith("/") else path  # sqlite:///rel/x.db -> rel/x.db; sqlite:////abs -> /abs


def hold_sqlite_owner(url: str, wait: float, *, poll: float = 0.1) -> int | None:
    """Take ``<state file>.lock`` for this daemon; the open descriptor, or None for a URL that needs none.

    A daemon on a SQLite file gives back, at start, every item left in flight: only right when no
    process of an earlier run still delivers. The lock is held as long as any process holds the
    descriptor (pass it to the daemon's delivery processes), and the kernel drops it when they are
    gone, however they ended. Waits up to ``wait`` seconds for an earlier group to finish, then says who
    holds it.
    """
    if not url.lower().startswith("sqlite:") or _sqlite_path(url) == ":memory:":
        return None
    path = Path(_sqlite_path(url) + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    until = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= until:
                holder = path.read_text(encoding="utf-8").strip() or "unknown"
                os.close(fd)
                raise UsageError(
                    f"the state file {_sqlite_path(url)} is in use by another seamline daemon ({holder}); "
                    "stop it first (two daemons on one SQLite file would deliver the same records twice), "
                    "or give this one its own --state"
                ) from None
            time.sleep(poll)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    return fd


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _sqlite_connect(url: str, lock_timeout: float = 30.0, durability: str = "full") -> Callable[[], sqlite3.Connection]:
    path = _sqlite_path(url)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    synchronous = "FULL" if durability == "full" else "NORMAL"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=lock_timeout)
        conn.execute("PRAGMA journal_mode=WAL")
        # The daemon acknowledges upstream only after a commit. FULL in WAL mode syncs the log at every
        # commit: what was acknowledged survives a power cut. NORMAL syncs only at checkpoints: it survives
        # any crash of the process (kill -9), but a power cut can lose the last commits.
        conn.execute(f"PRAGMA synchronous={synchronous}")
        # Every statement runs inside BEGIN IMMEDIATE (SqlStore._tx, SqlDatabase.transaction), and only that
        # can find the write lock taken; _begin_immediate waits for it in short steps. SQLite's own busy
        # handler sleeps 1 ms, then 2, 5, 10 ... while a transaction here holds the lock for ~0.1-0.3 ms:
        # with several processes on one file (run --processes) it left each waiting most of the time.
        conn.execute("PRAGMA busy_timeout=0")
        return conn

    return connect


def _begin_immediate(lock_timeout: float, cur: sqlite3.Cursor) -> None:
    """BEGIN IMMEDIATE, waiting up to ``lock_timeout`` seconds for another connection's write to end."""
    pause, deadline = 0.00005, 0.0
    while True:
        try:
            cur.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            now = time.monotonic()
            if not deadline:
                deadline = now + lock_timeout
            elif now >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.001)


def _postgres_dsn(url: str) -> tuple[str, str]:
    """(the libpq DSN, the client's schema) of a postgresql:// state URL."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    schema = query.pop("schema", ["public"])[0]
    if not _SCHEMA_NAME.match(schema):
        raise UsageError(f"schema '{schema}' in the state URL is not a plain lower-case SQL name")
    rest = "&".join(f"{k}={v}" for k, values in query.items() for v in values)
    return urlunsplit(parts._replace(scheme="postgresql", query=rest)), schema


def _postgres_connect(url: str) -> Callable[[], Any]:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency; this guards odd installs
        raise UsageError("PostgreSQL state needs psycopg: pip install 'psycopg[binary]'") from None
    dsn, schema = _postgres_dsn(url)

    def connect() -> psycopg.Connection[tuple[object, ...]]:
        try:
            conn = psycopg.connect(dsn, autocommit=False)
        except psycopg.OperationalError as exc:
            raise UsageError(f"cannot connect to the state database {_mask(url)}: {str(exc).strip()}") from None
        with conn.cursor() as cur:
            # two daemons starting together would both create it: one waits for the other's commit
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"seamline-schema:{schema}",))
            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            cur.execute(f'SET search_path TO "{schema}"')
        conn.commit()
        return conn

    return connect
