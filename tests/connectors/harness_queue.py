"""The queue connector's conformance harness: a SQLite queue file in a temporary directory.

Failures are real ones for an embedded queue: another writer holding the file's lock longer than
``lock_timeout`` (transient: the store is busy), and a record that cannot be serialised (terminal).
"Stopping" the system holds that lock until ``start``. Applied = distinct message ids in the queue.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from connectors.queue import CONNECTOR as QUEUE
from engine.connector import ConnectContext, Connection
from engine.state import open_store


@dataclass
class QueueHarness:
    path: Path
    entity: str = "orders"
    _lock: sqlite3.Connection | None = None
    _poison: set[int] = field(default_factory=set)

    def connect(self) -> Connection:
        options = QUEUE.options.model_validate(
            {"connector": "queue", "url": f"sqlite:///{self.path}", "queues": ["orders"], "lock_timeout": "200ms"}
        )
        assert QUEUE.connect is not None
        return QUEUE.connect(options, ConnectContext(system="bus", client="conformance"))

    def record(self, n: int) -> Any:
        if n in self._poison:
            self._poison.discard(n)
            return {"number": f"SO-{n:04d}", "total": float("inf")}  # JSON has no infinity
        return {"number": f"SO-{n:04d}", "lines": [{"sku": "A", "qty": n}]}

    def applied(self) -> int:
        store = open_store(f"sqlite:///{self.path}")
        try:
            return sum(store.queue_depth(self.entity).values())
        finally:
            store.close()

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        if kind == "transient":
            self.stop()
        else:
            self.start()
            self._poison.add(1)

    def stop(self) -> None:
        if self._lock is None:
            self._lock = sqlite3.connect(self.path, isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")

    def start(self) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None


@contextmanager
def harness() -> Iterator[QueueHarness]:
    with tempfile.TemporaryDirectory(prefix="queue-conformance-") as tmp:
        path = Path(tmp) / "queue.db"
        open_store(f"sqlite:///{path}").close()  # the tables exist before anything holds the lock
        running = QueueHarness(path)
        try:
            yield running
        finally:
            running.start()
