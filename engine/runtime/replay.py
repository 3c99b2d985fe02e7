"""Replaying dead letters: one function for ``seamline dlq replay`` and ``POST /api/dead-letters/replay``.

Both ask the same thing of the store and record it the same way, so a replay made from the console shows in
``seamline dlq history`` beside one made from a terminal. The functions here block on the store: the CLI calls
them directly, the daemon through its inbox (``await inbox.run(replay_dead_letters, store, ...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.state import DaemonRecord, DeadLetter, ReplayRecord, StateStore

__all__ = ["ReplayOutcome", "one_letter", "other_versions", "replay_dead_letters"]


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What a replay did (or, with ``dry_run``, would do)."""

    chosen: tuple[int, ...]  # the open dead letters the selection named
    replayed: int  # how many went back to the inbox (would go, on a dry run)
    superseded: tuple[int, ...]  # chosen letters whose record had a newer change delivered since
    skipped: tuple[int, ...]  # the superseded ones left in dead letters (none when forced)
    not_found: tuple[int, ...]  # asked-for ids that are no open dead letter (unknown, replayed, or another flow's)
    forced: bool
    dry_run: bool
    record_id: int | None  # the replay's entry in `dlq history`; None on a dry run


def replay_dead_letters(
    store: StateStore,
    *,
    flow: str | None,
    ids: Sequence[int] = (),
    force: bool = False,
    spec_version: str,
    by: str,
    dry_run: bool = False,
) -> ReplayOutcome:
    """Put the open dead letters of ``flow`` (all flows when None) back in the inbox, only ``ids`` when given.

    A letter whose record has had a newer change delivered since is skipped unless ``force``: replaying it would
    write the older change over the newer one. ``spec_version`` (the spec on disk the replay was made against)
    and ``by`` (who asked) go into the replay's record. The caller decides that the selection is deliberate: no
    flow and no ids means every open dead letter.
    """
    letters = store.dead_letters(flow)
    open_ids = {letter.id for letter in letters}
    wanted = set(ids)
    chosen = tuple(letter.id for letter in letters if not wanted or letter.id in wanted)
    not_found = tuple(sorted(wanted - open_ids))
    superseded = tuple(store.superseded(chosen))
    skipped = () if force else superseded
    if dry_run:
        return ReplayOutcome(chosen, len(chosen) - len(skipped), superseded, skipped, not_found, force, True, None)
    count = store.replay(chosen, include_superseded=force)
    record_id = store.record_replay(ReplayRecord(flow or "", chosen, count, len(skipped), force, spec_version, by))
    return ReplayOutcome(chosen, count, superseded, skipped, not_found, force, False, record_id)


def other_versions(store: StateStore, on_disk: str, seen_within: float) -> list[DaemonRecord]:
    """The daemons on this store (heard from within ``seen_within`` seconds) that run another spec version than
    ``on_disk``: letters replayed now are delivered with their version, so a fix on disk is not in effect yet."""
    return [daemon for daemon in store.daemons(seen_within=seen_within) if daemon.spec_version != on_disk]


def one_letter(store: StateStore, letter_id: int) -> tuple[DeadLetter | None, bool]:
    """The dead letter and whether its record has had a newer change delivered since (a replay would skip it).

    An id no store can hold (a letter's id is a positive 64-bit integer) is no letter: not a question for the store,
    which could not even take the number."""
    if not 0 < letter_id < 2**63:
        return None, False
    found = next(iter(store.dead_letters(include_replayed=True, letter_id=letter_id)), None)
    return found, bool(found is not None and store.superseded([letter_id]))
