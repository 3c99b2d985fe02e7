"""Throughput over the last hour, per flow: how many records reached their outcome.

What it measures: the growth of each flow's count of finished inbox items (status ``done``: delivered, or skipped
with a reason; dead letters are counted on their own). The store keeps no per-minute history, so the console
samples the counts (``depth_by_flow``, one grouped count on the store's thread) every minute and whenever a page
reads them, and keeps the last hour of samples. The count of the last hour is the count now minus the earliest
sample within the hour. Two consequences, said on the page: right after the daemon started the window is shorter
(since the first sample), and it includes what delivery processes (``--processes``) finished, since they share
the store. The hourly prune deletes old finished items: the minute it runs in may be
undercounted, never negative.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from engine.runtime.operator import Operator

__all__ = ["HOUR", "THROUGHPUT", "FinishedCounts", "Rate", "sampling"]

HOUR = 3600.0
EVERY = 60.0  # seconds between samples: the window's edge is this precise


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` records finished within the last ``window`` seconds (an hour, or less just after a start)."""

    count: int
    window: float


class FinishedCounts:
    """The last hour of samples of each flow's finished-item count."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def add(self, depth: Mapping[str, Mapping[str, int]]) -> None:
        """A sample from the store's ``depth_by_flow()`` (flow -> status -> items)."""
        now = self.clock()
        self._samples.append((now, {flow: int(counts.get("done", 0)) for flow, counts in depth.items()}))
        while self._samples and self._samples[0][0] < now - HOUR:
            self._samples.popleft()

    def rate(self, flow: str, done_now: int) -> Rate | None:
        """Records of ``flow`` finished since the earliest sample of the last hour; None before a first sample a
        second old (nothing to compare with yet). Summed from one sample to the next, so a count that the prune
        lowered costs only that minute's records, never a negative rate."""
        now = self.clock()
        window = [(at, counts.get(flow, 0)) for at, counts in self._samples if at >= now - HOUR]
        if not window or now - window[0][0] < 1.0:
            return None
        points = [count for _at, count in window] + [done_now]
        finished = sum(max(0, after - before) for before, after in itertools.pairwise(points))
        return Rate(finished, now - window[0][0])


THROUGHPUT: web.AppKey[FinishedCounts] = web.AppKey("seamline_console_throughput")


def sampling(operator: Operator) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context that samples while the app is served (stopped with it)."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_sample_forever(operator, app[THROUGHPUT]), name="console-throughput")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return context


async def _sample_forever(operator: Operator, counts: FinishedCounts) -> None:
    while True:
        inbox = operator.inbox
        if inbox is not None:
            # A store that does not answer now only costs this sample: the page says the window it has.
            with contextlib.suppress(Exception):
                counts.add(await inbox.run(inbox.store.depth_by_flow))
        await asyncio.sleep(EVERY)
