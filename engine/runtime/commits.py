"""Group commit: the inbox writes of one event-loop tick share one transaction.

Under load, many webhooks arrive and many workers finish in the same tick. One transaction each
costs a lock, a BEGIN and a commit (WAL pages written) per event; gathered, the cost is paid once per
tick. Nothing is acknowledged early: a webhook is answered, and a worker moves on, only after the
transaction holding its write committed. A tick adds no waiting: the flush runs as soon as the tasks
that were ready in the same tick have had their turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from engine.state import Finished, NewItem, StateStore

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit:
    """Gathers ``enqueue`` and ``complete`` calls made in one tick and commits them together."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._new: list[tuple[Sequence[NewItem], asyncio.Future[int]]] = []
        self._done: list[tuple[Finished, asyncio.Future[int]]] = []
        self._scheduled = False
        self._flushing = False
        # One thread owns the store's connection work: SQLite runs without the GIL there, beside the loop.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seamline-store")
        self.transactions = 0  # for tests and metrics: how many commits the batches took

    async def enqueue(self, items: Sequence[NewItem]) -> int:
        """Store ``items``; returns how many were new, once they are committed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._new.append((items, future))
        self._schedule()
        return await future

    async def finish(self, finished: Finished) -> None:
        """Mark the item done with its outcome (its last delivery and key state with it), once committed."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._done.append((finished, future))
        self._schedule()
        await future

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """Any other store call, on the store's thread (so the loop never waits on the store's lock)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

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
        new: list[tuple[Sequence[NewItem], asyncio.Future[int]]],
        done: list[tuple[Finished, asyncio.Future[int]]],
    ) -> None:
        self._flushing = False
        futures = [future for _, future in new] + [future for _, future in done]
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
                    future.set_result(sum(added[position : position + len(items)]))
                position += len(items)
            for _, future in done:
                if not future.done():
                    future.set_result(0)
        if self._new or self._done:
            self._start_flush()
