"""Winners and losers among a product's variants, judged from logged propensities, not raw CTRs.

Inside a bandit the raw click-through rate of a variant says as much about *where* it was shown
as about how good it is: the policy serves a variant more to the shoppers it expects to click,
so a variant that happened to be sent to the easy contexts looks like a winner. Each decision
logs the probability of every action under the logging policy (`Decision.pmf`), so the value of
the counterfactual policy "always serve variant v" is estimated without that bias by
self-normalised inverse propensity scoring (SNIPS, :func:`reports.estimators.snips`):

    V(v) = Σ_i w_i r_i / Σ_i w_i,   w_i = [a_i = v] / μ(a_i | x_i)

over the product's closed decisions in which both `v` and the control had a positive
probability (their common support; a `fallback` decision serves the control with probability 1
and says nothing about `v`). The control is estimated on the same decisions, so time trends
and context mix cancel between the two.

**The rule.** A variant *wins* when the lower end of its 95% interval is above the upper end of
the control's (`ci_low > control_ci_high`), with at least `min_exposure` decisions serving each.
Comparing with the control's point estimate would treat the control as known, but it is an
IPS estimate from a small holdout share and as noisy as the variant's; non-overlapping intervals
are conservative (a false-winner rate well under the nominal 2.5%), which is the right side to
err on: a false winner is baked into the generator by fine-tuning, a missed one only waits for
more data. A variant *loses clearly* (the scheduler retires it) in the mirror case,
`ci_high < control_ci_low`. `confidence` is P(variant beats control) under the normal
approximation of the paired difference, whose variance comes from the per-decision influence
terms of both SNIPS estimates (negatively correlated: a decision serves one or the other).

**After a restart** (`copyloop model restart`: tastes changed) only the decisions served since
the newest restart are compared: the jobs build their parameters with :func:`current_params`,
so the fine-tune rounds and the retirement of losers judge copy by the tastes of now.

Usage::

    comparisons = compare_variants(sessions, WinnerParams(min_exposure=200))
    best = winners(comparisons)
    pairs = preference_pairs(comparisons)
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CONTROL_SOURCE
from core.ledger.model_versions import restarted_at
from core.ledger.sessions import reading
from core.ledger.tables import Decision, Reward, Variant
from reports.estimators import Z95, Estimate, snips


@dataclass(frozen=True, slots=True)
class WinnerParams:
    """`min_exposure`: decisions that must have served a variant (and the control) before it
    can win or lose; `since`: only decisions at or after this epoch second; `products`: only
    these products (None: all)."""

    min_exposure: int = 100
    since: float | None = None
    products: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.min_exposure < 1:
            raise ValueError(f"min_exposure must be >= 1, got {self.min_exposure}")


def current_params(sessions: sessionmaker[Session], min_exposure: int) -> WinnerParams:
    """The parameters the jobs judge by: every product, decisions since the model's newest
    restart (all of them when it was never restarted)."""
    with reading(sessions) as s:  # not the write lock: the consumer writes on
        since = restarted_at(s)
    return WinnerParams(min_exposure=min_exposure, since=since)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One non-control variant against its product's control on their common support.

    `exposure`/`control_exposure`: decisions that served each; `estimate`/`control`: SNIPS
    values of "always this variant" / "always the control" with 95% intervals; `gain` the
    difference and `gain_se` its standard error (paired); `confidence` = Φ(gain / gain_se).
    """

    product_id: str
    variant_id: str
    style: str
    text: str
    status: str
    exposure: int
    control_variant_id: str
    control_text: str
    control_exposure: int
    estimate: Estimate
    control: Estimate
    gain: float
    gain_se: float
    confidence: float
    min_exposure: int

    @property
    def exposed(self) -> bool:
        return min(self.exposure, self.control_exposure) >= self.min_exposure

    @property
    def wins(self) -> bool:
        """Exposed, and its interval lies wholly above the control's."""
        return (
            self.exposed
            and _finite(self.estimate.ci_low, self.control.ci_high)
            and self.estimate.ci_low > self.control.ci_high  # type: ignore[operator]
        )

    @property
    def loses(self) -> bool:
        """Exposed, and its interval lies wholly below the control's."""
        return (
            self.exposed
            and _finite(self.estimate.ci_high, self.control.ci_low)
            and self.estimate.ci_high < self.control.ci_low  # type: ignore[operator]
        )


@dataclass(frozen=True, slots=True)
class Winner:
    """A variant whose reward's lower confidence bound beats the control's upper bound."""

    product_id: str
    variant_id: str
    style: str
    text: str
    estimate: float
    ci_low: float
    control_estimate: float
    gain: float
    confidence: float


@dataclass(frozen=True, slots=True)
class Pair:
    """A preference of the same product: `chosen_text` (a winner) over `rejected_text` (a
    variant, or the control, it beat), prompted in the winner's style. `weight` = reward gain ×
    confidence that the chosen one is better."""

    product_id: str
    prompt_style: str
    chosen_text: str
    rejected_text: str
    weight: float


@dataclass(frozen=True, slots=True)
class _Row:
    variant_id: str
    reward: float
    probability: float
    support: dict[str, float]  # variant id → logged probability (> 0 only)


def compare_variants(
    sessions: sessionmaker[Session], params: WinnerParams | None = None
) -> list[Comparison]:
    """Every non-control, non-rejected variant that has been in a closed decision, compared with
    its product's active control; ordered by product, then gain (best first)."""
    params = params or WinnerParams()
    with reading(sessions) as session:  # every closed decision: the consumer writes on
        variants = _variants(session, params.products)
        rows = _closed_decisions(session, params)
    out: list[Comparison] = []
    for product_id, product_rows in sorted(rows.items()):
        product_variants = variants.get(product_id, {})
        control = next((v for v in product_variants.values() if v.source == CONTROL_SOURCE), None)
        if control is None:
            continue
        seen = {vid for r in product_rows for vid in r.support}
        found = [
            _compare(product_rows, variant, control, params.min_exposure)
            for vid, variant in sorted(product_variants.items())
            if vid in seen and variant.source != CONTROL_SOURCE and variant.status != "rejected"
        ]
        out.extend(sorted((c for c in found if c is not None), key=lambda c: -c.gain))
    return out


def winners(comparisons: Iterable[Comparison]) -> list[Winner]:
    """The comparisons that win, as :class:`Winner` values (product order, best first)."""
    return [
        Winner(
            product_id=c.product_id,
            variant_id=c.variant_id,
            style=c.style,
            text=c.text,
            estimate=float(c.estimate.value or 0.0),
            ci_low=float(c.estimate.ci_low or 0.0),
            control_estimate=float(c.control.value or 0.0),
            gain=c.gain,
            confidence=c.confidence,
        )
        for c in comparisons
        if c.wins and c.status == "active"
    ]


def select_winners(
    sessions: sessionmaker[Session], params: WinnerParams | None = None
) -> list[Winner]:
    """Shorthand for ``winners(compare_variants(sessions, params))``."""
    return winners(compare_variants(sessions, params))


def preference_pairs(comparisons: Sequence[Comparison]) -> list[Pair]:
    """(winner, loser) pairs of each product: every exposed variant with a lower estimate than
    a winner, and the control the winner beat. `weight` = (winner value − loser value) × P(the
    winner is better), the latter from the two estimates' standard errors (independent
    approximation between two variants; the paired one against the control)."""
    by_product: dict[str, list[Comparison]] = defaultdict(list)
    for c in comparisons:
        by_product[c.product_id].append(c)
    pairs: list[Pair] = []
    for product_id, group in sorted(by_product.items()):
        for win in (c for c in group if c.wins and c.status == "active"):
            pairs.append(
                Pair(product_id, win.style, win.text, win.control_text, win.gain * win.confidence)
            )
            for other in group:
                if other is win or not other.exposed or other.text == win.text:
                    continue
                gain = _value(win.estimate) - _value(other.estimate)
                if gain <= 0:
                    continue
                se = math.hypot(_se(win.estimate), _se(other.estimate))
                confidence = _confidence(gain, se)
                pairs.append(Pair(product_id, win.style, win.text, other.text, gain * confidence))
    return pairs


@dataclass(frozen=True, slots=True)
class RetireReport:
    """`retired`: variant ids retired, by product; `kept`: clear losers kept because their
    product would otherwise fall below `keep_active` active variants."""

    retired: dict[str, list[str]]
    kept: int

    @property
    def products(self) -> list[str]:
        return sorted(self.retired)


def retire_losers(
    sessions: sessionmaker[Session],
    params: WinnerParams | None = None,
    keep_active: int = 2,
    now: float | None = None,
) -> RetireReport:
    """Retire the active variants that lose clearly to their control (interval wholly below the
    control's, with minimum exposure), worst first, never the control, and never below
    `keep_active` active variants per product (control included). The reason, with the
    numbers, goes to `reject_reason`; `retired_at` is set. A variant retired by a concurrent run
    is skipped (the update is conditional on `status = 'active'`)."""
    if keep_active < 2:
        raise ValueError(f"keep_active must be >= 2, got {keep_active}")
    now = time.time() if now is None else now
    losers: dict[str, list[Comparison]] = defaultdict(list)
    for c in compare_variants(sessions, params):
        if c.loses and c.status == "active":
            losers[c.product_id].append(c)
    retired: dict[str, list[str]] = {}
    kept = 0
    for product_id, group in sorted(losers.items()):
        with sessions.begin() as s:
            active = s.scalar(
                select(func.count())
                .select_from(Variant)
                .where(Variant.product_id == product_id, Variant.status == "active")
            )
            room = max(int(active or 0) - keep_active, 0)
            for c in sorted(group, key=lambda c: c.gain)[:room]:
                done = s.execute(
                    update(Variant)
                    .where(Variant.variant_id == c.variant_id, Variant.status == "active")
                    .values(status="retired", retired_at=now, reject_reason=_retire_reason(c))
                )
                if done.rowcount:  # type: ignore[attr-defined]
                    retired.setdefault(product_id, []).append(c.variant_id)
            kept += len(group) - len(retired.get(product_id, []))
    return RetireReport(retired, kept)


def _retire_reason(c: Comparison) -> str:
    e, k = c.estimate, c.control
    return (
        f"losing_to_control: reward {_value(e):.4f} [{e.ci_low:.4f}, {e.ci_high:.4f}] below "
        f"control {_value(k):.4f} [{k.ci_low:.4f}, {k.ci_high:.4f}] "
        f"(SNIPS over {e.n} decisions, served {c.exposure}, control {c.control_exposure})"
    )


# -- internals --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _VariantInfo:
    product_id: str
    variant_id: str
    style: str
    text: str
    source: str
    status: str


def _variants(
    session: Session, products: tuple[str, ...] | None
) -> dict[str, dict[str, _VariantInfo]]:
    query = select(Variant)
    if products is not None:
        query = query.where(Variant.product_id.in_(list(products)))
    out: dict[str, dict[str, _VariantInfo]] = defaultdict(dict)
    for v in session.scalars(query):
        if v.source == CONTROL_SOURCE and v.status != "active":
            continue  # a replaced control: its decisions still count, not as "the control"
        out[v.product_id][v.variant_id] = _VariantInfo(
            v.product_id, v.variant_id, v.style, v.text, v.source, v.status
        )
    return out


def _closed_decisions(session: Session, params: WinnerParams) -> dict[str, list[_Row]]:
    query = select(
        Decision.product_id, Decision.variant_id, Decision.actions, Decision.pmf, Reward.reward
    ).join(Reward, Reward.decision_id == Decision.decision_id)
    if params.since is not None:
        query = query.where(Decision.ts >= params.since)
    if params.products is not None:
        query = query.where(Decision.product_id.in_(list(params.products)))
    out: dict[str, list[_Row]] = defaultdict(list)
    for product_id, chosen, actions, pmf, reward in session.execute(query):
        support = {str(a): float(p) for a, p in zip(actions, pmf, strict=True) if float(p) > 0}
        if chosen not in support:
            continue  # a malformed row: the served variant had no probability
        out[product_id].append(_Row(chosen, float(reward), support[chosen], support))
    return out


def _compare(
    rows: Sequence[_Row], variant: _VariantInfo, control: _VariantInfo, min_exposure: int
) -> Comparison | None:
    vid, cid = variant.variant_id, control.variant_id
    common = [r for r in rows if vid in r.support and cid in r.support]
    if not common:
        return None
    reward = np.array([r.reward for r in common])
    logged = np.array([r.probability for r in common])
    is_v = np.array([r.variant_id == vid for r in common], dtype=np.float64)
    is_c = np.array([r.variant_id == cid for r in common], dtype=np.float64)
    est_v, est_c = snips(reward, logged, is_v), snips(reward, logged, is_c)
    gain = _value(est_v) - _value(est_c)
    gain_se = _paired_se(reward, logged, is_v, is_c, est_v, est_c)
    return Comparison(
        product_id=variant.product_id,
        variant_id=vid,
        style=variant.style,
        text=variant.text,
        status=variant.status,
        exposure=int(is_v.sum()),
        control_variant_id=cid,
        control_text=control.text,
        control_exposure=int(is_c.sum()),
        estimate=est_v,
        control=est_c,
        gain=gain,
        gain_se=gain_se,
        confidence=_confidence(gain, gain_se),
        min_exposure=min_exposure,
    )


def _paired_se(
    reward: np.ndarray,
    logged: np.ndarray,
    is_v: np.ndarray,
    is_c: np.ndarray,
    est_v: Estimate,
    est_c: Estimate,
) -> float:
    """Standard error of V(v) − V(c) from the SNIPS influence terms w(r − V) / mean(w)."""
    n = reward.size
    w_v, w_c = is_v / logged, is_c / logged
    if n < 2 or w_v.sum() <= 0 or w_c.sum() <= 0:
        return math.nan
    psi = w_v * (reward - _value(est_v)) / w_v.mean() - w_c * (reward - _value(est_c)) / w_c.mean()
    return float(np.sqrt(np.mean(psi**2) / n))


def _value(e: Estimate) -> float:
    return float(e.value) if e.value is not None else 0.0


def _se(e: Estimate) -> float:
    if e.value is None or e.ci_high is None or not math.isfinite(e.ci_high):
        return math.inf
    return (e.ci_high - e.value) / Z95


def _confidence(gain: float, se: float) -> float:
    if not math.isfinite(se):
        return 0.5
    if se <= 0:
        return 1.0 if gain > 0 else (0.0 if gain < 0 else 0.5)
    return 0.5 * (1.0 + math.erf(gain / se / math.sqrt(2.0)))  # Φ(gain / se)


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


__all__ = [
    "Comparison",
    "Pair",
    "RetireReport",
    "Winner",
    "WinnerParams",
    "compare_variants",
    "current_params",
    "preference_pairs",
    "retire_losers",
    "select_winners",
    "winners",
]
