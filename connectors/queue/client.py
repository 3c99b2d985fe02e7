"""The queue connector's connection: publish, and consume with ack-after-store, over the queue's own table."""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from connectors.queue import QueueOptions
from connectors.queue.store import QueueMessage, QueueStore, open_queue
from engine.connector import (
    ConnectContext,
    Consumer,
    Message,
    MessageHandler,
    Pruner,
    Target,
    parse_duration,
    system_log,
)
from engine.errors import SeamlineError, TerminalError, TransientError
from engine.state import default_state_url

__all__ = ["QueueConnection"]

T = TypeVar("T")


class QueueConnection(Target, Consumer, Pruner):
    """One system's queues in one database; every call to it runs on a thread so the loop never waits on a lock."""

    def __init__(self, options: QueueOptions, context: ConnectContext) -> None:
        self.options = options
        self.system = context.system
        self.log = system_log("queue", self.system)
        # the daemon's own store when the spec names none: the queue is then durable exactly as the inbox is
        self.url = options.url or context.state_url or default_state_url(context.client)
        if options.url:
            context.mask(options.url)
        self._store: QueueStore | None = None
        self._opening = asyncio.Lock()
        self.lease = parse_duration(options.lease)
        self.poll = parse_duration(options.poll)
        self.redelivery = parse_duration(options.redelivery_delay)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.to_thread(store.close)

    # -- the Connection contract --------------------------------------------------------------
    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        """Publish ``record`` to queue ``entity``; the idempotency key is the message id."""
        self._known(entity)
        try:
            body = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise TerminalError(f"{self.system}: queue '{entity}': the record is not JSON: {exc}") from exc
        # Already queued or just added: either way the message is there once, and the receipt says so alike.
        await self._call(lambda store: store.publish(entity, body, idempotency_key, {"key": str(key)}))
        return f"queued {idempotency_key}"

    async def consume(self, queue: str, handler: MessageHandler) -> None:
        """Hand each message to ``handler``; ack after it returned, give it back if it raised. Runs until cancelled."""
        self._known(queue)
        while True:
            try:
                batch = await self._call(lambda store: store.receive(queue, self.options.prefetch, self.lease))
            except TransientError as exc:
                self.log.warning("%s", exc)
                await asyncio.sleep(self.poll * 10)
                continue
            if not batch:
                await asyncio.sleep(self.poll)
                continue
            await self._deliver(queue, batch, handler)

    async def _deliver(self, queue: str, batch: list[QueueMessage], handler: MessageHandler) -> None:
        for position, message in enumerate(batch):
            try:
                await handler(Message(message.body, message.message_id, message.headers))
            except asyncio.CancelledError:
                # Stopping: what was not handed over comes back at once, not after its lease.
                rest = [m.id for m in batch[position:]]
                await asyncio.shield(self._call(functools.partial(_give_back, message_ids=rest)))
                raise
            except Exception as exc:  # the inbox could not take it: give it back, go on with the next
                self.log.warning(
                    "%s: queue '%s': message %s given back (%s)", self.system, queue, message.message_id, exc
                )
                await self._call(functools.partial(_nack, message_id=message.id, delay=self.redelivery))
                continue
            await self._call(functools.partial(_ack, message_id=message.id))

    # -- retention ------------------------------------------------------------------------------
    async def prune(self, before: float) -> dict[str, int]:
        """Delete this system's messages acked before ``before`` (epoch seconds); how many, as ``{"queue": n}``.

        The runtime calls it with the cutoff it prunes its state store with (the spec's ``state.retention``):
        a message id is recognised when published again as long as a delivered inbox key is.
        """
        queues = list(self.options.queues)
        return {"queue": await self._call(lambda store: store.prune(before, queues=queues))}

    # -- plumbing -------------------------------------------------------------------------------
    def _known(self, queue: str) -> None:
        if queue not in self.options.queues:
            raise TerminalError(
                f"{self.system}: queue '{queue}' is not one of this system's queues ({', '.join(self.options.queues)})"
            )

    async def _call(self, work: Callable[[QueueStore], T]) -> T:
        store = await self._open()
        try:
            return await asyncio.to_thread(work, store)
        except sqlite3.OperationalError as exc:  # locked or busy: another writer holds the file
            raise TransientError(f"{self.system}: the queue store is busy ({exc}); trying again later") from exc
        except sqlite3.Error as exc:
            raise TerminalError(f"{self.system}: the queue store refused the operation: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise TransientError(f"{self.system}: the queue store is unreachable: {exc}") from exc
            raise

    async def _open(self) -> QueueStore:
        if self._store is not None:
            return self._store
        async with self._opening:
            if self._store is None:
                try:
                    self._store = await asyncio.to_thread(open_queue, self.url, lock_timeout=self._lock_timeout())
                except SeamlineError:
                    raise
                except Exception as exc:
                    raise TransientError(f"{self.system}: cannot open the queue store: {exc}") from exc
        return self._store

    def _lock_timeout(self) -> float:
        return parse_duration(self.options.lock_timeout)


def _give_back(store: QueueStore, *, message_ids: list[int]) -> None:
    for message_id in message_ids:
        store.nack(message_id, 0.0)


def _nack(store: QueueStore, *, message_id: int, delay: float) -> None:
    store.nack(message_id, delay)


def _ack(store: QueueStore, *, message_id: int) -> None:
    store.ack([message_id])
