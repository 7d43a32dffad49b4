"""The apprentice block: what switching from apprentice mode to `live` would earn.

In apprentice mode the logging policy is μ(a|x) = (1 − e)·[a = control] + e·b(a|x), b the
bandit's exploration distribution and e the exploring share (`core.ledger.modes`); the logged
pmf is μ, so b = (μ − (1 − e)·[control]) / e is recovered exactly from each decision's own pmf.
Live mode would serve π(a|x) = h·[a = control] + (1 − h)·b(a|x), h the live holdout. Its value
is an off-policy estimate on the apprentice decisions: doubly robust (DR, the panel's cross-
fitted reward model, `ope.Padded`), beside IPS and SNIPS. Its weight π/μ is at most
(1 − h)/e on the variants only the exploring share serves (18 at the defaults), so the estimate
rests mostly on that share: `exploring` says how many decisions it holds, `ess` how much the
weights leave.

The uplift of switching is the mean per-decision difference of DR terms, live minus what
apprentice mode earned (the decision's own outcome), with a 95% normal interval and the
matching two-sided p-value; its relative form divides by apprentice mode's mean.

Which decisions count: those of the report's OPE sample whose `ts` falls in a period the ledger
records as apprentice mode (`serving_modes`; with no record, the settings' mode) and whose pmf
gives the control at least 1 − e, so a decision an API process logged during the second it
took to follow a switch is left out rather than mis-read.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.ledger.modes import Mode
from reports.estimators import ESTIMATORS, LoggedBandit
from reports.intervals import Z95
from reports.ope import METRICS, Padded, SupportRules, columns, support_warning, to_rows

#: Slack on "the control got at least 1 − e" (the pmf is stored as floats).
_TOL = 1e-9


def explore_share(ts: float, history: Sequence[Mode], default: Mode) -> float | None:
    """The exploring share in force at `ts`, or None when it was live mode.

    >>> h = [Mode("apprentice", 0.05, 10.0), Mode("live", 0.05, 20.0)]
    >>> [explore_share(t, h, Mode("live", 0.1)) for t in (5.0, 15.0, 25.0)]
    [None, 0.05, None]
    """
    starts = [m.since or 0.0 for m in history]
    i = bisect.bisect_right(starts, ts) - 1
    mode = history[i] if i >= 0 else default
    return mode.explore if mode.name == "apprentice" else None


def live_target(
    pmf: np.ndarray, mask: np.ndarray, explore: np.ndarray, holdout: float
) -> np.ndarray:
    """π = h·[control] + (1 − h)·b with b = (μ − (1 − e)·[control]) / e, per row (n, K); the
    control is action 0. Rounding below 0 is clipped and b renormalised.

    >>> mu, mask = np.array([[0.95 + 0.05 * 0.2, 0.05 * 0.8]]), np.ones((1, 2), bool)
    >>> [round(float(x), 6) for x in live_target(mu, mask, np.array([0.05]), 0.1)[0]]
    [0.28, 0.72]
    """
    control = np.zeros_like(pmf)
    control[:, 0] = 1.0
    e = explore[:, None]
    b = np.clip((pmf - (1.0 - e) * control) / e, 0.0, None) * mask
    b = b / b.sum(axis=1, keepdims=True).clip(1e-300)
    out: np.ndarray = holdout * control + (1.0 - holdout) * b
    return out


def apprentice_block(
    raw: Sequence[Any],
    history: Sequence[Mode],
    default: Mode,
    holdout: float,
    groups: Mapping[str, str] | None = None,
    rules: SupportRules | None = None,
) -> dict[str, Any]:
    """The report's `apprentice` section from the OPE sample `raw` (`queries.recent_logged`)."""
    rules = rules or SupportRules()
    current = history[-1] if history else default
    head: dict[str, Any] = {
        "mode": current.name,
        "explore": current.explore if current.name == "apprentice" else None,
        "live_holdout": holdout,
        "estimator": "dr",
    }
    picked, shares = [], []
    get = columns(raw, ("ts", "pmf"))
    for r in raw:
        ts, pmf = get(r)
        e = explore_share(float(ts), history, default)
        pmf = pmf or ()
        if e is None or not pmf or float(pmf[0]) < 1.0 - e - _TOL:
            continue
        picked.append(r)
        shares.append(e)
    rows, kept = to_rows(picked)
    if not rows:
        return {
            **head,
            "available": False,
            "decisions": 0,
            "exploring": 0,
            "note": "no apprentice-mode decisions in the report's sample",
        }
    explore = np.asarray([shares[i] for i in kept])
    exploring = sum(1 for i in kept if picked[i].policy == "bandit")
    data = Padded.of(rows, groups)
    n = len(rows)
    pi = live_target(data.pmf, data.mask, explore, holdout)
    at = np.arange(n)
    w = pi[at, data.chosen] / data.logged_p
    metrics: dict[str, Any] = {}
    ess = 0.0
    for metric, m in METRICS.items():
        r = data.rewards[:, m]
        q_logged = data.q[at, data.chosen, m]
        q_target = np.einsum("nk,nk->n", pi, data.q[:, :, m])
        logged = LoggedBandit(r, data.logged_p, pi[at, data.chosen], q_logged, q_target)
        per = {name: est(logged) for name, est in ESTIMATORS.items()}
        ess = per["ips"].ess
        terms = q_target + w * (r - q_logged)  # DR's per-decision terms
        metrics[metric] = {
            "apprentice": float(r.mean()),
            "live": {name: e.as_dict() for name, e in per.items()},
            "uplift": _difference(terms - r, float(r.mean())),
        }
    unsupported = float((pi * (data.mask & (data.pmf < rules.min_logging_p))).sum(axis=1).mean())
    return {
        **head,
        "available": True,
        "decisions": n,
        "exploring": exploring,
        "ess": ess,
        "warning": support_warning(n, ess, unsupported, rules),
        "metrics": metrics,
        "note": f"Live mode estimated on {n} apprentice-mode decisions of the report's sample "
        f"({exploring} of them in the exploring share, served by the bandit); uplift = live − "
        "apprentice per decision (DR terms); its relative interval divides by apprentice mode's "
        "mean, whose own noise it ignores",
    }


def _difference(d: np.ndarray, base: float) -> dict[str, Any]:
    """Mean of per-decision differences `d` with a 95% normal interval and p-value; relative to
    `base` (None when it is 0)."""
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return {
            "absolute": mean,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "relative": None,
            "n": n,
        }
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        p = None if mean == 0.0 else 0.0
    else:
        p = math.erfc(abs(mean / se) / math.sqrt(2.0))
    return {
        "absolute": mean,
        "ci_low": mean - Z95 * se,
        "ci_high": mean + Z95 * se,
        "p_value": p,
        "relative": mean / base if base else None,
        "relative_ci_low": (mean - Z95 * se) / base if base else None,
        "relative_ci_high": (mean + Z95 * se) / base if base else None,
        "n": n,
    }
