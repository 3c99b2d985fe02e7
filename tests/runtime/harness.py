"""Run the daemon as a real subprocess, the way an operator does, for crash and shutdown tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll until ``condition`` holds; fail naming ``what`` (bounded: tests never hang)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class DaemonProcess:
    def __init__(
        self,
        spec: Path,
        state: Path,
        *,
        env: dict[str, str] | None = None,
        workers: int = 4,
        state_url: str | None = None,
        lease: float = 60.0,
        processes: int = 1,
        token: str | None = None,
    ) -> None:
        """``token``: the daemon runs with that API token (from $SEAMLINE_API_TOKEN), not in --dev mode."""
        self.spec = spec
        self.processes = processes
        self.state_url = state_url or f"sqlite:///{state}"
        self.lease = lease
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.token = token
        if token is not None:
            self.env["SEAMLINE_API_TOKEN"] = token
        self.workers = workers
        self.log_path = state.parent / f"daemon-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DaemonProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "run",
                str(self.spec),
                *([] if self.token is not None else ["--dev"]),
                "--port",
                str(self.port),
                "--state",
                self.state_url,
                "--workers",
                str(self.workers),
                "--lease",
                str(self.lease),
                *(["--processes", str(self.processes)] if self.processes > 1 else []),
            ],
            stdout=log,
            stderr=log,
            env=self.env,
        )
        wait_for(self.ready, 20, f"the daemon on port {self.port} to be ready (log: {self.log_path})")
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def metric(self, name: str, **labels: str) -> float:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token is not None else {}
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_events(self) -> list[dict[str, object]]:
        events = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events
