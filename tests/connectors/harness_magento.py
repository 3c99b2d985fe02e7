"""The magento connector's conformance harness: FakeMagento with an integration's OAuth 1.0a keys.

The fake (:mod:`connectors.magento.fake`) is a real HTTP server that behaves like Magento 2.4's REST
API and holds every request body to Magento's published schema. Writes are ``products`` (``PUT
/V1/products/{sku}``); the read is ``products`` too (``GET /V1/products`` with searchCriteria, pages
sorted on the product id), over products the harness puts in with the fake's own ``seed`` (held to the
same schema, not logged as writes): record n is SKU ``CONF-<n>``. Failures are the fake's knobs: a 503
with Retry-After (transient), a 400 (terminal); stop and start close the listening socket (and the
open keep-alive connections) and open it again on the same port, the catalog kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from connectors.magento import CONNECTOR as MAGENTO
from connectors.magento import MagentoOptions
from connectors.magento.fake import FakeMagento
from engine.connector import ConnectContext, Connection

KIND = MAGENTO
KEYS = ("conformance-ck", "conformance-cs", "conformance-at", "conformance-ats")
SKU = re.compile(r"^CONF-(\d{4})$")


@dataclass
class MagentoHarness:
    fake: FakeMagento
    kind = KIND
    entity: str = "products"
    read_entity: str = "products"

    def options(self) -> MagentoOptions:
        names = ("consumer_key", "consumer_secret", "access_token", "access_token_secret")
        return MagentoOptions.model_validate(
            {
                "connector": "magento",
                "url": self.fake.url,
                "auth": {"oauth1": dict(zip(names, KEYS, strict=True))},
                "limits": {"timeout": "5s"},
            }
        )

    def connect(self) -> Connection:
        return MAGENTO.open(self.options(), ConnectContext(system="shop", client="conformance"))

    def record(self, n: int) -> Any:
        return {
            "sku": f"CONF-{n:04d}",
            "name": f"Part {n}",
            "attribute_set_id": 4,
            "price": 10 + n,
            "type_id": "simple",
        }

    def applied(self) -> int:
        return self.fake.applied_count("/V1/products/")

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        if kind == "transient":
            self.fake.fail_next(1, status=503, retry_after="1")
        else:
            self.fake.fail_next(1, status=400)

    def stop(self) -> None:
        self.fake.stop()

    def start(self) -> None:
        self.fake.start()

    # -- read -----------------------------------------------------------------------------------
    def seed(self, numbers: Iterable[int]) -> None:
        self.fake.seed({"products": [self.record(n) for n in numbers]})

    def which(self, data: Any) -> int | None:
        match = SKU.match(str(data.get("sku"))) if isinstance(data, dict) else None
        return int(match.group(1)) if match else None


@contextmanager
def harness() -> Iterator[MagentoHarness]:
    with FakeMagento(port=0, oauth1=KEYS) as fake:
        yield MagentoHarness(fake)
