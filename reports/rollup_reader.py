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

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, func, select

from core.ledger.tables import Decision, ReportContextRollup, ReportRollup, Variant
from core.settings import Settings
from reports.queries import Filters, ReportReader
from reports.rollups import HOUR, Outcome, context_pairs_where, direct_outcomes, hour_of

#: Hour ranges are [first, end) hour indexes; None is unbounded.
Hours = tuple[int | None, int | None]


def split(a: float | None, b: float | None) -> tuple[Hours | None, list[list[Any]]]:
    """The whole hours of `[a, b)` (None when there are none) and the where-clauses of the
    direct parts: the partial hour at each end, and the open decisions of the whole hours.

    >>> hours, direct = split(1800.0, 9000.0)
    >>> hours, len(direct)
    ((1, 2), 3)
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
        return None, [in_range]
    direct: list[list[Any]] = []
    if a is not None and first is not None and first * HOUR > a:
        direct.append([Decision.ts >= a, Decision.ts < first * HOUR])
    if b is not None and end is not None and b > end * HOUR:
        direct.append([Decision.ts >= end * HOUR, Decision.ts < b])
    whole = ([Decision.ts >= first * HOUR] if first is not None else []) + (
        [Decision.ts < end * HOUR] if end is not None else []
    )
    direct.append([Decision.closed_at.is_(None), *whole])
    return (first, end), direct


class RollupReader(ReportReader):
    """`ReportReader`'s sums from the rollups plus the decisions they do not hold; the
    counterfactual panel's sample (`recent_logged`) is read as in the full scan."""

    def __init__(self, conn: Connection, settings: Settings, f: Filters) -> None:
        super().__init__(conn, settings, f)
        self._window: tuple[Hours | None, list[Outcome], dict[str, list[tuple[str, str]]]] | None
        self._window = None

    def _product(self, table: Any) -> list[Any]:
        return [] if self.f.product_id is None else [table.product_id == self.f.product_id]

    def _rollup(
        self, table: Any, hours: Hours | None, keys: Sequence[Any], sums: Sequence[Any]
    ) -> list[Any]:
        """Σ `sums` per `keys` over `table`'s rows of `hours` (and the report's product)."""
        if hours is None:
            return []
        first, end = hours
        where = self._product(table)
        where += [table.hour >= first] if first is not None else []
        where += [table.hour < end] if end is not None else []
        stmt = select(*keys, *(func.sum(c) for c in sums)).where(*where).group_by(*keys)
        return [tuple(r) for r in self.conn.execute(stmt)]

    def _direct(
        self, a: float | None, b: float | None, contexts: bool = False
    ) -> tuple[Hours | None, list[Outcome], dict[str, list[tuple[str, str]]]]:
        """`[a, b)`'s whole hours, the outcomes of its other decisions (with their context pairs
        when `contexts`) under the report's product filter."""
        hours, parts = split(a, b)
        product = self._product(Decision)
        rows: list[Outcome] = []
        pairs: dict[str, list[tuple[str, str]]] = {}
        for where in parts:
            rows += direct_outcomes(self.conn, self.settings, [*where, *product])
            if contexts:
                pairs.update(context_pairs_where(self.conn, [*where, *product]))
        return hours, rows, pairs

    def _window_parts(self) -> tuple[Hours | None, list[Outcome], dict[str, list[tuple[str, str]]]]:
        if self._window is None:
            self._window = self._direct(self.f.since, self.f.until, contexts=True)
        return self._window

    def cube(self) -> list[tuple[Any, ...]]:
        hours, direct, _ = self._window_parts()
        r = ReportRollup
        out: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0] * 10)
        rows = self._rollup(
            r,
            hours,
            (r.product_id, r.variant_id, r.policy),
            (r.n, r.clicks, r.purchases, r.revenue, r.revenue_sq)
            + (r.sw, r.sw_click, r.sw_purchase, r.sw_revenue, r.sw2),
        )
        for key, *sums in ((tuple(x[:3]), *x[3:]) for x in rows):
            _add(out[key], sums)
        for o in direct:
            _add(out[(o.product_id, o.variant_id, o.policy)], o.sums())
        return [(*k, *_typed(v)) for k, v in out.items()]

    def timeseries(self, origin: float, bucket_s: float) -> list[tuple[Any, ...]]:
        """As the full scan's, for buckets of whole hours (`bucket_s` a multiple of 3600)."""
        hours, direct, _ = self._window_parts()
        out: dict[tuple[int, str, str], list[float]] = defaultdict(lambda: [0.0] * 5)
        for hour, policy, variant_id, *sums in self._hourly_by_style(hours):
            _add(out[(int((hour * HOUR - origin) // bucket_s), policy, variant_id)], sums)
        for o in direct:
            # The full scan's bucket expression: ⌊(ts − origin) / bucket_s⌋ in floating point.
            k = int((o.ts - origin) / bucket_s // 1)
            _add(out[(k, o.policy, o.variant_id)], o.sums()[:5])
        return [(*k, *_typed(v)) for k, v in out.items()]

    def _hourly_by_style(self, hours: Hours | None) -> list[tuple[Any, ...]]:
        """Per (hour, policy, variant style): hour, policy, one variant of that style, and the
        outcome sums. The time series reads a variant only for its style (`timeseries`), so
        grouping by style in SQL returns a few hundred rows where (hour, variant) returns one
        per variant and hour; variants missing from `variants` stay apart (style NULL), and
        their representative, missing too, reads as `(unknown)` as it does in the full scan."""
        if hours is None:
            return []
        r, v = ReportRollup, Variant
        where = self._product(r)
        where += [r.hour >= hours[0]] if hours[0] is not None else []
        where += [r.hour < hours[1]] if hours[1] is not None else []
        sums = (r.n, r.clicks, r.purchases, r.revenue, r.revenue_sq)
        stmt = (
            select(r.hour, r.policy, func.min(r.variant_id), *(func.sum(c) for c in sums))
            .select_from(r)
            .outerjoin(v, v.variant_id == r.variant_id)
            .where(*where)
            .group_by(r.hour, r.policy, v.style)
        )
        return [tuple(row) for row in self.conn.execute(stmt)]

    def contexts(self, cutoff: float | None) -> list[tuple[Any, ...]]:
        """Every decision of the window (`cutoff` is ignored: the rollups make it complete)."""
        hours, direct, pairs = self._window_parts()
        c = ReportContextRollup
        out: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0] * 5)
        rows = self._rollup(
            c,
            hours,
            (c.key, c.value, c.policy),
            (c.n, c.clicks, c.purchases, c.revenue, c.revenue_sq),
        )
        for key, value, policy, *sums in rows:
            _add(out[(key, value, policy)], sums)
        for o in direct:
            part = o.sums()[:5]
            for key, value in pairs.get(o.decision_id, ()):
                _add(out[(key, value, o.policy)], part)
        return [(*k, *_typed(v)) for k, v in out.items()]

    def product_sums(
        self, lo: float | None = None, hi: float | None = None
    ) -> list[tuple[Any, ...]]:
        a = _bound(max, self.f.since, lo)
        b = _bound(min, self.f.until, hi)
        hours, direct, _ = self._direct(a, b)
        return self._by(hours, direct, lambda o: (o.product_id, o.policy), 2)

    def pre_period_sums(self, start: float, end: float) -> list[tuple[Any, ...]]:
        hours, direct, _ = self._direct(start, end)
        return self._by(hours, direct, lambda o: (o.product_id,), 1)

    def _by(
        self,
        hours: Hours | None,
        direct: Sequence[Outcome],
        key: Callable[[Outcome], tuple[str, ...]],
        width: int,
    ) -> list[tuple[Any, ...]]:
        """Per product (and policy when `width` is 2): n, clicks, purchases, revenue, revenue²."""
        r = ReportRollup
        keys = (r.product_id, r.policy)[:width]
        out: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0] * 5)
        for row in self._rollup(
            r, hours, keys, (r.n, r.clicks, r.purchases, r.revenue, r.revenue_sq)
        ):
            _add(out[tuple(row[:width])], row[width:])
        for o in direct:
            _add(out[key(o)], o.sums()[:5])
        return [(*k, *_typed(v)) for k, v in out.items()]

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


__all__ = ["RollupReader", "split"]
