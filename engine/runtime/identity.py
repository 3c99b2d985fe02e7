"""Who a record is and which version of it: the business key and the idempotency key.

- The **business key** names the thing a record is about (a SKU, an order): all changes of one
  business key are applied in order. It comes from ``source.id`` (or ``trigger.event.id``), else
  from the flow's ``key`` read on the incoming record, else from the record's content.
- The **idempotency key** is ``<business key>@<version>``; the version is the record's cursor
  value (``write_date``), else the message id, else a hash of the content. Reading the same
  version twice (an overlap window, a redelivered message) gives the same key, and the inbox
  stores it once. A later change of the same record has a new version, hence a new key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine.spec.model import Flow

__all__ = ["content_hash", "identify", "pick"]


def pick(record: Any, path: str) -> Any:
    """The value at a dotted path (``customer.email``), or None."""
    node = record
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def content_hash(record: Any) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _fields(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def identify(flow: Flow, record: Any, *, message_id: str = "") -> tuple[str, str]:
    """(business key, idempotency key) of ``record`` arriving on ``flow``."""
    id_fields = _fields(flow.source.id if flow.source is not None else None)
    if not id_fields and flow.trigger.event is not None:
        id_fields = _fields(flow.trigger.event.id)
    if not id_fields:
        id_fields = _fields(flow.key)
    values = [pick(record, f) for f in id_fields]
    if id_fields and all(v is not None and v != "" for v in values):
        business = "|".join(str(v) for v in values)
    else:
        business = "#" + content_hash(record)
    cursor = flow.source.cursor if flow.source is not None else None
    version_value = pick(record, cursor) if cursor else None
    if version_value not in (None, ""):
        version = str(version_value)
    elif message_id:
        version = message_id
    else:
        version = content_hash(record)
    return business, f"{business}@{version}"
