"""The http connector's conformance harness: the generic REST fake with a bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from connectors.http import CONNECTOR as HTTP
from connectors.http.fake import FakeHttpServer
from engine.connector import ConnectContext, Connection


@dataclass
class HttpHarness:
    fake: FakeHttpServer
    entity: str = "orders"

    def connect(self) -> Connection:
        options = HTTP.options.model_validate(
            {
                "connector": "http",
                "url": self.fake.url,
                "auth": {"bearer": {"token": "conformance-token"}},
                "limits": {"timeout": "5s"},
                "endpoints": {"orders": {"path": "/orders/{number}", "method": "PUT"}},
            }
        )
        assert HTTP.connect is not None
        return HTTP.connect(options, ConnectContext(system="shop", client="conformance"))

    def record(self, n: int) -> Any:
        return {"number": f"SO-{n:04d}", "lines": [{"sku": "A", "qty": n}]}

    def applied(self) -> int:
        return self.fake.applied_count("/orders")

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        if kind == "transient":
            self.fake.fail_next(1, status=503, retry_after="1")
        else:
            self.fake.fail_next(1, status=400, body={"message": "Invalid order: %1", "parameters": ["no lines"]})

    def stop(self) -> None:
        self.fake.stop()

    def start(self) -> None:
        self.fake.start()


@contextmanager
def harness() -> Iterator[HttpHarness]:
    with FakeHttpServer(port=0) as fake:
        fake.require_auth(bearer="conformance-token")
        yield HttpHarness(fake)
