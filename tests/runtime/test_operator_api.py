"""The operator's JSON API (issue 16, item 2): a real daemon, a shop that refuses one product (a dead letter), the
API over HTTP with its bearer token. The document and the routes are held to each other; schemathesis fuzzes every
operation against the document; the actions (run now, reload, replay, cursor reset) are also tested one by one."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from connectors.http.fake import FakeHttpServer
from engine.runtime.admin_api import OPERATOR, ROUTES, add_operator_routes, openapi_document
from engine.runtime.api import build_app
from tests.runtime.operator_harness import TOKEN, LiveDaemon, live_daemon

SPEC = """\
seamline: 1
client: ops
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    endpoints:
      products: { path: /products }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
      stock: { path: "/stock/{sku}", method: PUT }
flows:
  catalog:
    description: products from the ERP to the shop
    trigger: { schedule: 1h }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: shop, write: products, key: sku }
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    target: { system: shop, write: stock, key: sku }
"""

PRODUCTS = [
    {"id": "A", "sku": "A", "name": "valve", "changed": "2025-01-01T00:00:00Z"},
    {"id": "BAD", "sku": "BAD", "name": "refused", "changed": "2025-01-02T00:00:00Z"},
]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class Ops:
    """A running daemon whose first pass delivered A and dead-lettered BAD (the shop answers 400 for it)."""

    live: LiveDaemon
    api: httpx.Client
    erp: FakeHttpServer
    shop: FakeHttpServer
    spec: Path

    def get(self, path: str, **params: Any) -> Any:
        answer = self.api.get(path, params=params)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer.json()

    def dead_letters(self) -> list[dict[str, Any]]:
        letters: list[dict[str, Any]] = self.get("/api/dead-letters")["dead_letters"]
        return letters


@contextmanager
def running_ops(root: Path) -> Iterator[Ops]:
    root.mkdir(parents=True, exist_ok=True)
    spec = root / "seamline.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.seed("/products", PRODUCTS)
        shop.fail_next("all", status=400, body={"message": "sku BAD is not sold here"}, path="/products/BAD")
        env = {"ERP_URL": erp.url, "SHOP_URL": shop.url}
        with (
            live_daemon(spec, env, state_url=f"sqlite:///{root / 'state.db'}") as live,
            httpx.Client(base_url=live.url, headers=live.headers, timeout=30) as api,
        ):
            ops = Ops(live, api, erp, shop, spec)
            wait_for(lambda: len(ops.dead_letters()) == 1 and shop.applied_count("/products/") == 1, "the pass")
            yield ops


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Ops]:
    with running_ops(tmp_path) as ops:
        yield ops


@pytest.fixture(scope="module")
def shared_ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    """One daemon for the fuzzing."""
    with running_ops(tmp_path_factory.mktemp("fuzz")) as ops:
        yield ops


# -- the document and the routes -------------------------------------------------------------------------------


def test_every_route_is_documented_and_every_documented_operation_is_routed() -> None:
    document = openapi_document()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    routed = {(method, path) for method, path, _handler in ROUTES}
    assert routed == documented
    assert document["openapi"].startswith("3.1")
    assert all(path.startswith("/api/") for _method, path in routed)


def test_the_daemons_app_serves_every_documented_operation() -> None:
    """On build_app's app (the token middleware's), each documented operation has its handler."""

    class Quiet:  # build_app reads only the flows' paths (none here) until a request comes
        token = "t"
        view_token = None
        generation = 0
        webhooks: ClassVar[dict[str, str]] = {}
        requests: ClassVar[dict[str, object]] = {}

    app = build_app(Quiet())  # type: ignore[arg-type]
    if OPERATOR not in app:  # until build_app mounts the operator routes itself
        add_operator_routes(app, Quiet())  # type: ignore[arg-type]
    served = {
        (route.method, resource.canonical)
        for resource in app.router.resources()
        for route in resource
        if resource.canonical.startswith("/api/") and route.method != "*"
    }
    documented = {(method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item}
    assert served == documented


# -- reads -----------------------------------------------------------------------------------------------------


def test_the_flows_show_their_trigger_inbox_last_run_and_cursor(ops: Ops) -> None:
    flows = {f["name"]: f for f in ops.get("/api/flows")["flows"]}
    catalog = flows["catalog"]
    assert catalog["trigger"] == "schedule" and catalog["detail"] == "every 1h"
    assert catalog["source"] == "erp" and catalog["targets"] == ["shop"]
    assert catalog["description"] == "products from the ERP to the shop"
    assert catalog["inbox"] == {"pending": 0, "inflight": 0, "done": 1, "dead": 1}
    assert catalog["last_run"]["status"] == "ok" and catalog["last_run"]["counts"]["read"] == 2
    assert ISO.match(catalog["last_run"]["started_at"]) and ISO.match(catalog["last_run"]["finished_at"])
    assert catalog["cursor"] == "2025-01-02T00:00:00Z" and catalog["stopped"] is None
    assert flows["stock"]["trigger"] == "webhook" and flows["stock"]["detail"] == "/hooks/stock"
    assert flows["stock"]["last_run"] is None
    assert ops.get("/api/flows/catalog") == catalog
    missing = ops.api.get("/api/flows/nope")
    assert missing.status_code == 404 and "running: catalog, stock" in missing.json()["error"]


def test_runs_systems_cursors_and_the_spec_version(ops: Ops) -> None:
    (run,) = ops.get("/api/runs")["runs"]
    assert run["flow"] == "catalog" and run["kind"] == "schedule" and run["took_s"] >= 0
    assert ops.get("/api/runs", flow="stock") == {"runs": []}
    systems = {s["name"]: s for s in ops.get("/api/systems")["systems"]}
    assert set(systems) == {"erp", "shop"}
    assert systems["shop"]["breaker"] == {"state": "closed", "failures": 0, "retry_in_s": 0.0}
    assert systems["shop"]["budget"]["concurrency"] == 16 and systems["shop"]["kind"] == "http"
    assert ops.get("/api/cursors") == {"cursors": [{"flow": "catalog", "value": "2025-01-02T00:00:00Z"}]}
    spec = ops.get("/api/spec")
    assert spec["client"] == "ops" and spec["running"] == spec["on_disk"] and spec["differs"] is False


def test_dead_letters_are_listed_filtered_and_shown_with_their_record(ops: Ops) -> None:
    listing = ops.get("/api/dead-letters")
    assert listing["total"] == 1
    (letter,) = listing["dead_letters"]
    assert letter["business_key"] == "BAD" and letter["kind"] == "terminal" and letter["target"] == "shop.products"
    assert "sku BAD is not sold here" in letter["reason"] and ISO.match(letter["created_at"])
    assert "record" not in letter  # the list leaves records out; the letter itself has it
    assert ops.get("/api/dead-letters", reason="NOT SOLD")["total"] == 1  # part of the reason, any case
    assert ops.get("/api/dead-letters", reason="timeout")["total"] == 0
    assert ops.get("/api/dead-letters", kind="exhausted")["total"] == 0
    assert ops.get("/api/dead-letters", flow="stock")["total"] == 0
    shown = ops.get(f"/api/dead-letters/{letter['id']}")
    assert shown["record"] == PRODUCTS[1] and shown["superseded"] is False
    assert ops.api.get("/api/dead-letters/999").status_code == 404
    # past a store's 64-bit ids (was: a 500, SQLite cannot take the number); schemathesis found it
    assert ops.api.get("/api/dead-letters/1854263785913944713927327744").status_code == 404
    assert ops.api.get("/api/dead-letters/-1").status_code == 404
    assert ops.api.get("/api/dead-letters/x").status_code == 400
    bad = ops.api.get("/api/dead-letters", params={"limit": "0"})
    assert bad.status_code == 400 and "'limit'" in bad.json()["error"]


def test_a_records_timeline_shows_each_target_with_its_receipt_and_its_dead_letter(ops: Ops) -> None:
    (good,) = ops.get("/api/records", key="A")["records"]
    assert good["status"] == "done" and good["outcome"] == "delivered" and good["record"] == PRODUCTS[0]
    received, delivered = good["events"]
    assert received["event"] == "received" and received["source"] == "schedule:erp.products"
    assert delivered["event"] == "delivered" and delivered["target"] == "shop.products" and delivered["receipt"]
    assert json.loads(delivered["request"]) == PRODUCTS[0]  # what the shop was sent (no transform: the record)
    assert received["at"] <= delivered["at"]
    (bad,) = ops.get("/api/records", key="BAD", flow="catalog")["records"]
    assert [e["event"] for e in bad["events"]] == ["received", "dead_lettered"]
    assert bad["events"][1]["kind"] == "terminal" and "not sold" in bad["events"][1]["reason"]
    assert ops.get("/api/records", key="nothing") == {"key": "nothing", "flow": None, "records": []}
    assert ops.api.get("/api/records").status_code == 400


def test_every_path_needs_the_token_and_another_method_is_405(ops: Ops) -> None:
    for method, path, _handler in ROUTES:
        concrete = path.replace("{flow}", "catalog").replace("{id}", "1")
        answer = httpx.request(method, ops.live.url + concrete, json={"ids": [1]})
        assert answer.status_code == 401, (method, path)
    wrong = ops.api.delete("/api/flows")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET"
    assert ops.api.get("/api/openapi.json").json() == openapi_document()


# -- actions ---------------------------------------------------------------------------------------------------


def test_replay_says_what_it_would_do_then_does_it_and_is_in_the_history(ops: Ops) -> None:
    (letter,) = ops.dead_letters()
    dry = ops.api.post("/api/dead-letters/replay", json={"flow": "catalog", "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert dry.json() | {"warning": None} == {
        "replayed": 1,
        "chosen": [letter["id"]],
        "superseded": [],
        "skipped": [],
        "not_found": [],
        "forced": False,
        "dry_run": True,
        "replay_id": None,
        "warning": None,
    }
    assert len(ops.dead_letters()) == 1  # a dry run changes nothing
    ops.shop.configure(fail_next=0)  # the shop now takes BAD
    done = ops.api.post("/api/dead-letters/replay", json={"ids": [letter["id"], 4242]}).json()
    assert done["replayed"] == 1 and done["not_found"] == [4242] and done["replay_id"] >= 1
    wait_for(lambda: ops.shop.applied_count("/products/BAD") == 1, "the replayed letter")
    assert ops.dead_letters() == []
    replayed = ops.get("/api/dead-letters", replayed="true")["dead_letters"]
    assert ISO.match(replayed[0]["replayed_at"])
    events = [e["event"] for e in ops.get("/api/records", key="BAD")["records"][0]["events"]]
    assert events == ["received", "dead_lettered", "replayed", "delivered"]
    from engine.state import open_store

    store = open_store(ops.live.daemon.state_url)
    try:
        (history,) = store.replays()
    finally:
        store.close()
    assert history.by == "api:127.0.0.1" and history.letters == (letter["id"],) and history.replayed == 1


def test_replay_skips_a_superseded_letter_unless_forced_and_refuses_a_vague_ask(ops: Ops) -> None:
    (letter,) = ops.dead_letters()
    # a newer change of BAD arrives and is delivered: the dead letter's older change is superseded
    ops.shop.configure(fail_next=0)
    ops.erp.seed("/products", [{"id": "BAD", "sku": "BAD", "name": "newer", "changed": "2025-01-03T00:00:00Z"}])
    assert ops.api.post("/api/flows/catalog/run").status_code == 202
    wait_for(lambda: ops.shop.applied_count("/products/BAD") == 1, "the newer change")
    wait_for(lambda: ops.get(f"/api/dead-letters/{letter['id']}")["superseded"], "the superseded mark")
    skipped = ops.api.post("/api/dead-letters/replay", json={"all": True}).json()
    assert skipped["replayed"] == 0 and skipped["skipped"] == [letter["id"]]
    forced = ops.api.post("/api/dead-letters/replay", json={"all": True, "force": True}).json()
    assert forced["replayed"] == 1 and forced["superseded"] == [letter["id"]] and forced["skipped"] == []
    for body in ({}, {"all": False}, {"ids": "1"}, {"ids": [], "force": True}, {"every": True}, [1]):
        answer = ops.api.post("/api/dead-letters/replay", json=body)
        assert answer.status_code == 400, (body, answer.text)
    assert ops.api.post("/api/dead-letters/replay", content=b"{not json").status_code == 400


def test_run_now_starts_a_pass_and_says_busy_unknown_or_not_a_schedule(ops: Ops) -> None:
    ops.erp.seed("/products", [{"id": "C", "sku": "C", "name": "new", "changed": "2025-01-04T00:00:00Z"}])
    ops.erp.configure(latency=1.0)  # the pass takes a second: a second ask meets it running
    first = ops.api.post("/api/flows/catalog/run")
    assert first.status_code == 202 and first.json()["status"] == "started", first.text
    time.sleep(0.2)
    busy = ops.api.post("/api/flows/catalog/run")
    assert busy.status_code == 409 and busy.json()["status"] == "busy", busy.text
    ops.erp.configure(latency=0)
    wait_for(lambda: ops.shop.applied_count("/products/C") == 1, "the pass run now")
    assert len(ops.get("/api/runs", flow="catalog")["runs"]) == 2
    unknown = ops.api.post("/api/flows/nope/run")
    assert unknown.status_code == 404 and unknown.json()["status"] == "unknown"
    webhook = ops.api.post("/api/flows/stock/run")
    assert webhook.status_code == 400 and webhook.json()["status"] == "not_a_schedule"


def test_reload_refuses_a_broken_spec_and_applies_a_good_one(ops: Ops) -> None:
    before = ops.get("/api/spec")
    ops.spec.write_text(SPEC.replace("read: products", "read: nothing_like_this"), encoding="utf-8")
    broken = ops.get("/api/spec")
    assert broken["on_disk"] is None and broken["differs"] is True  # the spec on disk does not load
    refused = ops.api.post("/api/reload")
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["reloaded"] is False and body["errors"] and body["spec_version"] == before["running"]
    assert ops.get("/api/spec")["running"] == before["running"]
    ops.spec.write_text(SPEC.replace("products from the ERP", "all products from the ERP"), encoding="utf-8")
    assert ops.get("/api/spec")["differs"] is True
    reloaded = ops.api.post("/api/reload")
    assert reloaded.status_code == 200 and reloaded.json()["reloaded"] is True, reloaded.text
    after = ops.get("/api/spec")
    assert after["running"] != before["running"] and after["differs"] is False
    assert ops.get("/api/flows/catalog")["description"] == "all products from the ERP to the shop"


def test_a_cursor_is_reset_or_set_and_an_unknown_flow_or_bad_body_is_refused(ops: Ops) -> None:
    reset = ops.api.post("/api/cursors/catalog/reset", json={"to": "2025-01-01T12:00:00Z"})
    assert reset.json() == {"flow": "catalog", "before": "2025-01-02T00:00:00Z", "after": "2025-01-01T12:00:00Z"}
    cleared = ops.api.post("/api/cursors/catalog/reset")  # no body: cleared, the next pass reads everything
    assert cleared.status_code == 200 and cleared.json()["after"] is None
    assert ops.get("/api/cursors") == {"cursors": [{"flow": "catalog", "value": None}]}
    assert ops.api.post("/api/cursors/nope/reset").status_code == 404
    assert ops.api.post("/api/cursors/catalog/reset", json={"to": 5}).status_code == 400
    assert ops.api.post("/api/cursors/catalog/reset", json={"value": "x"}).status_code == 400


# -- schemathesis: every operation, fuzzed against the document -------------------------------------------------
# The actions are fuzzed too, on their own daemon: there a reload finds the spec unchanged, a pass run now reads a
# fake ERP, a replay or a cursor reset changes only that daemon's state. Examples are few: the file stays quick.

schema = schemathesis.openapi.from_dict(openapi_document())


@schema.auth()
class BearerToken:
    """The daemon's token, as the document's security scheme says; left off where a case tests the refusal."""

    def get(self, case: schemathesis.Case, ctx: schemathesis.AuthContext) -> str:
        return TOKEN

    def set(self, case: schemathesis.Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, shared_ops: Ops) -> None:
    case.call_and_validate(base_url=shared_ops.live.url)
