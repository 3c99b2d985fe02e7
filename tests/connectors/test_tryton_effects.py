"""Tryton sales sent again after a crash, a lost answer or a race: one order never becomes two sales.

Against the real Tryton 8.0 server of ``connectors/tryton/devserver.py``. A crash is a connection whose
process "dies" right after Tryton answered one call (:class:`DiesAfter`: Tryton did the work, the answer
is lost); a race is a create of an abandoned attempt that commits while the next attempt works
(:class:`RacedBy`). Both only add what Tryton itself would see happen; every answer comes from Tryton.
States a race can leave behind (two sales of one reference) are laid out as a Tryton user would, with
its admin's JSON-RPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

import pytest

from connectors.tryton import CONNECTOR, TrytonOptions
from connectors.tryton.client import TrytonConnection
from connectors.tryton.devserver import RpcClient, TrytonServer
from engine.connector import ConnectContext, EffectFinder, ExistenceChecker
from engine.errors import TransientError
from tests.tryton_server import tryton, tryton_server

__all__ = ["tryton", "tryton_server"]  # the fixtures, imported so this module works without the plugin

T = TypeVar("T")


def options(server: TrytonServer) -> TrytonOptions:
    return TrytonOptions.model_validate(
        {
            "connector": "tryton",
            "url": server.url,
            "database": server.database,
            "auth": {"session": {"login": server.user, "password": server.password}},
            "limits": {"timeout": "20s"},
        }
    )


class DiesAfter(TrytonConnection):
    """A connection whose daemon dies right after Tryton answered ``method``: the work is done, the answer lost."""

    def __init__(self, server: TrytonServer, method: str) -> None:
        super().__init__(options(server), ConnectContext(system="erp", client="test"))
        self.method = method

    async def rpc(
        self, method: str, *params: Any, context: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        answer = await super().rpc(method, *params, context=context, timeout=timeout)
        if method == self.method:
            raise TransientError(f"erp: the daemon died after {method} (its answer is lost)")
        return answer


class RacedBy(TrytonConnection):
    """A connection whose first sale create is overtaken by an abandoned attempt's create of the same
    sale, committing just before it (the abandoned one started first, so it has the lower id)."""

    def __init__(self, server: TrytonServer) -> None:
        super().__init__(options(server), ConnectContext(system="erp", client="test"))
        self.raced = False

    async def rpc(
        self, method: str, *params: Any, context: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        if method == "model.sale.sale.create" and not self.raced:
            self.raced = True
            await super().rpc(method, *params, context=context, timeout=timeout)  # the abandoned attempt's
        return await super().rpc(method, *params, context=context, timeout=timeout)


class Daemon:
    """Connections made one after another, as daemons restarted after a crash make them, on one loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def write(self, connection: TrytonConnection, record: dict[str, Any]) -> str:
        async def once() -> str:
            async with connection:
                return await connection.write(
                    "sales", record, key=record["reference"], mode="upsert", idempotency_key="k"
                )

        return self.run(once())

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    runner = Daemon()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def admin(tryton: TrytonServer) -> RpcClient:
    return tryton.client()


def order(reference: str) -> dict[str, Any]:
    return {
        "reference": reference,
        "party": {
            "name": "Dave Shopper",
            "email": f"dave-{reference}@example.com",
            "address": {"street": "4 Oak Lane", "postal_code": "02110", "city": "Boston", "country": "US"},
        },
        "lines": [{"code": "WIDGET-1", "quantity": 2}],
    }


def fresh(server: TrytonServer) -> TrytonConnection:
    return TrytonConnection(options(server), ConnectContext(system="erp", client="test"))


def states(admin: RpcClient, reference: str) -> list[tuple[int, str]]:
    rows = admin.search_read("sale.sale", [["reference", "=", reference]], ["state"])
    return sorted((int(r["id"]), str(r["state"])) for r in rows)


# -- the declaration ------------------------------------------------------------------------------------


def test_no_tryton_write_is_once_only(tryton: TrytonServer) -> None:
    assert CONNECTOR.once_only == frozenset()
    connection = fresh(tryton)
    assert isinstance(connection, ExistenceChecker)
    assert not isinstance(connection, EffectFinder)  # the write asks Tryton first itself
    asyncio.run(connection.close())


# -- a crash, and the write sent again ------------------------------------------------------------------


def test_a_sale_whose_answer_was_lost_after_confirm_is_found_not_made_again(
    tryton: TrytonServer, admin: RpcClient, daemon: Daemon
) -> None:
    with pytest.raises(TransientError, match=r"died after model\.sale\.sale\.confirm"):
        daemon.write(DiesAfter(tryton, "model.sale.sale.confirm"), order("300000001"))
    ((sale_id, state),) = states(admin, "300000001")
    assert state == "processing"
    receipt = daemon.write(fresh(tryton), order("300000001"))
    assert receipt.startswith(f"sale {sale_id} ") and receipt.endswith(" processing")
    assert states(admin, "300000001") == [(sale_id, "processing")]


def test_a_sale_created_just_before_the_crash_is_taken_up_and_confirmed_once(
    tryton: TrytonServer, admin: RpcClient, daemon: Daemon
) -> None:
    with pytest.raises(TransientError, match=r"died after model\.sale\.sale\.create"):
        daemon.write(DiesAfter(tryton, "model.sale.sale.create"), order("300000002"))
    ((sale_id, state),) = states(admin, "300000002")
    assert state == "draft"
    assert daemon.write(fresh(tryton), order("300000002")).startswith(f"sale {sale_id} ")
    assert states(admin, "300000002") == [(sale_id, "processing")]


# -- races: two sales of one reference converge on one -------------------------------------------------


def test_a_create_that_overtakes_ours_is_the_one_kept(tryton: TrytonServer, admin: RpcClient, daemon: Daemon) -> None:
    receipt = daemon.write(RacedBy(tryton), order("300000003"))
    (kept, _), (ours, _) = states(admin, "300000003")
    assert receipt.startswith(f"sale {kept} ") and receipt.endswith(" processing")
    assert states(admin, "300000003") == [(kept, "processing"), (ours, "cancelled")]


def test_an_orphan_draft_older_than_the_confirmed_sale_is_cancelled_not_confirmed(
    tryton: TrytonServer, admin: RpcClient, daemon: Daemon
) -> None:
    """What a create that committed after the next attempt had confirmed its own sale leaves behind."""
    with pytest.raises(TransientError):
        daemon.write(DiesAfter(tryton, "model.sale.sale.create"), order("300000004"))
    ((orphan, _),) = states(admin, "300000004")
    (confirmed,) = admin.call("sale.sale", "copy", [orphan], {"reference": "300000004"})
    for button in ("quote", "confirm"):
        admin.call("sale.sale", button, [confirmed])
    receipt = daemon.write(fresh(tryton), order("300000004"))
    assert receipt.startswith(f"sale {confirmed} ") and receipt.endswith(" processing")
    assert states(admin, "300000004") == [(orphan, "cancelled"), (confirmed, "processing")]


def test_two_open_sales_of_one_order_become_one(tryton: TrytonServer, admin: RpcClient, daemon: Daemon) -> None:
    with pytest.raises(TransientError):
        daemon.write(DiesAfter(tryton, "model.sale.sale.create"), order("300000005"))
    ((first, _),) = states(admin, "300000005")
    (second,) = admin.call("sale.sale", "copy", [first], {"reference": "300000005"})
    receipt = daemon.write(fresh(tryton), order("300000005"))
    assert receipt.startswith(f"sale {first} ")
    assert states(admin, "300000005") == [(first, "processing"), (second, "cancelled")]


def test_an_order_cancelled_in_the_erp_is_not_made_again(
    tryton: TrytonServer, admin: RpcClient, daemon: Daemon
) -> None:
    with pytest.raises(TransientError):
        daemon.write(DiesAfter(tryton, "model.sale.sale.create"), order("300000007"))
    ((draft, _),) = states(admin, "300000007")
    admin.call("sale.sale", "cancel", [draft])
    assert daemon.write(fresh(tryton), order("300000007")) == f"sale {draft} - cancelled"
    assert states(admin, "300000007") == [(draft, "cancelled")]


# -- exists, for create-only fields -----------------------------------------------------------------------


def test_exists_asks_for_parties_and_products_by_what_a_write_matches(tryton: TrytonServer, daemon: Daemon) -> None:
    async def ask() -> list[bool | None]:
        async with fresh(tryton) as connection:
            await connection.write(
                "parties",
                {"name": "Eva", "email": "eva-exists@example.com"},
                key=None,
                mode="upsert",
                idempotency_key="p",
            )
            return [
                await connection.exists("parties", {"name": "Eva", "email": "EVA-exists@example.com"}, key=None),
                await connection.exists("parties", {"name": "Nobody", "email": "nobody@example.com"}, key=None),
                await connection.exists("products", {"code": "WIDGET-1"}, key="WIDGET-1"),
                await connection.exists("products", {"code": "OLD-1"}, key="OLD-1"),  # deactivated: still there
                await connection.exists("products", {"code": "NEW-9", "name": "New"}, key="NEW-9"),
                await connection.exists("sales", order("300000099"), key="300000099"),
            ]

    assert daemon.run(ask()) == [True, False, True, True, False, None]
