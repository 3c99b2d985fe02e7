"""Modules expose a small, deliberate __all__; a change to the public surface shows up here."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "engine.errors": {
        "Diagnostic",
        "Severity",
        "SeamlineError",
        "ServeError",
        "SpecError",
        "TerminalError",
        "TransformError",
        "TransientError",
        "UsageError",
    },
    "engine.spec": {
        "SPEC_FILENAME",
        "MergedSpec",
        "SpecDocument",
        "SpecReport",
        "discover_specs",
        "resolve_spec",
        "spec_json_schema",
        "validate_spec",
    },
    "engine.cli": {"main"},
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_exported_members(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == PUBLIC[module_name]
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names {name}, which does not exist"
