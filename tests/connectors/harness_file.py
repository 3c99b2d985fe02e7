"""The file connector's conformance harness: writes into a drop directory (an ERP's inbound folder).

The "system" is a real directory; what it has applied is the files in it. The failures are real ones:

* **transient: the disk is full** (``ENOSPC``): the most common way a drop directory stops taking
  files, and one that clears by itself when housekeeping frees space, so the runtime should retry.
  The suite wants the fault for exactly one write, so the harness gives the connection a
  :class:`~connectors.file.client.Disk` that raises the very ``OSError`` a full disk raises, once
  (the file-system counterpart of an http fake's fault knob). A real condition cannot be used here:
  permission bits do not stop root (CI containers), and filling a real disk needs a mount.
* **terminal: a record the drop cannot hold**: a CSV drop is flat, so a record whose field holds a
  list can never be written, however often it is retried. The harness hands the next write such a
  record (the suite then writes the flat one, which goes through).
* **stop / start: the share is unmounted and mounted again**: the directory is moved away and back;
  while it is gone, writes are transient failures, and the same connection works once it is back.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from connectors.file import CONNECTOR as FILE
from connectors.file import FileOptions
from connectors.file.client import Disk, FileConnection
from engine.conformance import write_through
from engine.connector import ConnectContext, Connection

KIND = FILE


class FlakyDisk(Disk):
    """A disk that is full for the next write when told so, then fine again."""

    def __init__(self) -> None:
        self.full_once = False

    def publish(self, path: Path, data: bytes) -> bool:
        if self.full_once:
            self.full_once = False
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return super().publish(path, data)


@dataclass
class FileHarness:
    root: Path
    kind = KIND
    entity: str = "orders"
    read_entity: str = "orders"
    queue: str = "orders"
    disk: FlakyDisk = field(default_factory=FlakyDisk)
    nested_next: bool = False

    @property
    def directory(self) -> Path:
        return self.root / "erp-inbound"

    def options(self) -> FileOptions:
        return FileOptions.model_validate(
            {
                "connector": "file",
                "directory": str(self.directory),
                "poll": "100ms",
                "settle": "100ms",
                "drops": {
                    "orders": {"pattern": "ORDERS_*.csv", "format": "csv", "delimiter": ";", "decimal_comma": True}
                },
            }
        )

    def connect(self) -> Connection:
        return FileConnection(self.options(), ConnectContext(system="erp", client="conformance"), disk=self.disk)

    def record(self, n: int) -> Any:
        record: dict[str, Any] = {"number": f"SO-{n:04d}", "customer": "Müller GmbH", "total": 12.5 * (n + 1)}
        if self.nested_next:
            self.nested_next = False
            record["lines"] = [{"sku": "A", "qty": n}]
        return record

    def applied(self) -> int:
        return sum(1 for path in self.directory.glob("ORDERS_*.csv") if not path.name.startswith("."))

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        if kind == "transient":
            self.disk.full_once = True
        else:
            self.nested_next = True

    def stop(self) -> None:
        self.directory.rename(self.root / "unmounted")

    def start(self) -> None:
        (self.root / "unmounted").rename(self.directory)

    # -- read and consume: the drop is read back (and archived) as the ERP's outbound folder would be --
    def seed(self, numbers: Iterable[int]) -> None:
        write_through(self, numbers)

    def publish(self, numbers: Iterable[int]) -> None:
        write_through(self, numbers)

    def which(self, data: Any) -> int | None:
        number = data.get("number", "") if isinstance(data, dict) else ""
        return int(number.removeprefix("SO-")) if number.startswith("SO-") else None


@contextmanager
def harness() -> Iterator[FileHarness]:
    with tempfile.TemporaryDirectory(prefix="seamline-file-") as root:
        running = FileHarness(Path(root))
        running.directory.mkdir()
        yield running
