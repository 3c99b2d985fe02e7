"""The http connector's conformance harness: the generic REST fake with a bearer token.

Writes are ``PUT /orders/{number}``; the read ``orders-list`` pages through ``GET /orders`` (page style);
the call ``price`` is ``POST /price``, answered by a route that prices the SKUs it knows and refuses
others with a 422 and a reason (as an ERP's pricing service does). Failures are the fake's own knobs: a
503 with Retry-After (transient), a 400 with Magento's message shape (terminal); stop and start close the
listening socket and open it again on the same port.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from connectors.http import CONNECTOR as HTTP
from connectors.http import HttpOptions
from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse
from engine.connector import ConnectContext, Connection

KIND = HTTP
PRICES = {"A-1": 12.5, "B-2": 7.0}


def _price(request: FakeRequest) -> FakeResponse:
    asked = json.loads(request.body or b"{}")
    sku = asked.get("sku")
    if sku not in PRICES:
        return FakeResponse(422, {"message": "Unknown product %1", "parameters": [str(sku)]})
    return FakeResponse(200, {"sku": sku, "price": PRICES[sku] * int(asked.get("qty", 1))})


@dataclass
class HttpHarness:
    fake: FakeHttpServer
    kind = KIND
    entity: str = "orders"
    read_entity: str = "orders-list"
    call_operation: str = "price"

    def options(self) -> HttpOptions:
        return HttpOptions.model_validate(
            {
                "connector": "http",
                "url": self.fake.url,
                "auth": {"bearer": {"token": "conformance-token"}},
                "limits": {"timeout": "5s"},
                "endpoints": {
                    "orders": {"path": "/orders/{number}", "method": "PUT"},
                    "orders-list": {"path": "/orders", "pagination": {"style": "page"}},
                    "price": {"path": "/price", "method": "POST"},
                },
            }
        )

    def connect(self) -> Connection:
        return HTTP.open(self.options(), ConnectContext(system="shop", client="conformance"))

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

    # -- read ---------------------------------------------------------------------------------
    def seed(self, numbers: Iterable[int]) -> None:
        self.fake.seed("/orders", [self.record(n) for n in numbers], id_field="number")

    def which(self, data: Any) -> int | None:
        number = data.get("number", "") if isinstance(data, dict) else ""
        return int(number.removeprefix("SO-")) if number.startswith("SO-") else None

    # -- call ---------------------------------------------------------------------------------
    def call_request(self) -> Any:
        return {"sku": "A-1", "qty": 4}

    def refused_call_request(self) -> Any:
        return {"sku": "NO-SUCH-PART", "qty": 1}

    def check_answer(self, answer: Any) -> None:
        assert answer == {"sku": "A-1", "price": 50.0}, answer


@contextmanager
def harness() -> Iterator[HttpHarness]:
    with FakeHttpServer(port=0) as fake:
        fake.require_auth(bearer="conformance-token")
        fake.route("POST", "/price", _price)
        yield HttpHarness(fake)
