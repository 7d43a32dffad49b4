"""Proof by simulation: hundreds of seeded experiments with known truth per interval type, run
through the report's own estimators (`reports.simulate`).

Margins come from the binomial error of the number of experiments: at 95% over N experiments
the coverage's standard deviation is √(0.95·0.05/N), so 1,200 experiments give ±1.9 points at
3 sd, inside the ±2 points asked of fixed and CUPED intervals. Sequential intervals must keep at
least 95% over *every* look of an experiment; the same data read with fixed intervals after
every batch show why they are needed. `bench/coverage.py` prints the same table.
"""

from __future__ import annotations

import numpy as np
import pytest

from reports import simulate
from reports.simulate import Coverage


def within(c: Coverage, sds: float = 3.0) -> bool:
    return abs(c.coverage - c.target) <= sds * c.sd


@pytest.mark.parametrize("metric", simulate.METRICS)
def test_fixed_and_cuped_intervals_cover_95_percent(metric: str) -> None:
    decisions = 40_000 if metric == "revenue_per_impression" else 20_000
    plain, cuped = simulate.fixed_and_cuped(metric, 1200, decisions, seed=1)
    for c in (plain, cuped):
        assert c.experiments == 1200, c  # every experiment had an interval
        assert 3 * c.sd <= 0.02
        assert within(c), (c.interval, c.coverage)


def test_cuped_narrows_the_interval_where_the_covariate_predicts() -> None:
    """Products that differ (spread 1.0 on the log scale of CTR): the pre-period product rate
    explains part of each decision's outcome, and CUPED's interval is narrower. Products alike
    (spread 0): nothing to explain, nothing changes, coverage intact either way."""
    plain, cuped = simulate.fixed_and_cuped("ctr", 400, 20_000, spread=1.0, seed=2)
    assert cuped.extra["variance_reduction"] > 0.05
    assert cuped.extra["mean_width"] < 0.98 * plain.extra["mean_width"]
    alike_plain, alike = simulate.fixed_and_cuped("ctr", 400, 20_000, spread=0.0, seed=3)
    assert abs(alike.extra["variance_reduction"]) < 0.005
    assert alike.extra["mean_width"] == pytest.approx(alike_plain.extra["mean_width"], rel=0.005)
    for c in (plain, cuped, alike_plain, alike):
        assert within(c), (c.interval, c.coverage)


@pytest.mark.parametrize("metric", simulate.METRICS)
def test_sequential_intervals_hold_when_checked_after_every_batch(metric: str) -> None:
    """400 experiments, each read after every one of 30 batches of 1,000 decisions (4,000 for
    revenue, whose intervals wait for 30 purchases per arm): the sequential intervals (plain
    and CUPED) held the truth at every look in ≥ 95% of them; the fixed intervals, watched the
    same way, did not (the peeking problem they replace). Most looks had an interval to check,
    so the coverage is not bought by silence."""
    batch = 4000 if metric == "revenue_per_impression" else 1000
    results = {c.interval: c for c in simulate.sequential(metric, 400, 30, batch, seed=4)}
    for name in ("sequential (every batch)", "cuped (sequential) (every batch)"):
        assert results[name].experiments == 400
        assert results[name].extra["looks_with_interval"] > 0.6
        assert results[name].coverage >= 0.95, (name, results[name].coverage)
    assert results["fixed, watched (every batch)"].coverage < 0.9


def test_per_variant_rates_hold_on_sparse_metrics() -> None:
    """8 variants, 2,000 decisions, 300 experiments: the score intervals of the per-variant
    SNIPS rates cover ≥ 93% (they sit near 97%: conservative where the bandit avoids a
    variant's bad contexts); the normal intervals they replaced covered 73-88%."""
    results = simulate.variant_rates(300, 2000, 8, seed=5)
    by = {(c.interval, c.metric): c for c in results}
    for metric in simulate.METRICS:
        score = by[("variant snips (score)", metric)]
        assert score.experiments >= 2000
        assert score.coverage >= 0.93, (metric, score.coverage)
        assert by[("variant snips (normal)", metric)].coverage < 0.9
    assert 0.2 < results[0].extra["low_ess_share"] < 0.9  # thin rows exist, and are flagged


def test_dr_with_the_cross_fitted_model_beats_snips_where_context_matters() -> None:
    """200 logs of 3,000 decisions where the context sets the reward level and the best
    variant: DR with the cross-fitted context-aware model has the lowest error of all (paired,
    more than 2 standard errors below SNIPS), the context-free DR it replaced does not beat
    SNIPS, and DR's interval still covers."""
    out = simulate.ope_errors(200, 3000, seed=6)
    rmse = out.rmse
    assert rmse["dr"] < min(rmse["ips"], rmse["snips"], rmse["dr_context_free"]), rmse
    d = out.snips_minus_dr
    assert d.mean() > 2 * d.std(ddof=1) / np.sqrt(d.size)
    assert rmse["dr_context_free"] > rmse["snips"]
    assert within(out.coverage["dr"]), out.coverage["dr"].coverage
