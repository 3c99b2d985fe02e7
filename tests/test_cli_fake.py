"""`seamline fake KIND`: a contract fake served on its own, for a user to point a spec at."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

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
