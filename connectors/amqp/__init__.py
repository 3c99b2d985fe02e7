"""RabbitMQ (AMQP 0-9-1): consume queues as event triggers, publish as a target.

Runnable: :mod:`connectors.amqp.client` implements the connection (opened lazily, so validating a
spec never imports aio-pika, and connecting sends nothing until the first consume or write).

- **Event trigger** (``trigger: { event: { system: bus, queue: stock.changed } }``): the queue is used
  as the broker has it, or declared durable when it does not exist yet. Up to ``prefetch`` messages
  are in flight; each one is acknowledged only after the runtime stored it in its inbox, and given
  back to the queue if storing failed. A message whose body is not JSON goes to the
  ``dead_letter_exchange`` with its reason when one is set, else to the state store's dead letters.
  A dropped connection or a broker restart is survived: the consumer reconnects with backoff, and
  messages that were not acknowledged come again (the inbox keeps one copy per message id). A message
  published without a message id is handed over with message id ``""``: never one made from its
  content, which would merge two publications of the same content into one record; the spec names
  what identifies such messages (a body field or header as the dedupe id).
- **Target** (``target: { system: bus, write: <routing key> }``): each record is published as JSON to
  ``exchange`` with the routing key named by ``write``, persistent, with the idempotency key as its
  message id, and the write returns only once the broker confirmed it. A message no queue is bound
  to receive is a terminal failure; a refused or lost connection is a transient one.
"""

from __future__ import annotations

from pydantic import Field

from engine.connector import Capability, ConnectorKind, SystemOptions, Url

__all__ = ["CONNECTOR", "AmqpOptions"]


class AmqpOptions(SystemOptions):
    """A RabbitMQ broker: where it is, where targets publish, how much a consumer takes at once."""

    url: Url = Field(
        description="amqp://user:password@host:5672/vhost (amqps:// for TLS); it carries the password, so write it "
        "as '{{ secret.AMQP_URL }}'. Query parameters such as ?heartbeat=30 are passed to the client.",
        examples=["{{ secret.AMQP_URL }}"],
    )
    exchange: str = Field(
        "",
        description="Exchange a target publishes to, with target.write as the routing key; '' is the default "
        "exchange, where the routing key is the name of the queue that receives the message.",
        examples=["", "erp.events"],
    )
    prefetch: int = Field(
        50, ge=1, le=10000, description="Messages a consumer holds unacknowledged at once (AMQP basic.qos)."
    )
    dead_letter_exchange: str | None = Field(
        None,
        description="Exchange that receives messages whose body is not JSON, with the reason in the "
        "x-seamline-reason header and the queue they came from as the routing key. When it does not exist it "
        "is declared (durable, fanout) with a durable queue of the same name bound to it. Without it, such "
        "messages go to the state store's dead letters.",
        examples=["seamline.dead-letters"],
    )

    def declared_operations(self, capability: Capability) -> frozenset[str] | None:
        # A target's `write` is a routing key, free text: the kind declares any_write, and there is no list
        # to declare here.
        return None


CONNECTOR = ConnectorKind(
    name="amqp",
    options=AmqpOptions,
    description="RabbitMQ queues (consume) and exchanges (publish, with the routing key as target.write)",
    connection="connectors.amqp.client:AmqpConnection",
    any_write=True,
)
