"""Alerts (issue 16): the spec's rules checked against a running daemon, notices to a webhook and by e-mail.

Real parts throughout: an in-process daemon, the http fake as the ERP and the shop, a local aiohttp server as
the chat's incoming webhook, and aiosmtpd as the SMTP server. Faults are the fakes' own knobs (a shop answering
400 or 503, an ERP answering 500 or slowly); the monitor is checked by hand (``check_once``) where a test
counts notices, and runs on its own (``run``) where a test is about it going on through failures.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import json
import os
import socket
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from connectors.http.fake import FakeHttpServer
from engine.errors import Severity
from engine.runtime.alerts import AlertMonitor, Finding, Notice, Sent, _Incident, monitor_for
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.runtime.guards import Backoff
from engine.runtime.logs import JsonLog
from engine.secrets import Masker
from engine.spec import validate_spec
from engine.spec.model import ALERT_CONDITIONS, AlertRule, AlertWhen

# The SMTP server takes a login without TLS: the specs here say tls: none (a relay on loopback).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

TOKEN = "xoxb-5e4e7-alerts-channel-token"  # what a Slack webhook URL carries in its path
SMTP_PASSWORD = "smtp-pa55word-never-logged"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the receivers: a chat's incoming webhook, an SMTP server ----------------------------------------------


@dataclass
class Hook:
    """A local incoming webhook: what it was sent, and what it answers (500 echoes the path, token and all)."""

    port: int = field(default_factory=free_port)
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0  # seconds the hook takes before it answers
    begun: int = 0  # requests that arrived, answered or not yet

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T0ALERTS/B0ALERTS/{TOKEN}"


@asynccontextmanager
async def serving(hook: Hook) -> AsyncIterator[Hook]:
    async def receive(request: web.Request) -> web.Response:
        hook.begun += 1
        await asyncio.sleep(hook.delay)
        if hook.status != 200:
            return web.Response(status=hook.status, text=f"no hook at {request.path}")
        hook.received.append(await request.json())
        return web.Response(text="ok")  # what Slack answers

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook.port).start()
    try:
        yield hook
    finally:
        await runner.cleanup()


@dataclass
class Mailbox:
    """aiosmtpd's handler: the messages it was given, after a login with the right password."""

    port: int = field(default_factory=free_port)
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]


def _login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"alerts",
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok)


def smtp_server(mailbox: Mailbox) -> Controller:
    return Controller(
        mailbox,
        hostname="127.0.0.1",
        port=mailbox.port,
        authenticator=_login,
        auth_required=True,
        auth_require_tls=False,  # tls: none in these specs: a relay on loopback
    )


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    controller = smtp_server(box)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture
def fakes() -> Iterator[tuple[FakeHttpServer, FakeHttpServer]]:
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        yield erp, shop


# -- the daemon ------------------------------------------------------------------------------------------

SYSTEMS = """\
seamline: 1
client: watched
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    endpoints:
      products: { path: /products }
      price: { path: /price, method: POST }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
flows:
"""
ORDERS = """\
  orders:
    trigger: { event: { webhook: /hooks/orders, id: sku } }
    target: { system: shop, write: products, key: sku }
"""
CATALOG = """\
  catalog:
    trigger: { schedule: { every: 100ms } }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: shop, write: products, key: sku }
"""
PRICE = """\
  price:
    trigger: { request: { path: /price, timeout: 2s } }
    source: { system: erp, call: price }
"""
NOTIFY = """\
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
"""


def spec(flows: str, rules: str) -> str:
    return SYSTEMS + flows + NOTIFY + rules


@asynccontextmanager
async def running(
    root: Path,
    text: str,
    fakes: tuple[FakeHttpServer, FakeHttpServer],
    hook: Hook,
    mailbox: Mailbox,
    *,
    alerts: bool = False,
) -> AsyncIterator[Daemon]:
    (root / "seamline.yaml").write_text(text, encoding="utf-8")
    erp, shop = fakes
    env = {
        **os.environ,
        "ERP_URL": erp.url,
        "SHOP_URL": shop.url,
        "SMTP_SERVER": f"127.0.0.1:{mailbox.port}",
        "ALERTS_WEBHOOK_URL": hook.url,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "SEAMLINE_SECRETS_DIR": str(root / "no-secrets"),
    }
    options = DaemonOptions(
        port=free_port(),
        dev=True,
        workers=2,
        drain_timeout=5,
        state_url=f"sqlite:///{root / 's.db'}",
        backoff=Backoff(base=0.01, cap=0.02, max_attempts=1000),  # transient failures retried at once
        alerts=alerts,  # off: these tests drive their own monitor's checks one by one
    )
    daemon = Daemon(root / "seamline.yaml", options, environ=env, log_stream=io.StringIO())
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def monitor(daemon: Daemon) -> AlertMonitor:
    made = monitor_for(daemon)
    assert made is not None, "the spec has alert rules"
    return made


def log_text(daemon: Daemon) -> str:
    stream = daemon.log.stream
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def log_events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in log_text(daemon).splitlines() if line.startswith("{"))
    return [line for line in lines if line["event"] == name]


async def until(condition: Callable[[], bool], timeout: float = 8.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.02)


async def checks_until(watch: AlertMonitor, wanted: Callable[[list[Sent]], bool], timeout: float = 8.0) -> list[Sent]:
    """Check again and again until a check sends what ``wanted`` accepts; returns everything sent meanwhile."""
    deadline = time.monotonic() + timeout
    sent: list[Sent] = []
    while time.monotonic() < deadline:
        batch = await watch.check_once()
        sent += batch
        if wanted(batch):
            return sent
        await asyncio.sleep(0.05)
    pytest.fail(f"no check sent the notice wanted; sent: {[(s.notifier, s.notice.title) for s in sent]}")


def statuses(sent: list[Sent]) -> list[tuple[str, str, str]]:
    return sorted((s.notifier, s.notice.rule, s.notice.status) for s in sent)


async def dead_letters(daemon: Daemon, flow: str) -> int:
    assert daemon.inbox is not None
    return (await daemon.inbox.run(daemon.inbox.store.depth, flow))["dead"]


async def post_orders(daemon: Daemon, *skus: str) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"http://127.0.0.1:{daemon.options.port}/hooks/orders", json=[{"sku": sku} for sku in skus]
        )
        assert answer.status_code == 202, answer.text


# -- scenarios -------------------------------------------------------------------------------------------


def test_the_running_daemon_checks_its_rules_by_itself_and_a_reload_takes_the_new_ones(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    """No test-driven checks here: the daemon's own monitor notices, once, and a reload swaps the rules."""
    _, shop = fakes
    shop.fail_next("all", status=400)
    rules = "    orders-dead-letters: { when: dead_letters_growing, flow: orders, over: 1h }\n"

    async def scenario() -> None:
        async with (
            serving(Hook()) as hook,
            running(tmp_path, spec(ORDERS, rules), fakes, hook, mailbox, alerts=True) as daemon,
        ):
            await post_orders(daemon, "A")
            await _until(lambda: len(hook.received) == 1, "the daemon's own monitor to notice")
            await asyncio.sleep(0.5)  # five more checks of alerts.every (100ms): still one notice
            assert len(hook.received) == 1 and hook.received[0]["alert"]["rule"] == "orders-dead-letters"
            renamed = spec(ORDERS, rules.replace("orders-dead-letters", "orders-letters"))
            (tmp_path / "seamline.yaml").write_text(renamed, encoding="utf-8")
            assert (await daemon.reload()).reloaded
            await asyncio.sleep(0.3)  # the new monitor's first check is its baseline
            await post_orders(daemon, "B")
            await _until(lambda: len(hook.received) == 2, "the reloaded monitor's rule to notice")
            assert hook.received[1]["alert"]["rule"] == "orders-letters"

    asyncio.run(scenario())


def test_a_reload_hands_the_notices_still_waiting_and_the_open_incidents_to_the_new_monitor(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    """Was: a reload replaced the monitor and with it what the monitor held: a notice waiting for a chat that
    was down was never sent, and nothing said so. Now the new monitor sends it once the chat answers, and the
    open incident is the same one (not announced again)."""
    _, shop = fakes
    shop.fail_next("all", status=400)
    rules = "    orders-dead-letters: { when: dead_letters_growing, flow: orders, over: 1h }\n"
    hook = Hook(status=500)

    async def scenario() -> None:
        async with serving(hook), running(tmp_path, spec(ORDERS, rules), fakes, hook, mailbox, alerts=True) as daemon:
            await post_orders(daemon, "A")

            def webhook_failed() -> int:
                return sum(1 for e in log_events(daemon, "alert_notify_failed") if e["notifier"] == "webhook")

            await _until(lambda: len(mailbox.messages) == 1 and webhook_failed() >= 1, "e-mailed, the chat's waiting")
            newer = spec(ORDERS, rules).replace("every: 100ms", "every: 50ms")  # same rules and notifiers
            (tmp_path / "seamline.yaml").write_text(newer, encoding="utf-8")
            assert (await daemon.reload()).reloaded
            failed_before = webhook_failed()
            await _until(lambda: webhook_failed() > failed_before, "the new monitor to try the waiting notice")
            hook.status = 200
            await _until(lambda: len(hook.received) == 1, "the notice that waited through the reload")
            await post_orders(daemon, "B")  # more letters: the same incident, still open
            await asyncio.sleep(0.5)  # ten checks of the new monitor
            assert len(hook.received) == 1 and len(mailbox.messages) == 1, (hook.received, mailbox.subjects())
            assert hook.received[0]["alert"]["rule"] == "orders-dead-letters"
            assert hook.received[0]["alert"]["status"] == "firing"
            assert not log_events(daemon, "alert_notice_dropped")

    asyncio.run(scenario())


def test_a_reload_carries_only_unchanged_rules_and_logs_a_notice_whose_notifier_is_gone() -> None:
    """A rule kept under its name but changed starts afresh (its old samples may be of another measure); a notice
    for a notifier the new spec lacks is logged as dropped."""
    stream = io.StringIO()
    log = JsonLog("watched", Masker(), stream)
    letters = AlertRule.model_validate({"when": "dead_letters_growing", "flow": "orders", "over": "1h"})
    slow = AlertRule.model_validate({"when": "request_p99", "flow": "orders", "above": "1s"})
    nobody: Any = None  # neither signals nor notifiers are used: nothing is checked or sent here
    old = AlertMonitor({"kept": letters, "changed": letters}, nobody, {"email": nobody}, log)
    for rule in ("kept", "changed"):
        old._incidents[(rule, "orders")] = _Incident(1.0, Finding("3 new dead letters"), firing=True)
    old._outbox["email"].append(
        Notice("watched", "kept", "dead_letters_growing", "firing", "flow", "orders", "3 new", "", 1.0, 2.0)
    )
    new = AlertMonitor({"kept": letters, "changed": slow}, nobody, {"webhook": nobody}, log)
    new.take_over(old)
    assert new.firing == {("kept", "orders"): "3 new dead letters"}
    assert new.waiting("webhook") == 0 and old.waiting("email") == 0
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines() if "alert_notice_dropped" in x]
    assert (line["notifier"], line["rule"], line["status"]) == ("email", "kept", "firing")
    assert line["reason"] == "the reloaded spec has no such notifier"


def test_a_notice_being_sent_when_the_reload_comes_is_sent_once(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    """Was: the reload cancelled the old monitor mid-send; the chat had the notice, the new monitor sent it again."""
    _, shop = fakes
    shop.fail_next("all", status=400)
    rules = "    orders-dead-letters: { when: dead_letters_growing, flow: orders, over: 1h, notify: [webhook] }\n"
    hook = Hook(delay=1.0)

    async def scenario() -> None:
        async with serving(hook), running(tmp_path, spec(ORDERS, rules), fakes, hook, mailbox, alerts=True) as daemon:
            await post_orders(daemon, "A")
            await _until(lambda: hook.begun == 1, "the notice on its way to the chat")
            newer = spec(ORDERS, rules).replace("every: 100ms", "every: 50ms")
            (tmp_path / "seamline.yaml").write_text(newer, encoding="utf-8")
            assert (await daemon.reload()).reloaded
            await asyncio.sleep(1.5)  # the new monitor's checks, past the slow answer
            assert hook.begun == 1 and len(hook.received) == 1, hook.received

    asyncio.run(scenario())


def test_dead_letters_one_notice_per_incident_to_both_notifiers_then_one_resolved(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    _, shop = fakes
    shop.fail_next("all", status=400)  # the shop refuses every write: each record is a dead letter
    rules = "    orders-dead-letters: { when: dead_letters_growing, flow: orders, over: 1s }\n"

    async def scenario() -> None:
        async with (
            serving(Hook()) as hook,
            running(tmp_path, spec(ORDERS, rules), fakes, hook, mailbox) as daemon,
        ):
            watch = monitor(daemon)
            assert watch.every == 0.1  # alerts.every, what the daemon runs it with
            assert await watch.check_once() == []  # the baseline: nothing dead-lettered yet

            await post_orders(daemon, "A", "B")
            await _until_dead(daemon, 2)
            sent = await watch.check_once()
            assert statuses(sent) == [
                ("email", "orders-dead-letters", "firing"),
                ("webhook", "orders-dead-letters", "firing"),
            ]
            assert len(hook.received) == 1 and len(mailbox.messages) == 1
            body = hook.received[0]
            assert body["text"].startswith("[seamline watched] FIRING: orders-dead-letters")  # Slack and Teams
            assert "2 new dead letters in flow 'orders'" in body["text"]
            assert "seamline dlq list watched --flow orders" in body["text"]
            assert body["alert"] | {"since": "", "at": ""} == {
                "client": "watched",
                "rule": "orders-dead-letters",
                "when": "dead_letters_growing",
                "status": "firing",
                "flow": "orders",
                "summary": "2 new dead letters in flow 'orders' within 1s (2 waiting).",
                "hint": body["alert"]["hint"],
                "since": "",
                "at": "",
            }
            message = mailbox.messages[0]
            assert (
                message["Subject"]
                == "[seamline watched] FIRING: orders-dead-letters (dead_letters_growing, flow orders)"
            )
            assert message["To"] == "ops@example.com" and message["From"] == "seamline@example.com"
            assert "2 new dead letters in flow 'orders'" in message.get_content()

            # More letters while it fires: still one incident, nothing sent again.
            await post_orders(daemon, "C")
            await _until_dead(daemon, 3)
            for _ in range(3):
                assert await watch.check_once() == []
                await asyncio.sleep(0.05)
            assert len(hook.received) == 1 and len(mailbox.messages) == 1

            # A whole window without a new letter: resolved, once, to both.
            sent = await checks_until(watch, lambda batch: bool(batch), timeout=5)
            assert statuses(sent) == [
                ("email", "orders-dead-letters", "resolved"),
                ("webhook", "orders-dead-letters", "resolved"),
            ]
            assert hook.received[1]["text"].startswith("[seamline watched] RESOLVED: orders-dead-letters")
            assert hook.received[1]["alert"]["summary"] == "No new dead letter in flow 'orders' for 1s."
            assert "It held from" in hook.received[1]["text"]
            assert mailbox.subjects()[1].startswith("[seamline watched] RESOLVED")
            assert await watch.check_once() == []
            assert [e["flow"] for e in log_events(daemon, "alert_firing")] == ["orders"]
            assert [e["flow"] for e in log_events(daemon, "alert_resolved")] == ["orders"]
            assert TOKEN not in log_text(daemon) and SMTP_PASSWORD not in log_text(daemon)

    asyncio.run(scenario())


async def _until(check: Callable[[], bool], what: str, seconds: float = 8.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds:g}s: {what}"
        await asyncio.sleep(0.02)


async def _until_dead(daemon: Daemon, count: int) -> None:
    deadline = time.monotonic() + 8
    while await dead_letters(daemon, "orders") < count:
        assert time.monotonic() < deadline, "the shop's 400s never became dead letters"
        await asyncio.sleep(0.02)


def test_a_breaker_open_longer_than_after_is_notified_and_resolved_when_it_closes(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    _, shop = fakes
    shop.fail_next("all", status=503)  # the shop is down: transient failures open its breaker
    rules = "    shop-down: { when: breaker_open, system: shop, after: 500ms, notify: [webhook] }\n"

    async def scenario() -> None:
        async with (
            serving(Hook()) as hook,
            running(tmp_path, spec(ORDERS, rules), fakes, hook, mailbox) as daemon,
        ):
            breaker = daemon.systems["shop"].breaker
            breaker.cooldown, breaker.max_cooldown = 0.2, 0.4  # trials come quickly once the shop is back
            watch = monitor(daemon)
            await post_orders(daemon, "A")
            await until(lambda: breaker.opened_at is not None, what="the shop's breaker to open")
            assert await watch.check_once() == [], "open for less than `after`: no notice yet"

            sent = await checks_until(watch, lambda batch: bool(batch), timeout=5)
            assert statuses(sent) == [("webhook", "shop-down", "firing")]  # this rule notifies the webhook only
            assert "The circuit breaker of system 'shop' is open" in hook.received[0]["text"]
            assert hook.received[0]["alert"]["system"] == "shop"
            assert await watch.check_once() == []  # open, half-open, open again: the same incident

            shop.fail_next(0)  # the shop is back: the next trial closes the breaker
            sent = await checks_until(watch, lambda batch: bool(batch), timeout=8)
            assert statuses(sent) == [("webhook", "shop-down", "resolved")]
            assert breaker.opened_at is None and shop.writes("/products/A")
            assert mailbox.messages == []

    asyncio.run(scenario())


def test_a_failing_schedule_is_notified_with_its_reason_and_resolved_by_a_good_pass(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    erp, _ = fakes
    erp.fail_next("all", status=500)  # the ERP cannot be read: every pass fails
    rules = "    catalog-failing: { when: schedule_failing, flow: catalog, notify: [email] }\n"

    async def scenario() -> None:
        async with (
            serving(Hook()) as hook,
            running(tmp_path, spec(CATALOG, rules), fakes, hook, mailbox) as daemon,
        ):
            watch = monitor(daemon)
            sent = await checks_until(watch, lambda batch: bool(batch))
            assert statuses(sent) == [("email", "catalog-failing", "firing")]
            body = mailbox.messages[0].get_content()
            assert "The schedule of flow 'catalog' fails:" in body and "500" in body
            for _ in range(5):  # pass after pass fails: the same incident
                assert await watch.check_once() == []
                await asyncio.sleep(0.05)

            erp.fail_next(0)
            sent = await checks_until(watch, lambda batch: bool(batch))
            assert statuses(sent) == [("email", "catalog-failing", "resolved")]
            assert len(mailbox.messages) == 2 and hook.received == []

    asyncio.run(scenario())


def test_a_stopped_trigger_is_notified(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    rules = "    stopped: { when: consumer_stopped }\n"

    async def scenario() -> None:
        async with (
            serving(Hook()) as hook,
            running(tmp_path, spec(CATALOG, rules), fakes, hook, mailbox) as daemon,
        ):
            watch = monitor(daemon)
            assert await watch.check_once() == []

            def never(_after: float) -> float:
                raise ValueError("no next time")

            # As tests/runtime/test_truthful_tools.py stops a schedule: one that cannot say when it runs next.
            daemon.schedules["catalog"].next_fire = never  # type: ignore[method-assign]
            await until(lambda: "catalog" in daemon.stopped_triggers, what="the schedule to stop")
            sent = await watch.check_once()
            assert statuses(sent) == [("email", "stopped", "firing"), ("webhook", "stopped", "firing")]
            assert (
                "Flow 'catalog' takes no new work: its schedule stopped: ValueError: no next time"
                in (hook.received[0]["text"])
            )
            assert await watch.check_once() == []

    asyncio.run(scenario())


def test_cursor_lag_and_a_stalled_schedule(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    erp, _ = fakes
    erp.seed("/products", [{"id": "A", "sku": "A", "changed": "2025-01-01T00:00:00Z"}])  # the newest change is old
    rules = (
        "    lag: { when: cursor_lag, flow: catalog, above: 1h, notify: [webhook] }\n"
        "    stalled: { when: schedule_stalled, flow: catalog, after: 300ms, notify: [webhook] }\n"
    )

    async def scenario() -> None:
        async with (
            serving(Hook()) as hook,
            running(tmp_path, spec(CATALOG, rules), fakes, hook, mailbox) as daemon,
        ):
            watch = monitor(daemon)
            sent = await checks_until(watch, lambda batch: bool(batch))
            assert statuses(sent) == [("webhook", "lag", "firing")]
            assert "The cursor of flow 'catalog' is" in hook.received[0]["text"]

            erp.configure(latency=1.5)  # the next pass hangs on the ERP far longer than its 100ms interval
            sent = await checks_until(watch, lambda batch: any(s.notice.rule == "stalled" for s in batch))
            stalled = [s.notice for s in sent if s.notice.rule == "stalled"]
            assert [n.status for n in stalled] == ["firing"]
            assert "a pass has been running since" in stalled[0].summary

            erp.configure(latency=0)
            sent = await checks_until(watch, lambda batch: any(s.notice.rule == "stalled" for s in batch))
            assert [(s.notice.rule, s.notice.status) for s in sent] == [("stalled", "resolved")]
            assert watch.firing == {("lag", "catalog"): watch.firing[("lag", "catalog")]}  # still lagging

    asyncio.run(scenario())


def test_request_p99_above_its_bound(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    erp, _ = fakes
    erp.route("POST", "/price", lambda request: _price(request))
    erp.configure(latency=0.15)  # every answer takes 150ms
    rules = "    slow-prices: { when: request_p99, flow: price, above: 50ms, over: 30s, notify: [webhook] }\n"

    async def scenario() -> None:
        async with (
            serving(Hook()) as hook,
            running(tmp_path, spec(PRICE, rules), fakes, hook, mailbox) as daemon,
        ):
            watch = monitor(daemon)
            assert await watch.check_once() == []  # no request yet: nothing to measure
            async with httpx.AsyncClient() as client:
                for sku in ("P1", "P2", "P3"):
                    answer = await client.post(f"http://127.0.0.1:{daemon.options.port}/price", json={"sku": sku})
                    assert answer.status_code == 200, answer.text
            sent = await watch.check_once()
            assert statuses(sent) == [("webhook", "slow-prices", "firing")]
            text = hook.received[0]["text"]
            assert "Requests to flow 'price' took" in text and "(3 requests), above 50ms" in text

    asyncio.run(scenario())


def _price(request: Any) -> Any:
    from connectors.http.fake import FakeResponse

    return FakeResponse(200, {"sku": request.json()["sku"], "net": 1.0})


def test_a_notifier_that_is_down_is_logged_retried_and_never_stops_the_monitor(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer]
) -> None:
    _, shop = fakes
    shop.fail_next("all", status=400)
    rules = "    orders-dead-letters: { when: dead_letters_growing, over: 1m }\n"
    down = Mailbox()  # its SMTP server is not started yet: connection refused
    hook = Hook(status=500)  # the chat answers 500, quoting the URL's path (and so its token)

    async def scenario() -> None:
        async with (
            serving(hook),
            running(tmp_path, spec(ORDERS, rules), fakes, hook, down) as daemon,
        ):
            watch = monitor(daemon)
            stop = asyncio.Event()
            task = asyncio.create_task(watch.run(stop, 0.05))
            await post_orders(daemon, "A")

            def failed(notifier: str) -> int:
                return sum(1 for e in log_events(daemon, "alert_notify_failed") if e["notifier"] == notifier)

            await until(lambda: failed("webhook") >= 2 and failed("email") >= 2, what="two failed tries of each")
            assert not task.done(), "a notifier failing stopped the monitor"
            assert watch.waiting("webhook") == 1 and watch.waiting("email") == 1
            errors = [e["error"] for e in log_events(daemon, "alert_notify_failed")]
            assert any(
                e.startswith(f"the webhook at 127.0.0.1:{hook.port} answered 500: no hook at ***") for e in errors
            )
            assert any(f"the SMTP server 127.0.0.1:{down.port} did not take it" in e for e in errors)
            assert all(e["hint"] == "sent again at the next check" for e in log_events(daemon, "alert_notify_failed"))

            hook.status = 200
            controller = smtp_server(down)
            controller.start()
            try:
                await until(lambda: bool(hook.received) and bool(down.messages), what="the notices, once both are up")
                await asyncio.sleep(0.3)  # more checks: the notice is not sent twice
                assert len(hook.received) == 1 and len(down.messages) == 1
                assert watch.waiting("webhook") == 0 and watch.waiting("email") == 0
            finally:
                stop.set()
                await task
                controller.stop()
            log = log_text(daemon)
            assert TOKEN not in log and SMTP_PASSWORD not in log  # the secrets went out, never into the log
            assert TOKEN not in json.dumps(hook.received)

    asyncio.run(scenario())


def test_a_notice_text_is_masked_like_the_log(
    tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox
) -> None:
    """A reason quoting a secret (here the ERP's error answer echoes it) reaches the chat masked."""
    erp, _ = fakes
    erp.fail_next("all", status=500, body={"message": f"bad gateway token {SMTP_PASSWORD}"})
    rules = "    catalog-failing: { when: schedule_failing, notify: [webhook] }\n"

    async def scenario() -> None:
        async with (
            serving(Hook()) as hook,
            running(tmp_path, spec(CATALOG, rules), fakes, hook, mailbox) as daemon,
        ):
            watch = monitor(daemon)
            await checks_until(watch, lambda batch: bool(batch))
            assert SMTP_PASSWORD not in json.dumps(hook.received)
            assert "500 Internal Server Error: bad gateway token ***" in hook.received[0]["alert"]["summary"]

    asyncio.run(scenario())


def test_no_rules_no_monitor(tmp_path: Path, fakes: tuple[FakeHttpServer, FakeHttpServer], mailbox: Mailbox) -> None:
    async def scenario() -> None:
        async with running(tmp_path, SYSTEMS + ORDERS, fakes, Hook(), mailbox) as daemon:
            assert monitor_for(daemon) is None

    asyncio.run(scenario())


def test_notice_text_reads_as_a_message() -> None:
    notice = Notice(
        client="acme",
        rule="erp-down",
        when="breaker_open",
        status="resolved",
        subject="system",
        name="erp",
        summary="Resolved: The circuit breaker of system 'erp' is open: calls to it are refused or on trial.",
        hint="",
        since=1_750_000_000.0,
        at=1_750_000_750.0,
    )
    assert notice.text.splitlines() == [
        "[seamline acme] RESOLVED: erp-down (breaker_open, system erp)",
        "Resolved: The circuit breaker of system 'erp' is open: calls to it are refused or on trial.",
        "It held from 2025-06-15T15:06:40.000Z to 2025-06-15T15:19:10.000Z (12m 30s).",
    ]
    assert notice.payload()["alert"]["system"] == "erp"


def test_every_condition_is_described_in_the_order_the_schema_lists_them() -> None:
    # the schema's enumDescriptions pair with its enum by position
    assert list(typing.get_args(AlertWhen)) == list(ALERT_CONDITIONS)


# -- validate --------------------------------------------------------------------------------------------

VALIDATED = (
    SYSTEMS
    + ORDERS
    + CATALOG
    + PRICE
    + """\
alerts:
  notify:
    webhook: { url: "{{ env.ALERTS_WEBHOOK_URL }}" }
  rules:
    dl: { when: dead_letters_growing, flow: ordres }
    lag: { when: cursor_lag, flow: orders, above: 6h }
    p99: { when: request_p99, flow: catalog, above: 500ms }
    br: { when: breaker_open, system: shopp }
    mail: { when: consumer_stopped, notify: [email] }
    odd: { when: request_p99, flow: price, above: 3 }
"""
)


def test_validate_locates_every_alert_rule_problem(tmp_path: Path) -> None:
    (tmp_path / "seamline.yaml").write_text(VALIDATED, encoding="utf-8")
    env = {"ERP_URL": "http://erp", "SHOP_URL": "http://shop", "ALERTS_WEBHOOK_URL": "http://hook"}
    report = validate_spec(tmp_path / "seamline.yaml", environ=env)
    errors = [(d.line, d.column, d.message) for d in report.diagnostics if d.severity is Severity.ERROR]
    assert errors == [
        (30, 45, "alert rule 'dl' watches flow 'ordres', which is not declared under flows: — did you mean 'orders'?"),
        (31, 36, "cursor_lag cannot watch flow 'orders': it is an event flow, and cursor_lag watches schedule flows"),
        (
            32,
            37,
            "request_p99 cannot watch flow 'catalog': it is a schedule flow, and request_p99 watches request flows",
        ),
        (33, 39, "system 'shopp' is not declared under systems: — did you mean 'shop'?"),
        (34, 46, "alert rule 'mail' sends to email, which alerts.notify does not configure"),
        (35, 5, "request_p99 is bounded by a duration, e.g. above: 500ms, not 3"),
    ]
    hints = {d.message: d.hint for d in report.diagnostics}
    assert hints[errors[4][2]] == "configure alerts.notify.email, or leave email out of this rule's notify"


def test_validate_refuses_a_literal_smtp_password_and_warns_of_a_literal_webhook_url(tmp_path: Path) -> None:
    text = (
        SYSTEMS
        + ORDERS
        + """\
alerts:
  notify:
    webhook: { url: "https://hooks.slack.com/services/T0/B0/abcdef" }
    email: { smtp: "smtp.example.com:587", sender: a@example.com, to: ops@example.com, user: u, password: hunter2 }
  rules:
    dl: { when: dead_letters_growing }
"""
    )
    (tmp_path / "seamline.yaml").write_text(text, encoding="utf-8")
    report = validate_spec(tmp_path / "seamline.yaml", environ={"ERP_URL": "http://e", "SHOP_URL": "http://s"})
    found = {(d.severity, d.code, d.path) for d in report.diagnostics}
    assert (Severity.ERROR, "literal-secret", "alerts.notify.email.password") in found
    assert (Severity.WARNING, "literal-secret", "alerts.notify.webhook.url") in found
