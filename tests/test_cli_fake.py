"""`seamline fake KIND`: a contract fake served on its own, for a user to point a spec at."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from engine.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: object) -> object:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def test_seamline_fake_magento_serves_the_token_route_until_terminated() -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "fake", "magento", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert f"http://127.0.0.1:{port}" in process.stdout.readline()
        deadline = time.monotonic() + 10
        while True:
            try:
                token = _post(
                    f"http://127.0.0.1:{port}/rest/V1/integration/admin/token",
                    {"username": "admin", "password": "admin123"},
                )
                break
            except OSError:
                assert time.monotonic() < deadline, "the fake never answered"
                time.sleep(0.1)
        assert isinstance(token, str) and token
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_seamline_fake_lists_the_fakes_and_suggests_on_a_typo() -> None:
    listing = CliRunner().invoke(main, ["fake"])
    assert listing.exit_code == 0
    assert "magento" in listing.output and "http" in listing.output
    typo = CliRunner().invoke(main, ["fake", "magneto"])
    assert typo.exit_code == 2
    assert "did you mean 'magento'?" in typo.output


# -- every fake from the command line: help, banner, credentials, write log, port in use -------------

KINDS = ("magento", "salesforce", "http")


class Served:
    """A `seamline fake KIND` process: its banner (every line printed before it serves) and its URL."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "fake", *args, "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.banner: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            while not self.banner or not self.banner[-1].startswith("stop with"):
                self.banner.append(self._line())
        except BaseException:
            self.process.kill()
            self.process.wait()
            raise
        assert self.url in self.banner[0], self.banner

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _line(self, timeout: float = 10) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = ""
        if not line:
            self.process.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"no banner line within {timeout}s; so far {self.banner}; stderr: {err}")
        return line

    @property
    def text(self) -> str:
        return "".join(self.banner)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=10) == 0


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"null")


def test_seamline_fake_help_names_the_command_not_the_module() -> None:
    listing = CliRunner().invoke(main, ["fake", "--help"])
    assert listing.exit_code == 0
    assert "usage: seamline fake KIND [OPTIONS]" in listing.output
    assert "python3 -m" not in listing.output
    for kind in KINDS:
        assert f"seamline fake {kind} --help" in listing.output


def test_each_fakes_help_reads_seamline_fake_kind_and_names_its_credentials() -> None:
    expected = {
        "magento": ["admin123", "--token", "--seed", "--source"],
        "salesforce": ["--client-id", "--client-secret", "seamline-secret"],
        "http": ["--bearer", "--basic", "--api-key", "--fail-path", "--fail-status"],
    }
    for kind in KINDS:
        result = CliRunner().invoke(main, ["fake", kind, "--help"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"usage: seamline fake {kind} "), result.output
        assert "python3 -m" not in result.output
        assert "/__fake/log" in result.output
        for text in expected[kind]:
            assert text in result.output, (kind, text)


def test_a_port_in_use_is_one_clear_line_for_every_fake() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for kind in KINDS:
            result = subprocess.run(
                [sys.executable, "-m", "engine.cli", "fake", kind, "--port", str(port)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert result.returncode == 1, (kind, result.stderr)
            assert result.stderr == f"error: port {port} on 127.0.0.1 is in use; choose another with --port\n"
            assert result.stdout == ""


def test_seamline_fake_magento_takes_sources_and_seed_data_and_serves_its_write_log(tmp_path: Path) -> None:
    seed = {
        "sources": ["eu_central"],
        "products": [{"sku": "WIDGET-1", "name": "Widget", "attribute_set_id": 4, "price": 10, "type_id": "simple"}],
        "customers": [{"email": "carol@example.com", "firstname": "Carol", "lastname": "Smith", "website_id": 1}],
        "orders": [
            {"increment_id": "000000042", "customer_email": "carol@example.com", "items": [{"sku": "WIDGET-1"}]}
        ],
    }
    (tmp_path / "seed.json").write_text(json.dumps(seed), encoding="utf-8")
    served = Served("magento", "--seed", str(tmp_path / "seed.json"), "--source", "us_east", "--token", "tk-42")
    try:
        assert "bearer token: tk-42" in served.text
        assert "admin user: admin / admin123" in served.text
        assert f"write log: GET {served.url}/__fake/log" in served.text
        assert "sources: default, eu_central, us_east" in served.text
        bearer = {"Authorization": "Bearer tk-42"}
        everything = "?searchCriteria="
        assert _get(f"{served.url}/rest/V1/products/WIDGET-1", bearer)[1]["price"] == 10
        customers = _get(f"{served.url}/rest/V1/customers/search{everything}", bearer)[1]
        assert [c["email"] for c in customers["items"]] == ["carol@example.com"]
        orders = _get(f"{served.url}/rest/V1/orders{everything}", bearer)[1]
        assert [o["increment_id"] for o in orders["items"]] == ["000000042"]
        for source, status in (("us_east", 200), ("eu_central", 200), ("nowhere", 400)):
            item = {"sku": "WIDGET-1", "source_code": source, "quantity": 5, "status": 1}
            request = urllib.request.Request(
                f"{served.url}/rest/V1/inventory/source-items",
                data=json.dumps({"sourceItems": [item]}).encode(),
                headers={"Content-Type": "application/json", **bearer},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    assert (source, answer.status) == (source, status)
            except urllib.error.HTTPError as refused:
                assert (source, refused.code) == (source, status)
        status, log = _get(f"{served.url}/__fake/log")
        assert status == 200
        assert [(e["method"], e["path"], e["status"]) for e in log] == [
            ("POST", "/rest/V1/inventory/source-items", 200),
            ("POST", "/rest/V1/inventory/source-items", 200),
        ]
    finally:
        served.stop()


def test_seamline_fake_magento_refuses_a_bad_seed_file_naming_the_place(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"products": [{"sku": "A", "name": "A", "attribute_set_id": 4, "price": "9"}]}))
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "fake", "magento", "--seed", str(path), "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == f"error: {path}: products[0]: product.price: '9' is not of type 'number'\n"
    path.write_text(json.dumps({"product": []}))
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "fake", "magento", "--seed", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {path}: unknown key 'product' — did you mean 'products'? "
        "(a seed file has: customers, orders, products, sources)\n"
    )


def test_seamline_fake_salesforce_prints_its_client_credentials_and_serves_its_write_log() -> None:
    served = Served("salesforce", "--client-id", "app", "--client-secret", "app-secret")
    try:
        assert "client id: app" in served.text and "client secret: app-secret" in served.text
        assert f"token url: {served.url}/services/oauth2/token" in served.text
        assert _get(f"{served.url}/__fake/log") == (200, [])
    finally:
        served.stop()


def test_seamline_fake_http_prints_its_credentials_and_fails_one_path() -> None:
    served = Served("http", "--bearer", "tok-1", "--fail-path", "/products", "--fail-status", "503")
    try:
        assert "bearer token: tok-1" in served.text
        assert "fault: every request to /products answers 503" in served.text
        bearer = {"Authorization": "Bearer tok-1"}
        assert _get(f"{served.url}/products", bearer)[0] == 503
        assert _get(f"{served.url}/products/A-1", bearer)[0] == 503
        assert _get(f"{served.url}/orders", bearer) == (
            200,
            {"items": [], "total": 0, "next": None, "next_cursor": None},
        )
        assert _get(f"{served.url}/orders")[0] == 401
        assert _get(f"{served.url}/__fake/log") == (200, [])
    finally:
        served.stop()
