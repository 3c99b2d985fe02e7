"""The queue connector's conformance harness: a SQLite queue file in a temporary directory.

Failures are real ones for an embedded queue: another writer holding the file's lock longer than
``lock_timeout`` (transient: the store is busy), and a record that cannot be serialised (terminal).
"Stopping" the system holds that lock until ``start``. Applied = distinct message ids in the queue.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from connectors.queue import CONNECTOR as QUEUE
from connectors.queue.store import open_queue
from engine.conformance import write_through
from engine.connector import ConnectContext, Connection, SystemOptions

KIND = QUEUE


@dataclass
class QueueHarness:
    path: Path
    kind = KIND
    entity: str = "orders"
    queue: str = "orders"
    _lock: sqlite3.Connection | None = None
    _poison: set[int] = field(default_factory=set)

    def options(self) -> SystemOptions:
        return QUEUE.options.model_validate(
            {"connector": "queue", "url": f"sqlite:///{self.path}", "queues": ["orders"], "lock_timeout": "200ms"}
        )

    def connect(self) -> Connection:
        return QUEUE.open(self.options(), ConnectContext(system="bus", client="conformance"))

    def record(self, n: int) -> Any:
        if n in self._poison:
            self._poison.discard(n)
            return {"number": f"SO-{n:04d}", "total": float("inf")}  # JSON has no infinity
        return {"number": f"SO-{n:04d}", "lines": [{"sku": "A", "qty": n}]}

    def applied(self) -> int:
        queue = open_queue(f"sqlite:///{self.path}")
        try:
            return sum(queue.depth(self.entity).values())
        finally:
            queue.close()

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

    # -- consume: producers put messages on the queue as a write does ----------------------------
    def publish(self, numbers: Iterable[int]) -> None:
        write_through(self, numbers)

    def which(self, data: Any) -> int | None:
        number = data.get("number", "") if isinstance(data, dict) else ""
        return int(number.removeprefix("SO-")) if number.startswith("SO-") else None


@contextmanager
def harness() -> Iterator[QueueHarness]:
    with tempfile.TemporaryDirectory(prefix="queue-conformance-") as tmp:
        path = Path(tmp) / "queue.db"
        open_queue(f"sqlite:///{path}").close()  # the table exists before anything holds the lock
        running = QueueHarness(path)
        try:
            yield running
        finally:
            running.start()
