"""Checks shared by the rollup tests: the incremental rollups equal a rebuild from the ledger,
and two reports are equal field by field."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import ReportContextRollup, ReportRollup
from core.settings import Settings
from reports import rollups

#: Float sums of the same numbers in another order differ in their last bits (~1e-15); a few
#: statistics amplify that (CUPED's theta divides by a covariate variance near zero: 1.5e-9
#: seen on PostgreSQL). Counts and every other non-float field are compared exactly.
REL = 1e-7


def rollup_rows(
    sessions: sessionmaker[Session],
) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    """Both rollup tables as {primary key: sums}."""
    out: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
    with sessions() as s:
        for model in (ReportRollup, ReportContextRollup):
            table = model.__table__
            key = [c.name for c in table.primary_key.columns]
            rest = [c.name for c in table.columns if c.name not in key]
            out[table.name] = {
                tuple(r._mapping[k] for k in key): tuple(r._mapping[c] for c in rest)
                for r in s.execute(select(table))
            }
    return out


def assert_rollups_match_rebuild(sessions: sessionmaker[Session], settings: Settings) -> int:
    """The rollups as the closer and ingest left them equal a rebuild from the ledger; returns
    how many decisions they hold."""
    incremental = rollup_rows(sessions)
    held = rollups.rebuild(sessions, settings)
    rebuilt = rollup_rows(sessions)
    for name in rebuilt:
        assert_same(incremental[name], rebuilt[name], name)
    return held


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """`a` equals `b`: same keys and lengths, equal values, floats within `REL`."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), (path, sorted(set(a) ^ set(b), key=str)[:10])
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        assert len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, (path, a, b)
        assert math.isclose(a, b, rel_tol=REL, abs_tol=1e-9), (path, a, b)
    else:
        assert a == b, (path, a, b)
