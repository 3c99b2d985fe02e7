"""RabbitMQ (AMQP 0-9-1): consume queues as event triggers, publish as a target."""

from __future__ import annotations

from pydantic import Field

from engine.connector import Capability, ConnectorKind, SystemOptions, Url

__all__ = ["CONNECTOR", "AmqpOptions"]


class AmqpOptions(SystemOptions):
    url: Url = Field(description="amqp://user:pass@host:5672/vhost, usually '{{ env.AMQP_URL }}'.")
    exchange: str = Field("", description="Exchange a target publishes to; '' is the default exchange.")
    prefetch: int = Field(50, ge=1, le=10000, description="Unacknowledged messages in flight per consumer.")
    dead_letter_exchange: str | None = Field(None, description="Where messages that cannot even be parsed are sent.")

    def declared_operations(self, capability: Capability) -> frozenset[str] | None:
        # A target names the routing key it publishes with; any key is valid.
        return None


CONNECTOR = ConnectorKind(
    name="amqp",
    options=AmqpOptions,
    description="RabbitMQ queues (consume) and exchanges (publish)",
    writes=frozenset({"messages"}),
    events=True,
)
