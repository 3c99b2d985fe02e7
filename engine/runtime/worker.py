"""Workers: take items from the inbox and deliver them to every target, once.

For one item: (an event group takes in its other parts) -> a change older than the newest one delivered
for its key is skipped as stale -> transform, on the JSON-text path: the text the inbox keeps goes in as
it is and the transform's text is what an HTTP target is sent (a TransformError is terminal) -> for each
target not yet in the ledger: the target's own transform, create-only / update-only fields kept or left
out by whether the target has the record, the connector's check, the write inside the system's budget
and breaker -> ledger -> and when every target is done, the item finishes with its outcome. A once-only write (a
shipment, a comment) is marked as in flight before it is sent; a worker that finds such a mark asks the
target whether the effect is there before sending again. A transient failure gives the item back with
backoff (without counting an attempt while the breaker is open; a Retry-After no longer than the
system's ``limits.max_retry_after``); a terminal one, or a transient one out of retries, sends it to dead
letters with the reason. Either way the worker goes on with the next item: one bad record never stops a
flow.

Every item ends in exactly one outcome, counted in ``seamline_records_total{flow,outcome}``: delivered,
skipped (with its reason: stale, nothing to write, discontinued, merged into a group) or dead-lettered.
With tracing on (engine/runtime/tracing.py) an attempt is a ``deliver`` span in the record's trace, with a
``transform`` span and a ``write`` span per target; off, the worker asks one flag and does nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.connector import JsonDocument, Registry, parse_duration
from engine.errors import TerminalError, TransformError, TransientError
from engine.flow import CompiledClient, CompiledFlow, CompiledTarget
from engine.runtime import tracing
from engine.runtime.guards import Backoff
from engine.runtime.identity import fields, older, pick
from engine.runtime.inbox import Inbox
from engine.runtime.logs import JsonLog
from engine.runtime.metrics import Metrics
from engine.runtime.system import BreakerOpen, System
from engine.spec.model import Target
from engine.state import Delivered, Finished, InboxItem, Remember

__all__ = ["Delivery", "Outcome", "WorkerPool", "count_outcome"]

REQUEST_SUMMARY = 1000  # chars of what a target was sent that the ledger keeps, for the timeline
# A record this long is transformed on a thread of its own: the event loop goes on serving webhooks and the
# other workers meanwhile (jlens lets go of the GIL while it evaluates). Shorter ones cost less than the hop.
HEAVY_RECORD = 256 * 1024  # characters of JSON text
# A pool holds at most this much record text (claimed, ready or being delivered): many workers keep a batch
# moving while each waits for its group commit, and this keeps a backlog of huge records from filling memory.
HELD_TEXT = 64 * 1024 * 1024  # characters


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # "done", "skipped", "retry", "dead"
    detail: str = ""


def count_outcome(metrics: Metrics, flow: str, outcome: str, reason: str = "", amount: float = 1.0) -> None:
    """One record's outcome (delivered, skipped, dead_lettered, rejected); a skip also by its reason's kind."""
    metrics.inc(f"records/{outcome}", flow, amount)
    if reason:
        metrics.inc(f"skips/{reason}", flow, amount)


@dataclass
class Delivery:
    """Everything one item needs on its way to its targets."""

    client: CompiledClient
    inbox: Inbox  # every store call goes through it, on the store's thread
    systems: Mapping[str, System]  # every call of a system goes through its System (breaker, budget, timeout)
    registry: Registry  # the connector kinds: which writes must happen once
    metrics: Metrics
    log: JsonLog
    spec_version: str = ""
    backoff: Backoff = field(default_factory=Backoff)
    dry_run_sink: list[tuple[str, str, Any]] | None = None  # when set, writes are collected, not sent
    _once_only: dict[tuple[str, str], bool] = field(init=False, default_factory=dict)

    async def process(self, item: InboxItem) -> Outcome:
        """Deliver ``item`` to its targets; with tracing on, as one ``deliver`` span of the record's trace."""
        if not tracing.enabled():  # the hot path when off: not even a no-op span
            return await self._process(item)
        with tracing.delivering(item) as span:
            done = await self._process(item)
            tracing.outcome(span, "delivered" if done.status == "done" else done.status, done.detail)
            return done

    async def _process(self, item: InboxItem) -> Outcome:
        flow = self.client.flows.get(item.flow)
        if flow is None:
            return await self._dead(item, f"flow '{item.flow}' is no longer in the spec", "terminal")
        event = flow.flow.trigger.event
        if event is not None and event.group_by is not None and event.window is not None:
            # the other parts of the group that came within its window join it, in one transaction
            before = _rows(item.payload)
            item = await self.inbox.run(
                self.inbox.store.absorb, item, parse_duration(event.window), fields(event.group_by)
            )
            if _rows(item.payload) > before:
                count_outcome(self.metrics, item.flow, "skipped", "merged", _rows(item.payload) - before)
        if older(item.version, item.latest):
            return await self._skip(
                item, "stale", f"stale: version {item.version} is older than {item.latest}, already delivered"
            )
        if flow.flow.discontinued == "ignore" and pick(item.payload, "discontinued") is True:
            return await self._skip(item, "discontinued", "discontinued at the source, and the flow ignores those")
        try:
            with tracing.step("transform", item):  # a transform error is recorded on this span too
                shaped = await self._shape(flow, item)
        except TransformError as exc:
            return await self._dead(item, str(exc), "terminal")
        if shaped is None:
            return await self._skip(item, "empty", "the transform gave nothing to write")
        pending = [t for t in flow.targets if t.target is not None and t.label not in item.delivered]
        last: Delivered | None = None
        last_remember: Remember | None = None
        wrote = bool(item.delivered - {""})
        for position, target in enumerate(pending):
            outcome = await self._deliver(item, flow, target, shaped)
            if isinstance(outcome, Outcome):
                return outcome
            if outcome is None:
                wrote = True  # a dry run: it would be written; nothing goes into the ledger
                continue
            wrote = wrote or not outcome.response.startswith("skipped:")
            if self.dry_run_sink is not None:
                continue
            remember = self._remember_target(item, target)
            if position < len(pending) - 1:
                # Recorded at once: a later target's failure must never make this one be written twice.
                await self.inbox.record(outcome, remember)
            else:
                last, last_remember = outcome, remember  # the last target's entry shares the item's transaction
        if self.dry_run_sink is not None:
            return Outcome("done") if wrote or not pending else Outcome("skipped", "nothing to write for any target")
        remember = self._remember_item(item, last_remember)
        outcome_text = "delivered" if wrote or not pending else "skipped: nothing to write for any target"
        await self.inbox.finish(Finished(item.id, last, remember, outcome_text))
        if outcome_text == "delivered":
            self.metrics.observe("latency", item.flow, max(0.0, time.time() - item.created_at))
            count_outcome(self.metrics, item.flow, "delivered")
            return Outcome("done")
        self.metrics.inc("skipped", item.flow)
        count_outcome(self.metrics, item.flow, "skipped", "empty")
        tracing.event("skipped", kind="empty", reason=outcome_text)
        return Outcome("skipped", outcome_text)

    async def _shape(self, flow: CompiledFlow, item: InboxItem) -> JsonDocument | None:
        """The flow's transform of the record on the JSON-text path: the stored text in, text out (None: nothing
        to write). A heavy record is transformed off the event loop."""
        if len(item.text) < HEAVY_RECORD:
            return _document(flow.transform_json(item.text, record_id=item.key))
        return _document(await asyncio.to_thread(flow.transform_json, item.text, record_id=item.key))

    def _remember_target(self, item: InboxItem, target: CompiledTarget) -> Remember | None:
        """A target with create-only or update-only fields learns that it has the key now (the ledger's answer)."""
        spec = target.target
        if spec is None or not (spec.create_only or spec.update_only) or item.business_key.startswith("#"):
            return None
        return Remember(item.flow, item.business_key, None, (target.label,))

    def _remember_item(self, item: InboxItem, last: Remember | None) -> Remember | None:
        """The version delivered, for the staleness check of the key's later changes (a real key only)."""
        if item.version is None or item.business_key.startswith("#"):
            return last
        return Remember(item.flow, item.business_key, item.version, last.targets if last is not None else ())

    async def _skip(self, item: InboxItem, kind: str, reason: str) -> Outcome:
        tracing.event("skipped", kind=kind, reason=reason)
        if self.dry_run_sink is not None:
            return Outcome("skipped", reason)
        await self.inbox.finish(Finished(item.id, outcome=f"skipped: {reason}"))
        self.metrics.inc("skipped", item.flow)
        count_outcome(self.metrics, item.flow, "skipped", kind)
        if kind == "stale":
            self.log.info("stale", flow=item.flow, key=item.business_key, version=item.version, latest=item.latest)
        return Outcome("skipped", reason)

    def is_once_only(self, spec: Target) -> bool:
        """Whether the target's write must happen once (its connector kind or the spec says a resend is unsafe)."""
        cached = self._once_only.get((spec.system, spec.write))
        if cached is None:
            options = self.client.report.systems.get(spec.system)
            kind = self.registry.get(options.connector) if options is not None else None
            cached = kind is not None and kind.is_once_only(spec.write, options)
            self._once_only[(spec.system, spec.write)] = cached
        return cached

    async def _deliver(
        self, item: InboxItem, flow: CompiledFlow, target: CompiledTarget, shaped: JsonDocument
    ) -> Outcome | Delivered | None:
        """Write ``shaped`` to one target: the ledger entry to record, None (dry run), or why not (an Outcome).

        With tracing on, inside the target's ``write`` span: every request made for it (the existence check,
        the write, a check after a crash) carries that span as its traceparent.
        """
        spec = target.target
        assert spec is not None
        if not tracing.enabled():
            return await self._write(item, flow, target, shaped)
        with tracing.writing(item, target.label, spec.system, spec.write) as span:
            result = await self._write(item, flow, target, shaped)
            if isinstance(result, Outcome):
                tracing.outcome(span, result.status, result.detail)
            elif result is None:
                tracing.outcome(span, "dry_run")
            else:
                tracing.outcome(span, "skipped" if result.response.startswith("skipped:") else "written")
            return result

    async def _write(
        self, item: InboxItem, flow: CompiledFlow, target: CompiledTarget, shaped: JsonDocument
    ) -> Outcome | Delivered | None:
        spec = target.target
        assert spec is not None
        try:
            document = (
                shaped
                if target.expression is None
                else _document(target.expression.evaluate_json(shaped.text, flow.bindings, record_id=item.key))
            )
        except TransformError as exc:
            return await self._dead(item, str(exc), "terminal", target.label)
        if document is None:
            return Delivered(item.flow, item.key, target.label, "skipped: nothing to write")
        payload = document.value
        key = _key_of(payload, spec.key)
        system = self.systems[spec.system]
        if self.dry_run_sink is not None:
            return await self._dry_run(item, target, system, payload, key)
        once = self.is_once_only(spec)
        idempotency_key = f"{item.key}#{target.label}"
        sent = False
        try:
            if target.depends_on_existence:
                payload = await self._fields_for(item, target, system, payload, key)
            if system.checker is not None:  # the target's schema: a bad payload never leaves (not the system's fault)
                system.checker.check(spec.write, payload)
            if once and target.label in item.intents:
                found = await self._find_effect(item, target, system, payload, key, idempotency_key)
                if found is not None:
                    self.log.info("effect_found", flow=item.flow, key=item.key, target=target.label, receipt=found)
                    return Delivered(item.flow, item.key, target.label, found, once_only=True)
            elif once:
                # Committed before the write leaves: a crash from here on finds the mark and asks the target.
                await self.inbox.run(self.inbox.store.mark_intent, item.flow, item.key, target.label)
            # A connection that gathers concurrent writes into one request (Magento bulk) bounds its own
            # requests; holding a concurrency slot per waiting record would cap every batch at that limit.
            gathering = system.gathering is not None and system.gathering.gathers_writes(spec.write, spec.mode)
            # The transform's own text goes out as the body when nothing above changed the record.
            record: Any = document if system.takes_documents and payload is document.value else payload
            async with system.call(slot=not gathering):
                sent = True
                receipt = await system.target.write(
                    spec.write, record, key=key, mode=spec.mode, idempotency_key=idempotency_key
                )
        except BreakerOpen as exc:  # never called: the item waits out the breaker, no attempt counted
            await self.inbox.retry(item.id, exc.remaining, str(exc), count_attempt=False)
            tracing.event("retry", reason=str(exc), delay_s=exc.remaining)
            return Outcome("retry", "breaker open")
        except (TimeoutError, TransientError) as exc:
            reason = f"{target.label}: {exc}" if str(exc) else f"{target.label}: timed out"
            return await self._retry_or_give_up(item, target, spec, reason, getattr(exc, "retry_after", None))
        except TerminalError as exc:
            if once and sent:
                # the target refused the write: it had no effect, there is nothing to ask about later
                await self.inbox.run(self.inbox.store.clear_intent, item.flow, item.key, target.label)
            return await self._dead(item, f"{target.label}: {exc}", "terminal", target.label)
        except _Unknown as exc:
            return await self._dead(
                item,
                f"{target.label}: outcome unknown: this once-only write was sent before without an answer (a crash "
                f"or a timeout) and {exc}; check the target, then replay the letter to send it (or leave it)",
                "unknown",
                target.label,
            )
        self.metrics.inc("written", item.flow)
        return Delivered(item.flow, item.key, target.label, receipt, once_only=once, request=self._sent(record))

    def _sent(self, payload: Any) -> str:
        """What a target was sent, for the record's timeline: compact JSON, masked, cut at REQUEST_SUMMARY chars."""
        if isinstance(payload, JsonDocument):
            text = payload.text
        else:
            try:
                text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
            except (TypeError, ValueError, RecursionError):
                text = repr(payload)
        if len(text) > REQUEST_SUMMARY:
            text = text[:REQUEST_SUMMARY] + "…"
        return self.log.masker(text)

    async def _dry_run(
        self, item: InboxItem, target: CompiledTarget, system: System, payload: Any, key: Any
    ) -> Outcome | None:
        """What would be sent, after the same shaping and pre-send check as a real write; nothing is written.

        Create-only fields are kept or left out by what the connector says (a read, no side effect); where
        it cannot say, the record is taken as new. A refusal comes back as the Outcome a real write gets.
        """
        spec = target.target
        assert spec is not None and self.dry_run_sink is not None
        try:
            if target.depends_on_existence:
                payload = await self._fields_for(item, target, system, payload, key)
            if system.checker is not None:
                system.checker.check(spec.write, payload)
        except (TimeoutError, TransientError) as exc:
            return Outcome("retry", f"{target.label}: {exc or 'timed out'}")
        except TerminalError as exc:
            return await self._dead(item, f"{target.label}: {exc}", "terminal", target.label)
        self.dry_run_sink.append((item.flow, target.label, payload))
        return None

    async def _fields_for(self, item: InboxItem, target: CompiledTarget, system: System, payload: Any, key: Any) -> Any:
        """The payload without its create-only fields when the target has the record, or its update-only ones
        when it does not. The connector says (Magento's GET of the SKU); else the ledger (delivered before)."""
        spec = target.target
        assert spec is not None
        exists: bool | None = None
        if system.existence is not None:
            async with system.call():
                exists = await system.existence.exists(spec.write, payload, key=key)
        if exists is None:
            exists = target.label in item.known
        return target.for_existence(payload, exists)

    async def _find_effect(
        self,
        item: InboxItem,
        target: CompiledTarget,
        system: System,
        payload: Any,
        key: Any,
        idempotency_key: str,
    ) -> str | None:
        """A once-only write whose earlier attempt has no known outcome: the receipt if the target has it already.

        A connection that cannot check raises TerminalError: the record goes to dead letters as "unknown".
        """
        spec = target.target
        assert spec is not None
        finder = system.effects
        if finder is None:
            raise _Unknown(f"the {spec.system} connector cannot check whether it has this {spec.write} already")
        try:
            async with system.call():
                return await finder.find_effect(spec.write, payload, key=key, idempotency_key=idempotency_key)
        except TerminalError as exc:
            raise _Unknown(str(exc)) from None

    async def _retry_or_give_up(
        self, item: InboxItem, target: CompiledTarget, spec: Target, reason: str, retry_after: float | None
    ) -> Outcome:
        if item.attempts + 1 >= self.backoff.max_attempts:
            return await self._dead(
                item, f"gave up after {item.attempts + 1} attempts: {reason}", "exhausted", target.label
            )
        cap = self.systems[spec.system].budget.max_retry_after
        if retry_after is not None and retry_after > cap:
            self.log.warning(
                "retry_after_capped", flow=item.flow, key=item.key, target=target.label, asked=retry_after, cap=cap
            )
            retry_after = cap
        delay = self.backoff.delay(item.attempts, retry_after)
        await self.inbox.retry(item.id, delay, reason)
        tracing.event("retry", reason=reason, delay_s=delay)
        self.metrics.inc("failed", item.flow)
        self.metrics.inc("retried", item.flow)
        self.log.warning("retry", flow=item.flow, key=item.key, target=target.label, reason=reason)
        return Outcome("retry", reason)

    async def _dead(self, item: InboxItem, reason: str, kind: str, target: str = "") -> Outcome:
        if self.dry_run_sink is not None:
            return Outcome("dead", reason)  # a dry run tells; it stores nothing
        tracing.event("dead_letter", kind=kind, reason=reason, target=target)
        await self.inbox.dead(
            item.id,
            reason,
            kind=kind,
            target=target,
            spec_version=self.spec_version,
            trace_id=tracing.current_trace_id(),  # the letter names the trace that tells its story
        )
        self.metrics.inc("failed", item.flow)
        self.metrics.inc("dead_lettered", item.flow)
        count_outcome(self.metrics, item.flow, "dead_lettered")
        self.log.error("dead_letter", flow=item.flow, key=item.key, target=target, kind=kind, reason=reason)
        return Outcome("dead", reason)


class _Unknown(Exception):
    """A once-only write's earlier outcome is unknown and the target cannot say."""


def _document(text: str | None) -> JsonDocument | None:
    """A transform's JSON text as a document; None for nothing to write (undefined, or null)."""
    return None if text is None or text == "null" else JsonDocument(text)


def _rows(payload: Any) -> int:
    rows = payload.get("rows") if isinstance(payload, dict) else None
    return len(rows) if isinstance(rows, list) else 0


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
    nothing to claim. It also holds at most ``held_text`` characters of records: a claim takes only what
    fits into what is left of that budget (the store measures the records before it hands them out; its
    oldest one always comes, so the pool may hold one record more), none while the pool is full. Per-key
    order holds because the store never hands out a key's next change while an earlier one is open.

    Every ``lease / 3`` seconds the pool extends the leases of the items it holds: an item waiting its turn
    (for a worker, a rate budget, a slow target) stays this pool's however long that takes, and no other
    process takes it to send it a second time. A pool that stood still past its lease (the process stopped,
    the machine paused) may find an item it holds handed out again: to itself (the copy in hand goes on,
    the new claim is dropped) or to another process (logged as ``lease_lost``: one not started yet is left to
    that process; one on its way may reach its targets twice, under the same idempotency key).
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
        held_text: int = HELD_TEXT,
    ) -> None:
        self.delivery = delivery
        self.size = size
        self.held_text = held_text
        self._text = 0  # characters of the records in hand
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
        # The items in hand (claimed, ready or being delivered) by id: when their lease was last claimed or
        # renewed (monotonic seconds).
        self._held: dict[int, float] = {}
        self._lost: set[int] = set()  # ids in hand that another process took after their lease ran out
        self.in_flight = 0
        self.wakeup = asyncio.Event()

    @property
    def holding(self) -> int:
        """Characters of record text in hand: claimed, ready or being delivered."""
        return self._text

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claim(), name=f"{self.name}-claimer"),
            asyncio.create_task(self._renew(), name=f"{self.name}-leases"),
        ]
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
        inbox = self.delivery.inbox
        while not self._stopping.is_set():
            held = self._ready.qsize() + self.in_flight
            room = self.hold - held
            # Topping up after every take would claim one item per transaction: wait for a step's worth
            # of room (a pool with nothing in hand always claims: at low load no item is kept waiting).
            if room <= 0 or (held and (room < self.step or self._text >= self.held_text)):
                self._freed.clear()
                await self._freed.wait()
                continue
            claimed_at = time.monotonic()
            try:
                items = await inbox.claim(
                    self.name, room, self.lease, self.flows, text_budget=max(0, self.held_text - self._text)
                )
            except Exception as exc:  # a store busy past its lock timeout, or gone for a while: try again soon
                self.delivery.log.error("claim_failed", worker=self.name, error=str(exc))
                await asyncio.sleep(max(self.idle, 1.0))
                continue
            if self._stopping.is_set():
                await inbox.release([i.id for i in items if i.id not in self._held])
                return
            for item in items:
                if item.id in self._held:
                    # Its lease ran out while this pool stood still, and the claim handed it back here: the copy
                    # in hand goes on (two would send it twice).
                    self.delivery.log.warning("lease_ran_out", worker=self.name, flow=item.flow, key=item.key)
                    self._held[item.id] = claimed_at
                    continue
                self._held[item.id] = claimed_at
                self._text += len(item.text)
                self._ready.put_nowait(item)
            if not items:
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=self.idle)

    async def _run(self) -> None:
        inbox = self.delivery.inbox
        while True:
            item = await self._ready.get()
            self._freed.set()
            if item is None:
                return  # stop() queued one of these per worker
            if self._stopping.is_set():
                self._let_go(item)
                await inbox.release([item.id])  # claimed, never started: back at once, no attempt counted
                continue
            if not await self._still_ours(item):  # another process has it now: its outcome is that one's to report
                self._let_go(item)
                continue
            self.in_flight += 1
            try:
                await self.delivery.process(item)
            except Exception as exc:  # a bug must not kill the worker; the lease returns the item
                self.delivery.log.error("worker_error", flow=item.flow, key=item.key, error=repr(exc))
                with contextlib.suppress(Exception):  # a store gone too: the lease returns the item
                    await inbox.retry(item.id, 5.0, f"internal error: {exc!r}")
            finally:
                self.in_flight -= 1
                self._let_go(item)
                self._freed.set()

    def _let_go(self, item: InboxItem) -> None:
        """``item`` is no longer in hand: its text leaves the budget, its lease is no longer renewed."""
        self._text -= len(item.text)
        self._held.pop(item.id, None)
        self._lost.discard(item.id)

    async def _still_ours(self, item: InboxItem) -> bool:
        """Whether the pool still holds ``item``'s lease. One not renewed for half a lease (the process stood
        still) is renewed now: no worker starts an item whose lease another process may have taken."""
        if item.id not in self._lost and time.monotonic() - self._held.get(item.id, 0.0) > self.lease / 2:
            await self._renew_held([item.id])
        return item.id not in self._lost

    async def _renew(self) -> None:
        """Extend the leases of the items in hand every ``lease / 3`` seconds, until the pool stops."""
        every = self.lease / 3
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), every)
            if self._held and not self._stopping.is_set():
                await self._renew_held(sorted(self._held))

    async def _renew_held(self, held: list[int]) -> None:
        """Renew the leases of ``held``; those another process took are marked lost (and logged)."""
        inbox = self.delivery.inbox
        renewed_at = time.monotonic()
        try:
            taken = await inbox.run(inbox.store.renew, self.name, held, self.lease)
        except Exception as exc:  # a busy store: the next round tries again, well within the lease
            self.delivery.log.warning("lease_renewal_failed", worker=self.name, items=len(held), error=str(exc))
            return
        lost = [item_id for item_id in taken if item_id in self._held and item_id not in self._lost]
        for item_id in held:
            if item_id in self._held:
                self._held[item_id] = renewed_at
        self._lost.update(lost)  # one not started yet is left to the other process
        if lost:
            self.delivery.log.warning(
                "lease_lost",
                worker=self.name,
                items=lost,
                reason="this process stood still past its lease and another took these items: those not started "
                "are left to it; one on its way may reach its targets twice, under the same idempotency key",
            )

    async def drain(self) -> None:
        """Work until the inbox has nothing ready for these flows (run --once)."""
        inbox = self.delivery.inbox
        while True:
            depth = await inbox.run(inbox.store.depth)
            if depth["pending"] == 0 and depth["inflight"] == 0 and self.in_flight == 0:
                return
            await asyncio.sleep(0.02)
