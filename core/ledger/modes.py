"""The serving mode, stored in the ledger so that every API process follows one setting.

`live`: the bandit serves, with the control holdout. `apprentice`: the control copy is served to
all but an exploring share `explore` of page views, which follow the bandit; the bandit learns
from every decision all the same (CONTRACT.md). The newest `serving_modes` row is the mode; with
none, `COPYLOOP_MODE` (and `COPYLOOP_APPRENTICE_EXPLORE`) is the initial value. Rows are never
updated, so the history tells the report which decisions were logged in which mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import ServingMode

MODES = ("live", "apprentice")


@dataclass(frozen=True, slots=True)
class Mode:
    """A serving mode: `name` (`live` or `apprentice`), the exploring share of apprentice mode,
    and since when (None: the settings' initial value, never stored)."""

    name: str
    explore: float
    since: float | None = None

    def __post_init__(self) -> None:
        if self.name not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.name!r}")
        if not 0.0 < self.explore <= 1.0:
            raise ValueError(f"explore must be in (0, 1], got {self.explore}")

    def holdout(self, live_holdout: float) -> float:
        """The share of page views served the control copy: the live holdout, or all but the
        exploring share in apprentice mode.

        >>> Mode("apprentice", 0.05).holdout(0.1), Mode("live", 0.05).holdout(0.1)
        (0.95, 0.1)
        """
        return 1.0 - self.explore if self.name == "apprentice" else live_holdout


def current(sessions: sessionmaker[Session], default: Mode) -> Mode:
    """The newest stored mode, or `default` (the settings') when none was ever set."""
    with sessions() as s:
        row = s.scalar(select(ServingMode).order_by(ServingMode.id.desc()).limit(1))
    return default if row is None else Mode(row.mode, row.explore, row.set_at)


def history(sessions: sessionmaker[Session]) -> list[Mode]:
    """Every stored mode, oldest first."""
    with sessions() as s:
        rows = s.scalars(select(ServingMode).order_by(ServingMode.id)).all()
    return [Mode(r.mode, r.explore, r.set_at) for r in rows]


def set_mode(sessions: sessionmaker[Session], mode: Mode) -> Mode:
    """Store `mode` as the newest; returns it with its time."""
    now = time.time()
    with sessions.begin() as s:
        s.add(ServingMode(mode=mode.name, explore=mode.explore, set_at=now))
    return Mode(mode.name, mode.explore, now)
