"""The report's breakdowns: per product, per variant, per generator version and per context
value, from the cube (`queries.ReportReader.cube`) and the context rows.

Per-variant and per-generator-version rates inside the bandit are biased by its adaptive
allocation; the `snips` rates beside them weight each served decision by 1 / its logged
probability (`estimators.ratio_snips`), with score intervals that hold on sparse metrics and a
`low_ess` flag where the Kish effective sample size is below `LOW_ESS`: too few effective page
views to read a rate from, whatever the interval says.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from reports.estimators import Estimate, ratio_snips
from reports.sums import Sums

ARMS = ("bandit", "control", "fallback")
RANDOMIZED = ("bandit", "control")
#: Distinct values kept per context key (by impressions); the rest are summed as `(other)`.
MAX_CONTEXT_VALUES = 25
#: Kish effective sample size below which a propensity-weighted rate is flagged `low_ess`.
LOW_ESS = 100.0

Lift = Callable[[dict[str, Sums]], dict[str, Any]]


def revenue_kappa(cube_rows: Sequence[Any]) -> float | None:
    """κ = Σ revenue² / Σ revenue over every decision of the window: E[v²] / E[v] of a
    purchasing decision's revenue v, the revenue rate's variance per unit being κ·μ − μ². Pooled
    over the report (a variant with two purchases cannot estimate its own), on the assumption
    that copy moves conversion more than basket size. None without any revenue."""
    total = sum(float(r[6] or 0.0) for r in cube_rows)
    total_sq = sum(float(r[7] or 0.0) for r in cube_rows)
    return total_sq / total if total > 0 else None


def snips_rates(w: Sequence[float], n: int, kappa: float | None) -> dict[str, Any]:
    """SNIPS rates from the cube's weight sums (Σw, Σw·r per metric, Σw²) with their score
    intervals; each carries `low_ess`."""
    sw, swc, swp, swr, sw2 = w

    def one(sum_wr: float, kap: float | None) -> dict[str, Any]:
        e = ratio_snips(sw, sum_wr, sw2, n, kap or 1.0)
        if kap is None:  # no revenue anywhere: no scale for the interval
            e = Estimate(e.value, None, None, e.n, e.ess)
        return {**e.as_dict(), "low_ess": e.ess < LOW_ESS}

    return {
        "ctr": one(swc, 1.0),
        "cvr": one(swp, 1.0),
        "revenue_per_impression": one(swr, kappa),
    }


#: The cube's weight sums per row (`queries.ReportReader.cube`, columns 8-12).
N_WEIGHTS = 5


def _weights(r: Sequence[Any]) -> list[float]:
    return [float(x or 0.0) for x in r[8 : 8 + N_WEIGHTS]]


def products(cube_rows: Sequence[Any], lift: Lift) -> list[dict[str, Any]]:
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
                "uplift": lift(by_arm),
            }
        )
    return sorted(rows, key=lambda x: (-x["impressions"], x["product_id"]))


def variants(
    cube_rows: Sequence[Any], meta: dict[str, tuple[str, str, str]]
) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str], Sums] = defaultdict(Sums)
    by_policy: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    weights: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * N_WEIGHTS)
    product_n: dict[str, int] = defaultdict(int)
    product_bandit_n: dict[str, int] = defaultdict(int)
    kappa = revenue_kappa(cube_rows)
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
        snips = snips_rates(weights[(product_id, variant_id)], randomized_n, kappa)
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
                "snips": snips,
                "ess": snips["ctr"]["ess"],
                "low_ess": snips["ctr"]["low_ess"],
            }
        )
    return rows


def generator_versions(
    cube_rows: Sequence[Any], meta: dict[str, tuple[str, str, str]]
) -> list[dict[str, Any]]:
    sums: dict[str, Sums] = defaultdict(Sums)
    weights: dict[str, list[float]] = defaultdict(lambda: [0.0] * N_WEIGHTS)
    randomized_n: dict[str, int] = defaultdict(int)
    variant_ids: dict[str, set[str]] = defaultdict(set)
    kappa = revenue_kappa(cube_rows)
    total_n = 0
    for r in cube_rows:
        m = meta.get(r[1])
        version = "(unknown variant)" if m is None else (m[2] or "(none)")
        part = Sums.of(r, 3)
        sums[version] += part
        variant_ids[version].add(r[1])
        total_n += part.n
        if r[2] in RANDOMIZED:
            randomized_n[version] += part.n
            weights[version] = [a + b for a, b in zip(weights[version], _weights(r), strict=True)]
    rows = []
    for version, total in sorted(sums.items(), key=lambda kv: (-kv[1].n, kv[0])):
        snips = snips_rates(weights[version], randomized_n[version], kappa)
        rows.append(
            {
                "generator_version": version,
                "variants": len(variant_ids[version]),
                **total.metrics(),
                "rates_biased": True,
                "traffic_share": total.n / total_n if total_n else 0.0,
                "snips": snips,
                "ess": snips["ctr"]["ess"],
                "low_ess": snips["ctr"]["low_ess"],
            }
        )
    return rows


def contexts(ctx_rows: Sequence[Any], lift: Lift) -> dict[str, list[dict[str, Any]]]:
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
                for arm, s in by_arm.items():
                    other[arm] += s
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
                    "uplift": lift(by_arm),
                }
            )
        out[key] = rows
    return out


def context_scope(cutoff: float | None, limit: int) -> dict[str, Any]:
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
