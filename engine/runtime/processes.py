"""Delivery processes: one daemon over several cores (``seamline run --processes N``).

One Python process fills its core at ~1,000-1,300 events/s on the benchmark machine (bench/README.md):
the webhook server, the HTTP client, SQLite and the transforms share one event loop and one GIL. With
``--processes N`` the daemon (the primary) keeps everything that must happen once — the HTTP API,
webhooks, request triggers, schedules, queue consumers, pruning, crash recovery — and starts N-1
delivery processes that only claim inbox items and deliver them, against the same state store.

Nothing new keeps them consistent: the store already hands each item, and each business key's next
change, to one worker at a time across processes (``BEGIN IMMEDIATE`` in SQLite, ``SKIP LOCKED`` in
PostgreSQL), and the ledger makes a redelivered item a no-op at its targets. What this module adds:

- a socket pair per delivery process: it reports its metrics over it every second (the primary's
  /metrics shows the sum); the primary nudges it when webhooks arrive (one byte per loop tick), so
  it claims at once instead of at its next idle poll; and it reads end-of-file when the primary is
  gone, even after a kill -9, and then drains as on SIGTERM;
- ``limits:`` split between the processes so together they stay inside them; a system whose
  concurrency is smaller than the number of processes stays with the primary, and so do the flows
  that write to it;
- a delivery process that dies is started again; the primary's SIGTERM drains them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.connector import Limits
from engine.flow import CompiledClient
from engine.runtime.logs import JsonLog
from engine.runtime.metrics import Metrics

__all__ = ["HOST", "DeliveryProcesses", "Layout", "PrimaryLink", "delivery_worker", "plan_layout", "reclaimable"]

REPORT_EVERY = 1.0
REPORT_LIMIT = 16 * 1024 * 1024
REPORT_LAST = 5.0  # seconds a stopped process's last report may take to arrive


@dataclass(frozen=True)
class Layout:
    """How ``processes`` processes divide a client's delivery work."""

    processes: int
    pinned: frozenset[str]  # systems whose whole budget stays with the primary
    shared_flows: tuple[str, ...]  # flows every process delivers; the others only the primary
    shared_systems: frozenset[str] = frozenset()  # what the shared flows write to: the budgets to split

    def share(self, system: str, part: int) -> tuple[int, int]:
        """The (part, parts) of ``system``'s budget process ``part`` gets (0 is the primary).

        Only the systems every process writes to are split; a source only the primary reads (a schedule,
        a request trigger, a queue) keeps its whole budget there.
        """
        if self.processes == 1 or system not in self.shared_systems:
            return (0, 1)
        return (part, self.processes)


HOST = socket.gethostname()


def delivery_worker(part: int, pid: int) -> str:
    """The worker name a process claims under: ``<host>:<pid>``, a delivery process's with ``/delivery-<part>``.

    The inbox keeps it with each claimed item, so a replica restarted on the same host can tell its own
    earlier life's claims (a process that is gone) from a live neighbour's, and take them back at once
    instead of waiting out their lease (:func:`reclaimable`).
    """
    return f"{HOST}:{pid}" + (f"/delivery-{part}" if part else "")


def reclaimable(worker: str, own_pid: int) -> bool:
    """Whether ``worker``'s claims were left by a process of this host that is gone (or by this pid's earlier life).

    Called once at a replica's start, before it claims anything: a claim under its own pid is then an
    earlier process's that had the same pid (a container's pid 1).
    """
    host, _, rest = worker.partition(":")
    pid_text = rest.split("/", 1)[0]
    if host != HOST or not pid_text.isdigit():
        return False  # another host's replica, or a name from an older release: its lease decides
    pid = int(pid_text)
    if pid == own_pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


def plan_layout(
    client: CompiledClient, flows: Sequence[str], limits: Mapping[str, Limits | None], processes: int
) -> Layout:
    """Which flows the delivery processes may take: those whose every target system can be split."""
    pinned = frozenset(
        system
        for system, limit in limits.items()
        if processes > 1 and limit is not None and limit.concurrency is not None and limit.concurrency < processes
    )
    shared = tuple(
        name
        for name in flows
        if not any(t.system in pinned for t in client.flows[name].flow.all_targets())
        and any(True for _ in client.flows[name].flow.all_targets())
    )
    written = frozenset(t.system for name in shared for t in client.flows[name].flow.all_targets())
    return Layout(processes, pinned, shared, written)


class DeliveryProcesses:
    """The primary's side: start the delivery processes, take their reports, restart and stop them."""

    def __init__(
        self,
        spec: Path,
        layout: Layout,
        *,
        state_url: str,
        workers: int,
        lease: float,
        environ: Mapping[str, str],
        metrics: Metrics,
        log: JsonLog,
        keep_fds: Sequence[int] = (),
        give_back: Callable[[str], Awaitable[int]] | None = None,
    ) -> None:
        """``give_back(worker)``: return a gone process's claimed items to the inbox (else they wait out the lease)."""
        self.spec = spec
        self.layout = layout
        self.state_url = state_url
        self.workers = workers
        self.lease = lease
        self.environ = dict(environ)
        self.metrics = metrics
        self.log = log
        self.keep_fds = tuple(keep_fds)
        self.give_back = give_back
        self.running: dict[int, asyncio.subprocess.Process] = {}
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._nudging = False
        self._tasks: list[asyncio.Task[None]] = []
        self._readers: list[asyncio.Task[None]] = []  # each process's reports, read to its end-of-file
        self._stopping = False

    def command(self, part: int, channel: int) -> list[str]:
        flows = [arg for name in self.layout.shared_flows for arg in ("--flow", name)]
        return [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(self.spec),
            "--workers",
            str(self.workers),
            "--lease",
            str(self.lease),
            "--processes",
            str(self.layout.processes),
            "--delivery-part",
            str(part),
            "--delivery-channel",
            str(channel),
            "--log-level",
            self.log.level,
            *flows,
        ]

    async def start(self) -> None:
        if not self.layout.shared_flows:
            self.log.warning(
                "delivery_processes_idle",
                reason="no flow can be shared: each writes to a system whose limits.concurrency is below "
                "--processes, or has no target",
                pinned=sorted(self.layout.pinned),
            )
            return
        for part in range(1, self.layout.processes):
            await self._spawn(part)
            self._tasks.append(asyncio.create_task(self._supervise(part), name=f"delivery-{part}"))

    async def _spawn(self, part: int) -> None:
        mine, theirs = socket.socketpair()
        # The state URL goes by environment, not argv: `ps` shows argv, and the URL may hold a password.
        env = {**self.environ, "SEAMLINE_STATE_URL": self.state_url}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(part, theirs.fileno()), pass_fds=(theirs.fileno(), *self.keep_fds), env=env
            )
        finally:
            theirs.close()
        self.running[part] = process
        # A report is one line of JSON; a client with many flows makes long ones (the default limit is 64 KiB).
        reader, writer = await asyncio.open_connection(sock=mine, limit=REPORT_LIMIT)
        self._writers[part] = writer
        reports = asyncio.create_task(self._reports(part, process.pid, reader, writer))
        self._tasks.append(reports)
        self._readers.append(reports)
        self.log.info("delivery_process_started", part=part, pid=process.pid, flows=list(self.layout.shared_flows))

    async def _reports(self, part: int, pid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                with contextlib.suppress(ValueError):
                    self.metrics.absorb(f"{part}:{pid}", json.loads(line)["metrics"])
        finally:
            writer.close()

    def nudge(self) -> None:
        """New items are in the inbox: the delivery processes claim now (once per loop tick, however many)."""
        if not self._nudging:
            self._nudging = True
            asyncio.get_running_loop().call_soon(self._send_nudges)

    def _send_nudges(self) -> None:
        self._nudging = False
        for writer in self._writers.values():
            if not writer.is_closing() and writer.transport.get_write_buffer_size() < 1024:
                writer.write(b"!")

    async def _supervise(self, part: int) -> None:
        delay = 1.0
        while True:
            process = self.running[part]
            code = await process.wait()
            if self._stopping:
                return
            given = await self._give_back(part, process.pid)
            self.log.error("delivery_process_exited", part=part, code=code, given_back=given, restart_in_s=delay)
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                if self._stopping:
                    return
                try:
                    await self._spawn(part)
                    break
                except OSError as exc:  # out of processes or descriptors: try again later, and say so
                    self.log.error("delivery_process_failed", part=part, error=str(exc), retry_in_s=delay)

    async def _give_back(self, part: int, pid: int) -> int:
        """The items a gone process had claimed, back to the inbox at once (no attempt counted)."""
        if self.give_back is None:
            return 0
        try:
            return await self.give_back(delivery_worker(part, pid))
        except Exception as exc:  # the store is busy or gone: the items' leases return them later
            self.log.warning("give_back_failed", part=part, error=str(exc))
            return 0

    async def stop(self, timeout: float) -> None:
        """SIGTERM to every delivery process, then wait for their drains (kill after ``timeout``)."""
        self._stopping = True
        for process in self.running.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for part, process in self.running.items():
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TimeoutError:
                self.log.warning("delivery_process_killed", part=part, pid=process.pid, after_s=timeout)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                await self._give_back(part, process.pid)
        # A drained process's last counts are on their way (it reports after its drain, then closes): read them
        # to the end, so whoever counts after a stop (run --once's summary) counts every record.
        if self._readers:
            _, late = await asyncio.wait(self._readers, timeout=REPORT_LAST)
            if late:  # their last counts are not in the sum: say so rather than let a summary come up short
                self.log.warning("delivery_report_lost", processes=len(late), waited_s=REPORT_LAST)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class PrimaryLink:
    """A delivery process's side of its socket pair: reports up, and learns when the primary is gone."""

    def __init__(self, channel: int, metrics: Metrics) -> None:
        self.channel = channel
        self.metrics = metrics
        self.primary_gone = asyncio.Event()
        self.nudged = asyncio.Event()  # the primary took new items into the inbox
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        reader, self._writer = await asyncio.open_connection(sock=socket.socket(fileno=self.channel))
        self._tasks = [asyncio.create_task(self._watch(reader)), asyncio.create_task(self._report_loop())]

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):  # nudges; end-of-file when the primary is gone
                self.nudged.set()
        self.primary_gone.set()

    async def _report_loop(self) -> None:
        with contextlib.suppress(ConnectionError):
            while not self.primary_gone.is_set():
                await self.report()
                await asyncio.sleep(REPORT_EVERY)

    async def report(self) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        self._writer.write(json.dumps({"metrics": self.metrics.snapshot(), "pid": os.getpid()}).encode() + b"\n")
        await self._writer.drain()

    async def close(self) -> None:
        """The last counts (after the drain), then the channel closes."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(ConnectionError):
            await self.report()
        if self._writer is not None:
            self._writer.close()
