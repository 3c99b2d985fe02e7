"""The console in a real browser (issue 16, item 1, "Done when"): an operator's night, and a read-only look.

The night: the unit table misses a unit (BOX), so orders in boxes dead-letter with the reason; the alert reaches
the chat's webhook and the SMTP server (both local, real servers); the operator signs in, opens the letter, fixes
the table on disk, sees the console say the spec on disk differs, reloads, previews the replay of the flow (one
letter goes back, one is skipped: its order had a newer change delivered since), replays, and finds the order
delivered in its timeline; the warehouse (the http fake) really got the write.

Real parts: the daemon (in this process, on its own loop), its app with the console and the auth middleware,
FakeHttpServer as the ERP and the warehouse, aiohttp as the chat webhook, aiosmtpd as the mail server, Debian's
chromium driven by Playwright. Each page is screenshot into $SEAMLINE_SCREENSHOTS (else the test's tmp folder).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from playwright.sync_api import Browser, Page, expect, sync_playwright

from connectors.http.fake import FakeHttpServer
from engine.runtime import tracing
from tests.runtime.test_alerts import SMTP_PASSWORD, Hook, Mailbox, serving, smtp_server
from tests.runtime.test_console_auth import ConsoleDaemon, console_daemon

# The SMTP server takes a login without TLS: the spec says tls: none (a relay on loopback).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

OPERATOR_TOKEN = "night-operator-2f6c1a"
VIEW_TOKEN = "night-viewer-93be07"
CHROMIUM = "/usr/bin/chromium"  # Debian's (.ci/run installs it); never a downloaded browser build

SPEC = """\
seamline: 1
client: night
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    endpoints:
      products: { path: /products }
  warehouse:
    connector: http
    url: "{{ env.WAREHOUSE_URL }}"
    endpoints:
      orders: { path: "/orders/{order}", method: PUT }
      products: { path: "/products/{sku}", method: PUT }
lookups:
  units: lookups/units.csv
flows:
  orders:
    description: web shop orders to the warehouse, quantities in pieces
    trigger: { event: { webhook: /hooks/orders, id: order } }
    transform: '{ "order": order, "pieces": $uom(qty, unit, $lookups.units), "note": note }'
    target: { system: warehouse, write: orders, key: order }
  catalog:
    description: products from the ERP to the warehouse
    trigger: { schedule: 1h }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: warehouse, write: products, key: sku }
alerts:
  every: 100ms
  notify:
    webhook: { url: "{{ secret.ALERTS_WEBHOOK_URL }}", timeout: 2s }
    email:
      smtp: "{{ env.SMTP_SERVER }}"
      sender: seamline@example.com
      to: ops@example.com
      user: alerts
      password: "{{ secret.SMTP_PASSWORD }}"
      tls: none
      timeout: 2s
  rules:
    orders-dead-letters: { when: dead_letters_growing, flow: orders, over: 10m }
"""
UNITS = "unit,pieces\nPC,1\nST,1\n"  # no BOX: the night's mistake
FIXED_UNITS = UNITS + "BOX,6\n"
ORDER = "100000123"
LATER = "100000124"  # dead-lettered too, then corrected by a newer change: its letter is superseded


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class Night:
    live: ConsoleDaemon
    root: Path
    warehouse: FakeHttpServer
    hook: Hook
    mailbox: Mailbox
    shots: Path

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.live.url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}, timeout=30)

    def post_orders(self, *orders: dict[str, Any]) -> None:
        with self.api() as api:
            answer = api.post("/hooks/orders", json=list(orders))
            assert answer.status_code == 202, answer.text

    def dead_letters(self) -> list[dict[str, Any]]:
        with self.api() as api:
            letters: list[dict[str, Any]] = api.get("/api/dead-letters").json()["dead_letters"]
            return letters

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture
def night(tmp_path: Path) -> Iterator[Night]:
    root = tmp_path / "night"
    (root / "lookups").mkdir(parents=True)
    (root / "seamline.yaml").write_text(SPEC, encoding="utf-8")
    (root / "lookups" / "units.csv").write_text(UNITS, encoding="utf-8")
    shots = Path(os.environ.get("SEAMLINE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    hook, mailbox = Hook(), Mailbox()
    smtp = smtp_server(mailbox)
    smtp.start()
    traces = TracerProvider()  # tracing on (kept in memory): a dead letter carries its trace id
    traces.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracing.install(traces)
    try:
        with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as warehouse:
            erp.seed("/products", [{"id": "V-1", "sku": "V-1", "name": "valve", "changed": "2026-12-05T22:00:00Z"}])
            env = {
                "ERP_URL": erp.url,
                "WAREHOUSE_URL": warehouse.url,
                "SMTP_SERVER": f"127.0.0.1:{mailbox.port}",
                "ALERTS_WEBHOOK_URL": hook.url,
                "SMTP_PASSWORD": SMTP_PASSWORD,
                "SEAMLINE_SECRETS_DIR": str(root / "no-secrets"),  # the secrets come from the environment
            }
            state = f"sqlite:///{root / 'state.db'}"
            with console_daemon(
                root / "seamline.yaml", env, state_url=state, token=OPERATOR_TOKEN, view_token=VIEW_TOKEN
            ) as live:
                receivers = AsyncExitStack()
                live.run(receivers.enter_async_context(serving(hook)))  # the chat's webhook, on the daemon's loop
                try:
                    yield Night(live, root, warehouse, hook, mailbox, shots)
                finally:
                    live.run(receivers.aclose())
    finally:
        tracing.install(None)
        traces.shutdown()
        smtp.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def sign_in(page: Page, url: str, token: str) -> None:
    page.goto(url + "/")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(url + "/console/")


def a_night_of_dead_letters(night: Night) -> None:
    """Orders in boxes dead-letter (no BOX in the table); a corrected change of the second one is delivered."""
    time.sleep(0.3)  # the alert monitor's first check is its baseline: the dead letters come after it
    night.post_orders(
        {"order": ORDER, "qty": 2, "unit": "BOX", "note": f"gate code {SMTP_PASSWORD}"},  # a secret in a record
        {"order": LATER, "qty": 1, "unit": "BOX"},
    )
    wait_for(lambda: len(night.dead_letters()) == 2, "two dead letters")
    night.post_orders({"order": LATER, "qty": 6, "unit": "PC"})
    wait_for(lambda: night.warehouse.resource(f"/orders/{LATER}") is not None, "the corrected order delivered")


def test_an_operators_night_in_the_console(night: Night, browser: Browser) -> None:
    live = night.live
    a_night_of_dead_letters(night)

    # the alert reached both: the chat's webhook and the mail server
    wait_for(lambda: night.hook.received and night.mailbox.messages, "the alert on both notifiers")
    notice = night.hook.received[0]
    assert notice["alert"]["rule"] == "orders-dead-letters" and "orders" in notice["text"]
    assert any("orders-dead-letters" in subject for subject in night.mailbox.subjects())

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        # signing in: a wrong token is refused, the operator's is taken
        page.goto(live.url + "/")
        expect(page).to_have_url(re.compile(r"/console/login\?next="))
        night.shot(page, "01-sign-in")
        page.fill("#token", "a-guess")
        page.click("button[type=submit]")
        expect(page.locator(".notice.bad")).to_contain_text("neither this daemon's operator token nor its view token")
        page.fill("#token", OPERATOR_TOKEN)
        page.click("button[type=submit]")
        expect(page).to_have_url(live.url + "/console/")

        # the flows: orders has two dead letters, one delivered; catalog had its pass
        orders = page.locator('tr[data-flow="orders"]')
        expect(orders.locator('[data-testid="dead-orders"]')).to_have_text("2")
        expect(page.locator('tr[data-flow="catalog"]')).to_contain_text("ok")
        night.shot(page, "02-flows")

        # the dead letters, filtered by the reason
        page.click("nav >> text=Dead letters")
        page.fill('input[name="reason"]', "not in the table")
        page.click("form.filters button")
        expect(page.locator("table.letters tbody tr")).to_have_count(2)
        night.shot(page, "03-dead-letters")

        # the letter: the reason names the lookup, the record shows the secret masked
        page.click(f"table.letters tbody tr:has-text('{ORDER}') >> td:nth-child(2) a")
        expect(page.locator('[data-testid="reason"]')).to_contain_text("$uom: unit 'BOX' is not in the table")
        record = page.locator('[data-testid="record"]')
        expect(record).to_contain_text(ORDER)
        expect(record).to_contain_text("gate code ***")
        assert SMTP_PASSWORD not in page.content()
        running = page.locator('[data-testid="letter-spec"]').inner_text()
        (letter,) = [d for d in night.dead_letters() if d["business_key"] == ORDER]
        assert re.fullmatch(r"[0-9a-f]{32}", letter["trace_id"] or "")
        expect(page.locator('[data-testid="trace-id"]')).to_have_text(letter["trace_id"])
        night.shot(page, "04-letter")

        # the fix on disk: the console says the spec on disk differs until the reload
        (night.root / "lookups" / "units.csv").write_text(FIXED_UNITS, encoding="utf-8")
        page.click("nav >> text=Spec")
        expect(page.locator('[data-testid="spec-differs"]')).to_be_visible()
        expect(page.locator('[data-testid="running-version"]')).to_have_text(running)
        on_disk = page.locator('[data-testid="disk-version"]').inner_text()
        assert on_disk != running
        night.shot(page, "05-spec-differs")
        page.click("text=Reload the spec")
        expect(page.locator('[data-testid="reload-result"]')).to_contain_text(f"now running version {on_disk}")
        expect(page.locator('[data-testid="running-version"]')).to_have_text(on_disk)
        expect(page.locator('[data-testid="spec-same"]')).to_be_visible()
        catalog_runs = len(page.request.get(live.url + "/api/runs?flow=catalog").json()["runs"])
        page.locator('tr[data-flow="catalog"] button').click()  # run the schedule's pass now
        expect(page.locator('[data-testid="run-result"]')).to_contain_text("a pass of 'catalog' started")
        wait_for(lambda: len(page.request.get(live.url + "/api/runs?flow=catalog").json()["runs"]) > catalog_runs, "it")
        night.shot(page, "06-spec-reloaded")

        # replay all of the flow: the preview says what goes back and what the superseded check skips
        letters = {letter["business_key"]: letter["id"] for letter in night.dead_letters()}
        page.goto(live.url + "/console/dead-letters?flow=orders")
        page.click("text=Preview replay of all of orders")
        expect(page.locator('[data-testid="replay-preview"]')).to_contain_text("skip 1 as superseded")
        expect(page.locator(f'[data-testid="fate-{letters[ORDER]}"]')).to_contain_text("replayed")
        expect(page.locator(f'[data-testid="fate-{letters[LATER]}"]')).to_contain_text("skipped: superseded")
        assert len(night.dead_letters()) == 2  # a preview changes nothing
        night.shot(page, "07-replay-preview")
        page.click("text=Replay now")
        expect(page.locator('[data-testid="replay-done"]')).to_contain_text("1 letter went back to the inbox")
        night.shot(page, "08-replay-done")

        # the warehouse really got the order, with the fixed table's pieces
        wait_for(lambda: night.warehouse.resource(f"/orders/{ORDER}") is not None, "the replayed order")
        assert night.warehouse.resource(f"/orders/{ORDER}")["pieces"] == 12

        # its timeline: received, dead-lettered, replayed, delivered to the warehouse (the ledger's receipt)
        page.click("nav >> text=Records")
        page.fill('input[name="key"]', ORDER)
        page.click("form.filters button")
        steps = page.locator("ol.timeline li.step")
        expect(steps).to_have_count(4)
        assert [steps.nth(i).get_attribute("data-event") for i in range(4)] == [
            "received",
            "dead_lettered",
            "replayed",
            "delivered",
        ]
        expect(page.locator("li.step.delivered")).to_contain_text("delivered to warehouse.orders")
        expect(page.locator("li.step.delivered")).to_contain_text('"pieces":12')  # what the warehouse was sent
        expect(page.locator("section.change h2")).to_contain_text("delivered")
        assert SMTP_PASSWORD not in page.content()
        night.shot(page, "09-timeline")

        # the rest of the console: runs, systems, cursors (reset one)
        page.click("nav >> text=Runs")
        expect(page.locator("table.runs tbody tr").first).to_contain_text("catalog")
        night.shot(page, "10-runs")
        page.click("nav >> text=Systems")
        expect(page.locator('tr[data-system="warehouse"]')).to_contain_text("closed")
        night.shot(page, "11-systems")
        page.click("nav >> text=Cursors")
        catalog = page.locator('tr[data-flow="catalog"]')
        expect(catalog).to_contain_text("2026-12-05T22:00:00Z")
        catalog.locator('input[name="to"]').fill("2026-12-01T00:00:00Z")
        catalog.locator("button").click()
        expect(page.locator('[data-testid="notice"]')).to_contain_text(
            "The cursor of catalog was 2026-12-05T22:00:00Z; now 2026-12-01T00:00:00Z"
        )
        night.shot(page, "12-cursors")

        page.click("text=Sign out")
        expect(page).to_have_url(live.url + "/console/login")
    finally:
        page.close()


def test_the_view_token_looks_but_its_replay_reload_and_reset_are_refused(night: Night, browser: Browser) -> None:
    a_night_of_dead_letters(night)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        sign_in(page, night.live.url, VIEW_TOKEN)
        expect(page.locator(".role.viewer")).to_have_text("read-only")
        page.goto(night.live.url + "/console/dead-letters?flow=orders")
        expect(page.locator("table.letters tbody tr")).to_have_count(2)
        replay = page.locator("text=Preview replay of all of orders")
        expect(replay).to_be_disabled()  # offered to the operator only
        for path, button in (("/console/spec", "Reload the spec"), ("/console/cursors", "Reset")):
            page.goto(night.live.url + path)
            expect(page.locator(f"button:has-text('{button}')").first).to_be_disabled()
        # the server refuses them too: the buttons enabled by hand, then pressed
        for path, button in (
            ("/console/dead-letters?flow=orders", "Preview replay of all of orders"),
            ("/console/spec", "Reload the spec"),
            ("/console/cursors", "Reset"),
        ):
            page.goto(night.live.url + path)
            pressed = page.locator(f"button:has-text('{button}')").first
            pressed.evaluate("button => button.removeAttribute('disabled')")
            pressed.click()
            expect(page.locator(".notice.bad")).to_contain_text("the view token may look, not change anything")
            if button == "Reset":
                night.shot(page, "13-read-only-refused")
        assert len(night.dead_letters()) == 2  # nothing was replayed
    finally:
        page.close()
