"""Pure estimators over per-arm sufficient statistics and logged propensities.

Every function returns a frozen result; rendering (JSON, CSV, HTML) belongs to the caller.
Intervals are two-sided 95% (normal approximation, valid at the sample sizes reports run on).

Off-policy estimators share one interface: `estimator(data: LoggedBandit) -> Estimate` (value,
interval, n, effective sample size); `ESTIMATORS` names them. `ips` and `snips` also accept the
three arrays directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Sufficient statistics of one metric in one arm: n units, sum and sum of squares."""

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def var_of_mean(self) -> float:
        """Variance of the sample mean (unbiased sample variance / n)."""
        if self.n < 2:
            return math.nan
        var = (self.total_sq - self.total * self.total / self.n) / (self.n - 1)
        return max(var, 0.0) / self.n


@dataclass(frozen=True, slots=True)
class Uplift:
    """Treatment vs control: absolute difference with its interval, relative lift (ratio − 1)
    with a delta-method interval on the log ratio, and the two-sided p-value of a Welch z-test
    on the difference. `relative` is None when either mean is 0 (no ratio to take)."""

    absolute: float
    relative: float | None
    ci_low: float | None
    ci_high: float | None
    abs_ci_low: float | None
    abs_ci_high: float | None
    p_value: float | None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def uplift(treatment: ArmStats, control: ArmStats) -> Uplift:
    """Lift of `treatment` over `control`; `ci_low`/`ci_high` bound the relative lift.

    >>> u = uplift(ArmStats(10000, 1200, 1200), ArmStats(10000, 1000, 1000))
    >>> round(u.relative, 3), round(u.absolute, 3), u.p_value < 0.001
    (0.2, 0.02, True)
    """
    diff = treatment.mean - control.mean
    var_t, var_c = treatment.var_of_mean, control.var_of_mean
    if math.isnan(var_t) or math.isnan(var_c):
        return Uplift(diff, None, None, None, None, None, None)
    se = math.sqrt(var_t + var_c)
    abs_lo, abs_hi = diff - Z95 * se, diff + Z95 * se
    if se > 0:
        p_value = math.erfc(
            abs(diff) / se / math.sqrt(2)
        )  # 2·(1 − Φ(|z|)), without scipy's overhead
    else:
        p_value = 1.0 if diff == 0 else 0.0
    if control.mean <= 0 or treatment.mean <= 0:
        return Uplift(diff, None, None, None, abs_lo, abs_hi, p_value)
    ratio = treatment.mean / control.mean
    # Delta method on log(ratio): an asymmetric interval that stays above -100% and agrees with
    # the z-test far better than a symmetric interval on the ratio itself.
    se_log = math.sqrt(var_t / treatment.mean**2 + var_c / control.mean**2)
    return Uplift(
        absolute=diff,
        relative=ratio - 1.0,
        ci_low=ratio * math.exp(-Z95 * se_log) - 1.0,
        ci_high=ratio * math.exp(Z95 * se_log) - 1.0,
        abs_ci_low=abs_lo,
        abs_ci_high=abs_hi,
        p_value=p_value,
    )


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """Sample-ratio check: observed control share against the configured holdout."""

    expected_control_share: float
    observed_control_share: float | None
    p_value: float | None
    mismatch: bool


def sample_ratio(n_control: int, n_treatment: int, holdout: float) -> SampleRatio:
    """Chi-square goodness of fit of the split; `mismatch` when p < 0.001.

    >>> sample_ratio(1000, 9000, 0.1).mismatch, sample_ratio(2000, 8000, 0.1).mismatch
    (False, True)
    """
    n = n_control + n_treatment
    if n == 0 or holdout in (0.0, 1.0):
        observed = n_control / n if n else None
        return SampleRatio(holdout, observed, None, False)
    expected = [n * holdout, n * (1 - holdout)]
    p = float(stats.chisquare([n_control, n_treatment], expected).pvalue)
    return SampleRatio(holdout, n_control / n, p, p < 0.001)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A policy value estimate with its 95% interval, sample size and effective sample size."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    ess: float


@dataclass(frozen=True)
class LoggedBandit:
    """Logged bandit feedback, one entry per decision (shape `(n,)` each).

    `rewards` r_i; `logged_p` μ(a_i|x_i), the logging probability of the served action;
    `target_p` π(a_i|x_i), the target policy's probability of that same action. For the doubly
    robust estimator, `q_logged` is the reward model's q̂(x_i, a_i) and `q_target` its value
    under the target, Σ_a π(a|x_i) q̂(x_i, a).
    """

    rewards: np.ndarray
    logged_p: np.ndarray
    target_p: np.ndarray
    q_logged: np.ndarray | None = None
    q_target: np.ndarray | None = None

    def __post_init__(self) -> None:
        r, mu, pi = self.rewards, self.logged_p, self.target_p
        if not (r.shape == mu.shape == pi.shape):
            raise ValueError(
                f"shapes differ: rewards {r.shape}, logged {mu.shape}, target {pi.shape}"
            )
        if np.any(mu <= 0):
            raise ValueError("logged probabilities must be > 0")
        for name in ("q_logged", "q_target"):
            q = getattr(self, name)
            if q is not None and q.shape != r.shape:
                raise ValueError(f"shapes differ: rewards {r.shape}, {name} {q.shape}")

    @classmethod
    def of(
        cls,
        rewards: ArrayLike,
        logged_p: ArrayLike,
        target_p: ArrayLike,
        q_logged: ArrayLike | None = None,
        q_target: ArrayLike | None = None,
    ) -> LoggedBandit:
        def arr(x: ArrayLike | None) -> np.ndarray | None:
            return None if x is None else np.asarray(x, dtype=np.float64)

        r, mu, pi = (np.asarray(x, dtype=np.float64) for x in (rewards, logged_p, target_p))
        return cls(r, mu, pi, arr(q_logged), arr(q_target))

    @property
    def weights(self) -> np.ndarray:
        """Importance weights w = π(a|x) / μ(a|x), shape `(n,)`."""
        w: np.ndarray = self.target_p / self.logged_p
        return w


def _as_data(
    rewards: ArrayLike | LoggedBandit, logged_p: ArrayLike | None, target_p: ArrayLike | None
) -> LoggedBandit:
    if isinstance(rewards, LoggedBandit):
        return rewards
    if logged_p is None or target_p is None:
        raise ValueError("logged_p and target_p are required with raw rewards")
    return LoggedBandit.of(rewards, logged_p, target_p)


def _mean_interval(terms: np.ndarray, w: np.ndarray) -> Estimate:
    n = terms.size
    if n == 0:
        return Estimate(None, None, None, 0, 0.0)
    value = float(terms.mean())
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Estimate(value, value - Z95 * se, value + Z95 * se, n, _ess(w))


def ips(
    rewards: ArrayLike | LoggedBandit,
    logged_p: ArrayLike | None = None,
    target_p: ArrayLike | None = None,
) -> Estimate:
    """Inverse propensity scoring: mean of w·r with w = π(a|x) / μ(a|x); unbiased when μ > 0
    wherever π > 0. Interval: normal, from the sample variance of w·r."""
    data = _as_data(rewards, logged_p, target_p)
    w = data.weights
    return _mean_interval(w * data.rewards, w)


def snips(
    rewards: ArrayLike | LoggedBandit,
    logged_p: ArrayLike | None = None,
    target_p: ArrayLike | None = None,
) -> Estimate:
    """Self-normalised IPS: Σ w·r / Σ w, with a delta-method interval (slightly biased, far
    lower variance than IPS when weights are large)."""
    data = _as_data(rewards, logged_p, target_p)
    r, w = data.rewards, data.weights
    n = r.size
    if n == 0 or w.sum() <= 0:
        return Estimate(None, None, None, n, 0.0)
    value = float((w * r).sum() / w.sum())
    wbar = w.mean()
    se = float(np.sqrt(np.mean((w * (r - value)) ** 2) / n) / wbar) if n > 1 else math.nan
    return Estimate(value, value - Z95 * se, value + Z95 * se, n, _ess(w))


def dr(data: LoggedBandit) -> Estimate:
    """Doubly robust: mean of Σ_a π(a|x) q̂(x,a) + w·(r − q̂(x,a_i)). Unbiased when the
    propensities are right, whatever the reward model q̂; lower variance the better q̂ is.

    >>> d = LoggedBandit.of([1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5])
    >>> dr(d).value
    1.0
    """
    if data.q_logged is None or data.q_target is None:
        raise ValueError("dr needs q_logged and q_target (a reward model)")
    w = data.weights
    return _mean_interval(data.q_target + w * (data.rewards - data.q_logged), w)


#: Every off-policy estimator, one interface: `estimator(data) -> Estimate`.
ESTIMATORS: dict[str, Callable[[LoggedBandit], Estimate]] = {"ips": ips, "snips": snips, "dr": dr}


def ratio_snips(
    sum_w: float, sum_wr: float, sum_w2: float, sum_w2r: float, sum_w2r2: float, n: int = 0
) -> Estimate:
    """SNIPS of "always this action" from sums over the decisions that served it, with
    w = 1 / μ(a|x): value Σwr / Σw, and se = √(Σ w²(r − v)²) / Σw (the delta method; the
    decisions that did not serve it have w = 0 and only cancel out). For SQL aggregates.

    >>> e = ratio_snips(4.0, 2.0, 4.0, 2.0, 2.0)
    >>> e.value, round(e.ci_high - e.value, 3)
    (0.5, 0.49)
    """
    if sum_w <= 0:
        return Estimate(None, None, None, n, 0.0)
    value = sum_wr / sum_w
    ss = max(sum_w2r2 - 2 * value * sum_w2r + value * value * sum_w2, 0.0)
    se = math.sqrt(ss) / sum_w
    ess = sum_w * sum_w / sum_w2 if sum_w2 > 0 else 0.0
    return Estimate(value, value - Z95 * se, value + Z95 * se, n, ess)


def _ess(w: np.ndarray) -> float:
    """Kish's effective sample size of importance weights."""
    s2 = float((w * w).sum())
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0
