"""The counterfactual panel: what other policies would have earned, from logged propensities.

Targets, each scored on the same sample of recent randomized decisions:

- `live`: the logging policy itself (bandit with its holdout); its weights are all 1, so every
  estimator returns the sample mean: the panel's self-check.
- `control`: always the original copy (action 0 of every logged action set).
- `uniform`: every variant of the product equally likely.
- `greedy`: a model snapshot's favourite variant for each logged context (VW scores the logged
  context, argmax of its pmf), with no exploration and no holdout, scored only on the sampled
  decisions that snapshot had not learned from (`greedy.greedy_actions` says which snapshot
  and how many). Scored on its own training decisions, it looked three times better than live
  in the demo.

Estimators (`estimators.ESTIMATORS`): IPS, SNIPS and DR. DR's reward model q̂(x, a) is a
cross-fitted ridge regression on context × variant features (`reward_model`): unbiased whatever
q̂ (the propensities are known exactly), and below SNIPS's error where the context matters
(`tests/reports/test_coverage.py`). A target is flagged when its support in the logs is thin.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from reports.estimators import ESTIMATORS, LoggedBandit
from reports.reward_model import DESCRIPTION, Design, context_tokens, cross_fitted_q

METRICS = {"ctr": 0, "cvr": 1, "revenue_per_impression": 2}
TARGETS = {
    "live": "live policy (the logging policy: bandit plus holdout)",
    "control": "always the original copy",
    "uniform": "uniform random over the product's variants",
    "greedy": "greedy current model (a snapshot, no exploration, on decisions it did not learn)",
}
REWARD_MODEL = DESCRIPTION


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
    logged probability, the outcome (clicked, purchased, revenue) and its context as
    `key=value` tokens (`reward_model.context_tokens`)."""

    actions: tuple[str, ...]
    pmf: tuple[float, ...]
    chosen: int
    probability: float
    outcome: tuple[float, float, float]
    context: tuple[str, ...] = ()


def to_rows(raw: Sequence[Any]) -> tuple[list[LoggedDecisionRow], list[int]]:
    """Sampled ledger rows (see `queries.recent_logged`) as value objects, and the indices of
    `raw` they came from: rows whose served variant is not in their action set or whose pmf
    does not match it are dropped.

    Page views repeat their action sets (one per product) and contexts (a few devices ×
    segments), so each distinct one is converted once (`Interned`): the sample is 10,000 rows
    and this loop was a fifth of the counterfactual panel's time (BENCHMARKS.md "Report")."""
    interned = Interned()
    out, kept = [], []
    get = columns(raw, _TO_ROWS)
    for i, r in enumerate(raw):
        variant_id, probability, raw_actions, raw_pmf, clicked, purchased, revenue, context = get(r)
        actions = interned.actions(raw_actions)
        pmf = tuple(map(float, raw_pmf or ()))
        if variant_id not in actions or len(pmf) != len(actions) or probability <= 0:
            continue
        out.append(
            LoggedDecisionRow(
                actions=actions,
                pmf=pmf,
                chosen=actions.index(variant_id),
                probability=float(probability),
                outcome=(float(clicked), float(purchased), float(revenue)),
                context=interned.context(context),
            )
        )
        kept.append(i)
    return out, kept


_TO_ROWS = (
    "variant_id",
    "probability",
    "actions",
    "pmf",
    "clicked",
    "purchased",
    "revenue",
    "context",
)


def columns(raw: Sequence[Any], names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A getter of the columns `names` (two or more) from each row of `raw`, rows of one query
    result: by position where the rows name their fields (`_fields`: SQLAlchemy rows, named
    tuples), by attribute otherwise. A SQLAlchemy row resolves an attribute by name on every
    access (0.3 µs; eight per row were 40 % of `to_rows` on 10,000 rows), an index directly.

    >>> from collections import namedtuple
    >>> Row = namedtuple("Row", "a b c")
    >>> columns([Row(1, 2, 3)], ("c", "a"))(Row(4, 5, 6))
    (6, 4)
    """
    fields = getattr(raw[0], "_fields", None) if raw else None
    if fields is not None and all(n in fields for n in names):
        return operator.itemgetter(*(fields.index(n) for n in names))
    return operator.attrgetter(*names)


class Interned:
    """Conversions of a sample's repeated values, each done once per distinct value: an action
    list to a tuple of str (`actions`), a context to `context_tokens` (`context`) or to its
    sorted `(key, str(value))` pairs (`context_items`, the greedy scorer's key).

    Values are keyed with their types, as equal values of other types render differently
    (`1`, `1.0` and `True`); floats, whose equal values may render differently too (`0.0`,
    `-0.0`), and values that cannot be keys (a list inside a context) are converted every
    time."""

    def __init__(self) -> None:
        self._actions: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self._tokens: dict[tuple[Any, ...], tuple[str, ...]] = {}
        self._items: dict[tuple[Any, ...], tuple[tuple[str, str], ...]] = {}

    def actions(self, actions: Sequence[Any] | None) -> tuple[str, ...]:
        values = tuple(actions or ())
        types = tuple(map(type, values))
        if not _KEYABLE.issuperset(types):
            return tuple(str(a) for a in values)
        key = (values, types)
        out = self._actions.get(key)
        if out is None:
            out = self._actions[key] = tuple(str(a) for a in values)
        return out

    def context(self, context: Any) -> tuple[str, ...]:
        if not isinstance(context, dict):
            return context_tokens(None)
        return _once(self._tokens, context, context_tokens)

    def context_items(self, context: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        return _once(self._items, context, _sorted_items)


_T = TypeVar("_T")


def _once(
    cache: dict[tuple[Any, ...], _T],
    context: Mapping[str, Any],
    convert: Callable[[Mapping[str, Any]], _T],
) -> _T:
    types = tuple(map(type, context.values()))
    if not _KEYABLE.issuperset(types):
        return convert(context)
    key = (tuple(context.items()), types)
    out = cache.get(key)
    if out is None:
        out = cache[key] = convert(context)
    return out


def _sorted_items(context: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in context.items()))


#: JSON value types `Interned` caches by (str, int, bool, null: equal values render alike).
_KEYABLE = frozenset({str, int, bool, type(None)})


@dataclass(frozen=True)
class Padded:
    """The sample as arrays padded to the largest action set K: `pmf` (n, K) logging pmf (0 in
    padding), `mask` (n, K) real actions, `chosen` (n,) served index, `logged_p` (n,),
    `rewards` (n, 3) and `q` (n, K, 3) the reward model at every action."""

    pmf: np.ndarray
    mask: np.ndarray
    chosen: np.ndarray
    logged_p: np.ndarray
    rewards: np.ndarray
    q: np.ndarray

    @classmethod
    def of(
        cls, rows: Sequence[LoggedDecisionRow], groups: Mapping[str, str] | None = None
    ) -> Padded:
        """The arrays of `rows`, with q̂ cross-fitted (`reward_model`); `groups` maps a
        variant id to its style (shared features across products)."""
        n, k = len(rows), max((len(r.actions) for r in rows), default=1)
        pmf, mask = np.zeros((n, k)), np.zeros((n, k), dtype=bool)
        for i, row in enumerate(rows):
            m = len(row.actions)
            pmf[i, :m] = row.pmf
            mask[i, :m] = True
        chosen = np.asarray([r.chosen for r in rows], dtype=np.int64)
        rewards = np.asarray([r.outcome for r in rows], dtype=np.float64).reshape(n, 3)
        design = Design([r.context for r in rows], [r.actions for r in rows], groups)
        return cls(
            pmf=pmf,
            mask=mask,
            chosen=chosen,
            logged_p=np.asarray([r.probability for r in rows], dtype=np.float64),
            rewards=rewards,
            q=cross_fitted_q(design, chosen, mask, rewards),
        )


def target_distributions(
    data: Padded, greedy: Sequence[int | None] | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per target: its distribution over each row's actions (n, K) and the rows where it is
    defined (n,) (the greedy target is undefined where the model could not score a row)."""
    n, k = data.pmf.shape
    everywhere = np.ones(n, dtype=bool)
    uniform = data.mask / data.mask.sum(axis=1, keepdims=True).clip(1)
    out = {
        "live": (data.pmf, everywhere),
        "control": (np.eye(k)[np.zeros(n, dtype=np.int64)], everywhere),
        "uniform": (uniform, everywhere),
    }
    if greedy is not None:
        defined = np.asarray([g is not None for g in greedy], dtype=bool)
        idx = np.asarray([0 if g is None else g for g in greedy], dtype=np.int64)
        out["greedy"] = (np.eye(k)[idx], defined)
    return out


def evaluate_target(
    data: Padded, pi: np.ndarray, defined: np.ndarray, rules: SupportRules
) -> dict[str, Any]:
    """IPS, SNIPS and DR of one target (`pi`, (n, K)) for each metric, on the rows where it
    is `defined`, with its support diagnostics."""
    rows = np.flatnonzero(defined)
    n = rows.size
    pi, chosen = pi[rows], data.chosen[rows]
    target_p = pi[np.arange(n), chosen]
    q = data.q[rows]
    q_logged = q[np.arange(n), chosen]  # (n, 3)
    q_target = np.einsum("nk,nkm->nm", pi, q)
    unsupported = (pi * (data.mask[rows] & (data.pmf[rows] < rules.min_logging_p))).sum(axis=1)
    estimates: dict[str, dict[str, Any]] = {}
    ess = 0.0
    for metric, m in METRICS.items():
        logged = LoggedBandit(
            data.rewards[rows, m], data.logged_p[rows], target_p, q_logged[:, m], q_target[:, m]
        )
        per = {name: est(logged) for name, est in ESTIMATORS.items()}
        ess = per["ips"].ess
        estimates[metric] = {name: e.as_dict() for name, e in per.items()}
    unsupported_mass = float(unsupported.mean()) if n else 0.0
    return {
        "n": int(n),
        "ess": ess,
        "ess_share": ess / n if n else 0.0,
        "unsupported_mass": unsupported_mass,
        "warning": support_warning(int(n), ess, unsupported_mass, rules),
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
    groups: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Every target's estimates on `rows` (a pure function of the sample and the greedy
    choices; the caller adds how the sample was drawn). `greedy[i]` is None where the greedy
    target is not scored (a decision its model learned from, or one it cannot score)."""
    rules = rules or SupportRules()
    data = Padded.of(rows, groups)
    dists = target_distributions(data, greedy)
    policies: dict[str, Any] = {}
    for name, label in TARGETS.items():
        if name not in dists:
            policies[name] = {"label": label, "available": False, "note": greedy_note}
            continue
        result = evaluate_target(data, *dists[name], rules)
        policies[name] = {"label": label, "available": True, **result}
        if name == "greedy":
            policies[name]["note"] = greedy_note
    return {
        "estimators": sorted(ESTIMATORS),
        "reward_model": REWARD_MODEL,
        "support_rules": asdict(rules),
        "policies": policies,
    }
