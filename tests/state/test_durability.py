"""Durable means durable: an acknowledged record is on disk (issue 17, item 1).

SQLite syncs its write-ahead log at every commit with ``synchronous=FULL`` (the default), so what the daemon
acknowledged upstream survives a power cut; ``state.durability: relaxed`` (``synchronous=NORMAL``) syncs at
checkpoints only and survives a crash of the process, not of the machine. Proven by counting the fsyncs a
process makes (strace), not by trusting a PRAGMA.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.flow import load_client
from engine.runtime.daemon import durability
from engine.state import open_store

ROOT = Path(__file__).resolve().parents[2]
COMMITS = 200
WRITER = """
import sys
from engine.state import NewItem, open_store
store = open_store(f"sqlite:///{sys.argv[1]}", durability=sys.argv[2])
for n in range(int(sys.argv[3])):
    store.enqueue([NewItem("f", f"k{n}", f"k{n}", {"n": n}, "test")])  # one commit each, as a webhook's
store.close()
"""


def syncs(tmp_path: Path, mode: str) -> int:
    """fsync + fdatasync calls of a process that makes COMMITS commits on a store opened with ``mode``."""
    done = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-c",
            "-e",
            "trace=fsync,fdatasync",
            sys.executable,
            "-c",
            WRITER,
            str(tmp_path / f"{mode}.db"),
            mode,
            str(COMMITS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    calls = re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$", done.stderr, re.M)
    return sum(int(count) for count, _ in calls)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace counts the fsyncs (Debian's strace)")
def test_every_commit_is_synced_by_default_and_relaxed_syncs_at_checkpoints_only(tmp_path: Path) -> None:
    full, relaxed = syncs(tmp_path, "full"), syncs(tmp_path, "relaxed")
    print(f"\n{COMMITS} commits: {full} syncs with durability full, {relaxed} with relaxed")
    assert full >= COMMITS  # at least one sync per commit: acknowledged is on disk
    assert relaxed < COMMITS / 4


def test_the_daemon_opens_its_store_with_the_specs_durability(tmp_path: Path) -> None:
    spec = tmp_path / "seamline.yaml"
    base = "seamline: 1\nclient: durable\n"
    spec.write_text(base, encoding="utf-8")
    assert durability(load_client(spec)) == "full"
    spec.write_text(base + "state: { durability: relaxed }\n", encoding="utf-8")
    assert durability(load_client(spec)) == "relaxed"
    for mode, pragma in (("full", 2), ("relaxed", 1)):
        store = open_store(f"sqlite:///{tmp_path / mode}.db", durability=mode)  # type: ignore[arg-type]
        try:
            assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == pragma  # type: ignore[attr-defined]
        finally:
            store.close()
