"""Code tables: the ERP's odd codes (plants, units, statuses) mapped to what the other side wants.

A table is a CSV file (a header row; key and value columns, by default the first two), a YAML
or JSON map, or values written inline in the spec. Transforms read them as ``$lookups.<name>``,
e.g. ``$lookup($lookups.plants, plant)``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from engine.connector import closest
from engine.spec.model import LookupTable
from engine.spec.yamlsource import position_of, safe_load_bounded

__all__ = ["TableError", "load_table", "read_table_file"]


class TableError(ValueError):
    """A code table cannot be read: at ``line`` of its file (0: unknown), or ``column`` names the spec's
    ``key``/``value`` entry that asks for a column the header lacks."""

    def __init__(self, message: str, line: int = 0, column: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def load_table(table: LookupTable, base_dir: Path) -> dict[str, Any]:
    """The table as a dict; TableError says what is wrong and on which line."""
    if table.values is not None:
        return {str(k): v for k, v in table.values.items()}
    assert table.file is not None
    location = base_dir / table.file
    if not location.is_file():
        raise TableError(f"lookup file '{table.file}' not found (looked for {location})")
    return read_table_file(location, table)


def read_table_file(location: Path, table: LookupTable) -> dict[str, Any]:
    """The code table in ``location``; TableError, located, when it cannot be read."""
    try:
        text = location.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raw: bytes = exc.object
        before = raw[: exc.start].decode("utf-8", errors="replace")
        line = position_of(before, len(before))[0]
        raise TableError(f"byte 0x{raw[exc.start]:02x} is not UTF-8 text; save the code table as UTF-8", line) from None
    except OSError as exc:
        raise TableError(f"cannot read {location}: {exc.strerror or exc}") from None
    suffix = location.suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        try:
            data = safe_load_bounded(text)
        except yaml.MarkedYAMLError as exc:
            line = position_of(text, exc.problem_mark.index)[0] if exc.problem_mark else 1
            raise TableError(f"code table is not valid YAML/JSON: {exc.problem}", line) from None
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise TableError(f"code table is not valid YAML/JSON: {' '.join(str(exc).split())}", 1) from None
        if data is None:
            raise TableError("the code table is empty; write it as a map of key: value", 1)
        if not isinstance(data, dict):
            kind = "a list" if isinstance(data, list) else f"a single value ({data!r})"
            raise TableError(f"a YAML code table is a map of key: value, not {kind}", 1)
        return {str(k): v for k, v in data.items()}
    if suffix != ".csv":
        raise TableError(f"code tables are .csv, .yaml or .json files, not '{suffix or location.name}'")
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, list[str]]] = []  # (line in the file where the row starts, fields)
    try:
        start = 1
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise TableError(f"the CSV code table cannot be read: {exc}", reader.line_num or 1) from None
    if not rows:
        raise TableError("the CSV code table is empty; it needs a header row", 1)
    header = rows[0][1]
    for field_name, column in (("key", table.key), ("value", table.value)):
        if column is not None and column not in header:
            guess = closest(column, header)
            raise TableError(
                f"column '{column}' is not in the header of {location} ({', '.join(header)})"
                + (f" — did you mean '{guess}'?" if guess else ""),
                column=field_name,
            )
    if len(header) < 2 and table.value is None:
        raise TableError("a CSV code table needs at least two columns (key, value)", 1)
    for line, row in rows[1:]:
        if row and len(row) != len(header):
            raise TableError(f"row has {len(row)} fields, the header has {len(header)}", line)
    key_at = header.index(table.key) if table.key is not None else 0
    value_at = header.index(table.value) if table.value is not None else 1
    return {row[key_at]: row[value_at] for _line, row in rows[1:] if row}
