"""Every runnable connector against the shared conformance suite (see ``conformance.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest

from engine.connector import default_registry
from tests.connectors.conformance import HARNESSES, SUITE, Harness


@pytest.fixture(params=sorted(HARNESSES))
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
