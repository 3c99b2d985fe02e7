"""A flow bound to its systems once: what starts its work, where it reads from, what it writes to.

The daemon supervises bound flows; it does not reach into a flow's parts. :func:`bind` looks the flow's
systems up once (each a :class:`~engine.runtime.system.System`: connection, budget, breaker) and builds
the one thing that starts its work: a schedule that pages through its source, a webhook path or a queue
it consumes (events into the inbox), or a request handler that answers a caller from its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.connector import Registry, SystemOptions
from engine.flow import CompiledFlow
from engine.runtime.inbox import Inbox
from engine.runtime.logs import JsonLog
from engine.runtime.metrics import Metrics
from engine.runtime.system import System
from engine.runtime.triggers import RequestHandler, ScheduleTrigger

__all__ = ["BoundFlow", "bind"]


@dataclass
class BoundFlow:
    compiled: CompiledFlow
    source: System | None = None  # read by a schedule, called by a request, consumed by an event trigger
    targets: dict[str, System] = field(default_factory=dict)  # by target label
    schedule: ScheduleTrigger | None = None
    request: RequestHandler | None = None
    webhook: str | None = None  # the path the daemon serves for it
    queue: str | None = None  # the queue it consumes on its source system

    @property
    def name(self) -> str:
        return self.compiled.name


def bind(
    compiled: CompiledFlow,
    systems: Mapping[str, System],
    systems_options: Mapping[str, SystemOptions],
    *,
    inbox: Inbox | None,
    metrics: Metrics,
    log: JsonLog,
    registry: Registry,
) -> BoundFlow:
    """``compiled`` with its systems looked up once and its trigger built (``inbox`` None: a delivery process,
    which only writes, builds no trigger)."""
    flow = compiled.flow
    targets = {t.label: systems[t.target.system] for t in compiled.targets if t.target is not None}
    for system in targets.values():
        system.require("write")  # a system that cannot be written to is refused now, not at its first record
    bound = BoundFlow(compiled, targets=targets)
    origin = flow.source.system if flow.source is not None else None
    event = flow.trigger.event
    if origin is None and event is not None and event.system is not None:
        origin = event.system
    if origin is not None and origin in systems:
        bound.source = systems[origin]
    if inbox is None:
        return bound
    if flow.trigger.schedule is not None and bound.source is not None:
        kind = registry.get(systems_options[bound.source.name].connector)
        keeps_groups = kind is not None and kind.keeps_groups
        bound.source.require("read")
        bound.schedule = ScheduleTrigger(compiled, bound.source, inbox, metrics, log, keeps_groups=keeps_groups)
    elif event is not None and event.webhook is not None:
        bound.webhook = event.webhook
    elif event is not None and event.queue is not None and bound.source is not None:
        bound.source.require("consume")
        bound.queue = event.queue
    elif flow.trigger.request is not None and bound.source is not None:
        bound.source.require("call")
        bound.request = RequestHandler(compiled, bound.source, metrics)
    return bound
