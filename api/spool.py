"""A durable, ordered, on-disk queue of Kafka messages that could not be delivered.

Records are JSON lines `{"topic", "key", "value_b64"}` appended to numbered files under one
directory and fsync'ed once per appended batch. Files are drained oldest first; each file's
progress (bytes already delivered) is kept in a `.pos` sidecar so a drain interrupted by a failure
or a crash resumes after the last delivered record instead of re-sending the file. A torn last
line (a crash mid-append) is skipped with a warning.

Several processes may share the directory (uvicorn workers, a restarted replica): each holds an
exclusive `flock` on the files it writes, so another process adopts a file only once its writer
is gone (the lock dies with the process), and the inode check after locking keeps two adopters
from both draining a file that one of them has already removed.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SUFFIX = ".spool"


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka message: topic, key, value bytes."""

    topic: str
    key: str
    value: bytes

    def to_line(self) -> bytes:
        payload = {"topic": self.topic, "key": self.key, "value_b64": _b64(self.value)}
        return json.dumps(payload, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> Record:
        data = json.loads(line)
        return cls(data["topic"], data["key"], base64.b64decode(data["value_b64"]))


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


@dataclass
class _File:
    path: Path
    handle: IO[bytes]  # open, holding our exclusive flock


class Spool:
    """The spool directory as seen by one process. Thread-safe."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._current: _File | None = None  # the file appends go to
        self._owned: list[_File] = []  # closed for appends, waiting to be drained, oldest first
        self.pending = 0  # records written or adopted and not yet drained

    # -- writing -------------------------------------------------------------------------------
    def append(self, records: Sequence[Record]) -> None:
        """Write `records` at the end of the spool, durably (one fsync), in order."""
        if not records:
            return
        data = b"".join(r.to_line() for r in records)
        with self._lock:
            if self._current is None:
                self._current = self._open_new()
            handle = self._current.handle
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            self.pending += len(records)

    def _open_new(self) -> _File:
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}{SUFFIX}"
        path = self.directory / name
        handle = open(path, "ab")  # kept open (and locked) while owned
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        _fsync_dir(self.directory)
        return _File(path, handle)

    # -- adopting files of dead processes --------------------------------------------------------
    def adopt_orphans(self) -> int:
        """Take over spool files whose writer is gone (no flock held); returns how many."""
        adopted = 0
        with self._lock:
            mine = {f.path for f in self._owned}
            if self._current is not None:
                mine.add(self._current.path)
            for path in sorted(self.directory.glob(f"*{SUFFIX}")):
                if path in mine:
                    continue
                owned = _try_lock(path)
                if owned is None:
                    continue
                self._owned.append(owned)
                self._owned.sort(key=lambda f: f.path.name)
                self.pending += _count_records(owned.path, _read_pos(owned.path))
                adopted += 1
        if adopted:
            log.info("adopted %d spool file(s) from %s", adopted, self.directory)
        return adopted

    # -- draining --------------------------------------------------------------------------------
    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._owned) or self._current is not None

    def drain(self, send: Callable[[list[Record]], int], chunk: int = 500) -> int:
        """Deliver spooled records in order through `send`, which returns how many leading
        records of its batch it delivered.

        Progress inside a file is saved after each chunk; a file is removed once all its records
        are delivered. Stops at the first shortfall, leaving the rest spooled. Returns the number
        of records delivered.
        """
        with self._lock:
            if self._current is not None:  # new appends go to a new file from here on
                self._owned.append(self._current)
                self._current = None
            files = list(self._owned)
        delivered = 0
        for file in files:
            n, complete = self._drain_file(file, send, chunk)
            delivered += n
            if not complete:
                break
            with self._lock:
                self._owned.remove(file)
            _remove(file)
        return delivered

    def _drain_file(
        self, file: _File, send: Callable[[list[Record]], int], chunk: int
    ) -> tuple[int, bool]:
        pos = _read_pos(file.path)
        delivered = 0
        with open(file.path, "rb") as fh:
            fh.seek(pos)
            while True:
                batch, ends = _read_chunk(fh, file.path, chunk)
                if not batch:
                    return delivered, True
                n = send([r for r in batch if r is not None])
                # `None` marks an unreadable line: count it as done so it is skipped.
                done = _done_prefix(batch, n)
                if done:
                    pos = ends[done - 1]
                    _write_pos(file.path, pos)
                    delivered += n
                    with self._lock:
                        self.pending = max(0, self.pending - done)
                if done < len(batch):
                    return delivered, False

    def close(self) -> None:
        """Release this process's locks; undrained files stay for the next process."""
        with self._lock:
            for f in [*self._owned, *([self._current] if self._current else [])]:
                f.handle.close()
            self._owned, self._current = [], None


def _try_lock(path: Path) -> _File | None:
    try:
        handle = open(path, "ab")  # kept open (and locked) while owned
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
            raise FileNotFoundError(path)  # drained and removed by another adopter
    except OSError:
        handle.close()
        return None
    return _File(path, handle)


def _read_chunk(fh: IO[bytes], path: Path, chunk: int) -> tuple[list[Record | None], list[int]]:
    """Up to `chunk` records from `fh`'s position, each with the file offset after it.
    An unreadable line gives `None`; a torn last line (crash mid-append) ends the chunk."""
    batch: list[Record | None] = []
    ends: list[int] = []
    while len(batch) < chunk:
        line = fh.readline()
        if not line:
            break
        if not line.endswith(b"\n"):
            log.warning("skipping a torn record at the end of %s", path)
            break
        try:
            batch.append(Record.from_line(line))
        except (ValueError, KeyError) as exc:
            log.warning("skipping an unreadable record in %s: %s", path, exc)
            batch.append(None)
        ends.append(fh.tell())
    return batch, ends


def _done_prefix(batch: Sequence[Record | None], delivered: int) -> int:
    """How many leading entries of `batch` are done when `delivered` real records were sent."""
    done = 0
    for item in batch:
        if item is not None:
            if delivered == 0:
                break
            delivered -= 1
        done += 1
    return done


def _count_records(path: Path, pos: int) -> int:
    with open(path, "rb") as fh:
        fh.seek(pos)
        return sum(1 for line in fh if line.endswith(b"\n"))


def _pos_path(path: Path) -> Path:
    return path.with_suffix(".pos")


def _read_pos(path: Path) -> int:
    try:
        return int(_pos_path(path).read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_pos(path: Path, pos: int) -> None:
    tmp = _pos_path(path).with_suffix(".pos.tmp")
    with open(tmp, "w") as fh:
        fh.write(str(pos))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(_pos_path(path))


def _remove(file: _File) -> None:
    # Remove before unlocking, so an adopter that locks it next sees it gone (inode check).
    file.path.unlink(missing_ok=True)
    _pos_path(file.path).unlink(missing_ok=True)
    _fsync_dir(file.path.parent)
    file.handle.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
