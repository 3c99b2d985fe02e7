"""Hostile entries in a drop folder: symlinks, FIFOs, devices, directories, symlinked subfolders and folders.

Issue item 13: a symlink to /etc/passwd matching a drop's pattern was read and its lines ended in dead
letters. Every entry that is not a regular file reached without following a link is refused: logged
once (naming it and why), left where it is, and nothing it points at is read, on the schedule read
path and the event (consume) path alike. Moves (archive/, rejected/) stay inside the drop folder.

A FIFO blocks whoever opens it for reading until a writer comes; every scenario that has one runs
under :func:`within`, which fails the test instead of hanging it (and unblocks the stuck reader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.file import CONNECTOR, FileOptions
from connectors.file.client import FileConnection
from engine.connector import ConnectContext, Message, ReadItem
from engine.errors import TransientError

STOCK = {"stock": {"pattern": "stock_*.csv", "format": "csv", "delimiter": ";"}}
GOOD = "sku;qty\nGOOD;1\n"
SECRET = "sku;qty\nSECRET;1\n"
VIAS = ["read", "consume"]


# -- helpers ----------------------------------------------------------------------------------------


def open_files(directory: Path, drops: dict[str, Any], **options: Any) -> FileConnection:
    validated = FileOptions.model_validate(
        {"connector": "file", "directory": str(directory), "poll": "10ms", "drops": drops, **options}
    )
    connection = CONNECTOR.open(validated, ConnectContext(system="erp_files", client="filetest"))
    assert isinstance(connection, FileConnection)
    return connection


def within(seconds: float, scenario: Callable[[], Awaitable[Any]], *fifos: Path) -> Any:
    """Run ``scenario`` to its end in a thread of its own; fail (never hang) if it takes longer than ``seconds``."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(scenario())  # type: ignore[arg-type]
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:  # a reader blocked in open(): a writer that comes and goes lets it see end of file
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"still running after {seconds:g}s: something opened a FIFO and blocked")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def count_scans(connection: FileConnection) -> list[int]:
    """A counter of the connection's scans of the directory (one per poll of the event path)."""
    scans = [0]
    original = connection._scan

    async def counting(*args: Any) -> Any:
        scans[0] += 1
        return await original(*args)

    connection._scan = counting  # type: ignore[method-assign]
    return scans


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.001)


def handed_over(items: list[Any]) -> list[str]:
    """What reached the runtime, as text: the data of each record, or its raw text when rejected."""
    texts: list[str] = []
    for item in items:
        if isinstance(item, ReadItem):
            texts.append(repr(item.data) + (f" rejected: {item.rejected}" if item.rejected else ""))
        else:
            assert isinstance(item, Message)
            texts.append(item.body.decode("utf-8", "replace"))
    return texts


def take(connection: FileConnection, entity: str, via: str, *, passes: int = 3, done: Path | None = None) -> list[str]:
    """What the drop hands over in ``passes`` schedule reads, or in as many polls of the event path
    (after ``done`` exists, when given: the good file archived)."""
    if via == "read":

        async def reads() -> list[Any]:
            items: list[Any] = []
            for _ in range(passes):
                async for page in connection.read(entity):
                    items.extend(page)
            return items

        return handed_over(within(20, reads))
    scans = count_scans(connection)

    async def consumed() -> list[Any]:
        received: list[Any] = []

        async def handler(message: Message) -> None:
            received.append(message)

        task = asyncio.create_task(connection.consume(entity, handler))
        if done is not None:
            await until(done.exists, f"{done.name} archived")
        start = scans[0]
        await until(lambda: scans[0] >= start + passes, f"{passes} more polls")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return received

    return handed_over(within(20, consumed))


def warnings_about(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "seamline.connectors.file" and r.levelno >= logging.WARNING and name in r.getMessage()
    ]


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="seamline.connectors.file")
    return caplog


# -- entries that are not regular files ----------------------------------------------------------------


def make_symlink_out(inbox: Path, outside: Path) -> Path:
    (outside / "secret.csv").write_text(SECRET, encoding="utf-8")
    link = inbox / "stock_1.csv"
    link.symlink_to(outside / "secret.csv")
    return link


def make_symlink_in(inbox: Path, outside: Path) -> Path:
    (inbox / "data").mkdir()
    (inbox / "data" / "secret.csv").write_text(SECRET, encoding="utf-8")
    link = inbox / "stock_1.csv"
    link.symlink_to(Path("data") / "secret.csv")  # relative, to a file inside the directory
    return link


def make_symlink_passwd(inbox: Path, outside: Path) -> Path:
    link = inbox / "stock_1.csv"
    link.symlink_to("/etc/passwd")
    return link


def make_symlink_devnull(inbox: Path, outside: Path) -> Path:
    link = inbox / "stock_1.csv"
    link.symlink_to("/dev/null")
    return link


def make_dangling_symlink(inbox: Path, outside: Path) -> Path:
    link = inbox / "stock_1.csv"
    link.symlink_to(outside / "not_there.csv")
    return link


def make_fifo(inbox: Path, outside: Path) -> Path:
    fifo = inbox / "stock_1.csv"
    os.mkfifo(fifo)
    return fifo


def make_device(inbox: Path, outside: Path) -> Path:
    device = inbox / "stock_1.csv"
    try:
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a device node here ({exc})")
    return device


def make_directory(inbox: Path, outside: Path) -> Path:
    folder = inbox / "stock_1.csv"
    folder.mkdir()
    (folder / "stock_2.csv").write_text(SECRET, encoding="utf-8")
    return folder


HOSTILE = {
    "symlink out of the directory": (make_symlink_out, "is a symbolic link"),
    "symlink to a file inside it": (make_symlink_in, "is a symbolic link"),
    "symlink to /etc/passwd": (make_symlink_passwd, "is a symbolic link (to /etc/passwd)"),
    "symlink to /dev/null": (make_symlink_devnull, "is a symbolic link (to /dev/null)"),
    "dangling symlink": (make_dangling_symlink, "is a symbolic link"),
    "FIFO": (make_fifo, "is a named pipe (FIFO)"),
    "character device": (make_device, "is a character device"),
    "directory": (make_directory, "is a directory"),
}


def kind_of(path: Path) -> tuple[int, str]:
    info = os.lstat(path)
    return stat.S_IFMT(info.st_mode), os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_an_entry_that_is_not_a_regular_file_is_refused_once_left_in_place_and_never_read(
    tmp_path: Path, warnings: pytest.LogCaptureFixture, hostile: str, via: str
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    make, why = HOSTILE[hostile]
    entry = make(inbox, outside)
    before = kind_of(entry)
    (inbox / "stock_9.csv").write_text(GOOD, encoding="utf-8")

    taken = take(open_files(inbox, STOCK), "stock", via, done=inbox / "archive" / "stock_9.csv")

    assert taken == ([repr({"sku": "GOOD", "qty": "1"})] if via == "read" else ['{"sku": "GOOD", "qty": "1"}'])
    assert not any("root:" in text or "SECRET" in text for text in taken), taken
    assert kind_of(entry) == before  # left where it was, as it was (a link stays the link it was)
    assert (inbox / "archive" / "stock_9.csv").read_text(encoding="utf-8") == GOOD
    assert not (inbox / "archive" / "stock_1.csv").exists() and not (inbox / "rejected").exists()
    if hostile == "symlink out of the directory":
        assert (outside / "secret.csv").read_text(encoding="utf-8") == SECRET  # its target untouched
    (message,) = warnings_about(warnings, "stock_1.csv")  # once, not at every pass
    assert why in message and "refused" in message and "left in place" in message


def test_an_entry_replaced_by_another_hostile_one_is_warned_about_again(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    make_symlink_passwd(tmp_path, tmp_path)
    connection = open_files(tmp_path, STOCK)
    assert take(connection, "stock", "read", passes=2) == []
    (tmp_path / "stock_1.csv").unlink()
    os.mkfifo(tmp_path / "stock_1.csv")
    assert take(connection, "stock", "read", passes=2) == []
    first, second = warnings_about(warnings, "stock_1.csv")
    assert "symbolic link" in first and "named pipe (FIFO)" in second


# -- a symlinked folder on the way to a drop's files ------------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("pattern", ["inbound/*.csv", "*/*.csv", "**/*.csv", "inbound/**/*.csv"])
def test_a_symlinked_subfolder_in_the_pattern_path_is_not_followed(
    tmp_path: Path, warnings: pytest.LogCaptureFixture, pattern: str, via: str
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    outside.mkdir()
    (outside / "a.csv").write_text(SECRET, encoding="utf-8")
    (outside / "nested").mkdir()
    (outside / "nested" / "b.csv").write_text(SECRET, encoding="utf-8")
    inbox.mkdir()
    (inbox / "inbound").symlink_to(outside, target_is_directory=True)
    connection = open_files(inbox, {"stock": {"pattern": pattern, "format": "csv", "delimiter": ";"}})

    assert take(connection, "stock", via) == []

    assert (outside / "a.csv").read_text(encoding="utf-8") == SECRET  # not moved out of its tree
    assert (outside / "nested" / "b.csv").read_text(encoding="utf-8") == SECRET
    assert not (inbox / "archive").exists() and not (inbox / "rejected").exists()
    (message,) = warnings_about(warnings, "inbound")
    assert "inbound is a symbolic link" in message and "not followed" in message


def test_real_subfolders_are_still_read_beside_a_symlinked_one(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.csv").write_text(SECRET, encoding="utf-8")
    inbox = tmp_path / "inbox"
    (inbox / "real" / "deeper").mkdir(parents=True)
    (inbox / "real" / "deeper" / "ok.csv").write_text(GOOD, encoding="utf-8")
    (inbox / "batch.csv").mkdir()  # a folder '**' walks into, though its name matches '*.csv'
    (inbox / "batch.csv" / "ok2.csv").write_text(GOOD, encoding="utf-8")
    (inbox / "link").symlink_to(outside, target_is_directory=True)
    connection = open_files(inbox, {"stock": {"pattern": "**/*.csv", "format": "csv", "delimiter": ";"}})
    assert take(connection, "stock", "read") == [repr({"sku": "GOOD", "qty": "1"})] * 2
    assert (inbox / "archive" / "ok.csv").exists() and (inbox / "archive" / "ok2.csv").exists()
    assert (outside / "a.csv").exists()
    assert warnings_about(warnings, "batch.csv") == [] and len(warnings_about(warnings, "link")) == 1


# -- swapped between the scan and the read (TOCTOU) ---------------------------------------------------------


def swap_after_scan(connection: FileConnection, swap: Callable[[Path], None]) -> None:
    """Make the connection's first scan that finds a file ready swap it for something else before it is read."""
    original = connection._scan
    swapped: list[Path] = []

    async def scan_then_swap(*args: Any) -> Any:
        ready, waiting = await original(*args)
        if ready and not swapped:
            for found in ready:
                swap(found.path)
                swapped.append(found.path)
        return ready, waiting

    connection._scan = scan_then_swap  # type: ignore[method-assign]


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("into", ["symlink", "FIFO"])
def test_a_file_swapped_for_a_symlink_or_fifo_after_the_scan_is_refused_at_the_read(
    tmp_path: Path, warnings: pytest.LogCaptureFixture, into: str, via: str
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (outside / "secret.csv").write_text(SECRET, encoding="utf-8")
    (inbox / "stock_1.csv").write_text(GOOD, encoding="utf-8")
    connection = open_files(inbox, STOCK)

    def swap(path: Path) -> None:
        path.unlink()
        if into == "symlink":
            path.symlink_to(outside / "secret.csv")
        else:
            os.mkfifo(path)

    swap_after_scan(connection, swap)
    scans = count_scans(connection)

    if via == "read":
        taken = take(connection, "stock", via, passes=2)
    else:

        async def consumed() -> list[Any]:
            received: list[Any] = []

            async def handler(message: Message) -> None:
                received.append(message)

            task = asyncio.create_task(connection.consume("stock", handler))
            await until(lambda: bool(warnings_about(warnings, "stock_1.csv")), "the swapped file refused")
            start = scans[0]
            await until(lambda: scans[0] >= start + 3, "three more polls")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return received

        taken = handed_over(within(20, consumed, inbox / "stock_1.csv"))

    assert taken == []
    assert (outside / "secret.csv").read_text(encoding="utf-8") == SECRET
    expected = stat.S_IFLNK if into == "symlink" else stat.S_IFIFO
    assert stat.S_IFMT(os.lstat(inbox / "stock_1.csv").st_mode) == expected  # left in place
    assert not (inbox / "archive").exists() and not (inbox / "rejected").exists()
    (message,) = warnings_about(warnings, "stock_1.csv")  # at the read, not again at the next scan
    assert "refused" in message and ("symbolic link" in message if into == "symlink" else "FIFO" in message)


@pytest.mark.parametrize("via", VIAS)
def test_a_subfolder_swapped_for_a_symlink_after_the_scan_is_not_read_through(
    tmp_path: Path, warnings: pytest.LogCaptureFixture, via: str
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "inbound").mkdir(parents=True)
    (inbox / "inbound" / "stock_1.csv").write_text(GOOD, encoding="utf-8")
    outside.mkdir()
    (outside / "stock_1.csv").write_text(SECRET, encoding="utf-8")
    connection = open_files(inbox, {"stock": {"pattern": "inbound/*.csv", "format": "csv", "delimiter": ";"}})

    def swap(path: Path) -> None:
        (inbox / "inbound").rename(inbox / "inbound.old")
        (inbox / "inbound").symlink_to(outside, target_is_directory=True)

    swap_after_scan(connection, swap)
    taken = take(connection, "stock", via, passes=3)

    assert not any("SECRET" in text for text in taken), taken
    assert (outside / "stock_1.csv").read_text(encoding="utf-8") == SECRET  # not moved into archive/
    assert not (inbox / "archive").exists()
    (message,) = warnings_about(warnings, "inbound")  # at the read that caught it, not again at the next scan
    assert "inbound became a symbolic link" in message and "not followed" in message


# -- moves stay inside the drop folder ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["archive", "rejected"])
@pytest.mark.parametrize("value", ["../elsewhere", "/srv/archive", "a/../../x", "", ".", "./", "C:/archive", "..\\x"])
def test_archive_and_rejected_must_be_folders_inside_the_directory(option: str, value: str) -> None:
    with pytest.raises(ValidationError, match="must be a folder inside the system's directory"):
        FileOptions.model_validate({"connector": "file", "directory": "in", option: value})


def test_nested_archive_and_rejected_folders_are_fine() -> None:
    options = FileOptions.model_validate(
        {"connector": "file", "directory": "in", "archive": "done/archive", "rejected": "done/rejected"}
    )
    assert (options.archive, options.rejected) == ("done/archive", "done/rejected")


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize(
    ("option", "folder", "link", "sample"),
    [
        ("archive", "archive", "archive", GOOD),
        ("rejected", "rejected", "rejected", "sku;qty\n\xff\n"),  # not utf-8: the file goes to rejected/
        ("archive", "done/archive", "done", GOOD),  # a symlinked folder on the way to archive/
    ],
)  # fmt: skip
def test_a_symlinked_archive_or_rejected_folder_pointing_out_moves_nothing_out(
    tmp_path: Path, warnings: pytest.LogCaptureFixture, option: str, folder: str, link: str, sample: str, via: str
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (inbox / link).symlink_to(outside, target_is_directory=True)
    (inbox / "stock_1.csv").write_bytes(sample.encode("latin-1"))
    connection = open_files(inbox, STOCK, **{option: folder})

    if via == "read":
        with pytest.raises(TransientError, match="outside the drop directory"):
            take(connection, "stock", via, passes=1)
    else:
        assert take(connection, "stock", via) == []  # nothing read while it could not be moved
        assert any("outside the drop directory" in m for m in warnings_about(warnings, inbox.name))

    assert (inbox / "stock_1.csv").read_bytes() == sample.encode("latin-1")  # still in place
    assert list(outside.iterdir()) == []  # nothing moved or made out there


def test_an_archive_folder_linked_to_a_folder_inside_the_directory_is_used(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "archive").symlink_to(tmp_path / "old", target_is_directory=True)
    (tmp_path / "stock_1.csv").write_text(GOOD, encoding="utf-8")
    assert take(open_files(tmp_path, STOCK), "stock", "read", passes=1) == [repr({"sku": "GOOD", "qty": "1"})]
    assert (tmp_path / "old" / "stock_1.csv").read_text(encoding="utf-8") == GOOD


def test_a_write_never_goes_through_a_symlinked_subfolder(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (inbox / "out").symlink_to(outside, target_is_directory=True)
    connection = open_files(inbox, {"orders": {"pattern": "out/ORDERS_*.json", "format": "json"}})

    async def write() -> str:
        return await connection.write("orders", {"id": 1}, key=1, mode="upsert", idempotency_key="k1")

    with pytest.raises(TransientError, match="out is a symbolic link"):
        asyncio.run(write())
    assert list(outside.iterdir()) == []
