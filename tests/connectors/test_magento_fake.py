"""The fake Magento 2.4.8 REST API: its schema subset, routes, validation, auth, bulk and fault knobs.

Everything goes over real HTTP on loopback with a plain synchronous httpx client.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.magento import derive_schema
from connectors.magento.fake import FakeMagento, response_problems

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schema_subset_is_what_the_generator_derives() -> None:
    if not derive_schema.REFERENCE.exists():
        pytest.skip(f"reference schema absent: {derive_schema.REFERENCE} (it sits beside the repo in CI)")
    full = json.loads(derive_schema.REFERENCE.read_text(encoding="utf-8"))
    assert derive_schema.SUBSET.read_text(encoding="utf-8") == derive_schema.render(full)
    subset = json.loads(derive_schema.SUBSET.read_text(encoding="utf-8"))
    assert subset["origin"]["commit"] == "e2275b5623d47d248df025a9e2a276162e551699"
    for name in derive_schema.ROOTS:
        assert name in subset["definitions"]


# -- the fake over HTTP ---------------------------------------------------------------------------

TYPE_ERROR = 'The "%value" value\'s type is invalid. The "%type" type was expected. Verify and try again.'
ALL = {"searchCriteria": ""}
PRODUCT = {"sku": "A-1", "name": "Widget", "attribute_set_id": 4, "price": 9.5, "type_id": "simple"}


@pytest.fixture
def shop() -> Iterator[FakeMagento]:
    with FakeMagento(port=0) as fake:
        yield fake


@pytest.fixture
def client(shop: FakeMagento) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {shop.issue_token()}"}
    with httpx.Client(base_url=shop.url + "/rest/default/V1", headers=headers, timeout=5) as http:
        yield http


def test_products_upsert_by_sku_and_get(shop: FakeMagento, client: httpx.Client) -> None:
    created = client.post("/products", json={"product": PRODUCT})
    assert created.status_code == 200
    body = created.json()
    assert (body["sku"], body["id"], body["price"], body["status"]) == ("A-1", 1, 9.5, 1)
    updated = client.put("/products/A-1", json={"product": {"sku": "A-1", "name": "Widget 2", "custom_attributes": []}})
    assert (updated.status_code, updated.json()["name"], updated.json()["id"]) == (200, "Widget 2", 1)
    assert client.get("/products/A-1").json()["name"] == "Widget 2"
    slashed = client.put("/products/B%2F2", json={"product": {**PRODUCT, "sku": "B/2"}})
    assert slashed.json()["sku"] == "B/2"
    assert client.get("/products/B%2F2").status_code == 200
    assert [(w["method"], w["path"]) for w in shop.writes()][:2] == [
        ("POST", "/rest/default/V1/products"),
        ("PUT", "/rest/default/V1/products/A-1"),
    ]
    assert shop.writes()[0]["body"] == {"product": PRODUCT}
    assert shop.applied_count() == 3


def test_unknown_sku_is_magentos_404(client: httpx.Client) -> None:
    response = client.get("/products/NOPE")
    assert response.status_code == 404
    assert response.json() == {
        "message": "The product that was requested doesn't exist. Verify the product and try again."
    }


def test_a_new_product_needs_its_runtime_minimum(shop: FakeMagento, client: httpx.Client) -> None:
    response = client.put("/products/C", json={"product": {"sku": "C", "name": "C"}})
    assert response.status_code == 400
    assert response.json() == {"message": 'The value of attribute "%1" must be set', "parameters": ["attribute_set_id"]}
    assert shop.applied_count() == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"product": {**PRODUCT, "price": "cheap"}},
            {
                "message": TYPE_ERROR,
                "parameters": {"value": "cheap", "type": "float"},
            },
        ),
        (
            {"product": {**PRODUCT, "extension_attributes": {"website_ids": "1"}}},
            {
                "message": TYPE_ERROR,
                "parameters": {"value": "1", "type": "array"},
            },
        ),
        (
            {"item": PRODUCT},
            {"message": '"%fieldName" is required. Enter and try again.', "parameters": {"fieldName": "product"}},
        ),
        (
            {"product": {**PRODUCT, "colour": "red"}},
            {
                "message": 'Property "%1" does not have accessor method "%2" in class "%3".',
                "parameters": ["Colour", "getColour", "Magento\\Catalog\\Api\\Data\\ProductInterface"],
            },
        ),
        (
            {"product": {**PRODUCT, "price": "12.50"}},
            {"message": TYPE_ERROR, "parameters": {"value": "12.50", "type": "float"}},
        ),
        (
            {"product": {**PRODUCT, "name": 123}},
            {"message": TYPE_ERROR, "parameters": {"value": "123", "type": "string"}},
        ),
        (
            {"product": {**PRODUCT, "weight": None}},
            {"message": TYPE_ERROR, "parameters": {"value": "null", "type": "float"}},
        ),
        (
            {"product": {**PRODUCT, "custom_attributes": [{"attribute_code": "category_ids", "value": ["3", "4"]}]}},
            {"message": TYPE_ERROR, "parameters": {"value": '["3", "4"]', "type": "string"}},
        ),
        (
            {"product": {**PRODUCT, "custom_attributes": [{"attribute_code": "color"}]}},
            {"message": '"%fieldName" is required. Enter and try again.', "parameters": {"fieldName": "value"}},
        ),
    ],
    ids=[
        "bad-number",
        "bad-array",
        "missing-wrapper",
        "unknown-field",
        "numeric-text",
        "number-for-text",
        "null",
        "list-in-attribute",
        "attribute-without-value",
    ],
)
def test_bodies_are_held_to_the_full_schema(
    shop: FakeMagento, client: httpx.Client, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = client.post("/products", json=body)
    assert (response.status_code, response.json()) == (400, expected)
    assert shop.applied_count() == 0


def test_what_the_full_schema_allows_passes(client: httpx.Client) -> None:
    allowed = {
        **PRODUCT,
        "attribute_set_id": 4.0,  # the JSON integer 4; stored as 4
        "custom_attributes": [{"attribute_code": "length_mm", "value": "1250.5"}],
    }
    response = client.post("/products", json={"product": allowed, "unknownTopLevel": 1})  # a parameter it ignores
    assert response.status_code == 200, response.text
    assert response.json()["attribute_set_id"] == 4 and isinstance(response.json()["attribute_set_id"], int)


def test_unknown_fields_can_be_ignored() -> None:
    with FakeMagento(strict_unknown_fields=False, auth=False) as shop:
        response = httpx.post(f"{shop.url}/rest/V1/products", json={"product": {**PRODUCT, "colour": "red"}})
        assert response.status_code == 200


def _seed_products(shop: FakeMagento, count: int) -> None:
    for n in range(1, count + 1):
        shop.seed_product({**PRODUCT, "sku": f"S-{n:02d}", "price": n, "name": "odd" if n % 2 else "even"})


def test_search_criteria_filters_sorts_and_pages(shop: FakeMagento, client: httpx.Client) -> None:
    _seed_products(shop, 7)
    query = {
        "searchCriteria[filter_groups][0][filters][0][field]": "price",
        "searchCriteria[filter_groups][0][filters][0][value]": "3",
        "searchCriteria[filter_groups][0][filters][0][condition_type]": "gteq",
        "searchCriteria[sortOrders][0][field]": "price",
        "searchCriteria[sortOrders][0][direction]": "DESC",
        "searchCriteria[pageSize]": "2",
        "searchCriteria[currentPage]": "1",
    }
    first = client.get("/products", params=query).json()
    assert [p["sku"] for p in first["items"]] == ["S-07", "S-06"]
    assert first["total_count"] == 5
    assert first["search_criteria"]["page_size"] == 2
    third = client.get("/products", params={**query, "searchCriteria[currentPage]": "3"}).json()
    assert [p["sku"] for p in third["items"]] == ["S-03"]
    past = client.get("/products", params={**query, "searchCriteria[currentPage]": "4"}).json()
    assert (past["items"], past["total_count"]) == ([], 5)  # since 2.4.0: empty, not the last page again
    assert len(client.get("/products", params=ALL).json()["items"]) == 7  # no pageSize: every match
    bare = client.get("/products")
    assert (bare.status_code, bare.json()["parameters"]) == (400, {"fieldName": "searchCriteria"})


def test_search_conditions_like_in_eq_and_groups(shop: FakeMagento, client: httpx.Client) -> None:
    _seed_products(shop, 5)

    def skus(*filters: tuple[int, str, str, str]) -> list[str]:
        params: dict[str, str] = {}
        for n, (group, field, value, condition) in enumerate(filters):
            prefix = f"searchCriteria[filterGroups][{group}][filters][{n}]"
            params.update({f"{prefix}[field]": field, f"{prefix}[value]": value, f"{prefix}[conditionType]": condition})
        return sorted(p["sku"] for p in client.get("/products", params=params).json()["items"])

    assert skus((0, "sku", "S-0%", "like")) == ["S-01", "S-02", "S-03", "S-04", "S-05"]
    assert skus((0, "sku", "S-01,S-04", "in")) == ["S-01", "S-04"]
    assert skus((0, "name", "even", "eq")) == ["S-02", "S-04"]
    assert skus((0, "sku", "S-01", "eq"), (0, "sku", "S-02", "eq")) == ["S-01", "S-02"]  # one group: OR
    assert skus((0, "name", "odd", "eq"), (1, "price", "3", "gteq")) == ["S-03", "S-05"]  # groups: AND


def test_source_items_answer_an_empty_list(shop: FakeMagento, client: httpx.Client) -> None:
    items = [{"sku": "A-1", "source_code": "default", "quantity": 5, "status": 1}]
    response = client.post("/inventory/source-items", json={"sourceItems": items})
    assert (response.status_code, response.json()) == (200, [])
    assert shop.source_items[("A-1", "default")]["quantity"] == 5
    bad = client.post("/inventory/source-items", json={"sourceItems": [{"sku": "A-1", "source_code": "mars"}]})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["parameters"] == {"code": "mars"}
    listed = client.get("/inventory/source-items", params={"searchCriteria[pageSize]": "10"}).json()
    assert listed["total_count"] == 1


def test_prices_answer_per_item_failures(shop: FakeMagento, client: httpx.Client) -> None:
    shop.seed_product(PRODUCT)
    base = client.post("/products/base-prices", json={"prices": [{"sku": "A-1", "price": 12, "store_id": 0}]})
    assert (base.status_code, base.json()) == (200, [])
    assert shop.products["A-1"]["price"] == 12
    failed = client.post("/products/base-prices", json={"prices": [{"sku": "ZZ", "price": 1, "store_id": 0}]})
    assert failed.json() == [{"message": "Invalid attribute %fieldName = %fieldValue.", "parameters": ["SKU", "ZZ"]}]
    tier = {
        "sku": "A-1",
        "price": 8,
        "price_type": "fixed",
        "website_id": 0,
        "customer_group": "ALL GROUPS",
        "quantity": 10,
    }
    assert client.post("/products/tier-prices", json={"prices": [tier]}).json() == []
    tiers = client.get("/products/A-1").json()["tier_prices"]
    assert tiers == [{"customer_group_id": 32000, "qty": 10, "value": 8, "extension_attributes": {"website_id": 0}}]
    unknown_group = client.post("/products/tier-prices", json={"prices": [{**tier, "customer_group": "VIP"}]})
    assert unknown_group.json()[0]["parameters"] == ["VIP"]
    special = {
        "sku": "A-1",
        "price": 7,
        "store_id": 0,
        "price_from": "2026-01-01 00:00:00",
        "price_to": "2026-02-01 00:00:00",
    }
    assert client.post("/products/special-price", json={"prices": [special]}).json() == []
    typed = client.post("/products/special-price", json={"prices": [{**special, "store_id": "x"}]})
    assert typed.status_code == 400


def test_customers_create_update_search(client: httpx.Client) -> None:
    customer = {"email": "ann@example.com", "firstname": "Ann", "lastname": "Lee", "addresses": [{"city": "Paris"}]}
    created = client.post("/customers", json={"customer": customer, "password": "Secret123!"})
    assert created.status_code == 200, created.text
    cid = created.json()["id"]
    assert created.json()["addresses"][0]["customer_id"] == cid
    duplicate = client.post("/customers", json={"customer": customer})
    assert duplicate.status_code == 400
    updated = client.put(f"/customers/{cid}", json={"customer": {**customer, "lastname": "Lee-Smith"}})
    assert updated.json()["lastname"] == "Lee-Smith"
    found = client.get(
        "/customers/search",
        params={
            "searchCriteria[filterGroups][0][filters][0][field]": "email",
            "searchCriteria[filterGroups][0][filters][0][value]": "ann@example.com",
        },
    ).json()
    assert [c["id"] for c in found["items"]] == [cid]
    missing = client.put("/customers/99", json={"customer": customer})
    assert missing.status_code == 404
    assert missing.json()["parameters"] == {"fieldName": "customerId", "fieldValue": "99"}


COMPANY = {
    "company_name": "Acme",
    "company_email": "buy@acme.test",
    "super_user_id": 1,
    "street": ["1 Main"],
    "customer_group_id": 1,
    "sales_representative_id": 1,
}


def test_companies_on_commerce_with_b2b(client: httpx.Client) -> None:
    created = client.post("/company/", json={"company": COMPANY})
    assert created.status_code == 200, created.text
    company_id = created.json()["id"]
    renamed = client.put(f"/company/{company_id}", json={"company": {**COMPANY, "company_name": "Acme Ltd"}})
    assert renamed.json()["company_name"] == "Acme Ltd"
    assert client.get(f"/company/{company_id}").json()["company_name"] == "Acme Ltd"
    assert client.get("/company/", params=ALL).json()["total_count"] == 1
    assert client.post("/company/", json={"company": {**COMPANY, "super_user_id": "x"}}).status_code == 400


def test_companies_are_no_route_without_b2b() -> None:
    with FakeMagento(b2b=False) as shop:
        headers = {"Authorization": f"Bearer {shop.issue_token()}"}
        response = httpx.post(f"{shop.url}/rest/V1/company/", json={"company": COMPANY}, headers=headers)
        assert (response.status_code, response.json()) == (
            404,
            {"message": "Request does not match any route.", "trace": None},
        )
        assert httpx.get(f"{shop.url}/rest/V1/products/X", headers=headers).status_code == 404


def test_orders_list_get_comment_ship_invoice(shop: FakeMagento, client: httpx.Client) -> None:
    old = shop.seed_order({"customer_email": "a@x.test", "updated_at": "2026-01-01 10:00:00", "items": [{"sku": "A"}]})
    new = shop.seed_order(
        {"customer_email": "b@x.test", "grand_total": 20, "updated_at": "2026-03-01 10:00:00", "items": [{"sku": "A"}]}
    )
    since = client.get(
        "/orders",
        params={
            "searchCriteria[filter_groups][0][filters][0][field]": "updated_at",
            "searchCriteria[filter_groups][0][filters][0][value]": "2026-02-01 00:00:00",
            "searchCriteria[filter_groups][0][filters][0][condition_type]": "gteq",
        },
    ).json()
    assert [o["entity_id"] for o in since["items"]] == [new["entity_id"]]
    assert client.get(f"/orders/{old['entity_id']}").json()["customer_email"] == "a@x.test"
    assert client.get("/orders/999").status_code == 404
    history = {"comment": "Sent to ERP", "is_customer_notified": 0, "is_visible_on_front": 0, "parent_id": 2}
    commented = client.post(f"/orders/{new['entity_id']}/comments", json={"statusHistory": history})
    assert (commented.status_code, commented.json()) == (200, True)
    assert client.get(f"/orders/{new['entity_id']}").json()["status_histories"][0]["comment"] == "Sent to ERP"
    shipped = client.post(f"/order/{new['entity_id']}/ship", json={})
    assert (shipped.status_code, type(shipped.json())) == (200, int)
    assert client.post(f"/order/{new['entity_id']}/ship", json={}).status_code == 400
    invoiced = client.post(f"/order/{new['entity_id']}/invoice", json={"capture": True})
    assert (invoiced.status_code, type(invoiced.json())) == (200, int)
    order = client.get(f"/orders/{new['entity_id']}").json()
    assert (order["state"], order["total_paid"]) == ("complete", 20)


def test_bulk_products_report_each_operation(shop: FakeMagento, client: httpx.Client) -> None:
    bodies = [{"product": PRODUCT}, {"product": {"sku": "NEW", "name": "no price or set"}}]
    url = shop.url + "/rest/all/async/bulk/V1/products"
    accepted = httpx.post(url, json=bodies, headers=client.headers)
    assert accepted.status_code == 202
    answer = accepted.json()
    assert answer["errors"] is False
    assert [(i["id"], i["status"]) for i in answer["request_items"]] == [(0, "accepted"), (1, "accepted")]
    status = client.get(f"/bulk/{answer['bulk_uuid']}/status").json()
    assert status["operation_count"] == 2
    assert [op["status"] for op in status["operations_list"]] == [1, 3]
    assert status["operations_list"][1]["result_message"] == 'The value of attribute "attribute_set_id" must be set'
    assert "A-1" in shop.products and "NEW" not in shop.products
    assert [w.get("bulk_uuid") for w in shop.writes()] == [answer["bulk_uuid"]]
    bad = httpx.post(url, json=[{"product": {**PRODUCT, "price": []}}], headers=client.headers)
    assert bad.status_code == 400
    assert client.get("/bulk/nope/status").status_code == 400


def test_bulk_operations_stay_open_until_the_consumer_runs() -> None:
    with FakeMagento(bulk_auto_run=False, auth=False) as shop:
        answer = httpx.post(f"{shop.url}/rest/async/V1/products", json={"product": PRODUCT})
        assert answer.status_code == 202
        status_url = f"{shop.url}/rest/V1/bulk/{answer.json()['bulk_uuid']}/status"
        assert httpx.get(status_url).json()["operations_list"][0]["status"] == 4
        assert shop.run_bulk() == 1
        assert httpx.get(status_url).json()["operations_list"][0]["status"] == 1


def test_admin_token_and_expiry() -> None:
    with FakeMagento(users={"api": "pw"}, token_ttl=0.3) as shop:
        base = shop.url + "/rest/V1"
        denied = httpx.get(f"{base}/products/X")
        assert denied.status_code == 401
        assert denied.json() == {
            "message": "The consumer isn't authorized to access %resources.",
            "parameters": {"resources": "Magento_Catalog::products"},
        }
        assert (
            httpx.post(f"{base}/integration/admin/token", json={"username": "api", "password": "no"}).status_code == 401
        )
        assert httpx.post(f"{base}/integration/admin/token", json={"username": "api"}).status_code == 400
        token = httpx.post(f"{base}/integration/admin/token", json={"username": "api", "password": "pw"}).json()
        assert isinstance(token, str)
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/products/X", headers=headers).status_code == 404  # authorized: not found
        time.sleep(0.35)
        assert httpx.get(f"{base}/products/X", headers=headers).status_code == 401  # expired


def test_an_integration_token_never_expires() -> None:
    with FakeMagento(integration_token="int-token", token_ttl=0) as shop:
        response = httpx.get(f"{shop.url}/rest/V1/orders", params=ALL, headers={"Authorization": "Bearer int-token"})
        assert response.status_code == 200


def test_fault_knobs(shop: FakeMagento, client: httpx.Client) -> None:
    shop.fail_next(1, status=429, retry_after="3")
    limited = client.get("/orders", params=ALL)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert limited.json() == {"message": "Too Many Requests", "trace": None}
    shop.fail_next(2, status=503)
    assert [client.get("/orders", params=ALL).status_code for _ in range(3)] == [503, 503, 200]
    shop.configure(error_rate=1.0, error_status=500)
    broken = client.get("/orders", params=ALL)
    assert broken.status_code == 500 and broken.json()["message"].startswith("Internal Error.")
    shop.configure(error_rate=0, latency=0.2)
    started = time.monotonic()
    assert client.get("/orders", params=ALL).status_code == 200
    assert time.monotonic() - started >= 0.2
    shop.configure(latency=0)
    shop.drop_next()
    with pytest.raises(httpx.TransportError):
        client.post("/products", json={"product": PRODUCT})
    assert shop.applied_count() == 0
    assert client.get("/orders", params=ALL).status_code == 200
    with pytest.raises(ValueError, match="unknown fault knob"):
        shop.configure(slowness=1)


def test_unknown_routes_and_methods(client: httpx.Client, shop: FakeMagento) -> None:
    assert client.get("/nothing").json() == {"message": "Request does not match any route.", "trace": None}
    assert client.delete("/orders/1").status_code == 404
    assert httpx.get(shop.url + "/elsewhere").status_code == 404
    broken = client.post("/products", content=b"{not json", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400


def test_runs_standalone() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "connectors.magento.fake", "--port", str(port), "--no-auth"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "fake magento on" in process.stdout.readline()
        listed = httpx.get(f"http://127.0.0.1:{port}/rest/V1/products", params={"searchCriteria": ""})
        assert listed.json()["items"] == []
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0


def test_the_fake_checks_its_own_answers_strictly(shop: FakeMagento, client: httpx.Client) -> None:
    broken = shop.seed_order({"customer_email": "a@x.test", "grand_total": "20", "items": [{"sku": "A"}]})
    response = client.get(f"/orders/{broken['entity_id']}")
    assert response.status_code == 500
    assert response.json()["parameters"] == ["$.grand_total: '20' is not of type number"]
    order_schema = {"$ref": "#/definitions/sales-data-order-interface"}
    assert (
        response_problems({"customer_email": "a", "grand_total": 1, "base_grand_total": 1, "items": []}, order_schema)
        == []
    )
    assert response_problems({"items": [], "colour": "red"}, order_schema) == [
        "$: missing required 'base_grand_total'",
        "$: missing required 'customer_email'",
        "$: missing required 'grand_total'",
        "$: unknown field 'colour' for sales-data-order-interface",
    ]


def test_an_integration_signs_with_oauth1() -> None:
    from connectors.http.client import oauth1_authorization  # the engine's own signer, to prove they agree

    def sign(method: str, url: str, consumer_secret: str = "cs") -> str:
        return oauth1_authorization(
            method, url, consumer_key="ck", consumer_secret=consumer_secret, token="at", token_secret="ts"
        )

    with FakeMagento(oauth1=("ck", "cs", "at", "ts")) as shop:
        url = f"{shop.url}/rest/V1/products?searchCriteria%5BpageSize%5D=5&x=a%20b"
        signed = sign("GET", url)
        assert httpx.get(url, headers={"Authorization": signed}).status_code == 200
        assert httpx.get(url, headers={"Authorization": signed}).status_code == 401  # the nonce was used
        forged = sign("GET", url, consumer_secret="nope")
        assert httpx.get(url, headers={"Authorization": forged}).status_code == 401
        other_query = sign("GET", url)
        assert httpx.get(url + "&y=1", headers={"Authorization": other_query}).status_code == 401
        body = {"product": PRODUCT}
        posted = httpx.post(
            f"{shop.url}/rest/V1/products",
            json=body,
            headers={"Authorization": sign("POST", f"{shop.url}/rest/V1/products")},
        )
        assert posted.status_code == 200


def test_concurrent_writes_on_any_store_code(shop: FakeMagento, client: httpx.Client) -> None:
    def write(store: str) -> None:
        with httpx.Client(base_url=f"{shop.url}/rest/{store}/V1", headers=client.headers, timeout=5) as http:
            for n in range(10):
                sku = f"{store}-{n}"
                assert http.put(f"/products/{sku}", json={"product": {**PRODUCT, "sku": sku}}).status_code == 200

    threads = [threading.Thread(target=write, args=(store,)) for store in ("default", "all", "fr_fr", "de")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shop.applied_count() == 40
    assert len({p["id"] for p in shop.products.values()}) == 40


def test_every_request_is_counted_with_its_answer(shop: FakeMagento, client: httpx.Client) -> None:
    client.put("/products/A-1", json={"product": PRODUCT})
    client.get("/products", params={"searchCriteria[pageSize]": "5"})
    client.get("/products/NOPE")
    shop.drop_next(1)
    with pytest.raises(httpx.TransportError):
        client.get("/products/A-1")
    assert [(r["method"], r["path"], r["status"]) for r in shop.requests()] == [
        ("PUT", "/rest/default/V1/products/A-1", 200),
        ("GET", "/rest/default/V1/products", 200),
        ("GET", "/rest/default/V1/products/NOPE", 404),
        ("GET", "/rest/default/V1/products/A-1", 0),
    ]
    assert shop.requests()[1]["query"] == [("searchCriteria[pageSize]", "5")]
    assert shop.request_count("/products/") == 3
    assert shop.request_count("/products", method="PUT") == 1
    assert shop.applied_count() == 1  # the write log holds applied writes only


def test_expired_tokens_make_the_caller_a_guest(shop: FakeMagento, client: httpx.Client) -> None:
    assert client.get("/products/A-1").status_code == 404  # authorized: the product is just absent
    assert shop.expire_tokens() == 1
    denied = client.get("/products/A-1")
    assert denied.status_code == 401
    assert denied.json()["parameters"] == {"resources": "Magento_Catalog::products"}


def test_shipments_invoices_and_refunds_are_documents(shop: FakeMagento, client: httpx.Client) -> None:
    order = shop.seed_order(
        {"customer_email": "a@b.c", "items": [{"sku": "A", "qty_ordered": 3}, {"sku": "B", "qty_ordered": 1}]}
    )
    first, second = (item["item_id"] for item in order["items"])
    number = order["entity_id"]
    partial = {
        "items": [{"order_item_id": first, "qty": 2}],
        "tracks": [{"track_number": "1Z", "title": "UPS", "carrier_code": "ups"}],
        "comment": {"comment": "Packed in Leipzig", "is_visible_on_front": 0},
    }
    assert client.post(f"/order/{number}/ship", json=partial).json() == 1
    assert client.post(f"/order/{number}/ship", json={}).json() == 2  # the rest
    assert client.post(f"/order/{number}/ship", json={}).status_code == 400  # nothing left to ship
    assert client.post(f"/order/{number}/invoice", json={"capture": False}).json() == 1
    refund = {"items": [{"order_item_id": second, "qty": 1}]}
    assert client.post(f"/order/{number}/refund", json=refund).json() == 1
    too_much = client.post(f"/order/{number}/refund", json={"items": [{"order_item_id": second, "qty": 1}]})
    assert too_much.status_code == 400
    shipments = client.get("/shipments", params={"searchCriteria[pageSize]": "10"}).json()
    assert [s["total_qty"] for s in shipments["items"]] == [2, 2]
    track = shipments["items"][0]["tracks"][0]
    assert {k: track[k] for k in ("track_number", "title", "carrier_code", "order_id", "parent_id")} == {
        "track_number": "1Z",
        "title": "UPS",
        "carrier_code": "ups",
        "order_id": number,
        "parent_id": 1,
    }
    assert [c["comment"] for c in shipments["items"][0]["comments"]] == ["Packed in Leipzig"]
    assert shipments["items"][1]["comments"] == []
    listed = client.get("/shipment/1/comments").json()
    assert (listed["total_count"], listed["items"][0]["is_customer_notified"]) == (1, 0)
    assert client.get("/shipment/99/comments").json()["items"] == []
    invoices = client.get("/invoices", params=ALL).json()["items"]
    assert [(i["order_id"], i["total_qty"]) for i in invoices] == [(number, 4)]
    assert client.get("/creditmemos", params=ALL).json()["total_count"] == 1
    stored = client.get(f"/orders/{number}").json()
    assert stored["state"] == "complete"
    assert [i["qty_refunded"] for i in stored["items"]] == [0, 1]
    assert shop.effects(number) == {"comments": 0, "shipments": 2, "invoices": 1, "creditmemos": 1}


def test_order_comments_are_listed_newest_first(shop: FakeMagento, client: httpx.Client) -> None:
    order = shop.seed_order({"customer_email": "a@b.c", "items": [{"sku": "A"}]})
    for text in ("first", "second"):
        history = {"comment": text, "is_customer_notified": 0, "is_visible_on_front": 0, "parent_id": 1}
        client.post(f"/orders/{order['entity_id']}/comments", json={"statusHistory": history})
    listed = client.get(f"/orders/{order['entity_id']}/comments").json()
    assert ([h["comment"] for h in listed["items"]], listed["total_count"]) == (["second", "first"], 2)
    assert client.get("/orders/999/comments").status_code == 404
    assert shop.effects(order["entity_id"])["comments"] == 2


def test_document_lists_can_leave_their_comments_out() -> None:
    with FakeMagento(port=0, auth=False, document_comments_in_lists=False) as shop:
        order = shop.seed_order({"customer_email": "a@b.c", "items": [{"sku": "A"}]})
        base = f"{shop.url}/rest/V1"
        body = {"comment": {"comment": "Invoiced by the ERP", "is_visible_on_front": 0}}
        assert httpx.post(f"{base}/order/{order['entity_id']}/invoice", json=body).json() == 1
        listed = httpx.get(f"{base}/invoices", params=ALL).json()["items"]
        assert "comments" not in listed[0]
        comments = httpx.get(f"{base}/invoices/1/comments").json()["items"]
        assert [c["comment"] for c in comments] == ["Invoiced by the ERP"]


# -- the admin API and seed data -----------------------------------------------------------------------


def test_the_admin_api_serves_the_write_log_and_requests_without_credentials(
    shop: FakeMagento, client: httpx.Client
) -> None:
    client.post("/products", json={"product": PRODUCT})
    with httpx.Client(base_url=shop.url, timeout=5) as admin:  # no token: the admin API needs none
        assert admin.get("/__fake/health").json() == {"ok": True}
        log = admin.get("/__fake/log").json()
        assert [(e["method"], e["path"], e["status"]) for e in log] == [("POST", "/rest/default/V1/products", 200)]
        assert log[0]["body"] == {"product": PRODUCT}
        assert [r["method"] for r in admin.get("/__fake/requests").json()] == ["POST"]
        assert admin.post("/__fake/faults", json={"fail_next": {"count": 1, "status": 503}}).status_code == 200
        assert client.get("/products/A-1").status_code == 503
        assert admin.post("/__fake/faults", json={"latencyy": 1}).status_code == 400
        seeded = admin.post("/__fake/seed", json={"sources": ["eu"], "products": [{**PRODUCT, "sku": "B-2"}]})
        assert seeded.json() == {"sources": 1, "products": 1, "customers": 0, "orders": 0}
        refused = admin.post("/__fake/seed", json={"products": [{"sku": 7}]})
        assert refused.status_code == 400
        assert (
            refused.json()["message"] == "products[0]: product.sku: 7 is not of type 'string' (send it as text: \"7\")"
        )
        assert admin.post("/__fake/reset").json() == {"ok": True}
        assert admin.get("/__fake/log").json() == []
        assert admin.get("/__fake/nothing").status_code == 404
        assert shop.requests() == []  # the admin calls since the reset are not requests to Magento


def test_seed_data_goes_through_the_same_checks_as_a_request() -> None:
    with FakeMagento(port=0) as shop:
        counts = shop.seed(
            {
                "sources": ["eu", {"source_code": "us"}],
                "products": [PRODUCT],
                "customers": [{"email": "a@b.c", "firstname": "A", "lastname": "B"}],
                "orders": [{"customer_email": "a@b.c", "items": [{"sku": "A-1", "qty_ordered": 2}]}],
            }
        )
        assert counts == {"sources": 2, "products": 1, "customers": 1, "orders": 1}
        assert shop.sources == {"default", "eu", "us"}
        assert (list(shop.products), [c["email"] for c in shop.customers.values()]) == (["A-1"], ["a@b.c"])
        assert shop.writes() == []  # seeding is not a write
        with pytest.raises(ValueError, match=r"^customers\[0\]: customer\.taxvat: null is not allowed"):
            shop.seed({"customers": [{"email": "x@b.c", "firstname": "X", "lastname": "Y", "taxvat": None}]})
        with pytest.raises(ValueError, match=r"^products\[0\]: The value of attribute \"price\" must be set"):
            shop.seed({"products": [{"sku": "N", "name": "N", "attribute_set_id": 4}]})
        with pytest.raises(ValueError, match=r"^sources\[0\]: a source is a code or \{\"source_code\": code\}"):
            shop.seed({"sources": [5]})
        with pytest.raises(ValueError, match=r"^orders: a list of orders, not a dict"):
            shop.seed({"orders": {}})
