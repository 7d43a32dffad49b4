"""Simulated experiments with known truth, to prove the report's intervals: for tests
(`tests/reports/test_coverage.py`) and `bench/coverage.py`. Not used by the running system.

Each function draws many seeded experiments with numpy (sufficient statistics per product and
arm, not per decision, so a thousand experiments take a second) and runs them through the
report's own estimators (`estimators.uplift`, `cuped.cuped`, `estimators.ratio_snips`,
`reward_model.cross_fitted_q`), then counts how often the interval held the truth.

The world: `products` products with traffic shares s_k and base rates b_k (CTR around 5%,
spread `spread` on the log scale: how much products differ, which is what the CUPED covariate
can explain); a purchase follows a click with probability 1/4; a purchase's value is lognormal
(median 20, heavy right tail). The bandit arm lifts every product's rates by `lift`, so the
true relative lift of every metric is `lift` and the true absolute lift is lift·Σ s_k·r_k.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from reports.cuped import CovStats, cuped, shrunk_rates
from reports.estimators import ArmStats, LoggedBandit, dr, ips, ratio_snips, snips, uplift
from reports.reward_model import Design, cross_fitted_q

METRICS = ("ctr", "cvr", "revenue_per_impression")
PURCHASE_GIVEN_CLICK = 0.25
VALUE_MU, VALUE_SIGMA = 3.0, 0.8  # log of a purchase's value: median e³ ≈ 20


@dataclass(frozen=True)
class Coverage:
    """How often an interval held the truth over `experiments` simulated experiments."""

    interval: str
    metric: str
    covered: int
    experiments: int
    target: float = 0.95
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        return self.covered / self.experiments if self.experiments else math.nan

    @property
    def sd(self) -> float:
        """The binomial standard deviation of the coverage at the target."""
        return math.sqrt(self.target * (1 - self.target) / max(self.experiments, 1))


@dataclass(frozen=True)
class World:
    """Products: traffic shares and base CTRs (shape `(products,)`)."""

    shares: np.ndarray
    ctr: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, products: int, spread: float) -> World:
        shares = rng.dirichlet(np.full(products, 2.0))
        ctr = np.clip(0.05 * np.exp(spread * rng.standard_normal(products)), 0.002, 0.6)
        return cls(shares, ctr)

    def rate(self, metric: str) -> np.ndarray:
        """The per-product probability of an event of `metric` (click or purchase)."""
        return self.ctr if metric == "ctr" else self.ctr * PURCHASE_GIVEN_CLICK

    def mean(self, metric: str) -> float:
        """The true mean of `metric` per decision, over the product mix."""
        value = math.exp(VALUE_MU + VALUE_SIGMA**2 / 2) if metric == "revenue_per_impression" else 1
        return float(self.shares @ self.rate(metric)) * value


def _outcomes(
    rng: np.random.Generator, n: np.ndarray, p: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell of `n` (units) with event probability `p`: (events, Σy, Σy²); revenue values
    are drawn per purchase and summed per cell."""
    events = rng.binomial(n, p)
    if metric != "revenue_per_impression":
        return events, events.astype(float), events.astype(float)
    flat = events.ravel()
    cell = np.repeat(np.arange(flat.size), flat)
    values = rng.lognormal(VALUE_MU, VALUE_SIGMA, size=cell.size)
    total = np.bincount(cell, weights=values, minlength=flat.size).reshape(n.shape)
    total_sq = np.bincount(cell, weights=values * values, minlength=flat.size).reshape(n.shape)
    return events, total, total_sq


def _arm_stats(cells: Sequence[np.ndarray], metric: str) -> list[ArmStats]:
    """One ArmStats per product from 1-d per-product arrays (n, events, Σy, Σy²)."""
    n, ev, s, s2 = cells
    valued = metric == "revenue_per_impression"
    return [
        ArmStats(int(n[k]), float(s[k]), float(s2[k]), float(ev[k]) if valued else None)
        for k in range(n.shape[0])
    ]


def _covariate(
    rng: np.random.Generator, world: World, metric: str, pre_n: int, experiments: int
) -> np.ndarray:
    """Per experiment, each product's shrunk pre-period rate, (experiments, products)."""
    n = rng.multinomial(pre_n, world.shares, size=experiments)
    ev, s, s2 = _outcomes(rng, n, world.rate(metric), metric)
    out = np.empty(n.shape)
    for e in range(experiments):
        arms = _arm_stats((n[e], ev[e], s[e], s2[e]), metric)
        groups = {str(k): a for k, a in enumerate(arms)}
        x, pooled = shrunk_rates(groups)
        out[e] = [x.get(str(k), pooled) for k in range(n.shape[1])]
    return out


def fixed_and_cuped(
    metric: str,
    experiments: int = 1200,
    decisions: int = 20_000,
    *,
    holdout: float = 0.1,
    lift: float = 0.1,
    products: int = 20,
    spread: float = 1.0,
    pre_decisions: int = 20_000,
    seed: int = 0,
) -> tuple[Coverage, Coverage]:
    """Fixed-horizon plain and CUPED 95% intervals of the relative lift, each read once at
    `decisions`: how often each holds `lift`, their mean widths and CUPED's mean variance
    reduction (`extra`)."""
    rng = np.random.default_rng(seed)
    world = World.draw(rng, products, spread)
    x = _covariate(rng, world, metric, pre_decisions, experiments)
    n = rng.multinomial(decisions, world.shares, size=experiments)
    n_c = rng.binomial(n, holdout)
    n_t = n - n_c
    rate = world.rate(metric)
    cells_t = (n_t, *_outcomes(rng, n_t, rate * (1 + lift), metric))
    cells_c = (n_c, *_outcomes(rng, n_c, rate, metric))
    tallies = {"plain": [0, 0.0, 0], "cuped": [0, 0.0, 0]}  # covered, Σ width, defined
    reduction = 0.0
    for e in range(experiments):
        t = _arm_stats([a[e] for a in cells_t], metric)
        c = _arm_stats([a[e] for a in cells_c], metric)
        cov_t = CovStats.of_groups(zip(t, x[e], strict=True))
        cov_c = CovStats.of_groups(zip(c, x[e], strict=True))
        plain = uplift(cov_t.plain, cov_c.plain)
        adj = cuped(cov_t, cov_c)
        reduction += adj.variance_reduction or 0.0
        intervals = {"plain": (plain.ci_low, plain.ci_high), "cuped": (adj.ci_low, adj.ci_high)}
        for name, (lo, hi) in intervals.items():
            if lo is None or hi is None:
                continue
            tallies[name][0] += lo <= lift <= hi
            tallies[name][1] += hi - lo
            tallies[name][2] += 1
    result = []
    for name in ("plain", "cuped"):
        covered, width, defined = tallies[name]
        extra = {"mean_width": width / max(defined, 1), "defined": defined, "spread": spread}
        if name == "cuped":
            extra["variance_reduction"] = reduction / experiments
        label = "fixed" if name == "plain" else "cuped (fixed)"
        result.append(Coverage(label, metric, int(covered), int(defined), extra=extra))
    return result[0], result[1]


def sequential(
    metric: str,
    experiments: int = 500,
    batches: int = 40,
    batch: int = 1000,
    *,
    holdout: float = 0.1,
    lift: float = 0.1,
    products: int = 20,
    spread: float = 1.0,
    pre_decisions: int = 20_000,
    seed: int = 0,
) -> list[Coverage]:
    """Intervals read after every batch of `batch` decisions, `batches` times: an experiment
    counts as covered only if *every* look's interval held the truth (relative lift and
    absolute difference both; a look with no interval yet claims nothing). Sequential plain
    and CUPED intervals must keep ≥ 95%; fixed intervals watched the same way do not."""
    rng = np.random.default_rng(seed)
    world = World.draw(rng, products, spread)
    x = _covariate(rng, world, metric, pre_decisions, experiments)
    n = rng.multinomial(batch, world.shares, size=(experiments, batches))  # (E, T, K)
    n_c = rng.binomial(n, holdout)
    n_t = n - n_c
    rate = world.rate(metric)
    cum = [np.cumsum(a, axis=1) for a in (n_t, *_outcomes(rng, n_t, rate * (1 + lift), metric))]
    cum_c = [np.cumsum(a, axis=1) for a in (n_c, *_outcomes(rng, n_c, rate, metric))]
    true_abs = lift * world.mean(metric)
    kinds: dict[str, Callable[[CovStats, CovStats], tuple[float | None, ...]]] = {
        "sequential": lambda t, c: _bounds(uplift(t.plain, c.plain, "sequential")),
        "cuped (sequential)": lambda t, c: _bounds(cuped(t, c, "sequential")),
        "fixed, watched": lambda t, c: _bounds(uplift(t.plain, c.plain, "fixed")),
    }
    covered = dict.fromkeys(kinds, 0)
    with_interval = dict.fromkeys(kinds, 0)  # looks that had an interval to check
    for e in range(experiments):
        ok = dict.fromkeys(kinds, True)
        for look in range(batches):
            t = _arm_stats([a[e, look] for a in cum], metric)
            c = _arm_stats([a[e, look] for a in cum_c], metric)
            cov_t = CovStats.of_groups(zip(t, x[e], strict=True))
            cov_c = CovStats.of_groups(zip(c, x[e], strict=True))
            for kind, bounds in kinds.items():
                lo, hi, alo, ahi = bounds(cov_t, cov_c)
                with_interval[kind] += alo is not None
                if lo is not None and hi is not None and not lo <= lift <= hi:
                    ok[kind] = False
                if alo is not None and ahi is not None and not alo <= true_abs <= ahi:
                    ok[kind] = False
        for kind in kinds:
            covered[kind] += ok[kind]
    return [
        Coverage(
            f"{kind} (every batch)",
            metric,
            covered[kind],
            experiments,
            extra={
                "looks": batches,
                "batch": batch,
                "looks_with_interval": with_interval[kind] / (experiments * batches),
            },
        )
        for kind in kinds
    ]


def _bounds(u: object) -> tuple[float | None, ...]:
    return tuple(getattr(u, f) for f in ("ci_low", "ci_high", "abs_ci_low", "abs_ci_high"))


def variant_rates(
    experiments: int = 300,
    decisions: int = 2000,
    variants: int = 8,
    contexts: int = 4,
    *,
    holdout: float = 0.1,
    seed: int = 0,
) -> list[Coverage]:
    """Per-variant propensity-weighted (SNIPS) rates of a bandit's logs: `decisions` page views
    of one product with `variants` variants, `contexts` shopper kinds, click rates 2-12% per
    (context, variant), the logging policy a context-dependent softmax plus a control holdout.
    The truth of a variant is its rate had every page view shown it. Coverage of the report's
    score interval (`score`) against the normal interval it replaced (`normal`)."""
    rng = np.random.default_rng(seed)
    z = 1.959963984540054
    value_mean = math.exp(VALUE_MU + VALUE_SIGMA**2 / 2)
    tallies = {(m, k): 0 for m in METRICS for k in ("score", "normal")}
    counts = dict.fromkeys(METRICS, 0)
    low_ess = 0
    for _ in range(experiments):
        theta = rng.uniform(0.02, 0.12, size=(contexts, variants))
        x = rng.integers(contexts, size=decisions)
        logits = theta[x] * 40.0
        mu = np.exp(logits - logits.max(axis=1, keepdims=True))
        mu = (1 - holdout) * mu / mu.sum(axis=1, keepdims=True)
        mu[:, 0] += holdout
        a = (rng.random((decisions, 1)) > np.cumsum(mu, axis=1)).sum(axis=1).clip(0, variants - 1)
        p = mu[np.arange(decisions), a]
        click = rng.random(decisions) < theta[x, a]
        buy = click & (rng.random(decisions) < PURCHASE_GIVEN_CLICK)
        revenue = buy * rng.lognormal(VALUE_MU, VALUE_SIGMA, size=decisions)
        kappa = float((revenue**2).sum() / revenue.sum()) if revenue.sum() > 0 else 1.0
        for v in range(variants):
            served = a == v
            if not served.any():
                continue
            w = 1.0 / p[served]
            truth = float(theta[:, v].mean())
            for metric, r, kap, t in (
                ("ctr", click[served], 1.0, truth),
                ("cvr", buy[served], 1.0, truth * PURCHASE_GIVEN_CLICK),
                (
                    "revenue_per_impression",
                    revenue[served],
                    kappa,
                    truth * PURCHASE_GIVEN_CLICK * value_mean,
                ),
            ):
                r = r.astype(float)
                e = ratio_snips(w.sum(), (w * r).sum(), (w * w).sum(), kappa=kap)
                assert e.value is not None and e.ci_low is not None and e.ci_high is not None
                counts[metric] += 1
                tallies[(metric, "score")] += e.ci_low <= t <= e.ci_high
                se = math.sqrt(float((w * w * (r - e.value) ** 2).sum())) / w.sum()
                tallies[(metric, "normal")] += abs(e.value - t) <= z * se
                low_ess += metric == "ctr" and e.ess < 100
    out = []
    for metric in METRICS:
        for kind in ("score", "normal"):
            out.append(
                Coverage(
                    f"variant snips ({kind})",
                    metric,
                    tallies[(metric, kind)],
                    counts[metric],
                    extra={
                        "decisions": decisions,
                        "variants": variants,
                        "low_ess_share": low_ess / max(counts["ctr"], 1),
                    },
                )
            )
    return out


@dataclass(frozen=True)
class OpeErrors:
    """Per estimator: root mean squared error, mean squared error's standard error, and the
    interval's coverage, over `experiments` logs of `decisions`."""

    rmse: dict[str, float]
    mse_se: dict[str, float]
    coverage: dict[str, Coverage]
    #: Per experiment, squared error of SNIPS minus that of DR (cross-fitted): > 0 favours DR.
    snips_minus_dr: np.ndarray
    experiments: int


def ope_errors(
    experiments: int = 200,
    decisions: int = 3000,
    contexts: int = 6,
    actions: int = 4,
    *,
    seed: int = 0,
) -> OpeErrors:
    """Off-policy estimates of a target policy on logs where the best action depends on the
    context (a strong context × action interaction), with the true value known: IPS, SNIPS,
    DR with a context-free reward model (per-action mean), and DR with the report's
    cross-fitted context-aware model."""
    rng = np.random.default_rng(seed)
    # Contexts differ in their base rate (2% to 60%, evenly spaced) and each has its own best
    # action (×1.5; the others ×0.6): the context predicts much of the reward, which SNIPS
    # cannot use.
    base = np.linspace(0.02, 0.6, contexts)
    best = np.arange(contexts) % actions
    is_best = np.arange(actions)[None, :] == best[:, None]
    theta = np.clip(base[:, None] * np.where(is_best, 1.5, 0.6), 0.0, 1.0)
    logits = rng.normal(0, 1.0, size=(contexts, actions))
    mu = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mu = 0.8 * mu + 0.2 / actions  # every action logged with probability ≥ 5%
    pi = np.where(is_best, 0.9, 0.1 / (actions - 1))  # the target mostly plays the best action
    truth = float((pi * theta).sum(axis=1).mean())  # contexts equally likely
    tokens = [(f"segment=s{c}",) for c in range(contexts)]
    names = tuple(f"v{k}" for k in range(actions))
    errors: dict[str, list[float]] = {k: [] for k in ("ips", "snips", "dr_context_free", "dr")}
    covered = dict.fromkeys(errors, 0)
    for _ in range(experiments):
        x = rng.integers(contexts, size=decisions)
        a = (rng.random((decisions, 1)) > np.cumsum(mu[x], axis=1)).sum(axis=1).clip(0, actions - 1)
        r = (rng.random(decisions) < theta[x, a]).astype(float)
        idx = np.arange(decisions)
        mask = np.ones((decisions, actions), dtype=bool)
        design = Design([tokens[c] for c in x], [names] * decisions)
        q = cross_fitted_q(design, a, mask, r[:, None])[:, :, 0]
        counts = np.bincount(a, minlength=actions)
        sums = np.bincount(a, weights=r, minlength=actions)
        flat = (sums + 10 * r.mean()) / (counts + 10)  # the per-variant shrunk mean it replaced
        data = {
            "ips": ips(r, mu[x, a], pi[x, a]),
            "snips": snips(r, mu[x, a], pi[x, a]),
            "dr_context_free": dr(LoggedBandit.of(r, mu[x, a], pi[x, a], flat[a], pi[x] @ flat)),
            "dr": dr(LoggedBandit.of(r, mu[x, a], pi[x, a], q[idx, a], (pi[x] * q).sum(axis=1))),
        }
        for name, est in data.items():
            assert est.value is not None and est.ci_low is not None and est.ci_high is not None
            errors[name].append(est.value - truth)
            covered[name] += est.ci_low <= truth <= est.ci_high
    sq = {k: np.square(v) for k, v in errors.items()}
    return OpeErrors(
        rmse={k: float(np.sqrt(v.mean())) for k, v in sq.items()},
        mse_se={k: float(v.std(ddof=1) / math.sqrt(experiments)) for k, v in sq.items()},
        coverage={k: Coverage(f"ope {k}", "ctr", covered[k], experiments) for k in errors},
        snips_minus_dr=sq["snips"] - sq["dr"],
        experiments=experiments,
    )
