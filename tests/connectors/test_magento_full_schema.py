"""Held to Magento's full schema: every request the connector sends validates against Magento 2.4.8's
published REST schema, not a lenient reading of it.

* the derived request schema in the package is what the generator derives from the reference;
* every golden payload a reference client sends to Magento (``commerce.*`` targets of
  golden/<client>/<flow>/<case>.snapshot.json, ``commerce.products (when new)`` included) passes the
  connector's pre-send check, and, written by the connector to a FakeMagento, becomes requests that
  jsonschema finds valid against the reference (:mod:`tests.connectors.magento_oracle`);
* the check, the connector and the fake refuse what the full schema refuses: null for a typed field,
  numbers where Magento declares strings (``custom_attributes[].value``), a numeric string for a number,
  a missing required field;
* the requests captured in the Magento connector tests are judged the same way (an autouse fixture in
  test_magento_connector.py and test_magento_effects.py); the last test here shows that judge catches one.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.magento import CONNECTOR, MagentoOptions, derive_schema
from connectors.magento.client import REQUEST_ROUTES, MagentoConnection, _endpoints
from connectors.magento.fake import FakeMagento
from connectors.magento.schema import BULK_OF, NOT_REQUIRED, request_problems
from engine.connector import ConnectContext
from engine.errors import TerminalError
from tests.connectors.magento_oracle import held_to_the_full_schema, reference_problems, route_of
from tests.reference import REFERENCE_CLIENTS

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "full-schema-token"
_LABEL = re.compile(r"^commerce\.(?P<entity>[a-z-]+)(?: \(.*\))?$")


def _commerce_payloads() -> list[Any]:
    """(id, entity, label, payload) of every commerce payload in our reference clients' golden snapshots."""
    found = []
    for path in sorted((ROOT / "golden").glob("*/*/*.snapshot.json")):
        client, flow = path.parent.parent.name, path.parent.name
        if client not in REFERENCE_CLIENTS:
            continue
        for label, rendered in json.loads(path.read_text(encoding="utf-8")).items():
            match = _LABEL.match(label)
            if match is None:
                continue
            payloads = rendered if isinstance(rendered, list) else [rendered]
            for index, payload in enumerate(p for p in payloads if p is not None):
                case = path.name.removesuffix(".snapshot.json")
                found.append(
                    pytest.param(match["entity"], label, payload, id=f"{client}/{flow}/{case}:{label}#{index}")
                )
    return found


PAYLOADS = _commerce_payloads()


def _connection(shop: FakeMagento) -> MagentoConnection:
    options = MagentoOptions.model_validate(
        {"connector": "magento", "url": shop.url, "auth": {"bearer": {"token": TOKEN}}, "b2b": "yes"}
    )
    conn = CONNECTOR.open(options, ConnectContext(system="commerce", client="golden"))
    assert isinstance(conn, MagentoConnection)
    return conn


def _prepare(shop: FakeMagento, entity: str, label: str, payload: dict[str, Any]) -> None:
    """What Magento has before the write: the product a price or an existing product names, the order an
    order-status names (with a line left to ship and invoice), the customer a company's super user is."""
    if entity in ("base-prices", "tier-prices", "special-prices") or "(when it exists)" in label:
        shop.seed_product({"sku": payload["sku"], "name": "Seeded", "attribute_set_id": 4, "price": 1})
    if entity == "order-status":
        shop.seed_order(
            {
                "increment_id": payload["increment_id"],
                "customer_email": "buyer@example.com",
                "state": "processing",
                "status": "processing",
                "items": [{"sku": "A", "qty_ordered": 2, "price": 5.0}],
            }
        )
    if entity == "companies":
        shop.seed_customer({"email": payload["company_email"], "firstname": "Super", "lastname": "User"})


def test_there_are_commerce_payloads_of_every_client_to_check() -> None:
    clients = {str(param.id).split("/")[0] for param in PAYLOADS}
    assert {"acme", "demo"} <= clients
    assert any("(when new)" in str(param.id) for param in PAYLOADS)


@pytest.mark.parametrize(("entity", "label", "payload"), PAYLOADS)
def test_every_golden_commerce_payload_passes_the_full_schema(entity: str, label: str, payload: Any) -> None:
    sources = ("default", str(payload.get("source_code") or "default"))
    with held_to_the_full_schema() as captured, FakeMagento(port=0, integration_token=TOKEN, sources=sources) as shop:
        _prepare(shop, entity, label, payload)
        conn = _connection(shop)
        conn.check(entity, payload)  # the pre-send check: the full schema

        async def send() -> str:
            async with conn:
                return await conn.write(entity, payload, key=None, mode="upsert", idempotency_key="golden")

        receipt = asyncio.run(send())
        assert receipt, receipt
    written = [c for c in captured if c[0] != "GET" and "integration/admin/token" not in c[1]]
    assert written, "the payload became no request"


# -- the derived schema ----------------------------------------------------------------------------


def test_the_derived_request_schema_is_what_the_generator_derives() -> None:
    if not derive_schema.REFERENCE.exists():
        pytest.skip(f"reference schema absent: {derive_schema.REFERENCE} (it sits beside the repo in CI)")
    full = json.loads(derive_schema.REFERENCE.read_text(encoding="utf-8"))
    assert derive_schema.REQUESTS.read_text(encoding="utf-8") == derive_schema.render_requests(full)
    derived = json.loads(derive_schema.REQUESTS.read_text(encoding="utf-8"))
    assert derived["origin"]["commit"] == "e2275b5623d47d248df025a9e2a276162e551699"
    assert derived["origin"]["sha256_json"] == derive_schema.ORIGIN["sha256_json"]
    # complete: each definition as the reference has it, required lists included (descriptions left out)
    for name, definition in derived["definitions"].items():
        reference = full["definitions"][name]
        assert definition.get("required") == reference.get("required"), name
        assert set(definition.get("properties", {})) == set(reference.get("properties", {})), name


def test_every_route_the_connector_writes_to_is_held_to_its_full_request_schema() -> None:
    """Each write route of the connection names the schema route its bodies are checked against, and that
    is the route Magento's published schema gives for the request's path (a bulk: the synchronous route)."""
    derived = json.loads(derive_schema.REQUESTS.read_text(encoding="utf-8"))
    writes = {name: e for name, e in _endpoints("default").items() if e["method"] != "GET"}
    assert set(REQUEST_ROUTES) == set(writes)
    for name, endpoint in writes.items():
        found = route_of(endpoint["method"], re.sub(r"\{[^}]+\}", "1", endpoint["path"]))
        assert found is not None, name
        route, bulk = found
        assert route in derived["routes"], (name, route)
        assert REQUEST_ROUTES[name] == (next(k for k, v in BULK_OF.items() if v == route) if bulk else route)


def test_the_check_leaves_out_only_the_documented_required_fields() -> None:
    assert {name: tuple(fields) for name, fields in NOT_REQUIRED.items()} == {
        "company-data-company-interface": ("reject_reason", "rejected_at")
    }


# -- what the full schema refuses -------------------------------------------------------------------

PRODUCT = {"sku": "4711", "name": "Check valve", "attribute_set_id": 4, "price": 189.9, "type_id": "simple"}
COMPANY = {
    "company_name": "Hydro-Tech GmbH",
    "company_email": "einkauf@hydro-tech.de",
    "street": ["Industriestr. 12"],
    "city": "Stuttgart",
    "postcode": "70565",
    "country_id": "DE",
    "telephone": "+49 711 123450",
    "customer_group_id": 2,
    "sales_representative_id": 1,
}

REFUSED = [
    pytest.param(
        "customers",
        {"email": "a@b.c", "firstname": "A", "lastname": "B", "taxvat": None},
        "customer.taxvat: null is not allowed",
        id="null taxvat",
    ),
    pytest.param(
        "products",
        {**PRODUCT, "custom_attributes": [{"attribute_code": "length_mm", "value": 1250.5}]},
        "product.custom_attributes[0].value: 1250.5 is not of type 'string'",
        id="number in a custom attribute",
    ),
    pytest.param(
        "products",
        {**PRODUCT, "custom_attributes": [{"attribute_code": "category_ids", "value": ["3", "4"]}]},
        "product.custom_attributes[0].value: ['3', '4'] is not of type 'string'",
        id="list in a custom attribute",
    ),
    pytest.param(
        "products", {**PRODUCT, "price": "12.50"}, "product.price: '12.50' is not of type 'number'", id="numeric text"
    ),
    pytest.param("products", {**PRODUCT, "status": True}, "product.status: True is not of type 'integer'", id="bool"),
    pytest.param(
        "companies",
        {k: v for k, v in COMPANY.items() if k != "sales_representative_id"},
        "company.sales_representative_id: missing",
        id="company without its sales representative",
    ),
    pytest.param(
        "companies",
        {k: v for k, v in COMPANY.items() if k != "customer_group_id"},
        "company.customer_group_id: missing",
        id="company without its customer group",
    ),
    pytest.param(
        "tier-prices",
        {"sku": "4711", "price": 1, "price_type": "fixed", "website_id": 0, "quantity": 2},
        "prices[0].customer_group: missing",
        id="tier price without its group",
    ),
    pytest.param(
        "order-comments",
        {"increment_id": "1", "comment": "x", "is_customer_notified": "yes"},
        "statusHistory.is_customer_notified: 'yes' is not of type 'integer'",
        id="comment flag",
    ),
]


@pytest.mark.parametrize(("entity", "record", "message"), REFUSED)
def test_the_check_refuses_what_the_full_schema_refuses(entity: str, record: Any, message: str) -> None:
    with FakeMagento(port=0, integration_token=TOKEN) as shop:
        conn = _connection(shop)
        with pytest.raises(TerminalError, match=re.escape(message)):
            conn.check(entity, record)
        asyncio.run(conn.close())
        assert shop.requests() == []


def test_what_the_connector_fills_in_is_not_asked_of_the_record() -> None:
    """A company's super user (the customer with its e-mail) and an order comment's parent and flags are the
    connector's to send; a company's reject reason and rejection time are never needed."""
    with FakeMagento(port=0, integration_token=TOKEN) as shop:
        conn = _connection(shop)
        conn.check("companies", COMPANY)
        conn.check("order-comments", {"increment_id": "1", "comment": "Packed"})
        conn.check("invoices", {"increment_id": "1", "capture": True})
        asyncio.run(conn.close())


def test_numbers_where_magento_wants_text_say_what_to_send() -> None:
    problems = request_problems(
        "PUT /V1/products/{sku}", {"product": {**PRODUCT, "custom_attributes": [{"attribute_code": "a", "value": 2}]}}
    )
    assert [str(p) for p in problems] == [
        "product.custom_attributes[0].value: 2 is not of type 'string' (send it as text: \"2\")"
    ]
    assert [str(p) for p in request_problems("POST /V1/customers", {"customer": {"email": None}})] == [
        "customer.email: null is not allowed (Magento's schema has no null: leave the field out)",
        "customer.firstname: missing (required by Magento's customer-data-customer-interface)",
        "customer.lastname: missing (required by Magento's customer-data-customer-interface)",
    ]


def test_the_fake_refuses_a_body_the_full_schema_refuses() -> None:
    with (
        FakeMagento(port=0, integration_token=TOKEN) as shop,
        httpx.Client(base_url=shop.url + "/rest/V1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5) as http,
    ):
        customer = {"email": "a@b.c", "firstname": "A", "lastname": "B"}
        nulled = http.post("/customers", json={"customer": {**customer, "taxvat": None}})
        assert nulled.status_code == 400
        assert nulled.json() == {
            "message": 'The "%value" value\'s type is invalid. The "%type" type was expected. Verify and try again.',
            "parameters": {"value": "null", "type": "string"},
        }
        number = {"attribute_code": "length_mm", "value": 1250.5}
        attribute = http.put("/products/4711", json={"product": {**PRODUCT, "custom_attributes": [number]}})
        assert attribute.status_code == 400
        assert attribute.json()["parameters"] == {"value": "1250.5", "type": "string"}
        company = {k: v for k, v in COMPANY.items() if k != "sales_representative_id"}
        missing = http.post("/company/", json={"company": {**company, "super_user_id": 1}})
        assert missing.status_code == 400
        assert missing.json() == {
            "message": '"%fieldName" is required. Enter and try again.',
            "parameters": {"fieldName": "sales_representative_id"},
        }
        assert shop.writes() == []


def test_the_judge_of_captured_requests_catches_a_bad_one() -> None:
    judged = pytest.raises(AssertionError, match=r"product\.custom_attributes\.0\.value: 12 is not of type 'string'")
    with judged, held_to_the_full_schema(), FakeMagento(port=0, integration_token=TOKEN) as shop:
        bad = {"product": {**PRODUCT, "custom_attributes": [{"attribute_code": "a", "value": 12}]}}
        httpx.put(shop.url + "/rest/V1/products/4711", json=bad, headers={"Authorization": f"Bearer {TOKEN}"})
    assert reference_problems("PUT", "/rest/V1/products/4711", {"product": PRODUCT}) == []
