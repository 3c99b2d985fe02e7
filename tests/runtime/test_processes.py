"""``seamline run --processes N``: the primary plus delivery processes, as real subprocesses on one state store.

Every scenario counts what the target applied (the fake does not apply a resend with an Idempotency-Key it
has seen): each record exactly once, nothing lost, whichever process delivered it and whatever got killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from connectors.http.fake import FakeHttpServer
from engine.cli import main
from engine.connector import Limits
from engine.errors import UsageError
from engine.flow import load_client
from engine.runtime.guards import Budget
from engine.runtime.once import OUTCOME_COLUMNS
from engine.runtime.processes import delivery_worker, plan_layout
from engine.state import hold_sqlite_owner
from tests.runtime.harness import DaemonProcess, wait_for

SPEC = """\
seamline: 1
client: proctest
systems:
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    limits: { concurrency: 8, timeout: 5s }
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
flows:
  stock:
    trigger: { event: { webhook: /hooks/stock, id: material } }
    transform: '{ "sku": material, "qty": $number(qty) }'
    target: { system: shop, write: stock, key: sku }
"""

PINNED_SPEC = """\
seamline: 1
client: pintest
systems:
  shop:
    connector: http
    url: "http://127.0.0.1:9/"
    limits: { concurrency: 4 }
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
  legacy:
    connector: http
    url: "http://127.0.0.1:9/"
    limits: { concurrency: 1 }
    endpoints:
      orders: { path: "/orders/{id}", method: PUT }
  erp:
    connector: http
    url: "http://127.0.0.1:9/"
    limits: { concurrency: 4, rate: 10/s }
    endpoints:
      price: { path: /price, method: POST }
flows:
  stock:
    trigger: { event: { webhook: /hooks/stock, id: material } }
    transform: '{ "sku": material }'
    target: { system: shop, write: stock, key: sku }
  orders:
    trigger: { event: { webhook: /hooks/orders, id: id } }
    transform: '{ "id": id }'
    target: { system: legacy, write: orders, key: id }
  price:
    trigger: { request: { path: /price } }
    source: { system: erp, call: price }
    transform: '{ "price": net }'
"""
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def shop() -> Iterator[FakeHttpServer]:
    with FakeHttpServer(port=0) as fake:
        yield fake


def write_spec(root: Path, text: str = SPEC) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "seamline.yaml").write_text(text, encoding="utf-8")
    return root


def daemon_for(root: Path, shop: FakeHttpServer, **kwargs: object) -> DaemonProcess:
    kwargs.setdefault("processes", 2)
    return DaemonProcess(root, root / "state.db", env={"SHOP_URL": shop.url}, **kwargs)  # type: ignore[arg-type]


def applied_once(shop: FakeHttpServer) -> Counter[str]:
    """How many times each resource was applied (idempotent replays excluded)."""
    return Counter(w["path"] for w in shop.writes("/stock/") if not w["duplicate"] and 200 <= int(w["status"]) < 300)


def assert_each_once(shop: FakeHttpServer, count: int) -> None:
    counts = applied_once(shop)
    assert sorted(counts) == sorted(f"/stock/M{i:04d}" for i in range(count))
    assert set(counts.values()) == {1}, [path for path, n in counts.items() if n > 1]


def post(daemon: DaemonProcess, indexes: range | list[int], *, deadline: float = 40.0) -> None:
    """Post events concurrently, each resent until it gets its 202 (as a webhook source does)."""
    until = time.monotonic() + deadline

    def send(client: httpx.Client, i: int) -> None:
        event = {"material": f"M{i:04d}", "qty": str(i)}
        while time.monotonic() < until:
            with contextlib.suppress(httpx.HTTPError):
                response = client.post(f"{daemon.url}/hooks/stock", json=event, headers={"X-Message-Id": f"m-{i}"})
                if response.status_code == 202:
                    return
            time.sleep(0.05)
        raise AssertionError(f"event {i} was never accepted")

    with httpx.Client(timeout=2, limits=httpx.Limits(max_connections=16)) as client, ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(send, client, i) for i in indexes]:
            future.result()


def delivery_started(daemon: DaemonProcess) -> list[dict[str, object]]:
    """The primary's delivery_process_started lines, oldest first."""
    return [e for e in daemon.log_events() if e["event"] == "delivery_process_started"]


def delivery_pids(daemon: DaemonProcess) -> list[int]:
    return [int(str(e["pid"])) for e in delivery_started(daemon)]


def delivery_up(daemon: DaemonProcess, count: int = 1) -> bool:
    """``count`` delivery processes have said "started" (they claim from then on)."""
    ups = [e for e in daemon.log_events() if e["event"] == "started" and e.get("role") == "delivery"]
    return len(ups) >= count


def gone(pid: int) -> bool:
    """The process has exited (a zombie left to an init that does not reap counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def claimers(state: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT worker FROM inbox WHERE worker IS NOT NULL")}


# -- 1. a stream shared by two processes ---------------------------------------------------------------


def run_stream(daemon: DaemonProcess, shop: FakeHttpServer, count: int) -> None:
    daemon.start()
    wait_for(lambda: delivery_up(daemon), 20, "the delivery process to start")
    post(daemon, range(count))
    wait_for(lambda: shop.applied_count("/stock/") >= count, 30, "every event written")
    # the delivery process reports every second: the sum over both processes arrives soon after
    wait_for(lambda: daemon.metric("seamline_written_total", flow="stock") == count, 10, "/metrics to add up")
    time.sleep(0.3)  # anything extra would arrive now
    assert daemon.terminate() == 0


def test_a_webhook_stream_is_shared_by_both_processes_and_applied_once(tmp_path: Path, shop: FakeHttpServer) -> None:
    shop.configure(latency=0.02)
    daemon = daemon_for(write_spec(tmp_path), shop)
    try:
        run_stream(daemon, shop, 300)
    finally:
        daemon.stop()
    assert_each_once(shop, 300)
    logged = daemon.log_events()
    # the primary claims as <host>:<pid>, a delivery process with its part too
    assert daemon.proc is not None
    primary = delivery_worker(0, daemon.proc.pid)
    assert claimers(tmp_path / "state.db") == {primary, delivery_worker(1, delivery_pids(daemon)[0])}
    assert next(e for e in logged if e["event"] == "started" and "role" not in e)["processes"] == 2
    assert any(e["event"] == "stopped" and e.get("process") == 1 for e in logged)


@pytest.mark.postgres
def test_a_webhook_stream_on_postgresql_state(tmp_path: Path, shop: FakeHttpServer) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    shop.configure(latency=0.02)
    daemon = daemon_for(write_spec(tmp_path), shop, state_url=f"{PG_DSN}?schema={schema}")
    try:
        run_stream(daemon, shop, 300)
        pid = delivery_pids(daemon)[0]
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            rows = conn.execute(f'SELECT DISTINCT worker FROM "{schema}".inbox WHERE worker IS NOT NULL').fetchall()
    finally:
        daemon.stop()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert_each_once(shop, 300)
    assert daemon.proc is not None
    assert {row[0] for row in rows} == {delivery_worker(0, daemon.proc.pid), delivery_worker(1, pid)}


# -- 2. and 3. kill -9 of either side ------------------------------------------------------------------


def test_kill_9_of_the_primary_stops_its_delivery_process_and_a_restart_delivers_the_rest(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    shop.configure(latency=0.02)
    daemon = daemon_for(write_spec(tmp_path), shop)
    killed = threading.Event()
    failures: list[BaseException] = []

    def sender() -> None:
        try:
            post(daemon, range(200))
            assert killed.wait(30)
            post(daemon, range(200, 300))  # the rest of the stream: resent until the restarted daemon takes it
        except BaseException as exc:
            failures.append(exc)

    try:
        daemon.start()
        wait_for(lambda: delivery_up(daemon), 20, "the delivery process to start")
        pid = delivery_pids(daemon)[0]
        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        wait_for(lambda: shop.applied_count("/stock/") >= 40, 30, "the first events written")
        daemon.kill9()
        killed.set()
        wait_for(lambda: gone(pid), 15, f"the delivery process {pid} to stop without its primary")
        logged = [e for e in daemon.log_events() if e.get("process") == 1]
        assert any(e["event"] == "primary_gone" for e in logged)
        assert any(e["event"] == "stopped" for e in logged)
        daemon.start()
        thread.join(45)
        assert not thread.is_alive() and not failures, failures
        wait_for(lambda: shop.applied_count("/stock/") >= 300, 30, "every event written")
        time.sleep(0.5)  # anything extra would arrive now
    finally:
        daemon.stop()
    assert_each_once(shop, 300)


def test_kill_9_of_the_delivery_process_restarts_it_and_loses_nothing(tmp_path: Path, shop: FakeHttpServer) -> None:
    shop.configure(latency=0.02)
    # The default 60 s lease: the primary gives the killed process's items back at once, nothing waits it out.
    daemon = daemon_for(write_spec(tmp_path), shop)
    try:
        daemon.start()
        wait_for(lambda: delivery_up(daemon), 20, "the delivery process to start")
        pid = delivery_pids(daemon)[0]
        post(daemon, range(300))
        wait_for(lambda: shop.applied_count("/stock/") >= 40, 30, "the first events written")
        os.kill(pid, 9)
        wait_for(lambda: len(delivery_started(daemon)) >= 2, 15, "a new delivery process")
        exited = next(e for e in daemon.log_events() if e["event"] == "delivery_process_exited")
        assert exited["part"] == 1 and exited["code"] == -9 and isinstance(exited["given_back"], int)
        new_pid = delivery_pids(daemon)[1]
        assert new_pid != pid
        wait_for(lambda: delivery_up(daemon, 2), 20, "the new delivery process to start")
        wait_for(lambda: shop.applied_count("/stock/") >= 300, 30, "every event written")
        time.sleep(0.5)
        assert not gone(new_pid)
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
    assert_each_once(shop, 300)


# -- 4. SIGTERM ----------------------------------------------------------------------------------------


def test_sigterm_under_load_drains_both_processes_and_loses_nothing(tmp_path: Path, shop: FakeHttpServer) -> None:
    shop.configure(latency=0.02)
    daemon = daemon_for(write_spec(tmp_path), shop)
    try:
        daemon.start()
        wait_for(lambda: delivery_up(daemon), 20, "the delivery process to start")
        pid = delivery_pids(daemon)[0]
        post(daemon, range(300))  # all accepted (202) before the stop: a backlog in the inbox
        wait_for(lambda: shop.applied_count("/stock/") >= 40, 30, "the first events written")
        assert daemon.terminate() == 0
        assert gone(pid)
        logged = daemon.log_events()
        assert any(e["event"] == "stopped" and e.get("process") == 1 for e in logged)
        primary = [e["event"] for e in logged if "process" not in e]
        assert "stopping" in primary and primary[-1] == "stopped"
        assert not any(e["event"] in ("delivery_process_exited", "delivery_process_killed") for e in logged)
        daemon.start()
        wait_for(lambda: shop.applied_count("/stock/") >= 300, 30, "every event written after the restart")
        time.sleep(0.5)
    finally:
        daemon.stop()
    assert_each_once(shop, 300)


# -- 5. the pieces ------------------------------------------------------------------------------------


def test_plan_layout_pins_a_system_too_small_to_split(tmp_path: Path) -> None:
    client = load_client(write_spec(tmp_path, PINNED_SPEC) / "seamline.yaml", environ={})
    limits = {name: options.limits for name, options in client.report.systems.items()}
    layout = plan_layout(client, ["stock", "orders", "price"], limits, 2)
    assert layout.pinned == frozenset({"legacy"})
    assert layout.shared_flows == ("stock",)
    assert layout.share("legacy", 1) == (0, 1) and layout.share("shop", 1) == (1, 2)
    assert layout.share("erp", 0) == (0, 1), "a system only the primary reads keeps its whole budget"
    single = plan_layout(client, ["stock", "orders"], limits, 1)
    assert single.pinned == frozenset() and single.share("legacy", 0) == (0, 1)


def test_budget_share_splits_concurrency_and_rate() -> None:
    limits = Limits(concurrency=5, rate="10/s")
    first, second = Budget(limits, share=(0, 2)), Budget(limits, share=(1, 2))
    assert (first.concurrency, second.concurrency) == (3, 2)
    assert (first.rate, second.rate) == (5.0, 5.0)
    whole = Budget(limits)
    assert (whole.concurrency, whole.rate) == (5, 10.0)
    with pytest.raises(ValueError, match="cannot be split"):
        Budget(Limits(concurrency=1), share=(1, 2))


def test_hold_sqlite_owner_waits_for_the_holder_and_names_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'client.db'}"
    holder = hold_sqlite_owner(url, wait=0.2)
    assert holder is not None
    try:
        with pytest.raises(UsageError) as raised:
            hold_sqlite_owner(url, wait=0.2)
        assert str(tmp_path / "client.db") in str(raised.value)
        assert f"pid {os.getpid()}" in str(raised.value)  # who holds it
    finally:
        os.close(holder)
    again = hold_sqlite_owner(url, wait=0.2)
    assert again is not None
    os.close(again)
    assert hold_sqlite_owner("sqlite:///:memory:", wait=0.2) is None


# -- 6. usage errors ----------------------------------------------------------------------------------


def test_processes_with_a_dry_run_or_an_in_memory_store_is_a_usage_error(tmp_path: Path) -> None:
    root = write_spec(tmp_path, BATCH_SPEC)
    runner = CliRunner()
    result = runner.invoke(
        main, ["run", str(root), "--once", "--dry-run", "--processes", "2"], env={"SHOP_URL": "http://x"}
    )
    assert result.exit_code == 2, result.output
    assert "--dry-run delivers nothing" in result.output
    result = runner.invoke(
        main,
        ["run", str(root), "--dev", "--processes", "2", "--state", "sqlite:///:memory:"],
        env={"SHOP_URL": "http://127.0.0.1:9"},
    )
    assert result.exit_code == 2, result.output
    assert "sqlite:///:memory:" in result.output and "--processes" in result.output
    result = runner.invoke(main, ["run", str(root), "--processes", "0"])
    assert result.exit_code == 2 and "--processes" in result.output


# -- 7. a batch pass over two processes ------------------------------------------------------------------

BATCH_SPEC = """\
seamline: 1
client: batchproc
systems:
  erp:
    connector: file
    directory: drop
    poll: 50ms
    settle: 0s
    drops:
      stock: { pattern: "stock*.jsonl", format: jsonl }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    limits: { concurrency: 8, timeout: 5s }
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
flows:
  stock:
    trigger: { schedule: 1h }
    source: { system: erp, read: stock, id: sku, page_size: 100 }
    transform: '{ "sku": sku, "qty": $number(qty) }'
    target: { system: shop, write: stock, key: sku }
"""


def test_run_once_with_two_processes_delivers_a_batch_from_both_and_counts_every_record_once(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    """`run --once --processes 2`: this process reads, both deliver; the summary adds up both processes'
    counts (the delivery process's last report is read before the summary is made)."""
    shop.configure(latency=0.03)  # the batch outlasts the delivery process's start
    root = write_spec(tmp_path, BATCH_SPEC)
    (root / "drop").mkdir()
    count = 600
    lines = [json.dumps({"sku": f"M{i:04d}", "qty": str(i)}) for i in range(count)]
    (root / "drop" / "stock-1.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    state = tmp_path / "state.db"
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", str(root), "--once", "--processes", "2", "--log-level", "info"],
        env={**os.environ, "SHOP_URL": shop.url, "SEAMLINE_STATE_URL": f"sqlite:///{state}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_each_once(shop, count)
    row = next(line for line in result.stdout.splitlines() if line.strip("│ ").startswith("stock"))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:8] == ["stock", str(count), str(count), str(count), "0", "0", "0", "0"], row
    workers = claimers(state)
    assert len(workers) == 2 and any(w.endswith("/delivery-1") for w in workers), (workers, result.stderr)


def _once(root: Path, state: Path, shop: FakeHttpServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "run", str(root), "--once", *args],
        env={**os.environ, "SHOP_URL": shop.url, "SEAMLINE_STATE_URL": f"sqlite:///{state}", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _summary_row(output: str) -> dict[str, int]:
    row = next(line for line in output.splitlines() if line.strip("│ ").startswith("stock"))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    return dict(zip(OUTCOME_COLUMNS, (int(c) for c in cells[1:8]), strict=True))


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_pass_cut_short_by_its_deadline_counts_each_record_in_one_column_and_exits_1(
    tmp_path: Path, shop: FakeHttpServer, processes: str
) -> None:
    """Every worker (the delivery process's too) stops before the pass counts: what was written is delivered,
    the rest is pending in the inbox, nothing in both or neither; the next pass delivers the rest once."""
    shop.configure(latency=0.05)
    root = write_spec(tmp_path, BATCH_SPEC.replace("concurrency: 8", "concurrency: 2"))
    (root / "drop").mkdir()
    count = 400
    lines = [json.dumps({"sku": f"M{i:04d}", "qty": str(i)}) for i in range(count)]
    (root / "drop" / "stock-1.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    state = tmp_path / "state.db"
    cut = _once(root, state, shop, "--deadline", "1s", "--processes", processes)
    assert cut.returncode == 1, cut.stdout + cut.stderr
    row = _summary_row(cut.stdout)
    assert row["records"] == count and row["delivered"] > 0 and row["pending"] > 0, row
    assert row["delivered"] + row["pending"] == count and row["dead_lettered"] == row["skipped"] == 0, row
    assert shop.applied_count("/stock/") == row["delivered"]  # nothing written that the summary did not count
    assert f"the pass stopped after 1 s with {row['pending']} record(s) pending" in cut.stdout
    shop.configure(latency=0.0)  # the slow shop was there to cut the first pass short; the rest goes at speed
    rest = _once(root, state, shop, "--processes", processes)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert _summary_row(rest.stdout)["delivered"] == row["pending"]
    assert_each_once(shop, count)
