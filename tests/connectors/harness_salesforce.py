"""The salesforce connector's conformance harness: the fake org, accounts upserted by Seamline_Id__c."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from connectors.salesforce import CONNECTOR as SALESFORCE
from connectors.salesforce.fake import FakeSalesforce
from engine.connector import ConnectContext, Connection

CLIENT_ID = "conformance-app"
CLIENT_SECRET = "conformance-secret"


@dataclass
class SalesforceHarness:
    fake: FakeSalesforce
    entity: str = "accounts"

    def connect(self) -> Connection:
        options = SALESFORCE.options.model_validate(
            {
                "connector": "salesforce",
                "url": self.fake.url,
                "auth": {"token_url": self.fake.token_url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                "limits": {"timeout": "5s"},
            }
        )
        assert SALESFORCE.connect is not None
        return SALESFORCE.connect(options, ConnectContext(system="crm", client="conformance"))

    def record(self, n: int) -> Any:
        return {"Name": f"Conformance {n}", "AccountNumber": f"C-{n:04d}", "Type": "Customer - Direct"}

    def applied(self) -> int:
        return self.fake.applied_count("Account")

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        # Only API calls fail: the token request stays fine, so the failure lands on the write itself.
        if kind == "transient":
            self.fake.fail_next(1, status=503, retry_after="1", only="/services/data/")
        else:
            self.fake.fail_next(
                1,
                status=400,
                error_code="FIELD_CUSTOM_VALIDATION_EXCEPTION",
                message="Accounts need an approved credit limit",
                only="/services/data/",
            )

    def stop(self) -> None:
        self.fake.stop()

    def start(self) -> None:
        self.fake.start()


@contextmanager
def harness() -> Iterator[SalesforceHarness]:
    with FakeSalesforce(port=0, clients={CLIENT_ID: CLIENT_SECRET}) as fake:
        yield SalesforceHarness(fake)
