"""The project's own reference clients, and only those: what the suite tests its goldens and specs on.

A user's client folder beside ours (``specs/<theirs>``, ``golden/<theirs>``) is theirs to test with
``seamline test``; it must never change what our suite counts or passes, so every test that walks
specs/ or golden/ goes through here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.testing import GoldenCase, discover_cases

__all__ = ["REFERENCE_CLIENTS", "ROOT", "copy_reference", "reference_cases", "reference_specs"]

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_CLIENTS = ("acme", "demo", "demo-rabbitmq")  # and the base they extend, specs/_base


def reference_cases(client: str | None = None) -> list[GoldenCase]:
    """Our golden cases (of one client, or of all of ours)."""
    return [c for c in discover_cases(ROOT / "golden", client) if c.client in REFERENCE_CLIENTS]


def reference_specs() -> list[Path]:
    """Our client specs, relative to the repository root."""
    return [Path("specs") / name / "seamline.yaml" for name in REFERENCE_CLIENTS]


def copy_reference(into: Path) -> Path:
    """specs/ and golden/ of our clients (with specs/_base) under ``into``: a scratch copy to break and test."""
    for name in (*REFERENCE_CLIENTS, "_base"):
        if (ROOT / "specs" / name).is_dir():
            shutil.copytree(ROOT / "specs" / name, into / "specs" / name)
        if (ROOT / "golden" / name).is_dir():
            shutil.copytree(ROOT / "golden" / name, into / "golden" / name)
    return into
