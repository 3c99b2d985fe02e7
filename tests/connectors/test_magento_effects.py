"""Magento's once-only writes: each is found again after an unknown outcome, and never made twice.

Real FakeMagento over loopback, nothing of ours mocked. A test writes an order comment, invoice,
shipment or credit memo, then asks ``find_effect`` on a fresh connection (as a restarted daemon
would: nothing remembered in memory) with the same record and idempotency key, and reads the fake's
effect counters (:meth:`FakeMagento.effects`) to prove the order got it exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from connectors.magento import CONNECTOR, MagentoOptions
from connectors.magento.client import MagentoConnection, reference_of
from connectors.magento.fake import FakeMagento
from connectors.magento.schema import request_problems
from engine.connector import ConnectContext, EffectFinder, ExistenceChecker
from engine.errors import TerminalError, TransientError
from tests.connectors.magento_oracle import held_to_the_full_schema
from tests.reference import reference_cases

T = TypeVar("T")
TOKEN = "integration-token-for-tests"
ROOT = Path(__file__).resolve().parents[2]
TRACK = {"track_number": "1Z999AA10123456784", "title": "UPS", "carrier_code": "ups"}


@pytest.fixture(autouse=True)
def _every_request_held_to_the_full_schema() -> Iterator[None]:
    """Every request a FakeMagento receives in this module must validate against Magento's published schema."""
    with held_to_the_full_schema():
        yield


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def connection(shop: FakeMagento, **extra: Any) -> MagentoConnection:
    options = MagentoOptions.model_validate(
        {"connector": "magento", "url": shop.url, "auth": {"bearer": {"token": TOKEN}}, **extra}
    )
    conn = CONNECTOR.open(options, ConnectContext(system="commerce", client="acme"))
    assert isinstance(conn, MagentoConnection)
    return conn


def with_conn(shop: FakeMagento, action: Callable[[MagentoConnection], Awaitable[T]], **extra: Any) -> T:
    """One action on a connection of its own: a later call remembers nothing of an earlier one."""

    async def scenario() -> T:
        async with connection(shop, **extra) as conn:
            return await action(conn)

    return run(scenario())


def write(shop: FakeMagento, entity: str, record: dict[str, Any], key: str, **extra: Any) -> str:
    async def action(conn: MagentoConnection) -> str:
        conn.check(entity, record)
        return await conn.write(entity, record, key=None, mode="upsert", idempotency_key=key)

    return with_conn(shop, action, **extra)


def find(shop: FakeMagento, entity: str, record: dict[str, Any], key: str, **extra: Any) -> str | None:
    return with_conn(shop, lambda conn: conn.find_effect(entity, record, key=None, idempotency_key=key), **extra)


@pytest.fixture
def shop() -> Iterator[FakeMagento]:
    with FakeMagento(port=0, integration_token=TOKEN) as fake:
        yield fake


def seed_order(shop: FakeMagento, increment_id: str = "000000311", *, invoiced: bool = False) -> dict[str, Any]:
    """An order of 24 x 4711 and 1 x HV-200-SET (invoiced already when a credit memo needs it)."""
    done = {"qty_invoiced": 24} if invoiced else {}
    return shop.seed_order(
        {
            "increment_id": increment_id,
            "customer_email": "einkauf@hydro-tech.de",
            "state": "processing",
            "status": "processing",
            "grand_total": 4215.5,
            "base_grand_total": 4215.5,
            "items": [
                {"sku": "4711", "qty_ordered": 24, "price": 165.0, **done},
                {"sku": "HV-200-SET", "qty_ordered": 1, "price": 255.5, **({"qty_invoiced": 1} if invoiced else {})},
            ],
        }
    )


def line(order: dict[str, Any], index: int, qty: float) -> dict[str, Any]:
    return {"order_item_id": order["items"][index]["item_id"], "qty": qty}


# -- the declaration --------------------------------------------------------------------------------


def test_the_once_only_writes_are_the_ones_that_add_to_an_order() -> None:
    assert CONNECTOR.once_only == {"order-comments", "invoices", "shipments", "credit-memos"}
    assert CONNECTOR.once_only <= CONNECTOR.operations("write")
    assert not CONNECTOR.is_once_only("order-status")  # it reads the order and does only what is missing
    assert not CONNECTOR.is_once_only("products")


def test_the_connection_plays_both_optional_roles(shop: FakeMagento) -> None:
    conn = connection(shop)
    assert isinstance(conn, EffectFinder)
    assert isinstance(conn, ExistenceChecker)
    run(conn.close())


# -- written once, found again, never twice ---------------------------------------------------------

CASES = ["order-comments", "invoices", "shipments", "credit-memos"]
COUNTER = {
    "order-comments": "comments",
    "invoices": "invoices",
    "shipments": "shipments",
    "credit-memos": "creditmemos",
}


def record_for(entity: str, order: dict[str, Any], n: int = 1) -> dict[str, Any]:
    """The n-th record of ``entity`` on ``order``: internal comments, so each carries its reference."""
    if entity == "order-comments":
        return {"increment_id": order["increment_id"], "comment": f"Confirmed in SAP as 100008{n}"}
    if entity == "shipments":
        return {"order_id": order["entity_id"], "items": [line(order, 0, n)], "tracks": [TRACK]}
    return {"increment_id": order["increment_id"], "items": [line(order, 0, n)]}


@pytest.mark.parametrize("entity", CASES)
def test_a_write_is_found_again_by_its_reference_and_a_new_one_is_not(shop: FakeMagento, entity: str) -> None:
    order = seed_order(shop, invoiced=entity == "credit-memos")
    record = record_for(entity, order)
    write(shop, entity, record, "erp-4711:3#commerce")
    before = shop.effects(order["entity_id"])

    found = find(shop, entity, record, "erp-4711:3#commerce")
    assert found is not None and reference_of("erp-4711:3#commerce") in found
    assert find(shop, entity, record_for(entity, order, 2), "erp-4711:4#commerce") is None
    # the same content under another write's key is another write: not made yet
    assert find(shop, entity, record, "erp-4711:5#commerce") is None
    assert shop.effects(order["entity_id"]) == before  # checking changes nothing
    assert before[COUNTER[entity]] == 1


@pytest.mark.parametrize("entity", CASES)
def test_a_write_whose_answer_was_lost_is_applied_exactly_once(entity: str) -> None:
    """The answer is lost (the client gave up while Magento still worked on it): the check finds it,
    so the runtime records it instead of sending a second one."""
    with FakeMagento(port=0, integration_token=TOKEN) as shop:
        order = seed_order(shop, invoiced=entity == "credit-memos")
        # by order_id: the write's first request is the one that adds to the order (no search before it)
        record = {**record_for(entity, order), "order_id": order["entity_id"]}
        record.pop("increment_id", None)
        shop.configure(latency=0.6)
        with pytest.raises(TransientError):
            write(shop, entity, record, "k#commerce", limits={"timeout": "200ms"})
        deadline = time.monotonic() + 5
        while shop.effects(order["entity_id"])[COUNTER[entity]] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        shop.configure(latency=0)
        assert shop.effects(order["entity_id"])[COUNTER[entity]] == 1, "the lost write was applied"
        assert find(shop, entity, record, "k#commerce") is not None
        assert shop.effects(order["entity_id"])[COUNTER[entity]] == 1


def test_two_equal_partial_shipments_are_two_writes(shop: FakeMagento) -> None:
    """Content alone cannot tell two shipments of 1 x 4711 apart; their references can."""
    order = seed_order(shop)
    record = {"increment_id": order["increment_id"], "items": [line(order, 0, 1)]}
    write(shop, "shipments", record, "delivery-80001#commerce")
    assert find(shop, "shipments", record, "delivery-80002#commerce") is None
    write(shop, "shipments", record, "delivery-80002#commerce")
    reference = reference_of("delivery-80001#commerce")
    assert find(shop, "shipments", record, "delivery-80001#commerce") == (
        f"order {order['increment_id']}: shipment id=1 already there (it carries {reference})"
    )
    assert find(shop, "shipments", record, "delivery-80002#commerce") is not None
    assert shop.effects(order["entity_id"])["shipments"] == 2


def test_a_record_with_its_own_internal_comment_keeps_it_and_adds_the_reference(shop: FakeMagento) -> None:
    order = seed_order(shop)
    record = {
        "order_id": order["entity_id"],
        "comment": {"comment": "Packed in Leipzig", "is_visible_on_front": 0},
        "tracks": [TRACK],
    }
    write(shop, "shipments", record, "k1")
    assert [c["comment"] for c in shop.shipments[1]["comments"]] == [f"Packed in Leipzig\n{reference_of('k1')}"]
    assert find(shop, "shipments", record, "k1") is not None


# -- what the customer sees carries no reference: found by content ------------------------------------


def test_a_comment_the_customer_sees_is_sent_as_it_is_and_found_by_text_and_status(shop: FakeMagento) -> None:
    order = seed_order(shop)
    record = {
        "increment_id": order["increment_id"],
        "comment": "Your order is on its way",
        "status": "processing",
        "is_customer_notified": 1,
    }
    write(shop, "order-comments", record, "k1")
    assert shop.orders[order["entity_id"]]["status_histories"][0]["comment"] == "Your order is on its way"
    assert find(shop, "order-comments", record, "k1") == (
        f"order {order['increment_id']}: comment already there (history id=1; same text and status)"
    )
    assert find(shop, "order-comments", {**record, "status": "complete"}, "k1") is None
    assert find(shop, "order-comments", {**record, "comment": "Delivered"}, "k1") is None


def test_a_document_e_mailed_with_its_comment_is_found_by_items_tracks_and_comment(shop: FakeMagento) -> None:
    order = seed_order(shop)
    record = {
        "increment_id": order["increment_id"],
        "items": [line(order, 0, 10)],
        "tracks": [TRACK],
        "notify": True,
        "appendComment": True,
        "comment": {"comment": "Thank you for your order", "is_visible_on_front": 1},
    }
    write(shop, "shipments", record, "k1")
    assert [c["comment"] for c in shop.shipments[1]["comments"]] == ["Thank you for your order"]
    assert find(shop, "shipments", record, "k1") is not None
    assert find(shop, "shipments", {**record, "items": [line(order, 0, 11)]}, "k1") is None
    other_track = {**TRACK, "track_number": "1Z999AA10123456785"}
    assert find(shop, "shipments", {**record, "tracks": [other_track]}, "k1") is None


def test_an_e_mailed_document_naming_nothing_is_found_when_nothing_is_left(shop: FakeMagento) -> None:
    order = seed_order(shop)
    record = {"increment_id": order["increment_id"], "notify": True, "appendComment": True, "capture": False}
    assert find(shop, "invoices", record, "k1") is None
    write(shop, "invoices", record, "k1")
    assert find(shop, "invoices", record, "k1") == (
        f"order {order['increment_id']}: invoice id=1 already there (the order has nothing left for another invoice)"
    )


# -- how the check reads Magento ---------------------------------------------------------------------


def test_documents_listed_without_comments_have_them_read_one_by_one() -> None:
    with FakeMagento(port=0, integration_token=TOKEN, document_comments_in_lists=False) as shop:
        order = seed_order(shop)
        for n in (1, 2):
            write(shop, "invoices", {"order_id": order["entity_id"], "items": [line(order, 0, n)]}, f"k{n}")
        assert find(shop, "invoices", {"order_id": order["entity_id"]}, "k1") is not None
        assert shop.request_count("/invoices/1/comments", "GET") == 1
        assert shop.request_count("/invoices/2/comments", "GET") == 1


def test_an_order_magento_does_not_know_has_no_effect(shop: FakeMagento) -> None:
    assert find(shop, "shipments", {"increment_id": "000000999"}, "k") is None
    assert find(shop, "order-comments", {"order_id": 999, "comment": "x"}, "k") is None
    assert find(shop, "invoices", {"order_id": 999}, "k") is None


def test_a_busy_magento_cannot_tell_now(shop: FakeMagento) -> None:
    order = seed_order(shop)
    shop.fail_next(1, status=503)
    with pytest.raises(TransientError):
        find(shop, "invoices", {"order_id": order["entity_id"]}, "k")


def test_only_once_only_writes_are_checked(shop: FakeMagento) -> None:
    with pytest.raises(TerminalError, match="'products' is safe to send again"):
        find(shop, "products", {"sku": "4711"}, "k")


# -- every body still fits Magento's published schema --------------------------------------------------

ROUTE_BODIES = {
    "/comments": "POST /V1/orders/{id}/comments",
    "/invoice": "POST /V1/order/{orderId}/invoice",
    "/ship": "POST /V1/order/{orderId}/ship",
    "/refund": "POST /V1/order/{orderId}/refund",
}


def test_every_body_sent_with_a_reference_fits_the_published_schema() -> None:
    with FakeMagento(port=0, integration_token=TOKEN, strict_unknown_fields=True) as shop:
        order, invoiced = seed_order(shop), seed_order(shop, "000000312", invoiced=True)
        for entity in CASES:
            write(shop, entity, record_for(entity, invoiced if entity == "credit-memos" else order), entity)
        visible = {"comment": {"comment": "On its way", "is_visible_on_front": 1}, "order_id": order["entity_id"]}
        write(shop, "shipments", {**visible, "items": [line(order, 0, 2)]}, "visible")
        logged = shop.writes()
    assert [entry["status"] for entry in logged] == [200] * 5
    for entry in logged:
        route = next(r for suffix, r in ROUTE_BODIES.items() if entry["path"].endswith(suffix))
        assert request_problems(route, entry["body"]) == [], entry  # orderId: the route's own path parameter


def test_the_golden_order_documents_still_pass_the_check(shop: FakeMagento) -> None:
    """Goldens that feed once-only targets go through check unchanged (the reference is added after)."""
    conn = connection(shop)
    checked = 0
    for snapshot in sorted(case.snapshot_path for case in reference_cases()):
        data = json.loads(snapshot.read_text(encoding="utf-8"))
        for target, record in data.items() if isinstance(data, dict) else []:
            entity = target.split(".", 1)[-1].split(" (")[0]  # "commerce.products (when new)" -> products
            if target.startswith("commerce.") and entity in CONNECTOR.operations("write") and isinstance(record, dict):
                conn.check(entity, record)
                checked += 1
    run(conn.close())
    assert checked > 0


# -- order-status: safe to send again, and why -------------------------------------------------------


def order_status(order: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "increment_id": order["increment_id"],
        "status": "complete",
        "comment": "SAP order 1000087: delivery C, billing C",
        "invoiced": True,
        "shipped": True,
        "tracks": [TRACK],
        **extra,
    }


def test_order_status_sent_again_after_a_restart_changes_nothing(shop: FakeMagento) -> None:
    order = seed_order(shop)
    write(shop, "order-status", order_status(order), "v1")
    after_first = shop.effects(order["entity_id"])
    posts = shop.request_count(method="POST")
    # someone adds a comment in Magento before the resend: ours is still said since the order is complete
    shop.orders[order["entity_id"]]["status_histories"].insert(
        0,
        {
            "entity_id": 99,
            "comment": "Customer called",
            "status": "complete",
            "created_at": "2999-01-01 00:00:00",
            "is_customer_notified": 0,
            "is_visible_on_front": 0,
            "parent_id": order["entity_id"],
        },
    )
    receipt = write(shop, "order-status", order_status(order), "v1")
    assert receipt.endswith("already up to date")
    assert shop.request_count(method="POST") == posts
    assert shop.effects(order["entity_id"]) == {**after_first, "comments": after_first["comments"] + 1}
    assert after_first == {"comments": 1, "shipments": 1, "invoices": 1, "creditmemos": 0}


def test_order_status_with_only_a_status_is_said_once(shop: FakeMagento) -> None:
    order = seed_order(shop)
    record = {"increment_id": order["increment_id"], "status": "holded"}
    write(shop, "order-status", record, "v1")
    assert write(shop, "order-status", record, "v2").endswith("already up to date")
    assert shop.effects(order["entity_id"])["comments"] == 1


def test_order_status_half_done_before_a_crash_finishes_without_doubling(shop: FakeMagento) -> None:
    order = seed_order(shop)
    write(shop, "invoices", {"increment_id": order["increment_id"]}, "someone-else")  # invoiced, then the crash
    receipt = write(shop, "order-status", order_status(order), "v1")
    assert "invoice" not in receipt and "shipment id=1" in receipt and "comment (complete)" in receipt
    assert shop.effects(order["entity_id"]) == {"comments": 1, "shipments": 1, "invoices": 1, "creditmemos": 0}


# -- exists, for create-only fields ---------------------------------------------------------------------


def test_exists_asks_magento_for_products_and_customers(shop: FakeMagento) -> None:
    shop.seed_product({"sku": "4711", "name": "Check valve", "attribute_set_id": 4, "price": 189.9})

    async def scenario(conn: MagentoConnection) -> list[bool | None]:
        await conn.write(
            "customers",
            {"email": "einkauf@hydro-tech.de", "firstname": "Eva", "lastname": "Kaufmann"},
            key=None,
            mode="upsert",
            idempotency_key="c1",
        )
        return [
            await conn.exists("products", {"sku": "4711"}, key="4711"),
            await conn.exists("products", {"sku": "NEW-1"}, key="NEW-1"),
            await conn.exists("customers", {"email": "einkauf@hydro-tech.de"}, key=None),
            await conn.exists("customers", {"email": "new@hydro-tech.de"}, key=None),
            await conn.exists("source-items", {"sku": "4711", "source_code": "default"}, key=None),
        ]

    assert with_conn(shop, scenario) == [True, False, True, False, None]


def test_exists_for_a_record_without_its_key_is_terminal(shop: FakeMagento) -> None:
    with pytest.raises(TerminalError, match="the record has no sku"):
        with_conn(shop, lambda conn: conn.exists("products", {"name": "x"}, key=None))
