"""How one file's records become what a reader hands over: stable ids, rejections, groups and pages.

Pure functions, no disk: :class:`connectors.file.client.FileConnection` calls them for both of its
readers. ``read`` (a schedule trigger) turns a file's :class:`~connectors.file.formats.Entry` values
into :class:`engine.connector.ReadItem`\\ s with :func:`read_items`, orders them into groups with
:func:`units` and cuts pages with :func:`pages`; ``consume`` (an event trigger) takes :func:`row_id`
and :func:`rejection` for its messages, so a record has the same id and the same reason either way.

Grouping (``group_by``): rows sharing a group key (the values at the dotted paths, a missing field
counting as null) are made contiguous: groups in the order of their first row, rows of a group in
file order. A rejected row belongs to no group; it stays a unit of its own at its place in the file.
Pages are cut only between units, so a group is never split; a group larger than the page size is a
page of its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

from connectors.file.formats import Entry
from engine.connector import ReadItem

__all__ = [
    "content_digest",
    "field_value",
    "group_key",
    "matches",
    "pages",
    "read_items",
    "rejection",
    "row_id",
    "units",
]


def content_digest(content: bytes) -> str:
    """The file's content hash as it appears in its rows' ids: sha256, the first 12 hex digits."""
    return hashlib.sha256(content).hexdigest()[:12]


def row_id(name: str, digest: str, entry: Entry) -> str:
    """``<file>:<content digest>:<record index>``: the same however often the file is read, new when it changes.

    ``name`` is the file's path relative to the drop directory; the index counts every record of the
    file, good or bad, from 0 in file order (not its place in a page, which grouping may change).
    """
    return f"{name}:{digest}:{entry.index}"


def rejection(name: str, entry: Entry) -> str:
    """Why a malformed record cannot be handed over as data: ``<file>: line <n>: <what is wrong>``."""
    return f"{name}: {entry.error}"


def field_value(record: Any, path: str) -> Any:
    """The value at a dotted path ('E1MARAM.MATNR'); None when any step is missing or not a map."""
    node = record
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def matches(record: Any, wanted: Mapping[str, Any] | None) -> bool:
    """Whether every dotted path in ``wanted`` holds exactly the value given (a read's ``filter``)."""
    return all(field_value(record, str(path)) == value for path, value in (wanted or {}).items())


def read_items(name: str, digest: str, entries: Sequence[Entry], wanted: Mapping[str, Any] | None) -> list[ReadItem]:
    """The file's records in file order, each a ReadItem with its id; rejected ones carry their reason.

    ``wanted`` (the read's filter) drops good records whose fields do not match; a rejected record is
    always kept, as nothing can be said about its fields and its reason must reach dead letters.
    """
    items: list[ReadItem] = []
    for entry in entries:
        if not entry.ok:
            items.append(ReadItem({"raw": entry.raw}, id=row_id(name, digest, entry), rejected=rejection(name, entry)))
        elif matches(entry.data, wanted):
            items.append(ReadItem(entry.data, id=row_id(name, digest, entry)))
    return items


def _hashable(value: Any) -> Hashable:
    """A group-key part: scalars as they are, maps and lists as their canonical JSON."""
    if isinstance(value, dict | list):
        return ("json", json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))
    return value if isinstance(value, Hashable) else ("repr", repr(value))


def group_key(record: Any, group_by: Sequence[str]) -> tuple[Hashable, ...]:
    """The values at ``group_by``'s paths, in order, as one hashable key."""
    return tuple(_hashable(field_value(record, path)) for path in group_by)


def units(items: Sequence[ReadItem], group_by: Sequence[str] | None) -> list[list[ReadItem]]:
    """The items as the runs a page must not split: one per item, or with ``group_by`` one per group.

    Groups come in the order of their first row and keep their rows in file order; a rejected item
    is a unit of its own at its place. An empty or missing ``group_by`` groups nothing.
    """
    if not group_by:
        return [[item] for item in items]
    ordered: list[list[ReadItem]] = []
    by_key: dict[tuple[Hashable, ...], list[ReadItem]] = {}
    for item in items:
        if item.rejected:
            ordered.append([item])
            continue
        key = group_key(item.data, group_by)
        unit = by_key.get(key)
        if unit is None:
            unit = by_key[key] = []
            ordered.append(unit)
        unit.append(item)
    return ordered


def pages(runs: Sequence[list[ReadItem]], page_size: int) -> Iterator[list[ReadItem]]:
    """Pages of at most ``page_size`` items, cut only between runs; a run larger than that is one page."""
    size = max(1, page_size)
    page: list[ReadItem] = []
    for run in runs:
        if page and len(page) + len(run) > size:
            yield page
            page = []
        page.extend(run)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page
