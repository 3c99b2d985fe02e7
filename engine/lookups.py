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

__all__ = ["TableError", "load_table"]


class TableError(ValueError):
    """A code table cannot be read; ``line`` is 1-based inside the table's file, 0 when unknown."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


def load_table(table: LookupTable, base_dir: Path) -> dict[str, Any]:
    """The table as a dict; TableError says what is wrong and on which line."""
    if table.values is not None:
        return {str(k): v for k, v in table.values.items()}
    assert table.file is not None
    location = base_dir / table.file
    try:
        text = location.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TableError(f"lookup file '{table.file}' not found (looked for {location})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"cannot read {location}: {exc}") from None
    suffix = location.suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        return _map_table(text)
    if suffix != ".csv":
        raise TableError(f"code tables are .csv, .yaml or .json files, not '{suffix or location.name}'")
    return _csv_table(text, table.key, table.value)


def _map_table(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        raise TableError(f"code table is not valid YAML/JSON: {exc.problem}", line) from None
    except yaml.YAMLError as exc:
        raise TableError(f"code table is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TableError("a YAML code table is a map of key: value", 1)
    return {str(k): v for k, v in data.items()}


def _csv_table(text: str, key: str | None, value: str | None) -> dict[str, Any]:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise TableError("the CSV code table is empty; it needs a header row", 1)
    header = rows[0]
    for column in (key, value):
        if column is not None and column not in header:
            guess = closest(column, header)
            raise TableError(
                f"column '{column}' is not in the header ({', '.join(header)})"
                + (f" — did you mean '{guess}'?" if guess else ""),
                1,
            )
    if len(header) < 2 and value is None:
        raise TableError("a CSV code table needs at least two columns (key, value)", 1)
    key_at = header.index(key) if key is not None else 0
    value_at = header.index(value) if value is not None else 1
    table: dict[str, Any] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise TableError(f"row has {len(row)} fields, the header has {len(header)}", number)
        table[row[key_at]] = row[value_at]
    return table
