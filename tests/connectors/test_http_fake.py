"""The fake REST server itself: its store, idempotency, listings, fault knobs, admin API and state file.

Other tests (the connector's, the conformance suite, the runtime's crash tests) lean on these
behaviours, so they are pinned here with a plain synchronous httpx client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.http.fake import FakeHttpServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(fake: FakeHttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=5) as http:
        yield http


def test_writes_go_to_the_store_and_the_log(fake: FakeHttpServer, client: httpx.Client) -> None:
    created = client.post("/orders", json={"n": 1})
    assert (created.status_code, created.json(), created.headers["Location"]) == (201, {"id": 1, "n": 1}, "/orders/1")
    assert client.put("/products/A", json={"sku": "A"}).status_code == 201
    assert client.put("/products/A", json={"sku": "A", "v": 2}).status_code == 200
    assert client.patch("/products/A", json={"v": 3}).json() == {"sku": "A", "v": 3}
    assert client.get("/products/A").json() == {"sku": "A", "v": 3}
    assert client.delete("/products/A").status_code == 204
    assert client.get("/products/A").status_code == 404
    assert client.patch("/products/B", json={}).status_code == 404
    assert client.delete("/products/B").status_code == 404
    assert client.get("/nowhere").json() == {"items": [], "total": 0, "next": None, "next_cursor": None}
    bad = client.post("/orders", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["message"] == "Decoding error: %1"
    log = fake.writes()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/orders", 201),
        ("PUT", "/products/A", 201),
        ("PUT", "/products/A", 200),
        ("PATCH", "/products/A", 200),
        ("DELETE", "/products/A", 204),
        ("PATCH", "/products/B", 404),
        ("DELETE", "/products/B", 404),
        ("POST", "/orders", 400),
    ]
    assert fake.applied_count() == 5
    assert fake.applied_count("/orders") == 1


def test_an_idempotency_key_replays_the_first_answer(fake: FakeHttpServer, client: httpx.Client) -> None:
    first = client.post("/orders", json={"n": 1}, headers={"Idempotency-Key": "k1"})
    again = client.post("/orders", json={"n": 1}, headers={"Idempotency-Key": "k1"})
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    elsewhere = client.put("/products/A", json={}, headers={"Idempotency-Key": "k1"})
    assert elsewhere.status_code == 422
    assert [e["duplicate"] for e in fake.writes()] == [False, True, False]
    assert fake.applied_count() == 1
    assert list(fake.resources()) == ["/orders/1"]


def test_a_failed_write_does_not_burn_its_idempotency_key(fake: FakeHttpServer, client: httpx.Client) -> None:
    fake.fail_next(1, status=503)
    assert client.post("/orders", json={"n": 1}, headers={"Idempotency-Key": "k1"}).status_code == 503
    assert client.post("/orders", json={"n": 1}, headers={"Idempotency-Key": "k1"}).status_code == 201
    assert fake.applied_count() == 1


def test_generic_listing_pages_filters_and_links(fake: FakeHttpServer, client: httpx.Client) -> None:
    fake.seed("/items", [{"id": i, "kind": "a" if i % 2 else "b", "rank": i} for i in range(1, 8)])
    assert [r["id"] for r in client.get("/items", params={"page": 2, "size": 2}).json()["items"]] == [3, 4]
    assert [r["id"] for r in client.get("/items", params={"offset": 5, "limit": 5}).json()["items"]] == [6, 7]
    body = client.get("/items", params={"kind": "a", "rank_gt": 1, "size": 2}).json()
    assert [r["id"] for r in body["items"]] == [3, 5]
    assert body["total"] == 3
    following = client.get(body["next"]).json()
    assert [r["id"] for r in following["items"]] == [7]
    assert following["next"] is None
    by_cursor = client.get("/items", params={"kind": "a", "rank_gt": 1, "cursor": body["next_cursor"], "size": 2})
    assert by_cursor.json()["items"] == following["items"]
    assert 'rel="next"' in client.get("/items", params={"size": 1}).headers["Link"]
    assert client.get("/items", params={"cursor": "???"}).status_code == 400


def test_odata_and_magento_listings(fake: FakeHttpServer, client: httpx.Client) -> None:
    fake.seed("/items", [{"id": i, "sku": f"S-{i}", "at": f"2024-01-0{i}"} for i in range(1, 6)])
    odata = client.get(
        "/items", params={"$filter": "at ge datetime'2024-01-02' and sku ne 'S-3'", "$orderby": "at desc"}
    )
    assert [r["id"] for r in odata.json()["d"]["results"]] == [5, 4, 2]
    fake.configure(max_page_size=2)
    page = client.get("/items", params={"$top": "3", "$skip": "1"}).json()["d"]
    assert [r["id"] for r in page["results"]] == [2, 3]
    rest = client.get(page["__next"]).json()["d"]
    assert [r["id"] for r in rest["results"]] == [4]
    assert "__next" not in rest
    fake.configure(max_page_size=1000)
    magento = client.get(
        "/items",
        params={
            "searchCriteria[filter_groups][0][filters][0][field]": "sku",
            "searchCriteria[filter_groups][0][filters][0][value]": "S-1,S-2,S-4",
            "searchCriteria[filter_groups][0][filters][0][condition_type]": "in",
            "searchCriteria[filter_groups][1][filters][0][field]": "at",
            "searchCriteria[filter_groups][1][filters][0][value]": "2024-01-01",
            "searchCriteria[filter_groups][1][filters][0][condition_type]": "gt",
            "searchCriteria[filter_groups][1][filters][1][field]": "sku",
            "searchCriteria[filter_groups][1][filters][1][value]": "S-1%",
            "searchCriteria[filter_groups][1][filters][1][condition_type]": "like",
            "searchCriteria[sortOrders][0][field]": "id",
            "searchCriteria[sortOrders][0][direction]": "DESC",
            "searchCriteria[pageSize]": "2",
            "searchCriteria[currentPage]": "1",
        },
    ).json()
    assert [r["id"] for r in magento["items"]] == [4, 2]
    assert magento["total_count"] == 3
    past_end = client.get("/items", params={"searchCriteria[pageSize]": "10", "searchCriteria[currentPage]": "9"})
    assert past_end.json()["items"] == []


def test_fault_knobs_over_the_admin_api(fake: FakeHttpServer, client: httpx.Client) -> None:
    knobs = {"fail_next": {"count": 2, "status": 429, "retry_after": 3}, "latency": 0}
    assert client.post("/__fake/faults", json=knobs).json()["fail_next"]["count"] == 2
    answers = [client.get("/items") for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "3"
    assert answers[0].json() == {"message": "Too Many Requests", "trace": None}

    client.post("/__fake/faults", json={"fail_next": {"count": 1, "status": 400, "body": {"message": "no %1"}}})
    assert client.get("/items").json() == {"message": "no %1"}

    client.post("/__fake/faults", json={"drop_next": 1})
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/items")
    assert client.get("/__fake/health").json() == {"ok": True}

    client.post("/__fake/faults", json={"auth": {"basic": {"username": "u", "password": "p"}}})
    assert client.get("/items").status_code == 401
    assert client.get("/items", auth=("u", "p")).status_code == 200
    assert client.get("/__fake/log").status_code == 200  # the admin API needs no credentials
    client.post("/__fake/faults", json={"auth": None})

    assert client.post("/__fake/faults", json={"latencyy": 1}).status_code == 400
    assert client.post("/__fake/faults", json={"auth": {"bearer": 5}}).status_code == 400


def test_admin_seed_log_requests_and_reset(fake: FakeHttpServer, client: httpx.Client) -> None:
    client.post("/__fake/seed", json={"path": "/items", "items": [{"id": "a"}]})
    assert client.get("/items").json()["items"] == [{"id": "a"}]
    client.put("/items/b", json={"id": "b"}, headers={"Idempotency-Key": "x"})
    log = client.get("/__fake/log", params={"prefix": "/items"}).json()
    assert [(e["path"], e["idempotency_key"], e["duplicate"]) for e in log] == [("/items/b", "x", False)]
    assert [r["method"] for r in client.get("/__fake/requests").json()] == ["GET", "PUT"]
    assert sorted(client.get("/__fake/resources").json()) == ["/items/a", "/items/b"]
    client.post("/__fake/reset")
    assert client.get("/__fake/log").json() == []
    assert client.get("/items").json()["items"] == []
    assert client.get("/items/7").status_code == 404


def test_a_random_error_rate_repeats_with_the_same_seed() -> None:
    outcomes = []
    for _ in range(2):
        with FakeHttpServer(seed=7) as fake, httpx.Client(base_url=fake.url) as http:
            fake.configure(error_rate=0.5, error_status=502)
            outcomes.append([http.get("/x").status_code for _ in range(12)])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 502}


def test_stop_closes_keep_alive_connections_too(fake: FakeHttpServer, client: httpx.Client) -> None:
    assert client.get("/__fake/health").status_code == 200
    fake.stop()
    with pytest.raises(httpx.TransportError):
        client.get("/__fake/health")


def test_concurrent_writes_are_all_logged_once_and_a_shared_key_applies_once(fake: FakeHttpServer) -> None:
    def writer(worker: int) -> None:
        with httpx.Client(base_url=fake.url, timeout=10) as http:
            for n in range(20):
                http.post("/orders", json={"w": worker, "n": n}, headers={"Idempotency-Key": f"{worker}-{n}"})
                http.put("/shared", json={"w": worker}, headers={"Idempotency-Key": "same-key"})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert fake.applied_count("/orders") == 160
    assert len(fake.resources("/orders/")) == 160
    assert fake.applied_count("/shared") == 1
    assert sum(e["duplicate"] for e in fake.writes("/shared")) == 159
    assert sorted(e["seq"] for e in fake.writes()) == list(range(1, 321))


def test_the_state_file_keeps_store_log_and_keys_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "fake.json"
    with FakeHttpServer(state_file=state) as first, httpx.Client(base_url=first.url) as http:
        http.post("/orders", json={"n": 1}, headers={"Idempotency-Key": "k1"})
        port = first.port
    with FakeHttpServer(port=port, state_file=state) as second, httpx.Client(base_url=second.url) as http:
        assert [e["path"] for e in second.writes()] == ["/orders"]
        assert http.get("/orders/1").json() == {"id": 1, "n": 1}
        assert http.post("/orders", json={"n": 1}, headers={"Idempotency-Key": "k1"}).json() == {"id": 1, "n": 1}
        assert http.post("/orders", json={"n": 2}).json() == {"id": 2, "n": 2}
        assert second.applied_count() == 2
        assert [e["duplicate"] for e in second.writes()] == [False, True, False]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_it_runs_standalone_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    state = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "connectors.http.fake", "--port", str(port), "--state-file", str(state)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == f"fake http server on http://127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert http.put("/products/A", json={"sku": "A"}).status_code == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [e["path"] for e in json.loads(state.read_text())["log"]] == ["/products/A"]


def test_restart_keeps_the_port_and_the_state(fake: FakeHttpServer, client: httpx.Client) -> None:
    port = fake.port
    client.put("/products/A", json={"sku": "A"})
    fake.restart()
    assert fake.port == port and fake.running
    assert client.get("/products/A").json() == {"sku": "A"}  # a fresh connection; the pooled one died


def test_a_get_of_an_empty_collection_is_an_empty_page_in_the_style_asked(
    fake: FakeHttpServer, client: httpx.Client
) -> None:
    """A collection nobody has written to yet reads as empty, not as a missing route: a spec reading it
    from a fresh fake finds nothing to do. A path that names a resource (an id) is still a 404."""
    assert client.get("/products").json() == {"items": [], "total": 0, "next": None, "next_cursor": None}
    assert client.get("/api/sales-orders", params={"page": 1, "size": 10}).json()["items"] == []
    assert client.get("/products", params={"$top": "5"}).json() == {"d": {"results": [], "__count": "0"}}
    magento = client.get("/products", params={"searchCriteria[pageSize]": "10"}).json()
    assert (magento["items"], magento["total_count"]) == ([], 0)
    assert client.get("/products/A-1").status_code == 404  # an id: a missing resource
    assert client.get("/orders/42").status_code == 404
    client.put("/products/A-1", json={"sku": "A-1"})
    assert client.get("/products/other").status_code == 404  # under a collection that exists: a missing resource
    client.delete("/products/A-1")
    assert client.get("/products").json()["items"] == []
    assert fake.writes()[0]["path"] == "/products/A-1"


def test_a_fault_can_target_one_path(fake: FakeHttpServer, client: httpx.Client) -> None:
    fake.configure(fail_next={"count": "all", "status": 503, "path": "/products"})
    assert client.get("/products").status_code == 503
    assert client.put("/products/A-1", json={}).status_code == 503  # and everything under it
    assert client.get("/products-archive").status_code == 200  # another path that only starts the same
    assert client.get("/orders").status_code == 200
    assert fake.faults()["fail_next"] == {
        "count": "all",
        "status": 503,
        "retry_after": None,
        "body": None,
        "path": "/products",
    }
    # the same through the admin API; a count wears off, and only matching requests count
    knobs = {"fail_next": {"count": 1, "status": 429, "retry_after": 2, "path": "/orders"}}
    assert client.post("/__fake/faults", json=knobs).json()["fail_next"]["path"] == "/orders"
    assert client.get("/products").status_code == 200
    busy = client.get("/orders/7")
    assert (busy.status_code, busy.headers["Retry-After"]) == (429, "2")
    assert client.get("/orders").status_code == 200
    assert client.post("/__fake/faults", json={"fail_next": {"count": "some"}}).status_code == 400
    assert client.post("/__fake/faults", json={"fail_next": {"path": "products"}}).status_code == 400
