"""The embedded durable queue: publish and consume through the real daemon, kill -9 in the middle.

A webhook flow publishes each event to the queue (as a warehouse system would publish to RabbitMQ);
an event flow consumes the queue and writes to an HTTP target. The daemon is killed mid-stream and
started again: every event reaches the target exactly once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from connectors.http.fake import FakeHttpServer
from connectors.queue import CONNECTOR as QUEUE
from connectors.queue import QueueOptions
from connectors.queue.store import open_queue
from engine.connector import ConnectContext, Message
from engine.errors import TerminalError
from engine.state import open_store
from tests.runtime.harness import DaemonProcess, wait_for

SPEC = """\
seamline: 1
client: queuetest
systems:
  bus:
    connector: queue
    url: "sqlite:///{queue_db}"
    queues: [stock.changed]
    poll: 20ms
    lease: 2s
  shop:
    connector: http
    url: "{{{{ env.SHOP_URL }}}}"
    endpoints:
      stock: {{ path: "/stock/{{sku}}", method: PUT }}
flows:
  publish:
    trigger: {{ event: {{ webhook: /hooks/stock, id: material }} }}
    transform: '{{ "material": material, "qty": qty }}'
    target: {{ system: bus, write: stock.changed, key: material }}
  inventory:
    trigger: {{ event: {{ system: bus, queue: stock.changed, id: material }} }}
    transform: '{{ "sku": material, "qty": $number(qty) }}'
    target: {{ system: shop, write: stock, key: sku }}
"""


@pytest.fixture
def shop() -> Iterator[FakeHttpServer]:
    with FakeHttpServer(port=0) as fake:
        yield fake


def test_events_through_the_embedded_queue_survive_kill_9_exactly_once(tmp_path: Path, shop: FakeHttpServer) -> None:
    (tmp_path / "seamline.yaml").write_text(SPEC.format(queue_db=tmp_path / "queue.db"), encoding="utf-8")
    shop.configure(latency=0.005)
    daemon = DaemonProcess(tmp_path, tmp_path / "state.db", env={"SHOP_URL": shop.url}, lease=2.0)
    total = 150
    sent = threading.Event()

    def sender() -> None:
        with httpx.Client(timeout=2) as client:
            for i in range(total):
                event = {"material": f"M{i:03d}", "qty": str(i)}
                while True:  # resend until the 202, as a webhook source does
                    try:
                        answer = client.post(f"{daemon.url}/hooks/stock", json=event, headers={"X-Message-Id": f"e{i}"})
                        if answer.status_code == 202:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.05)
        sent.set()

    try:
        daemon.start()
        threading.Thread(target=sender, daemon=True).start()
        wait_for(lambda: shop.applied_count("/stock/") >= 30, 30, "the first events through the queue")
        daemon.kill9()
        daemon.start()
        wait_for(sent.is_set, 60, "every event accepted")
        wait_for(lambda: shop.applied_count("/stock/") >= total, 60, "every event written")
        # A message the killed daemon had taken (stored in its inbox, not yet acked) comes again once its lease
        # (2 s) runs out; the inbox knows it, so it is acked without a second write. Wait for that ack.
        wait_for(lambda: _depth(tmp_path / "queue.db")["acked"] == total, 30, "every message acked")
        time.sleep(0.5)  # anything extra would arrive now
    finally:
        daemon.stop()
    applied = Counter(w["path"] for w in shop.writes("/stock/") if not w["duplicate"] and int(w["status"]) < 300)
    assert len(applied) == total
    assert set(applied.values()) == {1}
    queue = open_queue(f"sqlite:///{tmp_path / 'queue.db'}")
    try:
        assert queue.depth("stock.changed") == {"ready": 0, "unacked": 0, "acked": total}
    finally:
        queue.close()


def _depth(path: Path) -> dict[str, int]:
    queue = open_queue(f"sqlite:///{path}")
    try:
        return queue.depth("stock.changed")
    finally:
        queue.close()


UPGRADE_SPEC = """\
seamline: 1
client: upgraded
systems:
  bus:
    connector: queue
    queues: [stock.changed]
    poll: 20ms
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
flows:
  inventory:
    trigger: { event: { system: bus, queue: stock.changed, id: sku } }
    target: { system: shop, write: stock, key: sku }
"""


def test_a_message_an_older_seamline_left_in_the_daemons_own_store_is_delivered_after_the_upgrade(
    tmp_path: Path, shop: FakeHttpServer
) -> None:
    """The queue in the daemon's own state database (no url): before the queue owned its table, the store made it
    (its migration v4) and published into it. The upgraded daemon's queue adopts the table, messages and all."""
    (tmp_path / "seamline.yaml").write_text(UPGRADE_SPEC, encoding="utf-8")
    state = tmp_path / "state.db"
    open_store(f"sqlite:///{state}").close()  # the store's schema as it ships (its v4 makes queue_messages)
    old = sqlite3.connect(state)  # what the older seamline's store.publish wrote, and a message it had acked
    insert = (
        "INSERT INTO queue_messages (queue, message_id, body, headers, available_at, created_at, acked_at) "
        "VALUES ('stock.changed', ?, ?, '{}', 0, 0, ?)"
    )
    old.execute(insert, ("left", b'{"sku": "LEFT", "qty": 3}', None))
    old.execute(insert, ("done", b'{"sku": "DONE", "qty": 1}', time.time()))  # recent: the start-up prune keeps it
    old.commit()
    old.close()
    daemon = DaemonProcess(tmp_path, state, env={"SHOP_URL": shop.url})
    try:
        daemon.start()
        wait_for(lambda: shop.resource("/stock/LEFT") is not None, 30, "the message left unacked, delivered")
        time.sleep(0.3)
    finally:
        daemon.stop()
    assert shop.resource("/stock/DONE") is None  # acked before the upgrade: never again
    queue = open_queue(f"sqlite:///{state}")
    try:
        assert queue.depth("stock.changed") == {"ready": 0, "unacked": 0, "acked": 2}
    finally:
        queue.close()


def _connection(tmp_path: Path, **options: object) -> tuple[QueueOptions, object]:
    parsed = QueueOptions.model_validate(
        {"connector": "queue", "url": f"sqlite:///{tmp_path / 'q.db'}", "queues": ["q"], "poll": "10ms", **options}
    )
    return parsed, QUEUE.open(parsed, ConnectContext(system="bus", client="t"))


def test_a_message_the_handler_refuses_comes_back_and_the_stream_goes_on(tmp_path: Path) -> None:
    _, connection = _connection(tmp_path, redelivery_delay="50ms")
    seen: list[str] = []

    async def scenario() -> None:
        for n in range(3):
            await connection.write("q", {"n": n}, key=n, mode="upsert", idempotency_key=f"m{n}")  # type: ignore[attr-defined]
        refused = {"m1"}

        async def handler(message: Message) -> None:
            seen.append(message.message_id)
            if message.message_id in refused:
                refused.clear()
                raise RuntimeError("the inbox is busy")

        consumer = asyncio.create_task(connection.consume("q", handler))  # type: ignore[attr-defined]
        for _ in range(200):
            if seen.count("m1") == 2:
                break
            await asyncio.sleep(0.01)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await connection.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert seen == ["m0", "m1", "m2", "m1"]


def test_an_unknown_queue_and_a_record_that_is_not_json_are_terminal(tmp_path: Path) -> None:
    _, connection = _connection(tmp_path)

    async def scenario() -> None:
        with pytest.raises(TerminalError, match="queue 'elsewhere' is not one of this system's queues"):
            await connection.write("elsewhere", {}, key=1, mode="upsert", idempotency_key="k")  # type: ignore[attr-defined]
        with pytest.raises(TerminalError, match="not JSON"):
            await connection.write("q", {"x": float("nan")}, key=1, mode="upsert", idempotency_key="k")  # type: ignore[attr-defined]
        await connection.close()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_prune_deletes_this_systems_acked_messages_before_the_cutoff(tmp_path: Path) -> None:
    """What the runtime calls with its state.retention cutoff; a message still unacked is never deleted."""
    _, connection = _connection(tmp_path)
    other = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    other.publish("not-mine", b"{}", "x")
    other.ack([m.id for m in other.receive("not-mine", 10, lease=30)])

    async def scenario() -> dict[str, int]:
        for n in range(3):
            await connection.write("q", {"n": n}, key=n, mode="upsert", idempotency_key=f"m{n}")  # type: ignore[attr-defined]
        handled: list[str] = []

        async def handler(message: Message) -> None:
            handled.append(message.message_id)

        consumer = asyncio.create_task(connection.consume("q", handler))  # type: ignore[attr-defined]
        for _ in range(200):
            if len(handled) == 3:
                break
            await asyncio.sleep(0.01)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await connection.write("q", {"n": 3}, key=3, mode="upsert", idempotency_key="m3")  # type: ignore[attr-defined]
        counts: dict[str, int] = await connection.prune(time.time() + 1)  # type: ignore[attr-defined]
        await connection.close()  # type: ignore[attr-defined]
        return counts

    assert asyncio.run(scenario()) == {"queue": 3}
    try:
        assert other.depth("q") == {"ready": 1, "unacked": 0, "acked": 0}  # m3, never received
        assert other.depth("not-mine")["acked"] == 1  # another system's queue in the same database
    finally:
        other.close()
