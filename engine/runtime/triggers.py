"""Triggers only produce work: they put records into the inbox, then acknowledge upstream.

- :class:`ScheduleTrigger` pages through a source from its cursor (minus an overlap window, so
  records changed within the same second are not missed; the idempotency key makes the re-read
  ones no-ops), stores each page, then advances the cursor.
- :func:`enqueue_event` is what a webhook or a queue consumer calls: store, then ack.
- :class:`RequestHandler` serves a request trigger: call the source, transform, answer; with a
  TTL cache and a clear 503 when the system is over budget or its breaker is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter  # type: ignore[import-untyped]

from engine.connector import REJECT_HEADER, Connection, Message, parse_duration
from engine.errors import TerminalError, TransformError, TransientError
from engine.flow import CompiledFlow
from engine.runtime.guards import Breaker, Budget
from engine.runtime.identity import identify, pick
from engine.runtime.logs import JsonLog
from engine.runtime.metrics import Metrics
from engine.spec.model import Schedule
from engine.state import NewItem, StateStore
from engine.transform import canonical

__all__ = [
    "RequestHandler",
    "RequestResult",
    "ScheduleTrigger",
    "count_received",
    "enqueue_event",
    "enqueue_records",
    "event_items",
    "new_items",
    "shift_cursor",
]


def new_items(flow: CompiledFlow, records: list[Any], *, source: str, message_id: str = "") -> list[NewItem]:
    """Records as inbox items of ``flow``: each with its business key and its dedupe key."""
    items = []
    for record in records:
        business, key = identify(flow.flow, record, message_id=message_id)
        items.append(NewItem(flow.name, key, business, record, source))
    return items


def event_items(flow: CompiledFlow, body: bytes, *, source: str, message_id: str = "") -> list[NewItem] | None:
    """A pushed event's body (one JSON record or a list of them) as inbox items; None when it is not JSON."""
    try:
        record = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    records = record if isinstance(record, list) else [record]
    return new_items(flow, records, source=source, message_id=message_id)


def count_received(metrics: Metrics, flow: str, added: int, offered: int) -> None:
    metrics.inc("received", flow, added)
    metrics.inc("duplicates", flow, offered - added)


def enqueue_records(
    store: StateStore, flow: CompiledFlow, records: list[Any], *, source: str, metrics: Metrics, message_id: str = ""
) -> int:
    """Store records durably for ``flow``; returns how many were new."""
    items = new_items(flow, records, source=source, message_id=message_id)
    added = store.enqueue(items)
    count_received(metrics, flow.name, added, len(items))
    return added


def enqueue_event(
    store: StateStore,
    flow: CompiledFlow,
    body: bytes,
    *,
    source: str,
    metrics: Metrics,
    message_id: str = "",
    rejected: str = "",
) -> int:
    """A pushed event (webhook or queue message) into the inbox; a body that is not JSON is dead-lettered.

    ``rejected`` is a connector's reason why the message is not a usable record (see
    :data:`~engine.connector.REJECT_HEADER`): it goes to dead letters with that reason.
    Returns the number of new items. Raises nothing for bad input: bad input never loses data, it
    goes to dead letters with its reason, and the sender gets its acknowledgement.
    """
    reason = rejected
    record: Any = None
    if not reason:
        try:
            record = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            reason = f"message is not JSON: {exc}"
    if reason:
        raw = {"raw": body.decode("utf-8", errors="replace")}
        business, key = identify(flow.flow, raw, message_id=message_id)
        if store.reject(NewItem(flow.name, key, business, raw, source), reason):
            metrics.inc("failed", flow.name)
            metrics.inc("dead_lettered", flow.name)
        return 0
    records = record if isinstance(record, list) else [record]
    return enqueue_records(store, flow, records, source=source, metrics=metrics, message_id=message_id)


def shift_cursor(value: str, overlap: float) -> str:
    """The cursor moved back by the overlap window, when it is a time or a number; else as it is."""
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            return str(float(value) - overlap) if "." in value else str(int(value) - int(overlap))
        except ValueError:
            return value
    shifted = stamp - timedelta(seconds=overlap)
    text = shifted.isoformat()
    return text.replace("+00:00", "Z") if value.endswith("Z") else text


def _first_read_since(cursor: str | None, schedule: Schedule) -> str | None:
    """Where a pass starts reading: the stored cursor less the overlap window; on the very first pass the
    backfill date as it is (midnight UTC), since nothing before it was read that the overlap could re-read."""
    if cursor:
        return shift_cursor(cursor, parse_duration(schedule.overlap))
    if schedule.backfill_from is not None:
        return f"{schedule.backfill_from.isoformat()}T00:00:00Z"
    return None


def _max_cursor(current: str | None, records: list[Any], field_name: str) -> str | None:
    best = current
    for record in records:
        value = pick(record, field_name)
        if value in (None, ""):
            continue
        text = str(value)
        if best is None or _later(text, best):
            best = text
    return best


def _later(a: str, b: str) -> bool:
    try:
        return float(a) > float(b)
    except ValueError:
        return a > b  # ISO timestamps compare as text


@dataclass
class ScheduleTrigger:
    flow: CompiledFlow
    connection: Connection
    budget: Budget
    store: StateStore
    metrics: Metrics
    log: JsonLog
    last_error: str = ""  # why the last pass failed; the next pass starts again from the same cursor

    def next_fire(self, after: float) -> float:
        schedule = self.flow.flow.trigger.schedule
        assert schedule is not None
        if schedule.every is not None:
            return after + parse_duration(schedule.every)
        assert schedule.cron is not None
        base = datetime.fromtimestamp(after, tz=UTC)
        return float(croniter(schedule.cron, base).get_next(float))

    async def run_once(self) -> dict[str, int]:
        """One pass: read every page since the cursor, store it, advance the cursor. Returns counts."""
        flow = self.flow.flow
        source = flow.source
        assert source is not None and source.read is not None and flow.trigger.schedule is not None
        run_id = self.store.start_run(self.flow.name, "schedule")
        self.last_error = ""
        counts = {"read": 0, "new": 0, "pages": 0}
        cursor = self.store.get_cursor(self.flow.name)
        since = _first_read_since(cursor, flow.trigger.schedule)
        status = "ok"
        try:
            pages = self.connection.read(
                source.read,
                since=since,
                cursor_field=source.cursor,
                page_size=source.page_size or 100,
                filter=source.filter,
            )
            async for page in pages:
                counts["pages"] += 1
                counts["read"] += len(page)
                counts["new"] += enqueue_records(
                    self.store, self.flow, page, source=f"schedule:{source.system}.{source.read}", metrics=self.metrics
                )
                if source.cursor:
                    cursor = _max_cursor(cursor, page, source.cursor)
                    if cursor is not None:
                        self.store.set_cursor(self.flow.name, cursor)  # only after the page is stored
        except (TransientError, TerminalError) as exc:
            status = "failed"
            self.last_error = str(exc)
            self.log.error("schedule_failed", flow=self.flow.name, error=str(exc), **counts)
        finally:
            self.store.finish_run(run_id, status, counts)
        self.log.info("schedule_pass", flow=self.flow.name, status=status, **counts)
        return counts

    async def loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.run_once()
            wait = max(0.0, self.next_fire(time.time()) - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=wait)


@dataclass(frozen=True)
class RequestResult:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class RequestHandler:
    """A request trigger: the caller waits while seamline asks the source, so the answer must be quick or clear."""

    def __init__(
        self, flow: CompiledFlow, connection: Connection, budget: Budget, breaker: Breaker, metrics: Metrics
    ) -> None:
        self.flow = flow
        self.connection = connection
        self.budget = budget
        self.breaker = breaker
        self.metrics = metrics
        trigger = flow.flow.trigger.request
        assert trigger is not None and flow.flow.source is not None and flow.flow.source.call is not None
        self.operation = flow.flow.source.call
        self.timeout = parse_duration(trigger.timeout)
        self.ttl = parse_duration(trigger.cache) if trigger.cache else 0.0
        self._cache: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.max_entries = 10_000

    async def handle(self, request: Any) -> RequestResult:
        started = time.perf_counter()
        try:
            return await self._handle(request)
        finally:
            self.metrics.inc("requests", self.flow.name)
            self.metrics.observe("request", self.flow.name, time.perf_counter() - started)

    async def _handle(self, request: Any) -> RequestResult:
        # keyed by the request's content, whatever order its keys came in
        cache_key = json.dumps(canonical(request), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        now = time.monotonic()
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(cache_key)
            return RequestResult(200, hit[1], {"X-Seamline-Cache": "hit"})
        try:
            asked = self.flow.shape_request(request, record_id=cache_key[:80])
        except TransformError as exc:
            return RequestResult(400, {"error": f"the request cannot be shaped for the source: {exc}"})
        if not self.breaker.allow():
            retry = max(1, int(self.breaker.remaining() + 0.999))
            return RequestResult(
                503, {"error": "the system is unavailable (circuit open)"}, {"Retry-After": str(retry)}
            )
        if not self.budget.try_now():
            return RequestResult(503, {"error": "the system is over its request budget"}, {"Retry-After": "1"})
        try:
            async with self.budget.slot():
                response = await asyncio.wait_for(
                    self.connection.call(self.operation, asked, timeout=self.timeout), timeout=self.timeout
                )
        except TimeoutError:
            self.breaker.failure()
            return RequestResult(504, {"error": f"no answer from the system within {self.timeout:g}s"})
        except TransientError as exc:
            self.breaker.failure()
            after = str(int(exc.retry_after)) if exc.retry_after else "1"
            return RequestResult(503, {"error": str(exc)}, {"Retry-After": after})
        except TerminalError as exc:
            self.breaker.success()
            return RequestResult(502, {"error": str(exc)})
        self.breaker.success()
        try:
            answer = self.flow.transform(response, record_id=cache_key[:80])
        except TransformError as exc:
            return RequestResult(502, {"error": str(exc)})
        if self.ttl:
            self._cache[cache_key] = (time.monotonic() + self.ttl, answer)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return RequestResult(200, answer, {"X-Seamline-Cache": "miss"})


async def consume_queue(
    flow: CompiledFlow, connection: Connection, queue: str, store: StateStore, metrics: Metrics
) -> None:
    """An event trigger on a queue: each message is stored before the connector acknowledges it."""

    async def handler(message: Message) -> None:
        enqueue_event(
            store,
            flow,
            message.body,
            source=f"queue:{queue}",
            metrics=metrics,
            message_id=message.message_id,
            rejected=str(message.headers.get(REJECT_HEADER) or ""),
        )

    await connection.consume(queue, handler)
