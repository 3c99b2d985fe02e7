"""Every runnable connector against the shared conformance suite (see ``conformance.py``)."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterator

import pytest

from engine.connector import default_registry
from tests.connectors.conformance import HARNESSES, SUITE, Harness


def _with_marks(kind: str) -> object:
    """A harness module may export MARKS (``(pytest.mark.rabbitmq,)``) so -m can deselect its checks."""
    module = importlib.import_module(f"tests.connectors.harness_{kind}")
    return pytest.param(kind, marks=getattr(module, "MARKS", ()), id=kind)


@pytest.fixture(params=[_with_marks(kind) for kind in sorted(HARNESSES)])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    with HARNESSES[request.param]() as running:
        yield running


@pytest.mark.parametrize("check", SUITE, ids=lambda check: check.__name__.removeprefix("check_"))
def test_conformance(harness: Harness, check: Callable[[Harness], Awaitable[None]]) -> None:
    async def scenario() -> None:
        await check(harness)

    asyncio.run(scenario())


def test_every_runnable_connector_has_a_harness() -> None:
    runnable = {kind.name for kind in default_registry() if kind.runnable}
    assert runnable <= set(HARNESSES), f"runnable connectors without a conformance harness: {runnable - set(HARNESSES)}"
