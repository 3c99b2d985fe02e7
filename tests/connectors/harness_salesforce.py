"""The salesforce connector's conformance harness: the fake org, accounts upserted by Seamline_Id__c.

The fake (:mod:`connectors.salesforce.fake`) is a real HTTP server that behaves like an org: the
client credentials token endpoint, sObject upserts by external id, SOQL queries with
``nextRecordsUrl`` pages. Writes are ``accounts``; the read is ``accounts`` too (``SELECT ... FROM
Account ORDER BY SystemModstamp, Id``), over accounts the harness puts in with the fake's own ``seed``
(not logged as writes): record n has AccountNumber ``C-<n>``. The org answers a query at most two
records a page (the fake's ``max_batch_size``; a real org also may send fewer than the batchSize
asked), so a read of five follows ``nextRecordsUrl`` twice. Failures are the fake's knobs on API calls
only (the token request stays fine): a 503 with Retry-After (transient), a 400
FIELD_CUSTOM_VALIDATION_EXCEPTION (terminal); stop and start close the listening socket (and the open
keep-alive connections) and open it again on the same port, the records kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from connectors.salesforce import CONNECTOR as SALESFORCE
from connectors.salesforce import SalesforceOptions
from connectors.salesforce.fake import FakeSalesforce
from engine.connector import ConnectContext, Connection

KIND = SALESFORCE
CLIENT_ID = "conformance-app"
CLIENT_SECRET = "conformance-secret"
ACCOUNT_NUMBER = re.compile(r"^C-(\d{4})$")
PAGE = 2  # records per query page the fake org sends


@dataclass
class SalesforceHarness:
    fake: FakeSalesforce
    kind = KIND
    entity: str = "accounts"
    read_entity: str = "accounts"

    def options(self) -> SalesforceOptions:
        return SalesforceOptions.model_validate(
            {
                "connector": "salesforce",
                "url": self.fake.url,
                "auth": {"token_url": self.fake.token_url, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
                "limits": {"timeout": "5s"},
            }
        )

    def connect(self) -> Connection:
        return SALESFORCE.open(self.options(), ConnectContext(system="crm", client="conformance"))

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

    # -- read -----------------------------------------------------------------------------------
    def seed(self, numbers: Iterable[int]) -> None:
        self.fake.seed("Account", [self.record(n) for n in numbers])

    def which(self, data: Any) -> int | None:
        match = ACCOUNT_NUMBER.match(str(data.get("AccountNumber"))) if isinstance(data, dict) else None
        return int(match.group(1)) if match else None


@contextmanager
def harness() -> Iterator[SalesforceHarness]:
    with FakeSalesforce(port=0, clients={CLIENT_ID: CLIENT_SECRET}) as fake:
        fake.configure(max_batch_size=PAGE)
        yield SalesforceHarness(fake)
