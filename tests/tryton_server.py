"""Pytest fixtures over :mod:`connectors.tryton.devserver`: a real Tryton 8.0 server for the tests.

Register it as a pytest plugin (``pytest_plugins = ["tests.tryton_server"]``) or import the fixtures:

* ``tryton_server`` (session): a running :class:`TrytonServer` with ``url``, ``database``, ``user``,
  ``password`` (the API user the connector logs in as), ``reset()`` and an admin RPC ``client()``;
  stopped at the end of the session.
* ``tryton`` (module): the same server, reset to the freshly seeded database for the module.

The install (a cached virtualenv from PyPI and a seeded template database) and the server process
are the devserver's; see its module doc for what is built, where and how long it takes. When the
install cannot happen (no network to PyPI), :class:`TrytonUnavailable` says what to run and the
fixtures turn it into a test failure, never a silent skip.
"""

from __future__ import annotations

import atexit
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.tryton.devserver import TrytonServer, TrytonUnavailable, ensure_install

__all__ = ["shared_server", "stop_shared", "tryton", "tryton_server"]

# -- one server per test process, shared by the fixtures and the conformance harness ----------------

_SHARED: TrytonServer | None = None
_FAILED: str | None = None


def shared_server() -> TrytonServer:
    """The process's Tryton server, built and started on first use; stopped when the process exits."""
    global _SHARED, _FAILED
    if _FAILED is not None:
        raise TrytonUnavailable(_FAILED)
    if _SHARED is None:
        try:
            install = ensure_install()
            server = TrytonServer(install, Path(tempfile.mkdtemp(prefix="seamline-tryton-")))
            server.timings.update(install.timings)
            server.start()
        except TrytonUnavailable as exc:
            _FAILED = str(exc)
            raise
        _SHARED = server
        atexit.register(server.close)
    _SHARED.start()  # a test that stopped it (an outage) may not have started it again
    return _SHARED


def stop_shared() -> None:
    global _SHARED
    if _SHARED is not None:
        _SHARED.close()
        _SHARED = None


@pytest.fixture(scope="session")
def tryton_server() -> Iterator[TrytonServer]:
    """A running, seeded Tryton server for the whole session (see the module doc)."""
    try:
        server = shared_server()
    except TrytonUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    stop_shared()


@pytest.fixture(scope="module")
def tryton(tryton_server: TrytonServer) -> TrytonServer:
    """The session's server, reset to the freshly seeded database for this module's tests."""
    tryton_server.reset()
    return tryton_server
