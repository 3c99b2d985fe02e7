"""The embedded durable queue: event flows on one machine, with no broker to run.

Messages live in a table of the state store (SQLite by default, the same file the daemon keeps its
inbox in; PostgreSQL when ``url`` says so). The semantics are RabbitMQ's, so a spec moves to the
``amqp`` connector by changing its system, not its flows:

- **Target** (``target: { system: bus, write: erp.stock.changed }``): the record is stored as JSON
  with the idempotency key as its message id; a message id already in the queue is not added twice.
- **Event trigger** (``trigger: { event: { system: bus, queue: erp.stock.changed } }``): up to
  ``prefetch`` messages are received at once, each hidden from other consumers for ``lease``; a
  message is acknowledged only after the runtime stored it in its inbox, given back (visible again
  after ``redelivery_delay``) when storing failed, and comes back by itself when its consumer died
  holding it (the lease ends). An empty queue is polled every ``poll``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from engine.connector import Capability, ConnectContext, ConnectorKind, Duration, SystemOptions, Url

if TYPE_CHECKING:
    from engine.connector import Connection

__all__ = ["CONNECTOR", "QueueOptions"]


class QueueOptions(SystemOptions):
    """Where the queues are kept and how consumers take from them."""

    queues: list[str] = Field(
        min_length=1,
        description="The queues this system carries: a target writes to one, an event trigger consumes one.",
        examples=[["erp.stock.changed"]],
    )
    url: Url | None = Field(
        None,
        description="State URL of the store holding the messages; default: the daemon's own state store (by "
        "default the client's SQLite file, .seamline/<client>.db beside the spec).",
    )
    prefetch: int = Field(50, ge=1, le=10000, description="Messages a consumer receives at once.")
    lease: Duration = Field("60s", description="How long a received message stays hidden before it comes back.")
    poll: Duration = Field("100ms", description="How often an empty queue is looked at again.")
    redelivery_delay: Duration = Field("1s", description="When a message the runtime could not store comes back.")
    lock_timeout: Duration = Field(
        "10s", description="How long a write waits for the store's lock before it fails (transiently)."
    )

    def declared_operations(self, capability: Capability) -> frozenset[str] | None:
        return frozenset(self.queues) if capability == "write" else frozenset()


def connect(options: SystemOptions, context: ConnectContext) -> Connection:
    """A connection to the queue store (opened on first use; connecting touches nothing)."""
    from connectors.queue.client import QueueConnection

    if not isinstance(options, QueueOptions):
        raise TypeError(f"the queue connector needs QueueOptions, not {type(options).__name__}")
    return QueueConnection(options, context)


CONNECTOR = ConnectorKind(
    name="queue",
    options=QueueOptions,
    description="Embedded durable queue in the state store (SQLite/PostgreSQL): events with no broker",
    events=True,
    connect=connect,
)
