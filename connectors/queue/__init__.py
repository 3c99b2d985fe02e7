"""The embedded durable queue: event flows on one machine, with no broker to run.

Messages live in the queue's own table, in the database ``url`` names: by default the daemon's own
state database (the client's SQLite file, beside its inbox; PostgreSQL when the state URL says so).
The connector creates, migrates and prunes that table itself (:mod:`connectors.queue.store`); the
state store knows nothing of it. The semantics are RabbitMQ's, so a spec moves to the ``amqp``
connector by changing its system, not its flows:

- **Target** (``target: { system: bus, write: erp.stock.changed }``): the record is stored as JSON
  with the idempotency key as its message id; a message id already in the queue is not added twice.
- **Event trigger** (``trigger: { event: { system: bus, queue: erp.stock.changed } }``): up to
  ``prefetch`` messages are received at once, each hidden from other consumers for ``lease``; a
  message is acknowledged only after the runtime stored it in its inbox, given back (visible again
  after ``redelivery_delay``) when storing failed, and comes back by itself when its consumer died
  holding it (the lease ends). An empty queue is polled every ``poll``.
- **Retention**: an acked message stays, so its message id published again is recognised, until the
  runtime prunes it with the rest of the state (``state.retention``) through the connection's ``prune``.
"""

from __future__ import annotations

from pydantic import Field

from engine.connector import Capability, ConnectorKind, Duration, SystemOptions, Url

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


CONNECTOR = ConnectorKind(
    name="queue",
    options=QueueOptions,
    description="Embedded durable queue in the state store (SQLite/PostgreSQL): events with no broker",
    connection="connectors.queue.client:QueueConnection",
    operations_in="queues",
)
