"""The amqp connector's conformance harness: the real RabbitMQ on 127.0.0.1:5672 (guest/guest).

Each harness gets its own durable exchange and a durable queue bound to it with the routing key
:attr:`AmqpHarness.entity`; the connector publishes there, and both are deleted afterwards.

- ``applied()`` is the number of distinct message ids that reached the queue. A queue cannot refuse
  a duplicate, so deduplication is the consumer's job: seamline's own consumers deduplicate by
  message id (the runtime's inbox stores one item per id), and this harness counts the way they
  do. A rewrite with the same idempotency key is one more message with the same id, not one more
  applied write.
- ``fail_next("transient")`` stops the broker application (``rabbitmqctl stop_app``): connections
  are refused, as in an outage. ``fail_next("terminal")`` unbinds the queue, so the broker returns
  the mandatory message as unroutable (NO_ROUTE). Both are real broker behaviour. The suite calls
  ``record(n)`` right before each write, so the harness undoes the failure at the second ``record()``
  after it was injected (the first belongs to the write meant to fail), or at any other harness
  call: only the next write fails.
- ``stop()``/``start()`` are a real broker restart (``rabbitmqctl stop_app``/``start_app``, about two
  seconds); durable queues and persistent messages survive it.

The broker is shared by every process on this machine, so the harness (and every RabbitMQ test in
``test_amqp_connector.py``) holds :func:`broker_lock` while it runs: one test's restart never
breaks another process's test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aio_pika
import pytest

from connectors.amqp import CONNECTOR as AMQP
from engine.conformance import write_through
from engine.connector import ConnectContext, Connection, SystemOptions

__all__ = [
    "BROKER_URL",
    "MARKS",
    "AmqpHarness",
    "broker_answers",
    "broker_lock",
    "delete_topology",
    "drain_ids",
    "harness",
    "require_broker",
    "run_async",
    "start_broker",
    "stop_broker",
    "unique",
]

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCK_PATH = "/tmp/seamline-rabbitmq.lock"
MARKS = (pytest.mark.rabbitmq,)  # for test_conformance.py: the amqp checks need the broker

T = TypeVar("T")

KIND = AMQP


# -- the shared broker ----------------------------------------------------------------------------


@contextmanager
def broker_lock() -> Iterator[None]:
    """Hold the machine-wide RabbitMQ lock (an flock on a file in /tmp) for the duration."""
    with open(LOCK_PATH, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a fresh loop in another thread (callers may be inside a loop)."""

    async def main() -> T:
        return await make()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result(timeout=120)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


def broker_answers() -> bool:
    async def probe() -> bool:
        try:
            connection = await aio_pika.connect(BROKER_URL, timeout=2)
        except Exception:
            return False
        await connection.close()
        return True

    return run_async(probe)


def stop_broker() -> None:
    """Stop the RabbitMQ application (the Erlang node stays up): connections are dropped and refused."""
    _rabbitmqctl("stop_app")


def start_broker(timeout: float = 60.0) -> None:
    """Start the RabbitMQ application again and wait until it accepts AMQP connections."""
    _rabbitmqctl("start_app")
    _rabbitmqctl("await_startup")
    until = time.monotonic() + timeout
    while not broker_answers():
        if time.monotonic() > until:
            raise AssertionError(f"RabbitMQ did not accept connections within {timeout:g}s of start_app")
        time.sleep(0.1)


def _port_open() -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", 5672)) == 0


def require_broker() -> None:
    if not _port_open():
        # A broker-restart test cut short (a killed run) leaves the node up with its application
        # stopped; bringing it back is what anyone would do before failing every broker test.
        with contextlib.suppress(Exception):
            start_broker(timeout=30.0)
        if not _port_open():
            raise AssertionError(
                "RabbitMQ is not listening on 127.0.0.1:5672; start it (rabbitmq-server -detached, or "
                "rabbitmqctl start_app) or deselect these tests with -m 'not rabbitmq'"
            )


# -- the harness ----------------------------------------------------------------------------------


@dataclass
class AmqpHarness:
    """One exchange and one bound queue on the real broker; see the module docstring."""

    exchange: str
    queue: str
    entity: str = "conformance.orders"
    _seen: set[str] = field(default_factory=set)
    _armed: Literal["transient", "terminal"] | None = None
    _records_until_undo: int = 0

    kind = KIND

    def options(self) -> SystemOptions:
        return AMQP.options.model_validate(
            {"connector": "amqp", "url": BROKER_URL, "exchange": self.exchange, "limits": {"timeout": "5s"}}
        )

    def connect(self) -> Connection:
        return AMQP.open(self.options(), ConnectContext(system="bus", client="conformance"))

    # -- consume: the harness's queue is bound to the exchange with the entity's routing key ------
    def publish(self, numbers: Iterable[int]) -> None:
        write_through(self, numbers)

    def which(self, data: Any) -> int | None:
        number = data.get("number", "") if isinstance(data, dict) else ""
        return int(number.removeprefix("SO-")) if number.startswith("SO-") else None

    def record(self, n: int) -> Any:
        if self._armed is not None:
            if self._records_until_undo == 0:
                self._undo()
            else:
                self._records_until_undo -= 1
        return {"number": f"SO-{n:04d}", "lines": [{"sku": "A", "qty": n}]}

    def applied(self) -> int:
        self._undo()
        self._seen |= run_async(lambda: drain_ids(self.queue))
        return len(self._seen)

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        self._undo()
        if kind == "transient":
            stop_broker()
        else:
            run_async(lambda: self._bind(bound=False))
        self._armed, self._records_until_undo = kind, 1

    def stop(self) -> None:
        self._undo()
        stop_broker()

    def start(self) -> None:
        start_broker()

    # -- set-up and undo ----------------------------------------------------------------------
    def _undo(self) -> None:
        armed, self._armed = self._armed, None
        if armed == "transient":
            start_broker()
        elif armed == "terminal":
            run_async(lambda: self._bind(bound=True))

    async def _bind(self, *, bound: bool) -> None:
        connection = await aio_pika.connect(BROKER_URL, timeout=5)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.queue, passive=True)
            if bound:
                await queue.bind(self.exchange, self.entity)
            else:
                await queue.unbind(self.exchange, self.entity)

    async def set_up(self) -> None:
        connection = await aio_pika.connect(BROKER_URL, timeout=5)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
            queue = await channel.declare_queue(self.queue, durable=True)
            await queue.bind(exchange, self.entity)

    async def tear_down(self) -> None:
        await delete_topology(queues=[self.queue], exchanges=[self.exchange])


async def drain_ids(queue: str) -> set[str]:
    """Take every message waiting in ``queue``; their message ids."""
    ids: set[str] = set()
    connection = await aio_pika.connect(BROKER_URL, timeout=5)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(no_ack=True, fail=False, timeout=5)) is not None:
            ids.add(message.message_id or "")
    return ids


async def delete_topology(*, queues: Sequence[str] = (), exchanges: Sequence[str] = ()) -> None:
    """Delete test queues and exchanges (whatever state they are in; missing ones are fine)."""
    connection = await aio_pika.connect(BROKER_URL, timeout=5)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            await channel.queue_delete(name)
        for name in exchanges:
            channel = await connection.channel()
            await channel.exchange_delete(name)


def unique(prefix: str) -> str:
    return f"seamline-test.{prefix}.{uuid.uuid4().hex[:10]}"


@contextmanager
def harness() -> Iterator[AmqpHarness]:
    with broker_lock():
        require_broker()
        if not broker_answers():  # stopped by a test that died before starting it again
            start_broker()
        running = AmqpHarness(exchange=unique("conformance"), queue=unique("conformance"))
        run_async(running.set_up)
        try:
            yield running
        finally:
            running._undo()
            if not broker_answers():  # a check that failed between stop() and start()
                start_broker()
            run_async(running.tear_down)
