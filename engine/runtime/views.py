"""The JSON shapes of the state an operator looks at: dead letters, runs, replays, inbox depth.

One shape for each, used by the JSON API (engine/runtime/admin_api.py, documented in openapi.json) and by the
CLI's ``--format json``: a script written against one reads the other. Times are ISO-8601 UTC strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.runtime.logs import iso_time
from engine.state import DeadLetter, ReplayRecord, RunRecord

__all__ = ["STATUSES", "dead_letter_json", "depth_json", "iso_or_none", "replay_json", "run_json"]

STATUSES = ("pending", "inflight", "done", "dead")  # an inbox item's statuses, in the order they come


def iso_or_none(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def depth_json(counts: Mapping[str, int] | None) -> dict[str, int]:
    """Items per status, every status present (a flow with no items yet shows zeros, not a gap)."""
    return {status: int((counts or {}).get(status, 0)) for status in STATUSES}


def dead_letter_json(letter: DeadLetter, *, record: bool = False) -> dict[str, Any]:
    """A dead letter; ``record``: with the record as it arrived (the list leaves it out: records can be large)."""
    shown: dict[str, Any] = {
        "id": letter.id,
        "item_id": letter.item_id,
        "flow": letter.flow,
        "key": letter.key,
        "business_key": letter.business_key,
        "kind": letter.error_kind,
        "target": letter.target,
        "reason": letter.reason,
        "spec_version": letter.spec_version,
        # the trace of the attempt that dead-lettered it (a store from before traces has none)
        "trace_id": getattr(letter, "trace_id", "") or None,
        "created_at": iso_time(letter.created_at),
        "replayed_at": iso_or_none(letter.replayed_at),
    }
    if record:
        shown["record"] = letter.payload
    return shown


def run_json(run: RunRecord) -> dict[str, Any]:
    took = None if run.finished_at is None else round(run.finished_at - run.started_at, 3)
    return {
        "id": run.id,
        "flow": run.flow,
        "kind": run.kind,
        "started_at": iso_time(run.started_at),
        "finished_at": iso_or_none(run.finished_at),
        "took_s": took,
        "status": run.status,
        "counts": dict(sorted(run.counts.items())),
    }


def replay_json(replay: ReplayRecord) -> dict[str, Any]:
    return {
        "id": replay.id,
        "at": iso_time(replay.at),
        "by": replay.by,
        "flow": replay.flow or None,
        "letters": list(replay.letters),
        "replayed": replay.replayed,
        "skipped": replay.skipped,
        "forced": replay.forced,
        "spec_version": replay.spec_version,
    }
