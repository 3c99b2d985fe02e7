"""schemas/ is generated from the models; a stale committed schema fails here."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml
from click.testing import CliRunner

from engine.cli import main, schema_text
from engine.connector import default_registry


def test_committed_schema_is_fresh(repo_root: Path) -> None:
    committed = (repo_root / "schemas" / "spec.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), "schemas/ is stale: run 'seamline schema' and commit the result"


def test_schema_check_command(repo_root: Path) -> None:
    result = CliRunner().invoke(main, ["schema", "--check"])
    assert result.exit_code == 0, result.output


def test_schema_check_reports_stale(tmp_path: Path) -> None:
    (tmp_path / "spec.schema.json").write_text("{}", encoding="utf-8")
    result = CliRunner().invoke(main, ["schema", "--check", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "is stale; run 'seamline schema'" in result.output


def test_schema_is_valid_draft_2020_12_and_accepts_the_reference_spec(repo_root: Path) -> None:
    schema = json.loads((repo_root / "schemas" / "spec.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    # The schema describes one file, so the client file must validate on its own in an editor.
    for name in ("specs/acme/seamline.yaml",):
        data = yaml.safe_load((repo_root / name).read_text(encoding="utf-8"))
        errors = [e.message for e in validator.iter_errors(data)]
        assert errors == [], (name, errors)


def test_schema_checks_connector_options(repo_root: Path) -> None:
    schema = json.loads(schema_text())
    validator = jsonschema.Draft202012Validator(schema)
    spec = {
        "seamline": 1,
        "client": "x",
        "systems": {"shop": {"connector": "magento", "url": "https://x", "auth": {}, "bulkk": True}},
    }
    messages = [e.message for e in validator.iter_errors(spec)]
    assert any("bulkk" in m for m in messages), messages
    spec["systems"]["shop"] = {"connector": "magneto"}
    messages = [e.message for e in validator.iter_errors(spec)]
    assert any("magneto" in m for m in messages), messages
    systems = schema["$defs"]["spec"]["properties"]["systems"]["additionalProperties"]
    assert systems["properties"]["connector"]["enum"] == default_registry().names()


def test_overlay_files_need_no_required_keys_but_keys_are_still_checked() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(schema_text()))
    overlay = {"extends": "../_base/x.yaml", "flows": {"catalog": {"transform": "t.jsonata"}}}
    assert [e.message for e in validator.iter_errors(overlay)] == []
    overlay["flows"]["catalog"]["trigers"] = {}
    assert any("trigers" in e.message for e in validator.iter_errors(overlay))
    overlay = {"extends": "b.yaml", "systems": {"erp": {"connector": "magento", "bulkk": True}}}
    assert any("bulkk" in e.message for e in validator.iter_errors(overlay))
