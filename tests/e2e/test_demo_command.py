"""`seamline demo`, the README's first command, as a user runs it: a subprocess from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ["catalog", "contract-price", "inventory", "customers-to-erp", "customers-from-erp", "orders", "order-status"]


def _demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "AMQP_URL"}
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--keep", str(tmp_path / "demo")],
        env={**environ, "COLUMNS": "200", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,  # a machine without the cached Tryton install builds it first (~1 min)
        check=False,
    )


def _rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) >= 2 and cells[0] in FLOWS:
            rows[cells[0]] = cells[1]
    return rows


def test_the_demo_runs_every_flow_on_embedded_defaults(tmp_path: Path) -> None:
    done = _demo(tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "bus: embedded durable queue (SQLite)" in done.stdout
    assert _rows(done.stdout) == dict.fromkeys(FLOWS, "yes"), done.stdout
    assert "whole demo" in done.stdout
    assert (tmp_path / "demo" / "state.db").is_file()  # --keep leaves the state and the daemon log


def test_an_unreachable_broker_falls_back_to_the_embedded_queue_and_says_so() -> None:
    """The demo's choice of bus; from there it runs as the test above (a whole demo takes 15 s on the slower
    machines of the kind, and the suite has ten minutes)."""
    from seamline_demo.scenario import choose_bus

    said: list[str] = []
    assert choose_bus("amqp://guest:secret-pw@127.0.0.1:1/", said.append) == (False, "embedded durable queue (SQLite)")
    assert said == ["RabbitMQ does not answer at amqp://guest:***@127.0.0.1:1/; using the embedded queue instead"]
    said.clear()
    assert choose_bus(None, said.append) == (False, "embedded durable queue (SQLite)")
    assert said == []  # no URL: the embedded queue is the default, nothing to say


def _delete_queue(url: str, name: str) -> None:
    import asyncio

    import aio_pika

    async def delete() -> None:
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(name)

    asyncio.run(delete())


@pytest.mark.rabbitmq
def test_the_demo_uses_rabbitmq_when_an_amqp_url_is_set(tmp_path: Path) -> None:
    url = "amqp://guest:guest@127.0.0.1:5672/"
    _delete_queue(url, "erp.stock.changed")  # a broker that never saw the demo: the demo declares its queue
    done = _demo(tmp_path, AMQP_URL=url)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "bus: RabbitMQ (amqp://guest:***@127.0.0.1:5672/)" in done.stdout
    assert _rows(done.stdout) == dict.fromkeys(FLOWS, "yes"), done.stdout
