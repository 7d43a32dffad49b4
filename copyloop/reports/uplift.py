"""The uplift report: bandit vs the randomized control holdout, aggregated in SQL.

A decision's outcome counts the events whose `ts` falls in `[ts − clock_skew_s, ts +
reward_window_s]` (CONTRACT.md), whether or not its window has closed yet, so the counts always
equal what producers sent for the decisions in range. Per arm: `impressions`, `clicks` and
`purchases` (decisions with at least one), `revenue` (sum of purchase values), `ctr`, `cvr`,
`revenue_per_impression`. `uplift.<metric>` compares the `bandit` arm with `control`.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import Select, and_, case, func, select
from sqlalchemy.orm import Session, sessionmaker

from copyloop.ledger.tables import Decision, Event, Variant
from copyloop.reports.estimators import ArmStats, ips, sample_ratio, snips, uplift
from copyloop.settings import Settings

ARMS = ("bandit", "control", "fallback")
METRICS = {"ctr": "clicked", "cvr": "purchased", "revenue_per_impression": "revenue"}


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


def _filters(since: float | None, until: float | None, product_id: str | None) -> list[Any]:
    where = []
    if since is not None:
        where.append(Decision.ts >= since)
    if until is not None:
        where.append(Decision.ts < until)
    if product_id is not None:
        where.append(Decision.product_id == product_id)
    return where


def uplift_report(
    sessions: sessionmaker[Session],
    settings: Settings,
    since: float | None = None,
    until: float | None = None,
    product_id: str | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring for the semantics)."""
    o = outcomes(settings).subquery()
    clicked = func.coalesce(o.c.clicked, 0)
    purchased = func.coalesce(o.c.purchased, 0)
    revenue = func.coalesce(o.c.revenue, 0.0)
    where = _filters(since, until, product_id)
    by_arm = (
        select(
            Decision.policy,
            func.count(),
            func.sum(clicked),
            func.sum(purchased),
            func.sum(revenue),
            func.sum(revenue * revenue),
        )
        .select_from(Decision)
        .outerjoin(o, o.c.decision_id == Decision.decision_id)
        .where(*where)
        .group_by(Decision.policy)
    )
    by_variant = (
        select(
            Decision.product_id,
            Decision.variant_id,
            Decision.policy,
            func.count(),
            func.sum(clicked),
            func.sum(purchased),
            func.sum(revenue),
            Variant.style,
            Variant.source,
            Variant.generator_version,
        )
        .select_from(Decision)
        .outerjoin(o, o.c.decision_id == Decision.decision_id)
        .outerjoin(Variant, Variant.variant_id == Decision.variant_id)
        .where(*where)
        .group_by(
            Decision.product_id,
            Decision.variant_id,
            Decision.policy,
            Variant.style,
            Variant.source,
            Variant.generator_version,
        )
        .order_by(Decision.product_id, Decision.variant_id, Decision.policy)
    )
    logged = (
        select(Decision.variant_id, Decision.actions, Decision.pmf, Decision.probability, clicked)
        .select_from(Decision)
        .outerjoin(o, o.c.decision_id == Decision.decision_id)
        .where(*where, Decision.policy != "fallback")
    )
    with sessions() as s:
        arm_rows = s.execute(by_arm).all()
        variant_rows = s.execute(by_variant).all()
        logged_rows = s.execute(logged).all()

    arms: dict[str, dict[str, Any]] = {}
    stats: dict[str, dict[str, ArmStats]] = {}
    for policy in ARMS:
        row = next((r for r in arm_rows if r[0] == policy), None)
        n, clicks, purchases, rev, rev_sq = (
            (
                int(row[1]),
                int(row[2] or 0),
                int(row[3] or 0),
                float(row[4] or 0),
                float(row[5] or 0),
            )
            if row
            else (0, 0, 0, 0.0, 0.0)
        )
        arms[policy] = _arm_metrics(n, clicks, purchases, rev)
        stats[policy] = {
            "ctr": ArmStats(n, clicks, clicks),
            "cvr": ArmStats(n, purchases, purchases),
            "revenue_per_impression": ArmStats(n, rev, rev_sq),
        }
    return {
        "generated_at": time.time(),
        "filters": {"since": since, "until": until, "product_id": product_id},
        "settings": {
            "reward_window_s": settings.reward_window_s,
            "clock_skew_s": settings.clock_skew_s,
            "holdout": settings.holdout,
        },
        "arms": arms,
        "uplift": {
            metric: uplift(stats["bandit"][metric], stats["control"][metric]).as_dict()
            for metric in METRICS
        },
        "interval_method": "95% normal intervals; relative lift by the delta method on the log "
        "ratio; p-values from a Welch z-test on the difference",
        "srm": asdict(
            sample_ratio(
                arms["control"]["impressions"], arms["bandit"]["impressions"], settings.holdout
            )
        ),
        "variants": [
            {
                "product_id": r[0],
                "variant_id": r[1],
                "policy": r[2],
                "style": r[7],
                "source": r[8],
                "generator_version": r[9],
                **_arm_metrics(int(r[3]), int(r[4] or 0), int(r[5] or 0), float(r[6] or 0)),
            }
            for r in variant_rows
        ],
        "variants_note": "per-variant rates inside the bandit are biased by adaptive allocation",
        "ope": _ope(logged_rows),
    }


def _arm_metrics(n: int, clicks: int, purchases: int, revenue: float) -> dict[str, Any]:
    return {
        "impressions": n,
        "clicks": clicks,
        "purchases": purchases,
        "revenue": round(revenue, 6),
        "ctr": clicks / n if n else 0.0,
        "cvr": purchases / n if n else 0.0,
        "revenue_per_impression": revenue / n if n else 0.0,
    }


def _ope(rows: Sequence[Any]) -> dict[str, Any]:
    """Off-policy CTR of "always the control copy" and "uniform random" from logged propensities
    (the control is action 0 of every logged action set)."""
    rewards, logged_p, control_p, uniform_p = [], [], [], []
    for variant_id, actions, _pmf, probability, clicked in rows:
        rewards.append(float(clicked))
        logged_p.append(float(probability))
        control_p.append(1.0 if actions and actions[0] == variant_id else 0.0)
        uniform_p.append(1.0 / len(actions) if actions else 0.0)
    out: dict[str, Any] = {"metric": "ctr", "n": len(rewards)}
    for name, target in (("control", control_p), ("uniform", uniform_p)):
        out[name] = {
            "ips": asdict(ips(rewards, logged_p, target)),
            "snips": asdict(snips(rewards, logged_p, target)),
        }
    return out


def to_csv(report: dict[str, Any]) -> str:
    """The report's arm table, uplift rows and variant table as one CSV."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "section",
            "key",
            "impressions",
            "clicks",
            "purchases",
            "revenue",
            "ctr",
            "cvr",
            "revenue_per_impression",
            "relative",
            "absolute",
            "ci_low",
            "ci_high",
            "p_value",
        ]
    )
    for arm, m in report["arms"].items():
        w.writerow(
            [
                "arm",
                arm,
                m["impressions"],
                m["clicks"],
                m["purchases"],
                m["revenue"],
                m["ctr"],
                m["cvr"],
                m["revenue_per_impression"],
                "",
                "",
                "",
                "",
                "",
            ]
        )
    for metric, u in report["uplift"].items():
        w.writerow(
            [
                "uplift",
                metric,
                "",
                "",
                "",
                "",
                "",
                "",
                "",
                u["relative"],
                u["absolute"],
                u["ci_low"],
                u["ci_high"],
                u["p_value"],
            ]
        )
    for v in report["variants"]:
        w.writerow(
            [
                f"variant:{v['policy']}",
                f"{v['product_id']}/{v['variant_id']}",
                v["impressions"],
                v["clicks"],
                v["purchases"],
                v["revenue"],
                v["ctr"],
                v["cvr"],
                v["revenue_per_impression"],
                "",
                "",
                "",
                "",
                "",
            ]
        )
    return buf.getvalue()
