"""The one way the runtime reaches its state store: an async inbox that owns the store's thread.

Triggers, workers, the daemon's housekeeping and the operator commands run on the event loop; the store
(SQLite or PostgreSQL) blocks: a SQLite write may wait up to its lock timeout for another process, a
PostgreSQL statement is a network round trip. So nothing on the loop calls the store: every call is
awaited here and runs on the store's own thread, one at a time (the store's connection is used by that
thread only). A store that stalls then stalls only the awaits that need it: ``/healthz`` answers, and a
webhook can give up on a bounded wait and answer 503.

Group commit: the writes that arrive in one tick of the loop (:meth:`Inbox.put` of many webhooks,
:meth:`Inbox.finish` of many workers) share one transaction. Under load that pays a lock, a BEGIN and a
commit (a WAL write, an fsync with durability full) once per tick instead of once per record. Nothing is
acknowledged early: a caller's await returns only after the transaction holding its write committed. A
tick adds no waiting: the flush runs as soon as the tasks that were ready in the same tick had their turn,
and while one batch commits the next one gathers.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from engine.state import Delivered, Finished, InboxItem, NewItem, Remember, StateStore

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox:
    """A state store behind awaitable calls on its own thread, with the writes of one tick committed together."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._new: list[tuple[Sequence[NewItem], asyncio.Future[list[bool]]]] = []
        self._done: list[tuple[Finished, asyncio.Future[int]]] = []
        self._scheduled = False
        self._flushing = False
        # One thread owns the store's connection: SQLite runs without the GIL there, beside the loop.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seamline-store")
        self.transactions = 0  # for tests and metrics: how many commits the batches took

    # -- writes gathered per tick ----------------------------------------------------------------
    async def put(self, items: Sequence[NewItem]) -> int:
        """Store ``items`` durably; returns how many were new, once they are committed."""
        return sum(await self.put_each(items))

    async def put_each(self, items: Sequence[NewItem]) -> list[bool]:
        """Store ``items`` durably; returns, per item, whether it was new (a known dedupe id is skipped)."""
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._new.append((items, future))
        self._schedule()
        return await future

    async def finish(self, finished: Finished) -> None:
        """Mark the item done with its outcome (its last delivery and key state with it), once committed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._done.append((finished, future))
        self._schedule()
        await future

    # -- every other call, on the store's thread ---------------------------------------------------
    async def run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Any store call, on the store's thread (so the loop never waits on the store's lock)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(call, *args, **kwargs))

    async def claim(
        self, worker: str, limit: int, lease: float, flows: Sequence[str] | None, *, text_budget: int | None = None
    ) -> list[InboxItem]:
        return await self.run(self.store.claim, worker, limit, lease, flows, text_budget=text_budget)

    async def retry(self, item_id: int, delay: float, error: str, *, count_attempt: bool = True) -> None:
        await self.run(self.store.retry_later, item_id, delay, error, count_attempt=count_attempt)

    async def dead(
        self, item_id: int, reason: str, *, kind: str, target: str = "", spec_version: str = "", trace_id: str = ""
    ) -> int:
        return await self.run(
            self.store.dead_letter,
            item_id,
            reason,
            error_kind=kind,
            target=target,
            spec_version=spec_version,
            trace_id=trace_id,
        )

    async def release(self, item_ids: Sequence[int]) -> None:
        if item_ids:
            await self.run(self.store.release, list(item_ids))

    async def record(self, entry: Delivered, remember: Remember | None = None) -> None:
        """One target accepted the record: into the ledger at once (a later target's failure never resends it)."""
        await self.run(
            self.store.record_delivery,
            entry.flow,
            entry.key,
            entry.target,
            entry.response,
            remember=remember,
            once_only=entry.once_only,
            request=entry.request,
        )

    async def reject(self, item: NewItem, reason: str, *, trace_id: str = "") -> int:
        """A record that cannot be read, straight into dead letters (kind "rejected")."""
        return await self.run(self.store.reject, item, reason, trace_id=trace_id)

    def close(self) -> None:
        """Wait for the batch in flight, then stop the thread (the store itself is closed by its owner)."""
        self._thread.shutdown(wait=True)

    # -- the group commit --------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        if self._flushing:
            return  # the batch in flight picks these up when it ends: batches grow with the load
        new, done = self._new, self._done
        self._new, self._done = [], []
        self._scheduled = False
        if not new and not done:
            return
        self._flushing = True
        loop = asyncio.get_running_loop()
        batch = loop.run_in_executor(
            self._thread,
            self.store.commit_batch,
            [item for items, _ in new for item in items],
            [finished for finished, _ in done],
        )
        batch.add_done_callback(lambda outcome: self._finish(outcome, new, done))

    def _finish(
        self,
        outcome: asyncio.Future[list[bool]],
        new: list[tuple[Sequence[NewItem], asyncio.Future[list[bool]]]],
        done: list[tuple[Finished, asyncio.Future[int]]],
    ) -> None:
        self._flushing = False
        futures: list[asyncio.Future[Any]] = [future for _, future in new] + [future for _, future in done]
        exc = outcome.exception()
        if exc is not None:  # every waiter learns the batch failed; none was acknowledged
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.transactions += 1
            added = outcome.result()
            position = 0
            for items, future in new:
                if not future.done():
                    future.set_result(added[position : position + len(items)])
                position += len(items)
            for _, future in done:
                if not future.done():
                    future.set_result(0)
        if self._new or self._done:
            self._start_flush()
