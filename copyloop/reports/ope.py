"""The counterfactual panel: what other policies would have earned, from logged propensities.

Targets, each scored on the same sample of recent randomized decisions:

- `live`: the logging policy itself (bandit with its holdout); its weights are all 1, so every
  estimator returns the sample mean: the panel's self-check.
- `control`: always the original copy (action 0 of every logged action set).
- `uniform`: every variant of the product equally likely.
- `greedy`: the newest model snapshot's favourite variant for each logged context (VW scores
  the logged context, argmax of its pmf), with no exploration and no holdout.

Estimators (`estimators.ESTIMATORS`): IPS, SNIPS and DR. DR's reward model q̂(x, a) is the
served variant's mean reward in the same sample, shrunk toward the sample's overall mean by
`PRIOR_WEIGHT` pseudo-observations; it ignores the context, which costs DR variance, never bias
(the propensities are known exactly). A target is flagged when its support in the logs is thin.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from copyloop.reports.estimators import ESTIMATORS, LoggedBandit

METRICS = {"ctr": 0, "cvr": 1, "revenue_per_impression": 2}
TARGETS = {
    "live": "live policy (the logging policy: bandit plus holdout)",
    "control": "always the original copy",
    "uniform": "uniform random over the product's variants",
    "greedy": "greedy current model (newest snapshot, no exploration)",
}
PRIOR_WEIGHT = 10.0
REWARD_MODEL = (
    "per-variant mean of the metric over the sample, shrunk toward the overall mean with "
    f"{PRIOR_WEIGHT:g} pseudo-observations (context-free)"
)


@dataclass(frozen=True, slots=True)
class SupportRules:
    """When a target's estimate is flagged: Kish ESS below `min_ess` or below `min_ess_share`
    of the sample, or more than `max_unsupported_mass` of its probability on actions that the
    logging policy played with probability below `min_logging_p`."""

    min_ess: float = 100.0
    min_ess_share: float = 0.01
    min_logging_p: float = 0.01
    max_unsupported_mass: float = 0.05


@dataclass(frozen=True, slots=True)
class LoggedDecisionRow:
    """One sampled decision: the action set, the logging pmf over it, the served index, its
    logged probability, and the outcome (clicked, purchased, revenue)."""

    actions: tuple[str, ...]
    pmf: tuple[float, ...]
    chosen: int
    probability: float
    outcome: tuple[float, float, float]


def to_rows(raw: Sequence[Any]) -> tuple[list[LoggedDecisionRow], list[int]]:
    """Sampled ledger rows (see `queries.recent_logged`) as value objects, and the indices of
    `raw` they came from: rows whose served variant is not in their action set or whose pmf
    does not match it are dropped."""
    out, kept = [], []
    for i, r in enumerate(raw):
        actions = tuple(str(a) for a in (r.actions or ()))
        pmf = tuple(float(p) for p in (r.pmf or ()))
        if r.variant_id not in actions or len(pmf) != len(actions) or r.probability <= 0:
            continue
        out.append(
            LoggedDecisionRow(
                actions=actions,
                pmf=pmf,
                chosen=actions.index(r.variant_id),
                probability=float(r.probability),
                outcome=(float(r.clicked), float(r.purchased), float(r.revenue)),
            )
        )
        kept.append(i)
    return out, kept


def target_distributions(
    rows: Sequence[LoggedDecisionRow], greedy: Sequence[int | None] | None
) -> dict[str, list[np.ndarray | None]]:
    """Per target, per row, the target's distribution over that row's actions (None: the
    target is undefined there, e.g. the model could not score the row)."""
    out: dict[str, list[np.ndarray | None]] = {name: [] for name in TARGETS}
    for i, row in enumerate(rows):
        k = len(row.actions)
        out["live"].append(np.asarray(row.pmf))
        out["control"].append(np.eye(k)[0])
        out["uniform"].append(np.full(k, 1.0 / k))
        g = None if greedy is None else greedy[i]
        out["greedy"].append(None if g is None else np.eye(k)[g])
    return out


def reward_model(rows: Sequence[LoggedDecisionRow]) -> Callable[[str], np.ndarray]:
    """q̂(a) for each metric: the variant's shrunk mean outcome in the sample (see module)."""
    totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        totals[row.actions[row.chosen]] += row.outcome
        counts[row.actions[row.chosen]] += 1
    overall = (
        np.sum([row.outcome for row in rows], axis=0) / len(rows) if rows else np.zeros(3)
    )

    def q(variant_id: str) -> np.ndarray:
        n = counts.get(variant_id, 0)
        return (totals.get(variant_id, np.zeros(3)) + PRIOR_WEIGHT * overall) / (n + PRIOR_WEIGHT)

    return q


def evaluate_target(
    rows: Sequence[LoggedDecisionRow],
    dists: Sequence[np.ndarray | None],
    q: Callable[[str], np.ndarray],
    rules: SupportRules,
) -> dict[str, Any]:
    """IPS, SNIPS and DR of one target for each metric, with its support diagnostics."""
    keep = [i for i, d in enumerate(dists) if d is not None]
    n = len(keep)
    rewards = np.zeros((n, 3))
    logged_p = np.zeros(n)
    target_p = np.zeros(n)
    q_logged = np.zeros((n, 3))
    q_target = np.zeros((n, 3))
    unsupported = np.zeros(n)
    for j, i in enumerate(keep):
        row, pi = rows[i], dists[i]
        assert pi is not None
        qs = np.stack([q(a) for a in row.actions])
        rewards[j] = row.outcome
        logged_p[j] = row.probability
        target_p[j] = pi[row.chosen]
        q_logged[j] = qs[row.chosen]
        q_target[j] = pi @ qs
        unsupported[j] = float(pi[np.asarray(row.pmf) < rules.min_logging_p].sum())
    estimates: dict[str, dict[str, Any]] = {}
    ess = 0.0
    for metric, m in METRICS.items():
        data = LoggedBandit(rewards[:, m], logged_p, target_p, q_logged[:, m], q_target[:, m])
        per = {name: est(data) for name, est in ESTIMATORS.items()}
        ess = per["ips"].ess
        estimates[metric] = {name: asdict(e) for name, e in per.items()}
    unsupported_mass = float(unsupported.mean()) if n else 0.0
    return {
        "n": n,
        "ess": ess,
        "ess_share": ess / n if n else 0.0,
        "unsupported_mass": unsupported_mass,
        "warning": support_warning(n, ess, unsupported_mass, rules),
        "estimates": estimates,
    }


def support_warning(n: int, ess: float, unsupported_mass: float, rules: SupportRules) -> str | None:
    """Why a target's estimates should not be trusted, or None.

    >>> support_warning(1000, 5.0, 0.0, SupportRules())
    'thin support: effective sample size 5 of 1000 decisions (below 100); intervals are unreliable'
    """
    if n == 0:
        return "no logged decisions to evaluate this policy on"
    reasons = []
    if ess < rules.min_ess or ess < rules.min_ess_share * n:
        floor = max(rules.min_ess, rules.min_ess_share * n)
        reasons.append(f"effective sample size {ess:.0f} of {n} decisions (below {floor:.0f})")
    if unsupported_mass > rules.max_unsupported_mass:
        reasons.append(
            f"{unsupported_mass:.0%} of its choices go to variants the logging policy played "
            f"with probability below {rules.min_logging_p:g}"
        )
    if not reasons:
        return None
    return "thin support: " + "; ".join(reasons) + "; intervals are unreliable"


def counterfactual_panel(
    rows: Sequence[LoggedDecisionRow],
    greedy: Sequence[int | None] | None,
    greedy_note: str,
    rules: SupportRules | None = None,
) -> dict[str, Any]:
    """Every target's estimates on `rows` (a pure function of the sample and the greedy
    choices; the caller adds how the sample was drawn)."""
    rules = rules or SupportRules()
    q = reward_model(rows)
    dists = target_distributions(rows, greedy)
    policies: dict[str, Any] = {}
    for name, label in TARGETS.items():
        if name == "greedy" and greedy is None:
            policies[name] = {"label": label, "available": False, "note": greedy_note}
            continue
        policies[name] = {"label": label, "available": True, **evaluate_target(rows, dists[name], q, rules)}
        if name == "greedy":
            policies[name]["note"] = greedy_note
    return {
        "estimators": sorted(ESTIMATORS),
        "reward_model": REWARD_MODEL,
        "support_rules": asdict(rules),
        "policies": policies,
    }
