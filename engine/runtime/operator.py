"""What the operator's surfaces (the JSON API, the console, ``seamline trigger`` and ``reload``) ask of a daemon.

The HTTP API sees the daemon through narrow interfaces: :class:`~engine.runtime.api.Ingress` for the data
path (webhooks, request triggers, metrics) and :class:`Operator` here for operations. Reading state goes
through the daemon's :class:`~engine.runtime.inbox.Inbox` (``await operator.inbox.run(store.method, ...)``),
never through the store on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from engine.runtime.inbox import Inbox
from engine.runtime.system import System
from engine.secrets import Masker

__all__ = ["FlowInfo", "Operator", "ReloadResult", "RunNowResult"]


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """One running flow as an operator sees it."""

    name: str
    trigger: Literal["schedule", "webhook", "queue", "request", "none"]
    detail: str  # the cron and timezone, the webhook path, the queue, the request path
    source: str | None  # the source system, if any
    targets: tuple[str, ...]  # the target systems
    description: str = ""


@dataclass(frozen=True, slots=True)
class RunNowResult:
    """What ``run_now`` did. ``status``: started (a pass began), busy (one is running), unknown (no such flow),
    not_a_schedule (the flow has no schedule to run)."""

    flow: str
    status: Literal["started", "busy", "unknown", "not_a_schedule"]
    message: str


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What ``reload`` did: ``reloaded`` with the new version, or refused with why (the old spec keeps running)."""

    reloaded: bool
    spec_version: str  # the version running after the call
    previous: str  # the version running before it
    errors: tuple[str, ...] = field(default_factory=tuple)  # why the new spec was refused (file:line: message)
    message: str = ""


class Operator(Protocol):
    """A running daemon, as operations see it."""

    @property
    def client_name(self) -> str: ...

    @property
    def spec_version(self) -> str:
        """The spec version running now (lookup tables and every file a flow reads included)."""
        ...

    def spec_version_on_disk(self) -> str | None:
        """The version of the spec on disk now (None when it does not load): differs after an edit not reloaded."""
        ...

    @property
    def inbox(self) -> Inbox | None: ...

    @property
    def masker(self) -> Masker:
        """Replaces the secret values the daemon knows in any text: the console masks what it shows with it."""
        ...

    @property
    def systems(self) -> Mapping[str, System]:
        """Each system's connection, budget and breaker."""
        ...

    def flows(self) -> list[FlowInfo]: ...

    @property
    def stopped_triggers(self) -> Mapping[str, str]:
        """Flow -> why its schedule or consumer stopped (/readyz says degraded)."""
        ...

    async def run_now(self, flow: str) -> RunNowResult:
        """Run a schedule flow's pass now, as its cron would (returns once the pass has started)."""
        ...

    async def reload(self) -> ReloadResult:
        """Load and validate the spec on disk; refuse a broken one, else drain and swap to it."""
        ...
