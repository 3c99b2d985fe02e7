"""The record model's three ids, each with one meaning (DESIGN.md §2a).

- The **business key** names what a record is about (a SKU, an order): all changes of one business
  key are applied in order. From ``source.id`` (or ``trigger.event.id``), else the flow's ``key`` read
  on the incoming record, else (no id anywhere) the record's content, which orders nothing.
- The **dedupe id** says that a delivery was seen before; it is the inbox key, so a second one is
  stored once. From the spec's ``trigger.event.dedupe`` (a body field or header), else the
  transport's message id, else, for a read, the source's own row id or the business key with the
  version and the row's content. Content alone never dedupes a record: a message without any id is a
  new record, except inside a ``dedupe_window`` the spec opted into. So A -> B -> A is three changes.
- The **version** says which change of a key is newer: ``source.version`` (the cursor when left
  out) or ``trigger.event.version``. A change older than the newest one delivered for its key is
  skipped as stale by the worker (:func:`older`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.connector import parse_duration
from engine.spec.model import Flow

__all__ = [
    "Identity",
    "content_hash",
    "describe",
    "fields",
    "group_key",
    "group_rows",
    "identify",
    "identify_event",
    "identify_read",
    "older",
    "pick",
    "too_deep",
    "version_fields",
]

GROUP_ROWS = "rows"  # where a grouped record keeps its rows
MAX_DEPTH = 200  # nesting a record may have: far beyond any ERP document, far below what Python's recursion takes


@dataclass(frozen=True, slots=True)
class Identity:
    business: str  # what the record is about; changes of one business key apply in order
    dedupe: str  # the inbox key: the same delivery seen twice is stored once
    version: str | None = None  # which change is newer; None when the spec names none


def pick(record: Any, path: str) -> Any:
    """The value at a dotted path (``customer.email``), or None."""
    node = record
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (walked without recursion, so any depth is safe to ask)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def content_hash(record: Any) -> str:
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def fields(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def business_fields(flow: Flow) -> list[str]:
    """The fields the business key is read from: ``source.id``, else ``trigger.event.id``, else ``key``."""
    found = fields(flow.source.id if flow.source is not None else None)
    if not found and flow.trigger.event is not None:
        found = fields(flow.trigger.event.id)
    if not found:
        found = fields(flow.trigger.event.group_by if flow.trigger.event is not None else None)
    if not found:
        found = fields(flow.source.group_by if flow.source is not None else None)
    return found or fields(flow.key)


def version_fields(flow: Flow) -> str | None:
    """The field holding a record's version: ``source.version`` (else the cursor) or ``trigger.event.version``."""
    if flow.source is not None and flow.trigger.schedule is not None:
        return flow.source.version or flow.source.cursor
    if flow.trigger.event is not None:
        return flow.trigger.event.version
    return None


def _business(flow: Flow, record: Any) -> str:
    names = business_fields(flow)
    values = [pick(record, f) for f in names]
    if names and all(v is not None and v != "" for v in values):
        return "|".join(_text(v) for v in values)
    return "#" + content_hash(record)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)


def _version(flow: Flow, record: Any) -> str | None:
    name = version_fields(flow)
    if not name:
        return None
    value = pick(record, name)
    if value in (None, "") and isinstance(record, dict) and isinstance(record.get(GROUP_ROWS), list):
        # a grouped record: its version is its newest row's
        found = [pick(row, name) for row in record[GROUP_ROWS]]
        versions = [str(v) for v in found if v not in (None, "")]
        value = max(versions, key=_sort_key) if versions else None
    return None if value in (None, "") else str(value)


def identify_read(flow: Flow, record: Any, *, row_id: str = "") -> Identity:
    """A record of a schedule read: dedupe on the source's row id, else business key, version and content.

    Without a row id and without a version there is nothing to tell a re-read from a new change: the
    record is stored as new (a read without cursor or version delivers every record again each pass,
    which ``validate`` points out).
    """
    business = _business(flow, record)
    version = _version(flow, record)
    if row_id:
        return Identity(business, f"{business}@{row_id}", version)
    if version is not None:
        # The content is part of it: two different rows with the same id and version (a second language
        # row, a change within the cursor's second) are two records, never one dropped as a "duplicate".
        return Identity(business, f"{business}@{version}#{content_hash(record)[:12]}", version)
    return Identity(business, f"{business}@~{uuid.uuid4().hex}", version)


def identify_event(
    flow: Flow,
    record: Any,
    *,
    message_id: str = "",
    headers: Mapping[str, Any] | None = None,
    index: int | None = None,
    now: float | None = None,
) -> Identity:
    """A pushed record (webhook or queue message). ``index``: its place in a message carrying a list."""
    business = _business(flow, record)
    version = _version(flow, record)
    event = flow.trigger.event
    named = _named_dedupe(event.dedupe if event is not None else None, record, headers or {})
    if named:
        return Identity(business, f"{business}@={named}", version)
    if message_id:
        return Identity(business, f"{business}@{message_id}" + (f":{index}" if index is not None else ""), version)
    if event is not None and event.dedupe_window is not None:
        window = max(parse_duration(event.dedupe_window), 0.001)
        bucket = math.floor((time.time() if now is None else now) / window)
        return Identity(business, f"{business}@#{content_hash(record)}/{bucket}", version)
    return Identity(business, f"{business}@~{uuid.uuid4().hex}", version)


def _named_dedupe(spec: str | None, record: Any, headers: Mapping[str, Any]) -> str:
    if not spec:
        return ""
    if spec.startswith("header:"):
        wanted = spec.removeprefix("header:").lower()
        for name, value in headers.items():
            if str(name).lower() == wanted and value not in (None, ""):
                return str(value)
        return ""
    value = pick(record, spec)
    return "" if value in (None, "") else _text(value)


def identify(flow: Flow, record: Any, *, message_id: str = "") -> tuple[str, str]:
    """(business key, dedupe id) of ``record``; a read's identity, or an event's when ``flow`` has an event trigger."""
    if flow.trigger.event is not None:
        found = identify_event(flow, record, message_id=message_id)
    else:
        found = identify_read(flow, record, row_id=message_id)
    return found.business, found.dedupe


# -- versions ---------------------------------------------------------------------------------------


def _sort_key(value: str) -> tuple[int, Any]:
    """Numbers by value, then ISO times by instant (a time without a zone taken as UTC), then text."""
    try:
        return (0, float(value))
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return (2, value)
    return (1, (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)).timestamp())


def older(version: str | None, latest: str | None) -> bool:
    """Whether ``version`` is strictly older than ``latest`` (equal is not older: it is applied again)."""
    if version is None or latest is None:
        return False
    a, b = _sort_key(version), _sort_key(latest)
    if a[0] != b[0]:
        return False  # a number against a time: nothing to say, so nothing is skipped
    return bool(a[1] < b[1])


# -- grouping ---------------------------------------------------------------------------------------


def group_key(record: Any, names: list[str]) -> tuple[str, ...]:
    return tuple(_text(pick(record, n)) for n in names)


def group_rows(rows: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """Rows sharing the values of ``names`` as one record each: ``{<name>: value, ..., "rows": [...]}``.

    Groups come in the order of their first row, rows in the order they came. A dotted name keeps
    its last part as the grouped record's field (``header.order_id`` -> ``order_id``).
    """
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        key = group_key(row, names)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {n.rsplit(".", 1)[-1]: pick(row, n) for n in names}
            group[GROUP_ROWS] = []
        group[GROUP_ROWS].append(row)
    return list(groups.values())


# -- for people -------------------------------------------------------------------------------------


def describe(flow: Flow) -> dict[str, str]:
    """The three ids of ``flow`` in words (``seamline show``), and its grouping when it has one."""
    business = business_fields(flow)
    version = version_fields(flow)
    event = flow.trigger.event
    if flow.trigger.request is not None:
        return {"business key": "none (a request is answered, not stored)", "dedupe id": "none", "version": "none"}
    if event is not None:
        if event.dedupe:
            dedupe = f"{event.dedupe} (else the transport's message id)"
        else:
            dedupe = "the transport's message id (AMQP message_id, X-Message-Id, Idempotency-Key)"
        if event.dedupe_window:
            dedupe += f"; without one, the same content within {event.dedupe_window}"
        else:
            dedupe += "; without one, none: every message is a new record"
    else:
        dedupe = "the source's row id when it gives one (file drops), else business key + version + row content"
        if not version:
            dedupe += "; no version: every pass delivers every record again"
    described = {
        "business key": ", ".join(business) if business else "none: the record's content (no order between changes)",
        "dedupe id": dedupe,
        "version": (
            f"{version}" + (" (the cursor)" if flow.source is not None and version == flow.source.cursor else "")
            if version
            else "none: changes apply in arrival order, none is skipped as stale"
        ),
    }
    group = flow.source.group_by if flow.source is not None else None
    if event is not None and event.group_by is not None:
        described["group"] = f"{', '.join(fields(event.group_by))} within {event.window}"
    elif group is not None:
        described["group"] = ", ".join(fields(group))
    return described
