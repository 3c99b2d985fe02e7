"""The amqp connector against the real RabbitMQ on 127.0.0.1:5672 (guest/guest).

Every test uses its own queue and exchange names and deletes them afterwards; tests that touch the
broker hold the machine-wide broker lock (see ``harness_amqp.py``), because some of them restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader, ProtocolHeader

from connectors.amqp import CONNECTOR as AMQP
from connectors.amqp import AmqpOptions
from connectors.amqp.client import REASON_HEADER, SOURCE_QUEUE_HEADER, AmqpConnection, redact_url, unparsable
from engine.connector import ConnectContext, Message, default_registry, roles_of
from engine.errors import TerminalError, TransientError
from engine.flow import load_client
from engine.runtime.inbox import Inbox
from engine.runtime.metrics import Metrics
from engine.runtime.triggers import consume_queue
from engine.state import open_store
from tests.connectors.harness_amqp import (
    BROKER_URL,
    broker_answers,
    broker_lock,
    delete_topology,
    require_broker,
    start_broker,
    stop_broker,
    unique,
)
from tests.runtime.harness import DaemonProcess, wait_for

CLOSED_PORT_URL = "amqp://seamline:s3cret-Pa55@127.0.0.1:1/"  # nothing listens on port 1


# -- helpers --------------------------------------------------------------------------------------


def connect(url: str = BROKER_URL, masked: list[str] | None = None, **options: Any) -> AmqpConnection:
    validated = AmqpOptions.model_validate({"connector": "amqp", "url": url, "limits": {"timeout": "5s"}, **options})
    mask = masked.append if masked is not None else (lambda _value: None)
    connection = AMQP.open(validated, ConnectContext(system="bus", client="test", mask=mask))
    assert isinstance(connection, AmqpConnection)
    return connection


async def write(connection: AmqpConnection, routing_key: str, record: Any, message_id: str, key: Any = None) -> str:
    return await connection.write(routing_key, record, key=key, mode="upsert", idempotency_key=message_id)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` on the loop until it holds; fail naming ``what`` (never hangs)."""
    until = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > until:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


async def eventually(probe: Callable[[], Awaitable[Any]], expected: Any, what: str, timeout: float = 30.0) -> None:
    """Poll an async ``probe`` (a broker query) until it returns ``expected``; fail naming ``what``."""
    until = time.monotonic() + timeout
    while (value := await probe()) != expected:
        if time.monotonic() > until:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def broker_session() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """The test's own channel to the broker, for setting up and inspecting (not the code under test)."""
    connection = await aio_pika.connect(BROKER_URL, timeout=5)
    async with connection:
        yield await connection.channel()


async def declare_queue(name: str, **arguments: Any) -> None:
    async with broker_session() as channel:
        await channel.declare_queue(name, durable=True, arguments=arguments or None)


async def publish_raw(queue: str, body: bytes, **properties: Any) -> None:
    """Publish as another system would; persistent, or a broker restart would rightly lose it."""
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties)
    async with broker_session() as channel:
        await channel.default_exchange.publish(message, routing_key=queue)


def publish_without_id(queue: str, payload: bytes, headers: dict[str, Any] | None = None) -> None:
    """Publish with no message id, as many clients do (aio-pika always sets one, so this speaks AMQP itself)."""
    sock = socket.create_connection(("127.0.0.1", 5672), timeout=10)
    received = b""

    def send(value: Any, channel: int = 0) -> None:
        sock.sendall(frame.marshal(value, channel))

    def receive(kind: type[Any]) -> Any:
        nonlocal received
        while True:
            used, _channel, value = frame.unmarshal(received) if received else (0, 0, None)
            if used:
                received = received[used:]
                if isinstance(value, kind):
                    return value
                continue
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the broker closed the connection while we waited for {kind.__name__}")
            received += chunk

    try:
        sock.sendall(ProtocolHeader().marshal())
        receive(commands.Connection.Start)
        send(commands.Connection.StartOk(client_properties={}, mechanism="PLAIN", response="\0guest\0guest"))
        tune = receive(commands.Connection.Tune)
        send(commands.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0))
        send(commands.Connection.Open(virtual_host="/"))
        receive(commands.Connection.OpenOk)
        send(commands.Channel.Open(), 1)
        receive(commands.Channel.OpenOk)
        send(commands.Confirm.Select(), 1)
        receive(commands.Confirm.SelectOk)
        send(commands.Basic.Publish(exchange="", routing_key=queue), 1)
        properties = commands.Basic.Properties(delivery_mode=2, headers=headers)
        send(ContentHeader(0, len(payload), properties), 1)
        send(ContentBody(payload), 1)
        receive(commands.Basic.Ack)  # confirmed: it is in the queue
        send(commands.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0))
        receive(commands.Connection.CloseOk)
    finally:
        sock.close()


async def ready(queue: str) -> int:
    """Messages waiting in ``queue`` (delivered-but-unacknowledged ones are not counted)."""
    async with broker_session() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return int(result.message_count or 0)


async def take_all(queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    taken = []
    async with broker_session() as channel:
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(no_ack=True, fail=False, timeout=5)) is not None:
            taken.append(message)
    return taken


async def exists(queue: str) -> bool:
    try:
        await ready(queue)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    return True


async def unacknowledged(queue: str) -> int:
    """Delivered but not yet acknowledged messages of ``queue``, as the broker counts them."""
    return await asyncio.to_thread(_unacknowledged, queue)


def _unacknowledged(queue: str) -> int:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged", "--no-table-headers"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for line in out.splitlines():
        name, _, count = line.rpartition("\t")
        if name.strip() == queue:
            return int(count)
    raise AssertionError(f"queue {queue} not listed by rabbitmqctl:\n{out}")


class Collector:
    """A handler that remembers what it was given (and can be told to fail or to wait)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def ids(self) -> list[str]:
        return [m.message_id for m in self.messages]


@contextlib.asynccontextmanager
async def consuming(
    connection: AmqpConnection, queue: str, handler: Callable[[Message], Awaitable[None]]
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(connection.consume(queue, handler))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def broker() -> Iterator[None]:
    """The real broker, up, and ours alone for the test (other processes' broker tests wait)."""
    with broker_lock():
        require_broker()
        if not broker_answers():
            start_broker()
        yield


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    """Unique queue and exchange names for one test; deleted afterwards."""
    chosen = {"queue": unique("q"), "other": unique("q2"), "exchange": unique("x"), "dlx": unique("dlx")}
    yield chosen

    async def clean() -> None:
        await delete_topology(
            queues=[chosen["queue"], chosen["other"], chosen["dlx"]], exchanges=[chosen["exchange"], chosen["dlx"]]
        )

    asyncio.run(clean())


# -- without a broker -----------------------------------------------------------------------------


def test_the_connector_is_registered_and_runnable() -> None:
    kind = default_registry().get("amqp")
    assert kind is AMQP and kind.runnable and kind.consumes


def test_pure_helpers() -> None:
    assert redact_url("amqp://u:p%40ss@mq.example.com:5671/vh?heartbeat=30") == (
        "amqp://u:***@mq.example.com:5671/vh?heartbeat=30"
    )
    assert redact_url("amqp://mq.example.com/") == "amqp://mq.example.com/"
    assert unparsable(b'{"sku": "A"}') is None
    assert unparsable(b"[1, 2]") is None
    assert (unparsable(b"not json") or "").startswith("message is not JSON: ")
    assert (unparsable(b'{"a": "\xff"}') or "").startswith("message is not JSON: ")


def test_connect_sends_nothing_close_twice_and_secrets_stay_hidden(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        masked: list[str] = []
        connection = connect(CLOSED_PORT_URL, masked)  # nothing listens there: connecting must not notice
        assert "s3cret-Pa55" in masked
        with pytest.raises(TransientError) as refused:
            await connection.write("stock", {"sku": "A"}, key="A", mode="upsert", idempotency_key="k1")
        assert "s3cret-Pa55" not in str(refused.value)
        assert "amqp://seamline:***@127.0.0.1:1/" in str(refused.value)
        # a queue is written and consumed; it has no Source or Caller role (a flow asking for one is refused at bind)
        assert roles_of(connection) == {"write", "consume"}
        await connection.close()
        await connection.close()
        with pytest.raises(TransientError, match="closed"):
            await connection.write("stock", {"sku": "A"}, key="A", mode="upsert", idempotency_key="k1")

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    assert "s3cret-Pa55" not in caplog.text


def test_a_consumer_keeps_retrying_while_the_broker_is_unreachable_and_stops_when_cancelled() -> None:
    async def scenario() -> None:
        connection = connect(CLOSED_PORT_URL)
        task = asyncio.create_task(connection.consume("anything", Collector()))
        await asyncio.sleep(0.5)  # a few reconnect attempts; it must still be running, not dead
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await connection.close()

    asyncio.run(scenario())


def test_a_record_that_is_not_json_is_terminal_before_anything_is_sent() -> None:
    async def scenario() -> None:
        connection = connect(CLOSED_PORT_URL)
        with pytest.raises(TerminalError, match="cannot be written as JSON"):
            await connection.write("stock", {"qty": float("nan")}, key=None, mode="upsert", idempotency_key="k")
        with pytest.raises(TerminalError, match="longer than 255 bytes"):
            await connection.write("k" * 256, {}, key=None, mode="upsert", idempotency_key="k")
        await connection.close()

    asyncio.run(scenario())


# -- publishing -----------------------------------------------------------------------------------


@pytest.mark.rabbitmq
def test_publish_with_confirms_then_consume_them_all(broker: None, names: dict[str, str]) -> None:
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        connection = connect()
        try:
            receipts = await asyncio.gather(
                *(
                    connection.write(
                        queue, {"sku": f"S{i}", "qty": i}, key=f"S{i}", mode="upsert", idempotency_key=f"m{i}"
                    )
                    for i in range(40)
                )
            )
            assert receipts == [f"m{i}" for i in range(40)]
            assert await ready(queue) == 40  # confirmed means queued
            seen = Collector()
            async with consuming(connection, queue, seen):
                await wait_until(lambda: len(seen.messages) == 40, "40 messages to reach the handler")
                await eventually(lambda: unacknowledged(queue), 0, "every message acknowledged")
            assert sorted(seen.ids) == sorted(f"m{i}" for i in range(40))
            first = next(m for m in seen.messages if m.message_id == "m7")
            assert json.loads(first.body) == {"sku": "S7", "qty": 7}
            assert first.headers["x-seamline-key"] == '"S7"'
            assert await ready(queue) == 0  # every one acknowledged
        finally:
            await connection.close()

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_messages_are_persistent_json_with_the_idempotency_key_as_id(broker: None, names: dict[str, str]) -> None:
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        async with connect() as connection:
            await connection.write(queue, {"sku": "Ä"}, key=["Ä", 1], mode="upsert", idempotency_key="stock:Ä@3#bus")
        (message,) = await take_all(queue)
        assert message.message_id == "stock:Ä@3#bus"
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert json.loads(message.body) == {"sku": "Ä"}
        assert (message.headers or {})["x-seamline-key"] == '["Ä", 1]'

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_an_idempotency_key_too_long_for_a_message_id_is_hashed_and_kept_whole_in_a_header(
    broker: None, names: dict[str, str]
) -> None:
    queue = names["queue"]
    long_key = "customers:" + "x" * 300 + "@7#bus.out"

    async def scenario() -> None:
        await declare_queue(queue)
        async with connect() as connection:
            first = await write(connection, queue, {"n": 1}, long_key)
            again = await write(connection, queue, {"n": 1}, long_key)
        assert first == again and first.startswith("seamline-sha256:") and len(first) < 255
        messages = await take_all(queue)
        assert [m.message_id for m in messages] == [first, first]
        assert (messages[0].headers or {})["x-seamline-idempotency-key"] == long_key

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_publishing_to_a_named_exchange_uses_target_write_as_routing_key(broker: None, names: dict[str, str]) -> None:
    queue, exchange = names["queue"], names["exchange"]

    async def scenario() -> None:
        async with broker_session() as channel:
            declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            bound = await channel.declare_queue(queue, durable=True)
            await bound.bind(declared, "stock.#")
        async with connect(exchange=exchange) as connection:
            await connection.write("stock.changed.berlin", {"sku": "A"}, key="A", mode="upsert", idempotency_key="a")
            with pytest.raises(TerminalError, match=r"could not route.*'price\.changed'.*NO_ROUTE"):
                await connection.write("price.changed", {"sku": "A"}, key="A", mode="upsert", idempotency_key="b")
        assert [m.message_id for m in await take_all(queue)] == ["a"]

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_write_failures_are_classified_and_the_connection_recovers(broker: None, names: dict[str, str]) -> None:
    queue, full = names["queue"], names["other"]

    async def scenario() -> None:
        await declare_queue(queue)
        # A queue that takes nothing and says so: the broker nacks the publish (real reject-publish).
        await declare_queue(full, **{"x-max-length": 0, "x-overflow": "reject-publish"})
        async with connect() as connection:
            with pytest.raises(TerminalError, match="could not route"):
                await connection.write(names["other"] + ".missing", {}, key=None, mode="upsert", idempotency_key="1")
            with pytest.raises(TransientError, match=r"basic\.nack"):
                await connection.write(full, {}, key=None, mode="upsert", idempotency_key="2")
            assert await connection.write(queue, {}, key=None, mode="upsert", idempotency_key="3") == "3"
        async with connect(exchange=names["exchange"]) as missing:  # an exchange nobody declared
            with pytest.raises(TerminalError, match=f"no exchange '{names['exchange']}'"):
                await missing.write(queue, {}, key=None, mode="upsert", idempotency_key="4")
            with pytest.raises(TerminalError, match="no exchange"):  # the closed channel is replaced, same answer
                await missing.write(queue, {}, key=None, mode="upsert", idempotency_key="5")
        async with connect("amqp://guest:wrong-password@127.0.0.1:5672/") as refused:
            with pytest.raises(TerminalError, match="refused the login of user 'guest'") as login:
                await refused.write(queue, {}, key=None, mode="upsert", idempotency_key="6")
            assert "wrong-password" not in str(login.value)
        assert [m.message_id for m in await take_all(queue)] == ["3"]

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_a_write_during_a_broker_restart_is_transient_and_the_next_one_reconnects(
    broker: None, names: dict[str, str]
) -> None:
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        async with connect() as connection:
            await connection.write(queue, {"n": 1}, key=None, mode="upsert", idempotency_key="before")
            await asyncio.to_thread(stop_broker)
            try:
                with pytest.raises(TransientError):
                    await connection.write(queue, {"n": 2}, key=None, mode="upsert", idempotency_key="during")
            finally:
                await asyncio.to_thread(start_broker)
            await connection.write(queue, {"n": 3}, key=None, mode="upsert", idempotency_key="after")
        assert [m.message_id for m in await take_all(queue)] == ["before", "after"]  # durable, persistent

    asyncio.run(scenario())


# -- consuming ------------------------------------------------------------------------------------


@pytest.mark.rabbitmq
def test_a_missing_queue_is_declared_durable_and_an_existing_one_is_used_as_it_is(
    broker: None, names: dict[str, str]
) -> None:
    fresh, owned = names["queue"], names["other"]

    async def scenario() -> None:
        # Declared by whoever owns the topology, with an argument the connector does not know about:
        # declaring it again without that argument would fail with PRECONDITION_FAILED.
        await declare_queue(owned, **{"x-message-ttl": 600000})
        await publish_raw(owned, b'{"n": 1}', message_id="o1")
        seen = Collector()
        connection = connect()
        async with connection, consuming(connection, owned, seen), consuming(connection, fresh, seen):
            await wait_until(lambda: seen.ids == ["o1"], "the message on the existing queue")
            await eventually(lambda: exists(fresh), True, "the new queue to be declared")
            await publish_raw(fresh, b'{"n": 2}', message_id="f1")
            await wait_until(lambda: sorted(seen.ids) == ["f1", "o1"], "the message on the new queue")
        async with broker_session() as channel:  # it is durable: declaring it durable again is accepted
            await channel.declare_queue(fresh, durable=True)

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_ack_only_after_the_handler_returned_and_a_failing_handler_gets_it_again_in_order(
    broker: None, names: dict[str, str]
) -> None:
    queue = names["queue"]
    calls: list[str] = []
    stored: list[str] = []

    async def flaky(message: Message) -> None:
        calls.append(message.message_id)
        if message.message_id == "m1" and calls.count("m1") == 1:
            raise RuntimeError("the inbox is not writable right now")
        stored.append(message.message_id)

    async def scenario() -> None:
        await declare_queue(queue)
        for i in range(4):
            await publish_raw(queue, json.dumps({"n": i}).encode(), message_id=f"m{i}")
        async with connect() as connection, consuming(connection, queue, flaky):
            await wait_until(lambda: len(stored) == 4, "every message stored")
            await eventually(lambda: unacknowledged(queue), 0, "every message acknowledged")
        assert await ready(queue) == 0

    asyncio.run(scenario())
    assert calls.count("m1") == 2
    assert stored == ["m0", "m1", "m2", "m3"]  # m2 and m3 (already prefetched) did not overtake m1


@pytest.mark.rabbitmq
def test_a_consumer_cancelled_before_its_handler_completed_gets_the_message_redelivered(
    broker: None, names: dict[str, str]
) -> None:
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        await publish_raw(queue, b'{"sku": "A"}', message_id="only")
        started = asyncio.Event()

        async def never_finishes(message: Message) -> None:
            started.set()
            await asyncio.Event().wait()

        async with connect() as connection:
            task = asyncio.create_task(connection.consume(queue, never_finishes))
            await asyncio.wait_for(started.wait(), timeout=30)
            assert await ready(queue) == 0  # delivered, held unacknowledged
            task.cancel()
            with pytest.raises(asyncio.CancelledError):  # cancellation ends consume() cleanly
                await task
            await eventually(lambda: ready(queue), 1, "the message back in the queue")
            again = Collector()
            async with consuming(connection, queue, again):
                await wait_until(lambda: again.ids == ["only"], "the redelivery")

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_prefetch_is_honoured(broker: None, names: dict[str, str]) -> None:
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        for i in range(10):
            await publish_raw(queue, b"{}", message_id=f"m{i}")
        release = asyncio.Event()
        seen = Collector()

        async def slow(message: Message) -> None:
            await seen(message)
            await release.wait()

        async with connect(prefetch=3) as connection, consuming(connection, queue, slow):
            await wait_until(lambda: len(seen.messages) == 1, "the first message")
            await eventually(lambda: ready(queue), 7, "three messages handed out")
            await asyncio.sleep(0.3)  # had the limit not held, the broker would have sent the rest by now
            assert await ready(queue) == 7
            assert await unacknowledged(queue) == 3
            release.set()
            await wait_until(lambda: len(seen.messages) == 10, "all ten")
            assert seen.ids == [f"m{i}" for i in range(10)]  # one at a time, in queue order

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_a_message_that_is_not_json_goes_to_the_dead_letter_exchange_with_its_reason(
    broker: None, names: dict[str, str]
) -> None:
    queue, dlx = names["queue"], names["dlx"]

    async def scenario() -> None:
        await declare_queue(queue)
        await publish_raw(queue, b"\xff\xfe<stock sku='A'/>", message_id="bad", headers={"origin": "erp"})
        await publish_raw(queue, b'{"sku": "B"}', message_id="good")
        seen = Collector()
        async with connect(dead_letter_exchange=dlx) as connection, consuming(connection, queue, seen):
            await wait_until(lambda: seen.ids == ["good"], "the good message (the flow goes on)")
            await eventually(lambda: ready(dlx), 1, "the bad message in the dead-letter queue")
            await eventually(lambda: unacknowledged(queue), 0, "both originals acknowledged")
        (dead,) = await take_all(dlx)  # the connector declared the exchange and a queue of the same name
        assert dead.body == b"\xff\xfe<stock sku='A'/>"
        assert dead.message_id == "bad"
        headers = dead.headers or {}
        assert str(headers[REASON_HEADER]).startswith("message is not JSON: ")
        assert headers[SOURCE_QUEUE_HEADER] == queue
        assert headers["origin"] == "erp"
        assert dead.routing_key == queue
        assert await ready(queue) == 0  # the original was acknowledged once the dead letter was confirmed

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_without_a_dead_letter_exchange_a_message_that_is_not_json_reaches_the_handler(
    broker: None, names: dict[str, str]
) -> None:
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        await asyncio.to_thread(publish_without_id, queue, b"not json at all")  # and no message id either
        await publish_raw(queue, b'{"sku": "B"}', message_id="good")
        seen = Collector()
        async with connect() as connection, consuming(connection, queue, seen):
            await wait_until(lambda: len(seen.messages) == 2, "both messages")
        assert seen.messages[0].body == b"not json at all"
        assert seen.messages[0].message_id == ""  # none was sent, none is made up
        assert seen.ids[1] == "good"

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_a_message_without_an_id_is_handed_over_without_one_and_redelivered_whole(
    broker: None, names: dict[str, str]
) -> None:
    queue = names["queue"]
    seen = Collector()

    async def fail_first(message: Message) -> None:
        await seen(message)
        if len(seen.messages) == 1:
            raise RuntimeError("not now")

    async def scenario() -> None:
        await declare_queue(queue)
        await asyncio.to_thread(publish_without_id, queue, b'{"sku": "A"}', {"h": 1})
        await asyncio.to_thread(publish_without_id, queue, b'{"sku": "B"}', {"h": 1})
        async with connect() as connection, consuming(connection, queue, fail_first):
            await wait_until(lambda: len(seen.messages) == 3, "the redelivery and the other message")
            await eventually(lambda: unacknowledged(queue), 0, "both acknowledged")
        assert [m.body for m in seen.messages] == [b'{"sku": "A"}', b'{"sku": "A"}', b'{"sku": "B"}']
        assert seen.ids == ["", "", ""]  # the spec names what identifies them (a body field or a header)
        assert all(m.headers == {"h": 1} for m in seen.messages)  # headers travel, for a spec to use
        assert await ready(queue) == 0

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_three_messages_of_the_same_content_without_ids_are_three_messages(broker: None, names: dict[str, str]) -> None:
    """qty 5, then 7, then 5 again for one SKU: the third is a change, not a copy of the first."""
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        for qty in (5, 7, 5):
            body = json.dumps({"sku": "HV-200", "qty": qty}).encode()
            await asyncio.to_thread(publish_without_id, queue, body)
        seen = Collector()
        async with connect() as connection, consuming(connection, queue, seen):
            await wait_until(lambda: len(seen.messages) == 3, "all three messages")
            await eventually(lambda: unacknowledged(queue), 0, "all three acknowledged")
        assert [json.loads(m.body)["qty"] for m in seen.messages] == [5, 7, 5]
        assert seen.ids == ["", "", ""]
        assert await ready(queue) == 0

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_dead_letter_copies_of_messages_without_ids_each_get_their_own_id(broker: None, names: dict[str, str]) -> None:
    queue, dlx = names["queue"], names["dlx"]

    async def scenario() -> None:
        await declare_queue(queue)
        for _ in range(2):
            await asyncio.to_thread(publish_without_id, queue, b"<same garbage/>")
        seen = Collector()
        async with connect(dead_letter_exchange=dlx) as connection, consuming(connection, queue, seen):
            await eventually(lambda: exists(dlx), True, "the dead-letter queue declared by the consumer")
            await eventually(lambda: ready(dlx), 2, "both dead letters (neither merged into the other)")
            await eventually(lambda: unacknowledged(queue), 0, "both originals acknowledged")
        first, second = await take_all(dlx)
        assert first.body == second.body == b"<same garbage/>"
        assert first.message_id and second.message_id and first.message_id != second.message_id
        assert str(first.message_id).startswith("seamline-dead-letter:")
        assert seen.messages == []

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_when_the_dead_letter_exchange_cannot_take_it_the_message_goes_to_the_handler(
    broker: None, names: dict[str, str]
) -> None:
    queue, dlx = names["queue"], names["dlx"]

    async def scenario() -> None:
        await declare_queue(queue)
        async with broker_session() as channel:  # it exists, but no queue is bound to it: returned
            await channel.declare_exchange(dlx, aio_pika.ExchangeType.FANOUT, durable=True)
        await publish_raw(queue, b"garbage", message_id="bad")
        seen = Collector()
        async with connect(dead_letter_exchange=dlx) as connection, consuming(connection, queue, seen):
            await wait_until(lambda: seen.ids == ["bad"], "the message in the handler (never lost)")
            await eventually(lambda: unacknowledged(queue), 0, "the original acknowledged")
        assert await ready(queue) == 0

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_a_consumer_whose_queue_is_deleted_declares_it_again_and_goes_on(broker: None, names: dict[str, str]) -> None:
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        seen = Collector()
        async with connect() as connection, consuming(connection, queue, seen):
            await publish_raw(queue, b"{}", message_id="one")
            await wait_until(lambda: seen.ids == ["one"], "the first message")
            async with broker_session() as channel:
                await channel.queue_delete(queue)  # the broker cancels our consumer
            await eventually(lambda: exists(queue), True, "the queue declared again")
            await publish_raw(queue, b"{}", message_id="two")
            await wait_until(lambda: seen.ids == ["one", "two"], "the message on the new queue")

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_close_ends_a_running_consumer(broker: None, names: dict[str, str]) -> None:
    queue = names["queue"]

    async def scenario() -> None:
        await declare_queue(queue)
        seen = Collector()
        connection = connect()
        task = asyncio.create_task(connection.consume(queue, seen))
        await publish_raw(queue, b"{}", message_id="one")
        await wait_until(lambda: seen.ids == ["one"], "the first message")
        await connection.close()
        await asyncio.wait_for(task, timeout=30)  # returns, no exception
        await connection.close()

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_a_consumer_refused_login_raises_a_terminal_error(broker: None, names: dict[str, str]) -> None:
    async def scenario() -> None:
        async with connect("amqp://guest:wrong-password@127.0.0.1:5672/") as connection:
            with pytest.raises(TerminalError, match="refused the login"):
                await asyncio.wait_for(connection.consume(names["queue"], Collector()), timeout=30)

    asyncio.run(scenario())


@pytest.mark.rabbitmq
def test_connections_the_broker_closes_are_opened_again(broker: None, names: dict[str, str]) -> None:
    queue = names["queue"]

    async def write_until_accepted(connection: AmqpConnection, message_id: str) -> None:
        """What the runtime does with a TransientError: try again (here without backoff, bounded)."""
        until = time.monotonic() + 30
        while True:
            try:
                await write(connection, queue, {"id": message_id}, message_id)
                return
            except TransientError:
                if time.monotonic() > until:
                    raise
                await asyncio.sleep(0.1)

    async def scenario() -> None:
        await declare_queue(queue)
        seen = Collector()
        async with connect() as connection, consuming(connection, queue, seen):
            await write_until_accepted(connection, "before")
            await wait_until(lambda: seen.ids == ["before"], "the first message")
            await asyncio.to_thread(
                subprocess.run, ["rabbitmqctl", "close_all_connections", "test"], check=True, capture_output=True
            )
            await write_until_accepted(connection, "after")
            await wait_until(lambda: seen.ids == ["before", "after"], "the consumer back on a new connection")

    asyncio.run(scenario())


# -- restarts -------------------------------------------------------------------------------------


@pytest.mark.rabbitmq
def test_a_broker_restart_mid_stream_loses_nothing(broker: None, names: dict[str, str]) -> None:
    """500 messages; the broker is stopped and started again while the consumer holds unacked ones."""
    queue = names["queue"]
    total = 500

    async def scenario() -> None:
        await declare_queue(queue)
        async with connect(prefetch=50) as connection:
            await asyncio.gather(
                *(
                    connection.write(queue, {"n": i}, key=None, mode="upsert", idempotency_key=f"m{i:03d}")
                    for i in range(total)
                )
            )
            seen = Collector()
            restarted = asyncio.Event()

            async def handler(message: Message) -> None:
                await seen(message)
                if len(seen.messages) == 100:
                    # Mid-stream for sure: this message and the 49 prefetched behind it are unacked.
                    await asyncio.to_thread(stop_broker)
                    try:
                        await asyncio.to_thread(start_broker)
                    finally:
                        restarted.set()

            try:
                async with consuming(connection, queue, handler):
                    await wait_until(restarted.is_set, "the restart", timeout=120)
                    await wait_until(lambda: len(set(seen.ids)) == total, "every message after the restart", 60)
                    await eventually(lambda: unacknowledged(queue), 0, "every message acknowledged")
            finally:
                if not broker_answers():
                    await asyncio.to_thread(start_broker)
        assert set(seen.ids) == {f"m{i:03d}" for i in range(total)}
        assert len(seen.ids) > total  # the unacked ones came again (the inbox deduplicates them)
        assert await ready(queue) == 0

    asyncio.run(scenario())


class RestartAfter:
    """The real connection, with the broker restarted right after the runtime's handler stored message n.

    The runtime's handler (engine.runtime.triggers.consume_queue's) runs unchanged; the restart comes
    between "stored in the inbox" and "acknowledged": the message is redelivered, and the inbox must
    keep one copy.
    """

    def __init__(self, inner: AmqpConnection, after: int) -> None:
        self.inner = inner
        self.after = after
        self.handled = 0
        self.restarted = asyncio.Event()

    async def consume(self, queue: str, handler: Callable[[Message], Awaitable[None]]) -> None:
        async def stored_then_restart(message: Message) -> None:
            await handler(message)
            self.handled += 1
            if self.handled == self.after:
                await asyncio.to_thread(stop_broker)
                try:
                    await asyncio.to_thread(start_broker)
                finally:
                    self.restarted.set()

        await self.inner.consume(queue, stored_then_restart)


@pytest.mark.rabbitmq
def test_the_runtime_stores_each_message_once_across_a_broker_restart(
    broker: None, names: dict[str, str], tmp_path: Path
) -> None:
    """engine.runtime.triggers.consume_queue with a SQLite store and a compiled flow, through a restart."""
    queue = names["queue"]
    (tmp_path / "seamline.yaml").write_text(
        f"""\
seamline: 1
client: amqptest
systems:
  bus: {{ connector: amqp, url: "{{{{ secret.AMQP_URL }}}}", prefetch: 20 }}
flows:
  stock:
    trigger: {{ event: {{ system: bus, queue: {queue}, id: sku }} }}
    target: {{ system: bus, write: stock.out, key: sku }}
""",
        encoding="utf-8",
    )
    client = load_client(tmp_path / "seamline.yaml", environ={"AMQP_URL": BROKER_URL})
    flow = client.flow("stock")
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    metrics = Metrics("amqptest")

    def pending() -> int:
        return store.depth()["pending"]

    async def scenario() -> None:
        await declare_queue(queue)
        async with connect() as publisher:

            async def publish(numbers: range) -> None:
                records = [({"sku": f"S{i:03d}", "qty": i}, f"m{i}") for i in numbers]
                await asyncio.gather(*(write(publisher, queue, record, message_id) for record, message_id in records))

            await publish(range(300))
            await publish_raw(queue, b"<not json/>", message_id="garbage")
            consumer = RestartAfter(connect(prefetch=20), after=100)
            task = asyncio.create_task(consume_queue(flow, consumer, queue, Inbox(store), metrics))  # type: ignore[arg-type]
            try:
                await wait_until(consumer.restarted.is_set, "the restart after the 100th stored message", 120)
                await publish(range(300, 500))
                await publish(range(0, 500, 10))  # a publisher retrying: the same message ids again
                await wait_until(lambda: pending() == 500, "500 stored messages", timeout=60)
                await eventually(lambda: ready(queue), 0, "the queue drained")
                await eventually(lambda: unacknowledged(queue), 0, "every message acknowledged")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await consumer.inner.close()
                if not broker_answers():
                    await asyncio.to_thread(start_broker)

    try:
        asyncio.run(scenario())
        assert store.depth() == {"pending": 500, "inflight": 0, "done": 0, "dead": 1}
        assert metrics.get("received", "stock") == 500
        assert metrics.get("duplicates", "stock") >= 1 + 50  # the redelivered 100th, and the republished ones
        (dead,) = store.dead_letters("stock")
        assert dead.reason.startswith("message is not JSON")
        assert dead.payload == {"raw": "<not json/>"}
    finally:
        store.close()


@pytest.mark.rabbitmq
def test_the_daemon_relays_a_queue_to_a_queue_through_a_kill_9(
    broker: None, names: dict[str, str], tmp_path: Path
) -> None:
    """`seamline run` as an operator runs it: consume one queue, transform, publish to another; kill -9 mid-way."""
    source, target = names["queue"], names["other"]
    (tmp_path / "seamline.yaml").write_text(
        f"""\
seamline: 1
client: amqprelay
systems:
  bus: {{ connector: amqp, url: "{{{{ secret.AMQP_URL }}}}", prefetch: 10 }}
flows:
  relay:
    trigger: {{ event: {{ system: bus, queue: {source}, id: sku }} }}
    transform: '{{ "sku": sku, "qty": qty * 2 }}'
    target: {{ system: bus, write: {target}, key: sku }}
""",
        encoding="utf-8",
    )
    total = 200
    daemon = DaemonProcess(tmp_path, tmp_path / "state.db", env={"AMQP_URL": BROKER_URL}, workers=2)
    relayed: set[str] = set()

    async def setup() -> None:
        await declare_queue(source)
        await declare_queue(target)
        for i in range(total):
            await publish_raw(source, json.dumps({"sku": f"S{i:03d}", "qty": i}).encode(), message_id=f"m{i}")
        await publish_raw(source, b"<garbage/>", message_id="garbage")

    def relayed_so_far() -> int:
        """Distinct message ids that reached the target queue (taken from it as they come)."""
        relayed.update(m.message_id or "" for m in asyncio.run(take_all(target)))
        return len(relayed)

    asyncio.run(setup())
    try:
        daemon.start()
        wait_for(lambda: relayed_so_far() >= 20, 30, "the first relayed messages")
        daemon.kill9()
        daemon.start()
        wait_for(lambda: relayed_so_far() >= total, 60, "every message relayed")
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
    assert len(relayed) == total  # distinct message ids: a consumer deduplicating by id sees each once
    store = open_store(daemon.state_url)
    try:
        (dead,) = store.dead_letters("relay")
        assert dead.reason.startswith("message is not JSON")
        assert store.deliveries("relay") == total
    finally:
        store.close()
    assert "guest:guest@" not in daemon.log_path.read_text(encoding="utf-8")


@pytest.mark.rabbitmq
def test_the_daemon_log_is_one_json_stream_through_a_broker_drop(
    broker: None, names: dict[str, str], tmp_path: Path
) -> None:
    """Was: connector warnings came out as plain text beside the JSON log, info lines were dropped and a
    broker dropping its connections printed aiormq's tracebacks. Now every line is JSON, bound and masked."""
    source, target = names["queue"], names["other"]
    (tmp_path / "seamline.yaml").write_text(
        f"""\
seamline: 1
client: amqplog
systems:
  bus: {{ connector: amqp, url: "{{{{ secret.AMQP_URL }}}}" }}
flows:
  relay:
    trigger: {{ event: {{ system: bus, queue: {source}, id: sku }} }}
    transform: '{{ "sku": sku }}'
    target: {{ system: bus, write: {target}, key: sku }}
""",
        encoding="utf-8",
    )
    daemon = DaemonProcess(tmp_path, tmp_path / "state.db", env={"AMQP_URL": BROKER_URL}, workers=2)
    relayed: set[str] = set()

    def relayed_so_far() -> int:
        relayed.update(m.message_id or "" for m in asyncio.run(take_all(target)))
        return len(relayed)

    asyncio.run(declare_queue(source))
    asyncio.run(declare_queue(target))
    try:
        daemon.start()
        asyncio.run(publish_raw(source, json.dumps({"sku": "A"}).encode(), message_id="a"))
        wait_for(lambda: relayed_so_far() >= 1, 30, "the first message relayed")
        subprocess.run(["rabbitmqctl", "close_all_connections", "test"], check=True, capture_output=True)
        asyncio.run(publish_raw(source, json.dumps({"sku": "B"}).encode(), message_id="b"))
        wait_for(lambda: relayed_so_far() >= 2, 60, "the message after the drop relayed")
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
    text = daemon.log_path.read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]  # every line is JSON: no plain text
    assert "Traceback" not in text
    assert "guest:guest@" not in text
    connector = [r for r in records if r["event"] == "connector_log"]
    assert any(r["level"] == "info" and r["system"] == "bus" and "consuming queue" in r["message"] for r in connector)
    assert any(r["level"] == "warning" and r["system"] == "bus" and "reconnecting" in r["message"] for r in connector)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", r["ts"]) for r in records)
