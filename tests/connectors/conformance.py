"""One conformance suite every runnable connector passes (run by ``test_conformance.py``).

A connector joins with a module ``harness_<kind>.py`` beside this file whose ``harness()`` is a context manager
that starts the connector's fake (a real server), and knows how to open a connection to it, what to
write, how to ask the fake what it applied, how to inject a transient and a terminal failure, and
how to stop and start the fake on the same address. Each check in :data:`SUITE` then runs against
it. The checks hold the :class:`~engine.connector.Connection` contract:

* ``connect`` opens without sending anything, and ``close`` releases it (twice is harmless);
* a batch of writes is applied once each and every write returns a non-empty receipt;
* writing the batch again with the same idempotency keys changes nothing in the system;
* a failure worth retrying is a ``TransientError``, one that is not is a ``TerminalError``, and no
  library exception escapes;
* the same connection works again after the system restarts (the runtime retries; the connector
  only has to reconnect, not to hold on to dead sockets).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol

import pytest

from engine.connector import Connection
from engine.errors import TerminalError, TransientError

__all__ = ["HARNESSES", "SUITE", "Harness"]

BATCH = 5


class Harness(Protocol):
    """What the suite needs to know about one connector and its fake."""

    entity: str  # a target.write the fake accepts

    def connect(self) -> Connection: ...

    def record(self, n: int) -> Any: ...

    def applied(self) -> int:
        """Writes the system has applied (a deduplicated replay does not count)."""
        ...

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        """Make the next request fail the way ``kind`` says (a 503, a 400 with a reason, …)."""
        ...

    def stop(self) -> None: ...

    def start(self) -> None:
        """Start again on the same address, with the state kept."""
        ...


# -- the harnesses: one module per connector, tests/connectors/harness_<kind>.py ---------------------


def _discover() -> dict[str, Callable[[], AbstractContextManager[Harness]]]:
    """Every ``harness_<kind>.py`` beside this file; each exports ``harness()``, a context manager."""
    found: dict[str, Callable[[], AbstractContextManager[Harness]]] = {}
    for module in sorted(Path(__file__).parent.glob("harness_*.py")):
        kind = module.stem.removeprefix("harness_")
        found[kind] = importlib.import_module(f"tests.connectors.{module.stem}").harness
    return found


HARNESSES = _discover()


# -- the checks -----------------------------------------------------------------------------------


def _key(n: int) -> str:
    return f"conformance:order:{n}#target"


async def _write(connection: Connection, harness: Harness, n: int) -> str:
    return await connection.write(harness.entity, harness.record(n), key=n, mode="upsert", idempotency_key=_key(n))


async def check_connect_and_close(harness: Harness) -> None:
    connection = harness.connect()
    assert harness.applied() == 0
    await connection.close()
    await connection.close()


async def check_write_a_batch(harness: Harness) -> None:
    connection = harness.connect()
    try:
        receipts = [await _write(connection, harness, n) for n in range(BATCH)]
    finally:
        await connection.close()
    assert all(isinstance(r, str) and r for r in receipts), receipts
    assert harness.applied() == BATCH


async def check_rewrite_is_idempotent(harness: Harness) -> None:
    connection = harness.connect()
    try:
        first = await asyncio.gather(*(_write(connection, harness, n) for n in range(BATCH)))
        again = await asyncio.gather(*(_write(connection, harness, n) for n in range(BATCH)))
    finally:
        await connection.close()
    assert again == first
    assert harness.applied() == BATCH


async def check_failures_are_classified(harness: Harness) -> None:
    connection = harness.connect()
    try:
        harness.fail_next("transient")
        with pytest.raises(TransientError):
            await _write(connection, harness, 1)
        harness.fail_next("terminal")
        with pytest.raises(TerminalError) as terminal:
            await _write(connection, harness, 1)
        assert str(terminal.value), "a terminal error says why"
        assert await _write(connection, harness, 1)  # the same record goes through once the system is fine
    finally:
        await connection.close()
    assert harness.applied() == 1


async def check_reconnects_after_a_restart(harness: Harness) -> None:
    connection = harness.connect()
    try:
        await _write(connection, harness, 1)
        harness.stop()
        with pytest.raises(TransientError):
            await _write(connection, harness, 2)
        harness.start()
        await _write(connection, harness, 2)
        await _write(connection, harness, 1)  # delivered before the restart: still not applied twice
    finally:
        await connection.close()
    assert harness.applied() == 2


SUITE: list[Callable[[Harness], Awaitable[None]]] = [
    check_connect_and_close,
    check_write_a_batch,
    check_rewrite_is_idempotent,
    check_failures_are_classified,
    check_reconnects_after_a_restart,
]
