"""The tools tell the truth: schedules that fail say so, readiness shows a stopped trigger, and more (issue 14)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.http.fake import FakeHttpServer
from engine.connector import Source
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.spec.model import Flow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SPEC = """\
seamline: 1
client: truthful
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    endpoints:
      products: { path: /products }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
flows:
  catalog:
    trigger: { schedule: { every: 100ms } }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: shop, write: products, key: sku }
"""


@pytest.fixture
def fakes() -> Iterator[tuple[FakeHttpServer, FakeHttpServer]]:
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        yield erp, shop


@asynccontextmanager
async def running(root: Path, text: str, env: dict[str, str]) -> AsyncIterator[Daemon]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "seamline.yaml").write_text(text, encoding="utf-8")
    options = DaemonOptions(
        port=free_port(), dev=True, workers=2, drain_timeout=5, state_url=f"sqlite:///{root / 's.db'}"
    )
    daemon = Daemon(root / "seamline.yaml", options, environ={**os.environ, **env}, log_stream=io.StringIO())
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def events(daemon: Daemon) -> list[dict[str, Any]]:
    stream = daemon.log.stream
    assert isinstance(stream, io.StringIO)
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def gauge(daemon: Daemon, name: str, **labels: str) -> float | None:
    for line in daemon.metrics.render().splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


class _Broken(Source):
    """A source connection with a bug: its read raises what no connector may raise."""

    def read(self, *_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug in the connector")

    async def close(self) -> None:
        pass


def test_a_schedule_pass_that_breaks_is_logged_counted_and_the_next_pass_still_runs(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes

    async def scenario() -> None:
        async with running(tmp_path, SPEC, {"ERP_URL": erp.url, "SHOP_URL": shop.url}) as daemon:
            schedule = daemon.schedules["catalog"]
            healthy = schedule.system
            # The same system (its budget and breaker) around a connection whose read has a bug.
            schedule.system = dataclasses.replace(healthy, connection=_Broken())
            await asyncio.sleep(0.35)
            assert any(e["event"] == "schedule_error" and "a bug" in e["error"] for e in events(daemon))
            assert (gauge(daemon, "seamline_schedule_errors_total", flow="catalog") or 0) >= 2
            schedule.system = healthy
            erp.seed("/products", [{"id": "A", "sku": "A", "changed": "2025-01-01T00:00:00Z"}])
            deadline = time.monotonic() + 5
            while not shop.writes("/products/A") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert shop.writes("/products/A"), "the schedule kept running and delivered after the fault"

    asyncio.run(scenario())


def test_a_schedule_that_stops_marks_readyz_degraded_and_its_gauge_zero(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    erp, shop = fakes

    async def scenario() -> None:
        async with running(tmp_path, SPEC, {"ERP_URL": erp.url, "SHOP_URL": shop.url}) as daemon:
            url = f"http://127.0.0.1:{daemon.options.port}/readyz"
            async with httpx.AsyncClient() as client:
                assert (await client.get(url)).status_code == 200
                assert gauge(daemon, "seamline_trigger_up", flow="catalog") == 1

                def never(_after: float) -> float:
                    raise ValueError("no next time")

                daemon.schedules["catalog"].next_fire = never  # type: ignore[method-assign]
                await asyncio.sleep(0.3)
                answer = await client.get(url)
                assert answer.status_code == 503
                assert answer.json()["status"] == "degraded"
                assert "no next time" in answer.json()["stopped"]["catalog"]
                assert gauge(daemon, "seamline_trigger_up", flow="catalog") == 0
                assert any(e["event"] == "schedule_stopped" and e["level"] == "error" for e in events(daemon))

    asyncio.run(scenario())


def test_a_cron_runs_in_its_schedules_time_zone(tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]) -> None:
    """'0 2 * * *' in Europe/Berlin is 01:00 UTC in winter and 00:00 UTC in summer."""
    from engine.runtime.triggers import ScheduleTrigger

    def fire(tz: str, after: datetime) -> datetime:
        flow = Flow.model_validate(
            {
                "trigger": {"schedule": {"cron": "0 2 * * *", "timezone": tz}},
                "source": {"system": "erp", "read": "products"},
                "target": {"system": "shop", "write": "products"},
            }
        )
        trigger = ScheduleTrigger.__new__(ScheduleTrigger)
        trigger.flow = type("F", (), {"flow": flow})()  # type: ignore[assignment]
        return datetime.fromtimestamp(trigger.next_fire(after.timestamp()), tz=UTC)

    assert fire("Europe/Berlin", datetime(2025, 1, 15, 12, tzinfo=UTC)) == datetime(2025, 1, 16, 1, tzinfo=UTC)
    assert fire("Europe/Berlin", datetime(2025, 7, 15, 12, tzinfo=UTC)) == datetime(2025, 7, 16, 0, tzinfo=UTC)
    assert fire("UTC", datetime(2025, 7, 15, 12, tzinfo=UTC)) == datetime(2025, 7, 16, 2, tzinfo=UTC)


# -- 7. state in one place ----------------------------------------------------------------------------

LOOKUP_SPEC = """\
seamline: 1
client: placed
systems:
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
lookups:
  units: lookups/units.csv
flows:
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    transform: '{ "sku": sku, "qty": qty * $lookup($lookups.units, unit) }'
    target: { system: shop, write: stock, key: sku }
"""


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        cwd=cwd,
        env={**os.environ, "SHOP_URL": "http://127.0.0.1:9", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout, done.stderr


def placed_client(root: Path) -> Path:
    spec_dir = root / "clients" / "placed"
    (spec_dir / "lookups").mkdir(parents=True)
    (spec_dir / "lookups" / "units.csv").write_text("unit,factor\nST,1\n", encoding="utf-8")
    (spec_dir / "seamline.yaml").write_text(LOOKUP_SPEC, encoding="utf-8")
    return spec_dir


def test_read_only_commands_never_create_a_store_and_say_where_they_looked(tmp_path: Path) -> None:
    """Was: run from another directory, `runs` said "No runs yet" and `dlq list` "0 dead letter(s)"."""
    spec_dir = placed_client(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = spec_dir / ".seamline" / "placed.db"
    for command in (["runs"], ["dlq", "list"], ["state", "show"], ["dlq", "show"], ["dlq", "history"]):
        args = [*command, str(spec_dir)] + (["1"] if command == ["dlq", "show"] else [])
        code, out, err = cli(*args, cwd=elsewhere)
        assert code == 1, (command, out, err)
        assert f"no state for client 'placed' at sqlite:///{expected}" in err, (command, err)
    assert not expected.exists() and not (elsewhere / ".seamline").exists()


def test_the_default_state_is_beside_the_spec_whatever_the_working_directory_or_in_seamline_home(
    tmp_path: Path,
) -> None:
    from engine.state import NewItem, open_store

    spec_dir = placed_client(tmp_path)
    store = open_store(f"sqlite:///{spec_dir / '.seamline' / 'placed.db'}")  # what the daemon made
    store.enqueue([NewItem("stock", "A@1", "A", {"sku": "A"}, "test")])
    (item,) = store.claim("w", 1, 60)
    store.dead_letter(item.id, "the shop said no", error_kind="terminal")
    store.close()
    for cwd in (tmp_path, spec_dir, tmp_path / "clients"):
        code, out, err = cli("dlq", "list", str(spec_dir / "seamline.yaml"), cwd=cwd)
        assert code == 0 and "the shop said no" in out and "1 dead letter(s)" in out, (cwd, out, err)
    home = tmp_path / "home"
    code, out, err = cli("state", "show", str(spec_dir), cwd=tmp_path, env={"SEAMLINE_HOME": str(home)})
    assert code == 1 and f"sqlite:///{home / 'placed.db'}" in err


# -- 8. replay is safe ----------------------------------------------------------------------------------


def test_the_spec_version_covers_the_lookup_tables(tmp_path: Path) -> None:
    from engine.flow import load_client
    from engine.runtime.daemon import spec_version

    spec_dir = placed_client(tmp_path)
    before = spec_version(load_client(spec_dir / "seamline.yaml", environ={"SHOP_URL": "http://x"}))
    (spec_dir / "lookups" / "units.csv").write_text("unit,factor\nST,1\nKAR,12\n", encoding="utf-8")
    after = spec_version(load_client(spec_dir / "seamline.yaml", environ={"SHOP_URL": "http://x"}))
    assert before != after


def test_dlq_replay_warns_when_the_running_daemon_runs_another_spec_version_and_is_recorded(tmp_path: Path) -> None:
    """Was: a replay after fixing a lookup table failed again at once, silently, until a restart."""
    from engine.state import NewItem, open_store

    spec_dir = placed_client(tmp_path)
    store = open_store(f"sqlite:///{spec_dir / '.seamline' / 'placed.db'}")
    store.enqueue([NewItem("stock", "A@1", "A", {"sku": "A", "unit": "KAR"}, "test")])
    (item,) = store.claim("w", 1, 60)
    store.dead_letter(item.id, "unit KAR is not in units", error_kind="terminal", spec_version="0ld0ld0ld0ld")
    store.register_daemon("host:4242", "0ld0ld0ld0ld")  # the daemon still runs the spec before the fix
    store.close()
    (spec_dir / "lookups" / "units.csv").write_text("unit,factor\nST,1\nKAR,12\n", encoding="utf-8")
    code, out, err = cli("dlq", "replay", str(spec_dir), "--flow", "stock", cwd=tmp_path)
    assert code == 0 and "replayed 1 dead letter(s)" in out, (out, err)
    assert "runs spec version 0ld0ld0ld0ld" in err and "restart the daemon" in err, err
    code, out, err = cli("dlq", "history", str(spec_dir), cwd=tmp_path)
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.strip().startswith("1 ")]
    assert " stock " in row and row.split()[5:7] == ["1", "0"], out  # replayed 1, skipped 0


# -- 1. one reading path: map, golden cases and the daemon read a file through the flow's own source ---------

DATA = Path(__file__).resolve().parent.parent / "connectors" / "data"
DROP_SPEC = """\
seamline: 1
client: drops
systems:
  erp:
    connector: file
    directory: drop
    poll: 50ms
    settle: 0s
    drops:
      materials: { pattern: "sap_matmas_*.csv", format: csv, delimiter: ";", decimal_comma: true }
      idocs: { pattern: "MATMAS*.xml", format: idoc }
      stock: { pattern: "stock*.jsonl", format: jsonl }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
flows:
  materials:
    trigger: { schedule: 1h }
    source: { system: erp, read: materials, id: MATNR, group_by: MATNR }
    transform: |
      { "sku": $replace(MATNR, /^0+/, ""),
        "kg": rows[0].GEWEI = "G" ? rows[0].BRGEW / 1000 : rows[0].BRGEW,
        "names": $count(rows) }
    target: { system: shop, write: products, key: sku }
  idocs:
    trigger: { schedule: 1h }
    source: { system: erp, read: idocs, id: E1MARAM.MATNR }
    transform: '{ "sku": $replace(E1MARAM.MATNR, /^0+/, "") }'
    target: { system: shop, write: products, key: sku }
  stock:
    trigger: { schedule: 1h }
    source: { system: erp, read: stock, id: sku }
    transform: '{ "sku": sku, "qty": qty * 1 }'
    target: { system: shop, write: products, key: sku }
"""


def drops(root: Path) -> Path:
    (root / "drop").mkdir(parents=True)
    (root / "seamline.yaml").write_text(DROP_SPEC, encoding="utf-8")
    return root / "seamline.yaml"


def mapped(spec: Path, flow: str, sample: Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from engine.cli import main

    result = CliRunner().invoke(
        main, ["map", "--client", str(spec), "--flow", flow, "--input", str(sample)], env={"SHOP_URL": "http://x"}
    )
    return result.exit_code, result.output


def test_map_reads_a_german_csv_with_the_drops_delimiter_decimal_comma_and_grouping(tmp_path: Path) -> None:
    """Was: map guessed the delimiter and ignored decimal_comma; the mapping failed in map (T2001), worked at run."""
    code, output = mapped(drops(tmp_path), "materials", DATA / "sap_matmas_de.csv")
    assert code == 0, output
    assert json.loads(output) == [
        {"shop.products": {"sku": "4711", "kg": 1.25, "names": 2}},
        {"shop.products": {"sku": "4712", "kg": 12.5, "names": 2}},
        {"shop.products": {"sku": "4713", "kg": 0.0045, "names": 2}},
        {"shop.products": {"sku": "4714", "kg": 1.05, "names": 2}},
    ]


def test_map_splits_an_idoc_file_checks_its_segments_and_fails_on_a_bad_one(tmp_path: Path) -> None:
    """Was: a MATMAS file was one record with @SEGMENT keys, and map exited 0."""
    code, output = mapped(drops(tmp_path), "idocs", DATA / "files" / "MATMAS05_missing_segment.xml")
    assert code == 1, output
    lines = output.splitlines()
    assert "rejected at read: MATMAS05_missing_segment.xml: line 32" in output and "E1MARAM" in output
    assert json.loads("\n".join(line for line in lines if not line.startswith("error:"))) == [
        {"shop.products": {"sku": "4712"}}
    ]


def test_map_reads_jsonl_as_json_lines_not_as_csv(tmp_path: Path) -> None:
    """Was: a JSONL file was parsed as CSV."""
    sample = tmp_path / "stock_1.jsonl"
    sample.write_text('{"sku": "A", "qty": 1}\n{"sku": "B", "qty": 2}\n', encoding="utf-8")
    code, output = mapped(drops(tmp_path / "client"), "stock", sample)
    assert code == 0, output
    assert json.loads(output) == [{"shop.products": {"sku": "A", "qty": 1}}, {"shop.products": {"sku": "B", "qty": 2}}]


def test_a_golden_case_reads_its_input_through_the_flows_source(tmp_path: Path) -> None:
    from engine.flow import load_client
    from engine.testing import discover_cases, run_case

    spec = drops(tmp_path / "specs" / "drops")
    case_dir = tmp_path / "golden" / "drops" / "idocs"
    case_dir.mkdir(parents=True)
    shutil.copy(DATA / "files" / "MATMAS05_missing_segment.xml", case_dir / "mixed.input.xml")
    client = load_client(spec, environ={"SHOP_URL": "http://x"})
    (case,) = discover_cases(tmp_path / "golden")
    assert run_case(client, case, update=True).status == "new"
    assert json.loads(case.snapshot_path.read_text()) == {"shop.products": [{"sku": "4712"}]}
    assert "record 1: rejected at read: mixed.input.xml: line 32" in case.error_path.read_text()
    assert run_case(client, case).status == "passed"


# -- 4. a dry run changes nothing -----------------------------------------------------------------------


def test_a_dry_run_moves_no_file_and_the_next_real_run_reads_them_all(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    """Was: the dry run moved the files to archive/, and the next real run read 0 records."""
    _, shop = fakes
    spec = drops(tmp_path)
    shutil.copy(DATA / "sap_matmas_de.csv", tmp_path / "drop" / "sap_matmas_1.csv")
    env = {"SHOP_URL": shop.url}
    state = f"sqlite:///{tmp_path / 'state.db'}"
    code, out, err = cli(
        "run", str(spec), "--once", "--dry-run", "--flow", "materials", "--state", state, cwd=tmp_path, env=env
    )
    assert code == 0, out + err
    assert (tmp_path / "drop" / "sap_matmas_1.csv").exists() and not (tmp_path / "drop" / "archive").exists()
    assert shop.writes() == [] and not (tmp_path / "state.db").exists()
    assert "would write" in out or "materials -> shop.products" in out
    code, out, err = cli("run", str(spec), "--once", "--flow", "materials", "--state", state, cwd=tmp_path, env=env)
    assert code == 0, out + err
    assert len(shop.writes("/products/")) == 4
    assert (tmp_path / "drop" / "archive" / "sap_matmas_1.csv").exists()
