"""File drops in a directory: CSV, JSON, XML and SAP IDoc exports from ERPs that cannot call out.

Runnable: :mod:`connectors.file.client` implements the connection, :mod:`connectors.file.formats` reads
and writes the formats, :mod:`connectors.file.idoc` the SAP IDoc XML. A flow names a drop:

* ``source.read: <drop>`` with a schedule trigger reads the files present, page by page;
* ``trigger: {event: {system: <files>, queue: <drop>}}`` watches the directory for change notices
  (``watch``, on by default) and polls it every ``poll`` as well (network shares may not send notices),
  and hands each record over as a message;
* ``target.write: <drop>`` writes each record as a file of the drop's format.

When a file is taken (the rule every reader follows): names starting with ``.`` or ending in ``.tmp``
or ``.part`` are never taken (writers' temporary files). With ``done_marker`` set, a file is taken
once ``<file><done_marker>`` exists beside it; otherwise once its size and modification time held
still for the shorter of ``poll`` and ``settle``, as seen by this daemon (two looks that far apart, so
the clock of a file server does not matter). Files are taken oldest first.

What happens to a file: its records are handed over where it lies; only then is it moved to
``archive/`` (an atomic rename; a name already there gets a time stamp). Each record carries a
stable id, ``<file>:<sha256 of the content, 12 hex>:<record index>``, so a file read again after a
crash half-way yields the same ids and the inbox stores nothing twice. A file that cannot be read
at all (bytes that are not the encoding, XML that is not well-formed) goes to ``rejected/`` with
``<name>.reason.txt`` saying what is wrong and where (line and column when known).

A record that is malformed (a CSV row with a bad number, an IDoc missing a mandatory segment) does
not stop its file: on an event trigger it is handed over marked as rejected and the runtime puts it
in dead letters with its reason; on a schedule read (whose contract cannot carry a rejected record)
the good records are handed over and the file then goes to ``rejected/`` with a reason file naming
every bad record by line; fixed and dropped again, its records already handed over are not sent twice.

Numbers in CSV: values are text, as CSV has no types, except (1) columns named in ``numbers``, which
must hold a number or nothing (anything else makes the row malformed), and (2) in a ``decimal_comma``
drop, values written with a decimal comma (``12,5``, ``1.234,50``, SAP's trailing minus ``1.234,50-``),
because German-locale SAP exports write amounts and quantities that way while codes never carry a
comma. Values without a comma stay text: plant ``1000``, material ``000000000000004711`` and
customer ``0000012345`` are codes whose leading zeros matter; a transform can ``$number()`` them.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from engine.connector import Capability, ConnectContext, ConnectorKind, Duration, SystemOptions, closest

if TYPE_CHECKING:
    from engine.connector import Connection

__all__ = ["CONNECTOR", "Drop", "FileOptions"]

_COMMON_ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "cp1252", "iso-8859-1", "iso-8859-15", "ascii")


def _check_encoding(name: str) -> str:
    try:
        codecs.lookup(name)
    except LookupError:
        guess = closest(name.lower(), _COMMON_ENCODINGS)
        hint = f" — did you mean '{guess}'?" if guess else ""
        raise ValueError(f"unknown encoding '{name}'{hint} (common ones: {', '.join(_COMMON_ENCODINGS)})") from None
    return name


Encoding = Annotated[str, AfterValidator(_check_encoding)]


class Drop(BaseModel):
    """One kind of file in the directory: which files, in which format, and how to read their values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pattern: str = Field(
        description="Glob of the files, relative to the system's directory. A drop that is written to needs one "
        "'*', where each file's name goes.",
        examples=["MATMAS*.xml", "prices_*.csv"],
    )
    format: Literal["csv", "json", "jsonl", "xml", "idoc"] = Field(
        description="csv: a header row, then one record per row; json: an array of records (or one object); "
        "jsonl: one JSON record per line; xml: nested maps (attributes as @name); idoc: SAP IDoc XML, one "
        "record per <IDOC> with its segments by name.",
    )
    encoding: Encoding = Field(
        "utf-8",
        description="How the bytes are read and written. A byte-order mark (UTF-8, UTF-16, UTF-32) wins over this "
        "when reading; XML's own encoding declaration too.",
        examples=["utf-8", "cp1252", "iso-8859-1"],
    )
    delimiter: str = Field(",", min_length=1, max_length=1, description="CSV field separator.", examples=[";"])
    decimal_comma: bool = Field(
        False,
        description="CSV numbers written 1.234,50 (German-locale SAP exports): values with a decimal comma become "
        "numbers; values without one stay text (codes with leading zeros).",
    )
    numbers: list[str] = Field(
        default_factory=list,
        description="CSV columns that must hold a number (or be empty, which reads as null); a row where one does "
        "not is malformed and dead-lettered with its reason.",
        examples=[["price", "quantity"]],
    )
    record_path: str | None = Field(
        None,
        description="Where the records are. JSON: a dotted path to an array ('data.items'). XML: element names "
        "below the root, separated by '/' ('Materials/Material'); without it the whole document is one record.",
    )
    done_marker: str | None = Field(
        None,
        min_length=1,
        description="Take a file only once '<file><done_marker>' exists (the sender writes it when done); without "
        "it a file is taken once its size and time held still for one poll interval.",
        examples=[".done", ".ok"],
    )

    @model_validator(mode="after")
    def _options_fit_the_format(self) -> Self:
        parts = self.pattern.replace("\\", "/").split("/")
        if not self.pattern.strip() or self.pattern.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise ValueError(
                f"pattern '{self.pattern}' must be a glob inside the system's directory (relative, without '..'), "
                "e.g. 'MATMAS*.xml' or 'inbound/*.csv'"
            )
        if self.format != "csv":
            for name in ("numbers", "decimal_comma"):
                if name in self.model_fields_set and getattr(self, name):
                    raise ValueError(f"{name} applies to csv drops only (this drop's format is {self.format})")
        if self.record_path is not None and self.format not in ("json", "xml"):
            raise ValueError(f"record_path applies to json and xml drops only (this drop's format is {self.format})")
        return self


class FileOptions(SystemOptions):
    """A directory where files are dropped (by the ERP, for seamline) or written (by seamline, for the ERP)."""

    directory: str = Field(
        description="Directory watched for drops; relative to the spec file that declares the system, or absolute."
    )
    archive: str = Field("archive", description="Where processed files are moved (relative to the directory).")
    rejected: str = Field(
        "rejected",
        description="Where unreadable files are moved, each with a <name>.reason.txt (relative to the directory).",
    )
    poll: Duration = Field("10s", description="How often the directory is scanned for new files.")
    watch: bool = Field(
        True,
        description="Also watch the directory for change notices (inotify and the like) and look at once; "
        "polling still runs, for network shares where notices do not arrive.",
    )
    settle: Duration = Field(
        "1s",
        description="How long a file must hold still (same size and time) before it is taken, when that is "
        "shorter than poll; a file is taken once it held still for the shorter of the two.",
    )
    drops: dict[str, Drop] = Field(default_factory=dict, description="Named kinds of file in the directory.")

    def declared_operations(self, capability: Capability) -> frozenset[str] | None:
        if capability in ("read", "write", "event"):
            return frozenset(self.drops)
        return frozenset()


def connect(options: SystemOptions, context: ConnectContext) -> Connection:
    """Open a connection to one drop directory (nothing is read or written yet)."""
    from connectors.file.client import FileConnection

    if not isinstance(options, FileOptions):
        raise TypeError(f"the file connector needs FileOptions, not {type(options).__name__}")
    return FileConnection(options, context)


CONNECTOR = ConnectorKind(
    name="file",
    options=FileOptions,
    description="CSV, JSON, XML and SAP IDoc files dropped in a directory",
    events=True,
    connect=connect,
)
