"""Model snapshots in the ledger: saved by the learner, polled by every API replica.

The bytes live in the row, or in `snapshot_dir` (a shared volume) with the row naming the file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import ModelSnapshot


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


def load_latest(sessions: sessionmaker[Session]) -> Snapshot | None:
    with sessions() as s:
        row = s.scalar(select(ModelSnapshot).order_by(ModelSnapshot.version.desc()).limit(1))
        if row is None:
            return None
        data = row.model if row.model is not None else Path(row.path or "").read_bytes()
        return Snapshot(row.version, row.last_seq, row.vw_args, data)


def save(
    sessions: sessionmaker[Session],
    model: bytes,
    last_seq: int,
    vw_args: str,
    snapshot_dir: str | None = None,
) -> int:
    """Store a new snapshot and return its version (previous newest + 1)."""
    with sessions.begin() as s:
        version = (s.scalar(select(func.max(ModelSnapshot.version))) or 0) + 1
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
            )
        )
    return version
