"""What keeps traffic inside what a system can take: a rate/concurrency budget and a circuit breaker."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from engine.connector import Limits, parse_duration

__all__ = ["Backoff", "Breaker", "Budget"]


Priority = Literal["realtime", "batch"]


class _Slots:
    """A counting semaphore whose real-time waiters are served before its batch waiters.

    A cart asking for a contract price waits for the next free slot ahead of the catalog pass's writes,
    never behind them (and never 503 while batch work merely fills the slots).
    """

    def __init__(self, size: int) -> None:
        self.free = size
        self.held: dict[str, int] = {"realtime": 0, "batch": 0}  # slots in use, by who holds them
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {"realtime": deque(), "batch": deque()}

    def locked(self) -> bool:
        return self.free <= 0

    async def acquire(self, priority: Priority) -> None:
        ahead = (
            self._waiting["realtime"]
            if priority == "realtime"
            else [*self._waiting["realtime"], *self._waiting["batch"]]
        )
        if self.free > 0 and not any(not f.done() for f in ahead):
            self.free -= 1
            self.held[priority] += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.held[priority] += 1
                self.release(priority)  # the slot was handed over as the waiter gave up: pass it on
            raise
        self.held[priority] += 1

    def release(self, priority: Priority) -> None:
        self.held[priority] -= 1
        for queue in (self._waiting["realtime"], self._waiting["batch"]):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # the slot goes straight to the waiter
                    return
        self.free += 1


class Budget:
    """A system's ``limits:``: at most ``concurrency`` calls in flight and ``rate`` calls per second.

    Real-time calls (request triggers) go ahead of batch work on the same budget: they are served first
    when a slot frees, and take a rate token before batch callers waiting for one.
    """

    def __init__(
        self, limits: Limits | None, *, clock: Callable[[], float] = time.monotonic, share: tuple[int, int] = (0, 1)
    ) -> None:
        """``share`` (part, parts): this process's part of a budget that ``parts`` processes split (--processes).

        Each part gets ``concurrency // parts`` slots (the first parts one more while a remainder lasts)
        and ``rate / parts``, so the processes together never exceed the system's ``limits:``.
        """
        part, parts = share
        concurrency = limits.concurrency if limits and limits.concurrency else None
        if concurrency is not None and parts > 1:
            if concurrency < parts:
                raise ValueError(f"a concurrency of {concurrency} cannot be split into {parts} parts")
            concurrency = concurrency // parts + (1 if part < concurrency % parts else 0)
        self.concurrency = concurrency or 16
        self.rate = _rate_per_second(limits.rate) / parts if limits and limits.rate else None
        self.timeout = parse_duration(limits.timeout) if limits and limits.timeout else 30.0
        # the longest Retry-After this system may impose on a record (and every newer change of its key)
        self.max_retry_after = parse_duration(limits.max_retry_after if limits else Limits().max_retry_after)
        self._slots = _Slots(self.concurrency)
        self._clock = clock
        self._tokens = float(self.rate or 0)
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate is not None:
            self._tokens = min(float(self.rate), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def try_now(self) -> bool:
        """Whether a call could start right now, without waiting."""
        self._refill()
        return not self._slots.locked() and (self.rate is None or self._tokens >= 1)

    async def _take_token(self, priority: Priority) -> None:
        if self.rate is None:
            return
        if priority == "realtime":  # not in the batch callers' line: the next token is its
            self._refill()
            while self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1
            return
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)

    def full_of(self, priority: Priority) -> bool:
        """Whether every slot is taken and only by calls of ``priority`` (none will free for a later one soon)."""
        return self._slots.locked() and self._slots.held[priority] >= self.concurrency

    @asynccontextmanager
    async def slot(self, priority: Priority = "batch") -> AsyncIterator[None]:
        await self._slots.acquire(priority)
        try:
            await self._take_token(priority)
            yield
        finally:
            self._slots.release(priority)


def _rate_per_second(text: str) -> float:
    count, unit = text.replace(" ", "").split("/")
    return float(count) / {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass
class Breaker:
    """Per system: after ``threshold`` transient failures in a row, stop calling for ``cooldown`` seconds.

    Then one trial call is let through (half-open): success closes the breaker, failure opens it
    again for twice as long, up to ``max_cooldown``.
    """

    threshold: int = 5
    cooldown: float = 2.0
    max_cooldown: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    current_cooldown: float = field(default=0.0)
    trial_running: bool = False

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        if self.opened_at is None:
            return "closed"
        return "open" if self.clock() - self.opened_at < self.current_cooldown else "half-open"

    def remaining(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.current_cooldown - (self.clock() - self.opened_at))

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial_running:
            self.trial_running = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.current_cooldown = 0.0
        self.trial_running = False

    def abandon(self) -> None:
        """A trial call ended without an answer either way (a bug, a cancel): let the next call be the trial.

        Without this, an unexpected exception during the half-open trial left ``trial_running`` set and the
        breaker refused every call until the daemon restarted.
        """
        self.trial_running = False

    def failure(self) -> None:
        self.failures += 1
        if self.trial_running or (self.opened_at is None and self.failures >= self.threshold):
            self.current_cooldown = min(self.max_cooldown, max(self.cooldown, self.current_cooldown * 2))
            self.opened_at = self.clock()
            self.trial_running = False


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits a random time up to base * 2^n, capped."""

    base: float = 0.5
    cap: float = 300.0
    max_attempts: int = 12

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** max(0, attempts)))
        wait = random.uniform(ceiling / 2, ceiling)
        return max(wait, retry_after or 0.0)
