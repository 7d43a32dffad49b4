"""The uplift report: bandit vs the randomized control holdout, breakdowns, time series and the
counterfactual panel, aggregated in SQL (`queries`) and assembled here as a JSON-ready dict.

A decision's outcome counts the events whose `ts` falls in `[ts − clock_skew_s, ts +
reward_window_s]` (CONTRACT.md), whether or not its window has closed yet, so the counts always
equal what producers sent for the decisions in range. Per arm: `impressions`, `clicks` and
`purchases` (decisions with at least one), `revenue` (sum of purchase values), `ctr`, `cvr`,
`revenue_per_impression`. `uplift.<metric>` compares the `bandit` arm with `control`: the
headline comes from the randomized holdout only. Per-variant rates inside the bandit are biased
by its adaptive allocation; the propensity-weighted (SNIPS) rates beside them are not.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from reports.csv_format import to_csv
from reports.estimators import ArmStats, ratio_snips, sample_ratio, uplift
from reports.ope import counterfactual_panel, to_rows
from reports.queries import Filters, report_reader

ARMS = ("bandit", "control", "fallback")
RANDOMIZED = ("bandit", "control")
METRICS = {"ctr": "clicked", "cvr": "purchased", "revenue_per_impression": "revenue"}
#: Decisions the counterfactual panel scores at most (the most recent ones in the window).
DEFAULT_OPE_SAMPLE = 10_000
#: Decisions (the most recent in the window) whose context JSON the breakdown expands at most.
DEFAULT_CONTEXT_SAMPLE = 200_000
HOUR, DAY = 3600.0, 86400.0
#: Ranges up to this long get hourly buckets, longer ones daily buckets.
HOURLY_UP_TO_S = 4 * DAY
#: Distinct values kept per context key (by impressions); the rest are summed as `(other)`.
MAX_CONTEXT_VALUES = 25

__all__ = ["DEFAULT_OPE_SAMPLE", "to_csv", "uplift_report"]


@dataclass(frozen=True, slots=True)
class Sums:
    """Outcome sums of a set of decisions."""

    n: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0

    @classmethod
    def of(cls, row: Sequence[Any], at: int) -> Sums:
        n, c, p, r, r2 = row[at : at + 5]
        return cls(int(n), int(c or 0), int(p or 0), float(r or 0), float(r2 or 0))

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.n + other.n,
            self.clicks + other.clicks,
            self.purchases + other.purchases,
            self.revenue + other.revenue,
            self.revenue_sq + other.revenue_sq,
        )

    def metrics(self) -> dict[str, Any]:
        n = self.n
        return {
            "impressions": n,
            "clicks": self.clicks,
            "purchases": self.purchases,
            "revenue": round(self.revenue, 6),
            "ctr": self.clicks / n if n else 0.0,
            "cvr": self.purchases / n if n else 0.0,
            "revenue_per_impression": self.revenue / n if n else 0.0,
        }

    def stats(self) -> dict[str, ArmStats]:
        return {
            "ctr": ArmStats(self.n, self.clicks, self.clicks),
            "cvr": ArmStats(self.n, self.purchases, self.purchases),
            "revenue_per_impression": ArmStats(self.n, self.revenue, self.revenue_sq),
        }


def _lift(by_arm: dict[str, Sums]) -> dict[str, dict[str, float | None]]:
    t, c = by_arm.get("bandit", Sums()).stats(), by_arm.get("control", Sums()).stats()
    return {m: uplift(t[m], c[m]).as_dict() for m in METRICS}


def uplift_report(
    sessions: sessionmaker[Session],
    settings: Settings,
    since: float | None = None,
    until: float | None = None,
    product_id: str | None = None,
    *,
    ope_sample: int = DEFAULT_OPE_SAMPLE,
    context_sample: int = DEFAULT_CONTEXT_SAMPLE,
    greedy: bool = True,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring for the semantics).

    `ope_sample` bounds the decisions the counterfactual panel reads (0 leaves it out);
    `context_sample` the decisions (the most recent) the per-context breakdown expands (0
    leaves it out); `greedy=False` skips scoring the panel's sample with the newest model.
    """
    f = Filters(since, until, product_id)
    with report_reader(sessions, settings, f) as q:
        cube_rows = q.cube()
        lo, hi = q.ts_range()
        bucket_s = HOUR if _span(f, lo, hi) <= HOURLY_UP_TO_S else DAY
        origin = math.floor(lo / bucket_s) * bucket_s if lo is not None else 0.0
        ts_rows = q.timeseries(origin, bucket_s) if lo is not None else []
        meta = q.variant_meta([r[1] for r in cube_rows] + [r[2] for r in ts_rows])
        cutoff = q.context_cutoff(context_sample) if context_sample > 0 else None
        ctx_rows = q.contexts(cutoff) if context_sample > 0 else []
        raw = q.recent_logged(ope_sample) if ope_sample > 0 else []

    by_arm: dict[str, Sums] = defaultdict(Sums)
    for r in cube_rows:
        by_arm[r[2]] += Sums.of(r, 3)
    arms = {arm: by_arm[arm].metrics() for arm in ARMS}
    randomized = sum(by_arm[a].n for a in RANDOMIZED)
    return {
        "generated_at": time.time(),
        "filters": {"since": since, "until": until, "product_id": product_id},
        "settings": {
            "reward_window_s": settings.reward_window_s,
            "clock_skew_s": settings.clock_skew_s,
            "holdout": settings.holdout,
        },
        "arms": arms,
        "uplift": _lift(by_arm),
        "headline_note": "bandit arm (every bandit-served decision) against the control holdout "
        "(the original copy, served uniformly at random): a randomized comparison; fallback "
        "decisions are in neither arm",
        "interval_method": "95% normal intervals; relative lift by the delta method on the log "
        "ratio; p-values from a Welch z-test on the difference",
        "srm": asdict(
            sample_ratio(
                arms["control"]["impressions"], arms["bandit"]["impressions"], settings.holdout
            )
        ),
        "products": _products(cube_rows),
        "variants": _variants(cube_rows, meta),
        "variants_note": "per-variant rates inside the bandit are biased by adaptive allocation; "
        "the snips rates beside them weight each served decision by 1 / its logged probability "
        "(bandit and control decisions), estimating the rate had every page view of the "
        "product shown that variant",
        "generator_versions": _generator_versions(cube_rows, meta),
        "contexts": _contexts(ctx_rows),
        "contexts_scope": _context_scope(cutoff, context_sample),
        "timeseries": _timeseries(ts_rows, meta, origin, bucket_s),
        "ope": _ope(sessions, raw, randomized, ope_sample, greedy),
    }


def _span(f: Filters, lo: float | None, hi: float | None) -> float:
    start = f.since if f.since is not None else lo
    end = f.until if f.until is not None else hi
    if start is None or end is None:
        return 0.0
    return max(end - start, 0.0)


def _products(cube_rows: Sequence[Any]) -> list[dict[str, Any]]:
    per: dict[str, dict[str, Sums]] = defaultdict(lambda: defaultdict(Sums))
    for r in cube_rows:
        per[r[0]][r[2]] += Sums.of(r, 3)
    rows = []
    for product_id, by_arm in per.items():
        total = sum(by_arm.values(), Sums())
        rows.append(
            {
                "product_id": product_id,
                **total.metrics(),
                "arms": {arm: by_arm[arm].metrics() for arm in ARMS if arm in by_arm},
                "uplift": _lift(by_arm),
            }
        )
    return sorted(rows, key=lambda x: (-x["impressions"], x["product_id"]))


def _snips(w: Sequence[float], n: int) -> dict[str, Any]:
    """SNIPS rates from the cube's weight sums (Σw, Σw·r per metric, Σw², Σw²·r, Σw²·r²)."""
    sw, swc, swp, swr, sw2, sw2c, sw2p, sw2r, sw2r2 = w
    return {
        "ctr": asdict(ratio_snips(sw, swc, sw2, sw2c, sw2c, n)),
        "cvr": asdict(ratio_snips(sw, swp, sw2, sw2p, sw2p, n)),
        "revenue_per_impression": asdict(ratio_snips(sw, swr, sw2, sw2r, sw2r2, n)),
    }


def _weights(r: Sequence[Any]) -> list[float]:
    return [float(x or 0.0) for x in r[8:17]]


def _variants(
    cube_rows: Sequence[Any], meta: dict[str, tuple[str, str, str]]
) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str], Sums] = defaultdict(Sums)
    by_policy: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    weights: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * 9)
    product_n: dict[str, int] = defaultdict(int)
    product_bandit_n: dict[str, int] = defaultdict(int)
    for r in cube_rows:
        key = (r[0], r[1])
        part = Sums.of(r, 3)
        sums[key] += part
        by_policy[key][r[2]] = part.n
        product_n[r[0]] += part.n
        if r[2] == "bandit":
            product_bandit_n[r[0]] += part.n
        if r[2] in RANDOMIZED:
            weights[key] = [a + b for a, b in zip(weights[key], _weights(r), strict=True)]
    rows = []
    for (product_id, variant_id), total in sorted(sums.items()):
        style, source, generator_version = meta.get(variant_id, (None, None, None))
        bandit_n = by_policy[(product_id, variant_id)].get("bandit", 0)
        randomized_n = sum(by_policy[(product_id, variant_id)].get(a, 0) for a in RANDOMIZED)
        rows.append(
            {
                "product_id": product_id,
                "variant_id": variant_id,
                "style": style,
                "source": source,
                "generator_version": generator_version,
                **total.metrics(),
                "rates_biased": True,
                "impressions_by_policy": by_policy[(product_id, variant_id)],
                "traffic_share": total.n / product_n[product_id] if product_n[product_id] else 0.0,
                "bandit_traffic_share": (
                    bandit_n / product_bandit_n[product_id] if product_bandit_n[product_id] else 0.0
                ),
                "snips": _snips(weights[(product_id, variant_id)], randomized_n),
            }
        )
    return rows


def _generator_versions(
    cube_rows: Sequence[Any], meta: dict[str, tuple[str, str, str]]
) -> list[dict[str, Any]]:
    sums: dict[str, Sums] = defaultdict(Sums)
    weights: dict[str, list[float]] = defaultdict(lambda: [0.0] * 9)
    randomized_n: dict[str, int] = defaultdict(int)
    variants: dict[str, set[str]] = defaultdict(set)
    total_n = 0
    for r in cube_rows:
        m = meta.get(r[1])
        version = "(unknown variant)" if m is None else (m[2] or "(none)")
        part = Sums.of(r, 3)
        sums[version] += part
        variants[version].add(r[1])
        total_n += part.n
        if r[2] in RANDOMIZED:
            randomized_n[version] += part.n
            weights[version] = [a + b for a, b in zip(weights[version], _weights(r), strict=True)]
    return [
        {
            "generator_version": version,
            "variants": len(variants[version]),
            **total.metrics(),
            "rates_biased": True,
            "traffic_share": total.n / total_n if total_n else 0.0,
            "snips": _snips(weights[version], randomized_n[version]),
        }
        for version, total in sorted(sums.items(), key=lambda kv: (-kv[1].n, kv[0]))
    ]


def _contexts(ctx_rows: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    """Per context key, its values (the `MAX_CONTEXT_VALUES` most shown; the rest as
    `(other)`) with both arms' metrics and the bandit's lift within that value."""
    per: dict[str, dict[str, dict[str, Sums]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(Sums))
    )
    for key, value, policy, *rest in ctx_rows:
        per[str(key)][str(value)][policy] += Sums.of(rest, 0)
    out: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(per):
        values = sorted(per[key].items(), key=lambda kv: (-sum(s.n for s in kv[1].values()), kv[0]))
        if len(values) > MAX_CONTEXT_VALUES:
            other: dict[str, Sums] = defaultdict(Sums)
            for _, by_arm in values[MAX_CONTEXT_VALUES - 1 :]:
                for arm, sums in by_arm.items():
                    other[arm] += sums
            values = [*values[: MAX_CONTEXT_VALUES - 1], ("(other)", other)]
        key_n = sum(s.n for _, by_arm in values for s in by_arm.values())
        rows = []
        for value, by_arm in values:
            total = sum(by_arm.values(), Sums())
            rows.append(
                {
                    "value": value,
                    **total.metrics(),
                    "traffic_share": total.n / key_n if key_n else 0.0,
                    "arms": {arm: by_arm[arm].metrics() for arm in ARMS if arm in by_arm},
                    "uplift": _lift(by_arm),
                }
            )
        out[key] = rows
    return out


def _context_scope(cutoff: float | None, limit: int) -> dict[str, Any]:
    if limit <= 0:
        return {"complete": False, "note": "per-context breakdown not computed (limit 0)"}
    if cutoff is None:
        return {"complete": True, "since": None, "note": "every decision in the window"}
    return {
        "complete": False,
        "since": cutoff,
        "note": f"the {limit} most recent decisions in the window (ts >= {cutoff:.3f}); "
        "counts cover those only",
    }


def _timeseries(
    ts_rows: Sequence[Any], meta: dict[str, tuple[str, str, str]], origin: float, bucket_s: float
) -> dict[str, Any]:
    """Per bucket: each arm's impressions and outcomes, the cumulative lift of the bandit over
    control up to the bucket's end, and the traffic allocation (control share; the bandit arm's
    impressions by style)."""
    buckets: dict[int, dict[str, Sums]] = defaultdict(lambda: defaultdict(Sums))
    styles: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for bucket, policy, variant_id, *rest in ts_rows:
        part = Sums.of(rest, 0)
        buckets[int(bucket)][policy] += part
        if policy == "bandit":
            style = meta[variant_id][0] if variant_id in meta else "(unknown)"
            styles[int(bucket)][style] += part.n
    points = []
    cumulative: dict[str, Sums] = defaultdict(Sums)
    for k in range(min(buckets, default=0), max(buckets, default=-1) + 1):
        by_arm = buckets.get(k, {})
        for arm, part in by_arm.items():
            cumulative[arm] += part
        randomized = sum(by_arm.get(a, Sums()).n for a in RANDOMIZED)
        bandit_n = by_arm.get("bandit", Sums()).n
        start = origin + k * bucket_s
        points.append(
            {
                "start": start,
                "start_iso": datetime.fromtimestamp(start, UTC).isoformat(),
                "arms": {arm: by_arm.get(arm, Sums()).metrics() for arm in ARMS},
                "cumulative": {arm: cumulative[arm].metrics() for arm in RANDOMIZED},
                "cumulative_lift": _lift(cumulative),
                "control_share": (
                    by_arm.get("control", Sums()).n / randomized if randomized else None
                ),
                "bandit_by_style": {
                    style: n / bandit_n for style, n in sorted(styles.get(k, {}).items())
                },
            }
        )
    return {"bucket": "hour" if bucket_s == HOUR else "day", "bucket_s": bucket_s, "points": points}


def _ope(
    sessions: sessionmaker[Session],
    raw: Sequence[Any],
    randomized: int,
    limit: int,
    greedy: bool,
) -> dict[str, Any]:
    rows, kept = to_rows(raw)
    choices: list[int | None] | None = None
    if not greedy:
        note = "greedy policy not evaluated (disabled for this report)"
    elif not rows:
        note = "no randomized decisions to score"
    else:
        from reports.greedy import greedy_actions

        all_choices, note = greedy_actions(sessions, raw)
        choices = None if all_choices is None else [all_choices[i] for i in kept]
    panel = counterfactual_panel(rows, choices, note)
    sampled = randomized > len(raw)
    return {
        "sample": {
            "n": len(rows),
            "randomized_decisions": randomized,
            "limit": limit,
            "sampled": sampled,
            "note": (
                f"the {len(rows)} most recent of {randomized} randomized (bandit or control) "
                "decisions in the window"
                if sampled
                else f"all {len(rows)} randomized (bandit or control) decisions in the window"
            ),
        },
        **panel,
    }
