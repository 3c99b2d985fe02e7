"""One reading path for previews: `seamline map` and golden cases read a sample as the daemon reads its source.

A sample file is read through the flow's own source connector when the connector reads files (a file
drop's format, delimiter, decimal comma, encoding, IDoc split and mandatory-segment checks: its
:attr:`~engine.connector.ConnectorKind.sample`), else as the records an API sends (JSON, or XML/CSV
read generically). The rows then take the daemon's own next steps (:func:`engine.runtime.triggers.read_page`:
grouping, rows rejected at read) and the flow's transforms. Each record ends as what each target would
be sent, or with the reason it would not be: rejected at read, dead-lettered (a transform error), or
skipped, exactly as the daemon would count it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.connector import default_registry
from engine.errors import SeamlineError, TransformError
from engine.flow import CompiledFlow
from engine.runtime.identity import fields, group_rows, pick
from engine.runtime.triggers import read_page

__all__ = ["Previewed", "SampleError", "preview_file", "preview_rows", "read_sample"]


class SampleError(SeamlineError):
    """A sample file cannot be read at all; the message names the file and, when known, the line."""


@dataclass(frozen=True, slots=True)
class Previewed:
    """One record of a sample: what each target would be sent, or why nothing would be."""

    record: int  # 1-based, in the order the records came
    payloads: dict[str, Any] | None  # target label -> payload; None when the record is not delivered
    problem: str = ""  # "rejected at read: …", "would be dead-lettered: …" or "skipped: …"


def read_sample(flow: CompiledFlow, path: Path) -> tuple[list[Any], bool]:
    """The rows of ``path`` as the flow's source hands them over, and whether the file held one record only."""
    from engine.testing import GoldenInputError, read_input

    entity = _entity(flow)
    options = flow.source_options
    kind = default_registry().get(options.connector) if options is not None else None
    if kind is not None and kind.sample is not None and entity is not None and options is not None:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise SampleError(f"{path}: cannot read the sample: {exc.strerror or exc}") from None
        try:
            return kind.sample(options, entity, content, path.name), False
        except ValueError as exc:
            raise SampleError(f"{path}: {exc}") from None
    try:
        data = read_input(path)
    except GoldenInputError as exc:
        raise SampleError(str(exc)) from None
    return (data, False) if isinstance(data, list) else ([data], True)


def preview_file(flow: CompiledFlow, path: Path, *, name: str | None = None) -> tuple[list[Previewed], bool]:
    """Every record of the sample at ``path`` through the flow, and whether the file held one record only.

    ``name`` names the records in error messages (``<name>`` for a file of one, ``<name>[i]`` else).
    """
    rows, single = read_sample(flow, path)
    return preview_rows(flow, rows, name=name or path.name, single=single), single


def preview_rows(flow: CompiledFlow, rows: list[Any], *, name: str = "sample", single: bool = False) -> list[Previewed]:
    """Rows as the daemon would take them (grouped, rejected at read), then each record's payloads or problem."""
    event = flow.flow.trigger.event
    if flow.flow.source is not None and flow.flow.source.read is not None:
        page = read_page(flow, rows, source=f"preview:{name}")
        records = [item.payload for item in page.items]
        rejected = [reason for _, reason in page.rejected]
    else:
        # an event flow's sample: each row a message; a group_by flow's messages as if within one window
        records = rows
        rejected = []
        if event is not None and event.group_by is not None:
            records = group_rows(rows, fields(event.group_by))
    out: list[Previewed] = [Previewed(0, None, f"rejected at read: {reason}") for reason in rejected]
    for index, record in enumerate(records):
        out.append(_one(flow, record, name if single else f"{name}[{index}]"))
    # rejected rows first (they never became records), then the records in the order they came
    return [Previewed(n, p.payloads, p.problem) for n, p in enumerate(out, start=1)]


def _one(flow: CompiledFlow, record: Any, record_id: str) -> Previewed:
    if flow.flow.discontinued == "ignore" and pick(record, "discontinued") is True:
        return Previewed(0, None, "skipped: discontinued at the source, and the flow ignores those")
    try:
        return Previewed(0, flow.preview(record, record_id=record_id))
    except TransformError as exc:
        return Previewed(0, None, f"would be dead-lettered: {exc}")


def _entity(flow: CompiledFlow) -> str | None:
    source = flow.flow.source
    if source is not None and source.read is not None:
        return source.read
    event = flow.flow.trigger.event
    return event.queue if event is not None else None
