"""Shared machinery for connectors: a library, not a connector.

Nothing here registers a :class:`~engine.connector.ConnectorKind` or imports a connector; connectors
import from here (``engine.kit.http`` for every connector that speaks HTTP), never from each other.
"""
