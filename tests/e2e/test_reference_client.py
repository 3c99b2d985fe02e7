"""The reference client end to end: a real Tryton, FakeMagento, FakeSalesforce and the daemon as a subprocess.

``seamline_demo.run_scenario`` drives sample traffic through every flow of ``specs/demo``; these tests
check each outcome, and that each record was applied once at each target (the fakes' write logs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from connectors.magento.fake import FakeMagento
from connectors.salesforce.fake import FakeSalesforce
from seamline_demo import DemoSystems, FlowResult, run_scenario, wait_until
from tests.runtime.harness import DaemonProcess
from tests.tryton_server import TrytonServer

ROOT = Path(__file__).resolve().parents[2]
SHOP_TOKEN = "demo-integration-token"  # a fake shop on loopback; not a secret
SF_CLIENT, SF_SECRET = "seamline-demo", "demo-client-secret"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BOB_ADDRESS = {
    "address_type": "billing",
    "firstname": "Bob",
    "lastname": "Trader",
    "street": ["2 Market Square"],
    "city": "San Francisco",
    "postcode": "94105",
    "country_id": "US",
    "telephone": "+1 415 555 0199",
}


@dataclass
class Stack:
    tryton: TrytonServer
    shop: FakeMagento
    crm: FakeSalesforce
    env: dict[str, str]
    tmp: Path


@pytest.fixture
def stack(tryton: TrytonServer, tmp_path: Path) -> Iterator[Stack]:
    tryton.reset()  # each test starts from the seeded database
    with (
        FakeMagento(port=0, integration_token=SHOP_TOKEN) as shop,
        FakeSalesforce(port=0, clients={SF_CLIENT: SF_SECRET}) as crm,
    ):
        env = {
            "DEMO_TRYTON_URL": tryton.url,
            "DEMO_TRYTON_DB": tryton.database,
            "DEMO_TRYTON_USER": tryton.user,
            "DEMO_TRYTON_PASSWORD": tryton.password,
            "DEMO_MAGENTO_URL": shop.url,
            "DEMO_MAGENTO_TOKEN": SHOP_TOKEN,
            "DEMO_SALESFORCE_URL": crm.url,
            "DEMO_SALESFORCE_CLIENT_ID": SF_CLIENT,
            "DEMO_SALESFORCE_CLIENT_SECRET": SF_SECRET,
            "DEMO_QUEUE_URL": f"sqlite:///{tmp_path / 'queue.db'}",
            "DEMO_AMQP_URL": AMQP_URL,
        }
        yield Stack(tryton, shop, crm, env, tmp_path)


def initial_load(stack: Stack, spec: Path, state: Path) -> None:
    """Go-live: the catalog once, before the daemon (list prices need the shop to know the SKUs)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(spec),
            "--once",
            "--flow",
            "catalog",
            "--state",
            f"sqlite:///{state}",
        ],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def start_daemon(stack: Stack, spec: Path) -> DaemonProcess:
    state = stack.tmp / "state.db"
    initial_load(stack, spec, state)
    return DaemonProcess(spec, state, env=stack.env, workers=4, lease=5.0).start()


def systems(stack: Stack, daemon: DaemonProcess) -> DemoSystems:
    return DemoSystems(
        tryton=stack.tryton.client(),
        shop=stack.shop,
        crm=stack.crm,
        daemon_url=daemon.url,
        shop_token=SHOP_TOKEN,
        storage_location=int(stack.tryton.meta["storage"]["id"]),
    )


def by_flow(results: list[FlowResult]) -> dict[str, FlowResult]:
    return {r.flow: r for r in results}


def shop_writes(shop: FakeMagento, path: str, method: str | None = None) -> list[dict[str, object]]:
    return [w for w in shop.writes() if path in str(w["path"]) and method in (None, w["method"])]


def test_every_flow_of_the_reference_client(stack: Stack) -> None:
    daemon = start_daemon(stack, ROOT / "specs" / "demo")
    try:
        results = by_flow(run_scenario(systems(stack, daemon)))
        time.sleep(2.5)  # two more schedule passes: anything applied twice would show now
        dead = daemon.metric("seamline_dead_lettered_total")
    finally:
        daemon.stop()
    for result in results.values():
        print(result.as_dict())  # the measured latencies, in the test's output (-s)
    assert {name: r.ok for name, r in results.items()} == dict.fromkeys(
        ["catalog", "contract-price", "inventory", "customers-to-erp", "customers-from-erp", "orders", "order-status"],
        True,
    )
    assert dead == 0, daemon.log_path.read_text()
    shop, crm, rpc = stack.shop, stack.crm, stack.tryton.client()

    # catalog: SERVICE-1 disabled, kept; the seeded inactive OLD-1 created disabled
    assert shop.products["SERVICE-1"]["status"] == 2 and shop.products["OLD-1"]["status"] == 2
    assert shop.products["WIDGET-1"]["status"] == 1
    assert not [w for w in shop.writes() if w["method"] == "DELETE"]
    # contract price: Tryton's price for Bob, the second answer cached
    answers = results["contract-price"].arrived["answers"]
    assert answers[0]["body"] == {"sku": "WIDGET-1", "qty": 10, "price": 10, "currency": "USD", "customer_price": True}
    assert answers[1]["body"] == answers[0]["body"]
    # inventory: the count arrived once with that quantity
    assert shop.source_items[("WIDGET-2", "default")] == {
        "sku": "WIDGET-2",
        "source_code": "default",
        "quantity": 55,
        "status": 1,
    }
    # customers: one party for Carol (matched, never duplicated by the echo), one contact, one account
    assert len(results["customers-to-erp"].arrived["tryton_parties"]) == 1
    assert rpc.count("party.identifier", [["code", "=", "BE0897290877"]]) == 1
    assert [c["email"] for c in shop.customers.values()].count("carol.smith@example.com") == 1
    assert sum(1 for w in crm.writes("Contact") if w["created"]) == len(crm.records("Contact"))
    assert crm.find("Account", "Seamline_Id__c", "bob@example.com") is not None
    # orders: one confirmed sale, one CRM order
    reference = results["orders"].sent["increment_id"]
    assert rpc.count("sale.sale", [["reference", "=", reference]]) == 1
    assert sum(1 for w in crm.writes("Order") if w["applied"]) == 1
    # order status: shipped once, one comment naming the shipment
    assert len(shop_writes(shop, "/ship")) == 1
    comments = [w for w in shop_writes(shop, "/comments") if "Tryton shipment" in str(w["body"])]
    assert len(comments) == 1
    assert results["inventory"].latency_s is not None and results["order-status"].latency_s is not None


def test_a_crm_outage_while_an_order_flows_neither_duplicates_nor_loses(stack: Stack) -> None:
    daemon = start_daemon(stack, ROOT / "specs" / "demo")
    try:
        demo = systems(stack, daemon)
        # the CRM refuses the next two order upserts (503): the Tryton sale and the CRM account are already
        # delivered when the order is retried, and must not be written again
        stack.crm.fail_next(2, status=503, only="/services/data/v62.0/sobjects/Order/")
        order = stack.shop.seed_order(
            {
                "customer_email": "bob@example.com",
                "customer_firstname": "Bob",
                "customer_lastname": "Trader",
                "order_currency_code": "USD",
                "grand_total": 51.0,
                "base_grand_total": 51.0,
                "billing_address": BOB_ADDRESS,
                "items": [{"sku": "WIDGET-2", "product_type": "simple", "qty_ordered": 2, "price": 25.5}],
            }
        )
        reference = str(order["increment_id"])
        found, _ = wait_until(lambda: stack.crm.find("Order", "Seamline_Id__c", reference), 30)
        assert found is not None, daemon.log_path.read_text()[-3000:]
        time.sleep(2.5)  # more passes of the orders schedule re-read the order (overlap): nothing more happens
        retried = daemon.metric("seamline_retried_total", flow="orders")
    finally:
        daemon.stop()
    rpc = demo.tryton
    assert rpc.count("sale.sale", [["reference", "=", reference]]) == 1
    sales = rpc.search_read("sale.sale", [["reference", "=", reference]], ["state"])
    assert sales[0]["state"] in ("confirmed", "processing")
    assert sum(1 for w in stack.crm.writes("Order") if w["applied"]) == 1
    assert [w["created"] for w in stack.crm.writes("Account") if w["external_id"] == "bob@example.com"].count(True) == 1
    refused = [r for r in stack.crm.requests() if "/sobjects/Order/" in r["path"] and r["status"] == 503]
    assert len(refused) == 2
    assert retried >= 2


@pytest.mark.rabbitmq
def test_inventory_over_rabbitmq(stack: Stack) -> None:
    pika = pytest.importorskip("aio_pika")
    del pika
    _declare_queue("erp.stock.changed")
    daemon = start_daemon(stack, ROOT / "specs" / "demo-rabbitmq")
    try:
        demo = systems(stack, daemon)
        from seamline_demo import count_stock

        result = count_stock(demo, "WIDGET-2", 61.0)
    finally:
        daemon.stop()
    print(result.as_dict())
    assert result.ok, daemon.log_path.read_text()[-3000:]
    assert stack.shop.source_items[("WIDGET-2", "default")]["quantity"] == 61


def _declare_queue(name: str) -> None:
    """The queue must exist before the first publish (the default exchange drops what no queue takes)."""
    import asyncio

    import aio_pika

    async def declare() -> None:
        connection = await aio_pika.connect_robust(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, durable=True)
            await queue.purge()

    asyncio.run(declare())
