"""The report's SQL: a few grouped scans of `decisions` joined to per-decision outcomes.

Every aggregate is computed by the database (SQLite or PostgreSQL), so the report over a million
decisions moves a few thousand rows to Python. The one bounded row-level read is the sample of
recent decisions that the counterfactual panel scores (`recent_logged`).

A decision's outcome counts the events whose `ts` falls in `[ts − clock_skew_s, ts +
reward_window_s]` (CONTRACT.md), whether or not its window has closed yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, Select, and_, case, cast, func, select, true
from sqlalchemy.orm import Session

from copyloop.ledger.tables import Decision, Event, Product, Variant
from copyloop.settings import Settings

#: Distinct values kept per context key (by impressions); the rest are summed as `(other)`.
MAX_CONTEXT_VALUES = 25


@dataclass(frozen=True, slots=True)
class Filters:
    """The report's window (`since <= ts < until`, epoch seconds) and optional product."""

    since: float | None = None
    until: float | None = None
    product_id: str | None = None

    def where(self) -> list[Any]:
        where = []
        if self.since is not None:
            where.append(Decision.ts >= self.since)
        if self.until is not None:
            where.append(Decision.ts < self.until)
        if self.product_id is not None:
            where.append(Decision.product_id == self.product_id)
        return where


def outcomes(settings: Settings) -> Select[Any]:
    """Per decision with at least one in-span event: clicked, carted, purchased (0/1), revenue."""
    in_span = and_(
        Event.decision_id == Decision.decision_id,
        Event.ts >= Decision.ts - settings.clock_skew_s,
        Event.ts <= Decision.ts + settings.reward_window_s,
    )

    def flag(kind: str) -> Any:
        return func.max(case((Event.type == kind, 1), else_=0))

    return (
        select(
            Event.decision_id.label("decision_id"),
            flag("click").label("clicked"),
            flag("add_to_cart").label("carted"),
            flag("purchase").label("purchased"),
            func.sum(
                case((Event.type == "purchase", func.coalesce(Event.value, 0.0)), else_=0.0)
            ).label("revenue"),
        )
        .select_from(Event)
        .join(Decision, in_span)
        .group_by(Event.decision_id)
    )


class _Outcome:
    """Columns of the per-decision outcome (0 when a decision has no event in its span)."""

    def __init__(self, settings: Settings) -> None:
        self.sub = outcomes(settings).subquery("o")
        self.clicked = func.coalesce(self.sub.c.clicked, 0)
        self.purchased = func.coalesce(self.sub.c.purchased, 0)
        self.revenue = func.coalesce(self.sub.c.revenue, 0.0)

    def sums(self) -> list[Any]:
        """n, clicks, purchases, revenue, Σ revenue² (in that order)."""
        return [
            func.count(),
            func.sum(self.clicked),
            func.sum(self.purchased),
            func.sum(self.revenue),
            func.sum(self.revenue * self.revenue),
        ]

    def join(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.outerjoin(self.sub, self.sub.c.decision_id == Decision.decision_id)


def cube(s: Session, settings: Settings, f: Filters) -> Sequence[Any]:
    """Per (product, variant, policy): outcome sums and the importance-weight sums behind the
    per-variant SNIPS rates (w = 1 / logged probability of the served variant).

    Columns: product_id, variant_id, policy, n, clicks, purchases, revenue, revenue², then
    Σw, Σw·click, Σw·purchase, Σw·revenue, Σw², Σw²·click, Σw²·purchase, Σw²·revenue,
    Σw²·revenue².
    """
    o = _Outcome(settings)
    w = 1.0 / Decision.probability
    w2 = w * w
    stmt = select(
        Decision.product_id,
        Decision.variant_id,
        Decision.policy,
        *o.sums(),
        func.sum(w),
        func.sum(w * o.clicked),
        func.sum(w * o.purchased),
        func.sum(w * o.revenue),
        func.sum(w2),
        func.sum(w2 * o.clicked),
        func.sum(w2 * o.purchased),
        func.sum(w2 * o.revenue),
        func.sum(w2 * o.revenue * o.revenue),
    ).select_from(Decision)
    stmt = (
        o.join(stmt)
        .where(*f.where())
        .group_by(Decision.product_id, Decision.variant_id, Decision.policy)
    )
    return s.execute(stmt).all()


def variant_meta(s: Session, variant_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """variant_id → (style, source, generator_version) for the ids that exist."""
    out: dict[str, tuple[str, str, str]] = {}
    ids = sorted(set(variant_ids))
    for i in range(0, len(ids), 500):
        rows = s.execute(
            select(
                Variant.variant_id, Variant.style, Variant.source, Variant.generator_version
            ).where(Variant.variant_id.in_(ids[i : i + 500]))
        )
        out.update({r[0]: (r[1], r[2], r[3]) for r in rows})
    return out


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


def ts_range(s: Session, f: Filters) -> tuple[float | None, float | None]:
    """Earliest and latest decision ts in the window (an index read)."""
    row = s.execute(select(func.min(Decision.ts), func.max(Decision.ts)).where(*f.where())).one()
    return row[0], row[1]


def timeseries(
    s: Session, settings: Settings, f: Filters, origin: float, bucket_s: float
) -> Sequence[Any]:
    """Per (time bucket, policy, style): outcome sums. Bucket k covers
    `[origin + k·bucket_s, origin + (k+1)·bucket_s)`; `origin` ≤ every ts in the window."""
    o = _Outcome(settings)
    x = (Decision.ts - origin) / bucket_s
    # SQLite's CAST truncates (x ≥ 0 here); PostgreSQL's rounds, so it gets floor().
    bucket = cast(x, Integer) if _dialect(s) == "sqlite" else cast(func.floor(x), Integer)
    bucket = bucket.label("bucket")
    stmt = select(bucket, Decision.policy, Variant.style, *o.sums()).select_from(Decision)
    stmt = (
        o.join(stmt)
        .outerjoin(Variant, Variant.variant_id == Decision.variant_id)
        .where(*f.where())
        .group_by(bucket, Decision.policy, Variant.style)
        .order_by(bucket)
    )
    return s.execute(stmt).all()


def contexts(s: Session, settings: Settings, f: Filters) -> Sequence[Any]:
    """Per (context key, value, policy): outcome sums, over every key the storefront sent.

    The JSON object is expanded by the database: `json_each` on SQLite, `json_each_text` on
    PostgreSQL (both return key, value). Values come back as text or numbers; the caller
    renders them with `str`."""
    o = _Outcome(settings)
    each = "json_each" if _dialect(s) == "sqlite" else "json_each_text"
    kv = getattr(func, each)(Decision.context).table_valued("key", "value").alias("kv")
    stmt = select(kv.c.key, kv.c.value, Decision.policy, *o.sums()).select_from(Decision)
    stmt = (
        o.join(stmt.join(kv, true()))
        .where(*f.where())
        .group_by(kv.c.key, kv.c.value, Decision.policy)
    )
    return s.execute(stmt).all()


def recent_logged(s: Session, settings: Settings, f: Filters, limit: int) -> Sequence[Any]:
    """The `limit` most recent randomized decisions (policy bandit or control) with their
    outcomes: decision_id, product_id, variant_id, actions, pmf, probability, context,
    clicked, purchased, revenue. Fallback decisions are not randomized and are left out."""
    o = _Outcome(settings)
    stmt = select(
        Decision.decision_id,
        Decision.product_id,
        Decision.variant_id,
        Decision.actions,
        Decision.pmf,
        Decision.probability,
        Decision.context,
        o.clicked.label("clicked"),
        o.purchased.label("purchased"),
        o.revenue.label("revenue"),
    ).select_from(Decision)
    stmt = (
        o.join(stmt)
        .where(*f.where(), Decision.policy.in_(("bandit", "control")))
        .order_by(Decision.ts.desc(), Decision.decision_id)
        .limit(limit)
    )
    return s.execute(stmt).all()


def count_randomized(s: Session, f: Filters) -> int:
    stmt = select(func.count()).select_from(Decision)
    stmt = stmt.where(*f.where(), Decision.policy.in_(("bandit", "control")))
    return int(s.scalar(stmt) or 0)


def _dialect(s: Session) -> str:
    bind = s.get_bind()
    return bind.dialect.name


__all__ = [
    "MAX_CONTEXT_VALUES",
    "Filters",
    "contexts",
    "count_randomized",
    "cube",
    "outcomes",
    "product_categories",
    "recent_logged",
    "timeseries",
    "ts_range",
    "variant_meta",
]
