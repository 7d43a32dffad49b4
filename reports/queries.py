"""The report's SQL: grouped scans of `decisions` plus one small per-report table of outcomes.

Outcomes are sparse (most page views get no event), so each aggregate is computed in two
parts and added up in Python: a scan of `decisions` alone for counts and importance-weight sums
(covering indexes from migration 0003 keep it narrow), and the same grouping over
`report_outcomes`, a temporary table holding, per decision in the window with at least one
in-span event, its keys and outcome. A decision's outcome counts the events whose `ts` falls in
`[ts − clock_skew_s, ts + reward_window_s]` (CONTRACT.md), whether or not its window has closed.

Everything runs on one connection in one read transaction (`ReportReader`): on SQLite a
deferred one, so a long report never holds the write lock the consumer needs (WAL readers do
not block writers); the temporary table lives in SQLite's `temp` schema / PostgreSQL's
`pg_temp` and is dropped when the reader closes.

Only activated decisions are impressions (`Filters.where`): a deferred decision counts once the
storefront activated it in time; until then, and for ever once its window closed without one,
it is left out of every count and listed apart (`ReportReader.activation_counts`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    cast,
    false,
    func,
    select,
    true,
)
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.sessions import reading
from core.ledger.tables import Decision, Event, Product, Reward, ShadowScore, Variant
from core.settings import Settings

#: `ReportReader.shadow_logged` drives its read from `shadow_scores` while it holds at most this
#: many times the sample's size.
SHADOW_DRIVE_FACTOR = 5

_TEMP = MetaData()
#: Per decision in the window with at least one in-span event: its keys and outcome.
OUTCOMES = Table(
    "report_outcomes",
    _TEMP,
    Column("decision_id", String(128), primary_key=True),
    Column("product_id", String(128)),
    Column("variant_id", String(64)),
    Column("policy", String(16)),
    Column("ts", Float),
    Column("probability", Float),
    Column("clicked", Integer),
    Column("purchased", Integer),
    Column("revenue", Float),
    prefixes=["TEMPORARY"],
)


@dataclass(frozen=True, slots=True)
class Filters:
    """The report's window (`since <= ts < until`, epoch seconds) and optional product."""

    since: float | None = None
    until: float | None = None
    product_id: str | None = None

    def where(self, table: Any = Decision, *, impressions: bool = True) -> list[Any]:
        """The window's conditions on `table`; on decisions, with `impressions`, only the
        activated ones (the impressions)."""
        where = [Decision.activated == true()] if impressions and table is Decision else []
        if self.since is not None:
            where.append(table.ts >= self.since)
        if self.until is not None:
            where.append(table.ts < self.until)
        if self.product_id is not None:
            where.append(table.product_id == self.product_id)
        return where


def outcomes(settings: Settings, f: Filters | None = None) -> Any:
    """Per decision with at least one in-span event (in `f`'s window): product_id, variant_id,
    policy, ts, probability, clicked, purchased (0/1), revenue (sum of purchase values)."""
    f = f or Filters()
    in_span = and_(
        Event.decision_id == Decision.decision_id,
        Event.ts >= Decision.ts - settings.clock_skew_s,
        Event.ts <= Decision.ts + settings.reward_window_s,
    )
    event_window = []  # lets the events(ts) index skip events far outside the window
    if f.since is not None:
        event_window.append(Event.ts >= f.since - settings.clock_skew_s)
    if f.until is not None:
        event_window.append(Event.ts <= f.until + settings.reward_window_s)

    def flag(kind: str) -> Any:
        return func.max(case((Event.type == kind, 1), else_=0))

    keys = (Decision.product_id, Decision.variant_id, Decision.policy, Decision.ts)
    return (
        select(
            Event.decision_id,
            *keys,
            Decision.probability,
            flag("click").label("clicked"),
            flag("purchase").label("purchased"),
            func.sum(
                case((Event.type == "purchase", func.coalesce(Event.value, 0.0)), else_=0.0)
            ).label("revenue"),
        )
        .select_from(Event)
        .join(Decision, in_span)
        .where(*f.where(), *event_window)
        .group_by(Event.decision_id, *keys, Decision.probability)
    )


class ReportReader:
    """The report's queries on one connection, after `outcomes` were materialized."""

    def __init__(self, conn: Connection, settings: Settings, f: Filters) -> None:
        self.conn = conn
        self.settings = settings
        self.f = f
        self.sqlite = conn.dialect.name == "sqlite"

    def fill_outcomes(self, f: Filters) -> None:
        """Fill `report_outcomes` with the outcomes of `f`'s decisions (the full scan: the
        report's own filters; with rollups: only the counterfactual panel's recent sample)."""
        fill = OUTCOMES.insert().from_select(list(OUTCOMES.c.keys()), outcomes(self.settings, f))
        self.conn.execute(fill)
        if not self.sqlite:  # a fresh temporary table has no statistics: plans would guess
            self.conn.exec_driver_sql("ANALYZE " + OUTCOMES.name)

    def _outcome_sums(self, o: Any) -> list[Any]:
        """Σ clicked, Σ purchased, Σ revenue, Σ revenue² over `report_outcomes` rows."""
        return [
            func.sum(o.c.clicked),
            func.sum(o.c.purchased),
            func.sum(o.c.revenue),
            func.sum(o.c.revenue * o.c.revenue),
        ]

    def cube(self) -> list[tuple[Any, ...]]:
        """Per (product, variant, policy): product_id, variant_id, policy, n, clicks, purchases,
        revenue, revenue², then Σw, Σw·click, Σw·purchase, Σw·revenue, Σw², with w = 1 /
        logged probability (the per-variant SNIPS rates and their effective sample size)."""
        keys = (Decision.product_id, Decision.variant_id, Decision.policy)
        w = 1.0 / Decision.probability
        counts = self.conn.execute(
            select(*keys, func.count(), func.sum(w), func.sum(w * w))
            .where(*self.f.where())
            .group_by(*keys)
        ).all()
        o = OUTCOMES
        ow = 1.0 / o.c.probability
        okeys = (o.c.product_id, o.c.variant_id, o.c.policy)
        sums = {
            tuple(r[:3]): r[3:]
            for r in self.conn.execute(
                select(
                    *okeys,
                    *self._outcome_sums(o),
                    func.sum(ow * o.c.clicked),
                    func.sum(ow * o.c.purchased),
                    func.sum(ow * o.c.revenue),
                ).group_by(*okeys)
            )
        }
        out = []
        for product_id, variant_id, policy, n, sw, sw2 in counts:
            c, p, r, r2, swc, swp, swr = sums.get((product_id, variant_id, policy), (0,) * 7)
            out.append((product_id, variant_id, policy, n, c, p, r, r2) + (sw, swc, swp, swr, sw2))
        return out

    def product_sums(
        self, lo: float | None = None, hi: float | None = None
    ) -> list[tuple[Any, ...]]:
        """Per (product, policy) over the window's decisions with `lo <= ts < hi` (None: no
        bound): product_id, policy, n, clicks, purchases, revenue, revenue²."""
        d_range = [Decision.ts >= lo] if lo is not None else []
        d_range += [Decision.ts < hi] if hi is not None else []
        keys = (Decision.product_id, Decision.policy)
        counts = self.conn.execute(
            select(*keys, func.count()).where(*self.f.where(), *d_range).group_by(*keys)
        ).all()
        o = OUTCOMES
        o_range = [o.c.ts >= lo] if lo is not None else []
        o_range += [o.c.ts < hi] if hi is not None else []
        okeys = (o.c.product_id, o.c.policy)
        sums = {
            tuple(r[:2]): r[2:]
            for r in self.conn.execute(
                select(*okeys, *self._outcome_sums(o)).where(*o_range).group_by(*okeys)
            )
        }
        return [
            (product_id, policy, n, *sums.get((product_id, policy), (0, 0, 0.0, 0.0)))
            for product_id, policy, n in counts
        ]

    def pre_period_sums(self, start: float, end: float) -> list[tuple[Any, ...]]:
        """Per product over the decisions of every policy with `start <= ts < end` (the same
        product filter; outside the window, so their outcomes are computed here): product_id,
        n, clicks, purchases, revenue, revenue²."""
        pre = Filters(start, end, self.f.product_id)
        counts = self.conn.execute(
            select(Decision.product_id, func.count())
            .where(*pre.where())
            .group_by(Decision.product_id)
        ).all()
        c = outcomes(self.settings, pre).subquery("pre_outcomes").c
        sums = {
            r[0]: r[1:]
            for r in self.conn.execute(
                select(
                    c.product_id,
                    func.sum(c.clicked),
                    func.sum(c.purchased),
                    func.sum(c.revenue),
                    func.sum(c.revenue * c.revenue),
                ).group_by(c.product_id)
            )
        }
        return [(p, n, *sums.get(p, (0, 0, 0.0, 0.0))) for p, n in counts]

    def activation_counts(self) -> dict[str, tuple[int, int]]:
        """Per policy, the window's deferred decisions not activated: `(not_activated,
        awaiting)`, the first closed without an activation in time (never learned from), the
        second still open (an activation may yet come)."""
        window = self.f.where(impressions=False)
        closed = case((Decision.closed_at.is_(None), 0), else_=1)
        rows = self.conn.execute(
            select(Decision.policy, func.sum(closed), func.count())
            .where(*window, Decision.activated == false())
            .group_by(Decision.policy)
        ).all()
        return {policy: (int(done or 0), int(n) - int(done or 0)) for policy, done, n in rows}

    def ts_range(self) -> tuple[float | None, float | None]:
        """Earliest and latest decision ts in the window (an index read).

        Two `ORDER BY ts LIMIT 1` reads rather than `min`/`max`: SQLite optimizes those only
        without a WHERE clause, and `activated = 1` made it scan the whole ts index (0.25 s at
        1M decisions, BENCHMARKS.md "Report"); PostgreSQL plans both forms alike."""
        window = self.f.where()
        lo, hi = (
            self.conn.execute(select(Decision.ts).where(*window).order_by(order).limit(1)).scalar()
            for order in (Decision.ts.asc(), Decision.ts.desc())
        )
        return lo, hi

    def _bucket(self, ts: Any, origin: float, bucket_s: float) -> Any:
        x = (ts - origin) / bucket_s
        # SQLite's CAST truncates (x ≥ 0 here); PostgreSQL's rounds, so it gets floor().
        return cast(x, Integer) if self.sqlite else cast(func.floor(x), Integer)

    def timeseries(self, origin: float, bucket_s: float) -> list[tuple[Any, ...]]:
        """Per (time bucket, policy, variant): bucket, policy, variant_id, n, clicks,
        purchases, revenue, revenue². Bucket k covers `[origin + k·bucket_s, origin +
        (k+1)·bucket_s)`; `origin` ≤ every ts in the window."""
        counts = self._bucket_counts(origin, bucket_s)
        o = OUTCOMES
        ob = self._bucket(o.c.ts, origin, bucket_s).label("bucket")
        sums = {
            tuple(r[:3]): r[3:]
            for r in self.conn.execute(
                select(ob, o.c.policy, o.c.variant_id, *self._outcome_sums(o)).group_by(
                    ob, o.c.policy, o.c.variant_id
                )
            )
        }
        return [
            (k, policy, variant_id, n, *sums.get((k, policy, variant_id), (0, 0, 0.0, 0.0)))
            for k, policy, variant_id, n in counts
        ]

    def _bucket_counts(self, origin: float, bucket_s: float) -> list[tuple[Any, ...]]:
        """(bucket, policy, variant_id, n) over the window's decisions."""
        keys = (Decision.policy, Decision.variant_id)
        if not self.sqlite:  # one hash aggregate
            b = self._bucket(Decision.ts, origin, bucket_s).label("bucket")
            stmt = select(b, *keys, func.count()).where(*self.f.where()).group_by(b, *keys)
            return [tuple(r) for r in self.conn.execute(stmt)]
        # SQLite sorts to group: one range scan of the (ts, policy, variant_id) index per
        # bucket keeps each sort small (measured ~1.6x faster at 1M decisions than one query).
        lo, hi = self.ts_range()
        if lo is None or hi is None:
            return []
        out: list[tuple[Any, ...]] = []
        first, last = int((lo - origin) // bucket_s), int((hi - origin) // bucket_s)
        for k in range(first, last + 1):
            start, end = origin + k * bucket_s, origin + (k + 1) * bucket_s
            stmt = (
                select(*keys, func.count())
                .where(*self.f.where(), Decision.ts >= start, Decision.ts < end)
                .group_by(*keys)
            )
            out.extend((k, *r) for r in self.conn.execute(stmt))
        return out

    def context_cutoff(self, limit: int) -> float | None:
        """The ts of the `limit`-th most recent decision in the window, or None when the
        window holds no more than `limit` (then every decision is read)."""
        return self.conn.execute(
            select(Decision.ts)
            .where(*self.f.where())
            .order_by(Decision.ts.desc())
            .offset(limit - 1)
            .limit(1)
        ).scalar()

    def contexts(self, cutoff: float | None) -> list[tuple[Any, ...]]:
        """Per (context key, value, policy) over decisions with ts ≥ `cutoff`: key, value,
        policy, n, clicks, purchases, revenue, revenue². The JSON object is expanded by the
        database (`json_each` on SQLite, `json_each_text` on PostgreSQL); values come back as
        text or numbers, rendered by the caller with `str`."""
        each = func.json_each if self.sqlite else func.json_each_text
        kv = each(Decision.context).table_valued("key", "value").alias("kv")
        # PostgreSQL raises on a non-object; a context stored as JSON null has no keys anyway.
        is_object = (func.json_type if self.sqlite else func.json_typeof)(Decision.context)
        since = [is_object == "object"] + ([] if cutoff is None else [Decision.ts >= cutoff])
        keys = (kv.c.key, kv.c.value, Decision.policy)
        counts = self.conn.execute(
            select(*keys, func.count())
            .select_from(Decision)
            .join(kv, true())
            .where(*self.f.where(), *since)
            .group_by(*keys)
        ).all()
        o = OUTCOMES
        sums = {
            (str(r[0]), str(r[1]), r[2]): r[3:]
            for r in self.conn.execute(
                select(*keys, *self._outcome_sums(o))
                .select_from(o)
                .join(Decision, Decision.decision_id == o.c.decision_id)
                .join(kv, true())
                .where(*since)
                .group_by(*keys)
            )
        }
        out: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, 0, 0.0, 0.0])
        for key, value, policy, n in counts:
            k = (str(key), str(value), policy)
            c, p, r, r2 = sums.get(k, (0, 0, 0.0, 0.0))
            acc = out[k]
            out[k] = [acc[0] + n, acc[1] + c, acc[2] + p, acc[3] + r, acc[4] + r2]
        return [(*k, *v) for k, v in out.items()]

    def recent_logged(self, limit: int) -> Sequence[Any]:
        """The `limit` most recent randomized decisions (policy bandit or control) with their
        outcomes: decision_id, product_id, variant_id, actions, pmf, probability, context,
        clicked, purchased, revenue, seq (the reward's learning order; None while the window
        is open), ts and policy. Fallback decisions are not randomized and are left out."""
        # The limit first (a backward scan of the ts index), then the outcomes of those only.
        recent = (
            select(*LOGGED_COLUMNS, Decision.ts, Decision.policy)
            .where(*self.f.where(), Decision.policy.in_(("bandit", "control")))
            .order_by(Decision.ts.desc(), Decision.decision_id)
            .limit(limit)
            .subquery("recent")
        )
        r = recent.c
        # The reward's seq as a lookup per sampled decision: as an outer join, PostgreSQL
        # hashed the whole rewards table (0.2 s at 1M decisions, BENCHMARKS.md "Report").
        seq = (
            select(Reward.seq)
            .where(Reward.decision_id == r.decision_id)
            .scalar_subquery()
            .label("seq")
        )
        return self.conn.execute(
            select(*_with_outcomes(r), seq, r.ts, r.policy)
            .select_from(recent)
            .outerjoin(OUTCOMES, OUTCOMES.c.decision_id == r.decision_id)
            .order_by(r.ts.desc(), r.decision_id)
        ).all()

    def shadow_logged(self, limit: int) -> Sequence[Any]:
        """The `limit` most recent randomized decisions that the shadow explorers scored
        (`shadow_scores`), with the columns of `recent_logged` (less seq, ts and policy) and
        `pmfs`, each shadow's distribution over the action set.

        Which table drives the read matters at a million decisions (BENCHMARKS.md "Report"):
        walking the decisions newest first and probing `shadow_scores` stops after `limit` hits
        where the explorers score every closing decision, but reads the whole history where
        they scored few or none (0.85 s at 1M on SQLite). So the scored rows are counted first,
        up to `SHADOW_DRIVE_FACTOR`·`limit`: none, no query; that few, they drive the read
        (one lookup each, then the sort); more, the newest-first walk."""
        few = SHADOW_DRIVE_FACTOR * limit
        scored = self.conn.execute(
            select(func.count()).select_from(
                select(ShadowScore.decision_id).limit(few + 1).subquery()
            )
        ).scalar_one()
        if scored == 0:
            return []
        if scored <= few:  # with `IN (SELECT …)` SQLite (no statistics) reads shadow_scores first
            drive = [Decision.decision_id.in_(select(ShadowScore.decision_id))]
        else:
            drive = []
        recent = (
            select(*LOGGED_COLUMNS, Decision.ts, ShadowScore.pmfs)
            .join(ShadowScore, ShadowScore.decision_id == Decision.decision_id)
            .where(*self.f.where(), Decision.policy.in_(("bandit", "control")), *drive)
            .order_by(Decision.ts.desc(), Decision.decision_id)
            .limit(limit)
            .subquery("shadowed")
        )
        r = recent.c
        return self.conn.execute(
            select(*_with_outcomes(r), r.pmfs)
            .select_from(recent)
            .outerjoin(OUTCOMES, OUTCOMES.c.decision_id == r.decision_id)
            .order_by(r.ts.desc(), r.decision_id)
        ).all()

    def variant_meta(self, variant_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """variant_id → (style, source, generator_version) for the ids that exist."""
        out: dict[str, tuple[str, str, str]] = {}
        ids = sorted(set(variant_ids))
        for i in range(0, len(ids), 500):
            rows = self.conn.execute(
                select(
                    Variant.variant_id, Variant.style, Variant.source, Variant.generator_version
                ).where(Variant.variant_id.in_(ids[i : i + 500]))
            )
            out.update({r[0]: (r[1], r[2], r[3]) for r in rows})
        return out


@contextmanager
def report_reader(
    sessions: sessionmaker[Session], settings: Settings, f: Filters
) -> Iterator[ReportReader]:
    """A `ReportReader` on one connection in one snapshot (every query sees the same ledger, so
    rollups and the decisions they do not hold add up exactly), `report_outcomes` created
    empty: the caller fills it (`ReportReader.fill_outcomes`)."""
    with reading(sessions) as s:  # one snapshot; on SQLite without the write lock
        conn = s.connection()
        sqlite = conn.dialect.name == "sqlite"
        drop = "DROP TABLE IF EXISTS " + ("temp." if sqlite else "pg_temp.") + OUTCOMES.name
        conn.exec_driver_sql(drop)
        OUTCOMES.create(conn)
        try:
            if not sqlite:
                # Grouped scans over a million rows sort or hash far more than the default 4MB.
                conn.exec_driver_sql("SET LOCAL work_mem = '64MB'")
            yield ReportReader(conn, settings, f)
        finally:
            s.rollback()  # the table was created inside the transaction: this drops it


def product_categories(s: Session, product_ids: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    ids = sorted(set(product_ids))
    for i in range(0, len(ids), 500):
        rows = s.execute(
            select(Product.product_id, Product.category).where(
                Product.product_id.in_(ids[i : i + 500])
            )
        )
        out.update({r[0]: r[1] for r in rows})
    return out


#: What the off-policy sections read of a logged decision, before its outcomes.
LOGGED_COLUMNS = (
    Decision.decision_id,
    Decision.product_id,
    Decision.variant_id,
    Decision.actions,
    Decision.pmf,
    Decision.probability,
    Decision.context,
)


def _with_outcomes(r: Any) -> list[Any]:
    """`LOGGED_COLUMNS` of the subquery `r`, then clicked, purchased and revenue (0 for a
    decision without events)."""
    o = OUTCOMES
    return [
        *(r[c.key] for c in LOGGED_COLUMNS),
        func.coalesce(o.c.clicked, 0).label("clicked"),
        func.coalesce(o.c.purchased, 0).label("purchased"),
        func.coalesce(o.c.revenue, 0.0).label("revenue"),
    ]
