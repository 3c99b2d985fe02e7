"""The reference client's scenario: sample traffic through every flow of ``specs/demo``, measured.

Given running systems (a Tryton server reached through an RPC client, a FakeMagento, a
FakeSalesforce) and a daemon running ``specs/demo`` against them, :func:`run_scenario` acts as the
people around the integration would (a product manager deactivates a product, a cart asks for a
price, a warehouse counts stock, a customer registers, a sales clerk renames a party, a buyer orders,
the warehouse ships) and waits for each effect where it must arrive. Each step answers a
:class:`FlowResult`: what was sent, what arrived where, and for inventory and order status how long
it took. Used by ``tests/e2e/`` and by the ``seamline demo`` command.

Waiting is bounded: a step whose effect does not arrive within its deadline answers ``ok: False``
with what was last seen, and the scenario goes on with the next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import httpx

__all__ = ["DemoSystems", "FlowResult", "TrytonRpc", "run_scenario"]

DEADLINE = 30.0
POLL = 0.05
CUSTOMER = {"email": "carol.smith@example.com", "firstname": "Carol", "lastname": "Smith", "vat": "BE0897290877"}
ADDRESS = {
    "street": ["12 Dock Street"],
    "city": "New York",
    "postcode": "10005",
    "country_id": "US",
    "telephone": "+1 212 555 0101",
}


class TrytonRpc(Protocol):
    """What the scenario needs of a logged-in Tryton RPC client (``TrytonServer.client()`` is one)."""

    def call(self, model: str, method: str, *params: Any, context: dict[str, Any] | None = None) -> Any: ...

    def search_read(
        self, model: str, domain: list[Any], fields: list[str], context: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]: ...


class Shop(Protocol):
    """The FakeMagento surface the scenario reads and seeds."""

    products: dict[str, dict[str, Any]]
    source_items: dict[tuple[str, str], dict[str, Any]]
    customers: dict[int, dict[str, Any]]
    orders: dict[int, dict[str, Any]]

    @property
    def url(self) -> str: ...

    def seed_order(self, order: dict[str, Any]) -> dict[str, Any]: ...


class Crm(Protocol):
    """The FakeSalesforce surface the scenario reads."""

    def find(self, sobject: str, field_name: str, value: Any) -> dict[str, Any] | None: ...


@dataclass
class DemoSystems:
    """The running systems: Tryton (an admin RPC client), the shop, the CRM, and the daemon's URL."""

    tryton: TrytonRpc
    shop: Shop
    crm: Crm
    daemon_url: str
    shop_token: str
    storage_location: int  # Tryton's storage location (code STO) inventories count in
    deadline: float = DEADLINE


@dataclass
class FlowResult:
    """One step's outcome, as plain data."""

    flow: str
    ok: bool
    sent: dict[str, Any] = field(default_factory=dict)
    arrived: dict[str, Any] = field(default_factory=dict)
    latency_s: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wait_until(probe: Callable[[], Any], deadline: float) -> tuple[Any, float | None]:
    """Poll ``probe`` until it answers something truthy: (that answer, seconds taken), or (None, None)."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        found = probe()
        if found:
            return found, time.monotonic() - started
        time.sleep(POLL)
    return None, None


def _product_id(rpc: TrytonRpc, code: str) -> tuple[int, int]:
    rows = rpc.search_read("product.product", [["code", "=", code]], ["template"], context={"active_test": False})
    return int(rows[0]["id"]), int(rows[0]["template"])


# -- the steps ------------------------------------------------------------------------------------


def deactivate_product(systems: DemoSystems, code: str = "SERVICE-1") -> FlowResult:
    """Catalog: a product deactivated in Tryton is disabled (status 2) in the shop, not deleted."""
    _, template = _product_id(systems.tryton, code)
    systems.tryton.call("product.template", "write", [template], {"active": False})

    def disabled() -> dict[str, Any] | None:
        product = systems.shop.products.get(code)
        return product if product is not None and str(product.get("status")) == "2" else None

    product, took = wait_until(disabled, systems.deadline)
    arrived = {"sku": code, "status": product.get("status")} if product else {}
    return FlowResult("catalog", product is not None, {"deactivated": code}, arrived, took)


def ask_price(systems: DemoSystems, code: str = "WIDGET-1", email: str = "bob@example.com") -> FlowResult:
    """Contract price: the cart asks twice; the second answer comes from the daemon's cache."""
    request = {"code": code, "quantity": 10, "party": {"email": email}}
    answers = []
    for _ in range(2):
        started = time.monotonic()
        reply = httpx.post(f"{systems.daemon_url}/price", json=request, timeout=10)
        answers.append(
            {
                "status": reply.status_code,
                "body": reply.json(),
                "cache": reply.headers.get("X-Seamline-Cache"),
                "seconds": round(time.monotonic() - started, 4),
            }
        )
    ok = [a["status"] for a in answers] == [200, 200] and [a["cache"] for a in answers] == ["miss", "hit"]
    return FlowResult("contract-price", ok, {"request": request}, {"answers": answers})


def count_stock(systems: DemoSystems, code: str = "WIDGET-2", quantity: float = 55.0) -> FlowResult:
    """Inventory: a stock count confirmed in Tryton reaches the shop's source item; measured."""
    product, _ = _product_id(systems.tryton, code)
    created = systems.tryton.call(
        "stock.inventory",
        "create",
        [{"location": systems.storage_location, "lines": [["create", [{"product": product, "quantity": quantity}]]]}],
    )
    systems.tryton.call("stock.inventory", "confirm", created)
    started = time.monotonic()

    def counted() -> dict[str, Any] | None:
        item = systems.shop.source_items.get((code, "default"))
        return item if item is not None and float(item.get("quantity") or 0) == quantity else None

    item, _ = wait_until(counted, systems.deadline)
    took = time.monotonic() - started if item is not None else None
    return FlowResult("inventory", item is not None, {"sku": code, "quantity": quantity}, dict(item or {}), took)


def register_customer(systems: DemoSystems) -> FlowResult:
    """Customers to the ERP: a shop registration becomes a Tryton party and a Salesforce contact."""
    body = {
        "customer": {
            "email": CUSTOMER["email"],
            "firstname": CUSTOMER["firstname"],
            "lastname": CUSTOMER["lastname"],
            "taxvat": CUSTOMER["vat"],
            "website_id": 1,
            "addresses": [{**ADDRESS, "firstname": "Carol", "lastname": "Smith", "default_billing": True}],
        }
    }
    reply = httpx.post(
        f"{systems.shop.url}/rest/V1/customers",
        json=body,
        headers={"Authorization": f"Bearer {systems.shop_token}"},
        timeout=10,
    )
    reply.raise_for_status()

    def party() -> list[dict[str, Any]]:
        return systems.tryton.search_read(
            "party.contact_mechanism", [["type", "=", "email"], ["value", "=", CUSTOMER["email"]]], ["party"]
        )

    parties, _ = wait_until(party, systems.deadline)
    contact, _ = wait_until(lambda: systems.crm.find("Contact", "Seamline_Id__c", CUSTOMER["email"]), systems.deadline)
    arrived = {
        "tryton_parties": sorted({int(p["party"]) for p in parties or []}),
        "salesforce_contact": (contact or {}).get("Id"),
    }
    return FlowResult("customers-to-erp", bool(parties) and contact is not None, body, arrived)


def rename_party(systems: DemoSystems, email: str = "alice@example.com", name: str = "Alice Buyer-Smith") -> FlowResult:
    """Customers from the ERP: a party renamed in Tryton renames the shop's customer."""
    rows = systems.tryton.search_read(
        "party.contact_mechanism", [["type", "=", "email"], ["value", "=", email]], ["party"]
    )
    systems.tryton.call("party.party", "write", [int(rows[0]["party"])], {"name": name})
    last = name.partition(" ")[2]

    def renamed() -> dict[str, Any] | None:
        for customer in list(systems.shop.customers.values()):
            if customer.get("email") == email and customer.get("lastname") == last:
                return customer
        return None

    customer, took = wait_until(renamed, systems.deadline)
    arrived = {"firstname": customer.get("firstname"), "lastname": customer.get("lastname")} if customer else {}
    return FlowResult("customers-from-erp", customer is not None, {"email": email, "name": name}, arrived, took)


def place_order(systems: DemoSystems, code: str = "WIDGET-1", quantity: int = 3) -> FlowResult:
    """Orders: a shop order becomes a confirmed Tryton sale and a Salesforce order."""
    order = systems.shop.seed_order(
        {
            "customer_email": CUSTOMER["email"],
            "customer_firstname": CUSTOMER["firstname"],
            "customer_lastname": CUSTOMER["lastname"],
            "customer_is_guest": 0,
            "order_currency_code": "USD",
            "grand_total": 10.0 * quantity,
            "base_grand_total": 10.0 * quantity,
            "billing_address": {**ADDRESS, "address_type": "billing", "firstname": "Carol", "lastname": "Smith"},
            "items": [{"sku": code, "name": code, "product_type": "simple", "qty_ordered": quantity, "price": 10.0}],
        }
    )
    reference = str(order["increment_id"])

    def confirmed() -> list[dict[str, Any]]:
        rows = systems.tryton.search_read("sale.sale", [["reference", "=", reference]], ["number", "state"])
        return rows if rows and rows[0]["state"] in ("confirmed", "processing") else []

    sales, _ = wait_until(confirmed, systems.deadline)
    crm_order, _ = wait_until(lambda: systems.crm.find("Order", "Seamline_Id__c", reference), systems.deadline)
    arrived = {"tryton_sales": sales or [], "salesforce_order": (crm_order or {}).get("Id")}
    ok = bool(sales) and crm_order is not None
    return FlowResult("orders", ok, {"increment_id": reference, "sku": code, "qty": quantity}, arrived)


def ship_order(systems: DemoSystems, reference: str) -> FlowResult:
    """Order status: the sale's shipment done in Tryton ships the shop's order, with a comment; measured."""
    rpc = systems.tryton
    sales = rpc.search_read("sale.sale", [["reference", "=", reference]], ["shipments"])
    shipments = [int(s) for s in sales[0]["shipments"]] if sales else []
    if not shipments:
        return FlowResult("order-status", False, {"increment_id": reference}, detail="the sale has no shipment")
    for button in ("assign_force", "pick", "pack", "do"):
        rpc.call("stock.shipment.out", button, shipments)
    started = time.monotonic()

    def shipped() -> dict[str, Any] | None:
        for order in list(systems.shop.orders.values()):
            histories = order.get("status_histories") or []
            if (
                order.get("increment_id") == reference
                and histories
                and "Tryton shipment" in str(histories[0].get("comment"))
            ):
                return order
        return None

    order, _ = wait_until(shipped, systems.deadline)
    took = time.monotonic() - started if order is not None else None
    arrived: dict[str, Any] = {}
    if order is not None:
        arrived = {
            "state": order.get("state"),
            "qty_shipped": [item.get("qty_shipped") for item in order.get("items", [])],
            "comment": order["status_histories"][0].get("comment"),
        }
    return FlowResult("order-status", order is not None, {"increment_id": reference}, arrived, took)


def run_scenario(systems: DemoSystems) -> list[FlowResult]:
    """Every step, in the order a day at the manufacturer would bring them."""
    results = [
        deactivate_product(systems),
        ask_price(systems),
        count_stock(systems),
        register_customer(systems),
        rename_party(systems),
    ]
    order = place_order(systems)
    results.append(order)
    if order.ok:
        results.append(ship_order(systems, str(order.sent["increment_id"])))
    else:
        results.append(FlowResult("order-status", False, detail="skipped: the order did not reach Tryton"))
    return results
