"""The pre-period behind the report's CUPED numbers, and their assembly from per-product sums.

Which pre-period (`choose`):

- With `since`: the `min(span, PRE_PERIOD_MAX_S)` seconds before it (span: the window's length,
  `until` or its last decision minus `since`). No decision of the window is in it, so the
  covariate is fixed before any analysed decision is served: CUPED as Deng et al. (2013) have it.
- Without `since` the window starts at the ledger's first decision and nothing precedes it, so
  the first `PRE_SHARE` of the window's span is the pre-period for the decisions after it. The
  decisions inside it stay in the analysis (the population is the plain uplift's, so the two
  are comparable) with the pre-period's overall rate as their covariate: a constant, which
  adjusts nothing. Arm assignment is independent of every covariate value, so the estimate stays
  unbiased (up to O(1/n): that constant includes each such decision's own outcome once).
  Watching this one sequentially moves the pre-period with the window; set `since` (the
  experiment's start) for a covariate fixed once.

No pre-period decisions → every `cuped` field is None and `note` says why (never NaN).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from reports.cuped import CovStats, Cuped, cuped, shrunk_rates
from reports.sums import METRICS, Sums

PRE_PERIOD_MAX_S = 28 * 86400.0
#: Share of the window's span used as the pre-period when the report has no `since`.
PRE_SHARE = 0.2
#: The analysis group of decisions that have no pre-period value (the first part itself).
NO_COVARIATE = None
COVARIATE = (
    "the product's rate of the same metric in the pre-period, shrunk toward the pre-period's "
    "overall rate (empirical Bayes); decisions inside the pre-period itself get that overall rate"
)


@dataclass(frozen=True, slots=True)
class PrePeriod:
    """`[start, end)` in epoch seconds; `source` is `before_since` or `first_part`."""

    start: float
    end: float
    source: str


def choose(
    since: float | None, until: float | None, lo: float | None, hi: float | None
) -> PrePeriod | None:
    """The pre-period of a window (`since`/`until` as asked, `lo`/`hi` its first and last
    decision ts); None when the window is empty.

    >>> choose(1000.0, 1600.0, 1000.0, 1500.0)
    PrePeriod(start=400.0, end=1000.0, source='before_since')
    >>> choose(None, None, 0.0, 1000.0)
    PrePeriod(start=0.0, end=200.0, source='first_part')
    """
    if since is not None:
        end = until if until is not None else hi
        span = (end - since) if end is not None else 0.0
        length = min(max(span, 60.0), PRE_PERIOD_MAX_S)
        return PrePeriod(since - length, since, "before_since")
    if lo is None or hi is None:
        return None
    return PrePeriod(lo, lo + PRE_SHARE * (hi - lo), "first_part")


def cuped_by_metric(
    analysis: Sequence[tuple[str | None, str, Sums]],
    pre: dict[str, Sums],
    ci: str,
    target_n: float,
) -> dict[str, dict[str, Any]]:
    """Per metric, the CUPED lift of bandit over control (`Cuped` as a dict).

    `analysis`: (group, policy, sums) of the analysed decisions, the group a product id, or
    `NO_COVARIATE` for decisions without a pre-period value; `pre`: the pre-period's sums per
    product."""
    if sum(s.n for s in pre.values()) == 0:
        gone = asdict(Cuped.unavailable("no decisions in the pre-period: no covariate"))
        return {m: dict(gone) for m in METRICS}
    out = {}
    for metric in METRICS:
        x, pooled = shrunk_rates({p: s.stats()[metric] for p, s in pre.items()})
        arms: dict[str, list[tuple[Any, float]]] = defaultdict(list)
        for group, policy, sums in analysis:
            value = pooled if group is NO_COVARIATE else x.get(group, pooled)
            arms[policy].append((sums.stats()[metric], value))
        t, c = CovStats.of_groups(arms["bandit"]), CovStats.of_groups(arms["control"])
        out[metric] = asdict(cuped(t, c, ci, target_n))
    return out


def scope(pp: PrePeriod | None, pre: dict[str, Sums]) -> dict[str, Any]:
    """What the CUPED numbers rest on, for the report's `cuped` section."""
    if pp is None:
        return {"covariate": COVARIATE, "pre_period": None, "note": "no decisions in range"}
    n = sum(s.n for s in pre.values())
    where = (
        "before the report's since"
        if pp.source == "before_since"
        else f"the first {PRE_SHARE:.0%} of the window (no since given)"
    )
    return {
        "covariate": COVARIATE,
        "pre_period": {
            "since": pp.start,
            "until": pp.end,
            "source": pp.source,
            "impressions": n,
            "products": sum(1 for s in pre.values() if s.n),
        },
        "note": f"pre-period: {n} decisions {where}",
    }
