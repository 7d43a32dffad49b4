"""Bandit model versions: list them, add one (a rollback, an import or a restart), prune old
ones.

Every snapshot is a version (`snapshots`). The newest is served: each API process reloads it
within `model_reload_s`, and the learner continues from it. So a version *served* from its
creation until the next version was created, and a rollback or an import is simply a new
newest version whose bytes come from elsewhere; its `last_seq` is the ledger's reward tip, so
the learner learns from it the rewards closed after the rollback, not the ones that made the
model it replaces (those stay in the ledger, and in the versions kept).

Retention (`prune`) keeps the newest `keep_last`, every version that served in the last
`keep_days` days, the newest version that still loads (the last good one) and the newest
restart (`restarted_at` reads its time), whatever their age.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.ledger import snapshots
from core.ledger.snapshots import Snapshot
from core.ledger.tables import ModelSnapshot, Reward

log = logging.getLogger(__name__)

DAY_S = 86_400.0
#: `source` of a version added by `copyloop model restart` (`consumer.learner.restart`).
RESTART_SOURCE = "restart"


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One version as `copyloop model list` shows it. `served_from`/`served_until` (epoch s)
    bound the time it was the newest (None until: it is served now); `last_learned_decision` is
    the decision whose reward it learned last (None when it learned none); `storage` is
    `database` or the file holding the bytes; `size` in bytes (None: the file is missing)."""

    version: int
    created_at: float
    source: str
    origin: int | None
    last_seq: int
    last_learned_decision: str | None
    served_from: float
    served_until: float | None
    current: bool
    storage: str
    size: int | None
    vw_args: str

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "created_at": self.created_at,
            "source": self.source,
            "origin": self.origin,
            "last_seq": self.last_seq,
            "last_learned_decision": self.last_learned_decision,
            "served_from": self.served_from,
            "served_until": self.served_until,
            "current": self.current,
            "storage": self.storage,
            "size": self.size,
            "vw_args": self.vw_args,
        }


class VersionNotFound(snapshots.SnapshotError):
    """No such version in the ledger (never saved, or pruned)."""


def reward_tip(s: Session) -> int:
    """The last reward's seq (0 when none is closed yet)."""
    return s.scalar(select(func.max(Reward.seq))) or 0


def restarted_at(s: Session) -> float | None:
    """When the newest restart was added (epoch s), None when the model was never restarted:
    the time from which the ledger's decisions show the tastes of now."""
    return s.scalar(
        select(func.max(ModelSnapshot.created_at)).where(ModelSnapshot.source == RESTART_SOURCE)
    )


def list_versions(sessions: sessionmaker[Session], limit: int | None = None) -> list[ModelVersion]:
    """Versions, newest first (at most `limit`), without reading their bytes."""
    with sessions() as s:
        query = (
            select(
                ModelSnapshot.version,
                ModelSnapshot.created_at,
                ModelSnapshot.source,
                ModelSnapshot.origin,
                ModelSnapshot.last_seq,
                ModelSnapshot.path,
                ModelSnapshot.vw_args,
                func.length(ModelSnapshot.model),
            )
            .order_by(ModelSnapshot.version.desc())
            .limit(None if limit is None else limit + 1)  # one more: the next one's start
        )
        rows = s.execute(query).all()
        seqs = sorted({r.last_seq for r in rows if r.last_seq > 0})
        decided: dict[int, str] = {}
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            rows_ = s.execute(select(Reward.seq, Reward.decision_id).where(Reward.seq.in_(chunk)))
            decided.update({seq: decision_id for seq, decision_id in rows_})
    out: list[ModelVersion] = []
    newer: float | None = None
    for i, r in enumerate(rows):
        if limit is None or i < limit:
            out.append(
                ModelVersion(
                    version=r.version,
                    created_at=r.created_at,
                    source=r.source,
                    origin=r.origin,
                    last_seq=r.last_seq,
                    last_learned_decision=decided.get(r.last_seq),
                    served_from=r.created_at,
                    served_until=newer,
                    current=i == 0,
                    storage=r.path or "database",
                    size=r[7] if r.path is None else _file_size(r.path),
                    vw_args=r.vw_args,
                )
            )
        newer = r.created_at
    return out


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def add_version(
    sessions: sessionmaker[Session],
    snapshot: Snapshot,
    *,
    source: str,
    origin: int | None,
    snapshot_dir: str | None,
    attempts: int = 5,
) -> int:
    """Store `snapshot`'s bytes as the new newest version, learning on from the reward tip.
    Retries when a concurrent save took the same version number."""
    return add_model(
        sessions,
        snapshot.model,
        snapshot.vw_args,
        source=source,
        origin=origin,
        snapshot_dir=snapshot_dir,
        attempts=attempts,
    )


def add_model(
    sessions: sessionmaker[Session],
    model: bytes | Callable[[int], bytes],
    vw_args: str,
    *,
    source: str,
    origin: int | None,
    snapshot_dir: str | None,
    attempts: int = 5,
) -> int:
    """`add_version` of a model's bytes, or of a function of the version they are saved as
    (`snapshots.save`)."""
    for attempt in range(attempts):
        with sessions() as s:
            tip = reward_tip(s)
        try:
            return snapshots.save(
                sessions, model, tip, vw_args, snapshot_dir, source=source, origin=origin
            )
        except IntegrityError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def rollback_source(sessions: sessionmaker[Session], version: int) -> Snapshot:
    """Version `version`'s snapshot, to be added again as the newest. Raises `VersionNotFound`
    (and OSError when its file is gone)."""
    snap = snapshots.load_version(sessions, version)
    if snap is None:
        known = [v.version for v in list_versions(sessions, limit=20)]
        raise VersionNotFound(f"no model version {version} in the ledger (newest: {known})")
    return snap


@dataclass(frozen=True, slots=True)
class Retention:
    """What `prune` keeps: the newest `keep_last` versions, every version that served in the
    last `keep_days` days, and the last good one."""

    keep_last: int
    keep_days: float

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.keep_days < 0:
            raise ValueError(f"keep_days must be >= 0, got {self.keep_days}")


def prune(
    sessions: sessionmaker[Session],
    retention: Retention,
    is_good: Callable[[Snapshot], bool],
    now: float | None = None,
) -> list[int]:
    """Delete the versions `retention` does not keep (rows and files); returns them, oldest
    first. `is_good` says whether a snapshot loads; the newest one that does is always kept, and
    so is the newest restart (its time bounds the decisions that winners compare)."""
    now = time.time() if now is None else now
    horizon = now - retention.keep_days * DAY_S
    with sessions() as s:
        rows = s.execute(
            select(ModelSnapshot.version, ModelSnapshot.created_at, ModelSnapshot.source).order_by(
                ModelSnapshot.version.desc()
            )
        ).all()
    keep: set[int] = set()
    served_until: float | None = None  # the newer version's creation
    for i, (version, created_at, _) in enumerate(rows):
        if i < retention.keep_last or served_until is None or served_until >= horizon:
            keep.add(version)
        served_until = created_at
    restart = next((v for v, _, source in rows if source == RESTART_SOURCE), None)  # newest first
    good = _last_good(sessions, (v for v, _, _ in rows), is_good)
    keep.update(v for v in (good, restart) if v is not None)
    doomed = sorted(v for v, _, _ in rows if v not in keep)
    if not doomed:
        return []
    paths: list[str] = []
    with sessions.begin() as s:
        for i in range(0, len(doomed), 500):
            chunk = doomed[i : i + 500]
            paths += [
                p
                for p in s.scalars(
                    select(ModelSnapshot.path).where(ModelSnapshot.version.in_(chunk))
                )
                if p
            ]
            s.execute(delete(ModelSnapshot).where(ModelSnapshot.version.in_(chunk)))
    for p in paths:  # after the commit: a row never names a deleted file
        Path(p).unlink(missing_ok=True)
    log.info("pruned %d model versions (%d..%d)", len(doomed), doomed[0], doomed[-1])
    return doomed


def _last_good(
    sessions: sessionmaker[Session], versions: Iterator[int], is_good: Callable[[Snapshot], bool]
) -> int | None:
    for version in versions:
        try:
            snap = snapshots.load_version(sessions, version)
        except OSError:
            continue
        if snap is not None and is_good(snap):
            return version
    return None
