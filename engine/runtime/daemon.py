"""The daemon: one per client, running every flow of its spec until SIGTERM.

Start: validate and compile the spec, render system options (secrets resolved here, masked from
here on), open one connection per system, open the state store, start workers, schedules, queue
consumers and the HTTP API. Stop (SIGTERM/SIGINT): stop accepting (webhooks answer 503 so senders
retry), stop triggers, let workers finish the items in hand and give back the rest, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
import signal
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from aiohttp import web

from engine.connector import (
    ConnectContext,
    Connection,
    Pruner,
    Registry,
    default_registry,
    parse_duration,
    parse_size,
)
from engine.errors import SeamlineError, ServeError, Severity, SpecError, UsageError
from engine.flow import CompiledClient, CompiledFlow, load_client
from engine.runtime import tracing
from engine.runtime.alerts import AlertMonitor, monitor_for
from engine.runtime.api import BodyBudget, build_app, check_exposure
from engine.runtime.flows import BoundFlow, bind
from engine.runtime.guards import Backoff, Breaker, Budget
from engine.runtime.inbox import Inbox
from engine.runtime.logs import JsonLog, LogLevel, routed
from engine.runtime.metrics import Metrics, escape_label
from engine.runtime.operator import FlowInfo, ReloadResult, RunNowResult
from engine.runtime.processes import (
    DeliveryProcesses,
    Layout,
    PrimaryLink,
    delivery_worker,
    plan_layout,
    reclaimable,
)
from engine.runtime.system import System
from engine.runtime.triggers import (
    RequestHandler,
    ScheduleTrigger,
    consume_queue,
    enqueue_event,
)
from engine.runtime.worker import Delivery, WorkerPool
from engine.secrets import Masker, render_values
from engine.spec.model import StateOptions
from engine.state import StateStore, default_state_url, hold_sqlite_owner, open_store

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["HEARTBEAT", "Daemon", "DaemonOptions", "resolve_state_url", "retention_seconds", "spec_version"]

T = TypeVar("T")

BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
# How long a reload waits for the old alert monitor to finish its check (a notifier's own timeout is its bound).
ALERTS_HANDOVER = 15.0
HEARTBEAT = 30.0  # seconds between a daemon's "I run spec version X" on the store; stale after 3 missed


@dataclass
class DaemonOptions:
    host: str = "127.0.0.1"
    port: int = 8700
    token: str | None = None  # the operator's: everything, changes included
    view_token: str | None = None  # read-only: the console and the API's GETs
    dev: bool = False
    workers: int = 64  # records in delivery at once: each mostly waits for its group commit, not for CPU
    flows: list[str] | None = None  # None: every flow
    state_url: str | None = None
    drain_timeout: float = 20.0
    lease: float = 60.0  # how long a claimed item stays a worker's before another may take it
    backoff: Backoff = field(default_factory=Backoff)
    serve_http: bool = True
    schedules: bool = True
    alerts: bool = True  # run the spec's alert rules (not in run --once: a single pass is no watch)
    processes: int = 1  # this one (the primary) and processes-1 delivery processes
    delivery_part: int = 0  # a delivery process's number (1..processes-1); 0 in the primary
    delivery_channel: int | None = None  # set in a delivery process: its socket to the primary
    body_timeout: float = 10.0  # a webhook or request body must arrive within this (408 after)
    accept_timeout: float = 5.0  # a webhook waits this long at most for the store to take its event (503 after)
    body_memory: int = 64 * 1024 * 1024  # bytes of bodies held at once, over all requests (503 past it)
    log_level: LogLevel = "info"  # the daemon's lines and the connectors' and libraries' it routes in


def resolve_state_url(client: CompiledClient, explicit: str | None, environ: Mapping[str, str], masker: Masker) -> str:
    """--state, else $SEAMLINE_STATE_URL, else the spec's state.url, else the default (:func:`default_state_url`):
    $SEAMLINE_HOME/<client>.db, or .seamline/<client>.db beside the spec file."""
    if explicit:
        return explicit
    if environ.get("SEAMLINE_STATE_URL"):
        return environ["SEAMLINE_STATE_URL"]
    document = client.report.document
    if document is not None and document.state is not None and document.state.url is not None:
        return str(render_values(document.state.url, masker=masker, environ=environ, where="state.url"))
    return default_state_url(client.client, client.file, environ)


def durability(client: CompiledClient) -> Literal["full", "relaxed"]:
    """The spec's state.durability: "full" unless the spec opts into "relaxed"."""
    document = client.report.document
    return document.state.durability if document is not None and document.state is not None else "full"


def retention_seconds(client: CompiledClient) -> float:
    """The spec's state.retention (its default when the spec has no state block), in seconds."""
    document = client.report.document
    state = document.state if document is not None and document.state is not None else StateOptions()
    return parse_duration(state.retention)


def spec_version(client: CompiledClient) -> str:
    """A short hash of everything the client's behaviour is made of: the spec chain, mappings, code tables."""
    digest = hashlib.sha256()
    for name in client.report.merged.chain:
        digest.update(client.report.merged.texts.get(name, "").encode("utf-8"))
    for path in client.input_files:
        if path in client.report.merged.chain:
            continue
        with contextlib.suppress(OSError):
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:12]


class Daemon:
    def __init__(
        self,
        spec: Path,
        options: DaemonOptions,
        *,
        environ: Mapping[str, str] | None = None,
        log_stream: IO[str] | None = None,
        registry: Registry | None = None,
    ) -> None:
        """``registry``: the connector kinds to run with (the installed ones by default; a test injects its own)."""
        self.spec = spec
        self.registry = registry if registry is not None else default_registry()
        self.options = options
        self.environ = dict(os.environ if environ is None else environ)
        self.masker = Masker()
        self.client = load_client(spec, environ=self.environ, registry=self.registry)
        self.delivery_only = options.delivery_channel is not None
        context = {"process": options.delivery_part} if self.delivery_only else None
        self.log = JsonLog(self.client.client, self.masker, log_stream, level=options.log_level, context=context)
        self.metrics = Metrics(self.client.client)
        self.token = options.token
        self.view_token = options.view_token
        self.flow_names = self._select_flows(options.flows)
        self.layout = self._plan_layout()
        self.store: StateStore | None = None
        self.inbox: Inbox | None = None  # the one way to the store once the daemon runs
        self.systems: dict[str, System] = {}  # connection, budget and breaker of each system
        self._depth: dict[str, dict[str, int]] = {}
        self.bound: dict[str, BoundFlow] = {}  # each running flow, bound to its systems once
        self.pool: WorkerPool | None = None
        self.started = False
        self.stopping = False
        self._stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []  # the daemon's own: prune, heartbeat, alerts, a primary link
        self._flow_tasks: dict[str, asyncio.Task[Any]] = {}  # each flow's schedule loop or queue consumer
        self._passes: set[asyncio.Task[Any]] = set()  # run-now passes of flows whose schedule is not looped here
        self._reloading = asyncio.Lock()
        self._intake = asyncio.Event()  # clear while a reload swaps the flows: webhooks and requests wait
        self._intake.set()
        self.generation = 0  # +1 at each reload: the API's routes follow the flows running now
        self._alerts: asyncio.Task[None] | None = None
        self._monitor: AlertMonitor | None = None  # the one running: a reload's new monitor takes over from it
        self._traces: TracerProvider | None = None  # the provider this daemon configured, if any
        self._disk_files: list[str] = []  # the files of the spec on disk, as last loaded
        self._disk_seen: tuple[tuple[tuple[str, int, int], ...], str | None] | None = None  # their stamp, version
        self._runner: web.AppRunner | None = None
        self.spec_version = spec_version(self.client)
        self.state_url = resolve_state_url(self.client, options.state_url, self.environ, self.masker)
        self.owner_lock: int | None = None  # SQLite: <state>.lock, held by this daemon's processes
        self.delivery: DeliveryProcesses | None = None  # the primary's delivery processes
        self.link: PrimaryLink | None = None  # a delivery process's channel to its primary
        self.body_budget = BodyBudget(options.body_memory)
        self.stopped_triggers: dict[str, str] = {}  # flow -> why its schedule or consumer ended: /readyz degraded

    # -- setup ---------------------------------------------------------------------------------
    def _select_flows(self, wanted: list[str] | None) -> list[str]:
        names = [n for n, f in self.client.flows.items() if f.flow.enabled]
        if wanted:
            for name in wanted:
                self.client.flow(name)  # UsageError with did-you-mean for a typo
            names = [n for n in wanted if n in self.client.flows]
        return names

    def _plan_layout(self) -> Layout:
        if self.options.processes < 1:
            raise UsageError(f"--processes must be 1 or more, not {self.options.processes}")
        systems = self.client.report.systems
        limits = {name: getattr(options, "limits", None) for name, options in systems.items()}
        return plan_layout(self.client, self.flow_names, limits, self.options.processes)

    def _systems_needed(self, client: CompiledClient, flow_names: list[str]) -> dict[str, set[str]]:
        needed: dict[str, set[str]] = {}
        for name in flow_names:
            flow = client.flows[name].flow
            systems = {t.system for t in flow.all_targets()}
            if flow.source is not None and not self.delivery_only:  # a delivery process only writes
                systems.add(flow.source.system)
            if flow.trigger.event is not None and flow.trigger.event.system is not None and not self.delivery_only:
                systems.add(flow.trigger.event.system)
            for system in systems:
                needed.setdefault(system, set()).add(name)
        return needed

    async def open_connections(self) -> None:
        self.systems = self.open_systems(self.client, self.flow_names, self.layout)

    def open_systems(self, client: CompiledClient, flow_names: list[str], layout: Layout) -> dict[str, System]:
        """A System for each system ``flow_names`` use: connection (opened, nothing sent yet), budget, breaker.

        Raises UsageError naming the systems whose connector cannot run; nothing stays open then.
        """
        registry = self.registry
        raw_systems = client.report.merged.data.get("systems", {})
        blocked: list[str] = []
        systems: dict[str, System] = {}
        for system, flows in sorted(self._systems_needed(client, flow_names).items()):
            options = client.report.systems[system]
            kind = registry.get(options.connector)
            if kind is None or not kind.runnable:
                blocked.append(f"{system} ({options.connector}) used by {', '.join(sorted(flows))}")
                continue
            rendered = render_values(raw_systems[system], masker=self.masker, environ=self.environ, where=system)
            live_options = kind.options.model_validate(rendered)
            declared_in = Path(client.report.merged.origin(("systems", system))).parent
            context = ConnectContext(
                system=system,
                client=client.client,
                mask=self.masker.add,
                base_dir=str(declared_in),
                state_url=self.state_url,
            )
            share = layout.share(system, self.options.delivery_part)
            systems[system] = System(
                system,
                kind.open(live_options, context),
                Budget(live_options.limits, share=share),
                Breaker(),
                kind=kind.name,
            )
        if blocked:
            # Connections are opened lazily (nothing was sent); closing them is only tidy, and a close is async.
            raise UsageError(
                "these systems' connectors cannot run yet in this version: "
                + "; ".join(blocked)
                + ". Run the other flows with --flow."
            )
        return systems

    def _bind_flows(self, inbox: Inbox | None) -> None:
        """Each flow bound to its systems once (a delivery process, ``inbox`` None, binds targets only)."""
        for name in self.flow_names:
            self.bound[name] = bind(
                self.client.flows[name],
                self.systems,
                self.client.report.systems,
                inbox=inbox,
                metrics=self.metrics,
                log=self.log,
                registry=self.registry,
            )

    @property
    def schedules(self) -> dict[str, ScheduleTrigger]:
        return {name: b.schedule for name, b in self.bound.items() if b.schedule is not None}

    @property
    def webhooks(self) -> dict[str, str]:
        """Path -> flow, for the API."""
        return {b.webhook: name for name, b in self.bound.items() if b.webhook is not None}

    @property
    def requests(self) -> dict[str, RequestHandler]:
        """Path -> the request trigger's handler, for the API."""
        out: dict[str, RequestHandler] = {}
        for bound in self.bound.values():
            request = bound.compiled.flow.trigger.request
            if bound.request is not None and request is not None:
                out[request.path] = bound.request
        return out

    async def accept_event(
        self,
        flow_name: str,
        body: bytes,
        *,
        source: str,
        message_id: str = "",
        headers: Mapping[str, Any] | None = None,
    ) -> int:
        """A pushed event into the inbox (committed with the others of the same tick); returns how many were new.

        Raises TimeoutError when the store does not take it within ``options.accept_timeout`` (the webhook is
        then answered 503 and sent again; a store that stalls never holds a sender for long).
        """
        assert self.inbox is not None and self.pool is not None
        flow = self.client.flows[flow_name]
        async with asyncio.timeout(self.options.accept_timeout):
            added = await enqueue_event(
                self.inbox, flow, body, source=source, metrics=self.metrics, message_id=message_id, headers=headers
            )
        self.pool.wakeup.set()
        if self.delivery is not None and added:
            self.delivery.nudge()
        return added

    async def _prune_loop(self, inbox: Inbox, every: float = 3600.0) -> None:
        """Finished work older than the spec's state.retention goes, at start and then hourly."""
        keep = retention_seconds(self.client)
        while not self._stop_event.is_set():
            before = time.time() - keep
            counts: dict[str, int] = {}
            try:
                counts = await inbox.run(inbox.store.prune, before)
            except Exception as exc:  # a busy or unreachable store: the next round tries again
                self.log.warning("prune_failed", error=str(exc))
            for system, connection in self.connections.items():  # a connection's own data (the embedded queue)
                if isinstance(connection, Pruner):
                    try:
                        for what, n in (await connection.prune(before)).items():
                            counts[what] = counts.get(what, 0) + n
                    except Exception as exc:
                        self.log.warning("prune_failed", system=system, error=str(exc))
            if any(counts.values()):
                self.log.info("pruned", older_than_s=keep, **counts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), every)

    async def _heartbeat(self, inbox: Inbox, name: str, every: float = HEARTBEAT) -> None:
        """Say on the store which spec version this daemon runs, now and every ``every`` seconds: `dlq replay`
        compares it with the spec on disk."""
        while not self._stop_event.is_set():
            try:
                await inbox.run(inbox.store.register_daemon, name, self.spec_version)
            except Exception as exc:  # a busy store: the next beat says it again
                self.log.warning("heartbeat_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_event.wait(), every)

    # -- what the HTTP API sees (engine.runtime.api.Ingress) -----------------------------------------
    @property
    def body_timeout(self) -> float:
        return self.options.body_timeout

    def max_body(self, flow: str) -> int:
        trigger = self.client.flows[flow].flow.trigger
        if trigger.event is not None:
            return parse_size(trigger.event.max_body)
        return parse_size(trigger.request.max_body) if trigger.request is not None else 64_000

    async def metrics_text(self) -> str:
        await self.refresh_depth()
        return self.metrics.render()

    async def refresh_depth(self, wait: float = 1.0) -> None:
        """Read the inbox gauge of /metrics through the inbox; a store slower than ``wait`` leaves the last value
        (a scrape never waits long on the store, and never blocks the loop)."""
        if self.inbox is None:
            return
        try:
            async with asyncio.timeout(wait):
                self._depth = await self.inbox.run(self.inbox.store.depth_by_flow)
        except TimeoutError:
            self.log.warning("depth_slow", waited_s=wait, hint="the store is busy; /metrics shows the last counts")
        except Exception as exc:  # a store gone for a while: the gauge keeps its last value
            self.log.warning("depth_failed", error=str(exc))

    def _consumer_ended(self, flow: str, task: asyncio.Task[None]) -> None:
        """A queue consumer ends on its own only for a reason waiting will not fix (a refused login)."""
        self._trigger_ended("consumer_stopped", flow, task)

    def _schedule_ended(self, flow: str, task: asyncio.Task[None]) -> None:
        """A schedule loop ends on its own only when it cannot tell when to run next."""
        self._trigger_ended("schedule_stopped", flow, task)

    def _trigger_ended(self, event: str, flow: str, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.stopping:
            return
        error = task.exception()
        reason = f"{type(error).__name__}: {error}" if error else "it returned"
        self.stopped_triggers[flow] = f"{event.split('_')[0]} stopped: {reason}"
        self.log.error(event, flow=flow, error=reason, hint="the flow takes no new work until the daemon restarts")

    def _gauges(self) -> None:
        def depth() -> dict[str, float]:
            # Every flow of the spec shows, even before its first record: a dashboard sees 0, not a gap.
            empty = dict.fromkeys(("pending", "inflight", "done", "dead"), 0)
            counts = {flow: empty for flow in self.flow_names} | self._depth
            return {
                f'flow="{escape_label(flow)}",status="{status}"': float(n)
                for flow, per_status in counts.items()
                for status, n in per_status.items()
            }

        def breakers() -> dict[str, float]:
            return {
                f'system="{escape_label(name)}"': float(BREAKER_STATES[system.breaker.state])
                for name, system in self.systems.items()
            }

        def triggers_up() -> dict[str, float]:
            # 1 while a flow's schedule or queue consumer runs; 0 once it stopped (see /readyz)
            running = {n for n in self.flow_names if n in self.schedules or self._consumes(n)}
            return {f'flow="{escape_label(n)}"': 0.0 if n in self.stopped_triggers else 1.0 for n in sorted(running)}

        self.metrics.gauges["inbox_items"] = depth
        self.metrics.gauges["breaker_state"] = breakers
        self.metrics.gauges["trigger_up"] = triggers_up

    @property
    def connections(self) -> dict[str, Connection]:
        return {name: system.connection for name, system in self.systems.items()}

    def _consumes(self, flow: str) -> bool:
        event = self.client.flows[flow].flow.trigger.event
        return event is not None and event.system is not None

    # -- operations (engine.runtime.operator.Operator) ---------------------------------------------
    @property
    def client_name(self) -> str:
        return self.client.client

    def spec_version_on_disk(self) -> str | None:
        """The version of the spec on disk (None when it does not load). Loaded again only when one of its files
        changed since the last look: the console asks on every page (every 10 s on the flows page), and a load
        compiles every flow."""
        files = self._disk_files or self.client.input_files
        before = _stamp(files)
        if self._disk_seen is not None and self._disk_seen[0] == before:
            return self._disk_seen[1]
        try:
            client = load_client(self.spec, environ=self.environ, registry=self.registry)
        except SeamlineError:
            self._disk_seen = (before, None)  # the broken edit is among these files: the next edit is seen
            return None
        version = spec_version(client)
        if _stamp(files) == before:  # nothing changed while it loaded: what it read is what the stamp says
            self._disk_files = client.input_files
            self._disk_seen = (_stamp(self._disk_files), version)
        return version

    def flows(self) -> list[FlowInfo]:
        return [flow_info(self.client.flows[name]) for name in self.flow_names]

    async def intake_ready(self) -> None:
        """Returns at once, or when a reload has swapped the flows (a webhook never meets half a swap)."""
        await self._intake.wait()

    async def run_now(self, flow: str) -> RunNowResult:
        bound = self.bound.get(flow)
        if bound is None:
            running = ", ".join(self.flow_names) or "none"
            return RunNowResult(flow, "unknown", f"no flow '{flow}' runs in this daemon (running: {running})")
        schedule = bound.schedule
        if schedule is None:
            trigger = flow_info(bound.compiled).trigger
            return RunNowResult(flow, "not_a_schedule", f"flow '{flow}' is started by its {trigger}, not a schedule")
        loop = self._flow_tasks.get(flow)
        if loop is not None and not loop.done():
            if not schedule.request_pass():
                return RunNowResult(
                    flow, "busy", f"a pass of '{flow}' is running; it reads everything since its cursor"
                )
        else:  # schedules are not looped here (or the loop stopped): run one pass beside the rest
            if schedule.running or any(not task.done() for task in self._passes if task.get_name() == flow):
                return RunNowResult(
                    flow, "busy", f"a pass of '{flow}' is running; it reads everything since its cursor"
                )
            task = asyncio.create_task(self._one_pass(schedule), name=flow)
            self._passes.add(task)
            task.add_done_callback(self._passes.discard)
        self.log.info("run_now", flow=flow)
        return RunNowResult(flow, "started", f"a pass of '{flow}' started")

    async def _one_pass(self, schedule: ScheduleTrigger) -> None:
        schedule.running = True
        try:
            await schedule.run_once()
        except Exception as exc:  # logged and counted as the loop does
            self.metrics.inc("schedule_errors", schedule.flow.name)
            self.log.error("schedule_error", flow=schedule.flow.name, error=f"{type(exc).__name__}: {exc}")
        finally:
            schedule.running = False

    async def reload(self) -> ReloadResult:
        """Load and validate the spec on disk; refuse a broken one (the old keeps running), else drain and swap.

        The new spec's systems are opened (nothing is sent) before anything stops, so a spec that cannot run is
        refused with the old one untouched. Records in the workers' hands finish with the version they started
        with; webhooks and request triggers arriving during the swap wait for it (bounded by their timeouts).
        """
        async with self._reloading:
            previous = self.spec_version
            try:
                client = await asyncio.to_thread(load_client, self.spec, environ=self.environ, registry=self.registry)
                version = spec_version(client)
                if version == previous:
                    return ReloadResult(
                        True,
                        previous,
                        previous,
                        message=f"the spec on disk is version {previous}, the one running: nothing to reload",
                    )
                successor = _Successor.plan(self, client)
                monitor = successor.alert_monitor() if self.options.alerts else None  # a missing secret refuses it
                successor.open_connections()
            except SeamlineError as exc:
                errors = _reasons(exc)
                self.log.error("reload_refused", spec_version=previous, errors=list(errors))
                return ReloadResult(
                    False, previous, previous, errors, f"the spec on disk was refused; version {previous} keeps running"
                )
            self._intake.clear()
            try:
                await self._stop_flows()
                successor.install()
                assert self.inbox is not None
                await self._start_flows(self.inbox)
            finally:
                self._intake.set()
            await self._start_alerts(monitor)  # with the intake open: a slow notifier holds up no webhook
            self.log.info("reloaded", spec_version=self.spec_version, previous=previous, flows=self.flow_names)
            return ReloadResult(True, self.spec_version, previous, message=f"now running version {self.spec_version}")

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        # Off unless the OTEL_* variables ask; a provider installed by the program embedding us is left alone.
        self._traces = tracing.configure(self.environ, client=self.client.client)
        if self.delivery_only:
            await self._start_delivery_process()
            return
        if self.options.serve_http:
            check_exposure(self.options.host, self.token, self.options.dev)
        url = self.state_url
        if self.options.processes > 1 and url.lower().startswith("sqlite:") and ":memory:" in url:
            raise UsageError("--processes needs a state store the processes can share, not sqlite:///:memory:")
        # One daemon (with its delivery processes) per SQLite file: the lock waits for the processes of an
        # earlier run to be gone, so what is still in flight was left by a crash and is safe to give back.
        self.owner_lock = hold_sqlite_owner(url, wait=self.options.drain_timeout + 10)
        try:
            await self._start_primary(url)
        except BaseException:
            if self.owner_lock is not None:
                os.close(self.owner_lock)
                self.owner_lock = None
            raise

    async def _start_primary(self, url: str) -> None:
        # First: a notifier whose secret is missing stops the start, not a night.
        monitor = monitor_for(self) if self.options.alerts else None
        await self.open_connections()
        self.store = store = open_store(url, durability=durability(self.client))
        self.inbox = inbox = Inbox(store)
        if self.owner_lock is not None:
            recovered = store.requeue_inflight()
            if recovered:
                self.log.warning("recovered", items=recovered, reason="in flight when the last run stopped")
        else:
            # A shared store: only this host's claims whose process is gone are this replica's to take back now;
            # another replica's run out with their lease.
            for worker in store.inflight_workers():
                if reclaimable(worker, os.getpid()):
                    recovered = store.requeue_inflight(worker)
                    self.log.warning("recovered", items=recovered, worker=worker, reason="its process is gone")
        self._depth = store.depth_by_flow()  # the first value, before the loop refreshes it
        self._gauges()
        await self._start_flows(inbox)
        assert self.pool is not None
        self._tasks.append(asyncio.create_task(self._prune_loop(inbox), name="prune"))
        self._tasks.append(asyncio.create_task(self._heartbeat(inbox, self.pool.name), name="heartbeat"))
        await self._start_alerts(monitor)
        if self.options.serve_http:
            self._runner = web.AppRunner(build_app(self, self), access_log=None, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.options.host, self.options.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                await self.stop()  # nothing half-started stays behind: workers, connections, the store's lock
                if exc.errno == errno.EADDRINUSE:
                    raise ServeError(
                        f"port {self.options.port} on {self.options.host} is in use (another seamline daemon?); "
                        "stop it or choose another with --port"
                    ) from None
                raise ServeError(f"cannot serve the API on {self.options.host}:{self.options.port}: {exc}") from None
        self.started = True
        self.log.info(
            "started",
            flows=self.flow_names,
            state=_mask_url(url),
            api=f"http://{self.options.host}:{self.options.port}" if self.options.serve_http else None,
            spec_version=self.spec_version,
            pid=os.getpid(),
            processes=self.options.processes,
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    async def _start_flows(self, inbox: Inbox) -> None:
        """Bind the flows to the systems opened for them, then start their workers, schedules and consumers."""
        assert self.store is not None
        self._bind_flows(inbox)
        self.pool = WorkerPool(
            self._delivery(inbox),
            size=self.options.workers,
            flows=self.flow_names,
            lease=self.options.lease,
            name=delivery_worker(0, os.getpid()),
        )
        self.pool.start()
        if self.options.processes > 1:
            self.delivery = DeliveryProcesses(
                self.spec,
                self.layout,
                state_url=self.state_url,
                workers=self.options.workers,
                lease=self.options.lease,
                environ=self.environ,
                metrics=self.metrics,
                log=self.log,
                keep_fds=() if self.owner_lock is None else (self.owner_lock,),
                give_back=functools.partial(inbox.run, self.store.requeue_inflight),
            )
            await self.delivery.start()
        if self.options.schedules:
            for name, schedule in self.schedules.items():
                task = asyncio.create_task(schedule.loop(self._stop_event), name=f"schedule-{name}")
                task.add_done_callback(functools.partial(self._schedule_ended, name))
                self._flow_tasks[name] = task
        for name, bound in self.bound.items():
            if bound.queue is not None and bound.source is not None:
                consumer = bound.source.consumer
                task = asyncio.create_task(
                    consume_queue(bound.compiled, consumer, bound.queue, inbox, self.metrics), name=f"consume-{name}"
                )
                task.add_done_callback(functools.partial(self._consumer_ended, name))
                self._flow_tasks[name] = task

    async def _stop_flows(self) -> None:
        """Stop taking work (schedules, consumers), let the workers finish what they hold, close the systems.

        A worker still busy after ``drain_timeout`` is cancelled and its records go back to the inbox (as after a
        crash: the ledger and once-only intents keep a resend from doing anything twice).
        """
        triggers = [*self._flow_tasks.values(), *self._passes]
        for task in triggers:
            task.cancel()
        await asyncio.gather(*triggers, return_exceptions=True)
        self._flow_tasks.clear()
        self._passes.clear()
        await self.finish_delivery()
        for connection in self.connections.values():
            await connection.close()

    async def finish_delivery(self) -> None:
        """The workers here and in the delivery processes finish what they hold and stop (run --once, before it
        counts): afterwards the counters, this process's and the ones reported, hold their last values."""
        await asyncio.gather(
            self._drain(), self.delivery.stop(self.options.drain_timeout + 5) if self.delivery else _nothing()
        )
        self.delivery = None

    def _delivery(self, inbox: Inbox) -> Delivery:
        return Delivery(
            self.client,
            inbox,
            self.systems,
            self.registry,
            self.metrics,
            self.log,
            spec_version=self.spec_version,
            backoff=self.options.backoff,
        )

    async def _start_delivery_process(self) -> None:
        """Workers only, on the primary's store; stops when told (SIGTERM) or when the primary is gone."""
        assert self.options.delivery_channel is not None
        self.link = PrimaryLink(self.options.delivery_channel, self.metrics)
        await self.link.open()
        await self.open_connections()
        self.store = store = open_store(self.state_url, durability=durability(self.client))
        self.inbox = inbox = Inbox(store)
        self.pool = WorkerPool(
            self._delivery(inbox),
            size=self.options.workers,
            flows=self.flow_names,
            lease=self.options.lease,
            # The inbox's worker column says who took an item: the primary gives a dead process's items back by it.
            name=delivery_worker(self.options.delivery_part, os.getpid()),
        )
        self.pool.start()
        self._tasks.append(asyncio.create_task(self._follow_primary(self.link), name="primary"))
        self._tasks.append(asyncio.create_task(self._follow_nudges(self.link, self.pool), name="nudges"))
        self.started = True
        self.log.info("started", role="delivery", flows=self.flow_names, pid=os.getpid(), parent=os.getppid())

    async def _follow_nudges(self, link: PrimaryLink, pool: WorkerPool) -> None:
        while True:
            await link.nudged.wait()
            link.nudged.clear()
            pool.wakeup.set()

    async def _follow_primary(self, link: PrimaryLink) -> None:
        await link.primary_gone.wait()
        if not self.stopping:
            self.log.warning("primary_gone", reason="the channel to the primary closed: draining and stopping")
            self._stop_event.set()

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.log.info("stopping", in_flight=self.pool.in_flight if self.pool else 0)
        self._stop_event.set()
        self._intake.set()  # a reload cut short: waiting senders get their 503 "shutting down" now
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_flows()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.inbox is not None:
            self.inbox.close()  # a batch still committing finishes before the store closes
        if self.link is not None:
            await self.link.close()  # the last counts go to the primary after the drain
        if self.store is not None and not self.delivery_only and self.pool is not None:
            with contextlib.suppress(Exception):  # a store gone: the entry ages out by its last beat
                self.store.register_daemon(self.pool.name, self.spec_version, gone=True)
        if self.store is not None:
            depth = self.store.depth()
            self.store.close()
            self.log.info("stopped", pending=depth["pending"], inflight=depth["inflight"], dead=depth["dead"])
        if self.owner_lock is not None:
            os.close(self.owner_lock)  # after the store: the next daemon may give back what is in flight
            self.owner_lock = None
        if self._traces is not None:
            tracing.shutdown()  # the last spans are exported before the process ends

    async def _start_alerts(self, monitor: AlertMonitor | None) -> None:
        """Run the spec's alert rules (a reload replaces the monitor with the new spec's, which carries on from
        the old one: its open incidents and the notices still waiting to be sent).

        The old monitor finishes the check under way first, so a notice it is sending is not sent again by the
        new one; one stuck past ``ALERTS_HANDOVER`` seconds is cut short (that notice may then go out twice)."""
        previous, self._monitor = self._monitor, monitor
        if self._alerts is not None:
            running, self._alerts = self._alerts, None
            if previous is not None:
                previous.halt()
            finished, _ = await asyncio.wait({running}, timeout=ALERTS_HANDOVER)
            if not finished:
                running.cancel()
                self.log.warning("alerts_handover_cut", after_s=ALERTS_HANDOVER, hint="a notice may be sent twice")
        if monitor is not None:
            monitor.take_over(previous)
            self._alerts = asyncio.create_task(monitor.run(self._stop_event), name="alerts")
            self._tasks.append(self._alerts)
        elif previous is not None:
            for notifier in previous.notifiers:
                previous.drop_waiting(notifier, "the reloaded spec has no alert rules")

    def _reload_on_signal(self) -> None:
        """SIGHUP: reload in the background; the outcome is in the log (reloaded, or reload_refused with why)."""
        if self.stopping:
            return
        task = asyncio.create_task(self.reload(), name="reload")
        self._tasks.append(task)

    async def _drain(self) -> None:
        if self.pool is None:
            return
        self.pool.stop()
        try:
            await asyncio.wait_for(self.pool.join(), timeout=self.options.drain_timeout)
        except TimeoutError:
            # wait_for cancelled the workers still busy: what they held goes back to the inbox for the next run
            # (or the next generation after a reload) instead of waiting for its lease to run out.
            self.log.warning("drain_timeout", seconds=self.options.drain_timeout)
            if self.inbox is not None and not self.stopping:
                given_back = await self.inbox.run(self.inbox.store.requeue_inflight, self.pool.name)
                self.log.warning("given_back", items=given_back, reason="still in flight when the drain ended")

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop_event.set)
        if self.delivery_only:
            # Ctrl-C reaches the whole process group; the primary answers it by stopping its delivery processes.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            loop.add_signal_handler(signal.SIGINT, self._stop_event.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        with routed(self.log):  # the connectors' and libraries' loggers write into the daemon's JSON log
            await self.start()
            await self._stop_event.wait()
            await self.stop()


def flow_info(flow: CompiledFlow) -> FlowInfo:
    """What an operator sees of a flow: its trigger, its source and targets."""
    spec = flow.flow
    trigger = spec.trigger
    kind: Literal["schedule", "webhook", "queue", "request", "none"] = "none"
    detail = ""
    if trigger.schedule is not None:
        kind = "schedule"
        every = trigger.schedule.every
        detail = f"every {every}" if every else f"{trigger.schedule.cron} ({trigger.schedule.timezone})"
    elif trigger.request is not None:
        kind, detail = "request", f"{trigger.request.method} {trigger.request.path}"
    elif trigger.event is not None:
        if trigger.event.system is not None:
            kind, detail = "queue", f"{trigger.event.system}: {trigger.event.queue}"
        else:
            kind, detail = "webhook", trigger.event.webhook or ""
    return FlowInfo(
        name=flow.name,
        trigger=kind,
        detail=detail,
        source=spec.source.system if spec.source is not None else None,
        targets=tuple(dict.fromkeys(t.system for t in spec.all_targets())),
        description=spec.description or "",
    )


def _stamp(files: list[str]) -> tuple[tuple[str, int, int], ...]:
    """Each file's modification time and size (-1 for a file that is gone): what tells an edit."""
    stamps = []
    for name in files:
        try:
            found = os.stat(name)
        except OSError:
            stamps.append((name, -1, -1))
        else:
            stamps.append((name, found.st_mtime_ns, found.st_size))
    return tuple(stamps)


def _reasons(error: SeamlineError) -> tuple[str, ...]:
    """Each reason a spec was refused, as ``file:line:col: message`` where the error has a place."""
    if isinstance(error, SpecError):
        return tuple(d.render() for d in error.diagnostics if d.severity is Severity.ERROR)
    return (str(error),)


@dataclass
class _Successor:
    """The next generation of a reloading daemon: its spec loaded and its systems opened, not yet running."""

    daemon: Daemon
    client: CompiledClient
    flow_names: list[str]
    layout: Layout
    systems: dict[str, System] = field(default_factory=dict)

    @classmethod
    def plan(cls, daemon: Daemon, client: CompiledClient) -> _Successor:
        names = [n for n, f in client.flows.items() if f.flow.enabled]
        if daemon.options.flows:
            names = [n for n in daemon.options.flows if n in client.flows]
        systems = client.report.systems
        limits = {name: getattr(options, "limits", None) for name, options in systems.items()}
        return cls(daemon, client, names, plan_layout(client, names, limits, daemon.options.processes))

    def open_connections(self) -> None:
        """The new spec's systems, opened as the daemon opens its own (nothing is sent yet)."""
        self.systems = self.daemon.open_systems(self.client, self.flow_names, self.layout)

    def alert_monitor(self) -> AlertMonitor | None:
        """The new spec's alert monitor, made as the daemon makes its own (its notifiers' secrets read now)."""
        return monitor_for(self.daemon, client=self.client, flow_names=self.flow_names)

    def install(self) -> None:
        daemon = self.daemon
        daemon.client, daemon.flow_names, daemon.layout, daemon.systems = (
            self.client,
            self.flow_names,
            self.layout,
            self.systems,
        )
        daemon.spec_version = spec_version(self.client)
        daemon.bound = {}
        daemon.stopped_triggers.clear()  # each flow's schedule and consumer start again
        daemon.generation += 1


def run_daemon(main: Coroutine[Any, Any, T]) -> T:
    """Run the daemon's loop: uvloop when it is installed (``seamline[fast]``), asyncio's own otherwise.

    uvloop's libuv loop takes ~10% off the daemon's CPU per event (bench/README.md); the behaviour is
    the same either way, and the start log line says which loop runs.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _nothing() -> None:
    return None


def _mask_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
