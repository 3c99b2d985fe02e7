"""`run --once` (summary, dry run, a failing source), operator commands, and request triggers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse
from engine.cli import main
from engine.state import NewItem, open_store
from tests.runtime.harness import DaemonProcess

SPEC = """\
seamline: 1
client: oncetest
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    limits: { rate: 50/s, concurrency: 1, timeout: 1s }
    endpoints:
      products: { path: /products, pagination: { style: page, page_size: 10 } }
      price: { path: /price, method: POST }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
flows:
  catalog:
    trigger: { schedule: "0 3 * * *" }
    source: { system: erp, read: products, cursor: changed, id: Product }
    transform: '{ "sku": Product, "name": $uppercase(name) }'
    target: { system: shop, write: products, key: sku }
  price:
    trigger: { request: { path: /price, timeout: 500ms, cache: 60s } }
    source: { system: erp, call: price }
    transform: '{ "sku": sku, "price": $round(net * 1.0, 2) }'
"""


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]]]:
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.seed(
            "/products",
            [
                {"id": f"P{i}", "Product": f"P{i}", "name": f"valve {i}", "changed": f"2025-01-0{1 + i % 3}"}
                for i in range(25)
            ],
        )
        (tmp_path / "seamline.yaml").write_text(SPEC, encoding="utf-8")
        env = {"ERP_URL": erp.url, "SHOP_URL": shop.url}
        yield tmp_path, erp, shop, env


def cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_run_once_reads_delivers_and_summarises(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, _erp, shop, env = setup
    state = ["--state", f"sqlite:///{root / 'state.db'}"]
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0, output
    assert shop.applied_count("/products/") == 25
    assert shop.resource("/products/P7") == {"sku": "P7", "name": "VALVE 7"}
    row = next(line for line in output.splitlines() if "catalog" in line and "│" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:8] == ["catalog", "25", "25", "25", "0", "0", "0", "0"], output

    # a second pass re-reads from the cursor minus the overlap: nothing new, nothing written twice
    code, output = cli("run", str(root), "--once", *state, env=env)
    assert code == 0 and shop.applied_count("/products/") == 25

    code, output = cli("runs", str(root), *state, env=env)
    assert code == 0 and output.count("schedule") == 2 and "read=25" in output
    code, output = cli("state", "show", str(root), *state, env=env)
    assert "cursor catalog: 2025-01-03" in output and "deliveries=25" in output
    code, output = cli("state", "reset-cursor", str(root), "--flow", "catalog", *state, env=env)
    assert output.strip() == "cursor catalog: 2025-01-03 -> None"


def test_dry_run_writes_nothing(setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]]) -> None:
    root, _erp, shop, env = setup
    code, output = cli("run", str(root), "--once", "--dry-run", "--state", f"sqlite:///{root / 's.db'}", env=env)
    assert code == 0, output
    assert shop.writes() == []
    assert 'catalog -> shop.products: {"sku": "P3", "name": "VALVE 3"}' in output
    assert "nothing was written" in output
    assert not (root / "s.db").exists()


def test_a_failing_source_fails_the_once_run(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, erp, _shop, env = setup
    erp.configure(error_rate=1.0, error_status=503)
    code, output = cli("run", str(root), "--once", "--state", f"sqlite:///{root / 'state.db'}", env=env)
    assert code == 1
    assert "catalog: reading the source failed" in output and "503" in output


def _price_route(calls: list[float], delay: float = 0.0) -> Any:
    def answer(request: FakeRequest) -> FakeResponse:
        calls.append(time.monotonic())
        time.sleep(delay)
        body = request.json() or {}
        return FakeResponse(200, {"sku": body.get("sku"), "net": 12.345})

    return answer


def test_request_trigger_answers_caches_and_fails_clearly(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, erp, _shop, env = setup
    calls: list[float] = []
    erp.route("POST", "/price", _price_route(calls))
    daemon = DaemonProcess(root, root / "state.db", env=env)
    try:
        daemon.start()
        first = httpx.post(f"{daemon.url}/price", json={"sku": "P1", "customer": "C9"})
        assert first.status_code == 200 and first.json() == {"sku": "P1", "price": 12.34}  # JSONata rounds half to even
        assert first.headers["X-Seamline-Cache"] == "miss"
        second = httpx.post(f"{daemon.url}/price", json={"customer": "C9", "sku": "P1"})  # same request
        assert second.headers["X-Seamline-Cache"] == "hit" and len(calls) == 1

        erp.route("POST", "/price", _price_route(calls, delay=1.0))  # slower than the 500ms budget
        slow = httpx.post(f"{daemon.url}/price", json={"sku": "P2"}, timeout=5)
        assert slow.status_code == 504 and "within 0.5s" in slow.json()["error"]

        erp.route("POST", "/price", lambda _r: FakeResponse(503, {"message": "down"}, {"Retry-After": "7"}))
        down = httpx.post(f"{daemon.url}/price", json={"sku": "P3"})
        assert down.status_code == 503 and down.headers["Retry-After"] == "7"
        for i in range(6):  # enough failures to open the breaker
            httpx.post(f"{daemon.url}/price", json={"sku": f"X{i}"})
        opened = httpx.post(f"{daemon.url}/price", json={"sku": "P4"})
        assert opened.status_code == 503 and "circuit open" in opened.json()["error"]
        assert int(opened.headers["Retry-After"]) >= 1
        assert httpx.post(f"{daemon.url}/price", json={"sku": "P1", "customer": "C9"}).status_code == 200  # cached
    finally:
        daemon.stop()


def test_a_payload_that_fails_the_targets_schema_never_leaves(tmp_path: Path) -> None:
    spec = SPEC.replace(
        '      products: { path: "/products/{sku}", method: PUT }',
        "      products:\n"
        '        path: "/products/{sku}"\n'
        "        method: PUT\n"
        "        schema: { type: object, required: [sku, name], properties: { name: { type: string, minLength: 3 } } }",
    )
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.seed(
            "/products", [{"id": "A", "Product": "A", "name": "ok valve"}, {"id": "B", "Product": "B", "name": "x"}]
        )
        (tmp_path / "seamline.yaml").write_text(spec, encoding="utf-8")
        env = {"ERP_URL": erp.url, "SHOP_URL": shop.url}
        state = ["--state", f"sqlite:///{tmp_path / 'state.db'}"]
        code, output = cli("run", str(tmp_path), "--once", *state, env=env)
        assert code == 1, output  # a dead letter makes the pass fail
        assert [w["path"] for w in shop.writes()] == ["/products/A"]
        code, output = cli("dlq", "list", str(tmp_path), *state, env=env)
        assert "fails shop.products's schema at $.name" in output and "1 dead letter(s)" in output


def test_discontinued_ignore_leaves_records_the_source_marks_discontinued_unwritten(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, erp, shop, env = setup
    erp.reset()
    erp.seed(
        "/products",
        [
            {"id": "P1", "Product": "P1", "name": "valve", "changed": "2025-01-01", "discontinued": False},
            {"id": "P2", "Product": "P2", "name": "old valve", "changed": "2025-01-01", "discontinued": True},
            {"id": "P3", "Product": "P3", "name": "pump", "changed": "2025-01-01"},
        ],
    )
    spec = (root / "seamline.yaml").read_text(encoding="utf-8")
    spec = spec.replace(
        "    target: { system: shop, write: products, key: sku }\n",
        "    target: { system: shop, write: products, key: sku }\n    discontinued: ignore\n",
        1,
    )
    (root / "seamline.yaml").write_text(spec, encoding="utf-8")
    code, output = cli(
        "run", str(root), "--once", "--flow", "catalog", "--state", f"sqlite:///{root / 's.db'}", env=env
    )
    assert code == 0, output
    assert sorted(w["path"] for w in shop.writes("/products/")) == ["/products/P1", "/products/P3"]


def test_state_prune_deletes_what_was_delivered_and_refuses_a_bad_duration(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, _erp, _shop, env = setup
    state = ["--state", f"sqlite:///{root / 'prune.db'}"]
    code, output = cli("run", str(root), "--once", "--flow", "catalog", *state, env=env)
    assert code == 0, output
    code, output = cli("state", "prune", str(root), *state, env=env)  # the spec's 30 days: nothing is that old
    assert code == 0 and "inbox 0" in output, output
    code, output = cli("state", "prune", str(root), "--older-than", "0s", *state, env=env)
    assert code == 0, output
    assert "inbox 25" in output and "ledger 25" in output and "runs 1" in output, output
    code, output = cli("state", "prune", str(root), "--older-than", "soon", *state, env=env)
    assert code == 2 and "--older-than" in output


def test_dlq_replay_skips_a_superseded_letter_and_says_how_to_force_it(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, _erp, _shop, env = setup
    url = f"sqlite:///{root / 'replay.db'}"
    store = open_store(url)
    store.enqueue([NewItem("catalog", "v1", "P1", {"Product": "P1"}, "t")])
    (old,) = store.claim("w", 10, lease=30)
    store.dead_letter(old.id, "bad", error_kind="terminal")
    store.enqueue([NewItem("catalog", "v2", "P1", {"Product": "P1"}, "t")])
    (new,) = store.claim("w", 10, lease=30)
    store.complete(new.id)
    (letter,) = store.dead_letters("catalog")
    store.close()
    code, output = cli("dlq", "replay", str(root), "--flow", "catalog", "--state", url, env=env)
    assert code == 0, output
    assert "replayed 0 dead letter(s)" in output
    assert f"skipped 1 superseded (a newer change of the same record was delivered since): {letter.id}" in output
    code, output = cli("dlq", "replay", str(root), "--flow", "catalog", "--force", "--state", url, env=env)
    assert "replayed 1 dead letter(s)" in output and "skipped" not in output


def test_a_request_transform_lets_the_caller_ask_in_its_own_terms(
    setup: tuple[Path, FakeHttpServer, FakeHttpServer, dict[str, str]],
) -> None:
    root, erp, _shop, env = setup
    spec = (root / "seamline.yaml").read_text(encoding="utf-8")
    spec = spec.replace(
        "    trigger: { request: { path: /price, timeout: 500ms, cache: 60s } }\n",
        "    trigger:\n"
        "      request:\n"
        "        path: /price\n"
        "        timeout: 500ms\n"
        '        transform: \'{ "sku": $uppercase(item.sku), "customer": buyer.email }\'\n',
    )
    (root / "seamline.yaml").write_text(spec, encoding="utf-8")
    asked: list[Any] = []

    def answer(request: FakeRequest) -> FakeResponse:
        asked.append(request.json())
        return FakeResponse(200, {"sku": request.json()["sku"], "net": 3.0})

    erp.route("POST", "/price", answer)
    daemon = DaemonProcess(root, root / "state.db", env=env)
    try:
        daemon.start()
        shop_shaped = {"item": {"sku": "p1", "qty": 2}, "buyer": {"email": "a@b.example"}}
        priced = httpx.post(f"{daemon.url}/price", json=shop_shaped)
        assert priced.status_code == 200 and priced.json() == {"sku": "P1", "price": 3}
        assert asked == [{"sku": "P1", "customer": "a@b.example"}]
        unshapable = httpx.post(f"{daemon.url}/price", json={"item": {"sku": 42}})
        assert unshapable.status_code == 400
        assert "the request cannot be shaped for the source" in unshapable.json()["error"]
        assert "$uppercase" in unshapable.json()["error"] or "T0410" in unshapable.json()["error"]
        assert len(asked) == 1  # nothing reached the ERP for it
    finally:
        daemon.stop()
