"""The tryton connector's conformance harness: the real Tryton server of ``connectors/tryton/devserver.py``.

Entity ``parties``, each harness with its own email prefix (so no reset is needed between checks).
A transient failure is the server stopped (connection refused); a terminal one is a party record
that Tryton rejects (an invalid EU VAT number); stop and start restart the server process on the
same port with its database kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from connectors.tryton import CONNECTOR as TRYTON
from connectors.tryton.devserver import RpcClient, TrytonServer
from engine.connector import ConnectContext, Connection
from tests.tryton_server import shared_server


@dataclass
class TrytonHarness:
    server: TrytonServer
    prefix: str = field(default_factory=lambda: f"conf-{uuid.uuid4().hex[:10]}")
    entity: str = "parties"
    _rejected_next: bool = False
    _admin: RpcClient | None = None

    def connect(self) -> Connection:
        options = TRYTON.options.model_validate(
            {
                "connector": "tryton",
                "url": self.server.url,
                "database": self.server.database,
                "auth": {"session": {"login": self.server.user, "password": self.server.password}},
                "limits": {"timeout": "10s"},
            }
        )
        assert TRYTON.connect is not None
        return TRYTON.connect(options, ConnectContext(system="erp", client="conformance"))

    def record(self, n: int) -> Any:
        record = {
            "name": f"Conformance party {n}",
            "email": f"{self.prefix}-{n}@example.com",
            "address": {"street": f"{n} Test Street", "postal_code": "10001", "city": "New York", "country": "US"},
        }
        if self._rejected_next:  # Tryton checks EU VAT numbers: this one fails its check digits
            self._rejected_next = False
            record["vat"] = "BE0000000000"
        return record

    def applied(self) -> int:
        if self._admin is None:  # one login (argon2 is slow on purpose); the session outlives a restart
            self._admin = self.server.client()
        domain = [["contact_mechanisms.value", "like", f"{self.prefix}-%"]]
        return self._admin.count("party.party", domain)

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


@contextmanager
def harness() -> Iterator[TrytonHarness]:
    server = shared_server()
    try:
        yield TrytonHarness(server)
    finally:
        server.start()  # the next user finds it running, whatever this check did
