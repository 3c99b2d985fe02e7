"""`seamline validate` output in its three formats, exit codes, and speed-independent behaviour."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from syrupy.assertion import SnapshotAssertion

from engine.cli import main
from tests.conftest import WriteFiles

BROKEN = """\
seamline: 1
client: demo
systems:
  shop:
    connector: magento
    url: "{{ env.SHOP_URL }}"
    auth: { bearer: { token: "{{ secret.SHOP_TOKEN }}" } }
flows:
  catalog:
    trigger: { schedule: "0 */4 * * *" }
    source: { system: shop, read: product, cursor: updated_at }
    transform: |
      { "sku": sku,
        "name": $uppercas(name) }
    target: { system: shop, write: products, mode: upsrt }
"""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"SHOP_URL": "https://shop.example"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_text_format(write_files: WriteFiles, snapshot: SnapshotAssertion) -> None:
    write_files({"seamline.yaml": BROKEN})
    code, output = run("validate", "seamline.yaml")
    assert code == 1
    body, _, summary = output.rstrip("\n").rpartition("\n")
    assert summary.startswith("invalid: 1 spec checked, 3 errors, 1 warning, 0 notes (")
    assert body == snapshot


def test_json_format(write_files: WriteFiles, snapshot: SnapshotAssertion) -> None:
    write_files({"seamline.yaml": BROKEN})
    code, output = run("validate", "--format", "json", "seamline.yaml")
    assert code == 1
    payload = json.loads(output)
    payload["summary"].pop("elapsed_ms")
    assert payload == snapshot


def test_github_format(write_files: WriteFiles, snapshot: SnapshotAssertion) -> None:
    write_files({"seamline.yaml": BROKEN})
    code, output = run("validate", "--format", "github", "seamline.yaml")
    assert code == 1
    assert output == snapshot
    assert output.startswith("::error file=seamline.yaml,line=11,col=35,title=seamline capability::")


def test_strict_turns_missing_secret_into_an_error(write_files: WriteFiles) -> None:
    write_files(
        {
            "seamline.yaml": BROKEN.replace("read: product", "read: products")
            .replace("uppercas", "uppercase")
            .replace("upsrt", "upsert")
        }
    )
    assert run("validate", "seamline.yaml")[0] == 0
    code, output = run("validate", "--strict", "seamline.yaml")
    assert code == 1
    assert "error: secret 'SHOP_TOKEN' is not available" in output


def test_secret_values_are_never_printed(write_files: WriteFiles) -> None:
    write_files({"seamline.yaml": BROKEN})
    result = CliRunner().invoke(
        main,
        ["validate", "--format", "json", "seamline.yaml"],
        env={"SHOP_URL": "https://shop.example", "SHOP_TOKEN": "s3cr3t-value"},
    )
    assert "s3cr3t-value" not in result.output
    assert "SHOP_TOKEN" not in result.output  # present now: no message about it at all


def test_usage_errors_exit_2(write_files: WriteFiles) -> None:
    write_files({})
    assert run("validate", "no/such/path.yaml")[0] == 2
    assert run("validate", "--format", "xml", "x")[0] == 2
    Path("empty-dir").mkdir()
    code, output = run("validate", "empty-dir")
    assert code == 2
    assert "no seamline.yaml found under 'empty-dir'" in output


def test_folder_of_clients_skips_underscore_bases(write_files: WriteFiles) -> None:
    good = BROKEN.replace("read: product", "read: products").replace("uppercas", "uppercase").replace("upsrt", "upsert")
    write_files(
        {
            "specs/a/seamline.yaml": good,
            "specs/b/seamline.yaml": good.replace("demo", "demo-b"),
            "specs/_base/seamline.yaml": "not: [valid",
        }
    )
    code, output = run("validate", "specs")
    assert code == 0, output
    assert "2 specs checked" in output


def test_a_yaml_trap_does_not_hide_the_other_problems(write_files: WriteFiles) -> None:
    write_files(
        {
            "seamline.yaml": """\
seamline: 1
client: acme
systems:
  erp:
    connector: http
    url: {{ env.ERP_URL }}
    auth: { basic: { username: api, password: s3cret } }
flows:
  catalog:
    trigger: { schedule: "0 */4 * * *" }
    source: { system: erp, read: products }
    transform: yes
    target: { system: erp, write: products }
"""
        }
    )
    code, output = run("validate", "seamline.yaml")
    assert code == 1
    errors = [line.split(": error: ")[1].split("  [")[0] for line in output.splitlines() if ": error: " in line]
    assert errors == [
        "YAML read the unquoted template {{ env.ERP_URL }} as a map; quote it",
        "'password' is written literally in the spec; secrets must not be committed",
        "system 'erp' (http) has nothing to read",
        "transform was read by YAML as a boolean (yes), not as JSONata text; quote it or write it as a '|' block",
        "system 'erp' (http) has nothing to write",
    ]
    assert "s3cret" not in output
