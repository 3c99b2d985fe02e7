"""Every client's golden cases, under both JSONata backends, through syrupy.

`pytest --snapshot-update` writes the same files as `seamline test --update`; the snapshot
must not depend on the backend (CI has both installed, so both always run here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from syrupy.assertion import SnapshotAssertion

from engine.flow import CompiledClient, load_client
from engine.testing import GOLDEN_NOW, GoldenCase, golden_extension, render_snapshot
from engine.transform import BACKENDS, available_backends
from tests.reference import reference_cases, reference_specs

ROOT = Path(__file__).resolve().parent.parent
CASES = reference_cases()
_clients: dict[tuple[str, str], CompiledClient] = {}


def compiled(client: str, backend: str) -> CompiledClient:
    key = (client, backend)
    if key not in _clients:
        _clients[key] = load_client(ROOT / "specs" / client / "seamline.yaml", backend=backend, now=GOLDEN_NOW)
    return _clients[key]


def test_there_are_golden_cases_for_every_flow_of_every_client() -> None:
    for spec in reference_specs():
        client = compiled(spec.parent.name, "jsonata-python")
        own = (ROOT / spec.parent).resolve()
        if not any(Path(f).resolve().is_relative_to(own) for flow in client.flows.values() for f in flow.mapping_files):
            continue  # an overlay that changes systems only (demo-rabbitmq): its parent's goldens cover its mappings
        tested = {case.flow for case in CASES if case.client == client.client}
        assert tested == set(client.flows), f"{client.client}: flows without golden cases: {set(client.flows) - tested}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_golden_case(
    case: GoldenCase, backend: str, snapshot: SnapshotAssertion, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend not in available_backends():
        pytest.fail(f"JSONata backend {backend} is not installed; CI runs goldens under both: pip install -e '.[dev]'")
    monkeypatch.chdir(ROOT)  # snapshots name files relative to the repository, as `seamline test` does
    text = render_snapshot(compiled(case.client, backend).flow(case.flow), case)
    assert text == snapshot(extension_class=golden_extension(case, text))
