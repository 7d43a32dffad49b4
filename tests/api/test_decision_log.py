"""The decision log's files and locks, with real files and real `flock`s between two logs
(two open file descriptions lock each other exactly as two processes do)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from api.decision_log import DecisionLog, Kind, Segment

_armed: list[Callable[[], None]] = []  # what the audit hook runs, while a block arms it
_installed: list[bool] = []


def _hook(_event: str, _args: tuple[Any, ...]) -> None:
    if _armed:
        fn = _armed.pop()  # what `fn` calls into the OS does not run `fn` again
        try:
            fn()
        finally:
            _armed.append(fn)


@contextmanager
def at_each_os_call(fn: Callable[[], None]) -> Iterator[None]:
    """Run `fn` just before every audited call into the OS (`open`, `fcntl.flock`,
    `os.rename`, …) made inside the block. (Audit hooks cannot be removed; this one is
    installed once and does nothing outside such a block.)"""
    if not _installed:
        sys.addaudithook(_hook)
        _installed.append(True)
    _armed.append(fn)
    try:
        yield
    finally:
        _armed.clear()


def test_a_new_segment_is_never_adopted_or_pruned_by_another_process(tmp_path: Path) -> None:
    # Another API process's publisher adopting orphans, and pruning what it adopted and found
    # empty, at every step of this process opening its segment: it must never take the new
    # segment (it did in the instant between creating the file and locking it, and the
    # writer then went on writing acknowledged decisions to a deleted file).
    writer, other = DecisionLog(tmp_path), DecisionLog(tmp_path)
    adopted: list[Segment] = []

    def adopt_and_prune() -> None:
        for seg in other.adopt_orphans():
            adopted.append(seg)
            if not seg.read() and seg.read_pos == seg.size:
                other.remove(seg)

    with at_each_os_call(adopt_and_prune):
        writer.append(Kind.DECISION, "t", "d1", "d1", b"{}")
    assert adopted == []
    [seg] = writer.segments()
    assert seg.path.exists() and seg.path.stat().st_size == seg.size > 0
    writer.close()
    [orphan] = other.adopt_orphans()  # the writer is gone: now it is the other's to ship
    assert [r.ident for r in orphan.read()] == ["d1"]
    other.close()


def test_a_new_file_left_by_a_killed_creator_is_removed_once_old(tmp_path: Path) -> None:
    stray, fresh = tmp_path / "1-1-000000.new", tmp_path / "2-2-000000.new"
    stray.touch()
    fresh.touch()
    os.utime(stray, (time.time() - 120, time.time() - 120))
    log = DecisionLog(tmp_path, segment_age_s=60)
    assert log.adopt_orphans() == []
    assert sorted(tmp_path.iterdir()) == [fresh]  # one being created right now stays
    log.close()
