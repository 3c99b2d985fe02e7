"""The tryton connector's conformance harness: the real Tryton server of ``connectors/tryton/devserver.py``.

A ``trytond`` 8.0 process on loopback over a seeded SQLite database, shared by the test process (no
reset between checks): each harness marks what it makes with its own prefix, so it tells its records
from everyone else's. The harness acts on the database as a Tryton user would, through the admin's
JSON-RPC client (:class:`~connectors.tryton.devserver.RpcClient`).

* write: entity ``parties``, record n has the email ``<prefix>-<n>@example.com``; a transient failure
  is the server stopped (connection refused), a terminal one a party that Tryton rejects (an invalid
  EU VAT number).
* read: ``parties``, over parties the admin creates with those same emails (every other party of the
  database comes back too, and is not one of the harness's).
* call: ``price`` of a product the admin creates (code ``<prefix>-P``, list price 12.50) for a party
  it creates (by email, ``buyer-<prefix>@example.com``): Tryton's sale price for them; made on the
  first ``call_request()`` while the server is up. A refused call asks the price of a product no one
  made (Tryton has no such product: terminal).

Stop and start stop the server process and start it again on the same port, its database kept.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from connectors.tryton import CONNECTOR as TRYTON
from connectors.tryton import TrytonOptions
from connectors.tryton.devserver import RpcClient, TrytonServer
from engine.connector import ConnectContext, Connection
from tests.tryton_server import shared_server

KIND = TRYTON
LIST_PRICE = Decimal("12.50")
QUANTITY = 3


@dataclass
class TrytonHarness:
    server: TrytonServer
    kind = KIND
    prefix: str = field(default_factory=lambda: f"conf-{uuid.uuid4().hex[:10]}")
    entity: str = "parties"
    read_entity: str = "parties"
    call_operation: str = "price"
    _rejected_next: bool = False
    _admin: RpcClient | None = None
    _priced: bool = False

    def options(self) -> TrytonOptions:
        return TrytonOptions.model_validate(
            {
                "connector": "tryton",
                "url": self.server.url,
                "database": self.server.database,
                "auth": {"session": {"login": self.server.user, "password": self.server.password}},
                "limits": {"timeout": "10s"},
            }
        )

    def connect(self) -> Connection:
        return TRYTON.open(self.options(), ConnectContext(system="erp", client="conformance"))

    def admin(self) -> RpcClient:
        """The admin's client: one login (argon2 is slow on purpose); the session outlives a restart."""
        if self._admin is None:
            self._admin = self.server.client()
        return self._admin

    def email(self, n: int) -> str:
        return f"{self.prefix}-{n}@example.com"

    # -- write ----------------------------------------------------------------------------------
    def record(self, n: int) -> Any:
        record = {
            "name": f"Conformance party {n}",
            "email": self.email(n),
            "address": {"street": f"{n} Test Street", "postal_code": "10001", "city": "New York", "country": "US"},
        }
        if self._rejected_next:  # Tryton checks EU VAT numbers: this one fails its check digits
            self._rejected_next = False
            record["vat"] = "BE0000000000"
        return record

    def applied(self) -> int:
        domain = [["contact_mechanisms.value", "like", f"{self.prefix}-%"]]
        return self.admin().count("party.party", domain)

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        if kind == "transient":
            self.server.stop()
        else:
            self.server.start()
            self._rejected_next = True

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    # -- read -----------------------------------------------------------------------------------
    def seed(self, numbers: Iterable[int]) -> None:
        parties = [
            {
                "name": f"Conformance party {n}",
                "contact_mechanisms": [["create", [{"type": "email", "value": self.email(n)}]]],
            }
            for n in numbers
        ]
        self.admin().call("party.party", "create", parties)

    def which(self, data: Any) -> int | None:
        emails = data.get("emails") if isinstance(data, dict) else None
        pattern = re.compile(rf"^{re.escape(self.prefix)}-(\d+)@example\.com$")
        for email in emails if isinstance(emails, list) else []:
            match = pattern.match(str(email))
            if match:
                return int(match.group(1))
        return None

    # -- call -----------------------------------------------------------------------------------
    @property
    def product_code(self) -> str:
        return f"{self.prefix}-P"

    @property
    def buyer(self) -> str:
        return f"buyer-{self.prefix}@example.com"

    def call_request(self) -> Any:
        if not self._priced and self.server.running:  # asked for during an outage too: then it is made later
            self._make_priced_product()
        return {"code": self.product_code, "quantity": QUANTITY, "party": {"email": self.buyer}}

    def refused_call_request(self) -> Any:
        return {"code": f"{self.prefix}-NO-SUCH-PRODUCT", "quantity": QUANTITY, "party": {"email": self.buyer}}

    def check_answer(self, answer: Any) -> None:
        expected = {
            "code": self.product_code,
            "quantity": QUANTITY,
            "unit_price": float(LIST_PRICE),
            "currency": self.server.meta["currency"],
            "party_found": True,
        }
        assert answer == expected, f"the price of {self.product_code} for {self.buyer}: {answer}, not {expected}"

    def _make_priced_product(self) -> None:
        admin = self.admin()
        (unit,) = admin.search_read("product.uom", [["name", "=", "Unit"]], ["id"])
        template = {
            "name": f"Conformance product {self.prefix}",
            "code": self.product_code,
            "type": "goods",
            "default_uom": unit["id"],
            "sale_uom": unit["id"],
            "salable": True,
            "list_price": LIST_PRICE,
            "account_category": self.server.meta["account_category"],
            "products": [["create", [{}]]],
        }
        admin.call("product.template", "create", [template])
        party = {
            "name": f"Conformance buyer {self.prefix}",
            "contact_mechanisms": [["create", [{"type": "email", "value": self.buyer}]]],
        }
        admin.call("party.party", "create", [party])
        self._priced = True


@contextmanager
def harness() -> Iterator[TrytonHarness]:
    server = shared_server()
    try:
        yield TrytonHarness(server)
    finally:
        server.start()  # the next user finds it running, whatever this check did
