"""Model snapshots in the ledger: saved by the learner, polled by every API replica.

The bytes live in the row, or in `snapshot_dir` (a shared volume) with the row naming the file.
The newest version is the one served and the one the learner continues from, so a rollback or
an import is a new newest version (`model_versions`); `save(expected_latest=…)` fences the
learner, so that it never writes its in-memory model over a version someone else added.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import ModelSnapshot


class SnapshotError(Exception):
    """Base of the snapshot store's errors."""


class SnapshotReplaced(SnapshotError):
    """A newer version than the saver's own was added (a rollback or an import): the saver must
    continue from it rather than write over it."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    last_seq: int
    vw_args: str
    model: bytes


def latest_version(sessions: sessionmaker[Session]) -> int | None:
    """The newest snapshot's version, or None when there is none (a cheap indexed read)."""
    with sessions() as s:
        return s.scalar(select(func.max(ModelSnapshot.version)))


def _read(row: ModelSnapshot) -> Snapshot:
    data = row.model if row.model is not None else Path(row.path or "").read_bytes()
    return Snapshot(row.version, row.last_seq, row.vw_args, data)


def load_latest(sessions: sessionmaker[Session]) -> Snapshot | None:
    with sessions() as s:
        row = s.scalar(select(ModelSnapshot).order_by(ModelSnapshot.version.desc()).limit(1))
        return None if row is None else _read(row)


def load_version(sessions: sessionmaker[Session], version: int) -> Snapshot | None:
    """Version `version`, or None when the ledger has no such version (never kept or pruned).
    Raises OSError when its file is missing or unreadable."""
    with sessions() as s:
        row = s.get(ModelSnapshot, version)
        return None if row is None else _read(row)


def save(
    sessions: sessionmaker[Session],
    model: bytes | Callable[[int], bytes],
    last_seq: int,
    vw_args: str,
    snapshot_dir: str | None = None,
    *,
    source: str = "learned",
    origin: int | None = None,
    expected_latest: int | None = None,
) -> int:
    """Store a new snapshot and return its version (previous newest + 1).

    With `expected_latest` (the version the saver's model continues; 0 for none) the save is
    refused with `SnapshotReplaced` when the newest version is another one. Two savers racing
    for the same version collide on the primary key (an IntegrityError for the caller).
    `model` may be a function of the version being saved that returns the bytes (a restarted
    model's header names its own version).
    """
    with sessions.begin() as s:
        newest = s.scalar(select(func.max(ModelSnapshot.version))) or 0
        if expected_latest is not None and newest != expected_latest:
            raise SnapshotReplaced(
                f"version {newest} is the newest, not {expected_latest}: continue from it"
            )
        version = newest + 1
        if callable(model):
            model = model(version)
        path = None
        blob: bytes | None = model
        if snapshot_dir:
            target = Path(snapshot_dir)
            target.mkdir(parents=True, exist_ok=True)
            file = target / f"model-{version:08d}.vw"
            tmp = file.with_suffix(".tmp")
            tmp.write_bytes(model)
            tmp.replace(file)  # atomic: a reader never sees half a model
            path, blob = str(file), None
        s.add(
            ModelSnapshot(
                version=version,
                last_seq=last_seq,
                vw_args=vw_args,
                model=blob,
                path=path,
                created_at=time.time(),
                source=source,
                origin=origin,
            )
        )
    return version
