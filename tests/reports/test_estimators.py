"""Estimators on synthetic data whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from reports.estimators import ArmStats, ips, sample_ratio, snips, uplift


def test_uplift_interval_covers_truth_at_nominal_rate() -> None:
    """Over 400 seeded A/B tests with a true relative lift of +20%, the 95% interval of the
    relative lift covers it in 95% ± 3.3% (3 binomial sd at n=400 is 3.3%)."""
    rng = np.random.default_rng(11)
    p_c, p_t, n = 0.05, 0.06, 20000
    covered = 0
    for _ in range(400):
        c = int(rng.binomial(n, p_c))
        t = int(rng.binomial(n, p_t))
        u = uplift(ArmStats(n, t, t), ArmStats(n, c, c))
        assert u.ci_low is not None and u.ci_high is not None
        covered += u.ci_low <= p_t / p_c - 1 <= u.ci_high
    assert abs(covered / 400 - 0.95) <= 0.033


def test_uplift_without_control_signal_has_no_relative() -> None:
    u = uplift(ArmStats(100, 5, 5), ArmStats(100, 0, 0))
    assert u.relative is None and u.absolute == pytest.approx(0.05)


def test_uplift_p_value_uniform_under_null() -> None:
    rng = np.random.default_rng(5)
    ps = []
    for _ in range(300):
        a, b = rng.binomial(5000, 0.1, size=2)
        ps.append(uplift(ArmStats(5000, a, a), ArmStats(5000, b, b)).p_value)
    share = np.mean(np.asarray(ps) < 0.05)
    assert share <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300)


def test_sample_ratio_flags_only_real_mismatch() -> None:
    ok = sample_ratio(1020, 8980, 0.1)
    assert not ok.mismatch and ok.p_value is not None and ok.p_value > 0.001
    bad = sample_ratio(1300, 8700, 0.1)
    assert bad.mismatch and bad.observed_control_share == pytest.approx(0.13)


def test_ips_and_snips_recover_target_value() -> None:
    """Logging uniform over 3 arms with known means; target = always arm 2 (true value 0.3)."""
    rng = np.random.default_rng(3)
    n = 60000
    means = np.array([0.1, 0.2, 0.3])
    actions = rng.integers(3, size=n)
    rewards = (rng.random(n) < means[actions]).astype(float)
    logged = np.full(n, 1 / 3)
    target = (actions == 2).astype(float)
    for est in (ips(rewards, logged, target), snips(rewards, logged, target)):
        assert est.ci_low is not None and est.ci_high is not None
        assert est.ci_low <= 0.3 <= est.ci_high
        assert abs(est.value - 0.3) < 0.01
        assert est.ess == pytest.approx(n / 3, rel=0.02)


def test_ope_is_exact_when_target_equals_logging() -> None:
    rng = np.random.default_rng(4)
    r = rng.random(1000)
    p = rng.uniform(0.2, 1.0, size=1000)
    assert ips(r, p, p).value == pytest.approx(r.mean())
    assert snips(r, p, p).value == pytest.approx(r.mean())


def test_estimator_input_errors_are_exact() -> None:
    with pytest.raises(ValueError, match=r"logged probabilities must be > 0"):
        ips([1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match=r"shapes differ"):
        snips([1.0, 0.0], [0.5], [0.5])
