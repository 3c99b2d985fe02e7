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
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped]

from engine.connector import REJECT_HEADER, Consumer, Message, ReadItem, parse_duration
from engine.errors import TerminalError, TransformError, TransientError
from engine.flow import CompiledFlow
from engine.runtime import tracing
from engine.runtime.identity import (
    GROUP_ROWS,
    MAX_DEPTH,
    fields,
    group_rows,
    identify_event,
    identify_read,
    pick,
    too_deep,
)
from engine.runtime.inbox import Inbox
from engine.runtime.logs import JsonLog
from engine.runtime.metrics import Metrics
from engine.runtime.system import BreakerOpen, OverBudget, System
from engine.runtime.waiting import first_of
from engine.runtime.worker import count_outcome
from engine.spec.model import Schedule
from engine.state import NewItem
from engine.transform import canonical

__all__ = [
    "ReadPage",
    "RequestHandler",
    "RequestResult",
    "ScheduleTrigger",
    "count_received",
    "enqueue_event",
    "event_items",
    "read_page",
    "shift_cursor",
]


@dataclass
class ReadPage:
    """A page of a read as inbox items: the records (grouped when the flow says so) and the rows rejected at read."""

    items: list[NewItem]
    rejected: list[tuple[NewItem, str]]
    rows: int  # rows the source handed over, rejected ones included


def read_page(flow: CompiledFlow, page: list[Any], *, source: str) -> ReadPage:
    """A page of a schedule read as inbox items; rows the source rejected come apart, each with its reason.

    With ``source.group_by`` the rows sharing a group key become one record (``{<field>: ..., rows: [...]}``);
    its dedupe id is then made from its rows' own ids, when the source gave them.
    """
    rows: list[Any] = []
    ids: list[str] = []
    rejected: list[tuple[NewItem, str]] = []
    for entry in page:
        if isinstance(entry, ReadItem) and entry.rejected:
            identity = identify_read(flow.flow, entry.data, row_id=entry.id)
            rejected.append(
                (NewItem(flow.name, identity.dedupe, identity.business, entry.data, source), entry.rejected)
            )
            continue
        data, row_id = (entry.data, entry.id) if isinstance(entry, ReadItem) else (entry, "")
        if too_deep(data):
            identity = identify_read(flow.flow, {"raw": "(not kept: nested too deep)"}, row_id=row_id)
            reason = f"the row is nested deeper than {MAX_DEPTH} levels; no record nests that deep"
            rejected.append((NewItem(flow.name, identity.dedupe, identity.business, {"raw": row_id}, source), reason))
            continue
        rows.append(data)
        ids.append(row_id)
    group_by = fields(flow.flow.source.group_by if flow.flow.source is not None else None)
    items: list[NewItem] = []
    if group_by:
        by_group: dict[int, list[str]] = {}
        grouped = group_rows(rows, group_by)
        positions = {id(row): n for n, row in enumerate(rows)}
        for n, record in enumerate(grouped):
            by_group[n] = [ids[positions[id(row)]] for row in record[GROUP_ROWS]]
        for n, record in enumerate(grouped):
            row_ids = by_group[n]
            group_id = "+".join(row_ids) if row_ids and all(row_ids) else ""
            identity = identify_read(flow.flow, record, row_id=_short(group_id))
            items.append(NewItem(flow.name, identity.dedupe, identity.business, record, source, identity.version))
    else:
        for data, row_id in zip(rows, ids, strict=True):
            identity = identify_read(flow.flow, data, row_id=row_id)
            items.append(NewItem(flow.name, identity.dedupe, identity.business, data, source, identity.version))
    return ReadPage(items, rejected, len(page))


def _short(text: str) -> str:
    """A long id (a group's row ids joined) as a short stable one."""
    if len(text) <= 200:
        return text
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def event_items(
    flow: CompiledFlow,
    body: bytes,
    *,
    source: str,
    message_id: str = "",
    headers: Mapping[str, Any] | None = None,
) -> list[NewItem] | None:
    """A pushed event's body (one JSON record or a list of them) as inbox items; None when it is not JSON.

    The dedupe id comes from the spec's ``dedupe`` (body field or header), else ``message_id`` (a list's
    records each with their place in it), else nothing: the record is new. With ``group_by`` and ``window``
    each record is the first row of a group, claimable once its window has passed.
    """
    try:
        record = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    records = record if isinstance(record, list) else [record]
    if any(too_deep(one) for one in records):
        return None  # dead-lettered by the caller with its reason (not_json says which)
    event = flow.flow.trigger.event
    group_by = fields(event.group_by if event is not None else None)
    window = parse_duration(event.window) if event is not None and event.window else 0.0
    items = []
    for index, one in enumerate(records):
        identity = identify_event(
            flow.flow,
            one,
            message_id=message_id,
            headers=headers,
            index=index if isinstance(record, list) else None,
        )
        payload: Any = one
        if group_by:
            payload = group_rows([one], group_by)[0]
        items.append(NewItem(flow.name, identity.dedupe, identity.business, payload, source, identity.version, window))
    return items


def count_received(metrics: Metrics, flow: str, added: int, offered: int) -> None:
    metrics.inc("received", flow, added)
    metrics.inc("duplicates", flow, offered - added)
    if offered > added:
        count_outcome(metrics, flow, "skipped", "duplicate", offered - added)


async def enqueue_event(
    inbox: Inbox,
    flow: CompiledFlow,
    body: bytes,
    *,
    source: str,
    metrics: Metrics,
    message_id: str = "",
    rejected: str = "",
    headers: Mapping[str, Any] | None = None,
) -> int:
    """A pushed event (webhook or queue message) into the inbox; a body that is not JSON is dead-lettered.

    ``rejected`` is a connector's reason why the message is not a usable record (see
    :data:`~engine.connector.REJECT_HEADER`): it goes to dead letters with that reason.
    Returns the number of new items. Raises nothing for bad input: bad input never loses data, it
    goes to dead letters with its reason, and the sender gets its acknowledgement.

    With tracing on, each record's trace starts here, as a child of the event's ``traceparent`` header when it
    came with one (a webhook's, a queue message's).
    """
    items = None if rejected else event_items(flow, body, source=source, message_id=message_id, headers=headers)
    if items is None:
        await reject_event(
            inbox,
            flow,
            body,
            rejected or not_json(body),
            source=source,
            metrics=metrics,
            message_id=message_id,
            headers=headers,
        )
        return 0
    with tracing.received(items, headers=headers) as records:
        stored = await inbox.put_each(records.items)
        records.stored(stored)
    added = sum(stored)
    count_received(metrics, flow.name, added, len(items))
    return added


def not_json(body: bytes) -> str:
    """Why ``body`` is not a JSON record (what a dead letter says)."""
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"message is not JSON: {exc}"
    except RecursionError:
        return f"message is JSON nested deeper than {MAX_DEPTH} levels; no record nests that deep"
    if too_deep(value):
        return f"message is JSON nested deeper than {MAX_DEPTH} levels; no record nests that deep"
    return "message is not a JSON record"


async def reject_event(
    inbox: Inbox,
    flow: CompiledFlow,
    body: bytes,
    reason: str,
    *,
    source: str,
    metrics: Metrics,
    message_id: str,
    headers: Mapping[str, Any] | None = None,
) -> None:
    """A message that never became a record, straight to dead letters (outcome: rejected at read)."""
    raw = {"raw": body.decode("utf-8", errors="replace")}
    identity = identify_event(flow.flow, raw, message_id=message_id)
    with tracing.received(
        [NewItem(flow.name, identity.dedupe, identity.business, raw, source)], headers=headers
    ) as rec:
        if await inbox.reject(rec.items[0], reason, trace_id=rec.trace_id()):
            rec.rejected(reason)
            metrics.inc("failed", flow.name)
            metrics.inc("dead_lettered", flow.name)
            count_outcome(metrics, flow.name, "rejected")
        else:
            rec.stored([False])  # the same unreadable message came before: its letter is there already


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
    system: System  # the source: each page is read inside its breaker, budget and timeout
    inbox: Inbox
    metrics: Metrics
    log: JsonLog
    keeps_groups: bool = False  # the connector keeps a group's rows in one page (it takes group_by)
    last_error: str = ""  # why the last pass failed; the next pass starts again from the same cursor
    last_counts: dict[str, int] = field(default_factory=dict)
    last_run: int = 0  # the run record of the last pass (run --once completes it with the delivery's outcomes)
    running: bool = False  # a pass is under way (run-now then answers "busy" rather than queue a second one)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set: the loop starts its next pass at once

    def request_pass(self) -> bool:
        """Ask the loop for a pass now (``seamline trigger``); False when one is running already."""
        if self.running:
            return False
        self.wake.set()
        return True

    def next_fire(self, after: float) -> float:
        """When the next pass starts: ``every`` after this one, or the cron's next time in the schedule's zone."""
        schedule = self.flow.flow.trigger.schedule
        assert schedule is not None
        if schedule.every is not None:
            return after + parse_duration(schedule.every)
        assert schedule.cron is not None
        base = datetime.fromtimestamp(after, tz=ZoneInfo(schedule.timezone))
        return float(croniter(schedule.cron, base).get_next(float))

    async def run_once(self) -> dict[str, int]:
        """One pass: read every page since the cursor, store it, advance the cursor. Returns counts.

        ``read``: rows the source handed over; ``records``: what they made (fewer when grouped);
        ``new``: records stored; ``duplicates``: records seen before (skipped); ``rejected``: rows the
        source could not hand over as data (in dead letters with their reason). The pass's run is "ok",
        "partial" (something was rejected at read) or "failed" (the read itself failed).
        """
        flow = self.flow.flow
        source = flow.source
        assert source is not None and source.read is not None and flow.trigger.schedule is not None
        run_id = self.last_run = await self.inbox.run(self.inbox.store.start_run, self.flow.name, "schedule")
        self.last_error = ""
        counts = {"read": 0, "records": 0, "new": 0, "duplicates": 0, "rejected": 0, "pages": 0}
        self.last_counts = counts
        cursor = await self.inbox.run(self.inbox.store.get_cursor, self.flow.name)
        since = _first_read_since(cursor, flow.trigger.schedule)
        group_by = fields(source.group_by)
        # A group may span pages of a source that does not keep groups together: the pass is collected first,
        # then stored at once and only then is the cursor moved (a crash before it re-reads the pass).
        collect = bool(group_by) and not self.keeps_groups
        held: list[Any] = []
        status = "ok"
        where = f"schedule:{source.system}.{source.read}"
        try:
            options: dict[str, Any] = {"group_by": group_by} if group_by and self.keeps_groups else {}
            pages = self.system.source.read(
                source.read,
                since=since,
                cursor_field=source.cursor,
                page_size=source.page_size or 100,
                filter=source.filter,
                **options,
            )
            while True:
                # each page is one call of the source: its breaker, a slot and a rate token of its limits
                async with self.system.call():
                    page = await anext(pages, None)
                if page is None:
                    break
                counts["pages"] += 1
                if collect:
                    held.extend(page)
                    counts["read"] += len(page)
                    continue
                cursor = await self._store_page(page, where, counts, cursor)
            if collect:
                cursor = await self._store_page(held, where, counts, cursor, count_read=False)
        except (TransientError, TerminalError) as exc:
            status = "failed"
            self.last_error = str(exc)
            self.log.error("schedule_failed", flow=self.flow.name, error=str(exc), **counts)
        finally:
            if status == "ok" and counts["rejected"]:
                status = "partial"
            await self.inbox.run(self.inbox.store.finish_run, run_id, status, counts)
        self.log.info("schedule_pass", flow=self.flow.name, status=status, **counts)
        return counts

    async def _store_page(
        self, page: list[Any], where: str, counts: dict[str, int], cursor: str | None, *, count_read: bool = True
    ) -> str | None:
        """One page into the inbox (its rejected rows into dead letters), then the cursor; returns the cursor."""
        source = self.flow.flow.source
        assert source is not None
        read = read_page(self.flow, page, source=where)
        if count_read:
            counts["read"] += read.rows
        counts["records"] += len(read.items)
        for item, reason in read.rejected:
            with tracing.received([item]) as rec:  # a row rejected at read is a record's whole trace
                if await self.inbox.reject(rec.items[0], reason, trace_id=rec.trace_id()):
                    rec.rejected(reason)
                    counts["rejected"] += 1
                    count_outcome(self.metrics, self.flow.name, "rejected")
                    self.metrics.inc("dead_lettered", self.flow.name)
                    self.log.warning("rejected_at_read", flow=self.flow.name, key=item.business_key, reason=reason)
        _warn_same_version(self.log, self.flow.name, read.items)
        with tracing.received(read.items) as records:  # with tracing on: one new trace per record read
            stored = await self.inbox.put_each(records.items)
            records.stored(stored)
        added = sum(stored)
        counts["new"] += added
        counts["duplicates"] += len(read.items) - added
        count_received(self.metrics, self.flow.name, added, len(read.items))
        if source.cursor:
            rows = [entry.data if isinstance(entry, ReadItem) else entry for entry in page]
            cursor = _max_cursor(cursor, rows, source.cursor)
            if cursor is not None:
                await self.inbox.run(self.inbox.store.set_cursor, self.flow.name, cursor)  # after the page is stored
        return cursor

    async def loop(self, stopping: asyncio.Event) -> None:
        """Pass after pass until ``stopping``. A pass that fails in an unexpected way is logged and counted
        (``seamline_schedule_errors_total``) and the next one runs at its time; only a schedule that cannot say
        when to run next ends the loop (the daemon then marks itself degraded)."""
        while not stopping.is_set():
            self.wake.clear()
            self.running = True
            try:
                await self.run_once()
            except Exception as exc:  # a bug or a store gone: the schedule must not end in silence
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.inc("schedule_errors", self.flow.name)
                self.log.error("schedule_error", flow=self.flow.name, error=self.last_error)
            else:
                if self.last_error:
                    self.metrics.inc("schedule_errors", self.flow.name)
            finally:
                self.running = False
            wait = max(0.0, self.next_fire(time.time()) - time.time())
            await first_of(stopping, self.wake, timeout=wait)


def _warn_same_version(log: JsonLog, flow: str, items: list[NewItem]) -> None:
    """Rows with the same id and version but different content are two records; say so, once per page.

    Both are kept (nothing is dropped), but it usually means one business record arrives as several rows
    (language rows, price scales) that ``source.group_by`` should collect, or an id missing a field.
    """
    seen: dict[str, str] = {}
    for item in items:
        if "#" not in item.key or "@~" in item.key:
            continue
        head, _, digest = item.key.rpartition("#")
        if seen.setdefault(head, digest) != digest:
            log.warning(
                "same_id_and_version",
                flow=flow,
                key=item.business_key,
                version=item.version,
                hint="rows with the same id and version differ; both are delivered in order. If they are parts of "
                "one record (language rows, price scales), collect them with source.group_by; else add the field "
                "that tells them apart to source.id",
            )
            return


@dataclass(frozen=True)
class RequestResult:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class RequestHandler:
    """A request trigger: the caller waits while seamline asks the source, so the answer must be quick or clear.

    The call goes through the source's :class:`~engine.runtime.system.System` as a real-time call: ahead of
    batch work on the same budget, waiting for a slot at most the trigger's timeout; an open breaker or no
    slot within it is a 503 with Retry-After, no answer within it a 504.
    """

    def __init__(self, flow: CompiledFlow, system: System, metrics: Metrics) -> None:
        self.flow = flow
        self.system = system
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
        started = time.monotonic()
        try:
            async with self.system.call(priority="realtime", wait=self.timeout, timed=False):
                left = max(0.001, self.timeout - (time.monotonic() - started))  # the slot's wait counts too
                async with asyncio.timeout(left):
                    response = await self.system.caller.call(self.operation, asked, timeout=left)
        except BreakerOpen as exc:
            retry = max(1, int(exc.remaining + 0.999))
            return RequestResult(
                503, {"error": "the system is unavailable (circuit open)"}, {"Retry-After": str(retry)}
            )
        except OverBudget:
            return RequestResult(503, {"error": "the system is over its request budget"}, {"Retry-After": "1"})
        except TimeoutError:
            return RequestResult(504, {"error": f"no answer from the system within {self.timeout:g}s"})
        except TransientError as exc:
            after = str(int(exc.retry_after)) if exc.retry_after else "1"
            return RequestResult(503, {"error": str(exc)}, {"Retry-After": after})
        except TerminalError as exc:
            return RequestResult(502, {"error": str(exc)})
        try:
            answer = self.flow.transform(response, record_id=cache_key[:80])
        except TransformError as exc:
            return RequestResult(502, {"error": str(exc)})
        if self.ttl:
            self._cache[cache_key] = (time.monotonic() + self.ttl, answer)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return RequestResult(200, answer, {"X-Seamline-Cache": "miss"})


async def consume_queue(flow: CompiledFlow, consumer: Consumer, queue: str, inbox: Inbox, metrics: Metrics) -> None:
    """An event trigger on a queue: each message is stored before the connector acknowledges it."""

    async def handler(message: Message) -> None:
        await enqueue_event(
            inbox,
            flow,
            message.body,
            source=f"queue:{queue}",
            metrics=metrics,
            message_id=message.message_id,
            rejected=str(message.headers.get(REJECT_HEADER) or ""),
            headers=message.headers,
        )

    await consumer.consume(queue, handler)
