"""The tryton connector against a real Tryton 8.0 server on loopback (``connectors/tryton/devserver.py``).

Nothing of ours is mocked: the server is trytond itself over a seeded SQLite database, reset once
for this module. Changes "made in the ERP" (a new price, a stock move, a shipment shipped) go
through Tryton's JSON-RPC as an admin user, the way a warehouse clerk's client would send them.
The error-classification table at the end answers from an in-process fake of Tryton's protocol,
because a locked database or a concurrent edit cannot be provoked on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import Coroutine, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from connectors.http.fake import FakeHttpServer
from connectors.tryton import CONNECTOR, TrytonOptions
from connectors.tryton.client import TrytonConnection
from connectors.tryton.devserver import RpcClient, TrytonServer, TrytonUnavailable, ensure_install
from engine.cli import main
from engine.connector import ConnectContext
from engine.errors import TerminalError, TransientError
from engine.kit.http.wire import Answer
from tests.tryton_server import tryton, tryton_server

__all__ = ["tryton", "tryton_server"]  # the fixtures, imported so this module works without the plugin

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def options(server: TrytonServer, **extra: Any) -> TrytonOptions:
    raw = {
        "connector": "tryton",
        "url": server.url,
        "database": server.database,
        "auth": {"session": {"login": server.user, "password": server.password}},
        "limits": {"timeout": "20s"},
        **extra,
    }
    return TrytonOptions.model_validate(raw)


def connect(server: TrytonServer, masked: list[str] | None = None, **extra: Any) -> TrytonConnection:
    context = ConnectContext(
        system="erp", client="test", mask=(masked.append if masked is not None else lambda _: None)
    )
    connection = CONNECTOR.open(options(server, **extra), context)
    assert isinstance(connection, TrytonConnection)
    return connection


async def read_all(connection: TrytonConnection, entity: str, since: str | None = None, **kw: Any) -> list[Any]:
    records: list[Any] = []
    async for page in connection.read(entity, since=since, cursor_field="write_date", **kw):
        assert 0 < len(page) <= kw.get("page_size", 100), "pages are never empty nor larger than asked"
        records.extend(page)
    return records


class Erp:
    """One connection for a whole test, driven from sync code (one login: Tryton hashes passwords slowly)."""

    def __init__(self, server: TrytonServer) -> None:
        self.loop = asyncio.new_event_loop()
        self.connection = connect(server)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def read(self, entity: str, since: str | None = None, **kw: Any) -> list[Any]:
        return self.run(read_all(self.connection, entity, since, **kw))

    def write(self, entity: str, record: Any, key: Any = None) -> str:
        return self.run(self.connection.write(entity, record, key=key, mode="upsert", idempotency_key=f"{key}#erp"))

    def close(self) -> None:
        self.run(self.connection.close())
        self.loop.close()


@pytest.fixture
def erp(tryton: TrytonServer) -> Iterator[Erp]:
    client = Erp(tryton)
    yield client
    client.close()


@pytest.fixture(scope="module")
def admin(tryton: TrytonServer) -> RpcClient:
    """Tryton's admin, changing data the way a user of Tryton's own client would."""
    return tryton.client()


def only_changes(records: list[dict[str, Any]], cursor: str) -> list[dict[str, Any]]:
    """The records after ``cursor``; the cursor is inclusive, so the ones exactly at it come again."""
    assert all(r["write_date"] >= cursor for r in records), records
    return [r for r in records if r["write_date"] > cursor]


def by(records: list[dict[str, Any]], field: str) -> dict[Any, dict[str, Any]]:
    return {r[field]: r for r in records}


# -- reading by cursor --------------------------------------------------------------------------------


def test_products_are_read_oldest_change_first_and_again_from_the_cursor_only_the_change(
    erp: Erp, admin: RpcClient
) -> None:
    products = erp.read("products", page_size=2)
    found = by(products, "code")
    assert {"WIDGET-1", "WIDGET-2", "GADGET-1", "NOSALE-1", "OLD-1", "SERVICE-1"} <= set(found)
    assert found["WIDGET-1"] | {"id": 0, "write_date": ""} == {
        "id": 0,
        "code": "WIDGET-1",
        "name": "Blue widget",
        "description": None,
        "type": "goods",
        "salable": True,
        "active": True,
        "discontinued": False,
        "list_price": 10.0,
        "currency": "USD",
        "unit": "Unit",
        "write_date": "",
    }
    assert found["OLD-1"]["discontinued"] is True and found["OLD-1"]["active"] is False  # its template is inactive
    assert found["NOSALE-1"]["salable"] is False
    stamps = [p["write_date"] for p in products]
    assert stamps == sorted(stamps) and all(s.endswith("Z") for s in stamps)

    cursor = stamps[-1]
    (template,) = admin.search_read("product.product", [["code", "=", "WIDGET-2"]], ["template"])
    admin.call("product.template", "write", [template["template"]], {"list_price": Decimal("27.00")})

    changed = only_changes(erp.read("products", since=cursor), cursor)
    assert [(p["code"], p["list_price"]) for p in changed] == [("WIDGET-2", 27.0)]
    prices = only_changes(erp.read("prices", since=cursor), cursor)
    assert prices == [
        {"id": changed[0]["id"], "code": "WIDGET-2", "list_price": 27.0, "currency": "USD", "active": True}
        | {"write_date": changed[0]["write_date"]}
    ]


def test_stock_is_read_per_warehouse_and_a_stock_move_is_a_change(
    tryton: TrytonServer, erp: Erp, admin: RpcClient
) -> None:
    stock = erp.read("stock")
    levels = {(s["code"], s["warehouse"]): s for s in stock}
    assert levels[("NOSALE-1", "WH")]["quantity"] == 10.0
    assert levels[("NOSALE-1", "WH")]["forecast_quantity"] == 10.0
    assert ("SERVICE-1", "WH") not in levels  # a service has no stock
    cursor = max(s["write_date"] for s in stock)
    gadget = levels[("GADGET-1", "WH")]["quantity"]

    supplier = admin.search_read("stock.location", [["code", "=", "SUP"]], ["id"])[0]["id"]
    move = {
        "product": tryton.meta["products"]["GADGET-1"],
        "from_location": supplier,
        "to_location": tryton.meta["storage"]["id"],
        "quantity": 5.0,
        "unit": admin.search_read("product.uom", [["name", "=", "Unit"]], ["id"])[0]["id"],
        "unit_price": Decimal("40"),
        "currency": admin.search_read("currency.currency", [["code", "=", "USD"]], ["id"])[0]["id"],
        "company": tryton.meta["company"],
    }
    moves = admin.call("stock.move", "create", [move])
    admin.call("stock.move", "do", moves)

    changed = only_changes(erp.read("stock", since=cursor), cursor)
    assert [(s["code"], s["warehouse"], s["quantity"]) for s in changed] == [("GADGET-1", "WH", gadget + 5)]


def test_parties_are_read_with_addresses_email_vat_and_a_new_phone_is_a_change(erp: Erp, admin: RpcClient) -> None:
    parties = by(erp.read("parties"), "email")
    bob = parties["bob@example.com"]
    assert bob["name"] == "Bob Trader" and bob["active"] is True
    assert bob["vat"] is not None and bob["vat"].replace(" ", "").replace(".", "") == "BE0403019261"
    assert bob["addresses"] == [
        {
            "id": bob["addresses"][0]["id"],
            "name": None,
            "street": "2 Market Square",
            "postal_code": "94105",
            "city": "San Francisco",
            "country": "US",
        }
    ]
    cursor = max(p["write_date"] for p in parties.values())

    admin.call(
        "party.contact_mechanism",
        "create",
        [{"party": parties["alice@example.com"]["id"], "type": "phone", "value": "+1 212 555 0100"}],
    )
    changed = only_changes(erp.read("parties", since=cursor), cursor)
    assert [(p["email"], p["phone"]) for p in changed] == [("alice@example.com", "+1 212 555 0100")]


def test_a_filter_narrows_a_read_with_tryton_domain_clauses(erp: Erp) -> None:
    codes = {p["code"] for p in erp.read("products", filter={"salable": False})}
    assert codes == {"NOSALE-1"}
    codes = {p["code"] for p in erp.read("products", filter={"code": {"like": "WIDGET-%"}})}
    assert codes == {"WIDGET-1", "WIDGET-2"}


# -- writing parties --------------------------------------------------------------------------------------


def test_a_party_written_twice_is_one_party_matched_by_vat_then_email(
    tryton: TrytonServer, erp: Erp, admin: RpcClient
) -> None:
    carol = {
        "name": "Carol Customer",
        "email": "carol@example.com",
        "vat": "DE136695976",
        "address": {"street": "3 Elm Road", "postal_code": "60311", "city": "New York", "country": "US"},
    }
    first = erp.write("parties", carol, key="carol@example.com")
    assert erp.write("parties", carol, key="carol@example.com") == first
    assert admin.count("party.party", [["identifiers.code_compact", "=", "DE136695976"]]) == 1
    party_id = int(first.removeprefix("party "))

    # the same VAT with a new email and name: the party is completed, not duplicated
    renamed = {**carol, "name": "Carol Customer GmbH", "email": "billing@carol.example"}
    assert erp.write("parties", renamed) == first
    (party,) = admin.search_read("party.party", [["id", "=", party_id]], ["name", "contact_mechanisms.value"])
    assert party["name"] == "Carol Customer GmbH"
    assert sorted(m["value"] for m in party["contact_mechanisms."]) == ["billing@carol.example", "carol@example.com"]
    assert len(admin.search_read("party.address", [["party", "=", party_id]], ["id"])) == 1

    # a seeded party, its VAT written another way, is found too
    bob = {"name": "Bob Trader", "email": "bob@example.com", "vat": "BE 0403.019.261"}
    assert erp.write("parties", bob) == f"party {tryton.meta['parties']['bob@example.com']}"


def test_a_party_tryton_rejects_is_terminal_with_trytons_message(erp: Erp, admin: RpcClient) -> None:
    with pytest.raises(TerminalError) as refused:
        erp.write("parties", {"name": "Bad VAT", "email": "badvat@example.com", "vat": "BE0000000000"})
    assert 'The European VAT Number "BE0000000000"' in str(refused.value)
    assert "is not valid" in str(refused.value)
    assert admin.count("party.contact_mechanism", [["value", "=", "badvat@example.com"]]) == 0

    with pytest.raises(TerminalError, match="neither an email nor a vat"):
        erp.write("parties", {"name": "Nobody"})


# -- writing sales, and reading their shipments and invoices back -------------------------------------------


def dave(reference: str, *, address: bool = True) -> dict[str, Any]:
    party: dict[str, Any] = {"name": "Dave Shopper", "email": f"dave-{reference}@example.com"}
    if address:
        party["address"] = {"street": "4 Oak Lane", "postal_code": "02110", "city": "Boston", "country": "US"}
    return {
        "reference": reference,
        "party": party,
        "lines": [{"code": "WIDGET-1", "quantity": 2}, {"code": "WIDGET-2", "quantity": 1, "unit_price": "24.00"}],
        "description": f"Magento order {reference}",
    }


def ship(admin: RpcClient, shipment_id: int) -> None:
    """What the warehouse does in Tryton's client: assign, pick, pack, ship."""
    for button in ("assign_try", "pick", "pack", "do"):
        admin.call("stock.shipment.out", button, [shipment_id])


def test_a_sale_is_created_once_confirmed_shipped_and_its_status_read_back(erp: Erp, admin: RpcClient) -> None:
    receipt = erp.write("sales", dave("100000001"), key="100000001")
    assert receipt.startswith("sale ") and receipt.endswith(" processing"), receipt
    assert erp.write("sales", dave("100000001")) == receipt  # written again: found by its reference
    assert admin.count("sale.sale", [["reference", "=", "100000001"]]) == 1

    (sale,) = [s for s in erp.read("sales") if s["reference"] == "100000001"]
    assert sale["state"] == "processing" and sale["shipment_state"] == "waiting"
    assert sale["party"]["name"] == "Dave Shopper" and sale["currency"] == "USD"
    assert [(line["code"], line["quantity"], line["unit_price"]) for line in sale["lines"]] == [
        ("WIDGET-1", 2.0, 10.0),  # no unit price given: Tryton's sale price for the party
        ("WIDGET-2", 1.0, 24.0),
    ]
    assert sale["total_amount"] == 44.0
    assert [s["state"] for s in sale["shipments"]] == ["waiting"]
    assert [i["state"] for i in sale["invoices"]] == ["draft"]
    cursor = sale["write_date"]

    (shipment_id,) = admin.call("sale.sale", "read", [sale["id"]], ["shipments"])[0]["shipments"]
    ship(admin, shipment_id)

    shipments = [s for s in erp.read("shipments", since=cursor) if s["reference"] == "100000001"]
    assert [(s["state"], s["warehouse"], s["sales"][0]["number"]) for s in shipments] == [
        ("done", "WH", sale["number"])
    ]
    assert sorted((line["code"], line["quantity"]) for line in shipments[0]["lines"]) == [
        ("WIDGET-1", 2.0),
        ("WIDGET-2", 1.0),
    ]
    (after,) = [s for s in erp.read("sales", since=cursor) if s["reference"] == "100000001"]
    assert after["shipment_state"] == "sent"
    (invoice,) = [i for i in erp.read("invoices") if i["reference"] == "100000001"]
    assert invoice["state"] == "draft" and invoice["total_amount"] == 44.0 and invoice["type"] == "out"


def test_a_sale_tryton_refuses_is_terminal_with_trytons_message_and_can_be_taken_up(erp: Erp, admin: RpcClient) -> None:
    not_salable = {**dave("100000002"), "lines": [{"code": "NOSALE-1", "quantity": 1}]}
    with pytest.raises(TerminalError) as refused:
        erp.write("sales", not_salable)
    assert "is not valid according to its domain" in str(refused.value)
    assert "NOSALE-1" in str(refused.value)

    with pytest.raises(TerminalError) as refused:
        erp.write("sales", dave("100000003", address=False))
    assert "you must enter an invoice address" in str(refused.value)
    assert "not confirmed" in str(refused.value)

    # the address is fixed at the source and the order written again: the same sale is confirmed
    receipt = erp.write("sales", dave("100000003"))
    assert receipt.endswith(" processing"), receipt
    assert admin.count("sale.sale", [["reference", "=", "100000003"]]) == 1

    with pytest.raises(TerminalError, match="no active product with code 'NOPE-9'"):
        erp.write("sales", {**dave("100000004"), "lines": [{"code": "NOPE-9", "quantity": 1}]})
    with pytest.raises(TerminalError, match="has no lines"):
        erp.write("sales", {**dave("100000005"), "lines": []})


# -- products, calls, sessions ----------------------------------------------------------------------------


def test_a_product_is_created_then_kept_in_step_by_its_code(erp: Erp, admin: RpcClient) -> None:
    receipt = erp.write("products", {"code": "NEW-1", "name": "New thing", "list_price": 12.5})
    assert erp.write("products", {"code": "NEW-1", "name": "New thing", "list_price": "13.00"}) == receipt
    assert erp.write("products", {"code": "NEW-1", "active": False}) == receipt
    (product,) = [p for p in erp.read("products") if p["code"] == "NEW-1"]
    assert (product["list_price"], product["discontinued"], product["salable"]) == (13.0, True, True)
    assert admin.count("product.product", [["code", "=", "NEW-1"]], context={"active_test": False}) == 1


def test_calls_answer_prices_stock_and_parties(tryton: TrytonServer) -> None:
    async def scenario() -> list[Any]:
        async with connect(tryton) as connection:
            return [
                await connection.call(
                    "price", {"code": "WIDGET-1", "quantity": 3, "party": {"email": "alice@example.com"}}, timeout=10
                ),
                await connection.call("price", {"codes": ["GADGET-1", "WIDGET-1"]}, timeout=10),
                await connection.call("stock", {"code": "NOSALE-1"}, timeout=10),
                await connection.call("party", {"email": "ALICE@example.com"}, timeout=10),
                await connection.call("party", {"vat": "FR40303265045"}, timeout=10),
            ]

    price, prices, stock, alice, nobody = run(scenario())
    assert price == {"code": "WIDGET-1", "quantity": 3.0, "unit_price": 10.0, "currency": "USD", "party_found": True}
    assert [(p["code"], p["unit_price"]) for p in prices] == [("GADGET-1", 99.0), ("WIDGET-1", 10.0)]
    assert [(s["code"], s["warehouse"], s["quantity"]) for s in stock] == [("NOSALE-1", "WH", 10.0)]
    assert alice["name"] == "Alice Buyer" and alice["addresses"][0]["city"] == "New York"
    assert nobody is None

    async def unknown() -> None:
        async with connect(tryton) as connection:
            await connection.call("price", {"code": "NOPE-9"}, timeout=10)

    with pytest.raises(TerminalError, match="no active product with code 'NOPE-9'"):
        run(unknown())


def test_an_expired_session_is_renewed_once(tryton: TrytonServer) -> None:
    async def scenario() -> int:
        async with connect(tryton) as connection:
            await read_all(connection, "prices")
            assert connection.logins == 1
            # Tryton forgets the API user's sessions (what its max_age does, or a restore of the database)
            with contextlib.closing(sqlite3.connect(tryton.db_file, timeout=10)) as db:
                db.execute(
                    "DELETE FROM ir_session WHERE create_uid = (SELECT id FROM res_user WHERE login = ?)", ["api"]
                )
                db.commit()
            assert await read_all(connection, "prices")
            await read_all(connection, "prices")
            return connection.logins

    assert run(scenario()) == 2


def test_a_wrong_password_is_terminal_and_never_shown(tryton: TrytonServer) -> None:
    masked: list[str] = []

    async def scenario() -> None:
        connection = connect(tryton, masked, auth={"session": {"login": "api", "password": "not-the-password"}})
        async with connection:
            await connection.call("party", {"email": "alice@example.com"}, timeout=10)

    with pytest.raises(TerminalError) as refused:
        run(scenario())
    assert "refused the login of user 'api'" in str(refused.value)
    assert "not-the-password" not in str(refused.value) and "not-the-password" in masked


def test_a_stopped_server_is_transient_and_the_connection_works_once_it_is_back(tryton: TrytonServer) -> None:
    async def scenario() -> None:
        async with connect(tryton) as connection:
            await read_all(connection, "prices")
            tryton.stop()
            try:
                with pytest.raises(TransientError, match="could not connect"):
                    await read_all(connection, "prices")
            finally:
                tryton.start()
            assert await read_all(connection, "prices")

    run(scenario())


# -- a flow: orders from a shop into Tryton; a refused order is dead-lettered, the others go through -------------

FLOW_SPEC = """\
seamline: 1
client: trytonflow
systems:
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      orders: { path: /orders, pagination: { style: page, page_size: 10 } }
  erp:
    connector: tryton
    url: "{{ env.ERP_URL }}"
    database: "{{ env.ERP_DB }}"
    auth: { session: { login: api, password: "{{ secret.ERP_PASSWORD }}" } }
    limits: { concurrency: 1, timeout: 20s }
flows:
  orders:
    trigger: { schedule: "0 3 * * *" }
    source: { system: shop, read: orders, cursor: updated_at, id: increment_id }
    transform: |
      {
        "reference": increment_id,
        "party": { "name": customer_name, "email": customer_email,
                   "address": { "street": street, "city": city, "postal_code": postcode, "country": country } },
        "lines": [items.{ "code": sku, "quantity": qty_ordered }]
      }
    target: { system: erp, write: sales, key: reference }
"""


def test_a_flow_dead_letters_the_order_tryton_refuses_and_delivers_the_others(
    tryton: TrytonServer, admin: RpcClient, tmp_path: Path
) -> None:
    def order(number: str, sku: str) -> dict[str, Any]:
        return {
            "id": number,
            "increment_id": number,
            "customer_name": "Erin Flow",
            "customer_email": "erin@example.com",
            "street": "5 Pine Street",
            "city": "Austin",
            "postcode": "73301",
            "country": "US",
            "items": [{"sku": sku, "qty_ordered": 1}],
            "updated_at": f"2026-01-0{number[-1]}T10:00:00Z",
        }

    with FakeHttpServer(port=0) as shop:
        shop.seed(
            "/orders", [order("200000001", "WIDGET-1"), order("200000002", "NOSALE-1"), order("200000003", "GADGET-1")]
        )
        (tmp_path / "seamline.yaml").write_text(FLOW_SPEC, encoding="utf-8")
        env = {"SHOP_URL": shop.url, "ERP_URL": tryton.url, "ERP_DB": tryton.database, "ERP_PASSWORD": tryton.password}
        state = ["--state", f"sqlite:///{tmp_path / 'state.db'}"]
        result = CliRunner().invoke(main, ["run", str(tmp_path), "--once", *state], env=env)
        assert result.exit_code == 1, result.output  # a dead letter makes the pass fail
        letters = CliRunner().invoke(main, ["dlq", "list", str(tmp_path), *state], env=env)
        letter = CliRunner().invoke(main, ["dlq", "show", str(tmp_path), "1", *state], env=env)

    delivered = admin.search_read("sale.sale", [["reference", "like", "20000000%"]], ["reference", "state"])
    assert sorted((s["reference"], s["state"]) for s in delivered) == [
        ("200000001", "processing"),
        ("200000003", "processing"),
    ]
    assert "1 dead letter(s)" in letters.output, letters.output
    assert "200000002" in letters.output
    assert "is not valid according to its domain" in letter.output, letter.output  # Tryton's own words


# -- how Tryton's answers are classified (an in-process fake of the protocol) -----------------------------------


class _FakeTryton:
    """An in-process stand-in for the kit's pool: logs in, then gives every call ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        *,
        connect: float | None = None,
        read: float | None = None,
        pool: float | None = None,
    ) -> Answer:
        called = json.loads(body or b"{}")["method"]
        if called == "common.db.login":
            return _answer(200, json_body={"id": 1, "result": [7, "session-token-123", None]})
        if called == "model.res.user.get_preferences":
            return _answer(200, json_body={"id": 1, "result": {"company": 1, "language": "en"}})
        return self.answer

    async def aclose(self) -> None:
        pass


def _answer(status: int, *, json_body: Any = None, text: str = "", headers: dict[str, str] | None = None) -> Answer:
    content = json.dumps(json_body).encode() if json_body is not None else text.encode()
    kind = "application/json" if json_body is not None else "text/html"
    return Answer(status, "", [("Content-Type", kind), *(headers or {}).items()], content)


@pytest.mark.parametrize(
    ("answer", "kind", "words"),
    [
        (
            _answer(200, json_body={"id": 1, "error": ["UserError", ["The sale has no lines.", "Add one.", None]]}),
            TerminalError,
            "Tryton refused it: The sale has no lines. (Add one.)",
        ),
        (
            _answer(200, json_body={"id": 1, "error": ["UserWarning", ["sale_42", "The stock is short.", ""]]}),
            TerminalError,
            "Tryton stopped on a warning: The stock is short.",
        ),
        (
            _answer(200, json_body={"id": 1, "error": ["ConcurrencyException", "Records were modified"]}),
            TransientError,
            "someone else changed the record",
        ),
        (
            _answer(200, json_body={"id": 1, "error": ["database is locked", "Traceback ..."]}),
            TransientError,
            "database is busy",
        ),
        (
            _answer(200, json_body={"id": 1, "error": ["division by zero", "Traceback ..."]}),
            TerminalError,
            "Tryton failed: division by zero",
        ),
        (_answer(503, headers={"Retry-After": "4"}), TransientError, "503"),
        (_answer(403, text="<html>Forbidden</html>"), TerminalError, "over RPC"),
        (_answer(404, text="<html>Not Found</html>"), TerminalError, "no database 'erp'"),
        (_answer(200, text="<html>not json</html>"), TerminalError, "not JSON"),
    ],
)
def test_trytons_answers_are_classified(answer: Answer, kind: type[Exception], words: str) -> None:
    opts = TrytonOptions.model_validate(
        {
            "connector": "tryton",
            "url": "http://tryton.test",
            "database": "erp",
            "auth": {"session": {"login": "api", "password": "pw-123456"}},
        }
    )

    async def scenario() -> None:
        connection = TrytonConnection(opts, ConnectContext(system="erp", client="t"), transport=_FakeTryton(answer))
        async with connection:
            await connection.call("party", {"email": "a@example.com"}, timeout=5)

    with pytest.raises(kind) as raised:
        run(scenario())
    assert type(raised.value) is kind and words in str(raised.value), str(raised.value)
    assert "session-token-123" not in str(raised.value) and "pw-123456" not in str(raised.value)
    if answer.status == 503:
        assert isinstance(raised.value, TransientError) and raised.value.retry_after == 4.0


def test_unknown_operations_name_the_nearest() -> None:
    opts = TrytonOptions.model_validate(
        {
            "connector": "tryton",
            "url": "http://x",
            "database": "d",
            "auth": {"session": {"login": "a", "password": "b"}},
        }
    )

    async def scenario() -> None:
        async with TrytonConnection(opts, ConnectContext(system="erp", client="t")) as connection:
            async for _ in connection.read("product", since=None, cursor_field="write_date", page_size=10, filter=None):
                pass

    with pytest.raises(TerminalError, match="cannot read 'product' — did you mean 'products'"):
        run(scenario())


def test_without_pypi_the_server_fixture_fails_loudly_saying_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEAMLINE_TRYTON_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index, no wheel folder: as on a machine cut off from PyPI
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(TrytonUnavailable) as failed:
        ensure_install()
    assert "could not be installed" in str(failed.value)
    assert "pip install 'trytond>=8.0,<8.1'" in str(failed.value)
    assert not list(tmp_path.glob("tryton-8.0/venv-*"))  # a half-built virtualenv is not left to be trusted
