"""A user's client folder next to ours never breaks our suite (issue 14, item 3).

Was: adding a client folder with its own goldens made 5 tests fail ('42 passed, 0 failed' == '38 passed,
0 failed'). The suite's spec and golden tests run on a copy of the repository with a user's client added
beside ours, one whose spec is invalid and whose golden case fails: they pass as they do without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = [
    "tests/test_golden.py",
    "tests/test_golden_cli.py",
    "tests/test_reference_payloads.py",
    "tests/test_reference_specs.py",
]


def test_our_spec_and_golden_tests_pass_with_a_broken_user_client_beside_ours(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.db", ".seamline", ".pytest_cache", ".mypy_cache")
    for part in ("engine", "connectors", "tests", "specs", "golden", "schemas"):
        shutil.copytree(ROOT / part, copy / part, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    user = copy / "specs" / "zz-user"
    user.mkdir()
    (user / "seamline.yaml").write_text("seamline: 1\nclient: zz-user\nflows: { broken: nope }\n", encoding="utf-8")
    case = copy / "golden" / "zz-user" / "broken"
    case.mkdir(parents=True)
    (case / "one.input.json").write_text("{}", encoding="utf-8")
    (case / "one.snapshot.json").write_text('{"not": "what it makes"}\n', encoding="utf-8")
    done = subprocess.run(
        # (the file watcher and the syrupy-vs-update byte comparison prove nothing about a client beside ours)
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "not watch and not byte_identical",
            *MODULES,
        ],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
