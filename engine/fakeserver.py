"""The plumbing the contract fakes share (connectors/*/fake.py): a threaded HTTP/1.1 server that can
really go away — stopping it also closes keep-alive connections, so a client sees the outage."""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, ClassVar, Self

__all__ = ["ServedFake", "TrackingHTTPServer", "listen", "serve_until_signalled"]


class TrackingHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], fake: Any) -> None:
        self.fake = fake
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
            self.open_sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ServedFake:
    """The lifecycle every contract fake shares: serve on a thread, stop for real, restart on the same port.

    A fake implements :meth:`_make_server` (its TrackingHTTPServer, which knows the request handler),
    sets ``thread_name``, and ``host``/``port`` (0: a free one; :attr:`url` says which) in its ``__init__``.
    """

    thread_name: ClassVar[str] = "fake"
    host: str
    port: int
    _server: TrackingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = self._make_server()
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.thread_name}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def _make_server(self) -> TrackingHTTPServer:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and drop open keep-alive connections, so a client really sees the outage."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        server.close_open_connections()
        if thread is not None:
            thread.join(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port; the state is kept (as a restarted process would)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def serve_until_signalled(fake: ServedFake, banner: Callable[[], str]) -> int:
    """For a fake's ``main()``: serve, print ``banner()`` (the address), and stop on SIGINT or SIGTERM."""
    stopped = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with fake:
        print(banner(), flush=True)
        while not stopped.wait(0.5):
            pass
    return 0


def listen(fake: ServedFake) -> str | None:
    """Start serving; None, or the one line that says why the port cannot be used (a port in use, say)."""
    try:
        fake.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"error: port {fake.port} on {fake.host} is in use; choose another with --port"
        return f"error: cannot listen on {fake.host}:{fake.port}: {exc.strerror or exc}"
    return None
