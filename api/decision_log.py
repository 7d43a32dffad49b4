"""The API's append-only log: a decision (or an event) is answered only once it is written here.

Why a log on the request path: an answer the storefront has seen must survive the API process
being killed at any moment. `append` frames the message and hands it to the OS with one
`os.write` on a file opened `O_APPEND`; once `write` returns, the bytes live in the kernel's page
cache and survive SIGKILL of the process (they die only with the machine). The fsync policy
(`COPYLOOP_LOG_FSYNC`) decides how much a power cut may take:

- `never`: the OS writes back when it likes (seconds); the request path pays one `write`.
- `batch` (default): the publisher thread calls `fdatasync` every `sync_interval_s` (0.2 s), so
  a power cut loses at most the last fraction of a second of answered decisions; the request path
  still pays only the `write`.
- `always`: `fdatasync` before the answer; each decision waits for the disk (a few hundred µs on
  an SSD, milliseconds on network disks) on the event loop, so throughput per worker falls to
  roughly one over the disk's sync latency.

Layout: every process writes its own segments `<dir>/<time_ns>-<pid>-<n>.log`, each locked with
an exclusive `flock` for as long as the process holds it, so two live processes never ship the
same segment, and a process adopts a segment only once its writer is gone (the lock dies with
the process). A segment is created and locked under a name that adopters ignore (`.new`), then
renamed, so that no process ever sees a live writer's segment unlocked. A segment is rotated by
size or age and removed only once the ledger holds every record in it (`api.publisher`).
`<segment>.pos` remembers how far shipping and confirming got.

A frame is `magic(2) crc32(4) length(4)` then the body `kind(1) len(topic)(2) len(key)(2)
len(ident)(2) topic key ident value`; `kind` says how the publisher confirms the record (the
ledger row of a decision or an event, or the broker's acknowledgement for anything else). A torn
or corrupt frame ends what is read from a segment (a crash mid-`write`).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

FsyncPolicy = Literal["never", "batch", "always"]
SUFFIX = ".log"
NEW_SUFFIX = ".new"  # a segment being created, not yet locked (`_create_locked`)
_MAGIC = b"\xc1\x0b"
_HEAD = struct.Struct("<2sII")  # magic, crc32 of the body, body length
_BODY = struct.Struct("<BHHH")  # kind, topic length, key length, ident length


class Kind(IntEnum):
    """How the publisher learns a record is safe: the ledger's row, or the broker's ack."""

    OTHER = 0  # confirmed by the broker's acknowledgement
    DECISION = 1  # confirmed once `decisions` holds `ident` (the decision id)
    EVENT = 2  # confirmed once `events` holds `ident` (the event id)
    ACTIVATION = 3  # confirmed once `activations` holds `ident` (the decision id)


class LogUnavailable(OSError):
    """The log could not take a message (disk full, directory gone): nothing may be answered."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One framed message: where it lies in its segment, how it is confirmed, what is sent."""

    start: int
    end: int
    kind: Kind
    ident: str
    topic: str
    key: str
    value: bytes


def encode(kind: Kind, topic: str, key: str, ident: str, value: bytes) -> bytes:
    """One frame.

    >>> frame = encode(Kind.DECISION, "t.decisions", "d1", "d1", b"{}")
    >>> [(r.kind, r.key, r.value) for r in decode(frame)[0]]
    [(<Kind.DECISION: 1>, 'd1', b'{}')]
    """
    t, k, i = topic.encode(), key.encode(), ident.encode()
    body = _BODY.pack(kind, len(t), len(k), len(i)) + t + k + i + value
    return _HEAD.pack(_MAGIC, zlib.crc32(body), len(body)) + body


def decode(data: bytes, base: int = 0) -> tuple[list[LogRecord], int]:
    """The whole frames at the start of `data` (which begins at offset `base` of its segment),
    and how many bytes they take; stops at a partial or corrupt frame."""
    out: list[LogRecord] = []
    pos, n = 0, len(data)
    while pos + _HEAD.size <= n:
        magic, crc, length = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length
        if magic != _MAGIC or end > n:
            break
        body = data[pos + _HEAD.size : end]
        if zlib.crc32(body) != crc:
            break
        kind, lt, lk, li = _BODY.unpack_from(body)
        o = _BODY.size
        topic = body[o : o + lt].decode()
        key = body[o + lt : o + lt + lk].decode()
        ident = body[o + lt + lk : o + lt + lk + li].decode()
        value = body[o + lt + lk + li :]
        out.append(LogRecord(base + pos, base + end, Kind(kind), ident, topic, key, value))
        pos = end
    return out, pos


@dataclass(eq=False)
class Segment:
    """One segment file held (locked) by this process.

    `size` is what may be read: for the segment this process writes, the bytes of whole frames
    written so far; for an adopted or closed one, its length. `read_pos` is how far the
    publisher has read it; `shipped` and `confirmed` are the offsets (persisted in `.pos`) below
    which every record was acknowledged by the broker, and is held by the ledger.
    """

    path: Path
    lock_fd: int  # holds the flock (for the own active segment also the write descriptor)
    size: int
    writing: bool = False
    created: float = field(default_factory=time.monotonic)
    read_pos: int = 0
    shipped: int = 0
    confirmed: int = 0
    dirty: bool = False  # written since the last fdatasync

    def read(self, limit_bytes: int = 1 << 20) -> list[LogRecord]:
        """Whole records from `read_pos` (at most ~`limit_bytes`); advances `read_pos`."""
        remaining = self.size - self.read_pos
        if remaining <= 0:
            return []
        data = os.pread(self.lock_fd, min(remaining, limit_bytes), self.read_pos)
        records, used = decode(data, self.read_pos)
        if not used and len(data) < remaining:  # one frame larger than the read
            data = os.pread(self.lock_fd, remaining, self.read_pos)
            records, used = decode(data, self.read_pos)
        if not used and not self.writing:
            log.warning(
                "%s: %d unreadable byte(s) from offset %d (a torn write?); skipped",
                self.path,
                remaining,
                self.read_pos,
            )
            self.size = self.read_pos
        self.read_pos += used
        return records

    def save_positions(self) -> None:
        """Remember `shipped`/`confirmed` (write and rename; no fsync: a lost update only means
        records are checked against the ledger, or re-sent, again)."""
        tmp = self.path.with_suffix(".pos.tmp")
        tmp.write_text(f"{self.shipped} {self.confirmed}")
        tmp.replace(self.path.with_suffix(".pos"))

    def load_positions(self) -> None:
        try:
            shipped, confirmed = (int(x) for x in self.path.with_suffix(".pos").read_text().split())
        except (FileNotFoundError, ValueError):
            return
        self.confirmed = min(confirmed, self.size)
        self.shipped = max(self.confirmed, min(shipped, self.size))
        self.read_pos = self.confirmed


class DecisionLog:
    """This process's segments under `directory`: `append` (request path, any thread) and what
    the publisher thread reads, syncs, adopts and prunes. Thread-safe."""

    def __init__(
        self,
        directory: str | Path,
        *,
        fsync: FsyncPolicy = "batch",
        segment_bytes: int = 16 << 20,
        segment_age_s: float = 60.0,
    ) -> None:
        if fsync not in ("never", "batch", "always"):
            raise ValueError(f"fsync must be never, batch or always, got {fsync!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync: FsyncPolicy = fsync
        self.segment_bytes = segment_bytes
        self.segment_age_s = segment_age_s
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._active: Segment | None = None
        self._segments: list[Segment] = []  # every segment held, oldest first
        self.appended = 0
        self.closed = False

    # -- the request path ------------------------------------------------------------------------
    def append(self, kind: Kind, topic: str, key: str, ident: str, value: bytes) -> None:
        """Write one message; returns once the OS holds it (and the disk, under `always`).
        Raises `LogUnavailable` when it could not be written whole."""
        self.append_many([encode(kind, topic, key, ident, value)])

    def append_many(self, frames: list[bytes]) -> None:
        """Write `encode`d frames with one `write`: all of them or (`LogUnavailable`) none."""
        data = b"".join(frames)
        with self._lock:
            if self.closed:
                raise LogUnavailable("the decision log is closed (the API is stopping)")
            seg = self._active
            if seg is None or seg.size >= self.segment_bytes:
                seg = self._open_segment()
            try:
                written = os.write(seg.lock_fd, data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
                if self.fsync == "always":
                    os.fdatasync(seg.lock_fd)
            except OSError as exc:
                _truncate(seg)
                raise LogUnavailable(f"cannot write the decision log {seg.path}: {exc}") from exc
            seg.size += len(data)
            seg.dirty = True
            self.appended += len(frames)

    def _open_segment(self) -> Segment:
        if self._active is not None:
            self._active.writing = False
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}{SUFFIX}"
        path = self.directory / name
        fd = _create_locked(path)
        seg = Segment(path, fd, 0, writing=True)
        if self.fsync == "always":
            _fsync_dir(self.directory)
        self._active = seg
        self._segments.append(seg)
        return seg

    # -- the publisher's side ---------------------------------------------------------------------
    def segments(self) -> list[Segment]:
        with self._lock:
            return list(self._segments)

    def rotate_if_old(self) -> None:
        """Close the active segment for appends once it is `segment_age_s` old, so that a quiet
        process's last segment becomes prunable (the next append opens a new one)."""
        with self._lock:
            seg = self._active
            if seg is not None and seg.size and time.monotonic() - seg.created > self.segment_age_s:
                seg.writing = False
                self._active = None

    def sync(self) -> None:
        """`fdatasync` every segment written since the last call (the `batch` policy)."""
        with self._lock:
            dirty = [s for s in self._segments if s.dirty]
            for s in dirty:
                s.dirty = False
        for s in dirty:
            try:
                os.fdatasync(s.lock_fd)
            except OSError as exc:  # pruned meanwhile (closed descriptor) or a failing disk
                log.warning("fdatasync of %s failed: %s", s.path, exc)
        if dirty:
            _fsync_dir(self.directory)

    def adopt_orphans(self) -> list[Segment]:
        """Take over segments whose writer is gone (no flock held), oldest first."""
        with self._lock:
            if self.closed:
                return []
            mine = {s.path for s in self._segments}
        for path in self.directory.glob(f"*{NEW_SUFFIX}"):
            _remove_stray(path, self.segment_age_s)
        adopted = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path in mine:
                continue
            seg = _try_adopt(path)
            if seg is not None:
                adopted.append(seg)
        if adopted:
            with self._lock:
                self._segments = sorted([*self._segments, *adopted], key=lambda s: s.path.name)
            log.info("adopted %d decision log segment(s) of stopped processes", len(adopted))
        return adopted

    def remove(self, seg: Segment) -> None:
        """Delete a segment whose every record is confirmed. Unlinked before it is unlocked, so
        an adopter that locks it next sees it gone (`_try_adopt`'s inode check)."""
        with self._lock:
            if seg.writing:
                return
            self._segments.remove(seg)
        seg.path.unlink(missing_ok=True)
        seg.path.with_suffix(".pos").unlink(missing_ok=True)
        os.close(seg.lock_fd)

    def close(self) -> None:
        """Refuse appends, sync (unless `never`) and release every lock; segments stay on disk
        for the next process to adopt."""
        with self._lock:
            self.closed = True
            self._active = None
            segments, self._segments = self._segments, []
        for seg in segments:
            seg.writing = False
            try:
                if self.fsync != "never":
                    os.fdatasync(seg.lock_fd)
                seg.save_positions()
            except OSError as exc:
                log.warning("closing %s: %s", seg.path, exc)
            os.close(seg.lock_fd)


def _create_locked(path: Path) -> int:
    """A new segment at `path`, open for appends and locked before any other process can see
    it: the file is created and locked as `<name>.new`, which adopters never look at, then
    renamed into place. (Created under its own name, it was for an instant an unlocked
    segment that another process's publisher could adopt as an orphan, find empty and delete,
    while this process went on writing, and answering, into the deleted file.)"""
    new = path.with_suffix(NEW_SUFFIX)
    try:
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
    except OSError as exc:
        raise LogUnavailable(f"cannot create a log segment in {path.parent}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(new, path)
    except OSError as exc:
        os.close(fd)
        new.unlink(missing_ok=True)
        raise LogUnavailable(f"cannot create the log segment {path}: {exc}") from exc
    return fd


def _remove_stray(path: Path, min_age_s: float) -> None:
    """Delete a `.new` file that a process killed while creating a segment left behind (empty:
    nothing is written to a segment before its rename), once it is too old to be one that a
    live process is creating."""
    try:
        if time.time() - path.stat().st_mtime > min_age_s:
            path.unlink()
            log.info("removed %s, left by a process killed while creating it", path)
    except FileNotFoundError:
        pass


def _try_adopt(path: Path) -> Segment | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        if os.stat(path).st_ino != st.st_ino:
            raise FileNotFoundError(path)  # pruned by another adopter meanwhile
    except OSError:
        os.close(fd)
        return None
    seg = Segment(path, fd, st.st_size)
    seg.load_positions()
    return seg


def _truncate(seg: Segment) -> None:
    """Cut a partly written frame off, so the next frame starts where readers expect one."""
    try:
        os.ftruncate(seg.lock_fd, seg.size)
    except OSError:
        log.exception("cannot truncate %s after a failed write; it ends at %d", seg.path, seg.size)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
