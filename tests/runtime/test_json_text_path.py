"""The worker's JSON-text path (issue 17, item 4): the text the inbox keeps goes into the transform as it is,
and the transform's own text is the body an HTTP target is sent; a heavy record is transformed off the loop.

The daemon runs in process against a real HTTP fake over loopback; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse
from engine.connector import JsonDocument
from engine.flow import load_client
from engine.runtime.worker import HEAVY_RECORD
from engine.state import InboxItem, payload_text
from engine.testing import GOLDEN_NOW
from engine.transform import BACKENDS, available_backends
from tests.reference import reference_cases
from tests.runtime.test_record_model import running, until, write_spec

ROOT = Path(__file__).resolve().parent.parent.parent

FLOWS = """\
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    transform: |
      { "sku": sku, "qty": $number(qty), "share": share * 1, "note": "Größe ½ \\"DN 25\\"",
        "plants": plants[qty > 0].id }
    target: { system: shop, write: stock, key: sku }
"""


def test_the_transforms_own_text_is_the_body_an_http_target_gets(tmp_path: Path) -> None:
    """Was: the record was decoded at claim, transformed as Python values and encoded again for the body."""
    spec = write_spec(tmp_path, "", FLOWS)
    plants = [{"id": "DE01", "qty": 3}, {"id": "US10", "qty": 0}]
    record = {"sku": "A-1", "qty": "12", "share": 1.5e-7, "plants": plants, "x": [1] * 50}  # x: never read
    bodies: list[bytes] = []

    def take(request: FakeRequest) -> FakeResponse:
        bodies.append(request.body)
        return FakeResponse(200, {"ok": True})

    with FakeHttpServer(port=0) as shop:
        shop.route("PUT", "/stock/A-1", take)

        async def scenario() -> tuple[str | None, str]:
            async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
                url = f"http://127.0.0.1:{daemon.options.port}/hooks/stock"
                assert (await client.post(url, json=record)).status_code == 202
                await until(lambda: len(bodies) == 1, 10, "the write")
                flow = daemon.client.flows["stock"]
                return flow.transform_json(payload_text(record)), daemon.client.backend

        expected, backend = asyncio.run(scenario())
    assert expected is not None
    assert bodies == [expected.encode()]  # byte for byte the transform's text
    sent = json.loads(bodies[0])
    assert sent == {"sku": "A-1", "qty": 12, "share": 1.5e-7, "note": 'Größe ½ "DN 25"', "plants": "DE01"}
    if backend == "jlens":  # its text writes numbers as JavaScript does; Python's encoder would give 1.5e-07
        assert b'"share":1.5e-7' in bodies[0]


def test_a_target_that_reshapes_the_record_gets_python_values_and_the_timeline_keeps_the_text(
    tmp_path: Path,
) -> None:
    """A create-only field left out (the record changed on its way) is encoded from values; the ledger's
    'sent' is what went out, masked, either way."""
    flows = """\
  stock:
    trigger: { event: { webhook: /hooks/stock, id: sku } }
    transform: '{ "sku": sku, "qty": $number(qty), "placeholder": 0 }'
    target: { system: shop, write: stock, key: sku, create_only: [placeholder] }
"""
    spec = write_spec(tmp_path, "", flows)
    bodies: list[Any] = []

    def take(request: FakeRequest) -> FakeResponse:
        bodies.append(request.json())
        return FakeResponse(200, {"ok": True})

    with FakeHttpServer(port=0) as shop:
        shop.route("PUT", "/stock/B-2", take)

        async def scenario() -> list[str]:
            async with running(spec, {"SHOP_URL": shop.url}) as daemon, httpx.AsyncClient() as client:
                url = f"http://127.0.0.1:{daemon.options.port}/hooks/stock"
                await client.post(url, json={"sku": "B-2", "qty": "1"})
                await until(lambda: len(bodies) == 1, 10, "the first write")
                await client.post(url, json={"sku": "B-2", "qty": "2"})
                await until(lambda: len(bodies) == 2, 10, "the second write")
                assert daemon.inbox is not None
                changes = await daemon.inbox.run(daemon.inbox.store.timeline, "B-2")
                events = [e for change in sorted(changes, key=lambda c: c.id) for e in change.events]
                return [e.request for e in events if e.event == "delivered"]

        sent = asyncio.run(scenario())
    assert bodies == [{"sku": "B-2", "qty": 1, "placeholder": 0}, {"sku": "B-2", "qty": 2}]
    assert [json.loads(s) for s in sent] == bodies


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_text_path_gives_what_the_dict_path_gives_for_every_golden_case(backend: str) -> None:
    """Preview (golden tests, `map`) evaluates on values; the worker on text. Both must agree on every case."""
    if backend not in available_backends():
        pytest.fail(f"JSONata backend {backend} is not installed: pip install -e '.[dev]'")
    compared = 0
    for case in reference_cases():
        if case.is_request:
            continue
        client = load_client(ROOT / "specs" / case.client / "seamline.yaml", backend=backend, now=GOLDEN_NOW)
        flow = client.flow(case.flow)
        record = json.loads(case.input_path.read_text(encoding="utf-8"))
        try:
            values = flow.transform(record, record_id=case.id)
        except Exception as exc:  # an error case: the text path must fail the same way
            with pytest.raises(type(exc)):
                flow.transform_json(payload_text(record), record_id=case.id)
            continue
        text = flow.transform_json(payload_text(record), record_id=case.id)
        decoded = None if text is None else json.loads(text)
        assert decoded == values, case.id
        compared += 1
    assert compared > 0  # the reference clients have record cases; a client beside ours only adds some


def test_a_heavy_record_is_transformed_off_the_event_loop(tmp_path: Path) -> None:
    """A record over HEAVY_RECORD characters: the loop keeps running while it is transformed (a light one is
    transformed in place: no hop to a thread for the common case)."""
    from engine.runtime.daemon import Daemon, DaemonOptions

    flows = """\
  bulk:
    trigger: { event: { webhook: /hooks/bulk, id: id } }
    transform: '{ "id": id, "n": $count(rows[v % 7 = 0]), "s": $sum(rows.v) }'
    target: { system: shop, write: stock, key: id }
"""
    spec = write_spec(tmp_path, "", flows)

    async def ticks_during(text: str) -> tuple[int, JsonDocument | None]:
        daemon = Daemon(spec, DaemonOptions(port=0, dev=True), environ={"SHOP_URL": "http://127.0.0.1:9"})
        delivery = daemon._delivery(inbox=None)  # type: ignore[arg-type]  # _shape never reaches the store
        item = InboxItem(1, "bulk", "k", "k", text, "test", "inflight", 0, time.time())
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        shaped = await delivery._shape(daemon.client.flows["bulk"], item)
        during = ticks - before
        done = True
        await task
        return during, shaped

    heavy = payload_text({"id": "H", "rows": [{"v": n, "pad": "x" * 20} for n in range(12_000)]})
    light = payload_text({"id": "L", "rows": [{"v": n} for n in range(10)]})
    assert len(heavy) > HEAVY_RECORD > len(light)
    during, shaped = asyncio.run(ticks_during(heavy))
    assert shaped is not None and json.loads(shaped.text) == {"id": "H", "n": 1715, "s": sum(range(12_000))}
    assert during > 0  # the loop ran while the heavy record was transformed
    during, shaped = asyncio.run(ticks_during(light))
    assert shaped is not None and json.loads(shaped.text)["s"] == 45
    assert during == 0  # transformed in place, no hop
