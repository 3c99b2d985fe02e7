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

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from engine.errors import SeamlineError

__all__ = ["DemoReport", "DemoSystems", "FlowResult", "TrytonRpc", "demo_env", "run_demo", "run_scenario"]

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
    request = {"sku": code, "qty": 10, "customer_email": email}  # the cart's own terms; the spec shapes them
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


# -- the one-command demo: every system on this machine, the daemon, the scenario ----------------------

SHOP_TOKEN = "demo-integration-token"  # a fake shop on loopback; not a secret
SF_CLIENT, SF_SECRET = "seamline-demo", "demo-client-secret"  # the fake org's own demo credentials


def demo_env(
    *, tryton: Any, shop_url: str, crm_url: str, queue_url: str, amqp_url: str | None = None
) -> dict[str, str]:
    """The environment ``specs/demo`` reads its systems from (``tryton``: a running TrytonServer)."""
    env = {
        "DEMO_TRYTON_URL": tryton.url,
        "DEMO_TRYTON_DB": tryton.database,
        "DEMO_TRYTON_USER": tryton.user,
        "DEMO_TRYTON_PASSWORD": tryton.password,
        "DEMO_MAGENTO_URL": shop_url,
        "DEMO_MAGENTO_TOKEN": SHOP_TOKEN,
        "DEMO_SALESFORCE_URL": crm_url,
        "DEMO_SALESFORCE_CLIENT_ID": SF_CLIENT,
        "DEMO_SALESFORCE_CLIENT_SECRET": SF_SECRET,
        "DEMO_QUEUE_URL": queue_url,
    }
    if amqp_url:
        env["DEMO_AMQP_URL"] = amqp_url
    return env


def amqp_reachable(url: str, timeout: float = 2.0) -> bool:
    """Whether a broker answers at ``url``'s host and port (a TCP connect; the daemon does the rest)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class DemoReport:
    """What ``seamline demo`` did: the bus it used, each step's result, and how long it all took."""

    bus: str
    results: list[FlowResult]
    wall_s: float
    setup_s: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


class DaemonProcess:
    """``seamline run SPEC --dev`` as a child process on a loopback port, its log in a file."""

    def __init__(self, spec: Path, state_url: str, env: dict[str, str], log: Path) -> None:
        self.spec, self.state_url, self.env, self.log = spec, state_url, env, log
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def once(self, flow: str) -> None:
        """One batch pass of ``flow`` (the go-live load), before the daemon starts."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "run",
                str(self.spec),
                "--once",
                "--flow",
                flow,
                "--state",
                self.state_url,
            ],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the initial {flow} load failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def start(self, timeout: float = 60.0) -> None:
        command = [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(self.spec),
            "--dev",
            "--port",
            str(self.port),
            "--state",
            self.state_url,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env={**os.environ, **self.env}, stdout=log, stderr=log)
        ready, _ = wait_until(self._ready, timeout)
        if not ready:
            self.stop()
            raise RuntimeError(f"the daemon did not become ready; its log: {self.log}")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the daemon exited with {self.process.returncode}; its log: {self.log}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class DemoUnavailable(SeamlineError):
    """A system the demo needs cannot be had on this machine (Tryton not installable); the message says what to do."""


def choose_bus(amqp_url: str | None, say: Callable[[str], None]) -> tuple[bool, str]:
    """(whether the event flows go through RabbitMQ, the bus's name for the summary): RabbitMQ when a URL is set
    and the broker answers; else the embedded queue, and a broker that does not answer is said so (no password)."""
    use_amqp = bool(amqp_url) and amqp_reachable(str(amqp_url))
    if amqp_url and not use_amqp:
        say(f"RabbitMQ does not answer at {_without_password(str(amqp_url))}; using the embedded queue instead")
    return use_amqp, f"RabbitMQ ({_without_password(str(amqp_url))})" if use_amqp else "embedded durable queue (SQLite)"


def run_demo(specs: Path, workdir: Path, *, amqp_url: str | None, say: Callable[[str], None]) -> DemoReport:
    """Start Tryton, the Magento and Salesforce fakes and the daemon; run the scenario; stop everything.

    DemoUnavailable when Tryton cannot be had (no PyPI here, say), with what to install.
    """
    from connectors.tryton.devserver import TrytonUnavailable

    try:
        return _run_demo(specs, workdir, amqp_url=amqp_url, say=say)
    except TrytonUnavailable as exc:
        raise DemoUnavailable(f"the demo needs Tryton and could not get it:\n{exc}") from exc


def _run_demo(specs: Path, workdir: Path, *, amqp_url: str | None, say: Callable[[str], None]) -> DemoReport:
    from connectors.magento.fake import FakeMagento
    from connectors.salesforce.fake import FakeSalesforce
    from connectors.tryton import devserver

    began = time.monotonic()
    use_amqp, bus = choose_bus(amqp_url, say)
    spec = specs / ("demo-rabbitmq" if use_amqp else "demo")
    say("starting Tryton 8.0 (the first run on a machine installs it from PyPI, about a minute)")
    with (
        devserver.running(progress=say) as tryton,
        FakeMagento(port=0, integration_token=SHOP_TOKEN) as shop,
        FakeSalesforce(port=0, clients={SF_CLIENT: SF_SECRET}) as crm,
    ):
        say(f"Tryton at {tryton.url}, Magento fake at {shop.url}, Salesforce fake at {crm.url}; bus: {bus}")
        env = demo_env(
            tryton=tryton,
            shop_url=shop.url,
            crm_url=crm.url,
            queue_url=f"sqlite:///{workdir / 'queue.db'}",
            amqp_url=amqp_url if use_amqp else None,
        )
        if use_amqp:
            # The topology comes first, as in a deployment: a publish no queue takes is refused for good.
            declare_event_queues(spec, str(amqp_url))
        daemon = DaemonProcess(spec, f"sqlite:///{workdir / 'state.db'}", env, workdir / "daemon.log")
        say("go-live: the catalog once (list prices need the shop to know the SKUs), then the daemon")
        daemon.once("catalog")
        daemon.start()
        setup_s = time.monotonic() - began
        try:
            say(f"daemon at {daemon.url}; driving sample traffic through every flow")
            systems = DemoSystems(
                tryton=tryton.client(),
                shop=shop,
                crm=crm,
                daemon_url=daemon.url,
                shop_token=SHOP_TOKEN,
                storage_location=int(tryton.meta["storage"]["id"]),
            )
            results = run_scenario(systems)
        finally:
            daemon.stop()
    return DemoReport(bus, results, time.monotonic() - began, setup_s)


def declare_event_queues(spec: Path, amqp_url: str) -> list[str]:
    """Declare (durable, when missing) every queue the spec's event flows consume; returns their names."""
    import asyncio

    import aio_pika

    from engine.flow import load_client

    client = load_client(spec / "seamline.yaml", environ={})
    queues = sorted(
        {
            str(flow.flow.trigger.event.queue)
            for flow in client.flows.values()
            if flow.flow.trigger.event is not None and flow.flow.trigger.event.queue is not None
        }
    )

    async def declare() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            for name in queues:
                channel = await connection.channel()
                try:
                    await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    channel = await connection.channel()
                    await channel.declare_queue(name, durable=True)

    asyncio.run(declare())
    return queues


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url
