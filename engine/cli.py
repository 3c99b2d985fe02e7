"""The ``seamline`` command line: thin commands that parse, call the engine and print.

Exit codes come from the exception classes (:mod:`engine.errors`): 0 fine, 1 invalid input or
a failed run, 2 a usage error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from engine import __version__
from engine.connector import default_registry
from engine.errors import SeamlineError, UsageError
from engine.playground import play, watch_and_play
from engine.spec import SPEC_FILENAME, discover_specs, resolve_spec, spec_json_schema, validate_spec
from engine.spec.report import render_effective_spec, render_reports
from engine.testing import run_golden
from engine.transform import BACKENDS

__all__ = ["main"]

P = ParamSpec("P")
R = TypeVar("R")

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
    click.echo(render_effective_spec(merged, fmt))  # type: ignore[arg-type]


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
