"""Workers: take items from the inbox and deliver them to every target, once.

For one item: transform (a TransformError is terminal) -> for each target not yet in the ledger:
the target's own transform, the connector's check, the write inside the system's budget and
breaker -> ledger -> and when every target is done, complete. A transient failure gives the item
back with backoff (without counting an attempt while the breaker is open); a terminal one, or a
transient one out of retries, sends it to dead letters with the reason. Either way the worker
goes on with the next item: one bad record never stops a flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.connector import Connection
from engine.errors import TerminalError, TransformError, TransientError
from engine.flow import CompiledClient, CompiledFlow, CompiledTarget
from engine.runtime.commits import GroupCommit
from engine.runtime.guards import Backoff, Breaker, Budget
from engine.runtime.identity import pick
from engine.runtime.logs import JsonLog
from engine.runtime.metrics import Metrics
from engine.state import Delivered, InboxItem, StateStore

__all__ = ["Delivery", "Outcome", "WorkerPool"]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # "done", "skipped", "retry", "dead"
    detail: str = ""


@dataclass
class Delivery:
    """Everything one item needs on its way to its targets."""

    client: CompiledClient
    store: StateStore
    connections: Mapping[str, Connection]
    budgets: Mapping[str, Budget]
    breakers: Mapping[str, Breaker]
    metrics: Metrics
    log: JsonLog
    spec_version: str = ""
    backoff: Backoff = field(default_factory=Backoff)
    dry_run_sink: list[tuple[str, str, Any]] | None = None  # when set, writes are collected, not sent
    commits: GroupCommit = field(init=False)

    def __post_init__(self) -> None:
        self.commits = GroupCommit(self.store)

    async def process(self, item: InboxItem) -> Outcome:
        flow = self.client.flows.get(item.flow)
        if flow is None:
            return self._dead(item, f"flow '{item.flow}' is no longer in the spec", "terminal")
        if flow.flow.discontinued == "ignore" and pick(item.payload, "discontinued") is True:
            await self.commits.complete(item.id)
            self.metrics.inc("skipped", item.flow)
            return Outcome("skipped", "discontinued at the source, and the flow ignores those")
        try:
            shaped = flow.transform(item.payload, record_id=item.key)
        except TransformError as exc:
            return self._dead(item, str(exc), "terminal")
        if shaped is None:
            await self.commits.complete(item.id)
            self.metrics.inc("skipped", item.flow)
            return Outcome("skipped", "the transform gave nothing to write")
        pending = [t for t in flow.targets if t.target is not None and t.label not in item.delivered]
        last: Delivered | None = None
        for position, target in enumerate(pending):
            outcome = await self._deliver(item, flow, target, shaped)
            if isinstance(outcome, Outcome):
                return outcome
            if outcome is None:
                continue  # a dry run: nothing was written, nothing goes into the ledger
            if position < len(pending) - 1:
                # Recorded at once: a later target's failure must never make this one be written twice.
                self.store.record_delivery(outcome.flow, outcome.key, outcome.target, outcome.response)
            else:
                last = outcome  # the last target's entry and the completion share one transaction
        await self.commits.complete(item.id, last)
        self.metrics.observe("latency", item.flow, max(0.0, time.time() - item.created_at))
        return Outcome("done")

    async def _deliver(
        self, item: InboxItem, flow: CompiledFlow, target: CompiledTarget, shaped: Any
    ) -> Outcome | Delivered | None:
        """Write ``shaped`` to one target: the ledger entry to record, None (dry run), or why not (an Outcome)."""
        spec = target.target
        assert spec is not None
        try:
            payload = (
                shaped
                if target.expression is None
                else target.expression.evaluate(shaped, flow.bindings, record_id=item.key)
            )
        except TransformError as exc:
            return self._dead(item, str(exc), "terminal", target.label)
        if payload is None:
            return Delivered(item.flow, item.key, target.label, "skipped: nothing to write")
        key = _key_of(payload, spec.key)
        if self.dry_run_sink is not None:
            self.dry_run_sink.append((item.flow, target.label, payload))
            return None
        connection = self.connections[spec.system]
        breaker = self.breakers[spec.system]
        if not breaker.allow():
            wait = max(breaker.remaining(), 0.2)
            self.store.retry_later(item.id, wait, f"{spec.system}: circuit open", count_attempt=False)
            return Outcome("retry", "breaker open")
        check = getattr(connection, "check", None)
        try:
            if check is not None:
                check(spec.write, payload)  # the target's schema: a bad payload never leaves
            # A connection that gathers concurrent writes into one request (Magento bulk) bounds its own
            # requests; holding a concurrency slot per waiting record would cap every batch at that limit.
            gathers = getattr(connection, "gathers_writes", None)
            gathering = gathers is not None and gathers(spec.write, spec.mode)
            async with contextlib.nullcontext() if gathering else self.budgets[spec.system].slot():
                # asyncio.timeout, not wait_for: the same TimeoutError without a task per write.
                async with asyncio.timeout(self.budgets[spec.system].timeout):
                    receipt = await connection.write(
                        spec.write, payload, key=key, mode=spec.mode, idempotency_key=f"{item.key}#{target.label}"
                    )
        except (TimeoutError, TransientError) as exc:
            breaker.failure()
            reason = f"{target.label}: {exc}" if str(exc) else f"{target.label}: timed out"
            retry_after = getattr(exc, "retry_after", None)
            if item.attempts + 1 >= self.backoff.max_attempts:
                return self._dead(
                    item, f"gave up after {item.attempts + 1} attempts: {reason}", "exhausted", target.label
                )
            self.store.retry_later(item.id, self.backoff.delay(item.attempts, retry_after), reason)
            self.metrics.inc("failed", item.flow)
            self.metrics.inc("retried", item.flow)
            self.log.warning("retry", flow=item.flow, key=item.key, target=target.label, reason=reason)
            return Outcome("retry", reason)
        except TerminalError as exc:
            breaker.success()  # the system answered: it is up, the record is what is wrong
            return self._dead(item, f"{target.label}: {exc}", "terminal", target.label)
        breaker.success()
        self.metrics.inc("written", item.flow)
        return Delivered(item.flow, item.key, target.label, receipt)

    def _dead(self, item: InboxItem, reason: str, kind: str, target: str = "") -> Outcome:
        self.store.dead_letter(item.id, reason, error_kind=kind, target=target, spec_version=self.spec_version)
        self.metrics.inc("failed", item.flow)
        self.metrics.inc("dead_lettered", item.flow)
        self.log.error("dead_letter", flow=item.flow, key=item.key, target=target, kind=kind, reason=reason)
        return Outcome("dead", reason)


def _key_of(payload: Any, key: str | list[str] | None) -> Any:
    if key is None:
        return None
    if isinstance(key, str):
        return pick(payload, key)
    return [pick(payload, k) for k in key]


class WorkerPool:
    """``size`` workers fed by one claimer; they stop taking work when ``stop()`` is called.

    One task claims for all workers (a claim per batch, not per worker); each worker takes the next
    item. The pool holds at most a quarter more items than it has workers: items claimed beyond that
    would wait here while another pool on the same store (``--processes``) has idle workers and finds
    nothing to claim. Per-key order holds because the store never hands out a key's next change while
    an earlier one is open.
    """

    def __init__(
        self,
        delivery: Delivery,
        *,
        size: int = 8,
        lease: float = 60.0,
        idle: float = 0.05,
        flows: list[str] | None = None,
        name: str = "worker",
    ) -> None:
        self.delivery = delivery
        self.size = size
        self.step = max(1, size // 4)  # claim once this many workers could use an item
        self.hold = size + self.step  # items in hand at most: being worked on, or ready for the next free worker
        self.lease = lease
        self.idle = idle
        self.flows = flows
        self.name = name
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Queue[InboxItem | None] = asyncio.Queue()
        self._freed = asyncio.Event()  # a worker took or finished an item: there may be room to claim more
        self.in_flight = 0
        self.wakeup = asyncio.Event()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._claim(), name=f"{self.name}-claimer")]
        self._tasks += [asyncio.create_task(self._run(), name=f"{self.name}-{i}") for i in range(self.size)]

    def stop(self) -> None:
        self._stopping.set()
        self.wakeup.set()
        self._freed.set()
        for _ in range(self.size):
            self._ready.put_nowait(None)

    async def join(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _claim(self) -> None:
        store = self.delivery.store
        while not self._stopping.is_set():
            held = self._ready.qsize() + self.in_flight
            room = self.hold - held
            # Topping up after every take would claim one item per transaction: wait for a step's worth
            # of room (a pool with nothing in hand always claims: at low load no item is kept waiting).
            if room <= 0 or (held and room < self.step):
                self._freed.clear()
                await self._freed.wait()
                continue
            try:
                items = await self.delivery.commits.run(store.claim, self.name, room, self.lease, self.flows)
            except Exception as exc:  # a store busy past its lock timeout, or gone for a while: try again soon
                self.delivery.log.error("claim_failed", worker=self.name, error=str(exc))
                await asyncio.sleep(max(self.idle, 1.0))
                continue
            if self._stopping.is_set():
                store.release([i.id for i in items])
                return
            for item in items:
                self._ready.put_nowait(item)
            if not items:
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=self.idle)

    async def _run(self) -> None:
        store = self.delivery.store
        while True:
            item = await self._ready.get()
            self._freed.set()
            if item is None:
                return  # stop() queued one of these per worker
            if self._stopping.is_set():
                store.release([item.id])  # claimed, never started: back at once, no attempt counted
                continue
            self.in_flight += 1
            try:
                await self.delivery.process(item)
            except Exception as exc:  # a bug must not kill the worker; the lease returns the item
                self.delivery.log.error("worker_error", flow=item.flow, key=item.key, error=repr(exc))
                store.retry_later(item.id, 5.0, f"internal error: {exc!r}")
            finally:
                self.in_flight -= 1
                self._freed.set()

    async def drain(self) -> None:
        """Work until the inbox has nothing ready for these flows (run --once)."""
        store = self.delivery.store
        while True:
            depth = store.depth()
            if depth["pending"] == 0 and depth["inflight"] == 0 and self.in_flight == 0:
                return
            await asyncio.sleep(0.02)
