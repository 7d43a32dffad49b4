"""Named leases in the ledger, so that one process at a time runs a singleton job (closing
windows and learning; each scheduler job). A holder renews before `ttl_s` runs out; a crashed
holder's lease expires and another process takes it."""

from __future__ import annotations

import time

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import JobLease


def acquire(sessions: sessionmaker[Session], name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew lease `name` for `holder`; True when `holder` holds it afterwards."""
    now = time.time()
    try:
        with sessions.begin() as s:
            row = s.get(JobLease, name, with_for_update=True)
            if row is None:
                s.add(JobLease(name=name, holder=holder, expires_at=now + ttl_s))
                return True
            if row.holder == holder or row.expires_at < now:
                row.holder, row.expires_at = holder, now + ttl_s
                return True
            return False
    except IntegrityError:  # another process inserted the row first
        return False


def release(sessions: sessionmaker[Session], name: str, holder: str) -> None:
    with sessions.begin() as s:
        s.execute(delete(JobLease).where(JobLease.name == name, JobLease.holder == holder))


def holder_of(sessions: sessionmaker[Session], name: str) -> str | None:
    with sessions() as s:
        row = s.scalar(select(JobLease).where(JobLease.name == name))
        return None if row is None or row.expires_at < time.time() else row.holder


__all__ = ["acquire", "holder_of", "release"]
