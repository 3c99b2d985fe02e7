"""The state store contract: inbox, idempotency ledger, cursors, dead letters and run history.

One contract, two implementations (SQLite embedded, PostgreSQL scaled out), one shared test suite.
Who calls what:

- a **trigger** calls :meth:`StateStore.enqueue` and acknowledges upstream only after it returned:
  the inbox is durable before anything is acknowledged;
- a **worker** calls :meth:`StateStore.claim`, then per target :meth:`StateStore.delivered` (skip)
  and :meth:`StateStore.record_delivery` (after the target accepted), and finally one of
  :meth:`StateStore.complete`, :meth:`StateStore.retry_later` or :meth:`StateStore.dead_letter`;
- a **schedule** reads and advances its flow's cursor;
- the **operator CLI** lists and replays dead letters, shows and resets cursors, lists runs.

Ordering is per business key: :meth:`StateStore.claim` never hands out an item while an older
item of the same flow and key is still pending or in flight. A claimed item carries a lease; if
its worker dies, the lease runs out and the item is claimed again (so targets must be written
idempotently, which the ledger provides per target).

The record model (DESIGN.md §2a) is kept here without knowing any system:

- the inbox key is the **dedupe id** (a second enqueue of it is a no-op), ``business_key`` orders the
  changes, ``version`` says which change is newer;
- **key state** remembers per flow and business key the version last delivered and the targets it
  was delivered to (a claim hands both out: a stale change is skipped, create-only fields are sent
  only to a target that never had the key);
- an **intent** marks a once-only write (a shipment, a comment) as sent but not yet answered: a
  worker that finds one on a claimed item asks the target before sending again;
- every item ends with an ``outcome`` ("delivered", "skipped: <reason>") or in dead letters, whose
  ``error_kind`` says "terminal", "exhausted", "unknown" (a once-only write whose effect could not be
  checked) or "rejected" (rejected at read: never became a record).

A record's trace (its W3C ``traceparent``) rides on its inbox row and a dead letter keeps its trace id: both are
text the store keeps and hands back, never reads (tracing itself is the runtime's, engine/runtime/tracing.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "DaemonRecord",
    "DeadLetter",
    "Delivered",
    "Finished",
    "InboxItem",
    "NewItem",
    "Remember",
    "ReplayRecord",
    "RunRecord",
    "StateStore",
    "payload_text",
]

ItemStatus = Literal["pending", "inflight", "done", "dead"]


@dataclass(frozen=True, slots=True)
class NewItem:
    """A unit of work as a trigger hands it in."""

    flow: str
    key: str  # idempotency key: source + entity + id + version; a second enqueue of it is a no-op
    business_key: str  # changes of one business key (a SKU, an order) are applied in order
    payload: Any  # the record, JSON-serialisable
    source: str = ""  # where it came from, for people: "schedule", "amqp:erp.stock", "webhook:/hooks/x"
    version: str | None = None  # which change of the business key is newer; None when the spec names none
    group_window: float = 0.0  # an event group: claimable this long after it came, other parts join it
    # The record's trace as a W3C traceparent, carried to whichever process delivers it (None: not traced).
    traceparent: str | None = None


def payload_text(payload: Any) -> str:
    """A record as the JSON text the inbox keeps (every store writes it so; a dry run makes the same text)."""
    return json.dumps(payload)


_UNDECODED: Any = object()


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A claimed item. Its record is the JSON ``text`` the store keeps: a transform with a JSON-text path
    reads it as it is, and ``payload`` decodes it only for whoever asks (once, then kept)."""

    id: int
    flow: str
    key: str
    business_key: str
    text: str
    source: str
    status: ItemStatus
    attempts: int
    created_at: float
    last_error: str = ""
    delivered: frozenset[str] = frozenset()  # targets already in the ledger when the item was claimed
    version: str | None = None
    latest: str | None = None  # the newest version delivered for this business key, when known
    known: frozenset[str] = frozenset()  # targets this business key was delivered to before (any item)
    intents: frozenset[str] = frozenset()  # once-only targets sent but never answered: ask before resending
    outcome: str = ""  # once finished: "delivered" or "skipped: <reason>"
    traceparent: str | None = None  # the record's trace, as the trigger stored it (None: not traced)
    _decoded: Any = field(default=_UNDECODED, init=False, repr=False, compare=False)

    @property
    def payload(self) -> Any:
        """The record as Python values, decoded from ``text`` on first use."""
        value = self._decoded
        if value is _UNDECODED:
            value = json.loads(self.text)
            object.__setattr__(self, "_decoded", value)  # a cache, not state: the item stays what it was
        return value


@dataclass(frozen=True, slots=True)
class Delivered:
    """One ledger entry: ``target`` accepted the record ``key`` of ``flow``, answering ``response``."""

    flow: str
    key: str
    target: str
    response: str = ""
    once_only: bool = False  # a once-only write: its intent is cleared with this entry
    request: str = ""  # what was sent, masked and cut short: the timeline's "sent" (not read by the runtime)


@dataclass(frozen=True, slots=True)
class Remember:
    """What a finished item teaches about its business key: the version delivered, the targets that took it.

    ``version`` None leaves the key's version as it was; ``targets`` are added to those known.
    """

    flow: str
    business_key: str
    version: str | None = None
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Finished:
    """A worker's last word on an item: its outcome, its last ledger entry, what to remember of its key."""

    item_id: int
    delivery: Delivered | None = None
    remember: Remember | None = None
    outcome: str = "delivered"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    item_id: int
    flow: str
    key: str
    business_key: str
    payload: Any
    reason: str
    error_kind: str  # "terminal" (a 4xx, a transform error), "exhausted" (transient, out of retries),
    # "unknown" (a once-only write whose effect could not be checked) or "rejected" (rejected at read)
    target: str
    spec_version: str
    created_at: float
    replayed_at: float | None = None
    trace_id: str = ""  # the trace of the attempt that dead-lettered it (32 hex digits; "" when not traced)


@dataclass(frozen=True, slots=True)
class DaemonRecord:
    """A daemon (or delivery process) on this store and the spec version it runs, as it last said."""

    name: str
    spec_version: str
    started_at: float
    seen_at: float


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """One ``dlq replay``: which letters, how many went back, how many were skipped, with which spec on disk."""

    flow: str
    letters: tuple[int, ...]
    replayed: int
    skipped: int
    forced: bool
    spec_version: str
    by: str
    id: int = 0
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    flow: str
    kind: str
    started_at: float
    finished_at: float | None
    status: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One step of a record: ``received``, ``delivered`` (to ``target``, with its ``receipt``), ``dead_lettered``
    (with ``reason``, ``kind`` and the ``letter`` id) or ``replayed``."""

    at: float
    event: str
    target: str = ""
    receipt: str = ""
    request: str = ""  # delivered: what was sent to the target (masked, cut short)
    reason: str = ""
    kind: str = ""
    letter: int | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class RecordChange:
    """One inbox item of a business key (one change of the record) with what became of it, events in time order."""

    id: int
    flow: str
    dedupe_key: str
    business_key: str
    version: str | None
    source: str
    status: str
    attempts: int
    outcome: str
    last_error: str
    created_at: float
    record: Any
    events: tuple[TimelineEvent, ...] = ()


class StateStore(Protocol):
    url: str

    def close(self) -> None: ...

    def schema_version(self) -> int: ...

    # inbox ------------------------------------------------------------------------------------
    def enqueue(self, items: Sequence[NewItem]) -> int:
        """Store items durably; returns how many were new (a known key is skipped, not an error)."""
        ...

    def claim(
        self,
        worker: str,
        limit: int,
        lease: float,
        flows: Sequence[str] | None = None,
        *,
        text_budget: int | None = None,
    ) -> list[InboxItem]:
        """Up to ``limit`` items ready to work on, the oldest first, one per business key; with ``text_budget``, only
        as many of those as fit into that many characters of record text (always the first).

        Each item carries the targets the ledger already holds for it (``InboxItem.delivered``).
        """
        ...

    def complete(self, item_id: int, *, delivery: Delivered | None = None) -> None:
        """Mark the item done; ``delivery`` (its last target's receipt) goes into the ledger in the same transaction."""
        ...

    def finish(self, finished: Finished) -> None:
        """Mark the item done with its outcome; its last ledger entry and its key state in the same transaction."""
        ...

    def commit_batch(self, new: Sequence[NewItem] = (), done: Sequence[Finished] = ()) -> list[bool]:
        """Enqueue ``new`` and finish ``done`` in one transaction (group commit); returns, per new item, whether
        it was new."""
        ...

    def retry_later(self, item_id: int, delay: float, error: str, *, count_attempt: bool = True) -> None:
        """Give the item back after ``delay`` seconds; its attempts count goes up by one.

        ``count_attempt=False`` when the item was never tried (the target's breaker was open).
        """
        ...

    def release(self, item_ids: Sequence[int]) -> None:
        """Give claimed items back at once, without counting an attempt (a graceful shutdown)."""
        ...

    def renew(self, worker: str, item_ids: Sequence[int], lease: float) -> list[int]:
        """Extend ``worker``'s claims among ``item_ids`` to ``lease`` seconds from now, even one whose lease ran out
        while no one else took it; returns the ids among them that another worker holds now (it took them after
        their lease ran out)."""
        ...

    def dead_letter(
        self,
        item_id: int,
        reason: str,
        *,
        error_kind: str,
        target: str = "",
        spec_version: str = "",
        trace_id: str = "",
    ) -> int: ...

    def inflight_workers(self) -> list[str]:
        """The workers that hold claimed items now (a replica looks for its own earlier life's claims)."""
        ...

    def requeue_inflight(self, worker: str | None = None) -> int:
        """Give back every claimed item at once (no attempt counted); returns how many.

        For a store that only one daemon uses (the embedded SQLite file): at start, whatever is in
        flight was left by a crash of the previous run. Shared stores rely on leases instead.
        ``worker``: only what that worker claimed (a delivery process that is known to be gone).
        """
        ...

    def reject(self, item: NewItem, reason: str, *, trace_id: str = "") -> int:
        """Store an item that cannot even be read (a message that is not JSON, a bad IDoc) straight into dead
        letters, kind "rejected"; returns the dead letter's id, 0 when the same item was rejected before."""
        ...

    def absorb(self, item: InboxItem, window: float, names: Sequence[str]) -> InboxItem:
        """An event group: the pending parts of ``item``'s business key that came within ``window`` seconds of it
        join it (their rows appended to its ``rows`` in arrival order, the parts marked done as merged), in one
        transaction; returns the item with the grouped payload."""
        ...

    def depth(self, flow: str | None = None) -> dict[str, int]:
        """Items per status."""
        ...

    def depth_by_flow(self) -> dict[str, dict[str, int]]:
        """Items per flow and status, in one query (the inbox gauge of /metrics)."""
        ...

    def item(self, item_id: int) -> InboxItem | None: ...

    # ledger -----------------------------------------------------------------------------------
    def delivered(self, flow: str, key: str, target: str) -> bool: ...

    def record_delivery(
        self,
        flow: str,
        key: str,
        target: str,
        response: str = "",
        *,
        remember: Remember | None = None,
        once_only: bool = False,
        request: str = "",
    ) -> None:
        """A target accepted the record: into the ledger (and its intent, if any, is cleared)."""
        ...

    def mark_intent(self, flow: str, key: str, target: str) -> None:
        """A once-only write is about to be sent; committed before it is (see the module docstring)."""
        ...

    def clear_intent(self, flow: str, key: str, target: str) -> None:
        """The target answered a once-only write with a refusal: it had no effect, nothing to ask about."""
        ...

    def deliveries(self, flow: str | None = None) -> int: ...

    # cursors ----------------------------------------------------------------------------------
    def get_cursor(self, flow: str) -> str | None: ...

    def set_cursor(self, flow: str, value: str | None) -> None: ...

    def cursors(self) -> dict[str, str]: ...

    # dead letters -----------------------------------------------------------------------------
    def dead_letters(
        self, flow: str | None = None, *, include_replayed: bool = False, letter_id: int | None = None
    ) -> list[DeadLetter]:
        """Dead letters, oldest first (``letter_id``: that one only, when it is there)."""
        ...

    def timeline(self, business_key: str, *, flow: str | None = None, limit: int = 20) -> list[RecordChange]:
        """The newest ``limit`` changes of ``business_key`` (in ``flow``, or any), newest first, each with its
        events: received, delivered to each target with the receipt the ledger keeps, dead-lettered, replayed."""
        ...

    def superseded(self, dead_letter_ids: Sequence[int]) -> list[int]:
        """The dead letters among these whose record has had a newer change delivered since (same business key)."""
        ...

    def replay(self, dead_letter_ids: Sequence[int], *, include_superseded: bool = False) -> int:
        """Put dead-lettered items back in the inbox (attempts reset); returns how many.

        A superseded letter (see :meth:`superseded`) is skipped unless ``include_superseded``: replaying
        it would apply an older change over a newer one. Replaying a letter of kind "unknown" clears its
        intents: the person replaying it has checked the target, and the write is sent.
        """
        ...

    # daemons and replays ----------------------------------------------------------------------
    def register_daemon(self, name: str, spec_version: str, *, gone: bool = False) -> None:
        """A daemon says which spec version it runs (at start and every little while); ``gone`` when it stops."""
        ...

    def daemons(self, seen_within: float) -> list[DaemonRecord]:
        """The daemons that said they run in the last ``seen_within`` seconds."""
        ...

    def record_replay(self, replay: ReplayRecord) -> int: ...

    def replays(self, limit: int = 20) -> list[ReplayRecord]: ...

    # runs -------------------------------------------------------------------------------------
    def start_run(self, flow: str, kind: str) -> int: ...

    def finish_run(self, run_id: int, status: str, counts: dict[str, int]) -> None: ...

    def runs(self, flow: str | None = None, limit: int = 20) -> list[RunRecord]: ...

    # retention --------------------------------------------------------------------------------
    def prune(self, before: float, *, chunk: int = 5000) -> dict[str, int]:
        """Delete finished work older than ``before`` (epoch seconds); returns how many rows per kind.

        Delivered inbox items with their ledger entries, replayed dead letters, finished runs, key state (a
        key's last version and targets) not touched since. Open and dead items, and dead letters not
        replayed, are never deleted. (A connector's own tables are its own to prune: the embedded queue's
        acked messages, connectors/queue.)
        """
        ...
