"""Generator versions: a base model plus (optionally) a fine-tuned LoRA adapter, in the ledger.

The *current* version is the newest `shipped` one (by `shipped_at`): the `hf` backend generates
with it, and every variant records the version that wrote it. A fine-tuning round registers its
version as `shipped` or `rejected` (the gate's verdict and reason kept beside it). Rolling back
marks the current version `rolled_back`, so the previous shipped one becomes current again, or
re-ships a named older version (its `shipped_at` becomes now).

Errors (:class:`VersionError`, a `generator.GeneratorError`): an unknown version, or a rollback
that has nowhere to go; messages are exact (tests pin them).

Usage::

    current = newest_shipped(sessions)           # VersionInfo | None
    rollback(sessions)                           # back to the previous shipped version
    rollback(sessions, to="hf-20261123-0712-1a2b3c")
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import dialect_insert
from core.ledger.tables import GeneratorVersion
from generator import GeneratorError

STATUSES = ("candidate", "shipped", "rejected", "rolled_back")


class VersionError(GeneratorError, LookupError):
    """An unknown generator version, or a rollback with no target."""


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A detached copy of a `generator_versions` row."""

    version: str
    backend: str
    base_model: str
    adapter_path: str | None
    parent: str | None
    status: str
    created_at: float
    shipped_at: float | None = None
    gate_reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: GeneratorVersion) -> VersionInfo:
        return cls(
            version=row.version,
            backend=row.backend,
            base_model=row.base_model,
            adapter_path=row.adapter_path,
            parent=row.parent,
            status=row.status,
            created_at=row.created_at,
            shipped_at=row.shipped_at,
            gate_reason=row.gate_reason,
            data=dict(row.data or {}),
            metrics=dict(row.metrics or {}),
        )


def base_version_name(base_model: str) -> str:
    """The version name of a base model without an adapter: ``hf-base-`` + 8 hex of its path.

    >>> base_version_name("var/tiny-gpt2")
    'hf-base-...'
    """
    return f"hf-base-{hashlib.sha256(base_model.encode()).hexdigest()[:8]}"


def register(
    sessions: sessionmaker[Session],
    *,
    version: str,
    base_model: str,
    adapter_path: str | None = None,
    parent: str | None = None,
    status: str = "candidate",
    backend: str = "hf",
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    gate_reason: str | None = None,
    now: float | None = None,
) -> VersionInfo:
    """Insert a version row (a `shipped` one gets `shipped_at` = now); the name must be new."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    now = time.time() if now is None else now
    row = GeneratorVersion(
        version=version,
        backend=backend,
        base_model=base_model,
        adapter_path=adapter_path,
        parent=parent,
        status=status,
        data=data or {},
        metrics=metrics or {},
        gate_reason=gate_reason,
        created_at=now,
        shipped_at=now if status == "shipped" else None,
    )
    with sessions.begin() as s:
        if s.get(GeneratorVersion, version) is not None:
            raise VersionError(f"generator version {version!r} already exists")
        s.add(row)
    return VersionInfo.of(row)


def ensure_base(
    sessions: sessionmaker[Session], base_model: str, now: float | None = None
) -> VersionInfo:
    """The base model's own version (no adapter), registered `shipped` the first time it is
    needed, so that there is always something to roll back to. Safe under concurrency."""
    name = base_version_name(base_model)
    now = time.time() if now is None else now
    with sessions.begin() as s:
        s.execute(
            dialect_insert(s, GeneratorVersion)
            .values(
                version=name,
                backend="hf",
                base_model=base_model,
                adapter_path=None,
                parent=None,
                status="shipped",
                data={},
                metrics={},
                gate_reason="base model",
                created_at=now,
                shipped_at=now,
            )
            .on_conflict_do_nothing(index_elements=["version"])
        )
    return get(sessions, name)


def get(sessions: sessionmaker[Session], version: str) -> VersionInfo:
    with sessions() as s:
        row = s.get(GeneratorVersion, version)
        if row is None:
            raise VersionError(f"unknown generator version {version!r}")
        return VersionInfo.of(row)


def list_versions(sessions: sessionmaker[Session]) -> list[VersionInfo]:
    """Every version, oldest first."""
    with sessions() as s:
        rows = s.scalars(
            select(GeneratorVersion).order_by(GeneratorVersion.created_at, GeneratorVersion.version)
        )
        return [VersionInfo.of(r) for r in rows]


def newest_shipped(
    sessions: sessionmaker[Session], backend: str = "hf", base_model: str | None = None
) -> VersionInfo | None:
    """The current version of `backend` (of `base_model` when given: an adapter only applies to
    its own base): the shipped one shipped last, None when none is."""
    with sessions() as s:
        row = _newest_shipped(s, backend, base_model)
        return None if row is None else VersionInfo.of(row)


def ship(sessions: sessionmaker[Session], version: str, now: float | None = None) -> VersionInfo:
    """Make `version` current: status `shipped`, `shipped_at` now."""
    with sessions.begin() as s:
        row = _row(s, version)
        row.status, row.shipped_at = "shipped", time.time() if now is None else now
    return VersionInfo.of(row)


def reject(sessions: sessionmaker[Session], version: str, reason: str) -> VersionInfo:
    """Refuse `version` with `reason` (it stops being current if it was)."""
    with sessions.begin() as s:
        row = _row(s, version)
        row.status, row.gate_reason = "rejected", reason
    return VersionInfo.of(row)


def rollback(
    sessions: sessionmaker[Session],
    to: str | None = None,
    backend: str = "hf",
    base_model: str | None = None,
    now: float | None = None,
) -> VersionInfo:
    """Mark the current version (of `base_model` when given) `rolled_back`; then the previous
    shipped one is current, or, with `to`, that named version is shipped again. Returns the
    version now current."""
    with sessions.begin() as s:
        current = _newest_shipped(s, backend, base_model)
        if current is None:
            raise VersionError("no shipped generator version to roll back")
        target: GeneratorVersion | None = None
        if to is not None:
            target = _row(s, to)
            if target.version == current.version:
                raise VersionError(f"generator version {to!r} is already current")
            if target.backend != backend:
                raise VersionError(
                    f"generator version {to!r} is a {target.backend} version, not {backend}"
                )
        current.status = "rolled_back"
        s.flush()
        if to is None:
            target = _newest_shipped(s, backend, base_model)
            if target is None:
                raise VersionError(
                    f"no earlier shipped generator version to roll back to from {current.version!r}"
                )
        else:
            assert target is not None
            target.status, target.shipped_at = "shipped", time.time() if now is None else now
        return VersionInfo.of(target)


def _newest_shipped(s: Session, backend: str, base_model: str | None) -> GeneratorVersion | None:
    query = select(GeneratorVersion).where(
        GeneratorVersion.status == "shipped", GeneratorVersion.backend == backend
    )
    if base_model is not None:
        query = query.where(GeneratorVersion.base_model == base_model)
    return s.scalars(
        query.order_by(GeneratorVersion.shipped_at.desc(), GeneratorVersion.version.desc()).limit(1)
    ).first()


def _row(s: Session, version: str) -> GeneratorVersion:
    row = s.get(GeneratorVersion, version, with_for_update=True)
    if row is None:
        raise VersionError(f"unknown generator version {version!r}")
    return row


__all__ = [
    "VersionError",
    "VersionInfo",
    "base_version_name",
    "ensure_base",
    "get",
    "list_versions",
    "newest_shipped",
    "register",
    "reject",
    "rollback",
    "ship",
]
