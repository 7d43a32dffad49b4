"""Report rollups: per-hour sufficient statistics of closed decisions, kept exact.

The uplift report scanned every decision in its window (14.4 s on SQLite, 8.7 s on PostgreSQL
for 1M decisions: `bench/report.py`). Every number it shows is a sum over decisions — counts,
outcome sums, Σrevenue², importance-weighted sums — so closed decisions are summed once, when
their window closes, into `report_rollups` (per hour, product, variant, policy) and
`report_context_rollups` (per hour, product, context key, context value, policy); the report
adds those up and reads only the decisions the rollups do not hold (`rollup_reader`).

Exactness: a decision enters the rollups once, in the transaction that closes it (so a replayed
message or a crash can neither skip nor repeat it: closing is itself idempotent), with the
outcome the report defines (events with `ts` in `[ts − clock_skew_s, ts + reward_window_s]`).
An in-span event that reaches the ledger after its decision closed moves that decision's
outcome: `add_late_events`, called in the ingesting transaction with only the events that
transaction inserted, subtracts the old outcome and adds the new one. `rebuild` recomputes
everything from the ledger. `report_rollup_state` says whether the rollups can be trusted
(`status`) and with which window they were built; every writer locks that row first, so on
PostgreSQL a rebuild, a closer and an ingest of a late event never interleave (SQLite
serializes writers anyway).

Writers: `add_closed` (the closer), `add_late_events` (ingest), `rebuild` (the CLI). Readers:
`state`, `usable`.

Only activated decisions are impressions: a deferred decision closed without an activation in
time never enters the rollups, and its late events move nothing (`direct_outcomes` and the
late-event lookup read activated decisions only).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import BigInteger, Connection, Table, and_, case, false, func, select, true
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import (
    Decision,
    Event,
    ReportContextRollup,
    ReportRollup,
    ReportRollupState,
)
from core.settings import Settings

#: Seconds per rollup bucket. Report buckets of an hour or more (the span of any window longer
#: than a day) are whole hours; finer ones are read from the decisions (`rollup_reader`).
HOUR = 3600.0
_ROLLUPS = cast(Table, ReportRollup.__table__)
_CONTEXTS = cast(Table, ReportContextRollup.__table__)
_KEY = ("hour", "product_id", "variant_id", "policy")
_SUMS = (
    "n",
    "clicks",
    "purchases",
    "revenue",
    "revenue_sq",
    "sw",
    "sw_click",
    "sw_purchase",
    "sw_revenue",
    "sw2",
    "not_activated",
)
_CONTEXT_KEY = ("hour", "product_id", "key", "value", "policy")
_CONTEXT_SUMS = _SUMS[:5]
#: Ids per IN list: far below SQLite's bound-parameter limit.
_CHUNK = 500


def hour_of(ts: float) -> int:
    """The rollup hour of a decision ts: ⌊ts / 3600⌋ (float floor division is exact at the
    boundary, so `hour_of(ts) * HOUR <= ts < (hour_of(ts) + 1) * HOUR` always holds).

    >>> hour_of(7199.999), hour_of(7200.0), hour_of(-0.5)
    (1, 2, -1)
    """
    return int(ts // HOUR)


class Outcome(NamedTuple):
    """One decision as the report counts it: its keys, logged probability and outcome
    (`clicked`/`purchased` 0 or 1, `revenue` the sum of its in-span purchase values). A named
    tuple: the closer builds one per decision, and a frozen dataclass costs several times more."""

    decision_id: str
    product_id: str
    variant_id: str
    policy: str
    ts: float
    probability: float
    clicked: int
    purchased: int
    revenue: float

    def sums(self, sign: int = 1) -> tuple[float, ...]:
        """The decision's contribution to each of `report_rollups`' sums, times `sign` (an
        impression: `not_activated`, the last, is 0)."""
        w = 1.0 / self.probability
        c, p, r = self.clicked, self.purchased, self.revenue
        if sign == 1:
            return (1, c, p, r, r * r, w, w * c, w * p, w * r, w * w, 0)
        return tuple(sign * x for x in (1, c, p, r, r * r, w, w * c, w * p, w * r, w * w, 0))


class Cells:
    """Rollup rows being summed: (hour, product, variant, policy) → sums, and (hour, product,
    key, value, policy) → the first five of them."""

    def __init__(self) -> None:
        self.main: dict[tuple[Any, ...], list[float]] = {}
        self.contexts: dict[tuple[Any, ...], list[float]] = {}

    def add(self, o: Outcome, pairs: Iterable[tuple[str, str]], sign: int = 1) -> None:
        h = int(o.ts // HOUR)  # hour_of, inlined: this runs once per closed decision
        part = o.sums(sign)
        key = (h, o.product_id, o.variant_id, o.policy)
        acc = self.main.get(key)
        if acc is None:
            self.main[key] = list(part)
        else:
            self.main[key] = [a + b for a, b in zip(acc, part, strict=True)]
        head = part[:5]
        for k, value in pairs:
            ckey = (h, o.product_id, k, value, o.policy)
            acc = self.contexts.get(ckey)
            if acc is None:
                self.contexts[ckey] = list(head)
            else:
                self.contexts[ckey] = [a + b for a, b in zip(acc, head, strict=True)]

    def add_not_activated(self, product_id: str, variant_id: str, policy: str, ts: float) -> None:
        """A deferred decision closed without an activation in time: no impression, counted
        in `not_activated` only (and never in the context rollups)."""
        key = (int(ts // HOUR), product_id, variant_id, policy)
        acc = self.main.setdefault(key, [0] * len(_SUMS))
        acc[-1] += 1


def state(conn: Connection | Session, *, lock: str | None = None) -> ReportRollupState | None:
    """The state row; `lock` is `update` or `share` (a row lock on PostgreSQL, nothing on SQLite,
    whose writers are serialized by BEGIN IMMEDIATE)."""
    stmt = select(ReportRollupState).where(ReportRollupState.id == 1)
    if lock is not None:
        stmt = stmt.with_for_update(read=lock == "share")
    if isinstance(conn, Session):
        return conn.scalars(stmt).first()
    row = conn.execute(stmt.with_only_columns(*ReportRollupState.__table__.c)).first()
    return None if row is None else ReportRollupState(**row._mapping)


def usable(st: ReportRollupState | None, settings: Settings) -> str | None:
    """None when the rollups hold exactly the report's outcomes under `settings`, else why not."""
    if st is None:
        return "the ledger has no rollup state (run 'copyloop db upgrade')"
    if st.status == "empty":
        return None
    if st.status != "valid":
        return "rollups are stale: run 'copyloop db rollups --rebuild'"
    if (st.reward_window_s, st.clock_skew_s) != (settings.reward_window_s, settings.clock_skew_s):
        return (
            f"rollups were built with reward_window_s={st.reward_window_s:g}, clock_skew_s="
            f"{st.clock_skew_s:g}: run 'copyloop db rollups --rebuild' after changing them"
        )
    return None


def add_closed(
    s: Session,
    settings: Settings,
    closed: Sequence[Outcome],
    contexts: Iterable[tuple[str, Any]],
    not_activated: Sequence[tuple[str, str, str, float]] = (),
) -> bool:
    """Add decisions being closed in `s`'s transaction to the rollups (`contexts`: their
    (decision_id, context) as read; `not_activated`: (product, variant, policy, ts) of the
    deferred ones closed without an activation). Returns False (and adds nothing) when the
    rollups are not being kept: stale, or built with another window (then they are marked
    stale, so the report stops trusting them)."""
    st = state(s, lock="update")
    if st is None or st.status == "stale":
        return False
    window = (settings.reward_window_s, settings.clock_skew_s)
    if st.status == "empty":
        st.status, st.reward_window_s, st.clock_skew_s = "valid", *window
        st.updated_at = time.time()
    elif (st.reward_window_s, st.clock_skew_s) != window:
        st.status, st.updated_at = "stale", time.time()
        s.flush()
        return False
    s.flush()
    if not closed and not not_activated:
        return True
    pairs = contexts_of(s.connection(), contexts)
    cells = Cells()
    for o in closed:
        cells.add(o, pairs.get(o.decision_id, ()))
    for unseen in not_activated:
        cells.add_not_activated(*unseen)
    write(s.connection(), cells)
    return True


def add_late_events(s: Session, new_events: Sequence[Mapping[str, Any]]) -> int:
    """Move the rollups by events just inserted in `s`'s transaction (dicts with `event_id`,
    `decision_id`) whose decision is already closed: each such decision's outcome is recomputed
    without and with them, and the difference added. Returns how many decisions moved.

    The state row's share lock (taken whatever the events) orders this against the closer on
    PostgreSQL: a closer that counted a decision's events before this transaction commits
    holds the row, so this waits and then sees the decision closed; one that starts later waits
    for this commit and counts the new events itself."""
    if not new_events:
        return 0
    st = state(s, lock="share")
    if st is None or st.status != "valid":
        return 0
    skew, window = float(st.clock_skew_s or 0.0), float(st.reward_window_s or 0.0)
    new_ids = {e["event_id"] for e in new_events}
    decision_ids = sorted({e["decision_id"] for e in new_events})
    conn = s.connection()
    closed: dict[str, Any] = {}
    for chunk in _chunks(decision_ids):
        for row in conn.execute(
            select(*_DECISION_COLUMNS).where(
                Decision.decision_id.in_(chunk),
                Decision.closed_at.is_not(None),
                Decision.activated == true(),
            )
        ):
            closed[row.decision_id] = row
    if not closed:
        return 0
    events: dict[str, list[Any]] = defaultdict(list)
    for chunk in _chunks(sorted(closed)):
        for e in conn.execute(
            select(Event.event_id, Event.decision_id, Event.type, Event.value)
            .join(Decision, Decision.decision_id == Event.decision_id)
            .where(
                Event.decision_id.in_(chunk),
                Event.ts >= Decision.ts - skew,
                Event.ts <= Decision.ts + window,
            )
        ):
            events[e.decision_id].append(e)
    moved = [d for d in closed if any(e.event_id in new_ids for e in events[d])]
    if not moved:
        return 0
    pairs = context_pairs(conn, moved)
    cells = Cells()
    for d in moved:
        row, evs = closed[d], events[d]
        before = _outcome(row, [e for e in evs if e.event_id not in new_ids])
        cells.add(before, pairs.get(d, ()), sign=-1)
        cells.add(_outcome(row, evs), pairs.get(d, ()))
    write(conn, cells)
    return len(moved)


def rebuild(sessions: sessionmaker[Session], settings: Settings, *, day_s: float = 86400.0) -> int:
    """Recompute the rollups from the ledger's closed decisions under `settings`' window, in one
    transaction (the closer and ingest wait on the state row meanwhile); returns how many
    decisions they hold."""
    with sessions.begin() as s:
        st = state(s, lock="update")
        if st is None:
            raise RuntimeError("the ledger has no rollup state: run 'copyloop db upgrade'")
        conn = s.connection()
        conn.execute(_ROLLUPS.delete())
        conn.execute(_CONTEXTS.delete())
        lo, hi = conn.execute(
            select(func.min(Decision.ts), func.max(Decision.ts)).where(
                Decision.closed_at.is_not(None)
            )
        ).one()
        total = 0
        if lo is not None and hi is not None:
            start = (lo // day_s) * day_s
            while start <= hi:
                where = [
                    Decision.closed_at.is_not(None),
                    Decision.ts >= start,
                    Decision.ts < start + day_s,
                ]
                rows = direct_outcomes(conn, settings, where)
                pairs = context_pairs_where(conn, where)
                cells = Cells()
                for o in rows:
                    cells.add(o, pairs.get(o.decision_id, ()))
                for unseen in conn.execute(
                    select(*_DECISION_COLUMNS[1:5]).where(*where, Decision.activated == false())
                ):
                    cells.add_not_activated(*unseen)
                write(conn, cells)
                total += len(rows)
                start += day_s
        st.status, st.updated_at = "valid", time.time()
        st.reward_window_s, st.clock_skew_s = settings.reward_window_s, settings.clock_skew_s
    return total


def write(conn: Connection, cells: Cells) -> None:
    """Add `cells` to the rollup tables (insert, or add to the row already there), by each
    database's fast path: one `executemany` of plain tuples on SQLite, one statement over
    arrays on PostgreSQL (SQLAlchemy's per-row parameter processing cost the closer about
    40% more time per decision, measured closing 60,000 decisions)."""
    pg = conn.dialect.name == "postgresql"
    for table, key, names, rows in (
        (_ROLLUPS, _KEY, _SUMS, cells.main),
        (_CONTEXTS, _CONTEXT_KEY, _CONTEXT_SUMS, cells.contexts),
    ):
        if not rows:
            continue
        columns = (*key, *names)
        ints = [isinstance(table.c[n].type, BigInteger) for n in names]  # the counts
        tuples = [
            (*k, *(int(x) if i else float(x) for i, x in zip(ints, v, strict=True)))
            for k, v in rows.items()
        ]
        target = f"{table.name} (" + ", ".join(f'"{c}"' for c in columns) + ")"
        conflict = (
            " ON CONFLICT ("
            + ", ".join(f'"{c}"' for c in key)
            + ") DO UPDATE SET "
            + ", ".join(f'"{n}" = {table.name}."{n}" + excluded."{n}"' for n in names)
        )
        if not pg:
            values = ", ".join("?" for _ in columns)
            conn.exec_driver_sql(f"INSERT INTO {target} VALUES ({values}){conflict}", tuples)
            continue
        kinds = [_PG_ARRAY[type(table.c[c].type).__name__] for c in columns]
        params = {f"c{i}": [t[i] for t in tuples] for i in range(len(columns))}
        # Binary arrays (%b): psycopg's text format quotes every element with a regex.
        arrays = ", ".join(f"%(c{i})b::{k}[]" for i, k in enumerate(kinds))
        conn.exec_driver_sql(
            f"INSERT INTO {target} SELECT * FROM unnest({arrays}){conflict}", params
        )


_PG_ARRAY = {"BigInteger": "int8", "String": "text", "Text": "text", "Float": "float8"}


def contexts_of(
    conn: Connection, rows: Iterable[tuple[str, Any]]
) -> dict[str, list[tuple[str, str]]]:
    """decision_id → (key, value) pairs of (decision_id, decoded context) `rows`, rendered as the
    database's JSON expansion renders them (`context_pairs_where`). Strings, integers and nulls
    render alike on both databases (`str` of the value; a null is `None`), so such contexts are
    expanded here; any other (booleans, floats, nested values) is expanded by the database."""
    out: dict[str, list[tuple[str, str]]] = {}
    rest = []
    for decision_id, context in rows:
        if not isinstance(context, dict):
            if context is not None:
                rest.append(decision_id)
            continue
        if all(type(v) in _PLAIN for v in context.values()):
            if context:
                out[decision_id] = [(str(k), str(v)) for k, v in context.items()]
        else:
            rest.append(decision_id)
    if rest:
        out.update(context_pairs(conn, rest))
    return out


_PLAIN = (str, int, type(None))


_DECISION_COLUMNS = (
    Decision.decision_id,
    Decision.product_id,
    Decision.variant_id,
    Decision.policy,
    Decision.ts,
    Decision.probability,
)


def _outcome(row: Any, events: Iterable[Any]) -> Outcome:
    """A decision's outcome from its in-span events (rows with `type`, `value`)."""
    clicked = purchased = 0
    revenue = 0.0
    for e in events:
        if e.type == "click":
            clicked = 1
        elif e.type == "purchase":
            purchased = 1
            revenue += float(e.value or 0.0)
    return Outcome(
        row.decision_id,
        row.product_id,
        row.variant_id,
        row.policy,
        float(row.ts),
        float(row.probability),
        clicked,
        purchased,
        revenue,
    )


def direct_outcomes(conn: Connection, settings: Settings, where: Sequence[Any]) -> list[Outcome]:
    """The outcome of every activated decision matching `where` (clauses on `Decision`),
    computed from the events the way the report's full scan does (`queries.outcomes`)."""
    where = [*where, Decision.activated == true()]
    decisions = conn.execute(select(*_DECISION_COLUMNS).where(*where)).all()
    if not decisions:
        return []
    in_span = and_(
        Event.decision_id == Decision.decision_id,
        Event.ts >= Decision.ts - settings.clock_skew_s,
        Event.ts <= Decision.ts + settings.reward_window_s,
    )
    flags = conn.execute(
        select(
            Decision.decision_id,
            func.max(case((Event.type == "click", 1), else_=0)),
            func.max(case((Event.type == "purchase", 1), else_=0)),
            func.sum(case((Event.type == "purchase", func.coalesce(Event.value, 0.0)), else_=0.0)),
        )
        .select_from(Decision)
        .join(Event, in_span)
        .where(*where)
        .group_by(Decision.decision_id)
    ).all()
    by_id = {r[0]: (int(r[1] or 0), int(r[2] or 0), float(r[3] or 0.0)) for r in flags}
    out = []
    for d in decisions:
        c, p, r = by_id.get(d.decision_id, (0, 0, 0.0))
        out.append(
            Outcome(
                d.decision_id,
                d.product_id,
                d.variant_id,
                d.policy,
                float(d.ts),
                float(d.probability),
                c,
                p,
                r,
            )
        )
    return out


def _context_select(conn: Connection) -> tuple[Any, list[Any]]:
    """(decision_id, key, value) rows of the decisions' context objects, expanded by the
    database exactly as the report's full scan expands them (`queries.ReportReader.contexts`)."""
    is_sqlite = conn.dialect.name == "sqlite"
    each = func.json_each if is_sqlite else func.json_each_text
    kv = each(Decision.context).table_valued("key", "value").alias("kv")
    is_object = (func.json_type if is_sqlite else func.json_typeof)(Decision.context)
    stmt = select(Decision.decision_id, kv.c.key, kv.c.value).select_from(Decision).join(kv, true())
    return stmt, [is_object == "object"]


def context_pairs_where(conn: Connection, where: Sequence[Any]) -> dict[str, list[tuple[str, str]]]:
    """decision_id → its context's (key, value) pairs as the report renders them (`str`)."""
    stmt, object_only = _context_select(conn)
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for decision_id, key, value in conn.execute(stmt.where(*object_only, *where)):
        out[decision_id].append((str(key), str(value)))
    return out


def context_pairs(
    conn: Connection, decision_ids: Sequence[str]
) -> dict[str, list[tuple[str, str]]]:
    """`context_pairs_where` for the decisions with these ids."""
    out: dict[str, list[tuple[str, str]]] = {}
    for chunk in _chunks(sorted(set(decision_ids))):
        out.update(context_pairs_where(conn, [Decision.decision_id.in_(chunk)]))
    return out


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


__all__ = [
    "HOUR",
    "Cells",
    "Outcome",
    "add_closed",
    "add_late_events",
    "context_pairs",
    "context_pairs_where",
    "contexts_of",
    "direct_outcomes",
    "hour_of",
    "rebuild",
    "state",
    "usable",
]
