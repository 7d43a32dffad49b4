"""Interval constructions shared by the report's estimators: each a pure function of sufficient
statistics, each with the test it inverts, so an interval and its p-value always agree.

- `fieller`: the interval of a ratio of two independent means by inverting the z-test of
  `mean_t − ρ·mean_c = 0` (Fieller 1954). At ρ = 1 that test *is* the Welch z-test of the
  difference, so the relative-lift interval excludes 0 exactly when the difference's p-value is
  below α, and the absolute interval (same critical value) says the same. The old construction
  (a delta-method interval on the log ratio beside a Welch p-value) disagreed on significance in
  up to 12% of small tests.
- `critical` / `p_value`: the two kinds of critical value the report offers. `fixed`: z = 1.96,
  valid when the report is read once, at a sample size fixed in advance. `sequential`: the
  two-sided normal-mixture boundary of Robbins (1970) in the form of Howard, Ramdas, McAuliffe &
  Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2)
  2021, eq. (14), used as an *asymptotic* confidence sequence with a plug-in variance as in
  Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and
  asymptotic confidence sequences", Ann. Statist. 2024 (arXiv:2103.06476), Thm 2.2. With S_n
  the sum of n centred unit terms of variance σ², the boundary
  |S_n| ≤ σ·√((n + m)·log((n + m) / (m·α²))) holds for every n at once with probability
  ≥ 1 − α (asymptotically), so an interval of half-width `se · critical(n)` may be watched after
  every batch and stopped on whenever it looks good. `m` (the mixture's ρ, in units of
  observations) is set once so that the boundary is tightest at `target_n` observations
  (Howard et al. §3.5: m = target_n / (−2 log α + log(1 − 2 log α))); it changes width, never
  validity. Its p-value is the always-valid p-value of the same boundary (the α at which the
  sequence first excludes 0).
- `score_rate`: a score (Wilson-type) interval for a non-negative rate estimated by a weighted
  ratio, with the Kish effective sample size as its n and the variance function
  V(μ) = κ·μ − μ² (κ = 1: a 0/1 outcome, exactly Wilson 1927; κ = E[v²]/E[v]: revenue, a 0/1
  purchase times a value v). Unlike a normal interval it does not collapse to a point when a
  sparse metric shows no or few events, which is why normal intervals on per-variant rates
  missed almost always on the same side (truth above the interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)
ALPHA = 0.05
#: Where the sequential boundary is tightest, in randomized decisions (bandit + control).
SEQUENTIAL_TARGET_N = 10_000
CI_KINDS = ("fixed", "sequential")


def mixture_scale(target_n: float, alpha: float = ALPHA) -> float:
    """The normal mixture's ρ, in observations, that makes the boundary tightest at `target_n`.

    >>> round(mixture_scale(10_000), 1)
    1260.1
    """
    return target_n / (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha)))


@dataclass(frozen=True, slots=True)
class Critical:
    """A critical value and how its p-value is computed: `kind` is `fixed` or `sequential`;
    `value` multiplies the standard error; `n` (observations) and `m` (the mixture's ρ) are
    those of the sequential boundary (unused when fixed)."""

    kind: str
    value: float
    n: float = 0.0
    m: float = 0.0

    def p_value(self, z: float) -> float:
        """The p-value of a z statistic that agrees with this critical value: p < α exactly
        when |z| > `value` (α = 0.05).

        >>> round(Critical("fixed", Z95).p_value(Z95), 9)
        0.05
        >>> c = critical("sequential", 5000)
        >>> abs(c.p_value(c.value) - 0.05) < 1e-12
        True
        """
        z = abs(z)
        if self.kind == "fixed":
            return math.erfc(z / math.sqrt(2))  # 2·(1 − Φ(|z|))
        n, m = self.n, self.m
        log_p = 0.5 * math.log((n + m) / m) - z * z * n / (2 * (n + m))
        return min(1.0, math.exp(log_p))


def critical(
    kind: str, n: float = 0.0, target_n: float = SEQUENTIAL_TARGET_N, alpha: float = ALPHA
) -> Critical:
    """The critical value of a 1 − α interval: `fixed` (z), or `sequential` after `n`
    observations (the normal-mixture boundary, see the module docstring).

    >>> critical("fixed").value == Z95
    True
    >>> round(critical("sequential", 10_000).value, 3), round(critical("sequential", 1e6).value, 3)
    (3.035, 3.562)
    """
    if kind == "fixed":
        if alpha != ALPHA:
            raise ValueError(f"fixed intervals are 95%, got alpha {alpha}")
        return Critical("fixed", Z95)
    if kind != "sequential":
        raise ValueError(f"ci must be one of {', '.join(CI_KINDS)}, got {kind!r}")
    m = mixture_scale(target_n, alpha)
    n = max(float(n), 1.0)
    value = math.sqrt((n + m) / n * math.log((n + m) / (m * alpha * alpha)))
    return Critical("sequential", value, n, m)


@dataclass(frozen=True, slots=True)
class RatioInterval:
    """Fieller's interval for ρ = mean_t / mean_c; `low`/`high` are None when it is unbounded
    (the control mean is not distinguishable from 0 at this critical value)."""

    low: float | None
    high: float | None


def fieller(mean_t: float, var_t: float, mean_c: float, var_c: float, c: float) -> RatioInterval:
    """{ρ : (mean_t − ρ·mean_c)² ≤ c²·(var_t + ρ²·var_c)}, for independent means with
    variances `var_t`, `var_c` (variances of the means). Bounded when mean_c² > c²·var_c.

    >>> r = fieller(0.06, 0.06 * 0.94 / 20000, 0.05, 0.05 * 0.95 / 20000, Z95)
    >>> round(r.low, 3), round(r.high, 3)
    (1.106, 1.303)
    >>> fieller(0.06, 1e-4, 0.001, 1e-6, Z95)
    RatioInterval(low=None, high=None)
    """
    a = mean_c * mean_c - c * c * var_c
    if a <= 0:
        return RatioInterval(None, None)
    b = mean_t * mean_c
    disc = c * c * (var_t * a + var_c * mean_t * mean_t)  # = b² − a·(mean_t² − c²·var_t) ≥ 0
    root = math.sqrt(max(disc, 0.0))
    return RatioInterval((b - root) / a, (b + root) / a)


def score_rate(
    mean: float, n_eff: float, kappa: float = 1.0, z: float = Z95
) -> tuple[float, float]:
    """{μ ≥ 0 : (mean − μ)² ≤ z²·(κ·μ − μ²) / n_eff}: the score interval of a rate whose
    per-unit variance is κ·μ − μ², with `n_eff` effective observations.

    For a 0/1 outcome (κ = 1) this is Wilson's interval: 0 events in 100 gives [0, 3.7%],
    not the normal interval's [0, 0].

    >>> lo, hi = score_rate(0.0, 100)
    >>> lo, round(hi, 4)
    (0.0, 0.037)
    >>> [round(x, 4) for x in score_rate(0.1, 400)]
    [0.0743, 0.1333]
    """
    if n_eff <= 0:
        return 0.0, kappa
    a = n_eff + z * z
    b = 2 * n_eff * mean + z * z * kappa
    c = n_eff * mean * mean
    root = math.sqrt(max(b * b - 4 * a * c, 0.0))
    return max((b - root) / (2 * a), 0.0), (b + root) / (2 * a)
