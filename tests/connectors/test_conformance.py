"""Every runnable connector against the shared conformance suite (:mod:`engine.conformance`).

A connector joins with a module ``harness_<kind>.py`` beside this file exporting ``KIND`` (its
ConnectorKind) and ``harness()``, a context manager yielding a running harness. The checks that apply
follow from the roles the kind's connection class plays (``engine.conformance.checks_for``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType

import pytest

from engine.conformance import SUITE, Check, Harness, checks_for, not_covered, roles_of_kind, run_check
from engine.connector import ConnectorKind, default_registry


def _harness_modules() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for path in sorted(Path(__file__).parent.glob("harness_*.py")):
        module = importlib.import_module(f"tests.connectors.{path.stem}")
        kind = getattr(module, "KIND", None)
        assert isinstance(kind, ConnectorKind), f"{path.name} must export KIND, the ConnectorKind it checks"
        found[kind.name] = module
    return found


HARNESSES = _harness_modules()


def _cases() -> list[object]:
    """One case per (connector, check that applies to it); a module's MARKS (``(pytest.mark.rabbitmq,)``) go along."""
    return [
        pytest.param(name, check, marks=getattr(module, "MARKS", ()), id=f"{name}-{check.name}")
        for name, module in HARNESSES.items()
        for check in checks_for(module.KIND)
    ]


@pytest.mark.parametrize(("kind", "check"), _cases())
def test_conformance(kind: str, check: Check) -> None:
    start: Callable[[], AbstractContextManager[Harness]] = HARNESSES[kind].harness
    with start() as running:
        assert running.kind is HARNESSES[kind].KIND
        run_check(check, running)


def test_every_runnable_connector_has_a_harness() -> None:
    runnable = {kind.name for kind in default_registry() if kind.runnable}
    assert runnable <= set(HARNESSES), f"runnable connectors without a conformance harness: {runnable - set(HARNESSES)}"


def test_every_check_applies_or_says_why_not() -> None:
    for name, module in HARNESSES.items():
        kind: ConnectorKind = module.KIND
        applied = {check.name for check in checks_for(kind)}
        skipped = not_covered(kind)
        assert applied.isdisjoint(skipped)
        assert applied | set(skipped) == {check.name for check in SUITE}, name
        assert all(reason.endswith("role") for reason in skipped.values())
        assert roles_of_kind(kind), f"{name}: a runnable kind plays at least one role"


def test_the_suite_covers_every_role_of_our_connectors() -> None:
    """Read, call and consume are checked, not only writes: each role ours play has its checks run."""
    covered = {check.role for name, module in HARNESSES.items() for check in checks_for(module.KIND)}
    assert {"read", "write", "call", "consume"} <= covered
