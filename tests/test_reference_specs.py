"""The reference specs in specs/ validate clean, and extends/overlay behaves as documented."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from engine.cli import main
from engine.errors import Severity
from engine.spec import discover_specs, resolve_spec, validate_spec
from tests.reference import reference_specs

FLOWS_OF_THE_MISSION = {
    "catalog",
    "list-prices",
    "contract-price",
    "inventory",
    "customers-to-erp",
    "customers-from-erp",
    "orders",
    "order-status",
}


def test_every_client_spec_validates(repo_root: Path) -> None:
    specs = reference_specs()
    assert set(discover_specs([Path("specs")])) >= set(specs)  # validate finds them all in specs/
    for spec in specs:
        report = validate_spec(spec, environ={})
        errors = [d.render() for d in report.diagnostics if d.severity is Severity.ERROR]
        assert errors == [], spec
        assert report.document is not None
        if spec.parent.name == "acme":  # the SAP reference names the flows the mission lists
            assert set(report.document.flows) == FLOWS_OF_THE_MISSION


def test_reference_spec_declares_all_five_flow_patterns(repo_root: Path) -> None:
    report = validate_spec(Path("specs/acme/seamline.yaml"), environ={})
    assert report.document is not None
    flows = report.document.flows
    assert flows["catalog"].trigger.kind == "schedule" and flows["catalog"].discontinued == "disable"
    assert flows["list-prices"].trigger.kind == "schedule"
    assert flows["contract-price"].trigger.kind == "request"
    assert flows["inventory"].trigger.kind == "event"
    assert flows["customers-to-erp"].trigger.kind == "event"  # Commerce -> ERP, CRM
    customer_targets = {t.system for t in flows["customers-from-erp"].all_targets()}
    assert customer_targets == {"commerce", "crm"}  # ERP -> Commerce, CRM
    assert {t.system for t in flows["orders"].all_targets()} == {"erp", "crm"}
    assert flows["orders"].source is not None and flows["orders"].source.system == "commerce"
    assert flows["order-status"].all_targets()[0].system == "commerce"


def test_overlay_merges_maps_replaces_lists_and_keeps_origins(repo_root: Path) -> None:
    merged = resolve_spec(Path("specs/acme/seamline.yaml"), "specs/acme/seamline.yaml")
    assert merged.ok
    erp = merged.data["systems"]["erp"]
    assert erp["limits"] == {"rate": "5/s", "concurrency": 2, "timeout": "10s"}  # overlaid
    assert "products" in erp["endpoints"]  # kept from the base
    targets = merged.data["flows"]["customers-from-erp"]["targets"]
    assert len(targets) == 3  # the client's list replaced the base's two
    assert merged.origin(("flows", "catalog", "transform")) == "specs/acme/seamline.yaml"
    assert merged.origin(("flows", "catalog", "source")) == "specs/_base/sap-to-magento.yaml"
    assert merged.chain == ["specs/acme/seamline.yaml", "specs/_base/sap-to-magento.yaml"]


def test_cli_validate_specs_exits_zero(repo_root: Path) -> None:
    result = CliRunner().invoke(main, ["validate", *map(str, reference_specs()), "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["valid"] is True
    assert payload["summary"]["errors"] == 0


def test_cli_show_prints_origin_of_each_flow(repo_root: Path) -> None:
    result = CliRunner().invoke(main, ["show", "acme"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    catalog = next(line for line in lines if line.startswith("  catalog:"))
    assert catalog.startswith("  catalog:  # from specs/_base/sap-to-magento.yaml:")
    assert ", overlaid by specs/acme/seamline.yaml:40" in catalog
    orders = next(line for line in lines if line.startswith("  orders:"))
    assert "overlaid" not in orders
    assert lines[4].startswith("extends: ../_base/sap-to-magento.yaml  # from specs/acme/seamline.yaml:13")
    as_json = json.loads(CliRunner().invoke(main, ["show", "acme", "--format", "json"]).output)
    assert as_json["origins"]["lookups"]["plants"] == "specs/acme/seamline.yaml:32"
    assert as_json["spec"]["client"] == "acme"
