"""Off-policy estimators and the counterfactual panel on synthetic logs whose true policy values
are known: interval coverage over many seeded experiments, exactness where the target is the
logging policy, and support warnings."""

from __future__ import annotations

import numpy as np
import pytest

from reports.estimators import ESTIMATORS, LoggedBandit, dr, ratio_snips, snips
from reports.ope import (
    LoggedDecisionRow,
    SupportRules,
    counterfactual_panel,
    support_warning,
)

#: Click rates θ[x, a] of 3 actions in 2 contexts (x drawn with P(x=1) = 0.4).
THETA = np.array([[0.05, 0.12, 0.08], [0.15, 0.04, 0.10]])
P_X1 = 0.4
#: Logging policy μ(a|x): holdout-like mass on action 0 plus a context-dependent preference.
MU = np.array([[0.40, 0.35, 0.25], [0.30, 0.20, 0.50]])
#: Target policy π(a|x): a different, stochastic policy.
PI = np.array([[0.10, 0.80, 0.10], [0.70, 0.10, 0.20]])


def true_value(pi: np.ndarray) -> float:
    return float((1 - P_X1) * pi[0] @ THETA[0] + P_X1 * pi[1] @ THETA[1])


def simulate(rng: np.random.Generator, n: int, pi: np.ndarray) -> LoggedBandit:
    """n logged decisions under MU, with the target's probability of each logged action and a
    deliberately wrong (context-free) reward model for DR."""
    x = (rng.random(n) < P_X1).astype(int)
    u = rng.random(n)
    a = (u[:, None] > np.cumsum(MU[x], axis=1)).sum(axis=1).clip(0, 2)
    r = (rng.random(n) < THETA[x, a]).astype(float)
    q = np.array([0.09, 0.09, 0.09])  # a constant model: DR must still be unbiased
    return LoggedBandit(
        rewards=r,
        logged_p=MU[x, a],
        target_p=pi[x, a],
        q_logged=q[a],
        q_target=pi[x] @ q,
    )


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_interval_coverage_over_seeded_experiments(name: str) -> None:
    """400 seeded experiments of 6,000 decisions: the 95% interval covers the true value of
    the target in 95% ± 3% of them (3% is 2.75 binomial standard deviations at n = 400)."""
    truth = true_value(PI)
    estimator = ESTIMATORS[name]
    covered, errors = 0, []
    for seed in range(400):
        est = estimator(simulate(np.random.default_rng(1000 + seed), 6000, PI))
        assert est.value is not None and est.ci_low is not None and est.ci_high is not None
        covered += est.ci_low <= truth <= est.ci_high
        errors.append(est.value - truth)
    assert abs(covered / 400 - 0.95) <= 0.03, covered / 400
    assert abs(np.mean(errors)) < 3 * np.std(errors) / np.sqrt(400)  # no visible bias


def test_error_is_zero_when_target_equals_logging() -> None:
    """Target = logging: IPS and SNIPS return the sample mean exactly; DR its expectation
    (error ≪ the interval), and all are near the logging policy's true value."""
    rng = np.random.default_rng(9)
    data = simulate(rng, 20000, MU)
    mean = float(data.rewards.mean())
    for name, estimator in ESTIMATORS.items():
        est = estimator(data)
        assert est.value is not None and est.ci_low is not None and est.ci_high is not None
        if name == "dr":
            assert abs(est.value - mean) < 0.05 * (est.ci_high - est.ci_low)
        else:
            assert est.value == pytest.approx(mean, abs=1e-12)
            assert est.ess == pytest.approx(20000)
        assert est.ci_low <= true_value(MU) <= est.ci_high


def test_ratio_snips_equals_snips_of_always_that_action() -> None:
    rng = np.random.default_rng(2)
    data = simulate(rng, 5000, MU)
    always_1 = (data.logged_p == MU[0, 1]) | (data.logged_p == MU[1, 1])  # served action 1
    target = always_1.astype(float)
    ref = snips(data.rewards, data.logged_p, target)
    w = target / data.logged_p
    r = data.rewards
    est = ratio_snips(w.sum(), (w * r).sum(), (w * w).sum())
    assert est.value == pytest.approx(ref.value)
    assert est.ess == pytest.approx(ref.ess)
    # With thousands of decisions the score interval is close to the normal one (it differs
    # where events are few; `test_coverage.py` shows which one holds there).
    assert est.ci_low is not None and est.ci_high is not None
    assert ref.ci_low is not None and ref.ci_high is not None
    assert est.ci_low < est.value < est.ci_high
    width, ref_width = est.ci_high - est.ci_low, ref.ci_high - ref.ci_low
    assert 0.8 < width / ref_width < 1.25


def test_estimator_errors_are_exact() -> None:
    with pytest.raises(ValueError, match=r"^dr needs q_logged and q_target \(a reward model\)$"):
        dr(LoggedBandit.of([1.0], [0.5], [1.0]))
    with pytest.raises(ValueError, match=r"^shapes differ: rewards \(2,\), q_logged \(1,\)$"):
        LoggedBandit.of([1.0, 0.0], [0.5, 0.5], [1.0, 0.0], [0.1], [0.1, 0.1])
    with pytest.raises(ValueError, match=r"^logged probabilities must be > 0$"):
        LoggedBandit.of([1.0], [0.0], [1.0])


def _rows(n: int, pmf: tuple[float, ...]) -> list[LoggedDecisionRow]:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        chosen = int(rng.choice(len(pmf), p=pmf))
        out.append(
            LoggedDecisionRow(
                actions=tuple(f"v{i}" for i in range(len(pmf))),
                pmf=pmf,
                chosen=chosen,
                probability=pmf[chosen],
                outcome=(float(rng.random() < 0.1), 0.0, 0.0),
            )
        )
    return out


def test_panel_warns_when_support_is_thin() -> None:
    """The greedy target always picks an action logged with probability 0.005: most of its
    mass is unsupported and its ESS collapses, so it is flagged; live and uniform are not."""
    rows = _rows(3000, (0.6, 0.395, 0.005))
    panel = counterfactual_panel(rows, [2] * len(rows), "test model")
    greedy = panel["policies"]["greedy"]
    assert greedy["warning"] is not None and greedy["warning"].startswith("thin support: ")
    assert "100% of its choices go to variants" in greedy["warning"]
    assert panel["policies"]["live"]["warning"] is None
    assert panel["policies"]["uniform"]["unsupported_mass"] == pytest.approx(1 / 3)
    assert panel["policies"]["control"]["warning"] is None
    assert greedy["note"] == "test model"


def test_panel_without_a_model_says_so() -> None:
    panel = counterfactual_panel(_rows(10, (0.5, 0.5)), None, "no model snapshot yet")
    assert panel["policies"]["greedy"] == {
        "label": "greedy current model (a snapshot, no exploration, on decisions it did not learn)",
        "available": False,
        "note": "no model snapshot yet",
    }


def test_support_warning_messages_are_pinned() -> None:
    rules = SupportRules()
    assert support_warning(1000, 900.0, 0.0, rules) is None
    assert support_warning(0, 0.0, 0.0, rules) == "no logged decisions to evaluate this policy on"
    assert support_warning(50000, 300.0, 0.2, rules) == (
        "thin support: effective sample size 300 of 50000 decisions (below 500); 20% of its "
        "choices go to variants the logging policy played with probability below 0.01; "
        "intervals are unreliable"
    )
