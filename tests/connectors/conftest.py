"""Fixtures for connector tests: a running fake HTTP server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors.http.fake import FakeHttpServer


@pytest.fixture
def fake() -> Iterator[FakeHttpServer]:
    with FakeHttpServer(port=0) as server:
        yield server
