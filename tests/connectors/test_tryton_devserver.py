"""The Tryton dev server as ``seamline demo`` uses it: :func:`connectors.tryton.devserver.running`.

Real trytond processes on loopback over the cached install (built on first use, as for the tests).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from connectors.tryton import devserver
from connectors.tryton.devserver import RpcClient, TrytonUnavailable, running


def test_running_brings_up_a_seeded_server_the_api_user_can_use_and_removes_it_afterwards() -> None:
    steps: list[str] = []
    with running(progress=steps.append) as server:
        assert server.running
        api = RpcClient(server.url, server.database, server.user, server.password)
        assert api.count("product.product", [("code", "=", "WIDGET-1")]) == 1
        assert server.meta["products"]["WIDGET-1"]
        folder, url = server.folder, server.url
    assert not server.running
    assert not folder.exists()
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{url}/rpc/", json={"id": 0, "method": "common.server.version", "params": []}, timeout=2)


def test_running_on_a_taken_port_says_so_before_building_anything() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        taken_port = pytest.raises(TrytonUnavailable, match=f"cannot start Tryton on 127.0.0.1:{port}.*choose another")
        with taken_port, running(port=port):
            pytest.fail("running() started on a port that was taken")


def test_the_seed_script_ships_in_the_package_and_the_devserver_imports_neither_pytest_nor_tryton() -> None:
    assert Path(devserver.__file__).with_name("seed.py") == devserver.SEED_SCRIPT
    assert devserver.SEED_SCRIPT.is_file()
    probe = (
        "import sys, connectors.tryton.devserver\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in {'pytest', '_pytest', 'trytond', 'proteus'})\n"
        "print(leaked)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
