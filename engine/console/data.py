"""What each console page shows, gathered from the daemon: the same data functions as the JSON API
(engine/runtime/admin_api.py), the store reached only through the daemon's inbox (its own thread), and every text
that came from outside (records, reasons, receipts, keys) masked with the daemon's masker before a template sees it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.console.throughput import FinishedCounts, Rate
from engine.runtime.admin_api import flows_state, inbox_of, letter_matches, one_letter, system_json
from engine.runtime.alerts import cursor_age
from engine.runtime.operator import FlowInfo, Operator
from engine.runtime.replay import ReplayOutcome, replay_dead_letters
from engine.runtime.views import STATUSES
from engine.state import DeadLetter, RecordChange, RunRecord

__all__ = [
    "Change",
    "CursorRow",
    "FlowRow",
    "Letter",
    "ReplayView",
    "SpecState",
    "Step",
    "cursor_rows",
    "dead_letters",
    "flow_rows",
    "letter",
    "replay",
    "runs",
    "spec_state",
    "systems",
    "timeline",
]

Mask = Callable[[str], str]


def _pretty(value: Any, mask: Mask) -> str:
    """A record as indented JSON, masked (the masker knows secrets in their JSON-escaped forms too)."""
    return mask(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str))


# -- the spec --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpecState:
    client: str
    running: str
    on_disk: str | None  # None: the spec on disk does not load now

    @property
    def differs(self) -> bool:
        return self.on_disk != self.running


async def spec_state(operator: Operator) -> SpecState:
    # loading the spec reads and compiles its files: off the loop, as the JSON API and the daemon's reload do
    on_disk = await asyncio.to_thread(operator.spec_version_on_disk)
    return SpecState(operator.client_name, operator.spec_version, on_disk)


# -- flows -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowRow:
    info: FlowInfo
    depth: dict[str, int]  # inbox items by status: pending, inflight, done, dead
    last_run: RunRecord | None  # a schedule's latest pass
    cursor: str | None
    lag: float | None  # seconds the schedule's cursor is behind now, when the cursor is a time
    rate: Rate | None  # records finished in the last hour (see engine/console/throughput.py)
    stopped: str | None  # why its schedule or consumer stopped


async def flow_rows(operator: Operator, finished: FinishedCounts, now: float) -> list[FlowRow]:
    inbox = inbox_of(operator)
    flows = operator.flows()
    state = await inbox.run(flows_state, inbox.store, [f.name for f in flows])
    finished.add(state.depth)  # every look is also a sample
    stopped = operator.stopped_triggers
    rows = []
    for info in flows:
        depth = {status: int(state.depth.get(info.name, {}).get(status, 0)) for status in STATUSES}
        cursor = state.cursors.get(info.name)
        rows.append(
            FlowRow(
                info=info,
                depth=depth,
                last_run=state.last_runs.get(info.name),
                cursor=cursor,
                lag=cursor_age(cursor, now) if info.trigger == "schedule" else None,
                rate=finished.rate(info.name, depth["done"]),
                stopped=stopped.get(info.name),
            )
        )
    return rows


# -- dead letters ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Letter:
    """A dead letter as shown: its texts masked, its record as indented JSON."""

    id: int
    flow: str
    key: str  # the dedupe id
    business_key: str
    kind: str
    target: str
    reason: str
    spec_version: str
    trace_id: str
    created_at: float
    replayed_at: float | None
    record: str
    superseded: bool = False  # its record has had a newer change delivered since (a replay would skip it)


def _letter(letter: DeadLetter, mask: Mask, *, superseded: bool = False, with_record: bool = False) -> Letter:
    """A letter as the pages show it; its record (pretty and masked) only for the letter's own page."""
    return Letter(
        id=letter.id,
        flow=letter.flow,
        key=mask(letter.key),
        business_key=mask(letter.business_key),
        kind=letter.error_kind,
        target=letter.target,
        reason=mask(letter.reason),
        spec_version=letter.spec_version,
        trace_id=letter.trace_id,
        created_at=letter.created_at,
        replayed_at=letter.replayed_at,
        record=_pretty(letter.payload, mask) if with_record else "",
        superseded=superseded,
    )


async def dead_letters(
    operator: Operator, *, flow: str | None, reason: str | None, kind: str | None, replayed: bool = False
) -> list[Letter]:
    """Open dead letters (``replayed``: replayed ones too), newest first, those matching every filter given."""
    inbox = inbox_of(operator)
    found = await inbox.run(inbox.store.dead_letters, flow, include_replayed=replayed)
    # the reason is matched as stored: a filter typed by a person never names a secret's mask
    return [_letter(d, operator.masker) for d in reversed(found) if letter_matches(d, reason, kind)]


async def letter(operator: Operator, letter_id: int) -> Letter | None:
    inbox = inbox_of(operator)
    found, superseded = await inbox.run(one_letter, inbox.store, letter_id)
    return None if found is None else _letter(found, operator.masker, superseded=superseded, with_record=True)


@dataclass(frozen=True, slots=True)
class ReplayView:
    outcome: ReplayOutcome
    letters: dict[int, Letter]  # the chosen letters, to say what each is
    spec: SpecState  # a fix on disk not reloaded is not in effect: the page says so


async def replay(
    operator: Operator, *, flow: str | None, ids: Sequence[int], force: bool, dry_run: bool, by: str
) -> ReplayView:
    """``dry_run``: what a replay would do (which letters go back, which the superseded check skips); else do it,
    recorded in ``seamline dlq history`` like a replay from the terminal or the JSON API."""
    inbox = inbox_of(operator)
    spec = await spec_state(operator)
    # the letters are read before the replay: once replayed, they are no longer open
    shown = {d.id: d for d in await dead_letters(operator, flow=flow, reason=None, kind=None)}
    outcome = await inbox.run(
        replay_dead_letters,
        inbox.store,
        flow=flow,
        ids=ids,
        force=force,
        spec_version=spec.on_disk or spec.running,
        by=by,
        dry_run=dry_run,
    )
    return ReplayView(outcome, {i: shown[i] for i in outcome.chosen if i in shown}, spec)


# -- runs, systems, cursors -----------------------------------------------------------------------------------


async def runs(operator: Operator, flow: str | None, limit: int) -> list[RunRecord]:
    inbox = inbox_of(operator)
    return await inbox.run(inbox.store.runs, flow, limit)


def systems(operator: Operator) -> list[dict[str, Any]]:
    """Each system's breaker and budget, as the JSON API shows them (``system_json``)."""
    found = operator.systems
    return [system_json(found[name]) for name in sorted(found)]


@dataclass(frozen=True, slots=True)
class CursorRow:
    flow: str
    value: str | None  # None: the next pass reads everything
    age: float | None  # how far behind now the cursor is, when it is a time


async def cursor_rows(operator: Operator, now: float) -> list[CursorRow]:
    """Every schedule flow's cursor, and any other cursor the store holds (as ``GET /api/cursors``)."""
    inbox = inbox_of(operator)
    stored = await inbox.run(inbox.store.cursors)
    names = {f.name for f in operator.flows() if f.trigger == "schedule"} | set(stored)
    return [CursorRow(name, stored.get(name), cursor_age(stored.get(name), now)) for name in sorted(names)]


# -- a record's timeline --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One event of a change: received, dead_lettered, replayed, delivered (a ledger entry, with the receipt)."""

    at: float
    event: str
    target: str
    receipt: str  # what the target answered, as the ledger keeps it (masked)
    reason: str
    kind: str
    letter: int | None
    source: str
    request: str = ""  # what the target was sent (masked, cut short by the worker)


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a business key (one inbox item) and what became of it."""

    id: int
    flow: str
    dedupe_key: str
    business_key: str
    version: str | None
    source: str
    status: str
    attempts: int
    outcome: str
    last_error: str
    received_at: float
    record: str
    steps: tuple[Step, ...]

    @property
    def delivered_to(self) -> list[str]:
        return [step.target for step in self.steps if step.event == "delivered"]


def _change(change: RecordChange, mask: Mask) -> Change:
    steps = tuple(
        Step(e.at, e.event, e.target, mask(e.receipt), mask(e.reason), e.kind, e.letter, e.source, mask(e.request))
        for e in change.events
    )
    return Change(
        id=change.id,
        flow=change.flow,
        dedupe_key=mask(change.dedupe_key),
        business_key=mask(change.business_key),
        version=change.version,
        source=change.source,
        status=change.status,
        attempts=change.attempts,
        outcome=change.outcome,
        last_error=mask(change.last_error),
        received_at=change.created_at,
        record=_pretty(change.record, mask),
        steps=steps,
    )


async def timeline(operator: Operator, key: str, flow: str | None, limit: int = 20) -> list[Change]:
    """Every change of the business key ``key``, newest first."""
    inbox = inbox_of(operator)
    found = await inbox.run(inbox.store.timeline, key, flow=flow, limit=limit)
    return [_change(c, operator.masker) for c in found]
