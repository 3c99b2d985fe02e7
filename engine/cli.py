"""The ``seamline`` command line: thin commands that parse, call the engine and print.

Exit codes come from the exception classes (:mod:`engine.errors`): 0 fine, 1 invalid input or
a failed run, 2 a usage error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
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


def _format_option(func: Callable[P, R]) -> Callable[P, R]:
    """``--format table|json`` of the operator commands (json: the JSON API's shapes, ISO-8601 UTC times)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="table for people, json for scripts (the JSON API's shapes, ISO-8601 UTC times).",
    )(func)


@dataclass(frozen=True, slots=True)
class Column:
    """A column of an operator command's table."""

    title: str
    right: bool = False  # numbers align right
    cut: bool = False  # long free text (a reason, a key): cut to fit a terminal, never when piped


def _when(seconds: float) -> str:
    """A time for a table, in UTC (the column's title says so): 2026-12-06 02:45:10."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _echo_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))


def _terminal_width() -> int | None:
    """The terminal's width, or None when the output goes to a pipe or a file (which gets every character)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def _echo_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> None:
    """A header row and the rows, columns two spaces apart. On a terminal the ``cut`` columns are shortened (with
    an ellipsis) to fit its width; piped or redirected, nothing is cut, so a script or grep sees whole values."""
    cells = [[" ".join(cell.split()) for cell in row] for row in rows]  # a newline in a reason must not break a row
    widths = [max([len(column.title), *(len(row[i]) for row in cells)]) for i, column in enumerate(columns)]
    width = _terminal_width()
    if width is not None:
        widths = _fit(columns, widths, width)
    for row in [[c.title for c in columns], *cells]:
        shown = [_cell(text, widths[i], columns[i].right) for i, text in enumerate(row)]
        click.echo("  ".join(shown).rstrip())


def _fit(columns: Sequence[Column], widths: list[int], width: int) -> list[int]:
    """Narrow the cuttable columns, the widest first, until the table fits ``width`` (none below its title or 8
    characters: a table wider than the terminal then wraps rather than showing nothing)."""
    widths = list(widths)
    least = [max(len(c.title), 8) if c.cut else w for c, w in zip(columns, widths, strict=True)]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    while over > 0:
        room = [(w - low, i) for i, (w, low) in enumerate(zip(widths, least, strict=True)) if w > low]
        if not room:
            break
        _, widest = max(room)
        widths[widest] -= 1
        over -= 1
    return widths


def _cell(text: str, width: int, right: bool) -> str:
    if len(text) > width:
        text = text[: max(width - 1, 0)] + "…"
    return text.rjust(width) if right else text.ljust(width)


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
    "--deadline",
    default="10m",
    show_default=True,
    help="With --once: how long the pass may deliver after reading; records still pending then are reported "
    "and the command exits 1 (the next pass delivers them).",
)
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
    "--view-token-file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="File holding a read-only token for the console and the API (default: $SEAMLINE_VIEW_TOKEN): it sees "
    "everything and changes nothing.",
)
@click.option(
    "--state",
    "state_url",
    help="State store URL (default: $SEAMLINE_STATE_URL, the spec's state.url, or sqlite:///.seamline/<client>.db).",
)
@click.option(
    "--workers",
    default=64,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Records in delivery at once per process (each system's limits bound its own requests; at most 64 Mi "
    "characters of record text are held).",
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Deliver from this many processes (one per core): this one serves the API and triggers (with --once: "
    "reads the batch), the others only deliver, on the same state.",
)
@click.option("--delivery-part", type=int, default=0, hidden=True)
@click.option("--delivery-channel", type=int, default=None, hidden=True)
@click.option(
    "--lease",
    default=60.0,
    show_default=True,
    type=click.FloatRange(1, 3600),
    help="Seconds a claimed record stays a worker's unless renewed (a live process renews every third of this); "
    "after a crash, a shared store waits this long.",
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
    deadline: str,
    dry_run: bool,
    host: str,
    port: int,
    dev: bool,
    token_file: Path | None,
    view_token_file: Path | None,
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
    if dry_run and processes > 1:
        raise UsageError("--processes is for delivering; --dry-run delivers nothing (leave --processes out)")
    token = token_file.read_text(encoding="utf-8").strip() if token_file else os.environ.get("SEAMLINE_API_TOKEN")
    view = (
        view_token_file.read_text(encoding="utf-8").strip()
        if view_token_file
        else os.environ.get("SEAMLINE_VIEW_TOKEN")
    )
    options = DaemonOptions(
        host=host,
        port=port,
        token=token or None,
        view_token=view or None,
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
            summary = asyncio.run(
                run_once(
                    spec,
                    options,
                    dry_run=dry_run,
                    progress=None if dry_run else progress,
                    deadline=_parsed(parse_duration, deadline, "--deadline"),
                )
            )
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
@_format_option
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def runs(client: str, flow_name: str | None, limit: int, fmt: str, state_url: str | None, specs_dir: Path) -> None:
    """Recent batch runs of CLIENT's flows, newest first."""
    from engine.runtime.views import run_json

    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        records = store.runs(flow_name, limit)
    if fmt == "json":
        _echo_json({"runs": [run_json(r) for r in records]})
        return
    if not records:
        click.echo("no runs yet")
        return
    columns = (
        Column("id", right=True),
        Column("flow"),
        Column("kind"),
        Column("started (UTC)"),
        Column("took", right=True),
        Column("status"),
        Column("counts", cut=True),
    )
    rows = [
        [
            str(r.id),
            r.flow,
            r.kind,
            _when(r.started_at),
            f"{r.finished_at - r.started_at:.1f}s" if r.finished_at else "running",
            r.status,
            " ".join(f"{k}={v}" for k, v in sorted(r.counts.items()) if v or k == "read"),
        ]
        for r in records
    ]
    _echo_table(columns, rows)


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


DEFAULT_URL = "http://127.0.0.1:8700"


class DaemonSaidNo(SeamlineError):
    """The running daemon could not be reached, or did not do what it was asked (busy, refused, unknown)."""


@dataclass(frozen=True, slots=True)
class _DaemonApi:
    """A client of a running daemon's JSON API (engine/runtime/admin_api.py) for ``trigger`` and ``reload``."""

    url: str
    token: str | None

    @classmethod
    def for_client(cls, client: str, url: str | None, token_file: Path | None, specs_dir: Path) -> _DaemonApi:
        """The daemon at ``url`` ($SEAMLINE_URL, else the default port on loopback), once it says it runs ``client``:
        a command meant for one client never acts on another client's daemon."""
        token = token_file.read_text(encoding="utf-8").strip() if token_file else os.environ.get("SEAMLINE_API_TOKEN")
        api = cls((url or os.environ.get("SEAMLINE_URL") or DEFAULT_URL).rstrip("/"), token or None)
        expected = _client_name(client, specs_dir)
        running = api.call("GET", "/api/spec", timeout=10)[1].get("client")
        if running != expected:
            raise DaemonSaidNo(
                f"the daemon at {api.url} runs client '{running}', not '{expected}': pass the URL of {expected}'s "
                "daemon with --url (or $SEAMLINE_URL)"
            )
        return api

    def call(self, method: str, path: str, *, timeout: float) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one call; a daemon that does not answer, refuses the token or answers something
        other than this API's JSON is a :class:`DaemonSaidNo` saying what to do."""
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            answer = httpx.request(method, self.url + path, headers=headers, timeout=timeout)
        except httpx.TimeoutException:
            raise DaemonSaidNo(
                f"the daemon at {self.url} did not answer {method} {path} within {timeout:g} s"
            ) from None
        except httpx.TransportError:
            raise DaemonSaidNo(
                f"no seamline daemon answers at {self.url}: is it running? pass --url (or set $SEAMLINE_URL)"
            ) from None
        if answer.status_code == 401:
            raise DaemonSaidNo(
                f"the daemon at {self.url} refused the API token: set $SEAMLINE_API_TOKEN or pass --token-file with "
                "the token the daemon runs with"
            )
        try:
            body = answer.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or (answer.status_code == 404 and "status" not in body):
            raise DaemonSaidNo(
                f"the server at {self.url} answered {method} {path} with HTTP {answer.status_code}, not as a seamline "
                "daemon's operator API does (an older seamline, or another server on that port?)"
            )
        return answer.status_code, body


def _client_name(client: str, specs_dir: Path) -> str:
    """The client a CLIENT argument names: the spec's ``client:`` where a spec is found for it, else the name."""
    try:
        path = _client_spec_path(client, specs_dir)
    except UsageError:
        return client
    merged = resolve_spec(path, str(path))
    named = merged.data.get("client") if isinstance(merged.data, dict) else None
    return str(named) if named else client


def _daemon_options(func: Callable[P, R]) -> Callable[P, R]:
    """--url, --token-file and --specs of the commands that talk to a running daemon."""
    func = click.option(
        "--specs",
        "specs_dir",
        type=click.Path(path_type=Path),
        default=Path("specs"),
        show_default=True,
        help="Folder holding one folder per client: where CLIENT's spec (and so its name) is found.",
    )(func)
    func = click.option(
        "--token-file",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        help="File holding the daemon's API token (default: $SEAMLINE_API_TOKEN).",
    )(func)
    return click.option("--url", help=f"The daemon's API (default: $SEAMLINE_URL, else {DEFAULT_URL}).", default=None)(
        func
    )


@main.command()
@click.argument("client")
@click.argument("flow")
@_daemon_options
@_handle_errors
def trigger(client: str, flow: str, url: str | None, token_file: Path | None, specs_dir: Path) -> None:
    """Start a pass of FLOW's schedule now in CLIENT's running daemon, as its cron would.

    Exit 0 when the pass started; 1 when a pass is running already, the flow is unknown or has no schedule.
    """
    from urllib.parse import quote

    api = _DaemonApi.for_client(client, url, token_file, specs_dir)
    status, body = api.call("POST", f"/api/flows/{quote(flow, safe='')}/run", timeout=30)
    outcome, message = body.get("status", f"HTTP {status}"), body.get("message") or body.get("error", "")
    if outcome != "started":
        raise DaemonSaidNo(f"{outcome}: {message}")
    click.echo(f"started: {message}; follow it with 'seamline runs {client} --flow {flow}'")


@main.command()
@click.argument("client")
@_daemon_options
@_handle_errors
def reload(client: str, url: str | None, token_file: Path | None, specs_dir: Path) -> None:
    """Make CLIENT's running daemon load its spec from disk again, without a restart.

    The new spec is validated and its systems opened before anything stops; a broken one is refused with its
    errors and the running one keeps running (exit 1). Records in flight finish with the version they began with.
    """
    api = _DaemonApi.for_client(client, url, token_file, specs_dir)
    # a reload drains the workers (up to the daemon's drain timeout) before it answers
    _status, body = api.call("POST", "/api/reload", timeout=300)
    if not body.get("reloaded"):
        errors = "".join(f"\n  {error}" for error in body.get("errors", []))
        raise DaemonSaidNo(f"reload refused: {body.get('message') or body.get('error', '')}{errors}")
    if body.get("spec_version") == body.get("previous"):
        click.echo(f"unchanged: {body.get('message', '')}")
    else:
        click.echo(f"reloaded: {body.get('message', '')} (was {body.get('previous')})")


@main.group()
def dlq() -> None:
    """Dead letters: records that could not be delivered, with their reasons; replay them after a fix."""


@dlq.command("list")
@click.argument("client")
@click.option("--flow", "flow_name")
@click.option("--all", "include_replayed", is_flag=True, help="Include letters already replayed.")
@_format_option
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def dlq_list(
    client: str, flow_name: str | None, include_replayed: bool, fmt: str, state_url: str | None, specs_dir: Path
) -> None:
    """List dead letters, oldest first: id, when, flow, kind, key, target, reason."""
    from engine.runtime.views import dead_letter_json

    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        letters = store.dead_letters(flow_name, include_replayed=include_replayed)
    if fmt == "json":
        _echo_json({"dead_letters": [dead_letter_json(d) for d in letters], "total": len(letters)})
        return
    if letters:
        columns = [
            Column("id", right=True),
            Column("created (UTC)"),
            Column("flow"),
            Column("kind"),
            Column("key", cut=True),
            Column("target"),
            Column("reason", cut=True),
        ]
        rows = [
            [str(d.id), _when(d.created_at), d.flow, d.error_kind, d.key, d.target or "-", d.reason] for d in letters
        ]
        if include_replayed:
            columns.insert(2, Column("replayed (UTC)"))
            for row, letter in zip(rows, letters, strict=True):
                row.insert(2, _when(letter.replayed_at) if letter.replayed_at else "-")
        _echo_table(columns, rows)
    click.echo(f"{len(letters)} dead letter(s)")


@dlq.command("show")
@click.argument("client")
@click.argument("letter_id", type=int)
@_format_option
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def dlq_show(client: str, letter_id: int, fmt: str, state_url: str | None, specs_dir: Path) -> None:
    """One dead letter in full: reason, target, spec version and the record as it arrived."""
    from engine.runtime.replay import one_letter
    from engine.runtime.views import dead_letter_json

    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        letter, superseded = one_letter(store, letter_id)
    if letter is None:
        raise UsageError(f"no dead letter {letter_id}; see 'seamline dlq list {client}'")
    if fmt == "json":
        _echo_json({**dead_letter_json(letter, record=True), "superseded": superseded})
        return
    fields = {
        "flow": letter.flow,
        "business key": letter.business_key,
        "key": letter.key,
        "kind": letter.error_kind,
        "target": letter.target or "-",
        "reason": letter.reason,
        "spec version": letter.spec_version or "-",
        "created": f"{_when(letter.created_at)} UTC",
        "replayed": f"{_when(letter.replayed_at)} UTC" if letter.replayed_at else "no",
    }
    if superseded:
        fields["superseded"] = "yes: a newer change of this record was delivered since; a replay skips it (--force)"
    click.echo(f"dead letter {letter.id}")
    width = max(len(name) for name in fields) + 1
    for name, value in fields.items():
        click.echo(f"  {name + ':':<{width}} {value}")
    click.echo("record:")
    click.echo(json.dumps(letter.payload, indent=2, ensure_ascii=False))


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
    from engine.runtime.replay import other_versions, replay_dead_letters

    if not flow_name and not ids:
        raise UsageError("say which: --flow F, --id N (repeatable), or both")
    on_disk = spec_version(load_client(_client_spec_path(client, specs_dir), environ=dict(os.environ)))
    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        for daemon in other_versions(store, on_disk, seen_within=3 * HEARTBEAT):
            click.echo(
                f"warning: the running daemon {daemon.name} runs spec version {daemon.spec_version}, the spec on "
                f"disk is {on_disk}: the replayed letters are delivered with the running version, so a fix made "
                f"on disk (a mapping, a lookup table) is not in effect yet; restart the daemon (or 'seamline reload "
                f"{client}'), then replay",
                err=True,
            )
        outcome = replay_dead_letters(
            store, flow=flow_name, ids=ids, force=force, spec_version=on_disk, by=f"{getpass.getuser()}@{HOST}"
        )
    click.echo(f"replayed {outcome.replayed} dead letter(s)")
    if outcome.skipped:
        listed = ", ".join(str(i) for i in outcome.skipped)
        click.echo(
            f"skipped {len(outcome.skipped)} superseded (a newer change of the same record was delivered since): "
            f"{listed}; --force replays them anyway"
        )
    if outcome.not_found:
        listed = ", ".join(str(i) for i in outcome.not_found)
        click.echo(f"not open dead letters (unknown, replayed already, or another flow's): {listed}", err=True)


@dlq.command("history")
@click.argument("client")
@click.option("--limit", default=20, show_default=True, type=int)
@_format_option
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def dlq_history(client: str, limit: int, fmt: str, state_url: str | None, specs_dir: Path) -> None:
    """Past replays, newest first: when, by whom, which letters, how many went back and how many were skipped."""
    from engine.runtime.views import replay_json

    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        records = store.replays(limit)
    if fmt == "json":
        _echo_json({"replays": [replay_json(r) for r in records]})
        return
    if not records:
        click.echo("no replays yet")
        return
    columns = (
        Column("id", right=True),
        Column("when (UTC)"),
        Column("by", cut=True),
        Column("flow"),
        Column("replayed", right=True),
        Column("skipped", right=True),
        Column("spec"),
        Column("letters", cut=True),
    )
    rows = [
        [
            str(r.id),
            _when(r.at),
            r.by,
            r.flow or "-",
            str(r.replayed),
            str(r.skipped),
            r.spec_version or "-",
            ",".join(str(i) for i in r.letters) + (" (--force)" if r.forced else ""),
        ]
        for r in records
    ]
    _echo_table(columns, rows)


@main.group()
def state() -> None:
    """Inspect and adjust a client's state: inbox depth, cursors."""


@state.command("version")
@click.argument("client")
@_format_option
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def state_version(client: str, fmt: str, state_url: str | None, specs_dir: Path) -> None:
    """The store's schema version and this seamline's, read without changing the store."""
    from engine.flow import load_client
    from engine.runtime.daemon import resolve_state_url
    from engine.secrets import Masker
    from engine.state import stored_version
    from engine.state.sql import MIGRATIONS

    compiled = load_client(_client_spec_path(client, specs_dir), environ=dict(os.environ))
    url = resolve_state_url(compiled, state_url, os.environ, Masker())
    shown_url = url.split("?")[0]
    found = stored_version(url)
    known = len(MIGRATIONS)
    if found is None:
        verdict = "missing"
    elif found == known:
        verdict = "up to date"
    elif found < known:
        verdict = f"older: the daemon migrates it in place when it starts ({known - found} step(s))"
    else:
        verdict = "newer than this seamline: a newer seamline wrote it; upgrade seamline to use it"
    if fmt == "json":
        _echo_json({"seamline_schema": known, "store": shown_url, "store_schema": found, "verdict": verdict})
    else:
        click.echo(f"this seamline: schema {known}")
        if found is not None:
            click.echo(f"the store at {shown_url}: schema {found}, {verdict}")
    if found is None:
        raise NoState(f"no state for client '{compiled.client}' at {shown_url}")
    if found > known:
        sys.exit(1)


@state.command("show")
@click.argument("client")
@_format_option
@click.option("--state", "state_url")
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@_handle_errors
def state_show(client: str, fmt: str, state_url: str | None, specs_dir: Path) -> None:
    """Inbox depth per status, deliveries, and each flow's items and cursor."""
    from engine.runtime.views import STATUSES, depth_json

    with _operator_store(client, specs_dir, state_url, read_only=True) as store:
        depth, per_flow, cursors, deliveries = store.depth(), store.depth_by_flow(), store.cursors(), store.deliveries()
        url = store.url
    flows = sorted(set(per_flow) | set(cursors))
    if fmt == "json":
        shown = [{"flow": f, "inbox": depth_json(per_flow.get(f)), "cursor": cursors.get(f)} for f in flows]
        _echo_json({"state": url, "inbox": depth_json(depth), "deliveries": deliveries, "flows": shown})
        return
    click.echo(f"state: {url}")
    click.echo("inbox: " + ", ".join(f"{k}={v}" for k, v in depth.items()) + f"; deliveries={deliveries}")
    if flows:
        columns = (Column("flow"), *(Column(s, right=True) for s in STATUSES), Column("cursor", cut=True))
        rows = [[f, *(str(depth_json(per_flow.get(f))[s]) for s in STATUSES), cursors.get(f) or "-"] for f in flows]
        _echo_table(columns, rows)


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
