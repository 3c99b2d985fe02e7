"""The file connector's connection: scan a drop directory, hand records over, archive or reject files.

Who calls what is documented on :class:`engine.connector.Connection`; when a file is taken and what
becomes of it is in the package doc (:mod:`connectors.file`). How failures are translated where they
enter (no ``OSError`` ever leaves this module)::

    the directory is missing (a share not mounted), the disk is full,    TransientError: the environment
    permission denied, any other OSError while writing or reading         may recover; the runtime retries
    a record the drop cannot hold (a nested field in a CSV drop, a        TerminalError: the record itself
    character the encoding lacks), a drop pattern without '*' to write    is the problem
    a file that cannot be read                                            rejected/ with a reason file
    a malformed record (bad number, IDoc without a mandatory segment)     handed over marked rejected (the
                                                                          runtime dead-letters it); the file
                                                                          goes to archive/ with a reason file
    an entry matching a drop that is not a regular file (a symlink, a     refused: one warning naming it and
    FIFO, a device, a socket, a directory), a symlinked folder on the     why; left in place, never opened,
    pattern's way, or a file that became one between scan and read       nothing it points at read
    archive/ or rejected/ resolving outside the directory (a link out),   TransientError: nothing is read or
    a write through a symlinked folder                                    written until it is fixed

Nothing below the directory is reached through a symbolic link: the scan walks the pattern folder by
folder without following links (not ``Path.glob``, which would), files are opened with O_NOFOLLOW
relative to their folder, and moves stay inside the directory (see the package doc for why a refused
entry is left in place rather than moved to rejected/).

The daemon's event trigger keeps polling through a missing directory (it logs once, then again when
the directory is back): a consumer that raised would stop for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from connectors.file import Drop, FileOptions
from connectors.file.formats import Entry, Unreadable, Unwritable, read_entries, render_record
from connectors.file.pages import content_digest, pages, read_items, rejection, row_id, units
from engine.connector import (
    REJECT_HEADER,
    ConnectContext,
    Consumer,
    Message,
    MessageHandler,
    ReadItem,
    Source,
    Target,
    closest,
    parse_duration,
    system_log,
)
from engine.errors import TerminalError, TransientError

__all__ = ["REJECT_HEADER", "Disk", "FileConnection", "Settle"]


_TEMPORARY_SUFFIXES: Final = (".tmp", ".part")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_GLOB_MAGIC = re.compile(r"[*?[]")
# How a drop's file is opened: never through a symbolic link (O_NOFOLLOW), never waiting on a named
# pipe (O_NONBLOCK), never taking a terminal as controlling tty; flags a platform lacks are left out.
_READ_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)
_FOLDER_FLAGS: Final = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_O_PATH: Final = getattr(os, "O_PATH", 0)  # Linux: a handle to look at an entry without opening it for reading
_ERRNO_HINTS: Final = {
    errno.ENOENT: "it is not there (a network share not mounted?)",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is mounted read-only",
    errno.EIO: "an input/output error (a failing disk or share)",
}


# -- the file system, as the writer sees it -------------------------------------------------------


class Disk:
    """The few file-system steps a write takes; every failure is the ``OSError`` the system raised.

    A test that needs the disk to fail the way a real one does (full, gone) subclasses this and
    raises that ``OSError``: the same role an ``httpx`` transport plays for the http connector.
    """

    def publish(self, path: Path, data: bytes) -> bool:
        """Write ``data`` as ``path`` at once (temp file, fsync, rename); False when ``path`` was there already.

        Readers never see a partial file: the temp file is hidden (a leading dot) until its rename.
        An existing file is never replaced, so writing the same name twice is a no-op.
        """
        if path.exists():
            return False
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)  # atomic and never clobbers: a concurrent twin loses cleanly
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                    raise
                os.replace(temporary, path)  # a file system without hard links (some SMB shares)
            _sync_directory(path.parent)
            return True
        finally:
            temporary.unlink(missing_ok=True)


def _sync_directory(directory: Path) -> None:
    """Make a rename durable: the ledger records a write only after it, so a power cut must not undo it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform that cannot open directories (Windows): its renames are durable enough
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some network file systems refuse fsync on a directory; the rename itself happened
    finally:
        os.close(descriptor)


class Settle:
    """Which files held still (same size, modification time and inode) for at least ``hold`` seconds.

    Measured on this daemon's clock from the first look that saw a file's current signature, so the
    clock of a file server does not matter. Each look forgets the files that are gone.
    """

    def __init__(self, hold: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold = hold
        self._clock = clock
        self._since: dict[str, tuple[tuple[int, int, int], float]] = {}

    def look(self, seen: Mapping[str, tuple[int, int, int]]) -> set[str]:
        """The names in ``seen`` whose signature has not changed for ``hold`` seconds (and one look before)."""
        now = self._clock()
        still: set[str] = set()
        since: dict[str, tuple[tuple[int, int, int], float]] = {}
        for name, signature in seen.items():
            previous = self._since.get(name)
            if previous is not None and previous[0] == signature:
                since[name] = previous
                if now - previous[1] >= self.hold:
                    still.add(name)
            else:
                since[name] = (signature, now)
        self._since = since
        return still


@dataclass(frozen=True, slots=True)
class _Found:
    path: Path
    name: str  # relative to the directory, with '/'; part of each record's id
    signature: tuple[int, int, int]  # size, modification time, inode
    mtime: int
    device: int = 0  # with the inode: the very file the scan saw, checked again when it is read and moved
    marker: Path | None = None  # the done-marker that made it ready, removed once the file is moved


@dataclass(frozen=True, slots=True)
class _Refusal:
    """An entry a drop refuses (not a regular file, or a link on the way to its files), and why."""

    name: str  # relative to the directory, with '/'
    why: str  # the rest of the log line after the name
    identity: tuple[int, int, int]  # file type, device, inode: another entry under the same name is warned about again


class _Refused(Exception):
    """The entry turned out not to be a regular file reached without links, when it was opened."""

    def __init__(self, refusal: _Refusal) -> None:
        super().__init__(refusal.why)
        self.refusal = refusal


class _Replaced(Exception):
    """The entry is no longer the file the scan saw (replaced meanwhile): it is looked at again at the next pass."""


# -- the connection -------------------------------------------------------------------------------


class FileConnection(Source, Target, Consumer):
    """An open connection to one drop directory; opening it touches nothing on disk."""

    def __init__(self, options: FileOptions, context: ConnectContext, *, disk: Disk | None = None) -> None:
        self.options = options
        self.context = context
        self.system = context.system
        self.log = system_log("file", self.system)
        # relative to the spec file that declares the system; the working directory when none is given
        base = context.base_dir or os.getcwd()
        self.directory = Path(base, options.directory)
        self.archive = self.directory / options.archive
        self.rejected = self.directory / options.rejected
        self.poll = max(parse_duration(options.poll), 0.005)  # 'poll: 0s' must not spin the event loop
        self.hold = min(self.poll, parse_duration(options.settle))  # how long a file must hold still
        self._disk = disk or Disk()
        self._settles: dict[str, Settle] = {}
        # Entries refused and warned about, per drop pattern (entry -> its identity): one warning per entry,
        # not one per poll; forgotten once the entry is gone, so one that comes back is warned about again.
        self._refused: dict[str, dict[str, tuple[int, int, int]]] = {}
        # archive/ and rejected/ as names below the directory: the scan never looks inside them
        self._moved_to = (
            self.archive.relative_to(self.directory).parts,
            self.rejected.relative_to(self.directory).parts,
        )

    async def close(self) -> None:
        """Nothing is held open between calls; closing twice is harmless."""

    async def __aenter__(self) -> FileConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- the Connection contract --------------------------------------------------------------
    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        """Write ``record`` as one file of the drop ``entity``; returns the file's name (the receipt).

        The name is the drop's pattern with ``*`` replaced by the record's key and a hash of
        ``idempotency_key``, so the same key always names the same file and writing it again is a
        no-op while the file is there (an ERP that has already taken the file away gets it again
        only if the runtime retries a write whose outcome it did not learn). ``mode`` does not change
        what is written: the receiving system decides what a file means.
        """
        drop = self._drop(entity, "write")
        try:
            data = render_record(record, drop)
        except Unwritable as exc:
            raise TerminalError(f"{self.system}.{entity}: {exc}") from None
        name = self._file_name(entity, drop, key, idempotency_key)
        path = self.directory / name
        try:
            await asyncio.to_thread(self._publish, entity, name, data)
        except OSError as exc:
            raise TransientError(self._os_problem(exc, f"cannot write {name} in", path.parent)) from None
        return name

    async def read(
        self,
        entity: str,
        *,
        since: str | None = None,
        cursor_field: str | None = None,
        page_size: int = 100,
        filter: Mapping[str, Any] | None = None,
        group_by: list[str] | None = None,
        preview: bool = False,
    ) -> AsyncGenerator[list[ReadItem], None]:
        """The records of the drop's files present now, page by page, as ReadItems (a page never mixes two files).

        Called by a schedule trigger, which stores each page before it asks for the next. Every row is
        a :class:`~engine.connector.ReadItem` with its stable id (``<file>:<sha256, 12 hex>:<index>``);
        a malformed row is one with ``rejected`` set to ``<file>: line <n>: <reason>`` and ``data``
        ``{"raw": <the row as found>}``, in its place among the others. A file is archived once the
        trigger asked for the page after its last one, with ``archive/<archived name>.reason.txt`` when
        some rows were rejected; a file that cannot be read at all hands nothing over and is moved to
        ``rejected/`` with its reason. A pass that stops before a file's last page leaves the file in place.

        ``group_by`` (dotted paths; the ConnectorKind declares ``keeps_groups``) makes the rows of one
        file that share those fields' values contiguous and cuts pages only between groups, so the
        runtime can make one record per group of each page (see :mod:`connectors.file.pages`).
        ``preview`` (``run --once --dry-run``): the same pages, and no file is moved or written at all: a
        file that cannot be read is handed over as one rejected ReadItem with its reason instead.
        ``since`` and ``cursor_field`` are not needed (a file is read once, then moved); ``filter``
        keeps the good rows whose fields equal the given values. Files still being written are left
        for the next pass: in size-and-time mode, files seen for the first time are looked at again
        after ``hold``.
        """
        drop = self._drop(entity, "read")
        settle = self._settles.setdefault(entity, Settle(hold=self.hold))
        ready, waiting = await self._scan(drop, settle)
        if waiting:
            await asyncio.sleep(self.hold)
            ready, _ = await self._scan(drop, settle)
        for found in ready:
            content = await self._content(found, drop)
            if content is None:
                continue
            try:
                entries = await asyncio.to_thread(read_entries, content, drop)
            except Unreadable as exc:
                if preview:
                    yield [ReadItem({"raw": ""}, id=found.name, rejected=f"{found.name}: {exc}")]
                else:
                    await self._reject_file(found, str(exc))
                continue
            items = read_items(found.name, content_digest(content), entries, filter)
            for page in pages(units(items, group_by), page_size):
                yield page
            if preview:
                continue  # a dry run moves nothing: the next real pass reads the same files
            rejected = [e for e in entries if not e.ok]
            await self._archive_file(found, rejected, handed_over=len(items) - len(rejected))

    async def consume(self, queue: str, handler: MessageHandler) -> None:
        """Poll the drop ``queue`` every ``poll`` and hand each record of each ready file to ``handler``.

        Polling rather than OS change notifications: no extra dependency, and the same behaviour on
        local disks and on NFS/SMB shares, where notifications are unreliable. A file is archived
        only after ``handler`` returned for each of its records; if ``handler`` raises, the file
        stays and the pass ends, to be tried again at the next poll (records already handed over
        come again with the same ids, and the inbox skips them).
        """
        drop = self._drop(queue, "event")
        settle = Settle(hold=self.hold)
        unavailable = ""
        async with _Watch(self.directory, enabled=self.options.watch, log=self.log) as watch:
            while True:
                waiting = 0
                try:
                    ready, waiting = await self._scan(drop, settle)
                except TransientError as exc:
                    if str(exc) != unavailable:
                        self.log.warning("%s", exc)
                    unavailable, ready = str(exc), []
                else:
                    if unavailable:
                        self.log.info("%s: the drop directory %s is available again", self.system, self.directory)
                    unavailable = ""
                for found in ready:
                    if not await self._hand_over(found, drop, handler):
                        break
                # A file still settling is looked at again once it may have held still long enough.
                await watch.changed(min(self.poll, self.hold) if waiting else self.poll)

    # -- one file --------------------------------------------------------------------------------
    async def _hand_over(self, found: _Found, drop: Drop, handler: MessageHandler) -> bool:
        """Every record of one file to ``handler``, then the file away; False to stop this pass."""
        content = await self._content(found, drop)
        if content is None:
            return True
        digest = content_digest(content)
        try:
            entries = await asyncio.to_thread(read_entries, content, drop)
        except Unreadable as exc:
            with contextlib.suppress(TransientError):  # logged; the file is rejected at the next poll
                await self._reject_file(found, str(exc))
            return True
        for entry in entries:
            try:
                await handler(self._message(found, digest, entry))
            except Exception as exc:  # the runtime could not store it: give the file back, whole
                self.log.warning(
                    "%s: %s: record %d was not taken (%s); the file stays and is read again at the next poll",
                    self.system,
                    found.name,
                    entry.index,
                    exc,
                )
                return False
            await asyncio.sleep(0)  # a large file must not starve the daemon's other work
        rejected = [e for e in entries if not e.ok]
        with contextlib.suppress(TransientError):  # logged; read again at the next poll, nothing doubled
            await self._archive_file(found, rejected, handed_over=len(entries) - len(rejected))
        return True

    def _message(self, found: _Found, digest: str, entry: Entry) -> Message:
        """One record as a message: JSON of its data, or (malformed) its reason in REJECT_HEADER."""
        message_id = row_id(found.name, digest, entry)
        headers: dict[str, Any] = {"file": found.name, "line": entry.line, "record": entry.index}
        if entry.ok:
            return Message(json.dumps(entry.data, ensure_ascii=False).encode("utf-8"), message_id, headers)
        reason = rejection(found.name, entry)
        headers[REJECT_HEADER] = reason
        # Not JSON on purpose: a runtime that does not know the header still dead-letters the body
        # (as "not JSON"), and keeps the reason with it.
        body = f"rejected: {reason}\n{entry.raw}".encode()
        return Message(body, message_id, headers)

    async def _content(self, found: _Found, drop: Drop) -> bytes | None:
        """The file's bytes, or None (taken away, refused or replaced meanwhile, or unreadable: logged)."""
        try:
            return await asyncio.to_thread(self._read_bytes, found, drop.pattern)
        except FileNotFoundError:
            return None  # taken away meanwhile (by an operator, or a replica of this daemon)
        except _Refused as exc:
            self._note_refusals(drop, [exc.refusal], forget=False)
            return None
        except _Replaced:
            self.log.info(
                "%s: %s changed between the scan and the read; looked at again at the next pass",
                self.system,
                found.name,
            )
            return None
        except OSError as exc:
            self.log.warning("%s", self._os_problem(exc, f"cannot read {found.name} in", self.directory))
            return None

    def _read_bytes(self, found: _Found, pattern: str) -> bytes:
        """The bytes of the file the scan saw, read without following a link anywhere below the directory.

        The scan saw a regular file reached through real folders; by now any part of its path may have
        been swapped for a link, and the file for a link, a pipe or a device (TOCTOU). Each folder is
        opened relative to the one before with O_NOFOLLOW, the file with O_NOFOLLOW and O_NONBLOCK; on
        Linux the file is first looked at through an O_PATH handle (which opens nothing for reading) and
        only reopened for reading once it is known to be the regular file the scan saw, so a pipe or a
        device swapped in is never opened. _Refused when a link, pipe or device is found; _Replaced when
        it is another file than the scan saw (written again meanwhile).
        """
        parts = found.name.split("/")
        if os.open not in os.supports_dir_fd:  # no dir_fd (Windows): by path, with whatever flags there are
            return self._read_leaf(found, str(found.path), None)
        folder = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            for depth, part in enumerate(parts[:-1], start=1):
                try:
                    inner = os.open(part, _FOLDER_FLAGS, dir_fd=folder)
                except OSError:
                    info = os.stat(part, dir_fd=folder, follow_symlinks=False)  # FileNotFoundError: gone
                    if not stat.S_ISDIR(info.st_mode):
                        name = "/".join(parts[:depth])
                        what = f"became {_kind(self.directory / name, info)} after the scan"
                        raise _Refused(_Refusal(name, _link_on_path(what, pattern), _identity(info))) from None
                    raise
                os.close(folder)
                folder = inner
            return self._read_leaf(found, parts[-1], folder)
        finally:
            os.close(folder)

    def _read_leaf(self, found: _Found, leaf: str, folder: int | None) -> bytes:
        if _O_PATH:
            # O_PATH opens nothing for reading (a pipe does not wait, a device is not opened); with
            # O_NOFOLLOW a link gives a handle on the link itself, refused below
            probe = os.open(leaf, _O_PATH | getattr(os, "O_NOFOLLOW", 0), dir_fd=folder)
            try:
                self._check_opened(found, os.fstat(probe))
                try:
                    descriptor = os.open(f"/proc/self/fd/{probe}", _READ_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
                except OSError:
                    descriptor = -1  # no /proc: opened by name below, as on other systems
            finally:
                os.close(probe)
            if descriptor >= 0:
                return _read_all(descriptor)
        try:
            descriptor = os.open(leaf, _READ_FLAGS, dir_fd=folder)
        except OSError:
            info = os.stat(leaf, dir_fd=folder, follow_symlinks=False)  # FileNotFoundError: gone
            self._check_opened(found, info)  # a link (O_NOFOLLOW said ELOOP) is refused here
            raise
        try:
            self._check_opened(found, os.fstat(descriptor))
        except BaseException:
            os.close(descriptor)
            raise
        return _read_all(descriptor)

    def _check_opened(self, found: _Found, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            what = f"became {_kind(found.path, info)} after the scan"
            raise _Refused(_Refusal(found.name, _not_regular(what), _identity(info)))
        if (info.st_dev, info.st_ino) != (found.device, found.signature[2]):
            raise _Replaced(found.name)

    async def _archive_file(self, found: _Found, rejected: list[Entry], *, handed_over: int) -> None:
        """Move a file whose records were all handed over to archive/, with a reason file when some were rejected.

        Called by both readers once the last record is with the runtime. TransientError (logged) when
        the disk says no: the file stays and is read again later, with the same ids.
        """
        try:
            where = await asyncio.to_thread(self._archive, found, rejected, handed_over)
        except _Replaced as exc:
            self._left_in_place(found, exc)
            return
        except TransientError as exc:  # archive/ resolves outside the directory
            self.log.warning("%s", exc)
            raise
        except OSError as exc:
            raise self._cannot_move(found, exc) from None
        if rejected:
            self.log.warning(
                "%s: %s archived as %s: %d record(s) handed over, %d rejected at read (reasons in %s.reason.txt)",
                self.system,
                found.name,
                where,
                handed_over,
                len(rejected),
                where.name,
            )
        else:
            self.log.info("%s: %s archived as %s (%d records handed over)", self.system, found.name, where, handed_over)

    async def _reject_file(self, found: _Found, problem: str) -> None:
        """Move a file that cannot be read at all to rejected/ with its reason; TransientError if the disk says no."""
        try:
            where = await asyncio.to_thread(self._reject, found, problem)
        except _Replaced as exc:
            self._left_in_place(found, exc)
            return
        except TransientError as exc:  # rejected/ resolves outside the directory
            self.log.warning("%s", exc)
            raise
        except OSError as exc:
            raise self._cannot_move(found, exc) from None
        self.log.warning("%s: %s rejected to %s: %s", self.system, found.name, where, problem)

    def _left_in_place(self, found: _Found, exc: _Replaced) -> None:
        self.log.warning(
            "%s: %s %s since it was read; left in place and looked at again at the next pass (nothing is doubled)",
            self.system,
            found.name,
            exc,
        )

    def _cannot_move(self, found: _Found, exc: OSError) -> TransientError:
        problem = self._os_problem(exc, f"cannot move {found.name} out of", self.directory)
        self.log.warning("%s; the file is read again later (records already handed over are not doubled)", problem)
        return TransientError(problem)

    def _archive(self, found: _Found, rejected: list[Entry], handed_over: int) -> Path:
        self._still_there(found)
        self._make_folder(self.archive, "archive")
        target = _free_name(self.archive, found.path.name)
        reason_file = self.archive / f"{target.name}.reason.txt"
        # The reason first: if the daemon dies between the two steps, the file is still in place and
        # is archived again under the same name, rewriting the same reason file.
        if rejected:
            _replace_file(reason_file, _archive_reasons(found.name, rejected, handed_over))
        else:
            reason_file.unlink(missing_ok=True)  # left by an earlier attempt on a file since corrected in place
        _rename(found.path, target)
        self._drop_marker(found)
        return target

    def _reject(self, found: _Found, problem: str) -> Path:
        self._still_there(found)
        self._make_folder(self.rejected, "rejected")
        target = _free_name(self.rejected, found.path.name)
        lines = [
            f"file: {found.name}",
            f"rejected at: {_now()}",
            "reason:",
            f"  {problem}",
            "nothing from this file was handed over; fix it and drop it again",
        ]
        # The reason first, as for an archived file.
        _replace_file(self.rejected / f"{target.name}.reason.txt", "\n".join(lines) + "\n")
        _rename(found.path, target)
        self._drop_marker(found)
        return target

    def _still_there(self, found: _Found) -> None:
        """_Replaced unless ``found.path`` is still the regular file the scan saw, reached through real folders.

        So a move never takes a file from outside the directory (a folder on its path swapped for a link)
        nor one that was not read (a file written again meanwhile); a link swapped in would be moved as
        the link, never its target, but is left in place as well.
        """
        expected = os.path.join(os.path.realpath(self.directory), *found.name.split("/")[:-1])
        if os.path.realpath(found.path.parent) != expected:
            raise _Replaced("had a folder on its path replaced by a link")
        info = os.lstat(found.path)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (found.device, found.signature[2]):
            raise _Replaced("was replaced")

    def _make_folder(self, folder: Path, option: str) -> None:
        """Make archive/ or rejected/, checking before and after that it resolves inside the directory."""
        self._check_folder(folder, option)
        folder.mkdir(parents=True, exist_ok=True)
        self._check_folder(folder, option)

    def _check_folder(self, folder: Path, option: str) -> None:
        """TransientError when ``folder`` (archive/ or rejected/) resolves outside the directory (a link out)."""
        root = os.path.realpath(self.directory)
        real = os.path.realpath(folder)
        if real != root and os.path.commonpath([root, real]) == root:
            return
        raise TransientError(
            f"{self.system}: the {option} folder {folder} resolves to {real}, outside the drop directory {root} "
            f"(a symbolic link?): files are only ever moved within the drop directory, so nothing is read from "
            f"it until {option} is a folder inside it"
        )

    def _drop_marker(self, found: _Found) -> None:
        if found.marker is not None:
            found.marker.unlink(missing_ok=True)

    # -- scanning --------------------------------------------------------------------------------
    async def _scan(self, drop: Drop, settle: Settle) -> tuple[list[_Found], int]:
        """(files ready to take, oldest first; how many are still settling); refused entries are logged."""
        try:
            ready, waiting, refused = await asyncio.to_thread(self._ready, drop, settle)
        except OSError as exc:
            raise TransientError(self._os_problem(exc, "cannot list", self.directory)) from None
        self._note_refusals(drop, refused)
        return ready, waiting

    def _ready(self, drop: Drop, settle: Settle) -> tuple[list[_Found], int, list[_Refusal]]:
        if not self.directory.is_dir():
            raise TransientError(
                f"{self.system}: the drop directory {self.directory} is not there (a network share not mounted?); "
                "looking again at the next poll"
            )
        self._check_folder(self.archive, "archive")
        self._check_folder(self.rejected, "rejected")
        found, refused = self._candidates(drop)
        if drop.done_marker is not None:
            marked = [replace(f, marker=f.path.with_name(f.path.name + drop.done_marker)) for f in found]
            return [f for f in marked if f.marker is not None and f.marker.exists()], 0, refused
        still = settle.look({f.name: f.signature for f in found})
        ready = [f for f in found if f.name in still]
        return ready, len(found) - len(ready), refused

    def _note_refusals(self, drop: Drop, refused: list[_Refusal], *, forget: bool = True) -> None:
        """Warn about each refused entry once (again when another entry takes its name); ``forget`` the rest."""
        before = self._refused.get(drop.pattern, {})
        now = {} if forget else dict(before)
        for refusal in refused:
            if before.get(refusal.name) != refusal.identity:
                self.log.warning("%s: %s %s", self.system, refusal.name, refusal.why)
            now[refusal.name] = refusal.identity
        self._refused[drop.pattern] = now

    def _candidates(self, drop: Drop) -> tuple[list[_Found], list[_Refusal]]:
        """The regular files matching the drop's pattern, oldest first, and the entries it refuses.

        A walk of the pattern folder by folder that never follows a symbolic link (``Path.glob`` would):
        a link, pipe, device, socket or folder where a file goes is refused, and so is a link where a
        folder goes (nothing below it is listed). Nothing refused is opened or listed; the walk only
        looks at entries (lstat) and, for a link, at the link itself (readlink).
        """
        files: dict[str, _Found] = {}
        refused: dict[str, _Refusal] = {}
        parts = tuple(part for part in drop.pattern.split("/") if part not in ("", "."))
        self._walk(self.directory, (), parts, drop, files, refused)
        found = sorted(files.values(), key=lambda f: (f.mtime, f.name))  # oldest first: changes in the order made
        return found, list(refused.values())

    def _walk(
        self,
        folder: Path,
        relative: tuple[str, ...],
        parts: tuple[str, ...],
        drop: Drop,
        files: dict[str, _Found],
        refused: dict[str, _Refusal],
    ) -> None:
        part, rest = parts[0], parts[1:]
        if part == "**":  # this folder and every real folder below it
            if rest:
                self._walk(folder, relative, rest, drop, files, refused)
            for name, path, info in self._entries(folder, relative, "*"):
                here = (*relative, name)
                if stat.S_ISDIR(info.st_mode):
                    self._walk(path, here, parts, drop, files, refused)
                elif stat.S_ISLNK(info.st_mode):
                    why = _link_on_path(f"is {_kind(path, info)}", drop.pattern)
                    refused.setdefault("/".join(here), _Refusal("/".join(here), why, _identity(info)))
            return
        for name, path, info in self._entries(folder, relative, part):
            here = (*relative, name)
            key = "/".join(here)
            if rest:  # a folder goes here
                if stat.S_ISDIR(info.st_mode):
                    self._walk(path, here, rest, drop, files, refused)
                elif stat.S_ISLNK(info.st_mode):
                    why = _link_on_path(f"is {_kind(path, info)}", drop.pattern)
                    refused.setdefault(key, _Refusal(key, why, _identity(info)))
                continue  # a file where a folder goes holds no files: not a match
            if name.endswith(_TEMPORARY_SUFFIXES):
                continue  # writers' temporary files, ours included
            if drop.done_marker is not None and name.endswith(drop.done_marker):
                continue
            if stat.S_ISREG(info.st_mode):
                signature = (info.st_size, info.st_mtime_ns, info.st_ino)
                files[key] = _Found(path, key, signature, info.st_mtime_ns, device=info.st_dev)
            elif stat.S_ISDIR(info.st_mode) and "**" in drop.pattern.split("/"):
                continue  # a folder '**' walks into, not a file in the wrong place
            else:
                refused.setdefault(key, _Refusal(key, _not_regular(f"is {_kind(path, info)}"), _identity(info)))

    def _entries(
        self, folder: Path, relative: tuple[str, ...], part: str
    ) -> Iterator[tuple[str, Path, os.stat_result]]:
        """The entries of ``folder`` matching ``part`` (lstat), but for hidden names, archive/ and rejected/."""
        if _GLOB_MAGIC.search(part) is None:
            names = [part]
        else:
            try:
                with os.scandir(folder) as listing:
                    names = [entry.name for entry in listing if fnmatch.fnmatch(entry.name, part)]
            except OSError:
                if not relative:
                    raise  # the directory itself: the caller says why it cannot be listed
                return  # a folder below it that cannot be listed (permissions; gone meanwhile): as glob does
        for name in sorted(names):
            if name.startswith("."):
                continue  # hidden: writers' temporary files, ours included
            here = (*relative, name)
            if any(here[: len(moved)] == moved for moved in self._moved_to):
                continue
            path = folder / name
            try:
                info = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            yield name, path, info

    # -- helpers ---------------------------------------------------------------------------------
    def _drop(self, name: str, capability: str) -> Drop:
        drop = self.options.drops.get(name)
        if drop is None:
            guess = closest(name, self.options.drops)
            raise TerminalError(
                f"{self.system} has no drop '{name}' to {capability}"
                + (f" — did you mean '{guess}'?" if guess else "")
                + f"; drops: {', '.join(sorted(self.options.drops)) or 'none'}"
            )
        return drop

    def _publish(self, entity: str, name: str, data: bytes) -> None:
        """Publish ``name``; never through a symbolic link to a folder (the pattern's folders must be real ones)."""
        folder = self.directory
        for part in Path(name).parts[:-1]:
            folder = folder / part
            if folder.is_symlink():
                raise TransientError(
                    f"{self.system}.{entity}: cannot write {name}: {folder.relative_to(self.directory).as_posix()} "
                    f"is {_kind(folder)} in the drop directory {self.directory}; writes never follow links below "
                    "it (make it a real folder inside the directory)"
                )
        self._disk.publish(self.directory / name, data)

    def _file_name(self, entity: str, drop: Drop, key: Any, idempotency_key: str) -> str:
        if drop.pattern.count("*") != 1 or any(c in drop.pattern for c in "?[]"):
            raise TerminalError(
                f"{self.system}.{entity}: the drop's pattern '{drop.pattern}' cannot name written files; "
                "a drop that is written to needs exactly one '*' (and no '?' or '[...]'), e.g. 'ORDERS_*.xml'"
            )
        digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
        label = _safe_label(key)
        return drop.pattern.replace("*", f"{label}-{digest[:12]}" if label else digest[:20])

    def _os_problem(self, exc: OSError, doing: str, where: Path) -> str:
        hint = _ERRNO_HINTS.get(exc.errno or 0, exc.strerror or str(exc))
        code = errno.errorcode.get(exc.errno or 0, "")
        return f"{self.system}: {doing} {where}: {hint}" + (f" ({code})" if code else "")


def _safe_label(key: Any) -> str:
    """The record's key as a readable, portable part of a file name ('' when there is none)."""
    if key is None:
        return ""
    text = "_".join(str(k) for k in key) if isinstance(key, list | tuple) else str(key)
    return _SAFE_NAME.sub("_", text).strip("._-")[:48]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _archive_reasons(name: str, rejected: list[Entry], handed_over: int) -> str:
    """The text of ``archive/<archived name>.reason.txt``: each rejected record by line, and what to do."""
    lines = [
        f"file: {name}",
        f"archived at: {_now()}",
        f"rejected at read ({len(rejected)} record(s), each handed over to dead letters with its reason):",
        *(f"  {entry.error}" for entry in rejected),
        f"the file's other {handed_over} record(s) were handed over. To send the rejected ones, fix them at the "
        "source and drop a file holding just those records (a changed file gives every record a new id, so a "
        "corrected copy of this whole file sends its other records again too).",
    ]
    return "\n".join(lines) + "\n"


def _kind(path: Path, info: os.stat_result | None = None) -> str:
    """What an entry is, for a log line: 'a symbolic link (to /etc/passwd)', 'a named pipe (FIFO)', ..."""
    mode = (info or os.lstat(path)).st_mode
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link (to {os.readlink(path)})"
        except OSError:
            return "a symbolic link"
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return stat.S_IFMT(info.st_mode), info.st_dev, info.st_ino


def _not_regular(what: str) -> str:
    """The log line, after the entry's name, for an entry matching a drop's pattern that is not a regular file."""
    return (
        f"{what}, not a regular file: refused and left in place, never read (a drop takes regular files only: "
        "remove it, or drop the file itself)"
    )


def _link_on_path(what: str, pattern: str) -> str:
    """The log line, after the link's name, for a symbolic link where the pattern goes through a folder."""
    return (
        f"{what}, on the way to the drop's files ('{pattern}'): refused and left in place, not followed, nothing "
        "below it is listed or read (make it a real folder inside the drop directory)"
    )


def _read_all(descriptor: int) -> bytes:
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read()


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or a time-stamped variant when that is taken (a file of the same name came before)."""
    target = folder / name
    if not os.path.lexists(target):
        return target
    stem, dot, suffix = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    n = 1
    while True:
        candidate = folder / (f"{stem}.{stamp}" + (f"-{n}" if n > 1 else "") + (f".{suffix}" if dot else ""))
        if not os.path.lexists(candidate):
            return candidate
        n += 1


def _rename(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # archive/ on another file system: copy, then remove. A crash in between leaves the file in
        # place too; it is read again (its records are known to the inbox) and archived again. Only a
        # regular file is copied, and never through a link: copying opens what it copies.
        if not stat.S_ISREG(os.lstat(source).st_mode):
            raise
        shutil.copy2(source, target, follow_symlinks=False)
        source.unlink()


def _replace_file(path: Path, text: str) -> None:
    """Write a small file whole or not at all (temp file, then rename over the old one)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        with os.fdopen(os.open(temporary, flags, 0o644), "wb") as handle:
            handle.write(text.encode("utf-8"))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class _Watch:
    """Change notices for a directory (inotify, FSEvents, ReadDirectoryChangesW, via watchdog), as a wait.

    :meth:`changed` returns as soon as something changed in the directory, or after ``timeout``: the
    poll that still runs, for network shares where notices do not arrive and for a directory that is
    not there yet (it is watched from the first time it is).
    """

    def __init__(self, directory: Path, *, enabled: bool, log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.directory = directory
        self.enabled = enabled
        self.log = log
        self._event = asyncio.Event()
        self._observer: Any = None

    async def __aenter__(self) -> _Watch:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join, 5)

    async def changed(self, timeout: float) -> None:
        if self.enabled and self._observer is None and self.directory.is_dir():
            self._start()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel() that lands while a
        # notice sets the event, and the consumer it was meant to stop polls on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()
        self._event.clear()

    def _start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        loop = asyncio.get_running_loop()
        event = self._event

        class Wake(FileSystemEventHandler):
            def on_any_event(self, _event: FileSystemEvent) -> None:
                loop.call_soon_threadsafe(event.set)

        observer = Observer()
        try:
            observer.schedule(Wake(), str(self.directory), recursive=True)
            observer.start()
        except OSError as exc:  # out of inotify watches, a share that cannot be watched: polling still runs
            self.log.warning("cannot watch %s (%s); polling it", self.directory, exc)
            self.enabled = False
            return
        self._observer = observer
