"""Hostile YAML: `seamline validate` answers a bomb with a located error, fast and in little memory.

A spec file may come from anyone who can open a pull request, and validate runs in CI on it. An
alias bomb ("billion laughs": anchors whose aliases multiply) once took 90 s and 6.6 GB; 20,000
nested brackets gave a RecursionError traceback. Each must now be one ``file:line:col: error``
line, exit code 1, within 2 s and 200 MB. Time and memory are measured in a child process, capped
(address space and a timeout), so a regression fails this test instead of taking the machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from engine.spec.yamlsource import load_yaml_text, safe_load_bounded
from tests.conftest import ROOT

SECONDS = 2.0
MEGABYTES = 200

# Runs `seamline validate seamline.yaml` in the child and reports its exit code, its wall time, and
# its peak memory: the growth of the peak RSS, or the peak of Python's allocations (tracemalloc, in a
# second run, so it does not slow the timed one), whichever is larger.
CHILD = textwrap.dedent(
    """
    import json, resource, sys, time, traceback, tracemalloc
    cap = 1536 * 2**20  # a regression hits MemoryError here, not the machine's other users
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from engine.cli import main

    def validate():
        try:
            main(["validate", "seamline.yaml"], prog_name="seamline")
            return 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            traceback.print_exc()
            return "traceback: " + type(exc).__name__

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    code = validate()
    seconds = time.perf_counter() - started
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    if code in (0, 1):
        tracemalloc.start()
        validate()
        grown = max(grown, tracemalloc.get_traced_memory()[1])
    with open(sys.argv[1], "w") as out:
        json.dump({"code": code, "seconds": seconds, "bytes": grown}, out)
    """
)


@dataclass(frozen=True)
class Outcome:
    code: int | str
    output: str
    seconds: float
    megabytes: float


def validate_in_child(folder: Path, spec: str) -> Outcome:
    (folder / "seamline.yaml").write_text(spec, encoding="utf-8")
    report = folder / "measured.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEAMLINE_SECRETS_DIR": "/nonexistent/seamline-secrets"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(report)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("seamline validate ran for more than 30 s on this file")
    if not report.exists():
        pytest.fail(f"the child died (exit {done.returncode}):\n{done.stderr[-3000:]}")
    measured = json.loads(report.read_text(encoding="utf-8"))
    return Outcome(measured["code"], done.stdout + done.stderr, measured["seconds"], measured["bytes"] / 2**20)


def assert_refused_quickly(outcome: Outcome, message: str) -> re.Match[str]:
    assert outcome.code == 1, outcome.output[-3000:]
    assert "Traceback" not in outcome.output, outcome.output[-3000:]
    located = re.search(rf"^seamline\.yaml:(\d+):(\d+): error: (.*{message}.*)$", outcome.output, re.M)
    assert located, outcome.output[-3000:]
    assert outcome.seconds < SECONDS, f"took {outcome.seconds:.2f} s"
    assert outcome.megabytes < MEGABYTES, f"peak memory grew by {outcome.megabytes:.0f} MB"
    return located


HEADER = "seamline: 1\nclient: demo\nconstants:\n"


def billion_laughs(levels: int = 7, fan_out: int = 10) -> str:
    """``levels`` anchors, each a list of ``fan_out`` aliases of the one before: fan_out**levels values."""
    lines = [f"  l0: &l0 [{', '.join(['lol'] * fan_out)}]"]
    for level in range(1, levels):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * fan_out)}]")
    return HEADER + "\n".join(lines) + "\n"


def test_alias_bomb_is_a_located_error(tmp_path: Path) -> None:
    spec = billion_laughs()  # 10**7 values once every alias is expanded
    outcome = validate_in_child(tmp_path, spec)
    located = assert_refused_quickly(outcome, "alias")
    line, column = int(located[1]), int(located[2])
    spec_lines = spec.splitlines()
    assert spec_lines[line - 1][column - 1] == "*", f"points at {spec_lines[line - 1]!r} column {column}"
    assert "expand" in located[3]


@pytest.mark.parametrize(
    "deep",
    [
        pytest.param("  deep: " + "[" * 20_000 + "]" * 20_000 + "\n", id="flow-lists"),
        pytest.param("  deep: " + "{a: " * 20_000 + "}" * 20_000 + "\n", id="flow-maps"),
        pytest.param("  deep:\n" + "    " + "- " * 20_000 + "x\n", id="block-lists"),
    ],
)
def test_deep_nesting_is_a_located_error(tmp_path: Path, deep: str) -> None:
    outcome = validate_in_child(tmp_path, HEADER + deep)
    located = assert_refused_quickly(outcome, "nested")
    assert int(located[1]) == 4 + deep.startswith("  deep:\n")  # the line the nesting is on


def test_an_alias_inside_its_own_anchor_is_a_located_error() -> None:
    loaded = load_yaml_text("seamline: 1\nloop: &a [1, *a]\n", "seamline.yaml")
    assert [d.render() for d in loaded.diagnostics] == [
        "seamline.yaml:2:14: error: alias *a is used inside the value it names (&a, line 2); "
        "a value cannot contain itself\n    hint: copy the values you need instead of the alias",
    ]


def test_a_file_with_only_comments_is_located() -> None:
    loaded = load_yaml_text("\n# a spec, some day\n", "seamline.yaml")
    assert [d.render() for d in loaded.diagnostics] == [
        "seamline.yaml:2:1: error: file has only comments; a spec starts with 'seamline: 1'"
    ]


def test_ordinary_anchors_and_merge_keys_still_load() -> None:
    text = HEADER + (
        "  defaults: &defaults { timeout: 10s, rate: 5/s, headers: { a: 1, b: 2 } }\n"
        "  erp: { <<: *defaults, concurrency: 2 }\n"
        "  shop: *defaults\n"
        "  table: &table [[1, 2, 3], [4, 5, 6], [7, 8, 9]]\n"
        "  copies: [*table, *table, *table, *table, *table, *table, *table, *table]\n"
    )
    loaded = load_yaml_text(text, "seamline.yaml")
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    constants = loaded.data["constants"]
    assert constants["erp"] == {"timeout": "10s", "rate": "5/s", "headers": {"a": 1, "b": 2}, "concurrency": 2}
    assert constants["shop"] == constants["defaults"]
    assert constants["copies"][7] == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_a_large_but_sane_expansion_loads() -> None:
    """Ten thousand values through aliases (a big shared table used in a few places) are fine."""
    loaded = load_yaml_text(billion_laughs(levels=4, fan_out=10), "seamline.yaml")
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    assert len(loaded.data["constants"]["l3"][9][9]) == 10


def test_moderate_nesting_still_loads() -> None:
    loaded = load_yaml_text("seamline: 1\nconstants:\n  deep: " + "[" * 40 + "]" * 40 + "\n", "seamline.yaml")
    assert loaded.ok, [d.render() for d in loaded.diagnostics]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("a: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested", id="deep"),
        pytest.param(billion_laughs().replace(HEADER, ""), "alias", id="alias-bomb"),
    ],
)
def test_yaml_data_files_have_the_same_bounds(text: str, message: str) -> None:
    """Code tables in YAML load through safe_load_bounded: the same refusals, as PyYAML's own errors."""
    with pytest.raises(yaml.MarkedYAMLError, match=message) as caught:
        safe_load_bounded(text)
    assert caught.value.problem_mark is not None and caught.value.problem_mark.line >= 0
    assert safe_load_bounded("a: &a [1, 2]\nb: *a\n") == {"a": [1, 2], "b": [1, 2]}
