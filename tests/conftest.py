"""Shared fixtures: the repository root, and a scratch folder to write specs into."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A real Tryton server for the tests that need one (installed from PyPI into a cached venv on first use).
pytest_plugins = ["tests.tryton_server"]


@pytest.fixture
def repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the repository root, as a user would."""
    monkeypatch.chdir(ROOT)
    return ROOT


WriteFiles = Callable[[dict[str, str]], Path]


@pytest.fixture
def write_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WriteFiles:
    """Write {relative path: text} under a temp folder, chdir there, return it."""
    monkeypatch.chdir(tmp_path)

    def write(files: dict[str, str]) -> Path:
        for name, text in files.items():
            target = tmp_path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        return tmp_path

    return write
