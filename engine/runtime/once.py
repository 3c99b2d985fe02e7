"""`seamline run --once`: one batch pass of schedule flows, for cron-style use.

This module runs the pass and returns what happened as data (:class:`OnceSummary`, :class:`DryRun`); it
tells a :class:`OnceProgress` how far it got; the command line renders both (tables, a progress bar, JSON).

``--dry-run`` reads and transforms but writes nothing anywhere (no target, no inbox, no cursor, no file
moved): it reports what each target would be sent and what would be refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from engine.errors import TerminalError, TransientError, UsageError
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.runtime.identity import fields
from engine.runtime.logs import routed
from engine.runtime.triggers import read_page
from engine.runtime.worker import Delivery
from engine.state import InboxItem, payload_text

__all__ = ["OUTCOME_COLUMNS", "SKIP_REASONS", "DryRun", "OnceProgress", "OnceSummary", "run_once"]


OUTCOME_COLUMNS = ("read", "records", "delivered", "skipped", "dead_lettered", "rejected", "pending")
SKIP_REASONS = ("duplicate", "stale", "empty", "discontinued")


@dataclass
class OnceSummary:
    """Per flow: what was read and the one outcome of each record (see ``OUTCOME_COLUMNS``).

    ``read`` counts the rows the source handed over, ``records`` what they made (fewer when grouped):
    each record is then delivered, skipped (a duplicate of one seen before, stale, nothing to write,
    discontinued), dead-lettered, or still pending when the pass stopped; ``rejected`` rows never became
    records (their reasons are in dead letters). ``failed`` is 1 when reading the source failed.
    """

    rows: dict[str, dict[str, int]]
    seconds: float
    client: str = ""
    deadline: float = 0.0
    read_errors: dict[str, str] = field(default_factory=dict)  # flow -> why reading its source failed

    @property
    def ok(self) -> bool:
        return all(
            row.get(c, 0) == 0
            for row in self.rows.values()
            for c in ("dead_lettered", "rejected", "failed", "pending", "refused")
        )


@dataclass
class DryRun(OnceSummary):
    """What a real pass would do: the payloads it would send, the records it would refuse or reject."""

    writes: list[dict[str, Any]] = field(default_factory=list)  # {flow, target, key, payload}
    refused: list[dict[str, Any]] = field(default_factory=list)  # {flow, key, reason}
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {flow, key, reason}
    failed: list[dict[str, Any]] = field(default_factory=list)  # {flow, reason}: the source could not be read


class OnceProgress(Protocol):
    """How far a pass got, for whoever shows it (the command line's progress bar)."""

    def reading(self, flow: str) -> None: ...

    def read(self, flow: str, rows: int) -> None: ...

    def delivering(self, total: int) -> None: ...

    def delivered(self, done: int) -> None: ...


class _Quiet:
    def reading(self, flow: str) -> None:
        return None

    def read(self, flow: str, rows: int) -> None:
        return None

    def delivering(self, total: int) -> None:
        return None

    def delivered(self, done: int) -> None:
        return None


async def run_once(
    spec: Path,
    options: DaemonOptions,
    *,
    dry_run: bool,
    progress: OnceProgress | None = None,
    environ: Mapping[str, str] | None = None,
    deadline: float = 600.0,
    log_stream: IO[str] | None = None,
) -> OnceSummary:
    """One pass of the spec's schedule flows (the chosen ones): read, deliver until done or ``deadline``."""
    started = time.perf_counter()
    shown = progress if progress is not None else _Quiet()
    options.serve_http = False
    options.schedules = False
    options.alerts = False
    # The summary is the caller's to render; the log (warnings by default from the CLI) goes to stderr.
    daemon = Daemon(spec, options, environ=environ, log_stream=log_stream)
    chosen = [n for n in daemon.flow_names if daemon.client.flows[n].flow.trigger.schedule is not None]
    if not chosen:
        raise UsageError("--once runs schedule flows; none selected" + (f" (got {', '.join(daemon.flow_names)})"))
    daemon.flow_names = chosen
    with routed(daemon.log):  # the connectors' and libraries' lines join the same log, masked
        if dry_run:
            return await _dry_run(daemon, started)
        return await _one_pass(daemon, chosen, shown, started, deadline)


async def _one_pass(
    daemon: Daemon, chosen: list[str], shown: OnceProgress, started: float, deadline: float
) -> OnceSummary:
    await daemon.start()
    rows: dict[str, dict[str, int]] = {}
    errors: dict[str, str] = {}
    try:
        for name in chosen:
            shown.reading(name)
            schedule = daemon.schedules[name]
            counts = await schedule.run_once()
            shown.read(name, counts["read"])
            rows[name] = {
                "read": counts["read"],
                "records": counts["records"],
                "new": counts["new"],
                "rejected": counts["rejected"],
                "failed": 1 if schedule.last_error else 0,
            }
            if schedule.last_error:
                errors[name] = schedule.last_error
        total = sum(r["new"] for r in rows.values())
        shown.delivering(total)
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            # Counters, not a COUNT of the inbox: the store is only asked once they say every record is done.
            totals = daemon.metrics.totals()  # merged once per look, for every flow
            done = sum(_finished(totals, n) for n in chosen)
            shown.delivered(min(done, total))
            if done >= total and await _nothing_open(daemon, chosen):
                break
            await asyncio.sleep(0.05)
    finally:
        await _finish(daemon, chosen, rows)
    return OnceSummary(rows, time.perf_counter() - started, daemon.client.client, deadline, errors)


def _finished(counts: Mapping[tuple[str, str], float], flow: str) -> int:
    """Records of ``flow`` that reached their outcome, here or in a delivery process (as it last reported, at
    most a second ago), by the merged ``counts``; duplicates never entered the inbox."""
    outcomes = [f"skips/{reason}" for reason in SKIP_REASONS if reason != "duplicate"]
    outcomes += ["records/delivered", "records/dead_lettered"]
    return int(sum(counts.get((name, flow), 0.0) for name in outcomes))


async def _nothing_open(daemon: Daemon, chosen: list[str]) -> bool:
    """Asked only once the counters say every record is done (no COUNT on the hot path), through the inbox."""
    assert daemon.inbox is not None
    inbox = daemon.inbox
    depths = [await inbox.run(inbox.store.depth, n) for n in chosen]
    return all(d["pending"] == 0 and d["inflight"] == 0 for d in depths)


async def _finish(daemon: Daemon, chosen: list[str], rows: dict[str, dict[str, int]]) -> None:
    inbox = daemon.inbox
    # Every worker (the delivery processes' too) stops first: nothing moves between the counts and the COUNT of
    # what is pending, so each record is in exactly one column even when the deadline cut the pass short.
    await daemon.finish_delivery()
    totals = daemon.metrics.totals()
    for name in chosen:
        row = rows.setdefault(name, {"read": 0, "records": 0, "new": 0, "rejected": 0, "failed": 0})
        row["delivered"] = int(totals.get(("records/delivered", name), 0))
        row["dead_lettered"] = int(totals.get(("records/dead_lettered", name), 0))
        row["retried"] = int(totals.get(("retried", name), 0))
        for reason in SKIP_REASONS:
            row[f"skipped_{reason}"] = int(totals.get((f"skips/{reason}", name), 0))
        row["skipped"] = sum(row[f"skipped_{reason}"] for reason in SKIP_REASONS)
        if inbox is not None:
            row["pending"] = (await inbox.run(inbox.store.depth, name))["pending"]
            schedule = daemon.schedules.get(name)
            if schedule is not None and schedule.last_run:
                failed = row.get("failed", 0)
                partial = any(row.get(c, 0) for c in ("dead_lettered", "rejected", "pending"))
                status = "failed" if failed else "partial" if partial else "ok"
                counts = {**schedule.last_counts, **{k: v for k, v in row.items() if k != "failed"}}
                await inbox.run(inbox.store.finish_run, schedule.last_run, status, counts)
    await daemon.stop()


async def _dry_run(daemon: Daemon, started: float) -> DryRun:
    """Read and deliver on the same code as a real pass, writing nothing anywhere.

    Nothing at the source changes (a file drop's files stay where they are), no state file is opened or
    made, no cursor moves; each record goes through the worker's own path in its dry-run mode: the
    transforms, create-only fields, and each target's pre-send check, so a payload the target's schema
    refuses shows as refused here as it would be dead-lettered for real.
    """
    await daemon.open_connections()
    sink: list[tuple[str, str, Any]] = []
    delivery = Delivery(
        daemon.client,
        _NoInbox(),  # type: ignore[arg-type]
        daemon.systems,
        daemon.registry,
        daemon.metrics,
        daemon.log,
        spec_version=daemon.spec_version,
        dry_run_sink=sink,
    )
    rows: dict[str, dict[str, int]] = {}
    report: dict[str, Any] = {"writes": [], "refused": [], "rejected": [], "failed": []}
    registry = daemon.registry
    try:
        for name in daemon.flow_names:
            compiled = daemon.client.flows[name]
            source = compiled.flow.source
            assert source is not None and source.read is not None
            row = rows.setdefault(name, {"read": 0, "records": 0, "would_write": 0, "refused": 0, "rejected": 0})
            row.update(skipped=0, failed=0)
            kind = registry.get(daemon.client.report.systems[source.system].connector)
            options: dict[str, Any] = {"preview": True} if kind is not None and kind.read_moves else {}
            if source.group_by is not None and kind is not None and kind.keeps_groups:
                options["group_by"] = fields(source.group_by)
            system = daemon.systems[source.system]
            where = f"schedule:{source.system}.{source.read}"
            # a source that does not keep groups together in its pages is read whole first, as a real pass does
            collect = source.group_by is not None and "group_by" not in options
            held: list[Any] = []
            try:
                pages = system.source.read(
                    source.read,
                    since=None,
                    cursor_field=source.cursor,
                    page_size=source.page_size or 100,
                    filter=source.filter,
                    **options,
                )
                while True:
                    async with system.call():  # the source's breaker and budget, as a real pass reads
                        page = await anext(pages, None)
                    if page is None:
                        break
                    if collect:
                        held.extend(page)
                    else:
                        await _dry_page(delivery, name, page, where, row, report, sink)
                if collect:
                    await _dry_page(delivery, name, held, where, row, report, sink)
            except (TransientError, TerminalError) as exc:
                row["failed"] += 1
                report["failed"].append({"flow": name, "reason": str(exc)})
    finally:
        for connection in daemon.connections.values():
            await connection.close()
    return DryRun(
        rows,
        time.perf_counter() - started,
        daemon.client.client,
        writes=report["writes"],
        refused=report["refused"],
        rejected=report["rejected"],
        failed=report["failed"],
    )


async def _dry_page(
    delivery: Delivery,
    flow: str,
    page: list[Any],
    where: str,
    row: dict[str, int],
    report: dict[str, Any],
    sink: list[tuple[str, str, Any]],
) -> None:
    """One page through the daemon's reading (grouping, rejected rows) and the worker in its dry-run mode."""
    compiled = delivery.client.flows[flow]
    read = read_page(compiled, page, source=where)
    row["read"] += read.rows
    row["records"] += len(read.items)
    for bad, reason in read.rejected:
        row["rejected"] += 1
        report["rejected"].append({"flow": flow, "key": bad.business_key, "reason": f"rejected at read: {reason}"})
    for new in read.items:
        item = InboxItem(
            0,
            flow,
            new.key,
            new.business_key,
            payload_text(new.payload),  # the text the inbox would keep: the worker reads what it would read
            new.source,
            "pending",
            0,
            time.time(),
            version=new.version,
        )
        before = len(sink)
        outcome = await delivery.process(item)
        for _, target, payload in sink[before:]:
            row["would_write"] += 1
            report["writes"].append({"flow": flow, "target": target, "key": new.business_key, "payload": payload})
        if outcome.status in ("dead", "retry"):
            row["refused"] += 1
            report["refused"].append({"flow": flow, "key": new.business_key, "reason": outcome.detail})
        elif outcome.status == "skipped":
            row["skipped"] += 1


class _NoInbox:
    """A dry run's inbox: there is none, and nothing may reach it."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"a dry run touched the state store ({name}); it must write nothing")
