"""The reference clients' golden payloads are what their target systems accept.

Every golden case of every client under specs/ is rendered, and each payload goes through the
pre-send check of the connector it is written with (Magento's schema subset, an http endpoint's
schema, ...): a snapshot a reviewer approved must not be one the runtime would dead-letter. The
golden runner itself checks that each target's ``key`` is a field of its payload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.connector import ConnectContext, default_registry
from engine.flow import CompiledClient, load_client
from engine.testing import GoldenCase, discover_cases, render_snapshot
from tests.reference import reference_cases

ROOT = Path(__file__).resolve().parent.parent
CASES = reference_cases()
_CLIENTS: dict[str, CompiledClient] = {}


def _client(name: str) -> CompiledClient:
    if name not in _CLIENTS:
        _CLIENTS[name] = load_client(ROOT / "specs" / name / "seamline.yaml")
    return _CLIENTS[name]


def _checker(client: CompiledClient, system: str) -> Any:
    options = client.report.systems[system]
    kind = default_registry().get(options.connector)
    assert kind is not None and kind.runnable
    # The spec's templates stay unresolved: check() looks at payloads only and never sends anything.
    concrete = options.model_copy(update={"url": "http://127.0.0.1:9"}) if hasattr(options, "url") else options
    connection = kind.open(concrete, ConnectContext(system=system, client=client.client))
    return getattr(connection, "check", None)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_golden_payloads_pass_their_target_connectors_check(case: GoldenCase) -> None:
    client = _client(case.client)
    flow = client.flow(case.flow)
    rendered = json.loads(render_snapshot(flow, case))
    for target in flow.targets:
        if target.target is None:
            continue
        check = _checker(client, target.target.system)
        if check is None:
            continue
        # a target with create-only fields is sent one of two shapes: both must pass
        labels = [label for label, _ in target.shapes()] if target.depends_on_existence else [target.label]
        for label in labels:
            payloads = rendered[label]
            for payload in payloads if isinstance(payloads, list) else [payloads]:
                if payload is not None:
                    check(target.target.write, payload)


def test_commerce_payloads_are_really_checked() -> None:
    """The test above is not vacuous: the Commerce side (Magento) has a check, and it refuses a bad payload."""
    check = _checker(_client("acme"), "commerce")
    assert check is not None
    with pytest.raises(Exception, match="unknown field"):
        check("customers", {"email": "a@b.c", "firstname": "A", "lastname": "B", "erp_customer": "1"})


def test_a_target_key_missing_from_its_payload_fails_the_golden_case(write_files: Any) -> None:
    from engine.testing import run_case

    root = write_files(
        {
            "specs/k/seamline.yaml": (
                "seamline: 1\nclient: k\nsystems:\n  shop:\n    connector: http\n    url: http://127.0.0.1:9\n"
                "    endpoints:\n      items: { path: '/items/{id}', method: PUT }\n"
                "flows:\n  f:\n    trigger: { event: { webhook: /f } }\n"
                "    transform: '{ \"id\": code }'\n    target: { system: shop, write: items, key: sku }\n"
            ),
            "golden/k/f/one.input.json": '{"code": "A"}',
        }
    )
    client = load_client(root / "specs" / "k" / "seamline.yaml")
    (case,) = discover_cases(root / "golden")
    result = run_case(client, case, update=True)
    assert result.status == "error"
    assert "key 'sku' is not in the payload it is sent (it has: id)" in result.error
