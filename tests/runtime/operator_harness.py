"""A real daemon for the operator API's tests: in this process, on its own event loop in a thread, its HTTP API
(bearer token required) on a free loopback port, the operator routes mounted.

The daemon is the real one (engine.runtime.daemon.Daemon); the API is the real one (engine.runtime.api.build_app,
the token middleware included) with the operator routes (engine.runtime.admin_api) on it: mounted by build_app
itself once it does, here otherwise. A test talks to it over HTTP like an operator's tools, from the test's thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from engine.runtime.admin_api import OPERATOR, add_operator_routes
from engine.runtime.api import build_app
from engine.runtime.daemon import Daemon, DaemonOptions

T = TypeVar("T")

TOKEN = "operator-test-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveDaemon:
    def __init__(self, spec: Path, env: dict[str, str], *, state_url: str, token: str = TOKEN, **options: Any) -> None:
        self.port = free_port()
        self.token = token
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-daemon", daemon=True)
        opts = DaemonOptions(
            port=self.port, token=token, workers=2, drain_timeout=5, state_url=state_url, serve_http=False, **options
        )
        self.daemon = Daemon(spec, opts, environ={**os.environ, **env}, log_stream=io.StringIO())
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coroutine`` on the daemon's loop and wait for it (a test's thread never touches the loop itself)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> LiveDaemon:
        self.thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        await self.daemon.start()
        app = build_app(self.daemon)
        if OPERATOR not in app:  # build_app does not mount the operator routes itself (yet)
            add_operator_routes(app, self.daemon)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        try:
            self.run(self._stop(), timeout=60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.daemon.stop()

    def events(self) -> list[dict[str, Any]]:
        stream = self.daemon.log.stream
        assert isinstance(stream, io.StringIO)
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


@contextmanager
def live_daemon(spec: Path, env: dict[str, str], *, state_url: str, **options: Any) -> Iterator[LiveDaemon]:
    live = LiveDaemon(spec, env, state_url=state_url, **options).start()
    try:
        yield live
    finally:
        live.stop()
