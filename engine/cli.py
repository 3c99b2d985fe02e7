"""The ``seamline`` command line: thin commands that parse, call the engine and print.

Exit codes come from the exception classes (:mod:`engine.errors`): 0 fine, 1 invalid input or
a failed run, 2 a usage error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from engine import __version__
from engine.connector import closest, default_registry, parse_duration, parse_size
from engine.errors import SeamlineError, UsageError
from engine.playground import play, watch_and_play
from engine.runtime.logs import LogLevel
from engine.spec import SPEC_FILENAME, discover_specs, resolve_spec, spec_json_schema, validate_spec
from engine.spec.report import render_effective_spec, render_reports
from engine.state import StateStore
from engine.testing import run_golden
from engine.transform import BACKENDS

__all__ = ["main"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

SCHEMA_FILE = "spec.schema.json"


def _handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from None
        except SeamlineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seamline")
def main() -> None:
    """seamline: integrations between Adobe Commerce, ERPs and CRMs, declared as YAML specs."""


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="text for people, json for tools, github for GitHub Actions annotations.",
)
@click.option("--strict", is_flag=True, help="Missing environment variables and secrets are errors.")
@_handle_errors
def validate(paths: tuple[Path, ...], fmt: str, strict: bool) -> None:
    """Validate client specs (files or folders; default: specs/). Exit 0 valid, 1 invalid, 2 usage error."""
    started = time.perf_counter()
    files = discover_specs(paths or (Path("specs"),))
    reports = [validate_spec(path, strict=strict) for path in files]
    click.echo(render_reports(reports, fmt, time.perf_counter() - started))  # type: ignore[arg-type]
    if not all(r.ok for r in reports):
        sys.exit(1)


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("schemas"),
    show_default=True,
    help="Folder the JSON Schema is written to.",
)
@click.option("--check", is_flag=True, help="Do not write; exit 1 when the committed schema is stale.")
@_handle_errors
def schema(out_dir: Path, check: bool) -> None:
    """Write the spec's JSON Schema (draft 2020-12), generated from the models and connectors."""
    text = schema_text()
    target = out_dir / SCHEMA_FILE
    if check:
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current != text:
            click.echo(f"{target} is stale; run 'seamline schema' and commit the result", err=True)
            sys.exit(1)
        click.echo(f"{target} is up to date")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    click.echo(f"wrote {target}")


def schema_text() -> str:
    return json.dumps(spec_json_schema(default_registry()), indent=2, sort_keys=False) + "\n"


@main.command()
@click.argument("client")
@click.option(
    "--specs",
    "specs_dir",
    type=click.Path(path_type=Path),
    default=Path("specs"),
    show_default=True,
    help="Folder holding one folder per client.",
)
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@_handle_errors
def show(client: str, specs_dir: Path, fmt: str) -> None:
    """Print CLIENT's effective spec (extends resolved), with the file each part came from."""
    path = _client_spec_path(client, specs_dir)
    merged = resolve_spec(path, str(path))
    if not merged.ok:
        for diagnostic in merged.diagnostics:
            click.echo(diagnostic.render(), err=True)
        sys.exit(1)
    click.echo(render_effective_spec(merged, fmt, _flow_ids(merged.data)))  # type: ignore[arg-type]


def _flow_ids(data: object) -> dict[str, dict[str, str]]:
    """Each valid flow's business key, dedupe id and version in words (a broken flow is left out: validate says why)."""
    from pydantic import ValidationError

    from engine.runtime.identity import describe
    from engine.spec.model import Flow

    flows = data.get("flows") if isinstance(data, dict) else None
    ids: dict[str, dict[str, str]] = {}
    for name, body in (flows or {}).items():
        try:
            ids[str(name)] = describe(Flow.model_validate(body))
        except ValidationError:
            continue
    return ids


@main.command("test")
@click.argument("client", required=False)
@click.option("--all", "all_clients", is_flag=True, help="Every client with golden cases (the default without CLIENT).")
@click.option("--flow", "flow_name", help="Only this flow's cases.")
@click.option("--update", is_flag=True, help="Rewrite snapshots to what the flows produce now (review the diff!).")
@click.option(
    "--backend",
    type=click.Choice(["auto", *BACKENDS]),
    default=None,
    help="JSONata backend (default: $SEAMLINE_TRANSFORM_BACKEND, else auto).",
)
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@click.option("--golden", "golden_dir", type=click.Path(path_type=Path), default=Path("golden"), show_default=True)
@_handle_errors
def test_command(
    client: str | None,
    all_clients: bool,
    flow_name: str | None,
    update: bool,
    backend: str | None,
    specs_dir: Path,
    golden_dir: Path,
) -> None:
    """Run golden cases: each flow's output compared with its reviewed snapshot."""
    if client and all_clients:
        raise UsageError("give a CLIENT or --all, not both")
    report = run_golden(golden_dir, specs_dir, client=client, flow=flow_name, update=update, backend=backend)
    click.echo(report.render(color=sys.stdout.isatty()))
    if not report.ok:
        sys.exit(1)


@main.command("map")
@click.option("--client", "client", required=True, help="Client name (specs/CLIENT) or spec path.")
@click.option("--flow", "flow_name", required=True, help="The flow whose mapping to run.")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A record (JSON, XML or CSV), e.g. a golden case's input.",
)
@click.option("--watch", is_flag=True, help="Run again whenever the input, the spec or a mapping file changes.")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default=None)
@click.option("--now", "fixed_now", default=None, help="Fix $now(), e.g. 2025-01-15T08:00:00Z.")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def map_command(
    client: str,
    flow_name: str,
    input_path: Path,
    watch: bool,
    backend: str | None,
    fixed_now: str | None,
    specs_dir: Path,
) -> None:
    """The playground: print what FLOW makes of a record, or where its mapping breaks."""
    spec_path = _client_spec_path(client, specs_dir)
    if not watch:
        ok = play(spec_path, flow_name, input_path, backend=backend, now=fixed_now, echo=click.echo)
        if not ok:
            sys.exit(1)
        return
    watch_and_play(spec_path, flow_name, input_path, backend=backend, now=fixed_now, echo=click.echo)


@main.command()
@click.argument("client")
@click.option("--once", is_flag=True, help="One batch pass of the schedule flows, then exit (cron-style).")
@click.option("--flow", "flows", multiple=True, help="Run only this flow (repeatable).")
@click.option(
    "--dry-run", is_flag=True, help="With --once: read and transform, print the would-be writes, write nothing."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the HTTP API.")
@click.option("--port", default=8700, show_default=True, type=int)
@click.option("--dev", is_flag=True, help="No API token (only allowed on a loopback address).")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="File holding the API token (default: $SEAMLINE_API_TOKEN).",
)
@click.option(
    "--state",
    "state_url",
    help="State store URL (default: $SEAMLINE_STATE_URL, the spec's state.url, or sqlite:///.seamline/<client>.db).",
)
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 256))
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Deliver from this many processes (one per core): this one serves the API and triggers, "
    "the others only deliver, on the same state.",
)
@click.option("--delivery-part", type=int, default=0, hidden=True)
@click.option("--delivery-channel", type=int, default=None, hidden=True)
@click.option(
    "--lease",
    default=60.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds a claimed record stays a worker's; after a crash, a shared store waits this long.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="With --once --dry-run: json prints what would be written, refused and rejected as one JSON document.",
)
@click.option(
    "--body-timeout",
    default="10s",
    show_default=True,
    help="A webhook or request body must arrive within this; a slower one is answered 408.",
)
@click.option(
    "--body-memory",
    default="64MiB",
    show_default=True,
    help="Request bodies held at once, over all requests; past it a sender is answered 503 with Retry-After.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Lowest level written to the JSON log on stderr, the connectors' and libraries' lines included "
    "[default: info; warning with --once].",
)
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def run(
    client: str,
    once: bool,
    flows: tuple[str, ...],
    dry_run: bool,
    host: str,
    port: int,
    dev: bool,
    token_file: Path | None,
    state_url: str | None,
    workers: int,
    processes: int,
    delivery_part: int,
    delivery_channel: int | None,
    lease: float,
    fmt: str,
    body_timeout: str,
    body_memory: str,
    log_level: LogLevel | None,
    specs_dir: Path,
) -> None:
    """Run CLIENT's flows: the daemon (until SIGTERM), or one batch pass with --once."""
    import asyncio
    import os

    from rich.console import Console

    from engine.runtime.daemon import Daemon, DaemonOptions, run_daemon
    from engine.runtime.once import run_once

    if dry_run and not once:
        raise UsageError("--dry-run goes with --once")
    if fmt == "json" and not dry_run:
        raise UsageError("--format json goes with --once --dry-run")
    if once and processes > 1:
        raise UsageError("--processes is for the daemon; --once runs in one process")
    token = token_file.read_text(encoding="utf-8").strip() if token_file else os.environ.get("SEAMLINE_API_TOKEN")
    options = DaemonOptions(
        host=host,
        port=port,
        token=token or None,
        dev=dev,
        workers=workers,
        flows=list(flows) or None,
        state_url=state_url,
        lease=lease,
        processes=processes,
        delivery_part=delivery_part,
        delivery_channel=delivery_channel,
        body_timeout=_parsed(parse_duration, body_timeout, "--body-timeout"),
        body_memory=_parsed(parse_size, body_memory, "--body-memory"),
        serve_http=delivery_channel is None,
        log_level=log_level or ("warning" if once else "info"),
    )
    spec = _client_spec_path(client, specs_dir)
    if once:
        from engine.runtime.once import DryRun

        console = Console(soft_wrap=True) if fmt == "json" else Console()
        with _once_progress(console) as progress:
            summary = asyncio.run(run_once(spec, options, dry_run=dry_run, progress=None if dry_run else progress))
        if isinstance(summary, DryRun):
            _render_dry_run(summary, console, fmt)
        else:
            _render_once(summary, console)
        if not summary.ok:
            sys.exit(1)
        return
    run_daemon(Daemon(spec, options).run_forever())


@main.command()
@click.argument("client")
@click.option("--flow", "flow_name")
@click.option("--limit", default=20, show_default=True, type=int)
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def runs(client: str, flow_name: str | None, limit: int, state_url: str | None, specs_dir: Path) -> None:
    """Recent batch runs of CLIENT's flows."""
    from datetime import datetime

    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        records = store.runs(flow_name, limit)
    if not records:
        click.echo("no runs yet")
        return
    click.echo(f"{'id':>5}  {'flow':<20} {'kind':<9} {'started':<19}  {'took':>7}  {'status':<7} counts")
    for r in records:
        took = f"{r.finished_at - r.started_at:.1f}s" if r.finished_at else "running"
        started = datetime.fromtimestamp(r.started_at).strftime("%Y-%m-%d %H:%M:%S")
        counts = " ".join(f"{k}={v}" for k, v in sorted(r.counts.items()) if v or k == "read")
        click.echo(f"{r.id:>5}  {r.flow:<20} {r.kind:<9} {started:<19}  {took:>7}  {r.status:<7} {counts}")


@contextmanager
def _once_progress(console: Any) -> Iterator[Any]:
    """A rich progress bar that follows a ``run --once`` pass (engine.runtime.once.OnceProgress)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )

    class Shown:
        def __init__(self) -> None:
            self.tasks: dict[str, Any] = {}
            self.total = 0

        def reading(self, flow: str) -> None:
            self.tasks[flow] = bar.add_task(f"reading {flow}", total=None)

        def read(self, flow: str, rows: int) -> None:
            bar.update(self.tasks[flow], description=f"read {flow}: {rows} records", total=1, completed=1)

        def delivering(self, total: int) -> None:
            self.total = total
            self.tasks["*"] = bar.add_task("delivering", total=total or 1)

        def delivered(self, done: int) -> None:
            bar.update(self.tasks["*"], completed=done if self.total else 1)

    with bar:
        yield Shown()


def _render_once(summary: Any, console: Any) -> None:
    """The pass's table: each flow's rows read, the records they made and each record's one outcome."""
    from rich.table import Table

    from engine.runtime.once import OUTCOME_COLUMNS, SKIP_REASONS

    for flow, error in summary.read_errors.items():
        console.print(f"[red]{flow}: reading the source failed[/red]: {error}")
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
    console.print(table)
    for flow, row in summary.rows.items():
        if row.get("pending"):
            pending = row["pending"]
            console.print(
                f"[red]{flow}: the pass stopped after {summary.deadline:g} s with {pending} record(s) pending[/]"
            )
        if row.get("rejected") or row.get("dead_lettered"):
            console.print(f"{flow}: see the reasons with: seamline dlq list {summary.client} --flow {flow}")


def _render_dry_run(dry: Any, console: Any, fmt: str) -> None:
    """What a real pass would send, refuse and reject: lines and a table, or one JSON document."""
    from rich.table import Table

    from engine.transform import canonical_json

    if fmt == "json":
        report = {"writes": dry.writes, "refused": dry.refused, "rejected": dry.rejected, "failed": dry.failed}
        console.print_json(json.dumps({"dry_run": True, "flows": dry.rows, **report}, default=str))
        return
    for write in dry.writes:
        console.print(
            f"{write['flow']} -> {write['target']}: {canonical_json(write['payload'], indent=None)}", markup=False
        )
    for refusal in dry.refused + dry.rejected:
        console.print(f"[red]would dead-letter[/red] {refusal['flow']}: {refusal['reason']}")
    for failure in dry.failed:
        console.print(f"[red]cannot read[/red] {failure['flow']}: {failure['reason']}")
    table = Table(title="seamline run --once --dry-run (nothing was written)")
    columns = ("read", "records", "would_write", "refused", "rejected", "skipped", "failed")
    table.add_column("flow")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for flow, row in dry.rows.items():
        table.add_row(flow, *(str(row[c]) for c in columns))
    console.print(table)
    console.print("dry run: nothing was written (no target, no inbox, no cursor, no file moved)")


def _fakes() -> dict[str, str]:
    """Connector kinds that declare a contract fake: {kind: "module:function"} (the function is ``main(argv)``)."""
    return {kind.name: kind.fake for kind in default_registry() if kind.fake}


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("kind", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_handle_errors
def fake(kind: str | None, args: tuple[str, ...]) -> None:
    """Serve a contract fake (a system that behaves like the real API) until Ctrl-C.

    \b
    seamline fake magento --port 8082     then point a spec's url at http://127.0.0.1:8082
    seamline fake KIND --help             the fake's own options and credentials
    """
    import importlib

    fakes = _fakes()
    if kind is None or kind in ("-h", "--help"):
        click.echo("usage: seamline fake KIND [OPTIONS]")
        click.echo("")
        click.echo("Serve a contract fake on loopback until Ctrl-C. Its banner prints the URL, the credentials a")
        click.echo("spec needs to reach it, and its write log (GET <url>/__fake/log).")
        click.echo("")
        click.echo("fakes:")
        width = max(len(name) for name in fakes)
        for name in sorted(fakes):
            doc = (importlib.import_module(fakes[name].partition(":")[0]).__doc__ or "").strip().splitlines()
            click.echo(f"  {name:<{width}}  {doc[0] if doc else ''}")
            click.echo(f"  {'':<{width}}  seamline fake {name} --help")
        return
    if kind not in fakes:
        hint = closest(kind, fakes)
        suggestion = f" — did you mean '{hint}'?" if hint else ""
        raise UsageError(f"no fake for '{kind}'{suggestion} (fakes: {', '.join(sorted(fakes))})")
    module, _, function = fakes[kind].partition(":")
    main_of = getattr(importlib.import_module(module), function or "main")
    raise SystemExit(main_of(list(args)))


@main.group()
def dlq() -> None:
    """Dead letters: records that could not be delivered, with their reasons; replay them after a fix."""


@dlq.command("list")
@click.argument("client")
@click.option("--flow", "flow_name")
@click.option("--all", "include_replayed", is_flag=True, help="Include letters already replayed.")
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def dlq_list(
    client: str, flow_name: str | None, include_replayed: bool, state_url: str | None, specs_dir: Path
) -> None:
    """List dead letters (id, flow, key, kind, reason)."""
    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        letters = store.dead_letters(flow_name, include_replayed=include_replayed)
    for letter in letters:
        replayed = " (replayed)" if letter.replayed_at else ""
        click.echo(
            f"{letter.id:>5}  {letter.flow:<20} {letter.key:<32} {letter.error_kind:<9} {letter.reason[:160]}{replayed}"
        )
    click.echo(f"{len(letters)} dead letter(s)")


@dlq.command("show")
@click.argument("client")
@click.argument("letter_id", type=int)
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def dlq_show(client: str, letter_id: int, state_url: str | None, specs_dir: Path) -> None:
    """One dead letter in full: reason, target, spec version and the record as it arrived."""
    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        found = [d for d in store.dead_letters(include_replayed=True) if d.id == letter_id]
    if not found:
        raise UsageError(f"no dead letter {letter_id}; see 'seamline dlq list {client}'")
    letter = found[0]
    click.echo(
        json.dumps(
            {
                "id": letter.id,
                "flow": letter.flow,
                "key": letter.key,
                "business_key": letter.business_key,
                "kind": letter.error_kind,
                "target": letter.target,
                "reason": letter.reason,
                "spec_version": letter.spec_version,
                "created_at": letter.created_at,
                "replayed_at": letter.replayed_at,
                "record": letter.payload,
            },
            indent=2,
            ensure_ascii=False,
        )
    )


@dlq.command("replay")
@click.argument("client")
@click.option("--flow", "flow_name", help="Replay this flow's dead letters.")
@click.option("--id", "ids", multiple=True, type=int, help="Replay these dead letters (repeatable).")
@click.option(
    "--force", is_flag=True, help="Replay superseded letters too (a newer change of the same record was delivered)."
)
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def dlq_replay(
    client: str, flow_name: str | None, ids: tuple[int, ...], force: bool, state_url: str | None, specs_dir: Path
) -> None:
    """Put dead letters back in the inbox; the daemon (or the next run) delivers them.

    A letter whose record has had a newer change delivered since is skipped (it would overwrite the newer
    change with the older one) unless --force.
    """
    import getpass

    from engine.flow import load_client
    from engine.runtime.daemon import HEARTBEAT, spec_version
    from engine.runtime.processes import HOST
    from engine.state import ReplayRecord

    if not flow_name and not ids:
        raise UsageError("say which: --flow F, --id N (repeatable), or both")
    on_disk = spec_version(load_client(_client_spec_path(client, specs_dir), environ=dict(os.environ)))
    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        for daemon in store.daemons(seen_within=3 * HEARTBEAT):
            if daemon.spec_version != on_disk:
                click.echo(
                    f"warning: the running daemon {daemon.name} runs spec version {daemon.spec_version}, the spec on "
                    f"disk is {on_disk}: the replayed letters are delivered with the running version, so a fix made "
                    "on disk (a mapping, a lookup table) is not in effect yet; restart the daemon, then replay",
                    err=True,
                )
        letters = store.dead_letters(flow_name)
        chosen = [d.id for d in letters if not ids or d.id in ids]
        stale = [] if force else store.superseded(chosen)
        count = store.replay(chosen, include_superseded=force)
        store.record_replay(
            ReplayRecord(
                flow_name or "", tuple(chosen), count, len(stale), force, on_disk, f"{getpass.getuser()}@{HOST}"
            )
        )
    click.echo(f"replayed {count} dead letter(s)")
    if stale:
        listed = ", ".join(str(i) for i in stale)
        click.echo(
            f"skipped {len(stale)} superseded (a newer change of the same record was delivered since): {listed}; "
            "--force replays them anyway"
        )


@dlq.command("history")
@click.argument("client")
@click.option("--limit", default=20, show_default=True, type=int)
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def dlq_history(client: str, limit: int, state_url: str | None, specs_dir: Path) -> None:
    """Past replays: when, by whom, which letters, how many went back and how many were skipped."""
    from datetime import datetime

    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        records = store.replays(limit)
    if not records:
        click.echo("no replays yet")
        return
    click.echo(f"{'id':>4}  {'when':<19}  {'by':<24} {'flow':<16} {'replayed':>8} {'skipped':>7}  spec      letters")
    for r in records:
        when = datetime.fromtimestamp(r.at).strftime("%Y-%m-%d %H:%M:%S")
        letters = ",".join(str(i) for i in r.letters[:12]) + (" ..." if len(r.letters) > 12 else "")
        forced = " (--force)" if r.forced else ""
        click.echo(
            f"{r.id:>4}  {when:<19}  {r.by[:24]:<24} {r.flow or '-':<16} {r.replayed:>8} {r.skipped:>7}  "
            f"{r.spec_version:<9} {letters}{forced}"
        )


@main.group()
def state() -> None:
    """Inspect and adjust a client's state: inbox depth, cursors."""


@state.command("version")
@click.argument("client")
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def state_version(client: str, state_url: str | None, specs_dir: Path) -> None:
    """The store's schema version and this seamline's, read without changing the store."""
    from engine.flow import load_client
    from engine.runtime.daemon import resolve_state_url
    from engine.secrets import Masker
    from engine.state import stored_version
    from engine.state.sql import MIGRATIONS

    compiled = load_client(_client_spec_path(client, specs_dir), environ=dict(os.environ))
    url = resolve_state_url(compiled, state_url, os.environ, Masker())
    found = stored_version(url)
    known = len(MIGRATIONS)
    click.echo(f"this seamline: schema {known}")
    if found is None:
        raise NoState(f"no state for client '{compiled.client}' at {url.split('?')[0]}")
    if found == known:
        verdict = "up to date"
    elif found < known:
        verdict = f"older: the daemon migrates it in place when it starts ({known - found} step(s))"
    else:
        verdict = "newer than this seamline: a newer seamline wrote it; upgrade seamline to use it"
    click.echo(f"the store at {url.split('?')[0]}: schema {found}, {verdict}")
    if found > known:
        sys.exit(1)


@state.command("show")
@click.argument("client")
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def state_show(client: str, state_url: str | None, specs_dir: Path) -> None:
    """Inbox depth per status, deliveries, and each flow's cursor."""
    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        depth, cursors, deliveries = store.depth(), store.cursors(), store.deliveries()
        url = store.url
    click.echo(f"state: {url}")
    click.echo("inbox: " + ", ".join(f"{k}={v}" for k, v in depth.items()) + f"; deliveries={deliveries}")
    for flow, value in cursors.items():
        click.echo(f"cursor {flow}: {value}")


@state.command("reset-cursor")
@click.argument("client")
@click.option("--flow", "flow_name", required=True)
@click.option("--to", "value", help="Set the cursor to this value instead of clearing it (a full re-read).")
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def state_reset_cursor(client: str, flow_name: str, value: str | None, state_url: str | None, specs_dir: Path) -> None:
    """Clear a flow's cursor (the next pass reads everything) or set it."""
    with _operator_store(client, specs_dir, state_url) as store:
        before = store.get_cursor(flow_name)
        store.set_cursor(flow_name, value)
    click.echo(f"cursor {flow_name}: {before} -> {value}")


@state.command("prune")
@click.argument("client")
@click.option(
    "--older-than", "older_than", help="Delete finished work older than this (default: the spec's state.retention)."
)
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def state_prune(client: str, older_than: str | None, state_url: str | None, specs_dir: Path) -> None:
    """Delete finished work: delivered items and their ledger, replayed dead letters, runs, old key state.

    Open items, dead items and dead letters not replayed are kept. The daemon does the same every hour, and
    prunes the embedded queue's acked messages with them (through the queue's own connection).
    """
    import time

    from engine.connector import parse_duration
    from engine.flow import load_client
    from engine.runtime.daemon import retention_seconds

    if older_than is not None:
        try:
            keep = parse_duration(older_than)
        except ValueError as exc:
            raise UsageError(f"--older-than: {exc}") from exc
    else:
        keep = retention_seconds(load_client(_client_spec_path(client, specs_dir), environ={}))
    with _operator_store(client, specs_dir, state_url) as store:
        counts = store.prune(time.time() - keep)
    summary = ", ".join(f"{what} {n}" for what, n in counts.items())
    click.echo(f"pruned work finished more than {keep / 86400:g} days ago: {summary}")


@contextmanager
def _operator_store(
    client: str, specs_dir: Path, state_url: str | None, *, read_only: bool = False
) -> Iterator[StateStore]:
    """The client's state store. ``read_only``: a command that only looks never creates an empty one; where
    there is none it says so (and where it looked) and exits 1, rather than answering "no runs yet"."""
    import os

    from engine.flow import load_client
    from engine.runtime.daemon import resolve_state_url
    from engine.secrets import Masker
    from engine.state import open_store, state_exists

    compiled = load_client(_client_spec_path(client, specs_dir), environ=dict(os.environ))
    url = resolve_state_url(compiled, state_url, os.environ, Masker())
    if read_only and not state_exists(url):
        raise NoState(
            f"no state for client '{compiled.client}' at {url.split('?')[0]}: nothing has run with it yet, or the "
            "daemon keeps its state elsewhere (--state, $SEAMLINE_STATE_URL, the spec's state.url, $SEAMLINE_HOME)"
        )
    store = open_store(url)
    try:
        yield store
    finally:
        store.close()


def _parsed(parse: Callable[[str], T], text: str, option: str) -> T:
    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


class NoState(SeamlineError):
    """A read-only command found no state store where the client's state would be."""


def _client_spec_path(client: str, specs_dir: Path) -> Path:
    candidate = Path(client)
    if candidate.is_file():
        return candidate
    if candidate.is_dir() and (candidate / SPEC_FILENAME).is_file():
        return candidate / SPEC_FILENAME
    named = specs_dir / client / SPEC_FILENAME
    if named.is_file():
        return named
    known = sorted(p.parent.name for p in specs_dir.glob(f"*/{SPEC_FILENAME}")) if specs_dir.is_dir() else []
    raise UsageError(f"no client '{client}' (looked for {named})" + (f"; clients: {', '.join(known)}" if known else ""))


def _plugin_commands() -> None:
    """Commands other packages add (entry-point group ``seamline.commands``): ``seamline demo`` comes from the demo
    package beside the engine, so the engine never names what the demo names."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=COMMANDS_GROUP):
        if ep.name not in main.commands:
            main.add_command(ep.load(), ep.name)


COMMANDS_GROUP = "seamline.commands"
_plugin_commands()


if __name__ == "__main__":  # python -m engine.cli, as the tests run the daemon
    main()
