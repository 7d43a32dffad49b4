"""CUPED: the uplift with a pre-period covariate regressed out (Deng, Xu, Kohavi & Walker,
"Improving the sensitivity of online controlled experiments by utilizing pre-experiment data",
WSDM 2013).

The unit is a decision (an impression), and a decision has no history of its own; what the
ledger knows about it before it is served is its product (and its context). The covariate is
therefore the **product's rate of the same metric in the pre-period** (`X_i = x̂_{product(i)}`),
empirical-Bayes shrunk toward the pre-period's overall rate (`shrunk_rates`), so a product seen
a handful of times predicts little. It is fixed before the analysis window and arm assignment
(bandit or control, uniformly at random per decision) is independent of it, so the adjusted
difference stays unbiased whatever θ is; it is worth as much as products differ in the metric:
`variance_reduction` ≈ the share of a decision's outcome variance that its product explains.

    Y'_i = Y_i − θ·(X_i − X̄),  θ = Σ_arms Σ_i (X_i − X̄_arm)(Y_i − Ȳ_arm) / Σ_arms Σ_i (X_i − X̄_arm)²

(θ pooled over both arms, within-arm centred; X̄ the pooled mean). The adjusted arms go through
the same `estimators.uplift` as the plain ones (Fieller's interval, the same p-value, fixed or
sequential), treating θ as known (its estimation error is O(1/n)); `variance_reduction` is
1 − Var(Δ̂_cuped) / Var(Δ̂_plain), the shrinkage of the difference's variance (the interval's
width shrinks by its square root).

Everything here works on per-group sums (X is constant within a product), so the report needs
no per-decision read: Σx = Σ_g n_g·x_g, Σx² = Σ_g n_g·x_g², Σxy = Σ_g x_g·Σy_g.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reports.estimators import ArmStats, uplift, variance_scale
from reports.intervals import SEQUENTIAL_TARGET_N


@dataclass(frozen=True, slots=True)
class CovStats:
    """Sufficient statistics of an outcome y and a covariate x in one arm: n, Σy, Σy², Σx,
    Σx², Σxy, and the units with a nonzero y (None: y is 0/1)."""

    n: int = 0
    sum_y: float = 0.0
    sum_y2: float = 0.0
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_xy: float = 0.0
    nonzero: float | None = None

    @classmethod
    def of_groups(cls, groups: Iterable[tuple[ArmStats, float]]) -> CovStats:
        """From (the arm's statistics within a group, the group's covariate value) pairs.

        >>> s = CovStats.of_groups([(ArmStats(10, 2, 2), 0.1), (ArmStats(30, 9, 9), 0.3)])
        >>> s.n, s.sum_y, round(s.sum_x, 6), round(s.sum_xy, 6)
        (40, 11.0, 10.0, 2.9)
        """
        n, sy, sy2, sx, sx2, sxy = 0, 0.0, 0.0, 0.0, 0.0, 0.0
        nonzero: float | None = None
        for stats, x in groups:
            n += stats.n
            sy += stats.total
            sy2 += stats.total_sq
            sx += stats.n * x
            sx2 += stats.n * x * x
            sxy += stats.total * x
            if stats.nonzero is not None:
                nonzero = (nonzero or 0.0) + stats.nonzero
        return cls(n, sy, sy2, sx, sx2, sxy, nonzero)

    @property
    def plain(self) -> ArmStats:
        return ArmStats(self.n, self.sum_y, self.sum_y2, self.nonzero)

    def centred(self) -> tuple[float, float]:
        """(Σ(x − x̄)(y − ȳ), Σ(x − x̄)²) within this arm."""
        if self.n == 0:
            return 0.0, 0.0
        sxy = self.sum_xy - self.sum_x * self.sum_y / self.n
        sxx = self.sum_x2 - self.sum_x * self.sum_x / self.n
        return sxy, max(sxx, 0.0)

    def adjusted(self, theta: float, x_mean: float) -> ArmStats:
        """The arm's statistics of y − θ·(x − x_mean)."""
        d_sum = self.sum_x - self.n * x_mean  # Σ(x − x̄)
        d_sq = self.sum_x2 - 2 * x_mean * self.sum_x + self.n * x_mean * x_mean  # Σ(x − x̄)²
        d_xy = self.sum_xy - x_mean * self.sum_y  # Σ(x − x̄)·y
        total = self.sum_y - theta * d_sum
        total_sq = self.sum_y2 - 2 * theta * d_xy + theta * theta * d_sq
        return ArmStats(self.n, total, max(total_sq, 0.0), self.nonzero)


@dataclass(frozen=True, slots=True)
class Cuped:
    """The CUPED-adjusted lift: `relative` with Fieller's interval (`ci_*`), `absolute` with its
    interval (`abs_ci_*`), the p-value of the same test, θ and the variance reduction of the
    difference (1 − adjusted / plain; negative when the covariate only added noise)."""

    relative: float | None
    ci_low: float | None
    ci_high: float | None
    variance_reduction: float | None
    absolute: float | None
    abs_ci_low: float | None
    abs_ci_high: float | None
    p_value: float | None
    theta: float | None
    note: str | None = None

    @classmethod
    def unavailable(cls, note: str) -> Cuped:
        return cls(None, None, None, None, None, None, None, None, None, note)


def cuped(
    treatment: CovStats,
    control: CovStats,
    ci: str = "fixed",
    target_n: float = SEQUENTIAL_TARGET_N,
) -> Cuped:
    """The lift of `treatment` over `control` with the covariate regressed out (see module).

    A covariate that tracks the outcome narrows the interval; a constant one changes nothing:

    >>> def arm(low, high):  # clicks on a product with pre-period CTR 2% and one with 20%
    ...     return CovStats.of_groups([(ArmStats(5000, low, low), 0.02),
    ...                                (ArmStats(5000, high, high), 0.2)])
    >>> t, c = arm(100, 1100), arm(90, 1000)
    >>> r = cuped(t, c)
    >>> round(r.relative, 4), round(r.variance_reduction, 3), round(r.theta, 3)
    (0.1009, 0.09, 1.061)
    >>> flat = cuped(CovStats.of_groups([(t.plain, 0.1)]), CovStats.of_groups([(c.plain, 0.1)]))
    >>> flat.variance_reduction, flat.theta
    (0.0, 0.0)
    """
    if treatment.n < 2 or control.n < 2:
        return Cuped.unavailable("fewer than 2 units in an arm")
    sxy_t, sxx_t = treatment.centred()
    sxy_c, sxx_c = control.centred()
    sxx = sxx_t + sxx_c
    # A covariate with no spread (one product, or no pre-period signal) carries no information.
    theta = (sxy_t + sxy_c) / sxx if sxx > 1e-12 * max(treatment.n + control.n, 1) else 0.0
    x_mean = (treatment.sum_x + control.sum_x) / (treatment.n + control.n)
    adj_t, adj_c = treatment.adjusted(theta, x_mean), control.adjusted(theta, x_mean)
    # The adjusted arms keep the plain arms' skew guard (`estimators.variance_scale`): the
    # compound model behind it describes y, not y − θ(x − x̄).
    scale = variance_scale(treatment.plain, control.plain)
    plain_var = treatment.plain.var_of_mean * scale[0] + control.plain.var_of_mean * scale[1]
    adj_var = adj_t.var_of_mean * scale[0] + adj_c.var_of_mean * scale[1]
    u = uplift(adj_t, adj_c, ci, target_n, scale)
    return Cuped(
        relative=u.relative,
        ci_low=u.ci_low,
        ci_high=u.ci_high,
        variance_reduction=1.0 - adj_var / plain_var if plain_var > 0 else None,
        absolute=u.absolute,
        abs_ci_low=u.abs_ci_low,
        abs_ci_high=u.abs_ci_high,
        p_value=u.p_value,
        theta=theta,
        note=u.note,
    )


def shrunk_rates(groups: Mapping[str, ArmStats]) -> tuple[dict[str, float], float]:
    """Each group's mean shrunk toward the pooled mean, x_g = (Σy_g + k·ȳ) / (n_g + k), with
    the prior weight k = σ²_within / τ²_between estimated by the method of moments (one-way
    ANOVA, unbalanced); and the pooled mean ȳ (the value for a group not seen). With no
    between-group spread beyond noise, every group gets ȳ.

    >>> x, pooled = shrunk_rates({"a": ArmStats(1000, 20, 20), "b": ArmStats(1000, 200, 200),
    ...                           "c": ArmStats(2, 2, 2)})
    >>> round(pooled, 4), round(x["a"], 4), round(x["b"], 4), round(x["c"], 2)
    (0.1109, 0.0205, 0.1995, 0.36)
    """
    n = sum(s.n for s in groups.values())
    if n == 0:
        return {}, 0.0
    pooled = sum(s.total for s in groups.values()) / n
    k_groups = sum(1 for s in groups.values() if s.n > 0)
    within_ss = sum(s.total_sq - s.total * s.total / s.n for s in groups.values() if s.n > 0)
    between_ss = sum(s.n * (s.mean - pooled) ** 2 for s in groups.values() if s.n > 0)
    sigma2 = within_ss / (n - k_groups) if n > k_groups else 0.0
    n0 = (n - sum(s.n * s.n for s in groups.values()) / n) / max(k_groups - 1, 1)
    tau2 = (between_ss / max(k_groups - 1, 1) - sigma2) / n0 if n0 > 0 else 0.0
    if tau2 <= 0:
        return {g: pooled for g in groups}, pooled
    k = sigma2 / tau2
    return {g: (s.total + k * pooled) / (s.n + k) for g, s in groups.items()}, pooled
