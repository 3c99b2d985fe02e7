"""Shared fixtures: the repository root, a scratch folder to write specs into, and a state store URL per backend."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh state store's URL on each backend: a SQLite file, or a PostgreSQL schema of its own (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{PG_DSN}?schema={schema}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
