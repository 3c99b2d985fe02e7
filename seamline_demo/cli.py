"""``seamline demo``: the command the demo package adds to seamline (entry point ``seamline.commands``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

__all__ = ["demo"]


@click.command()
@click.option("--specs", "specs_dir", type=click.Path(path_type=Path), default=Path("specs"), show_default=True)
@click.option(
    "--amqp-url",
    envvar="AMQP_URL",
    help="RabbitMQ for the event flows (env AMQP_URL); without it the embedded durable queue is used.",
)
@click.option("--keep", type=click.Path(path_type=Path), help="Keep the state, queue and daemon log in this folder.")
def demo(specs_dir: Path, amqp_url: str | None, keep: Path | None) -> None:
    """All five flows end to end on this machine: a real Tryton ERP, Magento and Salesforce fakes, the daemon.

    Starts everything on loopback, drives sample traffic (a product discontinued, a cart price, a stock
    count, a registration, a party change, an order and its shipment) and prints what happened per flow.
    """
    import signal
    import tempfile

    from rich.console import Console
    from rich.table import Table

    from seamline_demo import DemoUnavailable, run_demo

    console = Console()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a plain SIGTERM still stops Tryton and the fakes
    if not (specs_dir / "demo" / "seamline.yaml").is_file():
        raise click.UsageError(f"no demo spec at {specs_dir / 'demo' / 'seamline.yaml'}; run from the repository root")
    with tempfile.TemporaryDirectory(prefix="seamline-demo-") as scratch:
        workdir = keep or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            report = run_demo(specs_dir, workdir, amqp_url=amqp_url, say=lambda text: console.print(f"[dim]{text}[/]"))
        except DemoUnavailable as exc:
            raise click.UsageError(str(exc)) from exc
    table = Table(title=f"seamline demo — bus: {report.bus}")
    for column in ("flow", "ok", "what happened", "latency"):
        table.add_column(column)
    for result in report.results:
        happened = result.detail or _describe(result.arrived)
        latency = f"{result.latency_s:.2f} s" if result.latency_s is not None else ""
        table.add_row(result.flow, "[green]yes[/]" if result.ok else "[red]NO[/]", happened, latency)
    console.print(table)
    console.print(f"whole demo {report.wall_s:.1f} s (of which starting the systems {report.setup_s:.1f} s)")
    if not report.ok:
        raise SystemExit(1)


def _describe(arrived: dict[str, object], limit: int = 110) -> str:
    text = ", ".join(f"{k}: {json.dumps(v, default=str)}" for k, v in arrived.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"
