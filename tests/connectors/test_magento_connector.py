"""The magento connector against FakeMagento, over real loopback HTTP.

Nothing of ours is mocked: each test starts :class:`FakeMagento` on a free port and drives
:class:`MagentoConnection` at it; what Magento received is read back from the fake's request and
write logs. Bulk, token expiry and faults use the fake's own knobs.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from connectors.magento import CONNECTOR, MagentoOptions
from connectors.magento.client import READS, MagentoConnection, magento_time, reference_of
from connectors.magento.fake import FakeMagento
from engine.connector import ConnectContext, roles_of
from engine.errors import TerminalError, TransientError
from tests.connectors.magento_oracle import held_to_the_full_schema

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "integration-token-for-tests"
PRODUCT = {"sku": "4711", "name": "Check valve DN25", "attribute_set_id": 4, "price": 189.9, "type_id": "simple"}


@pytest.fixture(autouse=True)
def _every_request_held_to_the_full_schema() -> Iterator[None]:
    """Every request a FakeMagento receives in this module must validate against Magento's published schema."""
    with held_to_the_full_schema():
        yield


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def options(shop: FakeMagento, **extra: Any) -> MagentoOptions:
    auth = extra.pop("auth", {"bearer": {"token": TOKEN}})
    return MagentoOptions.model_validate({"connector": "magento", "url": shop.url, "auth": auth, **extra})


def connection(shop: FakeMagento, masked: list[str] | None = None, **extra: Any) -> MagentoConnection:
    mask: Callable[[str], None] = masked.append if masked is not None else (lambda _v: None)
    conn = CONNECTOR.open(options(shop, **extra), ConnectContext(system="commerce", client="acme", mask=mask))
    assert isinstance(conn, MagentoConnection)
    return conn


def with_conn(shop: FakeMagento, action: Callable[[MagentoConnection], Awaitable[T]], **extra: Any) -> T:
    async def scenario() -> T:
        async with connection(shop, **extra) as conn:
            return await action(conn)

    return run(scenario())


_keys = iter(range(1_000_000))


async def write(conn: MagentoConnection, entity: str, record: Any, mode: str = "upsert", key: str = "") -> str:
    return await conn.write(entity, record, key=None, mode=mode, idempotency_key=key or f"key-{next(_keys)}")


def golden(flow: str, case: str) -> Any:
    snapshot = json.loads((ROOT / "golden/acme" / flow / f"{case}.snapshot.json").read_text(encoding="utf-8"))
    return snapshot


def sent(shop: FakeMagento, method: str | None = None) -> list[tuple[str, str]]:
    """(method, path) of every request but the admin token's."""
    return [
        (r["method"], r["path"])
        for r in shop.requests()
        if "integration/admin/token" not in r["path"] and method in (None, r["method"])
    ]


@pytest.fixture
def shop() -> Iterator[FakeMagento]:
    with FakeMagento(port=0, integration_token=TOKEN, sources=("default", "acme_leipzig")) as fake:
        yield fake


# -- wiring ---------------------------------------------------------------------------------------


def test_the_kind_is_runnable_and_connecting_sends_nothing(shop: FakeMagento) -> None:
    assert CONNECTOR.runnable
    conn = connection(shop, auth={"admin": {"username": "admin", "password": "admin123"}})
    run(conn.close())
    run(conn.close())
    assert shop.requests() == []


def test_the_connector_implements_what_its_kind_declares() -> None:
    from connectors.magento.client import _shapes

    assert set(_shapes()) == CONNECTOR.operations("write")
    assert set(READS) == CONNECTOR.operations("read")


def test_unknown_entities_and_modes_are_terminal_with_the_nearest_name(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        with pytest.raises(TerminalError, match="cannot write 'product' — did you mean 'products'"):
            await write(conn, "product", PRODUCT)
        with pytest.raises(TerminalError, match="cannot read 'order' — did you mean 'orders'"):
            [page async for page in conn.read("order", since=None, cursor_field=None, page_size=10, filter=None)]
        with pytest.raises(TerminalError, match="unknown mode 'upsrt'"):
            await write(conn, "products", PRODUCT, mode="upsrt")
        with pytest.raises(TerminalError, match="only products are disabled"):
            await write(conn, "customers", {"email": "a@b.c"}, mode="delete")
        assert roles_of(conn) == {"read", "write"}  # no consume or call to refuse: it has no such role

    with_conn(shop, scenario)
    assert sent(shop) == []


# -- products -------------------------------------------------------------------------------------


def test_products_are_upserted_by_sku_with_put(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> list[str]:
        first = await write(conn, "products", PRODUCT, key="p1")
        again = await write(conn, "products", PRODUCT, key="p1")  # same idempotency key: not sent again
        slashed = await write(conn, "products", {**PRODUCT, "sku": "HV/200"}, key="p2")
        changed = await write(conn, "products", {"sku": "4711", "price": 199}, key="p3")
        return [first, again, slashed, changed]

    receipts = with_conn(shop, scenario)
    assert receipts == ["product 4711 id=1", "product 4711 id=1", "product HV/200 id=2", "product 4711 id=1"]
    assert sent(shop) == [
        ("PUT", "/rest/default/V1/products/4711"),
        ("PUT", "/rest/default/V1/products/HV%2F200"),
        ("PUT", "/rest/default/V1/products/4711"),
    ]
    assert shop.writes()[0]["body"] == {"product": PRODUCT}
    assert shop.products["4711"]["price"] == 199 and shop.products["4711"]["name"] == "Check valve DN25"


def test_product_modes_create_and_update(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        assert await write(conn, "products", PRODUCT, mode="create") == "product 4711 id=1"
        assert await write(conn, "products", {"sku": "4711", "name": "Renamed"}, mode="update") == "product 4711 id=1"
        with pytest.raises(TerminalError, match="product 'NEW' does not exist and the target's mode is update"):
            await write(conn, "products", {**PRODUCT, "sku": "NEW"}, mode="update")

    with_conn(shop, scenario)
    assert sent(shop) == [
        ("POST", "/rest/default/V1/products"),
        ("GET", "/rest/default/V1/products/4711"),
        ("PUT", "/rest/default/V1/products/4711"),
        ("GET", "/rest/default/V1/products/NEW"),
    ]
    assert "NEW" not in shop.products


def test_discontinued_products_are_disabled_never_deleted(shop: FakeMagento) -> None:
    shop.seed_product({**PRODUCT, "status": 1})

    async def scenario(conn: MagentoConnection) -> list[str]:
        return [
            await write(conn, "products", {"sku": "4711"}, mode="delete"),
            await write(conn, "products", {"sku": "4711"}, mode="disable"),
            await write(conn, "products", {"sku": "NEVER-SOLD"}, mode="delete"),
        ]

    assert with_conn(shop, scenario) == [
        "product 4711 id=1 disabled (status 2; never deleted)",
        "product 4711 id=1 already disabled",
        "product NEVER-SOLD is not in Magento: nothing to disable",
    ]
    assert shop.products["4711"]["status"] == 2 and shop.products["4711"]["name"] == PRODUCT["name"]
    assert "NEVER-SOLD" not in shop.products
    assert [w["body"] for w in shop.writes()] == [{"product": {"sku": "4711", "status": 2}}]
    assert not any(method == "DELETE" for method, _ in sent(shop))


def product_goldens(case: str) -> list[dict[str, Any]]:
    """A catalog golden's product records, the ones for a new product first: with create-only fields a
    snapshot holds "commerce.products (when new)" and "(when it exists)" (a product is made, then updated)."""
    snapshot = golden("catalog", case)
    keys = sorted((k for k in snapshot if k.startswith("commerce.products")), key=lambda k: "when new" not in k)
    found: list[dict[str, Any]] = []
    for name in keys:
        value = snapshot[name]
        found += value if isinstance(value, list) else [value]
    return found


def test_the_catalog_goldens_go_through_check_and_write(shop: FakeMagento) -> None:
    records = [
        *product_goldens("zfields-and-languages"),
        *product_goldens("phased-out-z9"),
        *product_goldens("alphanumeric-not-web-active"),
    ]

    async def scenario(conn: MagentoConnection) -> None:
        for record in records:
            conn.check("products", record)
            new = not await conn.exists("products", record, key=record["sku"])
            await write(conn, "products", {"price": 0, **record} if new else record)

    with_conn(shop, scenario)
    assert shop.products["4712"]["status"] == 2  # phased out: the transform already says disabled
    assert shop.products["4711"]["custom_attributes"][0] == {"attribute_code": "color", "value": "RAL 5015"}


# -- inventory and prices -------------------------------------------------------------------------


def test_source_items_and_prices(shop: FakeMagento) -> None:
    shop.seed_product(PRODUCT)
    stock = golden("inventory", "receipt-in-cartons")["commerce.source-items"]
    base = golden("list-prices", "pr00-and-deleted")["commerce.base-prices"][0]

    async def scenario(conn: MagentoConnection) -> list[str]:
        receipts = [await write(conn, "source-items", stock), await write(conn, "base-prices", base)]
        tier = {"sku": "4711", "price": 170, "price_type": "fixed", "website_id": 0}
        receipts.append(await write(conn, "tier-prices", {**tier, "customer_group": "ALL GROUPS", "quantity": 10}))
        special = {"sku": "4711", "price": 150, "store_id": 0}
        dates = {"price_from": "2025-02-01 00:00:00", "price_to": "2025-02-28 23:59:59"}
        receipts.append(await write(conn, "special-prices", {**special, **dates}))
        return receipts

    assert with_conn(shop, scenario) == [
        "source item 4711@acme_leipzig saved",
        "base price 4711 saved",
        "tier price 4711 saved",
        "special price 4711 saved",
    ]
    assert shop.source_items[("4711", "acme_leipzig")]["quantity"] == 492
    assert shop.products["4711"]["tier_prices"][0]["qty"] == 10
    assert shop.special_prices[0]["price"] == 150
    assert sent(shop, "POST") == [
        ("POST", "/rest/default/V1/inventory/source-items"),
        ("POST", "/rest/default/V1/products/base-prices"),
        ("POST", "/rest/default/V1/products/tier-prices"),
        ("POST", "/rest/default/V1/products/special-price"),
    ]
    assert shop.writes()[0]["body"] == {"sourceItems": [stock]}


def test_a_refused_price_or_source_item_reads_like_magentos_message(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        with pytest.raises(TerminalError) as price:
            await write(conn, "base-prices", {"sku": "NOPE", "price": 5, "store_id": 0})
        assert str(price.value) == ("commerce: base-prices for NOPE: Magento refused it: Invalid attribute SKU = NOPE.")
        with pytest.raises(TerminalError) as stock:
            await write(conn, "source-items", {"sku": "4711", "source_code": "mars", "quantity": 1, "status": 1})
        assert stock.value.status == 400
        assert str(stock.value).endswith('Validation Failed (Source with code "mars" does not exist.)')

    with_conn(shop, scenario)


# -- customers and companies ----------------------------------------------------------------------

CUSTOMER = {"email": "einkauf@hydro-tech.de", "firstname": "Hydro-Tech", "lastname": "GmbH", "website_id": 1}


def test_customers_are_created_then_found_by_email_and_updated(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> list[str]:
        return [
            await write(conn, "customers", {**CUSTOMER, "taxvat": "DE811907980"}),
            await write(conn, "customers", {"email": CUSTOMER["email"], "website_id": 1, "group_id": 2}),
        ]

    assert with_conn(shop, scenario) == ["customer id=1 created", "customer id=1 updated (matched by email)"]
    stored = shop.customers[1]
    assert (stored["group_id"], stored["firstname"], stored["taxvat"]) == (2, "Hydro-Tech", "DE811907980")
    search = next(r for r in shop.requests() if r["path"] == "/rest/default/V1/customers/search")
    assert ("searchCriteria[filter_groups][0][filters][0][field]", "email") in search["query"]
    assert ("searchCriteria[filter_groups][1][filters][0][field]", "website_id") in search["query"]
    assert sent(shop, "PUT") == [("PUT", "/rest/default/V1/customers/1")]


def test_customers_are_found_by_taxvat_when_the_email_changed(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> list[str]:
        created = await write(conn, "customers", {**CUSTOMER, "taxvat": "DE811907980"})
        moved = {**CUSTOMER, "email": "orders@hydro-tech.de", "taxvat": "DE811907980"}
        return [created, await write(conn, "customers", moved)]

    assert with_conn(shop, scenario) == ["customer id=1 created", "customer id=1 updated (matched by taxvat)"]
    assert [c["email"] for c in shop.customers.values()] == ["orders@hydro-tech.de"]


def test_customer_update_mode_needs_an_existing_customer(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        with pytest.raises(TerminalError, match=r"no customer with email 'einkauf@hydro-tech\.de' to update"):
            await write(conn, "customers", CUSTOMER, mode="update")

    with_conn(shop, scenario)
    assert shop.customers == {}


def test_customers_read_with_an_email_or_taxvat_filter(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> list[list[Any]]:
        await write(conn, "customers", {**CUSTOMER, "taxvat": "DE1"})
        await write(conn, "customers", {**CUSTOMER, "email": "b@example.com", "taxvat": "DE2"})
        by_email = [p async for p in conn.read("customers", filter={"email": "b@example.com"})]
        by_taxvat = [p async for p in conn.read("customers", filter={"taxvat": {"in": ["DE1", "DE2"]}})]
        return [by_email, by_taxvat]

    by_email, by_taxvat = with_conn(shop, scenario)
    assert [c["email"] for page in by_email for c in page] == ["b@example.com"]
    assert [c["taxvat"] for page in by_taxvat for c in page] == ["DE1", "DE2"]


COMPANY = {
    "company_name": "Hydro-Tech GmbH",
    "company_email": CUSTOMER["email"],
    "legal_name": "Hydro-Tech GmbH",
    "street": ["Industriestr. 12"],
    "city": "Stuttgart",
    "country_id": "DE",
    "postcode": "70565",
    "telephone": "+49 711 0000",
    "customer_group_id": 2,
    "sales_representative_id": 1,
}


def test_companies_are_upserted_by_email_with_their_admin_as_super_user(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> list[str]:
        with pytest.raises(TerminalError, match=r"needs a super user .* no customer has its email"):
            await write(conn, "companies", COMPANY)
        await write(conn, "customers", CUSTOMER)
        return [await write(conn, "companies", COMPANY), await write(conn, "companies", {**COMPANY, "status": 3})]

    assert with_conn(shop, scenario, b2b="yes") == ["company id=1 created", "company id=1 updated"]
    assert shop.companies[1]["super_user_id"] == 1 and shop.companies[1]["status"] == 3
    created, updated = [w["body"]["company"] for w in shop.writes() if "/company/" in w["path"]]
    # the super user is the connector's: looked up for a new company, kept from the company for an update
    assert created["super_user_id"] == updated["super_user_id"] == 1 and "super_user_id" not in COMPANY


def test_a_company_without_what_magentos_schema_requires_is_never_sent(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        await write(conn, "customers", CUSTOMER)
        for missing in ("customer_group_id", "sales_representative_id", "street"):
            record = {k: v for k, v in COMPANY.items() if k != missing}
            refused = rf"company\.{missing}: missing \(required by Magento's company-data"
            with pytest.raises(TerminalError, match=refused):
                await write(conn, "companies", record)

    with_conn(shop, scenario, b2b="yes")
    assert shop.companies == {}
    assert not any(r["method"] == "POST" and "/company/" in r["path"] for r in shop.requests())


def test_without_b2b_companies_are_a_clear_terminal_error() -> None:
    with FakeMagento(port=0, integration_token=TOKEN, b2b=False) as shop:

        async def scenario(conn: MagentoConnection) -> list[str]:
            messages = []
            for _ in range(2):
                with pytest.raises(TerminalError) as failed:
                    await write(conn, "companies", COMPANY)
                messages.append(str(failed.value))
            with pytest.raises(TerminalError, match="this Magento has no B2B module"):
                [p async for p in conn.read("companies")]
            return messages

        first, second = with_conn(shop, scenario)
        assert first.startswith("commerce: this Magento has no B2B module: GET /rest/default/V1/company/ answered 404")
        assert "'Request does not match any route.'" in first
        assert second == first
        # the second write did not ask again: the first 404 taught the connection
        assert [r["path"] for r in shop.requests()].count("/rest/default/V1/company/") == 2


def test_a_system_declared_without_b2b_never_asks() -> None:
    with FakeMagento(port=0, integration_token=TOKEN) as shop:

        async def scenario(conn: MagentoConnection) -> None:
            with pytest.raises(TerminalError, match="companies need Adobe Commerce B2B, and this system"):
                await write(conn, "companies", COMPANY)

        with_conn(shop, scenario, b2b="no")
        assert shop.requests() == []


# -- orders ---------------------------------------------------------------------------------------


def seed_order(shop: FakeMagento, increment_id: str, updated_at: str = "2025-01-14 10:00:00") -> int:
    order = shop.seed_order(
        {
            "increment_id": increment_id,
            "customer_email": "einkauf@hydro-tech.de",
            "state": "processing",
            "status": "processing",
            "grand_total": 4215.5,
            "base_grand_total": 4215.5,
            "updated_at": updated_at,
            "items": [{"sku": "4711", "qty_ordered": 24}, {"sku": "HV-200-SET", "qty_ordered": 1}],
        }
    )
    return int(order["entity_id"])


def test_order_comments_invoices_shipments_and_credit_memos(shop: FakeMagento) -> None:
    order_id = seed_order(shop, "000000311")

    async def scenario(conn: MagentoConnection) -> list[str]:
        comment = {"increment_id": "000000311", "comment": "Confirmed in SAP", "status": "processing"}
        item = shop.orders[order_id]["items"][0]["item_id"]
        return [
            await write(conn, "order-comments", comment, key="c#shop"),
            await write(conn, "invoices", {"increment_id": "000000311", "capture": False, "notify": False}, key="i"),
            await write(conn, "shipments", {"order_id": order_id, "tracks": [_track()]}, key="s"),
            await write(
                conn,
                "credit-memos",
                {"increment_id": "000000311", "items": [{"order_item_id": item, "qty": 2}]},
                key="m",
            ),
        ]

    assert with_conn(shop, scenario) == [
        "order 000000311: comment added",
        "order 000000311: invoice id=1",
        f"order id={order_id}: shipment id=1",
        "order 000000311: credit memo id=1",
    ]
    order = shop.orders[order_id]
    # each carries its own reference, on a comment the customer does not see (the fake's stored shapes)
    assert order["status_histories"][-1]["comment"] == f"Confirmed in SAP\n{reference_of('c#shop')}"
    assert reference_of("c#shop") == "[seamline ref e0522cff6bde57c7]"  # sha256("c#shop")[:16]
    assert [c["comment"] for c in shop.invoices[1]["comments"]] == [reference_of("i")]
    assert [c["comment"] for c in shop.shipments[1]["comments"]] == [reference_of("s")]
    assert [c["comment"] for c in shop.creditmemos[1]["comments"]] == [reference_of("m")]
    assert [c["is_visible_on_front"] for c in shop.shipments[1]["comments"]] == [0]
    assert [t["track_number"] for t in shop.shipments[1]["tracks"]] == ["1Z999"]
    assert [line["qty"] for line in shop.creditmemos[1]["items"]] == [2]
    assert sent(shop, "POST") == [
        ("POST", f"/rest/default/V1/orders/{order_id}/comments"),
        ("POST", f"/rest/default/V1/order/{order_id}/invoice"),
        ("POST", f"/rest/default/V1/order/{order_id}/ship"),
        ("POST", f"/rest/default/V1/order/{order_id}/refund"),
    ]


def _track() -> dict[str, str]:
    return {"track_number": "1Z999", "title": "UPS", "carrier_code": "ups"}


def test_order_status_back_invoices_ships_and_comments_once(shop: FakeMagento) -> None:
    order_id = seed_order(shop, "000000311")
    record = golden("order-status", "shipped-and-invoiced")["commerce.order-status"]

    async def scenario(conn: MagentoConnection) -> list[str]:
        conn.check("order-status", record)
        first = await write(conn, "order-status", record)
        again = await write(conn, "order-status", record)  # a new version of the same state: nothing to do
        return [first, again]

    first, again = with_conn(shop, scenario)
    assert first == f"order 000000311 id={order_id}: invoice id=1, shipment id=1, comment (complete)"
    assert again == f"order 000000311 id={order_id}: already up to date"
    order = shop.orders[order_id]
    assert order["status"] == "complete"
    assert order["status_histories"][0]["comment"] == "SAP order 1000087: delivery C, billing C"
    assert [m for m, _ in sent(shop, "POST")] == ["POST"] * 3


def test_order_status_in_picking_only_comments(shop: FakeMagento) -> None:
    order_id = seed_order(shop, "000000312")
    record = golden("order-status", "acme-z1-in-picking")["commerce.order-status"]
    receipt = with_conn(shop, lambda conn: write(conn, "order-status", record))
    assert receipt == f"order 000000312 id={order_id}: comment (processing)"
    assert shop.invoices == {} and shop.shipments == {}


def test_order_status_for_an_unknown_order_is_terminal(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        with pytest.raises(TerminalError, match="no order with increment_id '000000999'") as failed:
            await write(conn, "order-status", {"increment_id": "000000999", "shipped": True})
        assert failed.value.status == 404
        with pytest.raises(TerminalError, match="the record names no order"):
            await write(conn, "order-comments", {"comment": "x"})

    with_conn(shop, scenario)


def test_orders_are_read_by_updated_at_in_pages_until_the_total(shop: FakeMagento) -> None:
    for n in range(7):
        seed_order(shop, f"0000004{n:02d}", f"2025-01-14 10:0{n}:00")
    seed_order(shop, "000000300", "2025-01-13 09:00:00")  # before the cursor

    async def scenario(conn: MagentoConnection) -> list[list[Any]]:
        return [
            p async for p in conn.read("orders", since="2025-01-14T10:00:00Z", cursor_field="updated_at", page_size=3)
        ]

    pages = with_conn(shop, scenario)
    assert [[o["increment_id"] for o in page] for page in pages] == [
        ["000000400", "000000401", "000000402"],
        ["000000403", "000000404", "000000405"],
        ["000000406"],
    ]
    reads = [dict(r["query"]) for r in shop.requests()]
    assert [q["searchCriteria[currentPage]"] for q in reads] == ["1", "2", "3"]  # stopped at total_count
    first = reads[0]
    assert first["searchCriteria[filter_groups][0][filters][0][value]"] == "2025-01-14 10:00:00"
    assert first["searchCriteria[filter_groups][0][filters][0][condition_type]"] == "gteq"
    assert first["searchCriteria[sortOrders][0][field]"] == "updated_at"
    assert first["searchCriteria[sortOrders][1][field]"] == "entity_id"
    assert first["searchCriteria[sortOrders][0][direction]"] == "ASC"


def test_reading_past_the_end_stops_at_the_empty_page(shop: FakeMagento) -> None:
    for n in range(6):
        seed_order(shop, f"0000005{n:02d}", f"2025-01-15 10:0{n}:00")

    async def scenario(conn: MagentoConnection) -> tuple[list[list[Any]], list[list[Any]]]:
        full = [p async for p in conn.read("orders", since="2025-01-15 10:00:00", cursor_field="updated_at")]
        none = [p async for p in conn.read("orders", since="2030-01-01T00:00:00+02:00", cursor_field="updated_at")]
        return full, none

    full, none = with_conn(shop, scenario, page_size=3)  # the system's page_size wins over the flow's
    assert [len(page) for page in full] == [3, 3] and none == []
    reads = [dict(r["query"]) for r in shop.requests()]
    assert len(reads) == 3  # two full pages (6 of total_count 6), then one empty answer
    assert reads[2]["searchCriteria[filter_groups][0][filters][0][value]"] == "2029-12-31 22:00:00"


def test_products_shipments_and_invoices_can_be_read(shop: FakeMagento) -> None:
    shop.seed_product(PRODUCT)
    order_id = seed_order(shop, "000000311")

    async def scenario(conn: MagentoConnection) -> dict[str, list[Any]]:
        await write(conn, "order-status", {"order_id": order_id, "invoiced": True, "shipped": True})
        out: dict[str, list[Any]] = {}
        for entity in ("products", "shipments", "invoices"):
            out[entity] = [r async for page in conn.read(entity, cursor_field="updated_at") for r in page]
        return out

    found = with_conn(shop, scenario)
    assert [p["sku"] for p in found["products"]] == ["4711"]
    assert [s["order_id"] for s in found["shipments"]] == [order_id]
    assert [i["order_id"] for i in found["invoices"]] == [order_id]


def test_magento_time() -> None:
    assert magento_time("2025-01-14T10:00:00Z") == "2025-01-14 10:00:00"
    assert magento_time("2025-01-14T12:00:00+02:00") == "2025-01-14 10:00:00"
    assert magento_time("2025-01-14 10:00:00") == "2025-01-14 10:00:00"
    assert magento_time("000123") == "000123"


# -- store scope ----------------------------------------------------------------------------------


def test_the_store_view_is_in_the_url(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        await write(conn, "products", PRODUCT)
        await write(conn, "customers", CUSTOMER)
        [p async for p in conn.read("orders", since=None, cursor_field="updated_at")]

    with_conn(shop, scenario, store_code="de")
    assert {path.split("/V1/")[0] for _, path in sent(shop)} == {"/rest/de"}


def test_store_all_is_global_for_the_catalog_and_default_for_the_rest(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        await write(conn, "products", PRODUCT)
        await write(conn, "source-items", {"sku": "4711", "source_code": "default", "quantity": 1, "status": 1})
        await write(conn, "customers", CUSTOMER)

    with_conn(shop, scenario, store_code="all")
    assert sent(shop) == [
        ("PUT", "/rest/all/V1/products/4711"),
        ("POST", "/rest/all/V1/inventory/source-items"),
        ("GET", "/rest/V1/customers/search"),
        ("POST", "/rest/V1/customers"),
    ]


def test_a_store_code_is_checked_when_the_spec_is() -> None:
    with pytest.raises(ValueError, match="store_code"):
        MagentoOptions.model_validate(
            {"connector": "magento", "url": "https://x", "auth": {"bearer": {"token": "t"}}, "store_code": "de/V1"}
        )


# -- auth -----------------------------------------------------------------------------------------

ADMIN = {"admin": {"username": "admin", "password": "admin123"}}


def test_an_expired_admin_token_is_renewed_once(shop: FakeMagento) -> None:
    masked: list[str] = []

    async def scenario(conn: MagentoConnection) -> list[str]:
        first = await write(conn, "products", PRODUCT)
        assert shop.expire_tokens() == 1
        # several writes at once meet the expired token: one renewal serves them all
        second = await asyncio.gather(*(write(conn, "products", {**PRODUCT, "sku": f"S{n}"}) for n in range(4)))
        return [first, *second]

    receipts = with_conn(shop, scenario, masked=masked, auth=ADMIN)
    assert receipts[0] == "product 4711 id=1" and len(receipts) == 5
    assert shop.request_count("integration/admin/token") == 2
    assert len(shop.products) == 5
    assert "admin123" in masked and len({m for m in masked if len(m) == 32}) == 2  # both tokens masked


def test_a_refused_fresh_token_is_reported_clearly() -> None:
    with FakeMagento(port=0, token_ttl=0) as shop:

        async def scenario(conn: MagentoConnection) -> None:
            with pytest.raises(TerminalError) as failed:
                await write(conn, "products", PRODUCT)
            text = str(failed.value)
            assert failed.value.status == 401
            assert "The consumer isn't authorized to access Magento_Catalog::products." in text
            assert "Magento refused a freshly issued admin token for user 'admin' too" in text

        with_conn(shop, scenario, auth=ADMIN)
        assert shop.request_count("integration/admin/token") == 2
        assert shop.request_count("/products/") == 2


def test_a_wrong_admin_password_is_terminal_and_never_shown(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        with pytest.raises(TerminalError) as failed:
            await write(conn, "products", PRODUCT)
        text = str(failed.value)
        assert "The account sign-in was incorrect" in text and "check the username ('admin')" in text
        assert "wrong-password" not in text

    with_conn(shop, scenario, auth={"admin": {"username": "admin", "password": "wrong-password"}})


def test_the_token_route_down_is_transient(shop: FakeMagento) -> None:
    shop.fail_next(1, status=503, retry_after="7")

    async def scenario(conn: MagentoConnection) -> None:
        with pytest.raises(TransientError) as failed:
            await write(conn, "products", PRODUCT)
        assert failed.value.retry_after == 7 and "admin token" in str(failed.value)
        assert await write(conn, "products", PRODUCT) == "product 4711 id=1"

    with_conn(shop, scenario, auth=ADMIN)


def test_an_integration_signs_with_oauth1() -> None:
    keys = ("ck-1234", "cs-secret", "at-1234", "ats-secret")
    with FakeMagento(port=0, oauth1=keys) as shop:
        oauth1 = dict(
            zip(("consumer_key", "consumer_secret", "access_token", "access_token_secret"), keys, strict=True)
        )

        async def scenario(conn: MagentoConnection) -> str:
            receipt = await write(conn, "products", PRODUCT)
            pages = [p async for p in conn.read("products", filter={"sku": {"like": "47%"}})]
            assert [p["sku"] for page in pages for p in page] == ["4711"]
            return receipt

        assert with_conn(shop, scenario, auth={"oauth1": oauth1}) == "product 4711 id=1"

        async def refused(conn: MagentoConnection) -> None:
            with pytest.raises(TerminalError, match="401 Unauthorized: The consumer isn't authorized") as failed:
                await write(conn, "products", PRODUCT)
            assert "cs-wrong" not in str(failed.value)

        with_conn(shop, refused, auth={"oauth1": {**oauth1, "consumer_secret": "cs-wrong"}})


# -- bad input ------------------------------------------------------------------------------------


def test_a_400_reads_like_magentos_message_with_its_parameters(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        with pytest.raises(TerminalError) as failed:
            await write(conn, "products", {"sku": "NEW", "price": 1})  # fits the schema; Magento wants a name
        assert failed.value.status == 400
        assert str(failed.value) == (
            'commerce: PUT /rest/default/V1/products/NEW -> 400 Bad Request: The value of attribute "name" must be set'
        )

    with_conn(shop, scenario)


def test_a_body_that_breaks_the_schema_is_refused_by_write_too_unsent(shop: FakeMagento) -> None:
    """write() holds each request to the schema itself, whether or not check() ran first."""

    async def scenario(conn: MagentoConnection) -> None:
        with pytest.raises(TerminalError) as failed:
            await write(conn, "products", {**PRODUCT, "pirce": 5})
        assert failed.value.status is None
        assert str(failed.value) == (
            "commerce: PUT /rest/default/V1/products/4711: the body would break Magento's schema, not sent: "
            "product.pirce: unknown field (not in Magento's catalog-data-product-interface) — did you mean 'price'?"
        )

    with_conn(shop, scenario)
    assert sent(shop) == []


def test_the_schema_check_names_each_bad_path_and_nothing_is_sent(shop: FakeMagento) -> None:
    conn = connection(shop)
    with pytest.raises(TerminalError) as failed:
        conn.check("products", {**PRODUCT, "price": "abc", "visibility": 2.5, "extension_attributes": {"webs": [1]}})
    assert str(failed.value) == (
        "commerce.products: the record does not fit Magento's schema, not sent: "
        "product.price: 'abc' is not of type 'number'; product.visibility: 2.5 is not of type 'integer'; "
        "product.extension_attributes.webs: unknown field (not in Magento's catalog-data-product-extension-interface)"
    )
    with pytest.raises(TerminalError, match=r"sourceItems\[0\]\.quantity: 'lots' is not of type 'number'"):
        conn.check("source-items", {"sku": "4711", "source_code": "default", "quantity": "lots"})
    with pytest.raises(TerminalError, match=r"statusHistory\.coment: unknown field .* did you mean 'comment'"):
        conn.check("order-comments", {"increment_id": "1", "coment": "x"})
    with pytest.raises(TerminalError, match=r"increment_id: missing \(or order_id\)"):
        conn.check("invoices", {"capture": True})
    with pytest.raises(TerminalError, match=r"order_id: 'x' is not of type 'integer'"):
        conn.check("shipments", {"order_id": "x"})
    with pytest.raises(TerminalError, match=r"product\.sku: missing"):
        conn.check("products", {"name": "no sku"})
    with pytest.raises(TerminalError, match="the record is a list, not an object"):
        conn.check("products", [PRODUCT])
    run(conn.close())
    assert shop.requests() == []


def test_the_check_holds_records_to_the_full_schema_not_to_what_php_would_cast(shop: FakeMagento) -> None:
    conn = connection(shop)
    with pytest.raises(TerminalError) as failed:
        conn.check("products", {**PRODUCT, "price": "12.50", "status": "1", "weight": None})
    assert str(failed.value).endswith(
        "not sent: product.price: '12.50' is not of type 'number'; product.status: '1' is not of type 'integer'; "
        "product.weight: null is not allowed (Magento's schema has no null: leave the field out)"
    )
    with pytest.raises(TerminalError, match=r"prices\[0\]\.website_id: '0' is not of type 'integer'"):
        conn.check(
            "tier-prices",
            {"sku": "4711", "price": 1, "price_type": "fixed", "website_id": "0", "quantity": 2, "customer_group": "1"},
        )
    conn.check("products", {**PRODUCT, "attribute_set_id": 4.0})  # 4.0 is the JSON integer 4
    conn.check("order-status", golden("order-status", "shipped-and-invoiced")["commerce.order-status"])
    conn.check("source-items", golden("inventory", "ship-to-zero-stuttgart")["commerce.source-items"])
    conn.check(
        "tier-prices",
        {"sku": "4711", "price": 1, "price_type": "fixed", "website_id": 0, "quantity": 2, "customer_group": "1"},
    )
    run(conn.close())


def test_acmes_bill_to_account_becomes_a_customer_and_its_b2b_company(shop: FakeMagento) -> None:
    """What the acme transforms send (the reviewed golden snapshot) passes the check and is saved by the fake."""
    snapshot = golden("customers-from-erp", "bill-to-account-b2b")

    async def scenario(conn: MagentoConnection) -> list[str]:
        conn.check("customers", snapshot["commerce.customers"])
        conn.check("companies", snapshot["commerce.companies"])
        return [
            await write(conn, "customers", snapshot["commerce.customers"]),
            await write(conn, "companies", snapshot["commerce.companies"]),
        ]

    receipts = with_conn(shop, scenario, b2b="yes")
    assert receipts[1] == "company id=1 created", receipts
    company = shop.companies[1]
    assert (company["street"], company["city"], company["country_id"]) == (["Industriestr. 12"], "Stuttgart", "DE")
    assert company["super_user_id"] == 1  # the customer with the company's e-mail, written just before


# -- transient failures ---------------------------------------------------------------------------


def test_busy_and_unreachable_are_transient(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> None:
        shop.fail_next(1, status=429, retry_after="3")
        with pytest.raises(TransientError, match="Too Many Requests") as busy:
            await write(conn, "products", PRODUCT)
        assert busy.value.retry_after == 3
        assert await write(conn, "products", PRODUCT) == "product 4711 id=1"
        shop.stop()
        with pytest.raises(TransientError, match="could not connect"):
            await write(conn, "products", PRODUCT)
        shop.start()
        assert await write(conn, "products", PRODUCT) == "product 4711 id=1"

    with_conn(shop, scenario)


# -- bulk -----------------------------------------------------------------------------------------

BULK = {"bulk": True, "bulk_wait": "20ms", "bulk_poll": "10ms"}


def test_bulk_gathers_writes_and_answers_each_with_its_own_operation(shop: FakeMagento) -> None:
    shop.seed_product({**PRODUCT, "sku": "OLD"})
    records = [
        {**PRODUCT, "sku": "B1"},
        {"sku": "B2", "price": 3},  # new and nameless: its operation fails
        {**PRODUCT, "sku": "B3"},
        {"sku": "OLD", "price": 9},  # an update needs no name
        {"sku": "B5", "name": "no attribute set", "price": 1},  # fails too
        {**PRODUCT, "sku": "B6"},
    ]

    async def scenario(conn: MagentoConnection) -> list[str | BaseException]:
        return await asyncio.gather(*(write(conn, "products", r) for r in records), return_exceptions=True)

    results = with_conn(shop, scenario, **BULK)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [1, 4]
    assert all(isinstance(results[i], TerminalError) for i in failed)
    assert 'operation 1 failed: The value of attribute "name" must be set' in str(results[1])
    assert 'The value of attribute "attribute_set_id" must be set' in str(results[4])
    uuid = shop.writes()[0]["bulk_uuid"]
    assert results[0] == f"product B1: bulk {uuid} operation 0 complete"
    assert set(shop.products) == {"OLD", "B1", "B3", "B6"} and shop.products["OLD"]["price"] == 9
    assert shop.request_count("/async/bulk/V1/products") == 1
    assert shop.request_count(f"/bulk/{uuid}/status") >= 1
    assert shop.request_count("/V1/products/") == 0  # nothing went one by one


def test_bulk_batches_hold_at_most_bulk_size_records(shop: FakeMagento) -> None:
    async def scenario(conn: MagentoConnection) -> list[str]:
        return await asyncio.gather(*(write(conn, "products", {**PRODUCT, "sku": f"S{n}"}) for n in range(7)))

    receipts = with_conn(shop, scenario, **BULK, bulk_size=3)
    assert len(receipts) == 7 and len(shop.products) == 7
    assert shop.request_count("/async/bulk/V1/products") == 3


def test_bulk_polls_until_the_consumer_has_run() -> None:
    with FakeMagento(port=0, integration_token=TOKEN, bulk_auto_run=False) as shop:
        stop = threading.Event()

        def consumer() -> None:  # Magento's async.operations.all, run once the bulk has been polled twice
            while not stop.is_set() and shop.request_count("/status") < 2:
                stop.wait(0.01)
            shop.run_bulk()

        thread = threading.Thread(target=consumer, daemon=True)
        thread.start()

        async def scenario(conn: MagentoConnection) -> list[str]:
            return await asyncio.gather(*(write(conn, "products", {**PRODUCT, "sku": f"S{n}"}) for n in range(3)))

        try:
            receipts = with_conn(shop, scenario, **BULK)
        finally:
            stop.set()
            thread.join(5)
        assert [r.endswith("complete") for r in receipts] == [True] * 3
        assert shop.request_count("/status") >= 3


def test_bulk_operations_still_open_at_the_timeout_are_transient() -> None:
    with FakeMagento(port=0, integration_token=TOKEN, bulk_auto_run=False) as shop:

        async def scenario(conn: MagentoConnection) -> None:
            with pytest.raises(TransientError, match=r"still open after 0\.3s; is Magento's async\.operations\.all"):
                await write(conn, "products", PRODUCT)

        with_conn(shop, scenario, **BULK, limits={"timeout": "300ms"})


def test_a_bulk_refused_whole_is_sent_again_one_by_one(shop: FakeMagento) -> None:
    records = [{**PRODUCT, "sku": "G1"}, {**PRODUCT, "sku": "G2"}, {**PRODUCT, "sku": "G3"}]
    shop.fail_next(1, status=400)  # Magento refuses the whole request (for one body, say)

    async def scenario(conn: MagentoConnection) -> list[str | BaseException]:
        return await asyncio.gather(*(write(conn, "products", r) for r in records), return_exceptions=True)

    results = with_conn(shop, scenario, **BULK)
    assert all(isinstance(r, str) for r in results), results
    assert set(shop.products) == {"G1", "G2", "G3"}
    assert shop.request_count("/async/bulk/V1/products") == 4  # the batch, then each alone


def test_a_gathered_product_that_breaks_the_schema_fails_alone_unsent(shop: FakeMagento) -> None:
    records = [{**PRODUCT, "sku": "G1"}, {**PRODUCT, "sku": "BAD", "price": "abc"}, {**PRODUCT, "sku": "G2"}]

    async def scenario(conn: MagentoConnection) -> list[str | BaseException]:
        return await asyncio.gather(*(write(conn, "products", r) for r in records), return_exceptions=True)

    results = with_conn(shop, scenario, **BULK)
    assert isinstance(results[1], TerminalError)
    assert "product.price: 'abc' is not of type 'number'" in str(results[1])
    assert isinstance(results[0], str) and isinstance(results[2], str)
    assert set(shop.products) == {"G1", "G2"}
    assert shop.request_count("/async/bulk/V1/products") == 1  # the other two, together


def test_bulk_transient_failure_fails_the_batch_transiently(shop: FakeMagento) -> None:
    shop.fail_next(1, status=503)

    async def scenario(conn: MagentoConnection) -> list[str | BaseException]:
        return await asyncio.gather(
            *(write(conn, "products", {**PRODUCT, "sku": f"T{n}"}) for n in range(3)), return_exceptions=True
        )

    results = with_conn(shop, scenario, **BULK)
    assert all(isinstance(r, TransientError) for r in results)
    assert shop.products == {}


def test_closing_fails_writes_still_waiting_for_their_batch(shop: FakeMagento) -> None:
    async def scenario() -> None:
        conn = connection(shop, bulk=True, bulk_wait="10s")
        waiting = asyncio.ensure_future(write(conn, "products", PRODUCT))
        await asyncio.sleep(0)
        await conn.close()
        with pytest.raises(TransientError, match="closed before the bulk request was sent"):
            await waiting

    run(scenario())
    assert shop.requests() == []


# -- through the runtime --------------------------------------------------------------------------

DAEMON_SPEC = """\
seamline: 1
client: magentotest
systems:
  commerce:
    connector: magento
    url: "{{ env.MAGENTO_URL }}"
    auth: { bearer: { token: "{{ secret.MAGENTO_TOKEN }}" } }
    store_code: all
    bulk: true
    bulk_wait: 100ms
    bulk_poll: 20ms
    limits: { concurrency: 8, timeout: 10s }
flows:
  catalog:
    trigger: { event: { webhook: /hooks/products, id: sku } }
    transform: |
      { "sku": sku, "name": name, "attribute_set_id": 4, "type_id": "simple", "price": price }
    target: { system: commerce, write: products, key: sku }
"""


def test_the_daemon_dead_letters_only_the_bad_records_of_a_bulk(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from engine.cli import main
    from tests.runtime.harness import DaemonProcess, wait_for

    (tmp_path / "seamline.yaml").write_text(DAEMON_SPEC, encoding="utf-8")
    events = [{"sku": f"D{n}", "name": f"Part {n}", "price": n + 1} for n in range(6)]
    events[2] = {"sku": "D2", "price": 3}  # new and nameless: Magento fails its bulk operation
    events[4] = {"sku": "D4", "name": "Part 4", "price": "abc"}  # the check stops it before sending
    with FakeMagento(port=0, integration_token=TOKEN) as shop:
        env = {"MAGENTO_URL": shop.url, "MAGENTO_TOKEN": TOKEN}
        daemon = DaemonProcess(tmp_path, tmp_path / "state.db", env=env, workers=8)
        try:
            daemon.start()
            for n, event in enumerate(events):
                answer = httpx.post(f"{daemon.url}/hooks/products", json=event, headers={"X-Message-Id": f"m{n}"})
                assert answer.status_code == 202, answer.text
            wait_for(lambda: len(shop.products) >= 4, 20, "the good products")
            wait_for(lambda: daemon.metric("seamline_dead_lettered_total") >= 2, 20, "the two bad records")
            listing = CliRunner().invoke(main, ["dlq", "list", str(tmp_path), "--state", daemon.state_url])
        finally:
            daemon.stop()
        assert set(shop.products) == {"D0", "D1", "D3", "D5"}
        assert listing.exit_code == 0, listing.output
        assert "2 dead letter(s)" in listing.output
        assert "D2" in listing.output and "D4" in listing.output
        assert shop.request_count("/products/") == 0 and shop.request_count("/async/bulk/V1/products") >= 1
        posted = [op["product"]["sku"] for w in shop.writes() if "bulk_uuid" in w for op in [w["body"]]]
        assert "D4" not in posted


def test_in_the_daemon_a_bulk_is_not_capped_at_the_systems_concurrency(tmp_path: Path) -> None:
    """limits.concurrency 2, 40 workers: records waiting for their bulk hold no slot, so a bulk carries many."""
    from tests.runtime.harness import DaemonProcess, wait_for

    spec = DAEMON_SPEC.replace("limits: { concurrency: 8, timeout: 10s }", "limits: { concurrency: 2, timeout: 10s }")
    spec = spec.replace("bulk_wait: 100ms", "bulk_wait: 300ms")
    (tmp_path / "seamline.yaml").write_text(spec, encoding="utf-8")
    with FakeMagento(port=0, integration_token=TOKEN) as shop:
        env = {"MAGENTO_URL": shop.url, "MAGENTO_TOKEN": TOKEN}
        daemon = DaemonProcess(tmp_path, tmp_path / "state.db", env=env, workers=40)
        try:
            daemon.start()
            with httpx.Client() as client:
                for n in range(40):
                    event = {"sku": f"B{n}", "name": f"Part {n}", "price": n + 1}
                    client.post(f"{daemon.url}/hooks/products", json=event, headers={"X-Message-Id": f"b{n}"})
            wait_for(lambda: len(shop.products) >= 40, 30, "every product")
        finally:
            daemon.stop()
    largest = max(len(bulk["operations"]) for bulk in shop.bulks.values())
    assert largest > 2, [len(b["operations"]) for b in shop.bulks.values()]
