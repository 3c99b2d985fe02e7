"""The http connector's once-only endpoints: declared in the spec, checked before a resend, never sent twice.

Real :class:`FakeHttpServer` over loopback, nothing of ours mocked. A test writes through a POST
endpoint, then asks ``find_effect`` on a fresh connection (as a restarted daemon would) with the
same record and idempotency key, and reads the fake's write log to prove the effect happened once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import ValidationError

from connectors.http import CONNECTOR, HttpOptions
from connectors.http.client import HttpConnection
from connectors.http.fake import FakeHttpServer
from engine.connector import ConnectContext, EffectFinder
from engine.errors import TerminalError, TransientError

T = TypeVar("T")
BY_KEY = "/orders/{order_id}/shipments?idempotency_key={$idempotency_key}"
ENDPOINTS: dict[str, Any] = {
    "shipments": {
        "path": "/orders/{order_id}/shipments",
        "method": "POST",
        "check": {"path": BY_KEY, "found": "items", "receipt": "items.0.id"},
    },
    "sales-orders": {
        "path": "/sales-orders",
        "method": "POST",
        "check": {"path": "/sales-orders/{id}"},  # the order is stored under its own reference
    },
    "comments": {"path": "/orders/{order_id}/comments", "method": "POST"},  # once-only, no check
    "prices": {"path": "/prices", "method": "POST", "once": False},  # the server dedupes on Idempotency-Key
    "stock": {"path": "/stock/{sku}", "method": "PUT"},
    "cancel": {
        "path": "/orders/{order_id}/cancel",
        "method": "PUT",
        "once": True,
        "check": {"path": "/orders/{order_id}", "found": "cancelled"},
    },
    "orders": {"path": "/orders"},
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def options(url: str, endpoints: dict[str, Any] | None = None, **extra: Any) -> HttpOptions:
    raw = {"connector": "http", "url": url, "endpoints": ENDPOINTS if endpoints is None else endpoints, **extra}
    return HttpOptions.model_validate(raw)


def with_conn(url: str, action: Callable[[HttpConnection], Awaitable[T]], **extra: Any) -> T:
    """One action on a connection of its own: a later call remembers nothing of an earlier one."""

    async def scenario() -> T:
        async with HttpConnection(options(url, **extra), ConnectContext(system="wms", client="acme")) as conn:
            return await action(conn)

    return run(scenario())


def write(url: str, entity: str, record: dict[str, Any], key: str, **extra: Any) -> str:
    return with_conn(url, lambda c: c.write(entity, record, key=None, mode="upsert", idempotency_key=key), **extra)


def find(url: str, entity: str, record: dict[str, Any], key: str) -> str | None:
    return with_conn(url, lambda c: c.find_effect(entity, record, key=None, idempotency_key=key))


@pytest.fixture
def fake() -> Iterator[FakeHttpServer]:
    with FakeHttpServer(port=0) as server:
        yield server


# -- what the spec declares --------------------------------------------------------------------------


def test_a_post_is_once_only_unless_the_spec_says_otherwise() -> None:
    declared = options("https://wms.example")
    assert declared.declared_once_only() == frozenset({"shipments", "sales-orders", "comments", "cancel"})
    assert CONNECTOR.is_once_only("shipments", declared)
    assert not CONNECTOR.is_once_only("prices", declared)  # once: false
    assert not CONNECTOR.is_once_only("stock", declared)  # a PUT
    assert CONNECTOR.is_once_only("cancel", declared)  # a PUT declared once: true
    assert not CONNECTOR.is_once_only("orders", declared)  # a GET is never written


def test_a_check_belongs_to_a_once_only_write() -> None:
    with pytest.raises(ValidationError, match=r"a PUT here is taken as safe to send again.*set once: true"):
        options("https://wms.example", {"stock": {"path": "/stock/{sku}", "method": "PUT", "check": {"path": "/x"}}})
    with pytest.raises(ValidationError, match="once and check are for writes; this endpoint is a GET"):
        options("https://wms.example", {"orders": {"path": "/orders", "check": {"path": "/x"}}})
    with pytest.raises(ValidationError, match="set once: true"):
        options("https://wms.example", {"p": {"path": "/p", "method": "POST", "once": False, "check": {"path": "/p"}}})


def test_the_connection_is_an_effect_finder(fake: FakeHttpServer) -> None:
    conn = HttpConnection(options(fake.url), ConnectContext(system="wms", client="acme"))
    assert isinstance(conn, EffectFinder)
    run(conn.close())


# -- written once, found again, never twice ---------------------------------------------------------


def test_a_write_is_found_by_its_idempotency_key_and_a_new_one_is_not(fake: FakeHttpServer) -> None:
    record = {"order_id": "SO-1", "lines": [{"sku": "4711", "qty": 2}]}
    assert write(fake.url, "shipments", record, "SO-1:v3#wms") == "201 id=1"
    assert find(fake.url, "shipments", record, "SO-1:v3#wms") == "already there: id=1"
    assert find(fake.url, "shipments", record, "SO-1:v4#wms") is None
    assert find(fake.url, "shipments", {**record, "order_id": "SO-2"}, "SO-1:v3#wms") is None
    assert [(w["method"], w["path"], w["duplicate"]) for w in fake.writes()] == [
        ("POST", "/orders/SO-1/shipments", False)
    ]
    checks = [r for r in fake.requests() if r["method"] == "GET"]
    assert checks[0]["path"] == "/orders/SO-1/shipments"
    assert checks[0]["query"] == [("idempotency_key", "SO-1:v3#wms")]


def test_a_check_can_name_the_record_by_a_field_of_its_own(fake: FakeHttpServer) -> None:
    record = {"id": "PO-4711", "customer": "C-1"}
    write(fake.url, "sales-orders", record, "k1")
    assert find(fake.url, "sales-orders", record, "k1") == "already there: id=PO-4711"
    assert find(fake.url, "sales-orders", {"id": "PO-4712"}, "k2") is None  # the server answers 404
    assert fake.applied_count("/sales-orders") == 1


def test_a_write_whose_answer_was_lost_is_found_and_not_sent_again() -> None:
    """The client gave up while the server still made the shipment: the check finds it."""
    with FakeHttpServer(port=0) as fake:
        record = {"order_id": "SO-9", "lines": [{"sku": "4711", "qty": 1}]}
        fake.configure(latency=0.6)
        with pytest.raises(TransientError):
            write(fake.url, "shipments", record, "SO-9#wms", limits={"timeout": "200ms"})
        deadline = time.monotonic() + 5
        while fake.applied_count("/orders/SO-9/shipments") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        fake.configure(latency=0)
        assert find(fake.url, "shipments", record, "SO-9#wms") == "already there: id=1"
        assert fake.applied_count() == 1
        assert len(fake.writes()) == 1  # nothing was sent a second time


def test_the_fake_keeps_what_each_key_wrote_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "fake.json"
    with FakeHttpServer(port=0, state_file=state) as fake:
        write(fake.url, "shipments", {"order_id": "SO-1"}, "k1")
        port = fake.port
    with FakeHttpServer(port=port, state_file=state) as again:
        assert find(again.url, "shipments", {"order_id": "SO-1"}, "k1") == "already there: id=1"
        listed = httpx.get(f"{again.url}/orders/SO-1/shipments", params={"idempotency_key": "other"}).json()
        assert listed["items"] == []


# -- what the check cannot say ------------------------------------------------------------------------


def test_a_once_only_endpoint_without_a_check_cannot_tell(fake: FakeHttpServer) -> None:
    with pytest.raises(TerminalError) as failed:
        find(fake.url, "comments", {"order_id": "SO-1", "text": "x"}, "k")
    assert str(failed.value) == (
        "wms.comments: POST /orders/{order_id}/comments is once-only and has no check: set endpoints.comments.check "
        "so seamline can tell whether the earlier attempt took effect (or once: false if the server deduplicates "
        "on the Idempotency-Key header)"
    )
    assert fake.requests() == []


def test_an_endpoint_safe_to_resend_is_not_checked(fake: FakeHttpServer) -> None:
    with pytest.raises(TerminalError, match="taken as safe to send again"):
        find(fake.url, "prices", {"sku": "4711"}, "k")


def test_a_check_found_by_a_field_that_says_so(fake: FakeHttpServer) -> None:
    fake.seed("/orders", [{"id": "SO-1", "cancelled": False}, {"id": "SO-2", "cancelled": True}])
    assert find(fake.url, "cancel", {"order_id": "SO-1"}, "k") is None  # false is "not there"
    assert find(fake.url, "cancel", {"order_id": "SO-2"}, "k") == "already there"


def test_a_busy_server_cannot_tell_now_and_a_refusal_is_terminal(fake: FakeHttpServer) -> None:
    fake.fail_next(1, status=503, retry_after="2")
    with pytest.raises(TransientError) as busy:
        find(fake.url, "shipments", {"order_id": "SO-1"}, "k")
    assert busy.value.retry_after == 2
    fake.fail_next(1, status=403)
    with pytest.raises(TerminalError, match="403"):
        find(fake.url, "shipments", {"order_id": "SO-1"}, "k")


def test_a_check_needs_the_fields_its_path_names(fake: FakeHttpServer) -> None:
    with pytest.raises(TerminalError, match=r"'shipments\.check' needs 'order_id' for its path"):
        find(fake.url, "shipments", {"lines": []}, "k")
