"""`seamline run --once`: one batch pass of schedule flows, for cron-style use, with progress and a summary.

``--dry-run`` reads and transforms but writes nothing anywhere (no target, no inbox, no cursor):
it prints what each target would be sent.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from engine.errors import TerminalError, TransformError, TransientError, UsageError
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.transform import canonical_json

__all__ = ["OnceSummary", "run_once"]


@dataclass
class OnceSummary:
    rows: dict[str, dict[str, int]]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(row.get("dead_lettered", 0) == 0 and row.get("failed", 0) == 0 for row in self.rows.values())


async def run_once(
    spec: Path,
    options: DaemonOptions,
    *,
    dry_run: bool,
    console: Console,
    environ: Mapping[str, str] | None = None,
    deadline: float = 600.0,
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
        return await _dry_run(daemon, console, started)
    await daemon.start()
    rows: dict[str, dict[str, int]] = {}
    try:
        with _progress(console) as progress:
            for name in chosen:
                task = progress.add_task(f"reading {name}", total=None)
                schedule = daemon.schedules[name]
                counts = await schedule.run_once()
                progress.update(task, description=f"read {name}: {counts['read']} records", total=1, completed=1)
                rows[name] = {"read": counts["read"], "new": counts["new"], "failed": 1 if schedule.last_error else 0}
                if schedule.last_error:
                    console.print(f"[red]{name}: reading the source failed[/red]: {schedule.last_error}")
            total = sum(r["new"] for r in rows.values())
            task = progress.add_task("delivering", total=total or 1)
            until = time.monotonic() + deadline
            while time.monotonic() < until:
                done = sum(_delivered(daemon, n) for n in chosen)
                progress.update(task, completed=min(done, total) if total else 1)
                assert daemon.store is not None
                depth = {n: daemon.store.depth(n) for n in chosen}
                if all(d["pending"] == 0 and d["inflight"] == 0 for d in depth.values()):
                    break
                await asyncio.sleep(0.05)
    finally:
        await _finish(daemon, chosen, rows)
    summary = OnceSummary(rows, time.perf_counter() - started)
    console.print(_table(summary))
    return summary


def _delivered(daemon: Daemon, flow: str) -> int:
    m = daemon.metrics
    return int(m.get("written", flow) + m.get("skipped", flow) + m.get("dead_lettered", flow))


async def _finish(daemon: Daemon, chosen: list[str], rows: dict[str, dict[str, int]]) -> None:
    store = daemon.store
    for name in chosen:
        row = rows.setdefault(name, {"read": 0, "new": 0})
        for metric in ("written", "skipped", "retried", "dead_lettered"):
            row[metric] = int(daemon.metrics.get(metric, name))
        if store is not None:
            row["pending"] = store.depth(name)["pending"]
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
    columns = ["read", "new", "written", "skipped", "retried", "dead_lettered", "pending", "failed"]
    table = Table(title=f"seamline run --once ({summary.seconds:.1f} s)")
    table.add_column("flow")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for flow, row in summary.rows.items():
        table.add_row(flow, *(str(row.get(c, 0)) for c in columns))
    return table


async def _dry_run(daemon: Daemon, console: Console, started: float) -> OnceSummary:
    await daemon.open_connections()
    rows: dict[str, dict[str, int]] = {}
    try:
        for name in daemon.flow_names:
            compiled = daemon.client.flows[name]
            source = compiled.flow.source
            assert source is not None and source.read is not None
            row = rows.setdefault(name, {"read": 0, "would_write": 0, "failed": 0})
            connection = daemon.connections[source.system]
            try:
                async for page in connection.read(
                    source.read,
                    since=None,
                    cursor_field=source.cursor,
                    page_size=source.page_size or 100,
                    filter=source.filter,
                ):
                    for record in page:
                        row["read"] += 1
                        try:
                            preview = compiled.preview(record)
                        except TransformError as exc:
                            row["failed"] += 1
                            console.print(f"[red]would dead-letter[/red] {name}: {exc}")
                            continue
                        for target, payload in preview.items():
                            if payload is not None:
                                row["would_write"] += 1
                                console.print(f"{name} -> {target}: {canonical_json(payload, indent=None)}")
            except (TransientError, TerminalError) as exc:
                row["failed"] += 1
                console.print(f"[red]cannot read {source.system}.{source.read}[/red]: {exc}")
    finally:
        for connection in daemon.connections.values():
            await connection.close()
    summary = OnceSummary(rows, time.perf_counter() - started)
    table = Table(title="seamline run --once --dry-run (nothing was written)")
    for column in ("flow", "read", "would write", "failed"):
        table.add_column(column, justify="left" if column == "flow" else "right")
    for flow, row in rows.items():
        table.add_row(flow, str(row["read"]), str(row["would_write"]), str(row["failed"]))
    console.print(table)
    console.print("dry run: nothing was written (no target, no inbox, no cursor)")
    return summary
