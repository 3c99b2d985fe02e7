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

What happens to a file, and where each reason ends up (both triggers alike):

* **Ids.** Each record carries a stable id, ``<file>:<sha256 of the content, 12 hex>:<record index>``
  (the file's path relative to the directory; the index counts every record, good or bad, from 0 in
  file order). A schedule read hands a record over as an :class:`engine.connector.ReadItem` with it as
  ``id``; an event trigger as a :class:`engine.connector.Message` with it as ``message_id``. A file read
  again after a crash half-way yields the same ids, so the runtime stores nothing twice; a changed file
  has a new hash, so none of its records is taken for an old one.
* **Malformed records** (a CSV row with a bad number or the wrong number of fields, an IDoc missing a
  mandatory segment, a JSON line that is not JSON) do not stop their file: each is handed over in its
  place, marked rejected with the reason ``<file>: line <n>: <what is wrong>``. A schedule read hands
  ``ReadItem({"raw": <the record as found>}, id=<its id>, rejected=<reason>)``; an event trigger a
  message with the reason in the ``x-seamline-reject`` header and ``rejected: <reason>`` plus the raw
  record as its (deliberately not JSON) body. The runtime puts it in dead letters with that reason.
* **archive/.** A file whose records could be read is moved to ``archive/`` (an atomic rename; a name
  already there gets a time stamp) once every record was handed over, whatever some records' fate: on
  a schedule read once the trigger asks for the page after the file's last one, on an event trigger
  once the handler returned for its last record. When records were rejected,
  ``archive/<archived name>.reason.txt`` beside it lists each of them by line with its reason.
* **rejected/.** A file that cannot be read at all (bytes that are not the encoding, XML that is not
  well-formed or has a DTD, a CSV header without a column named in ``numbers``, an idoc file without
  ``<IDOC>``) hands nothing over: it goes to ``rejected/`` with ``rejected/<name>.reason.txt`` saying
  what is wrong and where (line and column when known), and the reason is logged.
* **Left in place.** A schedule read that stops before the file's last page was stored, or a handler
  that raised, leaves the file where it is; it is read again at the next pass, with the same ids.
* **Refused: not a regular file.** Only regular files reached through real folders are taken. An
  entry matching a drop's pattern that is anything else (a symbolic link, whether to a file outside
  the directory, inside it, or to nothing; a named pipe (FIFO); a device; a socket; a directory) is
  never opened, and a symbolic link where the pattern goes through a folder (``inbound/*.csv`` with
  ``inbound`` a link; any link below a ``**``) is not followed: nothing it points at, or below it, is
  listed or read, on both triggers. The reason ends up in the log: one warning per entry, naming it
  and why, e.g. ``erp: stock_1.csv is a symbolic link (to /etc/passwd), not a regular file: refused
  and left in place, never read (...)`` or ``erp: inbound is a symbolic link (to /srv/x), on the way
  to the drop's files ('inbound/*.csv'): refused and left in place, not followed (...)``; not again
  at each poll, but again when another entry takes its name or it comes back after being removed
  (and at each daemon start). The entry is left where it is: nothing goes to ``rejected/``.

  Why left in place rather than moved to ``rejected/``: renaming a link would move the link, not its
  target, and a pipe or device is renamed without being opened, but (1) a directory, or a file seen
  through a symlinked folder, is not ours to move: moving ``inbound/x.csv`` would take a file out of
  another tree; (2) across file systems a move is a copy, and a copy opens what it copies (reads a
  link's target, blocks on a pipe); (3) whoever can plant an entry in the drop folder would make the
  daemon create folders, write and rename on their behalf. With one rule (a refused entry is never
  touched) none of that can happen; the entry costs nothing where it is (it is never taken) and stays
  as evidence for whoever looks into it. Its reason is not written to ``rejected/`` either: a reason
  file there without its file would break the rule that a reason file sits beside its file.

  Files are opened with ``O_NOFOLLOW``, folder by folder from the directory (and on Linux looked at
  through an ``O_PATH`` handle before being opened for reading), so an entry swapped for a link, a
  pipe or a device between the scan and the read is refused the same way, with the same warning
  ("became ... after the scan") and never read; a pipe is never waited on. A file replaced by another
  one meanwhile is left for the next pass.
* **Moves stay inside the directory.** ``archive`` and ``rejected`` must be folders inside the
  directory (relative, without ``..``, not the directory itself: a spec error otherwise), and at run
  time they must resolve inside it: one that is a symbolic link out of the directory, or has one on
  its way, stops the drop with a TransientError (``erp: the archive folder <directory>/archive
  resolves to /srv/x, outside the drop directory ...``; a schedule read fails with it, the event
  trigger logs it once and polls on); nothing is read from the drop meanwhile, so nothing needs
  moving. A file is moved only if it is still the regular file that was read, where it was read, and
  a move across file systems copies a regular file only, never through a link. A drop's pattern stays
  inside the directory too (relative, without ``..``, no link followed); a write whose pattern goes
  through a folder that is a link fails with a TransientError naming it.

Groups (``source.group_by``, schedule reads only; the kind declares ``keeps_groups``): the rows of one
file that share the values of the ``group_by`` fields (dotted paths; a missing field counts as null)
are handed over next to each other: groups in the order of their first row, rows of a group in file
order. Pages are cut only between groups, so a group is never split across pages; a group larger than
``page_size`` is a page of its own. The runtime then makes one record of each group of a page. A
rejected row belongs to no group: it is an entry of its own, at its place in the file. Groups never
span files (the same key in two files makes two groups), and a row keeps its id (its index in the
file, not its place in the page).

Numbers in CSV: values are text, as CSV has no types, except (1) columns named in ``numbers``, which
must hold a number or nothing (anything else makes the row malformed), and (2) in a ``decimal_comma``
drop, values written with a decimal comma (``12,5``, ``1.234,50``, SAP's trailing minus ``1.234,50-``),
because German-locale SAP exports write amounts and quantities that way while codes never carry a
comma. Values without a comma stay text: plant ``1000``, material ``000000000000004711`` and
customer ``0000012345`` are codes whose leading zeros matter; a transform can ``$number()`` them.
"""

from __future__ import annotations

import codecs
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from engine.connector import Capability, ConnectorKind, Duration, SystemOptions, closest

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


def _check_folder(value: str) -> str:
    parts = value.replace("\\", "/").split("/")
    names = [part for part in parts if part not in ("", ".")]
    if not names or value.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise ValueError(
            f"'{value}' must be a folder inside the system's directory (relative, without '..', not the directory "
            "itself), e.g. 'archive' or 'done/archive': files are only ever moved within the drop directory"
        )
    return value


Folder = Annotated[str, AfterValidator(_check_folder)]


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
    archive: Folder = Field(
        "archive",
        description="Where processed files are moved: a folder inside the directory (relative, without '..'; "
        "it must not be a link out of the directory either).",
    )
    rejected: Folder = Field(
        "rejected",
        description="Where unreadable files are moved, each with a <name>.reason.txt: a folder inside the "
        "directory (relative, without '..'; it must not be a link out of the directory either).",
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

    def reads_rows(self, entity: str) -> bool:
        drop = self.drops.get(entity)
        return drop is not None and drop.format in ("csv", "jsonl")

    def gives_row_ids(self, entity: str) -> bool:
        return entity in self.drops


def sample(options: SystemOptions, entity: str, content: bytes, file_name: str) -> list[Any]:
    """A sample file's rows exactly as ``read`` of the drop ``entity`` hands them over (ids, rejections).

    What ``seamline map`` and golden cases read their input with: the drop's format, encoding, delimiter,
    decimal comma, numbers and IDoc checks, so a preview never reads a file differently from the daemon.
    ValueError when the file cannot be read at all (with the line, as a rejected file's reason says).
    """
    from connectors.file.formats import Unreadable, read_entries
    from connectors.file.pages import content_digest, read_items

    if not isinstance(options, FileOptions):
        raise TypeError(f"the file connector needs FileOptions, not {type(options).__name__}")
    drop = options.drops.get(entity)
    if drop is None:
        raise ValueError(f"no drop '{entity}'; drops: {', '.join(sorted(options.drops)) or 'none'}")
    try:
        entries = read_entries(content, drop)
    except Unreadable as exc:
        raise ValueError(str(exc)) from None
    return list(read_items(file_name, content_digest(content), entries, None))


CONNECTOR = ConnectorKind(
    name="file",
    options=FileOptions,
    description="CSV, JSON, XML and SAP IDoc files dropped in a directory",
    connection="connectors.file.client:FileConnection",
    keeps_groups=True,
    read_moves=True,
    sample=sample,
    operations_in="drops",
)
