"""The operator commands (issue 16, items 2, 5 and 6): `runs`, `dlq` and `state` print a header row, readable UTC
dates and whole values when piped, fit a terminal when on one, and speak JSON with --format json; `seamline trigger`
and `seamline reload` act through the running daemon's API and say plainly when they could not.

Real parts: a `run --once` pass against a fake ERP and a fake shop that refuses a product (a dead letter with a long
reason), the state store it leaves, and a running daemon with its API for `trigger` and `reload`.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from connectors.http.fake import FakeHttpServer
from engine.cli import main
from tests.runtime.operator_harness import TOKEN, LiveDaemon, free_port, live_daemon

SPEC = """\
seamline: 1
client: ops
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
      stock: { path: "/stock/{sku}", method: PUT }
flows:
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: shop, write: products, key: sku }
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    target: { system: shop, write: stock, key: sku }
"""

# The shop's refusal is long: a piped listing shows all of it, a terminal's is cut to fit.
REFUSAL = "sku BAD is not sold here: " + "the product's customs tariff number is missing in the ERP; " * 4
PRODUCTS = [
    {"id": "A", "sku": "A", "changed": "2025-01-01T00:00:00Z"},
    {"id": "BAD", "sku": "BAD", "changed": "2025-01-02T00:00:00Z"},
]
WHEN = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")  # a table's date: readable, in UTC (the column says so)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@dataclass
class Client:
    spec_dir: Path
    state: list[str]  # --state URL
    env: dict[str, str]
    erp: FakeHttpServer
    shop: FakeHttpServer

    def cli(self, *args: str, **env: str) -> Result:
        result = CliRunner().invoke(main, list(args), env={**self.env, **env})
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        return result

    def read(self, command: str, *args: str) -> Result:
        """An operator ``command`` ("dlq list") on this client's store, then ``args``; it must succeed."""
        result = self.cli(*command.split(), str(self.spec_dir), *args, *self.state)
        assert result.exit_code == 0, result.output
        return result


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    spec_dir = tmp_path / "ops"
    spec_dir.mkdir()
    (spec_dir / "seamline.yaml").write_text(SPEC, encoding="utf-8")
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.seed("/products", PRODUCTS)
        shop.fail_next("all", status=400, body={"message": REFUSAL}, path="/products/BAD")
        env = {"ERP_URL": erp.url, "SHOP_URL": shop.url, "COLUMNS": "", "SEAMLINE_URL": "", "SEAMLINE_API_TOKEN": ""}
        made = Client(spec_dir, ["--state", f"sqlite:///{tmp_path / 'state.db'}"], env, erp, shop)
        once = made.cli("run", str(spec_dir), "--once", "--flow", "catalog", *made.state)
        assert once.exit_code == 1, once.output  # the dead letter fails the pass
        yield made


def rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# -- runs, dlq, state: tables and JSON ---------------------------------------------------------------------------


def test_runs_has_a_header_readable_dates_and_json_with_iso_dates(client: Client) -> None:
    header, run = rows(client.cli("runs", str(client.spec_dir), *client.state).output)
    assert header.split() == ["id", "flow", "kind", "started", "(UTC)", "took", "status", "counts"]
    assert run.split()[1:3] == ["catalog", "schedule"] and WHEN.search(run) and " partial " in run
    (shown,) = json.loads(client.read("runs", "--format", "json").output)["runs"]
    assert shown["flow"] == "catalog" and shown["status"] == "partial" and shown["counts"]["read"] == 2
    assert ISO.match(shown["started_at"]) and ISO.match(shown["finished_at"]) and shown["took_s"] >= 0


def test_dlq_list_piped_keeps_whole_values_and_json_has_the_letter(client: Client) -> None:
    listing = client.read("dlq list").output
    header, row, total = rows(listing)
    assert header.split() == ["id", "created", "(UTC)", "flow", "kind", "key", "target", "reason"]
    assert REFUSAL.strip() in row  # not a character cut: a script or grep sees the whole reason
    assert WHEN.search(row) and "BAD@2025-01-02T00:00:00Z" in row and total == "1 dead letter(s)"
    document = json.loads(client.read("dlq list", "--format", "json").output)
    (letter,) = document["dead_letters"]
    assert document["total"] == 1 and letter["business_key"] == "BAD" and letter["kind"] == "terminal"
    assert REFUSAL.strip() in letter["reason"] and ISO.match(letter["created_at"]) and letter["replayed_at"] is None


def test_dlq_list_on_a_terminal_fits_its_width_with_whole_column_names(client: Client) -> None:
    """Run as an operator does, in a 100-column terminal: every line fits, the key and the reason are cut (with an
    ellipsis), the column names are whole."""
    output = in_terminal(["dlq", "list", str(client.spec_dir), *client.state], client.env, columns=100)
    header, row, total = rows(output)
    assert header.split() == ["id", "created", "(UTC)", "flow", "kind", "key", "target", "reason"]
    assert all(len(line) <= 100 for line in rows(output)), output
    assert row.endswith("…") and "  shop.products: s" in row and "BAD@2025-01-02" in row, row
    assert total == "1 dead letter(s)"


def in_terminal(args: list[str], env: dict[str, str], *, columns: int) -> str:
    """The command's output when its stdout is a terminal ``columns`` wide (a pseudo-terminal)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    environ = {k: v for k, v in {**os.environ, **env}.items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args], stdout=follower, stderr=subprocess.PIPE, env=environ
    )
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the command is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    return b"".join(chunks).decode("utf-8").replace("\r\n", "\n")


def test_dlq_show_reads_as_fields_and_json_has_the_record(client: Client) -> None:
    shown = client.read("dlq show", "1").output
    assert shown.startswith("dead letter 1\n")
    assert re.search(r"^  business key: +BAD$", shown, re.M) and re.search(r"^  kind: +terminal$", shown, re.M)
    assert re.search(r"^  created: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", shown, re.M)
    assert REFUSAL.strip() in shown
    assert json.loads(shown.split("record:\n", 1)[1]) == PRODUCTS[1]
    letter = json.loads(client.read("dlq show", "1", "--format", "json").output)
    assert letter["record"] == PRODUCTS[1] and letter["superseded"] is False and ISO.match(letter["created_at"])


def test_dlq_history_after_a_replay_has_a_header_dates_and_json(client: Client) -> None:
    replay = client.cli(
        "dlq", "replay", str(client.spec_dir), "--flow", "catalog", "--id", "1", "--id", "9", *client.state
    )
    assert replay.exit_code == 0 and "replayed 1 dead letter(s)" in replay.output, replay.output
    assert "not open dead letters (unknown, replayed already, or another flow's): 9" in replay.output
    header, row = rows(client.read("dlq history").output)
    assert header.split()[:4] == ["id", "when", "(UTC)", "by"] and header.split()[-3:] == ["skipped", "spec", "letters"]
    assert WHEN.search(row) and row.split()[4:7] == ["catalog", "1", "0"]
    (entry,) = json.loads(client.read("dlq history", "--format", "json").output)["replays"]
    assert entry["flow"] == "catalog" and entry["letters"] == [1] and entry["replayed"] == 1 and ISO.match(entry["at"])


def test_state_show_has_a_row_per_flow_and_json(client: Client) -> None:
    lines = rows(client.read("state show").output)
    assert lines[0].startswith("state: sqlite:///") and "deliveries=1" in lines[1]
    assert lines[2].split() == ["flow", "pending", "inflight", "done", "dead", "cursor"]
    assert lines[3].split() == ["catalog", "0", "0", "1", "1", "2025-01-02T00:00:00Z"]
    document = json.loads(client.read("state show", "--format", "json").output)
    assert document["inbox"] == {"pending": 0, "inflight": 0, "done": 1, "dead": 1} and document["deliveries"] == 1
    assert document["flows"] == [
        {
            "flow": "catalog",
            "inbox": {"pending": 0, "inflight": 0, "done": 1, "dead": 1},
            "cursor": "2025-01-02T00:00:00Z",
        }
    ]
    version = json.loads(client.read("state version", "--format", "json").output)
    assert version["store_schema"] == version["seamline_schema"] and version["verdict"] == "up to date"


# -- trigger and reload, through the running daemon -------------------------------------------------------------


@pytest.fixture
def daemon(client: Client) -> Iterator[LiveDaemon]:
    state_url = client.state[1]
    with live_daemon(client.spec_dir / "seamline.yaml", client.env, state_url=state_url, schedules=False) as live:
        yield live


def test_trigger_starts_a_pass_and_exits_1_when_the_daemon_says_no(client: Client, daemon: LiveDaemon) -> None:
    env = {"SEAMLINE_URL": daemon.url, "SEAMLINE_API_TOKEN": TOKEN}
    client.erp.seed("/products", [{"id": "C", "sku": "C", "changed": "2025-01-03T00:00:00Z"}])
    started = client.cli("trigger", str(client.spec_dir), "catalog", **env)
    assert started.exit_code == 0, started.output
    assert started.output.startswith("started: a pass of 'catalog' started")
    deadline = time.monotonic() + 10
    while not client.shop.applied_count("/products/C") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.shop.applied_count("/products/C") == 1
    # CLIENT by name, with --specs, and --url instead of $SEAMLINE_URL
    specs = ["--specs", str(client.spec_dir.parent), "--url", daemon.url]
    webhook = client.cli("trigger", "ops", "stock", *specs, SEAMLINE_API_TOKEN=TOKEN)
    assert webhook.exit_code == 1 and "not_a_schedule: flow 'stock' is started by its webhook" in webhook.output
    unknown = client.cli("trigger", "ops", "nope", *specs, SEAMLINE_API_TOKEN=TOKEN)
    assert unknown.exit_code == 1 and "unknown: no flow 'nope' runs in this daemon" in unknown.output


def test_reload_refuses_a_broken_spec_with_its_errors_then_applies_the_fixed_one(
    client: Client, daemon: LiveDaemon, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    args = ["reload", str(client.spec_dir), "--url", daemon.url, "--token-file", str(token_file)]
    same = client.cli(*args)
    assert same.exit_code == 0 and same.output.startswith("unchanged: "), same.output
    spec = client.spec_dir / "seamline.yaml"
    spec.write_text(SPEC.replace("read: products", "read: nothing_like_this"), encoding="utf-8")
    refused = client.cli(*args)
    assert refused.exit_code == 1, refused.output
    assert "reload refused: the spec on disk was refused" in refused.output and "nothing_like_this" in refused.output
    before = daemon.daemon.spec_version
    spec.write_text(SPEC.replace("schedule: 1h", "schedule: 2h"), encoding="utf-8")
    reloaded = client.cli(*args)
    assert reloaded.exit_code == 0, reloaded.output
    assert reloaded.output.startswith("reloaded: ") and f"(was {before})" in reloaded.output
    assert daemon.daemon.spec_version != before


def test_trigger_and_reload_say_what_to_do_when_no_daemon_answers_or_the_token_or_client_is_wrong(
    client: Client, daemon: LiveDaemon, tmp_path: Path
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    for command in (["trigger", str(client.spec_dir), "catalog"], ["reload", str(client.spec_dir)]):
        result = client.cli(*command, "--url", nobody)
        assert result.exit_code == 1
        assert f"no seamline daemon answers at {nobody}: is it running? pass --url" in result.output
    wrong = client.cli("trigger", str(client.spec_dir), "catalog", "--url", daemon.url, SEAMLINE_API_TOKEN="nope")
    assert wrong.exit_code == 1 and f"the daemon at {daemon.url} refused the API token" in wrong.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "seamline.yaml").write_text(SPEC.replace("client: ops", "client: other"), encoding="utf-8")
    mismatch = client.cli("trigger", str(other), "catalog", "--url", daemon.url, SEAMLINE_API_TOKEN=TOKEN)
    assert mismatch.exit_code == 1 and "runs client 'ops', not 'other'" in mismatch.output
