"""`seamline run --once`: one batch pass of schedule flows, for cron-style use, with progress and a summary.

``--dry-run`` reads and transforms but writes nothing anywhere (no target, no inbox, no cursor):
it prints what each target would be sent.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.connector import default_registry
from engine.errors import TerminalError, TransientError, UsageError
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.runtime.identity import fields
from engine.runtime.triggers import read_page
from engine.runtime.worker import Delivery
from engine.state import InboxItem
from engine.transform import canonical_json

__all__ = ["OnceSummary", "run_once"]


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

    @property
    def ok(self) -> bool:
        return all(
            row.get(c, 0) == 0
            for row in self.rows.values()
            for c in ("dead_lettered", "rejected", "failed", "pending", "refused")
        )


async def run_once(
    spec: Path,
    options: DaemonOptions,
    *,
    dry_run: bool,
    console: Console,
    environ: Mapping[str, str] | None = None,
    deadline: float = 600.0,
    fmt: str = "text",
) -> OnceSummary:
    started = time.perf_counter()
    options.serve_http = False
    options.schedules = False
    daemon = Daemon(spec, options, environ=environ, log_stream=io.StringIO())  # the table speaks
    chosen = [n for n in daemon.flow_names if daemon.client.flows[n].flow.trigger.schedule is not None]
    if not chosen:
        raise UsageError("--once runs schedule flows; none selected" + (f" (got {', '.join(daemon.flow_names)})"))
    daemon.flow_names = chosen
    if dry_run:
        return await _dry_run(daemon, console, started, fmt)
    await daemon.start()
    rows: dict[str, dict[str, int]] = {}
    try:
        with _progress(console) as progress:
            for name in chosen:
                task = progress.add_task(f"reading {name}", total=None)
                schedule = daemon.schedules[name]
                counts = await schedule.run_once()
                progress.update(task, description=f"read {name}: {counts['read']} records", total=1, completed=1)
                rows[name] = {
                    "read": counts["read"],
                    "records": counts["records"],
                    "new": counts["new"],
                    "rejected": counts["rejected"],
                    "failed": 1 if schedule.last_error else 0,
                }
                if schedule.last_error:
                    console.print(f"[red]{name}: reading the source failed[/red]: {schedule.last_error}")
            total = sum(r["new"] for r in rows.values())
            task = progress.add_task("delivering", total=total or 1)
            until = time.monotonic() + deadline
            while time.monotonic() < until:
                # Counters, not a COUNT of the inbox: the store is only asked once they say every record is done.
                done = sum(_finished(daemon, n) for n in chosen)
                progress.update(task, completed=min(done, total) if total else 1)
                if done >= total and _nothing_open(daemon, chosen):
                    break
                await asyncio.sleep(0.05)
    finally:
        await _finish(daemon, chosen, rows)
    summary = OnceSummary(rows, time.perf_counter() - started)
    console.print(_table(summary))
    for name, row in rows.items():
        if row.get("pending"):
            console.print(
                f"[red]{name}: the pass stopped after {deadline:g} s with {row['pending']} record(s) pending[/red]"
            )
        if row.get("rejected") or row.get("dead_lettered"):
            console.print(f"{name}: see the reasons with: seamline dlq list {daemon.client.client} --flow {name}")
    return summary


def _finished(daemon: Daemon, flow: str) -> int:
    """Records of ``flow`` that reached their outcome in this process (duplicates never entered the inbox)."""
    m = daemon.metrics
    skipped = sum(m.get(f"skips/{reason}", flow) for reason in SKIP_REASONS if reason != "duplicate")
    return int(m.get("records/delivered", flow) + skipped + m.get("records/dead_lettered", flow))


def _nothing_open(daemon: Daemon, chosen: list[str]) -> bool:
    assert daemon.store is not None
    return all(d["pending"] == 0 and d["inflight"] == 0 for d in (daemon.store.depth(n) for n in chosen))


async def _finish(daemon: Daemon, chosen: list[str], rows: dict[str, dict[str, int]]) -> None:
    store = daemon.store
    m = daemon.metrics
    for name in chosen:
        row = rows.setdefault(name, {"read": 0, "records": 0, "new": 0, "rejected": 0, "failed": 0})
        row["delivered"] = int(m.get("records/delivered", name))
        row["dead_lettered"] = int(m.get("records/dead_lettered", name))
        row["retried"] = int(m.get("retried", name))
        for reason in SKIP_REASONS:
            row[f"skipped_{reason}"] = int(m.get(f"skips/{reason}", name))
        row["skipped"] = sum(row[f"skipped_{reason}"] for reason in SKIP_REASONS)
        if store is not None:
            row["pending"] = store.depth(name)["pending"]
            schedule = daemon.schedules.get(name)
            if schedule is not None and schedule.last_run:
                failed = row.get("failed", 0)
                partial = any(row.get(c, 0) for c in ("dead_lettered", "rejected", "pending"))
                status = "failed" if failed else "partial" if partial else "ok"
                counts = {**schedule.last_counts, **{k: v for k, v in row.items() if k != "failed"}}
                store.finish_run(schedule.last_run, status, counts)
    await daemon.stop()


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _table(summary: OnceSummary) -> Table:
    table = Table(title=f"seamline run --once ({summary.seconds:.1f} s)")
    table.add_column("flow")
    for column in OUTCOME_COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    for flow, row in summary.rows.items():
        table.add_row(flow, *(str(row.get(c, 0)) for c in OUTCOME_COLUMNS))
    reasons = [
        f"{flow}: skipped "
        + ", ".join(f"{row[f'skipped_{r}']} as {r}" for r in SKIP_REASONS if row.get(f"skipped_{r}"))
        for flow, row in summary.rows.items()
        if row.get("skipped")
    ]
    if reasons:
        table.caption = "; ".join(reasons)
    return table


async def _dry_run(daemon: Daemon, console: Console, started: float, fmt: str = "text") -> OnceSummary:
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
        _NoStore(),
        daemon.connections,
        daemon.budgets,
        daemon.breakers,
        daemon.metrics,
        daemon.log,
        spec_version=daemon.spec_version,
        dry_run_sink=sink,
    )
    rows: dict[str, dict[str, int]] = {}
    report: dict[str, Any] = {"writes": [], "refused": [], "rejected": [], "failed": []}
    registry = default_registry()
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
            connection = daemon.connections[source.system]
            where = f"schedule:{source.system}.{source.read}"
            # a source that does not keep groups together in its pages is read whole first, as a real pass does
            collect = source.group_by is not None and "group_by" not in options
            held: list[Any] = []
            try:
                async for page in connection.read(
                    source.read,
                    since=None,
                    cursor_field=source.cursor,
                    page_size=source.page_size or 100,
                    filter=source.filter,
                    **options,
                ):
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
    summary = OnceSummary(rows, time.perf_counter() - started)
    if fmt == "json":
        console.print_json(json.dumps({"dry_run": True, "flows": rows, **report}, default=str))
        return summary
    for write in report["writes"]:
        console.print(
            f"{write['flow']} -> {write['target']}: {canonical_json(write['payload'], indent=None)}", markup=False
        )
    for refusal in report["refused"] + report["rejected"]:
        console.print(f"[red]would dead-letter[/red] {refusal['flow']}: {refusal['reason']}")
    for failure in report["failed"]:
        console.print(f"[red]cannot read[/red] {failure['flow']}: {failure['reason']}")
    table = Table(title="seamline run --once --dry-run (nothing was written)")
    for column in ("flow", "read", "records", "would write", "refused", "rejected", "skipped", "failed"):
        table.add_column(column, justify="left" if column == "flow" else "right")
    for flow, row in rows.items():
        table.add_row(
            flow, *(str(row[c]) for c in ("read", "records", "would_write", "refused", "rejected", "skipped", "failed"))
        )
    console.print(table)
    console.print("dry run: nothing was written (no target, no inbox, no cursor, no file moved)")
    return summary


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
            0, flow, new.key, new.business_key, new.payload, new.source, "pending", 0, time.time(), version=new.version
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


class _NoStore:
    """A dry run's store: there is none, and nothing may reach it."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"a dry run touched the state store ({name}); it must write nothing")
