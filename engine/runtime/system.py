"""A system as the runtime reaches it: its connection, budget and breaker, entered the same way by every call.

Schedule reads, request triggers and workers all go through :meth:`System.call`::

    async with system.call():                  # a worker's write, a page of a schedule read
        await system.target.write(...)
    async with system.call(priority="realtime", wait=timeout):   # a cart asking for a price
        await system.caller.call(...)

The connection's roles (:class:`~engine.connector.Source`, :class:`~engine.connector.Target`, …) are looked up
once, when the system is built; a flow asking a system for a role its connector does not have is refused
when the daemon binds the flow (:class:`MissingRole`), before any work starts.

It refuses at once when the breaker is open (:class:`BreakerOpen`, with how long is left), waits for a
slot and a rate token of the system's ``limits:`` (real-time calls before batch ones), and bounds the
call by ``limits.timeout``. What the system answered decides the breaker: a transient failure or a
timeout counts against it; any answer, a refusal included, counts for it (the system is up, the record is
what is wrong); an exception that is neither (a bug, a cancel) lets the next call be the trial instead
of leaving the breaker stuck half-open. A local check before the call never touches the breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from engine.connector import (
    Caller,
    Checker,
    Connection,
    Consumer,
    EffectFinder,
    ExistenceChecker,
    Gathering,
    Source,
    Target,
)
from engine.errors import TerminalError, TransientError, UsageError
from engine.runtime.guards import Breaker, Budget, Priority

__all__ = ["BreakerOpen", "MissingRole", "OverBudget", "System"]


class BreakerOpen(TransientError):
    """The system's circuit breaker is open: not called; try again after ``remaining`` seconds."""

    def __init__(self, system: str, remaining: float) -> None:
        super().__init__(f"{system}: circuit open (too many failures in a row); next try in {remaining:.1f} s")
        self.remaining = remaining


class OverBudget(TransientError):
    """No slot or rate token of the system's ``limits:`` came within the caller's wait: not called."""

    def __init__(self, system: str, waited: float) -> None:
        super().__init__(f"{system}: over its request budget (no slot within {waited:g} s)")


class MissingRole(UsageError):
    """A flow asks a system for something its connector cannot do (read, write, call, consume)."""

    def __init__(self, system: str, kind: str, role: str, verb: str) -> None:
        kind_text = f" ({kind})" if kind else ""
        super().__init__(
            f"system '{system}'{kind_text} cannot be {verb}: its connector has no {role} role. Use a system "
            f"whose connector can (`seamline connectors` lists what each kind does), or change the flow."
        )


_ROLES: dict[str, tuple[Any, str, str]] = {  # capability -> (role, its name, what the system cannot be)
    "read": (Source, "Source", "read (source.read)"),
    "write": (Target, "Target", "written to (target.write)"),
    "call": (Caller, "Caller", "called (source.call)"),
    "consume": (Consumer, "Consumer", "consumed (an event trigger's queue)"),
}


@dataclass
class System:
    name: str
    connection: Connection
    budget: Budget
    breaker: Breaker
    kind: str = ""  # the connector kind's name, for messages
    # Optional roles, looked up once (isinstance on a protocol is too slow for every record).
    checker: Checker | None = field(init=False, default=None)
    gathering: Gathering | None = field(init=False, default=None)
    existence: ExistenceChecker | None = field(init=False, default=None)
    effects: EffectFinder | None = field(init=False, default=None)
    takes_documents: bool = field(init=False, default=False)  # its write sends a JsonDocument's text as it is
    _roles: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        conn: Any = self.connection
        for capability, (role, _name, _verb) in _ROLES.items():
            if isinstance(conn, role):
                self._roles[capability] = conn
        self.checker = conn if isinstance(conn, Checker) else None
        self.gathering = conn if isinstance(conn, Gathering) else None
        self.existence = conn if isinstance(conn, ExistenceChecker) else None
        self.effects = conn if isinstance(conn, EffectFinder) else None
        self.takes_documents = "write" in self._roles and bool(getattr(conn, "takes_documents", False))

    @property
    def source(self) -> Source:
        return cast(Source, self._role("read"))

    @property
    def target(self) -> Target:
        return cast(Target, self._role("write"))

    @property
    def caller(self) -> Caller:
        return cast(Caller, self._role("call"))

    @property
    def consumer(self) -> Consumer:
        return cast(Consumer, self._role("consume"))

    def require(self, capability: str) -> None:
        """Refuse (:class:`MissingRole`) unless the connection has the role for ``capability``: read, write,
        call or consume. Called when a flow is bound, so a misfit stops the daemon's start, not a record."""
        self._role(capability)

    def _role(self, capability: str) -> Any:
        found = self._roles.get(capability)
        if found is None:
            _role, name, verb = _ROLES[capability]
            raise MissingRole(self.name, self.kind, name, verb)
        return found

    @asynccontextmanager
    async def call(
        self, *, priority: Priority = "batch", wait: float | None = None, slot: bool = True, timed: bool = True
    ) -> AsyncIterator[None]:
        """One call of the system, inside its breaker, budget and timeout (see the module docstring).

        ``wait``: the longest wait for a slot (None: as long as it takes); a real-time call waits only behind
        batch work (which frees a slot soon and yields it first), and is refused at once when every slot is
        another real-time call's; ``slot=False`` for a connection
        that bounds its own requests (Magento bulk gathers many writes into one); ``timed=False`` for a
        call whose own bound is elsewhere.
        """
        if not self.breaker.allow():
            raise BreakerOpen(self.name, max(self.breaker.remaining(), 0.2))
        try:
            async with (
                self._slot(priority, wait, slot),
                asyncio.timeout(self.budget.timeout) if timed else contextlib.nullcontext(),
            ):
                yield
        except (TimeoutError, TransientError) as exc:
            if isinstance(exc, OverBudget):
                self.breaker.abandon()  # never called: no verdict on the system
            else:
                self.breaker.failure()
            raise
        except TerminalError:
            self.breaker.success()  # the system answered: it is up, the record is what is wrong
            raise
        except BaseException:
            self.breaker.abandon()
            raise
        else:
            self.breaker.success()

    @asynccontextmanager
    async def _slot(self, priority: Priority, wait: float | None, slot: bool) -> AsyncIterator[None]:
        if not slot:
            yield
            return
        if priority == "realtime" and self.budget.full_of("realtime"):
            # every slot is another caller's request: load is shed at once, the caller is told to come back
            raise OverBudget(self.name, 0.0)
        held = self.budget.slot(priority)
        try:
            async with asyncio.timeout(wait) if wait is not None else contextlib.nullcontext():
                await held.__aenter__()
        except TimeoutError:
            raise OverBudget(self.name, wait or 0.0) from None
        try:
            yield
        finally:
            await held.__aexit__(None, None, None)
