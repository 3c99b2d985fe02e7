"""Table-driven: specs broken in exactly one way, and the exact errors `seamline validate` prints.

The cases are data (``broken_specs.yaml`` beside this file): each starts from a valid base spec,
breaks one thing, and lists every error line expected, position included. Each case runs twice:
through ``validate_spec`` (exact error lines, and warnings or hints where the case is about them)
and through ``seamline validate`` (exit code, the same lines as printed, no traceback). A failing
case shows everything validate said and the numbered spec, so the position can be checked by eye.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import main
from engine.errors import Diagnostic, Severity
from engine.spec import validate_spec
from tests.conftest import WriteFiles

DATA = Path(__file__).with_name("broken_specs.yaml")
TABLE: dict[str, Any] = yaml.safe_load(DATA.read_text(encoding="utf-8"))
ENV: dict[str, str] = {str(k): str(v) for k, v in TABLE["env"].items()}
BASES: dict[str, dict[str, str]] = TABLE["bases"]


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str]
    errors: list[str]
    warnings: list[str] | None = None
    hints: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    strict: bool = False
    latin1: tuple[str, ...] = ()  # files written as Latin-1, not UTF-8


def _apply_edits(text: str, edits: list[dict[str, str]], where: str) -> str:
    for edit in edits:
        old, new = edit["replace"], edit["with"]
        count = text.count(old)
        assert count == 1, f"{where}: {old!r} occurs {count} times in the base; an edit must match exactly once"
        text = text.replace(old, new)
    return text


CASE_KEYS = {"id", "base", "edit", "files", "env", "strict", "latin1", "errors", "expect_warnings", "hints"}


def build_case(raw: Mapping[str, Any]) -> Case:
    unknown = set(raw) - CASE_KEYS
    assert not unknown, f"{raw.get('id')}: unknown keys {sorted(unknown)} (a case takes {sorted(CASE_KEYS)})"
    files = dict(BASES[raw["base"]])
    for name, edits in (raw.get("edit") or {}).items():
        assert name in files, f"{raw['id']}: edits {name}, which the base does not have"
        files[name] = _apply_edits(files[name], edits, f"{raw['id']}/{name}")
    files.update(raw.get("files") or {})
    return Case(
        id=raw["id"],
        files=files,
        errors=list(raw["errors"]),
        warnings=list(raw["expect_warnings"]) if "expect_warnings" in raw else None,
        hints=list(raw["hints"]) if "hints" in raw else None,
        env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
        strict=bool(raw.get("strict", False)),
        latin1=tuple(raw.get("latin1") or ()),
    )


CASES = [build_case(raw) for raw in TABLE["cases"]]


def write_case(case: Case, write_files: WriteFiles) -> Path:
    root = write_files(case.files)
    for name in case.latin1:
        (root / name).write_bytes(case.files[name].encode("latin-1"))
    return root


def line_of(d: Diagnostic) -> str:
    """The diagnostic as printed, without its [json.path] and hint: what a case lists."""
    return f"{d.location()}: {d.severity.value}: {d.message}"


def numbered(text: str) -> str:
    return "\n".join(f"{i:4} {line}" for i, line in enumerate(text.splitlines(), start=1))


def test_the_table_is_big_and_its_ids_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) >= 45
    assert len(set(ids)) == len(ids), "case ids must be unique"


@pytest.mark.parametrize("base", sorted(BASES))
def test_bases_are_valid(base: str, write_files: WriteFiles) -> None:
    """Every case breaks one thing in a base; the base itself must be clean, even strictly."""
    write_files(BASES[base])
    report = validate_spec(Path("seamline.yaml"), strict=True, environ=ENV)
    assert [line_of(d) for d in report.diagnostics if d.severity is not Severity.NOTE] == []


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_broken_spec(case: Case, write_files: WriteFiles) -> None:
    write_case(case, write_files)
    report = validate_spec(Path("seamline.yaml"), strict=case.strict, environ={**ENV, **case.env})
    errors = [d for d in report.diagnostics if d.severity is Severity.ERROR]
    context = "\n".join(d.render() for d in report.diagnostics)
    context += "\n\nseamline.yaml:\n" + numbered(case.files["seamline.yaml"])
    assert [line_of(d) for d in errors] == case.errors, context
    assert report.ok == (not case.errors)  # a case about a warning has no error, and stays valid
    if case.warnings is not None:
        warnings = [line_of(d) for d in report.diagnostics if d.severity is Severity.WARNING]
        assert warnings == case.warnings, context
    if case.hints is not None:
        assert len(case.hints) == len(errors), context
        for expected, d in zip(case.hints, errors, strict=True):
            assert expected in d.hint, context  # "" for an error whose hint the case does not pin


# -- the same cases through the command line: exit codes, and what a user reads -------------------


def invoke(*args: str, env: Mapping[str, str | None] = ENV) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=dict(env))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_broken_spec_on_the_command_line(case: Case, write_files: WriteFiles) -> None:
    """Exit 1 (0 for a warning), each expected error printed on a line of its own, then its [json.path]."""
    write_case(case, write_files)
    args = ["validate", *(["--strict"] if case.strict else []), "seamline.yaml"]
    code, output = invoke(*args, env={**ENV, **case.env})
    assert code == (1 if case.errors else 0), output
    printed = [line.partition("  [")[0] for line in output.splitlines() if ": error: " in line]
    assert printed == case.errors, output
    status = "invalid" if case.errors else "valid"
    assert output.splitlines()[-1].startswith(f"{status}: 1 spec checked, {len(case.errors)} error")
    if case.warnings is not None:
        printed = [line.partition("  [")[0] for line in output.splitlines() if ": warning: " in line]
        assert printed == case.warnings, output


@pytest.mark.parametrize("base", sorted(BASES))
def test_valid_spec_exits_0(base: str, write_files: WriteFiles) -> None:
    write_files(BASES[base])
    code, output = invoke("validate", "--strict", "seamline.yaml")
    assert code == 0, output
    assert output.splitlines()[-1].startswith("valid: 1 spec checked, 0 errors, 0 warnings")


def test_missing_env_var_exits_0_but_1_when_strict(write_files: WriteFiles) -> None:
    write_files(BASES["standard"])
    env = {**ENV, "ERP_URL": None}  # CliRunner unsets a variable given as None
    code, output = invoke("validate", "seamline.yaml", env=env)
    assert code == 0, output
    assert "seamline.yaml:8:11: warning: environment variable 'ERP_URL' is not set  [systems.erp.url]" in output
    code, output = invoke("validate", "--strict", "seamline.yaml", env=env)
    assert code == 1, output
    assert "seamline.yaml:8:11: error: environment variable 'ERP_URL' is not set  [systems.erp.url]" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["validate", "no/such/seamline.yaml"], "'no/such/seamline.yaml' does not exist"),
        (["validate", "empty"], "no seamline.yaml found under 'empty'"),
        (["validate", "--format", "yaml", "seamline.yaml"], "Invalid value for '--format'"),
        (["validate", "--stric", "seamline.yaml"], "No such option '--stric'. Did you mean '--strict'?"),
    ],
    ids=["missing-path", "folder-without-spec", "bad-format", "bad-option"],
)
def test_usage_errors_exit_2(args: list[str], message: str, write_files: WriteFiles) -> None:
    root = write_files(BASES["standard"])
    (root / "empty").mkdir()
    code, output = invoke(*args)
    assert code == 2, output
    assert message in output


def test_one_broken_spec_among_valid_ones_exits_1(write_files: WriteFiles) -> None:
    broken = next(case for case in CASES if case.id == "connector-unknown")
    write_files({f"specs/good/{name}": text for name, text in BASES["standard"].items()})
    write_files({f"specs/bad/{name}": text for name, text in broken.files.items()})
    code, output = invoke("validate", "specs")
    assert code == 1, output
    assert [line.partition("  [")[0] for line in output.splitlines() if ": error: " in line] == [
        "specs/bad/" + broken.errors[0]
    ]
    assert output.splitlines()[-1].startswith("invalid: 2 specs checked, 1 error")
