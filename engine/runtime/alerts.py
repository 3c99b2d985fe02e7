"""Alerts: the spec's ``alerts:`` rules, checked while the daemon runs, with notices to a chat or by e-mail.

::

    Signals (what a rule reads) ──> AlertMonitor.check_once ──> incidents ──> notices ──> Notifier.send
      DaemonSignals: the store                 one per rule and        firing once,       webhook (Slack, Teams)
      (through the inbox), breakers,           flow or system          resolved once      e-mail (SMTP)
      schedules, stopped triggers,
      the request-time histogram

- **Incidents.** A rule holds for a subject (a flow, or a system for ``breaker_open``). Once it has held for the
  rule's ``after``, one notice goes out; nothing more while it keeps holding; one "resolved" notice when it stops.
  A signal that cannot tell right now (a schedule pass under way, the store busy) leaves the incident as it is:
  a busy moment never resolves an incident nor opens one.
- **Windows.** ``dead_letters_growing`` and ``request_p99`` measure over the rule's ``over``: the monitor keeps
  the samples it took at each check (the dead letters held per flow, the request-time histogram's buckets), the
  way Prometheus's ``increase()`` and ``histogram_quantile()`` read a counter and a histogram.
- **Delivery.** Each notifier has its own queue of notices, sent in order. One that fails (the receiver down, a
  refused login) is logged and sent again at the next check, and the notices behind it wait their turn; a
  notifier never stops the monitor, and a failed check never ends it.
- **Secrets.** The webhook URL (it carries the channel's token) and the SMTP password are given to the daemon's
  masker before anything is sent; notice texts and error messages pass through it like every log line.

The daemon starts it with :func:`monitor_for`, which answers None when the spec has no rules.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import smtplib
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
from pydantic import ValidationError

from engine.connector import parse_duration
from engine.errors import UsageError
from engine.runtime.inbox import Inbox
from engine.runtime.logs import JsonLog, iso_time
from engine.runtime.metrics import BUCKETS
from engine.runtime.waiting import first_of
from engine.secrets import render_values
from engine.spec.model import AlertNotify, AlertRule, Alerts, EmailNotify, WebhookNotify
from engine.state import RunRecord

if TYPE_CHECKING:
    from engine.flow import CompiledClient
    from engine.runtime.daemon import Daemon
    from engine.runtime.triggers import ScheduleTrigger

__all__ = [
    "AlertMonitor",
    "DaemonSignals",
    "EmailNotifier",
    "Finding",
    "Histogram",
    "Notice",
    "Notifier",
    "NotifyError",
    "ScheduleState",
    "Sent",
    "Signals",
    "WebhookNotifier",
    "monitor_for",
    "notifiers_for",
]

Clock = Callable[[], float]
Mask = Callable[[str], str]
RUNS_READ = 50  # a schedule's latest passes read per check: enough to date the start of a failing streak
OUTBOX_LIMIT = 100  # notices kept per notifier while it is down; the oldest go first past it
TOKEN_LENGTH = 16  # a webhook URL's path or query this long carries its token: masked on its own too
SIGNAL_TIMEOUT = 10.0  # seconds a signal may take to read (the store's thread may be busy)
START_SLACK = 5.0  # seconds: the daemon's schedules may start a moment before its signals are made


# -- what a rule reads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleState:
    """A schedule as the rules see it. Times are wall-clock seconds (``time.time()``)."""

    failing: bool | None  # its last pass failed; None: a pass is under way, so the last outcome is being replaced
    failing_since: float | None  # when the first failed pass of the current streak finished, when known
    error: str  # why the last pass failed
    running_since: float | None  # a pass has been under way since then
    next_due: float | None  # when the next pass should have started (or the one under way ended); None: unknown


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram (Prometheus' ``le`` buckets over ``bounds``) as sampled at one moment."""

    buckets: tuple[float, ...]  # requests answered within each bound of ``bounds``, cumulative
    count: float
    bounds: tuple[float, ...] = tuple(BUCKETS)


class Signals(Protocol):
    """What alert rules read; :class:`DaemonSignals` reads them from a running daemon.

    Each call may raise (a store that does not answer): the rules that need it are left as they are for that check.
    """

    client: str

    async def dead_letters(self) -> dict[str, int]:
        """Flow -> dead letters held (not replayed), for every flow the daemon runs."""
        ...

    async def breakers(self) -> dict[str, float | None]:
        """System -> seconds since its breaker last opened while it has not closed again; None when closed."""
        ...

    async def schedules(self) -> dict[str, ScheduleState]:
        """Flow -> its running schedule."""
        ...

    async def cursor_lag(self) -> dict[str, float]:
        """Flow -> how old its cursor is in seconds, for the schedules whose cursor is a time."""
        ...

    async def stopped_triggers(self) -> dict[str, str]:
        """Flow -> why its schedule loop or queue consumer ended."""
        ...

    async def request_latency(self) -> dict[str, Histogram]:
        """Request flow -> the histogram of its answer times since the daemon started."""
        ...


class DaemonSignals:
    """The signals of a running :class:`~engine.runtime.daemon.Daemon`, read through its public parts.

    The store is only reached through ``daemon.inbox.run`` (its own thread): the loop never waits on it. Breakers
    are this process's: with ``--processes N`` the delivery processes' own breakers are not seen here (as in
    ``seamline_breaker_state``); their dead letters are, since they are in the shared store.
    """

    def __init__(self, daemon: Daemon, clock: Clock = time.time) -> None:
        self.daemon = daemon
        self.client = daemon.client.client
        self.clock = clock
        self.started = clock()  # what a schedule's first pass is due after

    def _inbox(self) -> Inbox:
        if self.daemon.inbox is None:
            raise RuntimeError("the daemon has no state store open yet")
        return self.daemon.inbox

    def _schedules(self) -> dict[str, ScheduleTrigger]:
        return self.daemon.schedules if self.daemon.options.schedules else {}

    async def dead_letters(self) -> dict[str, int]:
        inbox = self._inbox()
        depth = await inbox.run(inbox.store.depth_by_flow)
        return {flow: int(depth.get(flow, {}).get("dead", 0)) for flow in self.daemon.flow_names}

    async def breakers(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, system in self.daemon.systems.items():
            breaker = system.breaker
            out[name] = None if breaker.opened_at is None else max(0.0, breaker.clock() - breaker.opened_at)
        return out

    async def schedules(self) -> dict[str, ScheduleState]:
        inbox = self._inbox()
        out: dict[str, ScheduleState] = {}
        # A pass started before this daemon is an earlier daemon's: its failure is not this one's to report.
        since = self.started - START_SLACK
        for flow, trigger in self._schedules().items():
            runs = await inbox.run(inbox.store.runs, flow, RUNS_READ)
            mine = [r for r in runs if r.kind == "schedule" and r.started_at >= since]
            out[flow] = schedule_state(trigger, mine, self.started)
        return out

    async def cursor_lag(self) -> dict[str, float]:
        watched = {
            flow
            for flow, trigger in self._schedules().items()
            if trigger.flow.flow.source is not None and trigger.flow.flow.source.cursor
        }
        if not watched:
            return {}
        inbox = self._inbox()
        cursors = await inbox.run(inbox.store.cursors)
        now = self.clock()
        ages = {flow: cursor_age(cursors.get(flow), now) for flow in watched}
        return {flow: age for flow, age in ages.items() if age is not None}

    async def stopped_triggers(self) -> dict[str, str]:
        return dict(self.daemon.stopped_triggers)

    async def request_latency(self) -> dict[str, Histogram]:
        # Request triggers are answered by this process only, so its own histograms are the whole story.
        out: dict[str, Histogram] = {}
        for name, flow, buckets, _total, count in self.daemon.metrics.snapshot()["histograms"]:
            if name == "request" and flow in self.daemon.flow_names:
                out[flow] = Histogram(tuple(float(b) for b in buckets), float(count))
        return out


def schedule_state(trigger: ScheduleTrigger, runs: Sequence[RunRecord], started: float) -> ScheduleState:
    """A schedule from its trigger and its latest runs (newest first).

    Only this daemon's own pass (``trigger.last_run``) counts as under way: a run a crashed daemon left
    "running" stays so in the store forever.
    """
    current = next((run for run in runs if run.id == trigger.last_run), None)
    running_since = current.started_at if current is not None and current.finished_at is None else None
    finished = [run for run in runs if run.finished_at is not None]
    streak = _failed_streak(finished)
    if running_since is not None:
        failing: bool | None = None  # the pass under way cleared the last error: the outcome is not known yet
    else:
        failing = bool(trigger.last_error) or bool(streak)
    # The daemon owes passes from its own start on: a pass an earlier daemon finished long ago is not overdue now.
    last_finished = finished[0].finished_at if finished else None
    reference = running_since if running_since is not None else max(last_finished or started, started)
    try:
        next_due: float | None = trigger.next_fire(reference)
    except Exception:  # a schedule that cannot say when it runs next has stopped (consumer_stopped says so)
        next_due = None
    return ScheduleState(
        failing=failing,
        failing_since=streak[-1].finished_at if streak else None,
        error=trigger.last_error or ("the pass failed" if streak else ""),
        running_since=running_since,
        next_due=next_due,
    )


def _failed_streak(finished: Sequence[RunRecord]) -> list[RunRecord]:
    """The failed passes at the head of ``finished`` (newest first), up to the latest one that did not fail."""
    streak: list[RunRecord] = []
    for run in finished:
        if run.status != "failed":
            break
        streak.append(run)
    return streak


def cursor_age(value: str | None, now: float) -> float | None:
    """How old a cursor is when it is a time (ISO 8601, UTC when it names no zone); None for any other cursor."""
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return max(0.0, now - stamp.timestamp())


def quantile(q: float, histogram: Histogram) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated inside its bucket (``histogram_quantile``).

    None when it counts nothing; ``inf`` when the quantile lies past the last bound.
    """
    if histogram.count <= 0:
        return None
    rank = q * histogram.count
    lower, below = 0.0, 0.0
    for bound, within in zip(histogram.bounds, histogram.buckets, strict=True):
        if within >= rank:
            if within == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (within - below)
        lower, below = bound, within
    return math.inf


# -- incidents and notices --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A rule holds for one subject: what is wrong, with the measured value, and since when when it is known."""

    summary: str
    since: float | None = None
    hint: str = ""
    resolved: str = ""  # what the resolved notice says, once it no longer holds


@dataclass(frozen=True)
class Notice:
    """One message about an incident: it started (firing) or it ended (resolved)."""

    client: str
    rule: str
    when: str
    status: Literal["firing", "resolved"]
    subject: Literal["flow", "system"]
    name: str  # the flow's or the system's
    summary: str
    hint: str
    since: float
    at: float

    @property
    def title(self) -> str:
        state = "FIRING" if self.status == "firing" else "RESOLVED"
        return f"[seamline {self.client}] {state}: {self.rule} ({self.when}, {self.subject} {self.name})"

    @property
    def text(self) -> str:
        """The notice as people read it (a chat message, an e-mail body)."""
        lines = [self.title, self.summary]
        if self.status == "firing":
            lines.append(f"Since {iso_time(self.since)}.")
            if self.hint:
                lines.append(self.hint)
        else:
            lines.append(
                f"It held from {iso_time(self.since)} to {iso_time(self.at)} ({human_duration(self.at - self.since)})."
            )
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        """A webhook body: ``text`` is what Slack's and Teams' incoming webhooks show; ``alert`` is for machines."""
        return {
            "text": self.text,
            "alert": {
                "client": self.client,
                "rule": self.rule,
                "when": self.when,
                "status": self.status,
                self.subject: self.name,
                "summary": self.summary,
                "hint": self.hint,
                "since": iso_time(self.since),
                "at": iso_time(self.at),
            },
        }


@dataclass(frozen=True)
class Sent:
    """A notice a notifier took."""

    notice: Notice
    notifier: str


@dataclass
class _Incident:
    since: float
    finding: Finding
    firing: bool = False


@dataclass
class _Window:
    """Samples of one measure taken at each check, kept back to one just before the window (the baseline)."""

    samples: deque[tuple[float, Any]] = field(default_factory=deque)

    def add(self, now: float, value: Any, over: float) -> None:
        self.samples.append((now, value))
        while len(self.samples) > 1 and self.samples[1][0] <= now - over:
            self.samples.popleft()


@dataclass
class _Readings:
    """The signals read once per check (each only when a rule needs it), or why one could not be read."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class _Unreadable(Exception):
    """The signal a rule needs could not be read at this check."""


# Which signal each condition reads.
_SIGNAL = {
    "dead_letters_growing": "dead_letters",
    "breaker_open": "breakers",
    "schedule_failing": "schedules",
    "schedule_stalled": "schedules",
    "cursor_lag": "cursor_lag",
    "consumer_stopped": "stopped_triggers",
    "request_p99": "request_latency",
}


# -- notifiers --------------------------------------------------------------------------------------


class NotifyError(Exception):
    """A notifier could not hand its notice over (the message says why, secrets masked); sent again later."""


class Notifier(Protocol):
    name: str

    async def send(self, notice: Notice) -> None:
        """Hand ``notice`` over; raise :class:`NotifyError` when it was not taken."""
        ...


class WebhookNotifier:
    """POSTs a notice as JSON with a ``text`` field: Slack's and Microsoft Teams' incoming webhooks show it."""

    name = "webhook"

    def __init__(self, url: str, *, timeout: float = 10.0, mask: Mask = str) -> None:
        self.url = url
        self.timeout = timeout
        self.mask = mask
        self.host = urlsplit(url).netloc.rpartition("@")[2]  # said in errors; the path carries the token

    async def send(self, notice: Notice) -> None:
        where = f"the webhook at {self.host}"
        try:
            # trust_env: HTTPS_PROXY and NO_PROXY apply, as they do to the http connectors by default
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=True) as session,
                session.post(self.url, json=notice.payload()) as response,
            ):
                if response.status >= 300:
                    body = (await response.text(errors="replace"))[:200]
                    raise NotifyError(self.mask(f"{where} answered {response.status}: {body}"))
        except TimeoutError:
            raise NotifyError(f"{where} did not answer within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise NotifyError(self.mask(f"{where} cannot be reached: {type(exc).__name__}: {exc}")) from None


class EmailNotifier:
    """Sends a notice as an e-mail over SMTP (smtplib, in a thread: the loop never waits on the server)."""

    name = "email"

    def __init__(self, options: EmailNotify, *, mask: Mask = str) -> None:
        self.options = options
        self.host, self.port = options.address()
        self.timeout = parse_duration(options.timeout)
        self.mask = mask

    async def send(self, notice: Notice) -> None:
        message = self.message(notice)
        try:
            await asyncio.to_thread(self._send, message)
        except (smtplib.SMTPException, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            raise NotifyError(self.mask(f"the SMTP server {self.host}:{self.port} did not take it: {detail}")) from None

    def message(self, notice: Notice) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = notice.title
        message["From"] = self.options.sender
        message["To"] = ", ".join(self.options.to)
        message["Date"] = formatdate(notice.at, usegmt=True)
        # the sender's domain, not the host's name: make_msgid's default asks DNS for it
        message["Message-ID"] = make_msgid(domain=self.options.sender.rpartition("@")[2] or "seamline")
        message.set_content(notice.text + "\n")
        return message

    def _send(self, message: EmailMessage) -> None:
        options = self.options
        context = ssl.create_default_context()
        smtp = (
            smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            if options.tls == "implicit"
            else smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        )
        with smtp:
            if options.tls == "starttls":
                smtp.starttls(context=context)
            if options.user:
                smtp.login(options.user, options.password or "")
            smtp.send_message(message)


def notifiers_for(notify: AlertNotify, mask: Mask = str) -> dict[str, Notifier]:
    """The configured notifiers, by name (``webhook``, ``email``), from rendered options."""
    out: dict[str, Notifier] = {}
    if notify.webhook is not None:
        out["webhook"] = WebhookNotifier(notify.webhook.url, timeout=parse_duration(notify.webhook.timeout), mask=mask)
    if notify.email is not None:
        out["email"] = EmailNotifier(notify.email, mask=mask)
    return out


# -- the monitor ------------------------------------------------------------------------------------


class AlertMonitor:
    """Checks the rules against the signals, keeps one incident per rule and subject, and sends the notices."""

    def __init__(
        self,
        rules: Mapping[str, AlertRule],
        signals: Signals,
        notifiers: Mapping[str, Notifier],
        log: JsonLog,
        clock: Clock = time.time,
        *,
        mask: Mask = str,
        every: float = 30.0,
    ) -> None:
        self.rules = dict(rules)
        self.signals = signals
        self.notifiers = dict(notifiers)
        self.log = log
        self.clock = clock
        self.mask = mask
        self.every = every  # the spec's alerts.every: what run() waits between checks unless told otherwise
        self.started = clock()  # a histogram read at the first check counts from here (the daemon's start)
        self._incidents: dict[tuple[str, str], _Incident] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._outbox: dict[str, deque[Notice]] = {name: deque() for name in self.notifiers}
        self._halted = asyncio.Event()

    def take_over(self, previous: AlertMonitor | None) -> None:
        """Carry on from the monitor a reload replaces (``None``: the new spec has no rules, so nothing carries on).

        The incidents and windows of the rules the new spec keeps as they were (same name, same definition) come
        along, so an open incident is not announced twice and still gets its resolved notice; a rule that changed
        starts afresh (its old samples may not even be of the same measure). Notices still waiting for a notifier
        the new spec has go out from here, in order; those for a notifier it no longer has are logged as dropped,
        never lost without a word. Call it once ``previous`` has stopped (:meth:`halt`), so that no notice it was
        sending is sent again from here.
        """
        if previous is None:
            return
        self.started = previous.started
        kept = {name for name, rule in self.rules.items() if previous.rules.get(name) == rule}
        self._incidents.update({key: value for key, value in previous._incidents.items() if key[0] in kept})
        self._windows.update({key: value for key, value in previous._windows.items() if key[0] in kept})
        for name, waiting in previous._outbox.items():
            if name in self._outbox:
                self._outbox[name].extend(waiting)
            elif waiting:
                previous.drop_waiting(name, "the reloaded spec has no such notifier")

    def drop_waiting(self, notifier: str, why: str) -> None:
        """Give up the notices waiting for ``notifier``, each with a log line that says what was not sent."""
        waiting = self._outbox.get(notifier, deque())
        while waiting:
            notice = waiting.popleft()
            self.log.warning(
                "alert_notice_dropped", notifier=notifier, rule=notice.rule, status=notice.status, reason=why
            )

    def halt(self) -> None:
        """End :meth:`run` after the check under way (its notices sent or left waiting), not in the middle of it."""
        self._halted.set()

    async def run(self, stop: asyncio.Event, every: float | None = None) -> None:
        """Check every ``every`` seconds (the spec's ``alerts.every`` by default) until ``stop`` is set or
        :meth:`halt` is called."""
        interval = self.every if every is None else every
        while not (stop.is_set() or self._halted.is_set()):
            try:
                await self.check_once()
            except Exception as exc:  # a bug in a rule must not end the alerts: the next check tries again
                self.log.error("alert_check_failed", error=f"{type(exc).__name__}: {exc}")
            await first_of(stop, self._halted, timeout=interval)

    @property
    def firing(self) -> dict[tuple[str, str], str]:
        """(rule, flow or system) -> the summary of each incident notified and not resolved yet."""
        return {key: incident.finding.summary for key, incident in self._incidents.items() if incident.firing}

    def waiting(self, notifier: str) -> int:
        """Notices a notifier has not taken yet (it failed, they are sent again at the next check)."""
        return len(self._outbox.get(notifier, ()))

    async def check_once(self) -> list[Sent]:
        """Evaluate every rule once, queue the notices of incidents that started or ended, and send what waits.

        Returns the notices the notifiers took at this check (earlier ones that failed included).
        """
        now = self.clock()
        readings = await self._read()
        for name, rule in self.rules.items():
            try:
                found = self._evaluate(name, rule, readings, now)
            except _Unreadable as exc:
                self.log.warning("alert_signal_unreadable", rule=name, error=str(exc), hint="checked again next time")
                continue
            except Exception as exc:  # a bug in one rule leaves the others checked; its incidents stay as they are
                self.log.error("alert_rule_failed", rule=name, error=self.mask(f"{type(exc).__name__}: {exc}"))
                continue
            for notice in self._update(name, rule, found, now):
                self._announce(notice, rule)
        return await self._flush()

    # -- reading and evaluating ------------------------------------------------------------------------
    async def _read(self) -> _Readings:
        readings = _Readings()
        for signal in sorted({_SIGNAL[rule.when] for rule in self.rules.values()}):
            try:
                # a stalled store must not hold back the notices already waiting to be sent
                async with asyncio.timeout(SIGNAL_TIMEOUT):
                    readings.values[signal] = await getattr(self.signals, signal)()
            except TimeoutError:
                readings.errors[signal] = f"no answer within {SIGNAL_TIMEOUT:g}s (the state store is busy?)"
            except Exception as exc:  # the store busy or gone a moment: these rules keep their state this time
                readings.errors[signal] = self.mask(f"{type(exc).__name__}: {exc}")
        return readings

    def _evaluate(self, name: str, rule: AlertRule, readings: _Readings, now: float) -> dict[str, Finding | None]:
        """Subject -> what holds for it; a subject absent does not hold, one mapped to None cannot tell now."""
        signal = _SIGNAL[rule.when]
        if signal in readings.errors:
            raise _Unreadable(f"{signal}: {readings.errors[signal]}")
        value = readings.values[signal]
        match rule.when:
            case "dead_letters_growing":
                return self._dead_letters(name, rule, value, now)
            case "breaker_open":
                return _breakers(rule, value, now)
            case "schedule_failing":
                return _schedules_failing(rule, value)
            case "schedule_stalled":
                return _schedules_stalled(rule, value, now)
            case "cursor_lag":
                return _cursors_lagging(rule, value, now)
            case "consumer_stopped":
                return _triggers_stopped(rule, value)
            case "request_p99":
                return self._slow_requests(name, rule, value, now)
        raise AssertionError(f"no evaluation for {rule.when}")

    def _window(self, name: str, subject: str) -> _Window:
        return self._windows.setdefault((name, subject), _Window())

    def _dead_letters(self, name: str, rule: AlertRule, held: dict[str, int], now: float) -> dict[str, Finding | None]:
        over = rule.over_seconds()
        out: dict[str, Finding | None] = {}
        for flow, count in _only(held, rule.flow).items():
            window = self._window(name, flow)
            window.add(now, count, over)
            counts = [sample for _, sample in window.samples]
            # A replay lowers the count: only rises are new letters (as increase() reads a counter).
            new = sum(max(0, after - before) for before, after in itertools.pairwise(counts))
            if new > rule.bound():
                letters = "dead letter" if new == 1 else "dead letters"
                out[flow] = Finding(
                    f"{new} new {letters} in flow '{flow}' within {human_duration(over)} ({count} waiting).",
                    hint=f"See why: seamline dlq list {self.signals.client} --flow {flow}; after a fix, "
                    f"seamline dlq replay {self.signals.client} --flow {flow}.",
                    resolved=f"No new dead letter in flow '{flow}' for {human_duration(over)}.",
                )
        return out

    def _slow_requests(
        self, name: str, rule: AlertRule, latency: dict[str, Histogram], now: float
    ) -> dict[str, Finding | None]:
        over = rule.over_seconds()
        out: dict[str, Finding | None] = {}
        for flow, histogram in _only(latency, rule.flow).items():
            window = self._window(name, flow)
            if not window.samples:  # the histogram counts from the daemon's start: that is the first baseline
                window.samples.append((self.started, Histogram((0.0,) * len(histogram.buckets), 0.0, histogram.bounds)))
            window.add(now, histogram, over)
            first: Histogram = window.samples[0][1]
            recent = Histogram(
                tuple(b - a for a, b in zip(first.buckets, histogram.buckets, strict=True)),
                histogram.count - first.count,
                histogram.bounds,
            )
            p99 = quantile(0.99, recent)
            if p99 is not None and p99 > rule.bound():
                shown = f"more than {human_duration(recent.bounds[-1])}" if math.isinf(p99) else human_duration(p99)
                out[flow] = Finding(
                    f"Requests to flow '{flow}' took {shown} at the 99th percentile over the last "
                    f"{human_duration(over)} ({recent.count:g} requests), above {human_duration(rule.bound())}.",
                    hint="Look at the source system's answer times and limits (rate, concurrency, timeout).",
                    resolved=f"Requests to flow '{flow}' are answered within {human_duration(rule.bound())} at the "
                    "99th percentile again.",
                )
        return out

    # -- incidents -------------------------------------------------------------------------------------
    def _update(self, name: str, rule: AlertRule, found: dict[str, Finding | None], now: float) -> list[Notice]:
        notices: list[Notice] = []
        for subject, finding in found.items():
            if finding is None:
                continue  # cannot tell now: the incident stays as it is
            since = min(now, finding.since if finding.since is not None else now)
            incident = self._incidents.get((name, subject))
            if incident is None:
                incident = self._incidents[(name, subject)] = _Incident(since, finding)
            else:  # a breaker that opened again, a new failed pass: the incident began at its first sight
                incident.since, incident.finding = min(incident.since, since), finding
            if not incident.firing and now - incident.since >= rule.after_seconds():
                incident.firing = True
                notices.append(self._notice(name, rule, subject, incident, "firing", now))
        for key in [key for key in self._incidents if key[0] == name and key[1] not in found]:
            incident = self._incidents.pop(key)
            if incident.firing:
                notices.append(self._notice(name, rule, key[1], incident, "resolved", now))
        return notices

    def _notice(
        self,
        name: str,
        rule: AlertRule,
        subject: str,
        incident: _Incident,
        status: Literal["firing", "resolved"],
        now: float,
    ) -> Notice:
        finding = incident.finding
        summary = finding.summary if status == "firing" else finding.resolved or f"Resolved: {finding.summary}"
        return Notice(
            client=self.signals.client,
            rule=name,
            when=rule.when,
            status=status,
            subject=rule.condition.subject,
            name=subject,
            summary=self.mask(summary),
            hint=self.mask(finding.hint),
            since=incident.since,
            at=now,
        )

    def _announce(self, notice: Notice, rule: AlertRule) -> None:
        fields = {"rule": notice.rule, "when": notice.when, notice.subject: notice.name, "summary": notice.summary}
        if notice.status == "firing":
            self.log.warning("alert_firing", **fields)
        else:
            self.log.info("alert_resolved", **fields)
        names: list[str] = list(rule.notify) if rule.notify else list(self.notifiers)
        for name in names:
            queue = self._outbox.get(name)
            if queue is None:
                continue  # validate refuses a rule naming a notifier that is not configured
            queue.append(notice)
            while len(queue) > OUTBOX_LIMIT:
                dropped = queue.popleft()
                self.log.warning("alert_notice_dropped", notifier=name, rule=dropped.rule, status=dropped.status)

    # -- delivery --------------------------------------------------------------------------------------
    async def _flush(self) -> list[Sent]:
        """Each notifier sends what waits for it, in order, all notifiers at once (a slow one holds no other)."""
        sent = await asyncio.gather(*(self._drain(name) for name in self.notifiers))
        return [one for batch in sent for one in batch]

    async def _drain(self, name: str) -> list[Sent]:
        notifier, queue = self.notifiers[name], self._outbox[name]
        sent: list[Sent] = []
        while queue:
            notice = queue[0]
            try:
                await notifier.send(notice)
            except Exception as exc:  # NotifyError, or a notifier's bug: either way, try again next check
                error = str(exc) if isinstance(exc, NotifyError) else f"{type(exc).__name__}: {exc}"
                self.log.warning(
                    "alert_notify_failed",
                    notifier=name,
                    rule=notice.rule,
                    status=notice.status,
                    error=self.mask(error),
                    waiting=len(queue),
                    hint="sent again at the next check",
                )
                break
            queue.popleft()
            sent.append(Sent(notice, name))
            self.log.info("alert_notified", notifier=name, rule=notice.rule, status=notice.status)
        return sent


def _only(values: dict[str, Any], name: str | None) -> dict[str, Any]:
    """``values`` of the one subject a rule names, or all of them."""
    if name is None:
        return values
    return {name: values[name]} if name in values else {}


def _breakers(rule: AlertRule, open_for: dict[str, float | None], now: float) -> dict[str, Finding | None]:
    return {
        system: Finding(
            f"The circuit breaker of system '{system}' is open: calls to it are refused or on trial.",
            since=now - seconds,
            hint=f"Check that {system} is up and answers; the breaker closes by itself after a call gets through.",
            resolved=f"The circuit breaker of system '{system}' closed: calls get through again.",
        )
        for system, seconds in _only(open_for, rule.system).items()
        if seconds is not None
    }


def _schedules_failing(rule: AlertRule, schedules: dict[str, ScheduleState]) -> dict[str, Finding | None]:
    out: dict[str, Finding | None] = {}
    for flow, state in _only(schedules, rule.flow).items():
        if state.failing is None:
            out[flow] = None
        elif state.failing:
            out[flow] = Finding(
                f"The schedule of flow '{flow}' fails: {state.error}",
                since=state.failing_since,
                hint="Each pass starts again from the same cursor: nothing is lost once the source can be read.",
                resolved=f"The schedule of flow '{flow}' reads its source again.",
            )
    return out


def _schedules_stalled(rule: AlertRule, schedules: dict[str, ScheduleState], now: float) -> dict[str, Finding | None]:
    out: dict[str, Finding | None] = {}
    for flow, state in _only(schedules, rule.flow).items():
        if state.next_due is None or now <= state.next_due:
            continue
        doing = (
            f"a pass has been running since {iso_time(state.running_since)}"
            if state.running_since is not None
            else "no pass started since"
        )
        out[flow] = Finding(
            f"The schedule of flow '{flow}' is behind: a pass was due at {iso_time(state.next_due)}, and {doing}.",
            since=state.next_due,
            hint="A read that hangs or a source that got slow: see the daemon's log for the flow's schedule_pass.",
            resolved=f"The schedule of flow '{flow}' keeps its time again.",
        )
    return out


def _cursors_lagging(rule: AlertRule, lag: dict[str, float], now: float) -> dict[str, Finding | None]:
    bound = rule.bound()
    return {
        flow: Finding(
            f"The cursor of flow '{flow}' is {human_duration(seconds)} old (more than {human_duration(bound)}): "
            "the newest change read is that old.",
            since=now - seconds + bound,
            hint="Either the source had no changes since, or the schedule's reads do not get through.",
            resolved=f"The cursor of flow '{flow}' is within {human_duration(bound)} again.",
        )
        for flow, seconds in _only(lag, rule.flow).items()
        if seconds > bound
    }


def _triggers_stopped(rule: AlertRule, stopped: dict[str, str]) -> dict[str, Finding | None]:
    return {
        flow: Finding(
            f"Flow '{flow}' takes no new work: its {reason}.",
            hint="Fix the cause and restart the daemon; /readyz says degraded until then.",
            resolved=f"Flow '{flow}' takes new work again.",
        )
        for flow, reason in _only(stopped, rule.flow).items()
    }


def human_duration(seconds: float) -> str:
    """A duration as people say it: 450ms, 12s, 5m, 1h 30m, 2d 3h."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    parts: list[str] = []
    rest = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return " ".join(parts[:2])


# -- the daemon's entry point -----------------------------------------------------------------------


def monitor_for(
    daemon: Daemon, *, client: CompiledClient | None = None, flow_names: Sequence[str] | None = None
) -> AlertMonitor | None:
    """The alert monitor of a daemon's spec, ready to ``run``; None when the spec has no alert rules.

    ``client`` and ``flow_names``: the spec and flows to watch when they are not yet the daemon's (a reload makes
    its next spec's monitor before it swaps, so a missing secret refuses the reload).

    The notifiers' options are rendered here (``{{ secret.NAME }}`` read now), and the webhook URL and the SMTP
    password given to the daemon's masker before anything is sent. Raises UsageError for a missing variable, so
    call it early in the daemon's start (before connections open); the monitor reads the store and the systems only
    once it runs::

        monitor = monitor_for(daemon)
        ...
        if monitor is not None:
            tasks.append(asyncio.create_task(monitor.run(stop_event), name="alerts"))  # every alerts.every
    """
    client = client if client is not None else daemon.client
    flow_names = flow_names if flow_names is not None else daemon.flow_names
    document = client.report.document
    if daemon.delivery_only or document is None or document.alerts is None or not document.alerts.rules:
        return None
    raw = client.report.merged.data.get("alerts") or {}
    rendered = render_values(raw, masker=daemon.masker, environ=daemon.environ, where="alerts")
    try:
        alerts = Alerts.model_validate(rendered)
    except ValidationError as exc:  # a variable's value does not fit (an address that is none)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise UsageError(daemon.masker(f"alerts: {problems}")) from None
    _mask_secrets(alerts.notify, daemon.masker.add)
    for name, rule in alerts.rules.items():
        if rule.flow is not None and rule.flow not in flow_names:
            daemon.log.warning(
                "alert_rule_idle",
                rule=name,
                flow=rule.flow,
                hint="this daemon does not run that flow (--flow, or enabled: false): the rule never fires here",
            )
    return AlertMonitor(
        alerts.rules,
        DaemonSignals(daemon),
        notifiers_for(alerts.notify, daemon.masker),
        daemon.log,
        mask=daemon.masker,
        every=parse_duration(alerts.every),
    )


def _mask_secrets(notify: AlertNotify, add: Callable[[str], None]) -> None:
    """A chat webhook's URL is its credential (the token is its path), whether it came from a secret or not."""
    webhook: WebhookNotify | None = notify.webhook
    if webhook is not None:
        add(webhook.url)
        parts = urlsplit(webhook.url)
        for part in (parts.path + ("?" + parts.query if parts.query else ""), parts.query):
            if len(part) >= TOKEN_LENGTH:  # a short path (/hooks) is no token, and masking it garbles logs
                add(part)
    if notify.email is not None and notify.email.password:
        add(notify.email.password)
