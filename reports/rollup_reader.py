"""The report's queries answered from the rollups plus the decisions they do not hold.

Any range of decision time `[a, b)` the report sums over (its window, the CUPED pre-period, the
window's first part) splits into whole hours, summed from `report_rollups` (closed decisions
only), and the rest, read from the decisions with their outcomes (`rollups.direct_outcomes`):
the partial hours at either end (every decision there, closed or not) and the decisions of the
whole hours that are still open. The three parts are disjoint and cover the range, and the
report reads them in one snapshot (`queries.report_reader`), so the sums equal the full scan's.
What the report reads directly is bounded by two hours plus the open tail (the decisions of the
last reward window), whatever the history.

Time series buckets of an hour or more are whole hours; a shorter bucket (a window of a day or
less) is the full scan's business (`uplift.uplift_report` picks).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import case, false, func, select, true

from core.ledger.tables import Decision, ReportContextRollup, ReportRollup, Variant
from reports.queries import Filters, ReportReader, outcomes
from reports.rollups import HOUR, hour_of

#: Hour ranges are [first, end) hour indexes; None is unbounded.
Hours = tuple[int | None, int | None]


class Part(NamedTuple):
    """Decisions the report reads directly: `where` on decisions, within `[lo, hi)` of decision
    time (None: unbounded), and whether they are the still-open ones (`open_only`)."""

    where: list[Any]
    lo: float | None
    hi: float | None
    open_only: bool = False


def split(a: float | None, b: float | None) -> tuple[Hours | None, list[Part]]:
    """The whole hours of `[a, b)` (None when there are none) and the direct parts: the partial
    hour at each end, and the open decisions of the whole hours.

    >>> hours, direct = split(1800.0, 9000.0)
    >>> hours, len(direct), [(p.lo, p.hi, p.open_only) for p in direct]
    ((1, 2), 3, [(1800.0, 3600.0, False), (7200.0, 9000.0, False), (3600.0, 7200.0, True)])
    >>> split(None, None)[0], len(split(None, None)[1])
    ((None, None), 1)
    >>> split(100.0, 200.0)[0]
    """
    first = None if a is None else hour_of(a) + (0 if hour_of(a) * HOUR == a else 1)
    end = None if b is None else hour_of(b)
    in_range = ([Decision.ts >= a] if a is not None else []) + (
        [Decision.ts < b] if b is not None else []
    )
    if first is not None and end is not None and first >= end:
        return None, [Part(in_range, a, b)]
    direct: list[Part] = []
    if a is not None and first is not None and first * HOUR > a:
        direct.append(Part([Decision.ts >= a, Decision.ts < first * HOUR], a, first * HOUR))
    if b is not None and end is not None and b > end * HOUR:
        direct.append(Part([Decision.ts >= end * HOUR, Decision.ts < b], end * HOUR, b))
    lo = None if first is None else first * HOUR
    hi = None if end is None else end * HOUR
    whole = ([Decision.ts >= lo] if lo is not None else []) + (
        [Decision.ts < hi] if hi is not None else []
    )
    direct.append(Part([Decision.closed_at.is_(None), *whole], lo, hi, open_only=True))
    return (first, end), direct


class RollupReader(ReportReader):
    """`ReportReader`'s sums from the rollups plus the decisions they do not hold, both summed
    by the database; the counterfactual panel's sample (`recent_logged`) is read as in the
    full scan."""

    def _product(self, table: Any) -> list[Any]:
        return [] if self.f.product_id is None else [table.product_id == self.f.product_id]

    def _rollup(
        self, table: Any, hours: Hours | None, keys: Sequence[Any], sums: Sequence[Any]
    ) -> list[Any]:
        """Σ `sums` per `keys` over `table`'s rows of `hours` (and the report's product)."""
        if hours is None:
            return []
        stmt = select(*keys, *(func.sum(c) for c in sums))
        return [
            tuple(r) for r in self.conn.execute(self._in_hours(stmt, table, hours).group_by(*keys))
        ]

    def _in_hours(self, stmt: Any, table: Any, hours: Hours) -> Any:
        first, end = hours
        where = self._product(table)
        where += [table.hour >= first] if first is not None else []
        where += [table.hour < end] if end is not None else []
        return stmt.where(*where)

    def _direct(
        self,
        parts: Sequence[Part],
        keys: Callable[[Any], Sequence[Any]],
        *,
        weights: bool = False,
        contexts: bool = False,
    ) -> list[tuple[Any, ...]]:
        """Per `keys(kv)` over the decisions matching any of `parts` (and the report's product):
        the keys, n, clicks, purchases, revenue, revenue², and with `weights` Σw, Σw·click,
        Σw·purchase, Σw·revenue, Σw² (w = 1 / logged probability). Outcomes as the full scan
        counts them; with `contexts`, one row per decision and key of its context object (`kv`,
        the database's JSON expansion, as in `ReportReader.contexts`)."""
        kv = None
        if contexts:
            each = func.json_each if self.sqlite else func.json_each_text
            kv = each(Decision.context).table_valued("key", "value").alias("kv")
        out: list[tuple[Any, ...]] = []
        for part in parts:
            bounds = self._bounds(part)
            if bounds is None:
                continue  # no open decision at all
            where = [*part.where, *self._product(Decision), Decision.activated == true()]
            # The part's time bounds bound the events too (the events(ts) index then reads
            # only theirs): without them a million-decision ledger's events were all scanned.
            f = Filters(*bounds, self.f.product_id)
            o = outcomes(self.settings, f).where(*where).subquery("direct_outcomes")
            c = func.coalesce(o.c.clicked, 0)
            p = func.coalesce(o.c.purchased, 0)
            r = func.coalesce(o.c.revenue, 0.0)
            sums = [func.count(), func.sum(c), func.sum(p), func.sum(r), func.sum(r * r)]
            if weights:
                w = 1.0 / Decision.probability
                sums += [func.sum(w), func.sum(w * c), func.sum(w * p), func.sum(w * r)]
                sums += [func.sum(w * w)]
            group = list(keys(kv))
            stmt = select(*group, *sums).select_from(Decision)
            stmt = stmt.outerjoin(o, o.c.decision_id == Decision.decision_id)
            if kv is not None:
                is_object = (func.json_type if self.sqlite else func.json_typeof)(Decision.context)
                stmt = stmt.join(kv, true()).where(is_object == "object")
            out += [tuple(row) for row in self.conn.execute(stmt.where(*where).group_by(*group))]
        return out

    def _bounds(self, part: Part) -> tuple[float | None, float | None] | None:
        """`part`'s decision-time bounds, the open part's lower one raised to the oldest open
        decision's ts (every open decision is at least that recent); None when nothing is
        open."""
        if not part.open_only:
            return part.lo, part.hi
        oldest = self._oldest_open
        if oldest is None:
            return None
        return (oldest if part.lo is None else max(part.lo, oldest)), part.hi

    @functools.cached_property
    def _oldest_open(self) -> float | None:
        """The ts of the oldest open decision (an index read), in the reader's snapshot."""
        oldest: float | None = self.conn.execute(
            select(Decision.ts).where(Decision.closed_at.is_(None)).order_by(Decision.ts).limit(1)
        ).scalar()
        return oldest

    def cube(self) -> list[tuple[Any, ...]]:
        hours, parts = split(self.f.since, self.f.until)
        r = ReportRollup
        out: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0] * 10)
        sums: tuple[Any, ...] = (r.n, r.clicks, r.purchases, r.revenue, r.revenue_sq)
        sums += (r.sw, r.sw_click, r.sw_purchase, r.sw_revenue, r.sw2)
        keys = (r.product_id, r.variant_id, r.policy)
        for row in self._rollup(r, hours, keys, sums):
            _add(out[row[:3]], row[3:])
        d = Decision
        # The product as `product_id || ''` (the same text): grouped by the bare columns,
        # SQLite (no statistics) walked the whole (product_id, variant_id, policy, …) index for
        # its order instead of reading the part's decisions (2.8 s at 1M decisions once the open
        # decisions' index became partial, BENCHMARKS.md "Report").
        for row in self._direct(
            parts, lambda _: (d.product_id + "", d.variant_id, d.policy), weights=True
        ):
            _add(out[row[:3]], row[3:])
        return _impressions(out)

    def timeseries(self, origin: float, bucket_s: float) -> list[tuple[Any, ...]]:
        """As the full scan's, for buckets of whole hours (`bucket_s` a multiple of 3600)."""
        hours, parts = split(self.f.since, self.f.until)
        out: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0] * 5)
        for hour, policy, variant_id, *sums in self._hourly_by_style(hours):
            _add(out[(int((hour * HOUR - origin) // bucket_s), policy, variant_id)], sums)
        bucket = self._bucket(Decision.ts, origin, bucket_s)  # the full scan's expression
        for k, policy, variant_id, *sums in self._direct(
            parts, lambda _: (bucket, Decision.policy, Decision.variant_id)
        ):
            _add(out[(int(k), policy, variant_id)], sums)
        return _impressions(out)

    def _hourly_by_style(self, hours: Hours | None) -> list[tuple[Any, ...]]:
        """Per (hour, policy, variant style): hour, policy, one variant of that style, and the
        outcome sums. The time series reads a variant only for its style (`timeseries`), so
        grouping by style in SQL returns a few hundred rows where (hour, variant) returns one
        per variant and hour; variants missing from `variants` stay apart (style NULL), and
        their representative, missing too, reads as `(unknown)` as it does in the full scan."""
        if hours is None:
            return []
        r, v = ReportRollup, Variant
        sums = (r.n, r.clicks, r.purchases, r.revenue, r.revenue_sq)
        stmt = (
            select(r.hour, r.policy, func.min(r.variant_id), *(func.sum(c) for c in sums))
            .select_from(r)
            .outerjoin(v, v.variant_id == r.variant_id)
        )
        stmt = self._in_hours(stmt, r, hours).group_by(r.hour, r.policy, v.style)
        return [tuple(row) for row in self.conn.execute(stmt)]

    def contexts(self, cutoff: float | None) -> list[tuple[Any, ...]]:
        """Every decision of the window (`cutoff` is ignored: the rollups make it complete)."""
        hours, parts = split(self.f.since, self.f.until)
        c = ReportContextRollup
        out: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0] * 5)
        sums = (c.n, c.clicks, c.purchases, c.revenue, c.revenue_sq)
        for key, value, policy, *rest in self._rollup(c, hours, (c.key, c.value, c.policy), sums):
            _add(out[(key, value, policy)], rest)
        for key, value, policy, *rest in self._direct(
            parts, lambda kv: (kv.c.key, kv.c.value, Decision.policy), contexts=True
        ):
            _add(out[(str(key), str(value), policy)], rest)  # rendered as the full scan does
        return _impressions(out)

    def product_sums(
        self, lo: float | None = None, hi: float | None = None
    ) -> list[tuple[Any, ...]]:
        a = _bound(max, self.f.since, lo)
        b = _bound(min, self.f.until, hi)
        return self._by_product(a, b, with_policy=True)

    def pre_period_sums(self, start: float, end: float) -> list[tuple[Any, ...]]:
        return self._by_product(start, end, with_policy=False)

    def _by_product(
        self, a: float | None, b: float | None, *, with_policy: bool
    ) -> list[tuple[Any, ...]]:
        """Per product (and policy) over `[a, b)`: n, clicks, purchases, revenue, revenue²."""
        hours, parts = split(a, b)
        r, d = ReportRollup, Decision
        width = 2 if with_policy else 1
        out: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0.0] * 5)
        sums = (r.n, r.clicks, r.purchases, r.revenue, r.revenue_sq)
        for row in self._rollup(r, hours, (r.product_id, r.policy)[:width], sums):
            _add(out[row[:width]], row[width:])
        # Grouped (policy, product) in SQL, per product folded here: grouped by product first,
        # SQLite (no statistics) walked a whole product-first index for the group order instead
        # of reading the part's decisions (0.3 s at 1M decisions, BENCHMARKS.md "Report").
        for policy, product_id, *rest in self._direct(parts, lambda _: (d.policy, d.product_id)):
            _add(out[(product_id, policy)[:width]], rest)
        return _impressions(out)

    def activation_counts(self) -> dict[str, tuple[int, int]]:
        """As the full scan's: per policy, (not_activated, awaiting). The closed ones of whole
        hours are in the rollups; the rest are among the decisions read directly."""
        hours, parts = split(self.f.since, self.f.until)
        r = ReportRollup
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for policy, n in self._rollup(r, hours, (r.policy,), (r.not_activated,)):
            out[policy][0] += int(n or 0)
        d = Decision
        for part in parts:
            where = [*part.where, *self._product(d), d.activated == false()]
            closed = case((d.closed_at.is_(None), 0), else_=1)
            stmt = select(d.policy, func.sum(closed), func.count()).where(*where)
            for policy, done, n in self.conn.execute(stmt.group_by(d.policy)):
                out[policy][0] += int(done or 0)
                out[policy][1] += int(n) - int(done or 0)
        return {p: (v[0], v[1]) for p, v in out.items() if v[0] or v[1]}

    def recent_cutoff(self, limit: int) -> float | None:
        """The ts of the `limit`-th most recent randomized decision in the window (None when
        there are no more than `limit`): `recent_logged` reads nothing older."""
        return self.conn.execute(
            select(Decision.ts)
            .where(*self.f.where(), Decision.policy.in_(("bandit", "control")))
            .order_by(Decision.ts.desc())
            .offset(limit - 1)
            .limit(1)
        ).scalar()


def _impressions(out: dict[tuple[Any, ...], list[float]]) -> list[tuple[Any, ...]]:
    """The rows with at least one impression (a rollup cell may hold only decisions never
    activated, which the full scan does not group), counts as ints."""
    return [(*k, *_typed(v)) for k, v in out.items() if v[0]]


def _add(acc: list[float], part: Sequence[Any]) -> None:
    for i, x in enumerate(part):
        acc[i] += float(x or 0)  # PostgreSQL sums bigints as numeric (Decimal)


def _typed(v: Sequence[float]) -> tuple[Any, ...]:
    """Counts back to ints (n, clicks, purchases), sums as floats."""
    return (int(v[0]), int(v[1]), int(v[2]), *(float(x) for x in v[3:]))


def _bound(pick: Callable[[float, float], float], x: float | None, y: float | None) -> float | None:
    if x is None:
        return y
    return x if y is None else pick(x, y)


__all__ = ["Part", "RollupReader", "split"]
