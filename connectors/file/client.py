"""The file connector's connection: scan a drop directory, hand records over, archive or reject files.

Who calls what is documented on :class:`engine.connector.Connection`; when a file is taken and what
becomes of it is in the package doc (:mod:`connectors.file`). How failures are translated where they
enter (no ``OSError`` ever leaves this module)::

    the directory is missing (a share not mounted), the disk is full,    TransientError: the environment
    permission denied, any other OSError while writing or reading         may recover; the runtime retries
    a record the drop cannot hold (a nested field in a CSV drop, a        TerminalError: the record itself
    character the encoding lacks), a drop pattern without '*' to write    is the problem
    a file that cannot be read                                            rejected/ with a reason file
    a malformed record (bad number, IDoc without a mandatory segment)     dead letters (event) or rejected/

The daemon's event trigger keeps polling through a missing directory (it logs once, then again when
the directory is back): a consumer that raised would stop for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from connectors.file import Drop, FileOptions
from connectors.file.formats import Entry, Unreadable, Unwritable, read_entries, render_record
from engine.connector import REJECT_HEADER, ConnectContext, Message, MessageHandler, closest, parse_duration
from engine.errors import TerminalError, TransientError

__all__ = ["REJECT_HEADER", "Disk", "FileConnection", "Settle"]

logger = logging.getLogger("seamline.connectors.file")

_TEMPORARY_SUFFIXES: Final = (".tmp", ".part")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
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
    signature: tuple[int, int, int]
    mtime: int
    marker: Path | None = None  # the done-marker that made it ready, removed once the file is moved


# -- the connection -------------------------------------------------------------------------------


class FileConnection:
    """An open connection to one drop directory; opening it touches nothing on disk."""

    def __init__(self, options: FileOptions, context: ConnectContext, *, disk: Disk | None = None) -> None:
        self.options = options
        self.context = context
        self.system = context.system
        # relative to the spec file that declares the system; the working directory when none is given
        base = context.base_dir or os.getcwd()
        self.directory = Path(base, options.directory)
        self.archive = self.directory / options.archive
        self.rejected = self.directory / options.rejected
        self.poll = max(parse_duration(options.poll), 0.005)  # 'poll: 0s' must not spin the event loop
        self.hold = min(self.poll, parse_duration(options.settle))  # how long a file must hold still
        self._disk = disk or Disk()
        self._settles: dict[str, Settle] = {}

    async def close(self) -> None:
        """Nothing is held open between calls; closing twice is harmless."""

    async def __aenter__(self) -> FileConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- the Connection contract --------------------------------------------------------------
    async def call(self, operation: str, request: Any, *, timeout: float) -> Any:
        raise TerminalError(f"{self.system}: a file system answers no calls; read a drop or write one")

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
            await asyncio.to_thread(self._disk.publish, path, data)
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
    ) -> AsyncIterator[list[Any]]:
        """The records of the drop's files present now, page by page (a page never mixes two files).

        A file is archived once the trigger has stored its last page (when it asks for the next one);
        ``since`` is not needed (a file is read once, then moved) and ``filter`` keeps the records
        whose fields equal the given values. Files still being written are left for the next pass:
        in size-and-time mode, files seen for the first time are looked at again after ``poll``.
        """
        drop = self._drop(entity, "read")
        settle = self._settles.setdefault(entity, Settle(hold=self.hold))
        ready, waiting = await self._scan(drop, settle)
        if waiting:
            await asyncio.sleep(self.hold)
            ready, _ = await self._scan(drop, settle)
        for found in ready:
            content = await self._content(found)
            if content is None:
                continue
            try:
                entries = await asyncio.to_thread(read_entries, content, drop)
            except Unreadable as exc:
                await self._settle_file(found, [str(exc)], handed_over=0, problems_are_records=False)
                continue
            good = [e.data for e in entries if e.ok and _matches(e.data, filter)]
            for start in range(0, len(good), max(1, page_size)):
                yield good[start : start + page_size]
            bad = [e.error for e in entries if not e.ok]
            await self._settle_file(found, bad, handed_over=len(good))

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
        async with _Watch(self.directory, enabled=self.options.watch) as watch:
            while True:
                waiting = 0
                try:
                    ready, waiting = await self._scan(drop, settle)
                except TransientError as exc:
                    if str(exc) != unavailable:
                        logger.warning("%s", exc)
                    unavailable, ready = str(exc), []
                else:
                    if unavailable:
                        logger.info("%s: the drop directory %s is available again", self.system, self.directory)
                    unavailable = ""
                for found in ready:
                    if not await self._hand_over(found, drop, handler):
                        break
                # A file still settling is looked at again once it may have held still long enough.
                await watch.changed(min(self.poll, self.hold) if waiting else self.poll)

    # -- one file --------------------------------------------------------------------------------
    async def _hand_over(self, found: _Found, drop: Drop, handler: MessageHandler) -> bool:
        """Every record of one file to ``handler``, then the file away; False to stop this pass."""
        content = await self._content(found)
        if content is None:
            return True
        digest = hashlib.sha256(content).hexdigest()[:12]
        try:
            entries = await asyncio.to_thread(read_entries, content, drop)
        except Unreadable as exc:
            with contextlib.suppress(TransientError):  # logged; the file is rejected at the next poll
                await self._settle_file(found, [str(exc)], handed_over=0, problems_are_records=False)
            return True
        for entry in entries:
            try:
                await handler(self._message(found, digest, entry))
            except Exception as exc:  # the runtime could not store it: give the file back, whole
                logger.warning(
                    "%s: %s: record %d was not taken (%s); the file stays and is read again at the next poll",
                    self.system,
                    found.name,
                    entry.index,
                    exc,
                )
                return False
            await asyncio.sleep(0)  # a large file must not starve the daemon's other work
        bad = sum(1 for e in entries if not e.ok)
        with contextlib.suppress(TransientError):  # logged; read again at the next poll, nothing doubled
            await self._settle_file(found, [], handed_over=len(entries) - bad, dead_lettered=bad)
        return True

    def _message(self, found: _Found, digest: str, entry: Entry) -> Message:
        message_id = f"{found.name}:{digest}:{entry.index}"
        headers: dict[str, Any] = {"file": found.name, "line": entry.line, "record": entry.index}
        if entry.ok:
            return Message(json.dumps(entry.data, ensure_ascii=False).encode("utf-8"), message_id, headers)
        reason = f"{found.name}: {entry.error}"
        headers[REJECT_HEADER] = reason
        # Not JSON on purpose: a runtime that does not know the header still dead-letters the body
        # (as "not JSON"), and keeps the reason with it.
        body = f"rejected: {reason}\n{entry.raw}".encode()
        return Message(body, message_id, headers)

    async def _content(self, found: _Found) -> bytes | None:
        try:
            return await asyncio.to_thread(found.path.read_bytes)
        except FileNotFoundError:
            return None  # taken away meanwhile (by an operator, or a replica of this daemon)
        except OSError as exc:
            logger.warning("%s", self._os_problem(exc, f"cannot read {found.name} in", self.directory))
            return None

    async def _settle_file(
        self,
        found: _Found,
        problems: list[str],
        *,
        handed_over: int,
        dead_lettered: int = 0,
        problems_are_records: bool = True,
    ) -> None:
        """Archive the file, or (with ``problems``) reject it with a reason file; TransientError if the disk says no."""
        try:
            if problems:
                where = await asyncio.to_thread(self._reject, found, problems, handed_over, problems_are_records)
                logger.warning("%s: %s rejected to %s: %s", self.system, found.name, where, problems[0])
            else:
                where = await asyncio.to_thread(self._move, found, self.archive)
                logger.info(
                    "%s: %s archived as %s (%d records handed over, %d dead-lettered)",
                    self.system,
                    found.name,
                    where,
                    handed_over,
                    dead_lettered,
                )
        except OSError as exc:
            problem = self._os_problem(exc, f"cannot move {found.name} out of", self.directory)
            logger.warning("%s; the file is read again later (records already handed over are not doubled)", problem)
            raise TransientError(problem) from None

    def _move(self, found: _Found, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = _free_name(folder, found.path.name)
        _rename(found.path, target)
        self._drop_marker(found)
        return target

    def _reject(self, found: _Found, problems: list[str], handed_over: int, problems_are_records: bool) -> Path:
        self.rejected.mkdir(parents=True, exist_ok=True)
        target = _free_name(self.rejected, found.path.name)
        lines = [
            f"file: {found.name}",
            f"rejected at: {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
            "reason:" if len(problems) == 1 else f"reasons ({len(problems)} records):",
            *(f"  {p}" for p in problems),
        ]
        if problems_are_records:
            lines.append(
                f"the file's other {handed_over} record(s) were handed over; fix the records above and drop the "
                "file again: records already handed over are not sent twice"
            )
        else:
            lines.append("nothing from this file was handed over; fix it and drop it again")
        # The reason first: if the daemon dies between the two steps, the file is still in place and
        # is rejected again under the same name, rewriting the same reason file.
        _replace_file(self.rejected / f"{target.name}.reason.txt", "\n".join(lines) + "\n")
        _rename(found.path, target)
        self._drop_marker(found)
        return target

    def _drop_marker(self, found: _Found) -> None:
        if found.marker is not None:
            found.marker.unlink(missing_ok=True)

    # -- scanning --------------------------------------------------------------------------------
    async def _scan(self, drop: Drop, settle: Settle) -> tuple[list[_Found], int]:
        """(files ready to take, oldest first; how many are still settling)."""
        try:
            return await asyncio.to_thread(self._ready, drop, settle)
        except OSError as exc:
            raise TransientError(self._os_problem(exc, "cannot list", self.directory)) from None

    def _ready(self, drop: Drop, settle: Settle) -> tuple[list[_Found], int]:
        if not self.directory.is_dir():
            raise TransientError(
                f"{self.system}: the drop directory {self.directory} is not there (a network share not mounted?); "
                "looking again at the next poll"
            )
        found = self._candidates(drop)
        if drop.done_marker is not None:
            marked = [replace(f, marker=f.path.with_name(f.path.name + drop.done_marker)) for f in found]
            return [f for f in marked if f.marker is not None and f.marker.exists()], 0
        still = settle.look({f.name: f.signature for f in found})
        ready = [f for f in found if f.name in still]
        return ready, len(found) - len(ready)

    def _candidates(self, drop: Drop) -> list[_Found]:
        found: list[_Found] = []
        for path in self.directory.glob(drop.pattern):
            relative = path.relative_to(self.directory)
            if any(part.startswith(".") for part in relative.parts) or path.name.endswith(_TEMPORARY_SUFFIXES):
                continue  # writers' temporary files, ours included
            if drop.done_marker is not None and path.name.endswith(drop.done_marker):
                continue
            if _inside(path, self.archive) or _inside(path, self.rejected):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            found.append(
                _Found(path, relative.as_posix(), (info.st_size, info.st_mtime_ns, info.st_ino), info.st_mtime_ns)
            )
        found.sort(key=lambda f: (f.mtime, f.name))  # oldest first: changes arrive in the order they were made
        return found

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


def _matches(record: Any, wanted: Mapping[str, Any] | None) -> bool:
    if not wanted:
        return True
    for path, value in wanted.items():
        node = record
        for part in str(path).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            return False
    return True


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or a time-stamped variant when that is taken (a file of the same name came before)."""
    target = folder / name
    if not target.exists():
        return target
    stem, dot, suffix = name.rpartition(".") if "." in name.lstrip(".") else (name, "", "")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    n = 1
    while True:
        candidate = folder / (f"{stem}.{stamp}" + (f"-{n}" if n > 1 else "") + (f".{suffix}" if dot else ""))
        if not candidate.exists():
            return candidate
        n += 1


def _rename(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # archive/ on another file system: copy, then remove. A crash in between leaves the file in
        # place too; it is read again (its records are known to the inbox) and archived again.
        shutil.copy2(source, target)
        source.unlink()


def _replace_file(path: Path, text: str) -> None:
    """Write a small file whole or not at all (temp file, then rename over the old one)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class _Watch:
    """Change notices for a directory (inotify, FSEvents, ReadDirectoryChangesW, via watchdog), as a wait.

    :meth:`changed` returns as soon as something changed in the directory, or after ``timeout``: the
    poll that still runs, for network shares where notices do not arrive and for a directory that is
    not there yet (it is watched from the first time it is).
    """

    def __init__(self, directory: Path, *, enabled: bool) -> None:
        self.directory = directory
        self.enabled = enabled
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
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
            logger.warning("cannot watch %s (%s); polling it", self.directory, exc)
            self.enabled = False
            return
        self._observer = observer
