"""`seamline test` and `seamline map` on the repository and on a scratch copy of specs/ and golden/.

The copy lets a test break a mapping or an input the way a pull request would, and check what the
reviewer is shown: a diff per failing case, an ERROR with file:line:col, a summary table, which
clients a shared base mapping affects, and exit codes. `--update` and pytest's syrupy extension must
write byte-identical snapshots. `map --watch` runs in a real process.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import main
from engine.flow import load_client
from engine.testing import GOLDEN_NOW
from tests.reference import copy_reference, reference_cases

ROOT = Path(__file__).resolve().parent.parent
STOCK = Path("specs/acme/transforms/stock.jsonata")
LIST_PRICE = Path("specs/_base/transforms/list-price.jsonata")
RECEIPT = "golden/acme/inventory/receipt-in-cartons"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(text.replace(old, new), encoding="utf-8")


def copy_repo(into: Path) -> Path:
    """Our reference clients' specs and goldens (never a user's client beside them)."""
    into.mkdir(parents=True, exist_ok=True)
    return copy_reference(into)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of specs/ and golden/; the working directory, as a user runs `seamline test` there."""
    copy_repo(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def add_client(root: Path, name: str) -> None:
    """A second client extending the same base: acme's spec and golden cases under another name."""
    shutil.copytree(root / "specs" / "acme", root / "specs" / name)
    edit(root / "specs" / name / "seamline.yaml", "\nclient: acme\n", f"\nclient: {name}\n")
    shutil.copytree(root / "golden" / "acme", root / "golden" / name)


def summary(output: str) -> str:
    return output.rstrip("\n").rsplit("\n", 1)[-1]


def table_row(output: str, client: str, flow: str) -> list[str]:
    for line in output.splitlines():
        cells = line.split()
        if cells[:2] == [client, flow]:
            return cells[2:6]
    raise AssertionError(f"no summary row for {client}/{flow} in:\n{output}")


ACME_CASES = reference_cases("acme")
ALL_CASES = reference_cases()  # every reference client's (acme, demo, ...)
OTHER_CASES = len(ALL_CASES) - len(ACME_CASES)
ACME_FLOWS = list(load_client(ROOT / "specs" / "acme" / "seamline.yaml").flows)


# -- seamline test on the repository ------------------------------------------------------------


@pytest.mark.parametrize("args", [["test", "acme"], ["test", "--all"], ["test"]])
def test_the_repository_passes(args: list[str], scratch: Path) -> None:
    code, output = run(*args)
    assert code == 0, output
    cases = ACME_CASES if "acme" in args else ALL_CASES
    assert summary(output) == f"{len(cases)} passed, 0 failed"
    assert "FAIL" not in output and "ERROR" not in output
    for flow in ACME_FLOWS:
        count = str(sum(1 for case in ACME_CASES if case.flow == flow))
        assert table_row(output, "acme", flow) == [count, count, "0", "0"], flow
    assert table_row(output, "acme", "inventory")[0] == "3"
    assert "specs/acme/transforms/stock.jsonata" in output  # the table names each flow's mapping files


def test_one_flow_of_the_repository(scratch: Path) -> None:
    code, output = run("test", "acme", "--flow", "inventory")
    assert code == 0
    assert summary(output) == "3 passed, 0 failed"
    assert [line.split()[1] for line in output.splitlines() if line.startswith("acme ")] == ["inventory"]


# -- failures on a scratch copy -----------------------------------------------------------------


def test_a_changed_mapping_fails_with_a_diff_and_the_run_goes_on(scratch: Path) -> None:
    edit(STOCK, '"status": $decimal(available) > 0 ? 1 : 0', '"status": $decimal(available) > 0 ? 1 : 2')
    edit(Path("specs/acme/transforms/product.jsonata"), '"type_id": "simple"', '"type_id": "configurable"')
    code, output = run("test", "acme")
    assert code == 1
    assert "FAIL acme/inventory/ship-to-zero-stuttgart\n" in output
    assert (
        "--- golden/acme/inventory/ship-to-zero-stuttgart.snapshot.json (reviewed)\n"
        "+++ acme/inventory/ship-to-zero-stuttgart (now)\n"
    ) in output
    assert '\n-    "status": 0\n+    "status": 2\n' in output
    catalog = [case.name for case in ACME_CASES if case.flow == "catalog"]
    for name in catalog:  # the first flow fails, every later case still runs
        assert f"FAIL acme/catalog/{name}\n" in output
    assert '-    "type_id": "simple",\n+    "type_id": "configurable",' in output
    failed = len(catalog) + 1
    assert summary(output) == f"{len(ACME_CASES) - failed} passed, {failed} failed"
    assert table_row(output, "acme", "inventory") == ["3", "2", "1", "0"]
    assert table_row(output, "acme", "orders") == ["1", "1", "0", "0"]
    assert "shared mapping" not in output  # acme's own mappings, no other client affected


def test_a_broken_mapping_is_an_error_per_case_with_its_place_and_record(scratch: Path) -> None:
    edit(
        STOCK,
        '"quantity": $uom(available, unit, $lookups.units),',
        '"quantity": $uom(available, unit, $lookups.units) + $number(document & " pcs"),',
    )
    edit(LIST_PRICE, '"price": $number(ConditionRateValue),', '"price": $number(ConditionRateValue & "EUR"),')
    code, output = run("test", "acme")
    assert code == 1
    # a record whose transform fails would be dead-lettered: the case fails, naming the place and the record
    for case, document in [
        ("receipt-in-cartons", "5000012345"),
        ("return-us-decimal", "6000000001"),
        ("ship-to-zero-stuttgart", "8000004711"),
    ]:
        assert (
            f"FAIL acme/inventory/{case}: record 1: would be dead-lettered: [acme/inventory] "
            f"specs/acme/transforms/stock.jsonata:5:55: JSONata error D3030: Unable to cast value to a number: "
            f'"{document} pcs" (record {case}); if that is expected, run with --update to write {case}.error.txt'
        ) in output
    # a list input names the record inside the case
    assert (
        "FAIL acme/list-prices/pr00-and-deleted: record 1: would be dead-lettered: [acme/list-prices] "
        "specs/_base/transforms/list-price.jsonata:4:12: JSONata error D3030: Unable to cast value to a number: "
        '"189.90EUR" (record pr00-and-deleted[0])'
    ) in output
    assert summary(output) == f"{len(ACME_CASES) - 4} passed, 4 failed"
    assert table_row(output, "acme", "inventory") == ["3", "0", "3", "0"]
    assert table_row(output, "acme", "catalog")[3] == "0"


def test_a_case_can_expect_a_rejection_and_update_writes_it(scratch: Path) -> None:
    """A poison case states the dead-letter reason it expects (<case>.error.txt); it is no longer deleted."""
    poison = Path("golden/acme/inventory/poison-unit.input.json")
    poison.write_text(
        '{ "movement": "receipt", "material": "000000000000004711", "plant": "DE01", "unit": "XYZ",'
        ' "available": "1", "document": "5000099999" }\n',
        encoding="utf-8",
    )
    code, output = run("test", "acme", "--flow", "inventory")
    assert code == 1 and "FAIL acme/inventory/poison-unit: record 1: would be dead-lettered" in output, output
    code, output = run("test", "acme", "--flow", "inventory", "--update")
    assert code == 0, output
    expected = Path("golden/acme/inventory/poison-unit.error.txt")
    assert expected.read_text(encoding="utf-8").startswith("record 1: would be dead-lettered: ")
    assert not Path("golden/acme/inventory/poison-unit.snapshot.json").exists()  # nothing is delivered
    code, output = run("test", "acme", "--flow", "inventory")
    assert code == 0 and summary(output) == "4 passed, 0 failed", output
    # the mapping fixed: the record is delivered, the expected rejection no longer holds
    expected.write_text("record 1: would be dead-lettered: something else\n", encoding="utf-8")
    code, output = run("test", "acme", "--flow", "inventory")
    assert code == 1 and "--- error.txt ---" in output, output


def test_update_rewrites_snapshots_and_the_next_run_passes(scratch: Path) -> None:
    edit(STOCK, '"status": $decimal(available) > 0 ? 1 : 0', '"status": $decimal(available) > 0 ? 1 : 2')
    new_input = Path("golden/acme/inventory/pallet-return.input.json")
    new_input.write_text(
        '{ "movement": "return", "material": "000000000000004711", "plant": "DE01", "unit": "PAL",'
        ' "available": "2", "document": "6000000002" }\n',
        encoding="utf-8",
    )
    code, output = run("test", "acme")
    assert code == 1
    assert "FAIL acme/inventory/pallet-return: no reviewed snapshot yet; run with --update" in output

    code, output = run("test", "acme", "--update")
    assert code == 0, output
    assert "UPDATED golden/acme/inventory/ship-to-zero-stuttgart.snapshot.json" in output
    assert "NEW golden/acme/inventory/pallet-return.snapshot.json" in output
    assert summary(output) == f"{len(ACME_CASES) - 1} passed, 0 failed, 2 written"
    assert json.loads(Path("golden/acme/inventory/ship-to-zero-stuttgart.snapshot.json").read_text()) == {
        "commerce.source-items": {"sku": "4712", "source_code": "acme_stuttgart", "quantity": 0, "status": 2}
    }
    assert json.loads(Path("golden/acme/inventory/pallet-return.snapshot.json").read_text()) == {
        "commerce.source-items": {"sku": "4711", "source_code": "acme_stuttgart", "quantity": 960, "status": 1}
    }

    code, output = run("test", "acme")
    assert code == 0, output
    assert summary(output) == f"{len(ACME_CASES) + 1} passed, 0 failed"


def test_golden_runs_fix_now_and_map_does_only_when_asked(scratch: Path) -> None:
    edit(STOCK, '"sku": $materialNumber(material),', '"sku": $materialNumber(material),\n  "at": $now(),')
    code, output = run("test", "acme", "--flow", "inventory", "--update")
    assert code == 0, output
    snapshot = json.loads(Path(f"{RECEIPT}.snapshot.json").read_text(encoding="utf-8"))
    assert snapshot["commerce.source-items"]["at"] == GOLDEN_NOW == "2025-01-15T08:00:00.000Z"
    code, output = run("test", "acme", "--flow", "inventory")
    assert code == 0, output
    args = ["map", "--client", "acme", "--flow", "inventory", "--input", f"{RECEIPT}.input.json"]
    code, output = run(*args)
    at = datetime.fromisoformat(json.loads(output)["commerce.source-items"]["at"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - at).total_seconds()) < 60  # the clock, not the golden time
    code, output = run(*args, "--now", "2030-06-01T12:00:00Z")
    assert json.loads(output)["commerce.source-items"]["at"] == "2030-06-01T12:00:00.000Z"


BROKEN_INPUTS = {
    "bad-json.input.json": ('{ "movement": "receipt",\n  "material": "4711",\n  "plant": DE02 }\n', "3:12", "JSON"),
    "bad-xml.input.xml": (
        "<movement>\n  <material>4711</material>\n  <plant>DE02</plnt>\n</movement>\n",
        "3:16",
        "XML",
    ),
    "ragged.input.csv": (
        'material,plant,unit,available,document\n4711,DE02,KAR,41,"note\nover two lines"\n4712,DE01,ST\n',
        "4:1",
        "CSV",
    ),
}


def test_an_input_that_cannot_be_read_is_an_error_with_file_and_line(scratch: Path) -> None:
    folder = Path("golden/acme/inventory")
    for name, (text, _, _) in BROKEN_INPUTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    code, output = run("test", "acme")
    assert code == 1
    assert f"ERROR acme/inventory/bad-json: {folder}/bad-json.input.json:3:12: golden input is not valid JSON" in output
    assert f"ERROR acme/inventory/bad-xml: {folder}/bad-xml.input.xml:3:16: golden input is not valid XML" in output
    assert (
        f"ERROR acme/inventory/ragged: {folder}/ragged.input.csv:4:1: golden CSV row has 3 fields, the header has 5"
    ) in output
    assert summary(output) == f"{len(ACME_CASES)} passed, 0 failed, 3 errors"


def test_xml_and_csv_inputs_are_read(scratch: Path) -> None:
    folder = Path("golden/acme/inventory")
    (folder / "semicolons.input.csv").write_text(
        "material;plant;unit;available;document\n000000000000004711;DE02;KAR;1,5;1\nHV-200-SET;US10;PAL;0;2\n",
        encoding="utf-8",
    )
    (folder / "idoc.input.xml").write_text(
        '<?xml version="1.0"?>\n<movement xmlns="urn:sap" kind="receipt"><material>000000000000004712</material>'
        "<plant>DE01</plant><unit>ST</unit><available>7</available></movement>\n",
        encoding="utf-8",
    )
    code, output = run("test", "acme", "--flow", "inventory", "--update")
    # XML is nested maps under the root element (attributes are @name, namespaces dropped), so ACME's
    # mapping finds no material in it: the payload has no sku, the target's key, and the case says so.
    assert code == 1, output
    assert (
        "ERROR acme/inventory/idoc: flow 'inventory', target commerce.source-items: key 'sku' is not in the "
        "payload it is sent (it has: status)"
    ) in output
    assert json.loads((folder / "semicolons.snapshot.json").read_text()) == {
        "commerce.source-items": [
            {"sku": "4711", "source_code": "acme_leipzig", "quantity": 18, "status": 1},
            {"sku": "HV-200-SET", "source_code": "acme_charlotte", "quantity": 0, "status": 0},
        ]
    }
    assert not (folder / "idoc.snapshot.json").exists()
    code, output = run("map", "--client", "acme", "--flow", "inventory", "--input", str(folder / "idoc.input.xml"))
    assert code == 0
    assert json.loads(output) == {"commerce.source-items": {"status": 0}}


def test_a_misspelt_flow_is_a_usage_error_with_the_nearest_name(scratch: Path) -> None:
    code, output = run("test", "acme", "--flow", "inventoyr")
    assert code == 2
    assert "client 'acme' has no flow 'inventoyr' — did you mean 'inventory'?" in output
    code, output = run("test", "--flow", "inventoyr")
    assert code == 2
    assert "no client has a flow 'inventoyr' — did you mean 'inventory'?" in output
    code, output = run("test", "acmee")
    assert code == 2
    assert "no client 'acmee'" in output and "clients: acme" in output


def test_a_base_change_names_every_client_it_breaks(scratch: Path) -> None:
    add_client(scratch, "globex")
    edit(LIST_PRICE, '"store_id": 0', '"store_id": 1')
    code, output = run("test", "--all")
    assert code == 1
    assert "FAIL acme/list-prices/pr00-and-deleted" in output
    assert "FAIL globex/list-prices/pr00-and-deleted" in output
    assert (
        "shared mapping specs/_base/transforms/list-price.jsonata is used by failing cases of: acme, globex" in output
    )
    assert summary(output) == f"{2 * len(ACME_CASES) - 2 + OTHER_CASES} passed, 2 failed"
    assert table_row(output, "globex", "list-prices") == ["1", "0", "1", "0"]
    assert table_row(output, "globex", "catalog")[2] == "0"


def test_a_client_mapping_is_not_reported_as_shared_wherever_the_checkout_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_repo(tmp_path / "_work" / "checkout")  # a folder starting with '_' above specs/
    monkeypatch.chdir(root)
    add_client(root, "globex")
    edit(STOCK, '"status": $decimal(available) > 0 ? 1 : 0', '"status": $decimal(available) > 0 ? 1 : 2')
    code, output = run("test", "--all", "--specs", str(root / "specs"), "--golden", str(root / "golden"))
    assert code == 1
    assert "FAIL acme/inventory/ship-to-zero-stuttgart" in output
    assert "shared mapping" not in output, output


def test_clients_without_cases_and_cases_without_a_client_are_named(scratch: Path) -> None:
    add_client(scratch, "globex")
    shutil.rmtree("golden/globex")
    orphan = Path("golden/initech/inventory")
    orphan.mkdir(parents=True)
    shutil.copy(f"{RECEIPT}.input.json", orphan)
    code, output = run("test", "--all")
    assert code == 1
    assert (
        "ERROR initech/inventory/receipt-in-cartons: no spec for client 'initech' "
        "(expected specs/initech/seamline.yaml)"
    ) in output
    assert "note: client 'globex' has no golden cases (add golden/globex/<flow>/<case>.input.json)" in output
    assert summary(output) == f"{len(ALL_CASES)} passed, 0 failed, 1 errors"
    code, output = run("test", "acme", "--all")
    assert code == 2 and "give a CLIENT or --all, not both" in output


def test_an_invalid_spec_fails_every_case_of_its_client_with_the_problem(scratch: Path) -> None:
    edit(Path("specs/_base/sap-to-magento.yaml"), "connector: http\n", "connector: htp\n")
    code, output = run("test", "acme")
    assert code == 1
    assert (
        "ERROR acme/inventory/receipt-in-cartons: the spec is invalid: specs/_base/sap-to-magento.yaml:19:16: "
        "error: unknown connector 'htp'"
    ) in output
    assert summary(output) == f"0 passed, 0 failed, {len(ACME_CASES)} errors"


# -- `seamline test --update` and pytest's syrupy write the same files ----------------------------

SYRUPY_TEST = """
from pathlib import Path

import pytest

from engine.flow import load_client
from engine.testing import GOLDEN_NOW, discover_cases, golden_extension, render_snapshot

ROOT = Path(__file__).parent
CASES = discover_cases(ROOT / "golden")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_golden(case, snapshot, monkeypatch):
    monkeypatch.chdir(ROOT)
    client = load_client(ROOT / "specs" / case.client / "seamline.yaml", now=GOLDEN_NOW)
    text = render_snapshot(client.flow(case.flow), case)
    assert text == snapshot(extension_class=golden_extension(case, text))
"""


def snapshots(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("golden/**/*.snapshot.json"))}


def test_syrupy_and_update_write_byte_identical_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copies = {name: copy_repo(tmp_path / name) for name in ("cli", "syrupy")}
    for root in copies.values():
        edit(root / LIST_PRICE, '"price": $number(ConditionRateValue),', '"price": $number(ConditionRateValue) * 1.19,')
        edit(root / STOCK, '"status": $decimal(available) > 0 ? 1 : 0', '"status": $decimal(available) > 0')
        (root / "golden/acme/inventory/receipt-in-cartons.snapshot.json").unlink()
        (root / "golden/acme/inventory/wide.input.csv").write_text(
            'material,plant,unit,available,document\n000000000000004711,DE02,KAR,"1.234,5",1\n', encoding="utf-8"
        )
    before = snapshots(copies["cli"])

    monkeypatch.chdir(copies["cli"])
    code, output = run("test", "--all", "--update")
    assert code == 0, output

    (copies["syrupy"] / "test_goldens.py").write_text(SYRUPY_TEST, encoding="utf-8")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env["SEAMLINE_TRANSFORM_BACKEND"] = "jsonata-python"  # the CLI side runs auto (jlens): same bytes
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--snapshot-update", "test_goldens.py"],
        cwd=copies["syrupy"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    written = snapshots(copies["cli"])
    assert written == snapshots(copies["syrupy"])
    assert written != before  # the edits did change snapshots, so the comparison means something
    assert "golden/acme/inventory/receipt-in-cartons.snapshot.json" in written
    assert "golden/acme/inventory/wide.snapshot.json" in written
    assert b'"price": 225.98' in written["golden/acme/list-prices/pr00-and-deleted.snapshot.json"]
    assert b'"status": true' in written["golden/acme/inventory/receipt-in-cartons.snapshot.json"]

    monkeypatch.chdir(copies["syrupy"])
    code, output = run("test", "--all")
    assert code == 0, output


# -- seamline map -------------------------------------------------------------------------------


def test_map_prints_what_each_target_would_be_sent(repo_root: Path) -> None:
    code, output = run(
        "map", "--client", "acme", "--flow", "inventory", "--input", f"{RECEIPT}.input.json", "--now", GOLDEN_NOW
    )
    assert code == 0
    assert output == Path(f"{RECEIPT}.snapshot.json").read_text(encoding="utf-8")
    catalog = "golden/acme/catalog/zfields-and-languages"
    code, output = run("map", "--client", "specs/acme", "--flow", "catalog", "--input", f"{catalog}.input.json")
    assert code == 0  # --client also takes the client's folder
    assert json.loads(output) == json.loads(Path(f"{catalog}.snapshot.json").read_text(encoding="utf-8"))


def test_map_of_a_list_input_prints_one_preview_per_record(repo_root: Path) -> None:
    code, output = run(
        "map",
        "--client",
        "acme",
        "--flow",
        "list-prices",
        "--input",
        "golden/acme/list-prices/pr00-and-deleted.input.json",
    )
    assert code == 0
    assert json.loads(output) == [
        {"commerce.base-prices": {"sku": "4711", "price": 189.9, "store_id": 0}},
        {"commerce.base-prices": None},
        {"commerce.base-prices": None},
    ]


def test_map_of_a_broken_mapping_prints_the_error_with_its_place(scratch: Path) -> None:
    edit(STOCK, '"quantity": $uom(', '"quantity": $number(plant) + $uom(')
    code, output = run("map", "--client", "acme", "--flow", "inventory", "--input", f"{RECEIPT}.input.json")
    assert code == 1
    assert output == (
        "error: record 1: would be dead-lettered: [acme/inventory] specs/acme/transforms/stock.jsonata:5:15: "
        'JSONata error D3030: Unable to cast value to a number: "DE02" (record receipt-in-cartons.input.json)\n'
    )


def test_map_of_a_mapping_that_does_not_compile_prints_the_spec_error(scratch: Path) -> None:
    edit(STOCK, '"status": $decimal(available) > 0 ? 1 : 0', '"status": $decimal(available) > 0 ? 1 :')
    code, output = run("map", "--client", "acme", "--flow", "inventory", "--input", f"{RECEIPT}.input.json")
    assert code == 1
    assert re.match(r"specs/acme/transforms/stock\.jsonata:7:1: error: JSONata syntax error S0211: ", output), output
    assert "[flows.inventory.transform]" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--flow", "inventoyr"], "client 'acme' has no flow 'inventoyr' — did you mean 'inventory'?"),
        (["--flow", "inventory", "--now", "yesterday"], "the fixed time 'yesterday' (--now) is not an ISO 8601"),
        (["--flow", "inventory", "--backend", "jlns"], "Invalid value for '--backend'"),
    ],
)
def test_map_usage_errors(args: list[str], message: str, repo_root: Path) -> None:
    code, output = run("map", "--client", "acme", "--input", f"{RECEIPT}.input.json", *args)
    assert code == 2
    assert message in output


class Lines:
    """A process's stdout, line by line, with bounded waits."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: [self._queue.put(line) for line in stdout], daemon=True).start()

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; output so far:\n{''.join(self.seen)}")


@pytest.fixture
def watching(scratch: Path) -> Iterator[tuple[Path, Lines]]:
    record = scratch / "record.json"
    shutil.copy(f"{RECEIPT}.input.json", record)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "engine.cli", "map", "--client", "acme", "--flow", "inventory"]
    process = subprocess.Popen(
        [*command, "--input", str(record), "--watch", "--now", GOLDEN_NOW],
        cwd=scratch,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        yield record, Lines(process)
    finally:
        process.kill()
        process.wait(timeout=5)


def save(path: Path, old: str, new: str) -> None:
    """Edit a file as an editor saves it, with a modification time the watcher cannot miss."""
    edit(path, old, new)
    stamp = time.time() + 1
    os.utime(path, (stamp, stamp))


def test_map_watch_runs_again_on_every_save(watching: tuple[Path, Lines]) -> None:
    record, lines = watching
    started = time.monotonic()
    lines.wait_for(r"── \d\d:\d\d:\d\d  inventory on .*record\.json ──", timeout=5)
    lines.wait_for(r'"quantity": 492,', timeout=3)

    save(record, '"available": "41"', '"available": "42"')  # the input
    lines.wait_for(r'"quantity": 504,', timeout=3)

    save(STOCK, '"status": $decimal(available) > 0 ? 1 : 0', '"status": $number(plant)')  # a mapping
    lines.wait_for(r'^error: .*stock\.jsonata:6:13: JSONata error D3030: .*"DE02"', timeout=3)

    save(STOCK, '"status": $number(plant)', '"status": $decimal(available) > 0 ? 1 : 0')  # and back
    lines.wait_for(r'"status": 1', timeout=3)

    save(Path("specs/acme/lookups/units.csv"), "KAR,12", "KAR,10")  # a code table
    lines.wait_for(r'"quantity": 420,', timeout=3)
    assert time.monotonic() - started < 10


def test_a_request_case_proves_the_request_transform_and_needs_a_request_flow(scratch: Path) -> None:
    folder = Path("golden/demo/contract-price")
    (folder / "cart-odd-case.request.json").write_text('{"sku": "WIDGET-1", "customer_email": "A@B.C"}\n')
    code, output = run("test", "demo", "--flow", "contract-price", "--update")
    assert code == 0, output
    assert json.loads((folder / "cart-odd-case.request.snapshot.json").read_text()) == {
        "erp.price": {"code": "WIDGET-1", "quantity": 1, "party": {"email": "a@b.c"}}
    }
    (Path("golden/demo/catalog") / "misplaced.request.json").write_text('{"sku": "X"}\n')
    code, output = run("test", "demo", "--flow", "catalog")
    assert code == 1
    assert "misplaced.request.json: a .request.json case needs a flow with a request trigger; 'catalog' has none" in (
        output
    )
