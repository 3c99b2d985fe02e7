"""The layering is checked (docs/architecture.md): who may import whom, read from every import in the code.

The rules, as import-linter contracts would state them, checked on each module's syntax tree (imports inside
functions included, so a lazy import cannot slip past):

1. the engine never names a connector: nothing under ``engine/`` imports ``connectors`` (the registry finds
   connector kinds through their entry points) nor the demo;
2. a connector never imports another connector: ``connectors/<x>`` imports only itself and the engine (the
   shared HTTP machinery is ``engine/kit``, outside the connectors);
3. the shared kit is not a connector and knows none: ``engine/kit`` imports no connector (rule 1);
4. the state store knows no system and no runtime: ``engine/state`` imports neither ``connectors`` nor
   ``engine.runtime``;
5. the demo is beside the engine, not in it: only ``seamline_demo`` and the tests import it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            yield node.lineno, base


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_the_engine_never_names_a_connector_nor_the_demo() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in modules("engine")
        for line, name in imports(path)
        if name.split(".")[0] in ("connectors", "seamline_demo")
    ]
    assert found == []


@pytest.mark.parametrize(
    "connector", sorted(p.name for p in (ROOT / "connectors").iterdir() if p.is_dir() and (p / "__init__.py").exists())
)
def test_a_connector_imports_only_itself_and_the_engine(connector: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in modules(f"connectors/{connector}")
        for line, name in imports(path)
        if name.split(".")[0] == "connectors" and name.split(".")[:2] != ["connectors", connector]
    ]
    assert found == []


def test_the_state_store_knows_no_system_and_no_runtime() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in modules("engine/state")
        for line, name in imports(path)
        if name.split(".")[0] == "connectors" or name.startswith("engine.runtime")
    ]
    assert found == []


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """Not vacuous: a lazy import of another connector inside a function is found."""
    sample = ROOT / "connectors" / "file" / "_layering_probe.py"
    sample.write_text("def f():\n    from connectors.http.client import HttpConnection\n", encoding="utf-8")
    try:
        assert [name for _, name in imports(sample)] == ["connectors.http.client"]
        with pytest.raises(AssertionError):
            test_a_connector_imports_only_itself_and_the_engine("file")
    finally:
        sample.unlink()
