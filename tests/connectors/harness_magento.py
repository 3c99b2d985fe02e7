"""The magento connector's conformance harness: FakeMagento with an integration's OAuth 1.0a keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from connectors.magento import CONNECTOR as MAGENTO
from connectors.magento.fake import FakeMagento
from engine.connector import ConnectContext, Connection

KEYS = ("conformance-ck", "conformance-cs", "conformance-at", "conformance-ats")


@dataclass
class MagentoHarness:
    fake: FakeMagento
    entity: str = "products"

    def connect(self) -> Connection:
        names = ("consumer_key", "consumer_secret", "access_token", "access_token_secret")
        options = MAGENTO.options.model_validate(
            {
                "connector": "magento",
                "url": self.fake.url,
                "auth": {"oauth1": dict(zip(names, KEYS, strict=True))},
                "limits": {"timeout": "5s"},
            }
        )
        assert MAGENTO.connect is not None
        return MAGENTO.connect(options, ConnectContext(system="shop", client="conformance"))

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


@contextmanager
def harness() -> Iterator[MagentoHarness]:
    with FakeMagento(port=0, oauth1=KEYS) as fake:
        yield MagentoHarness(fake)
