"""The policy's sampling: what it serves is distributed exactly as the mixture pmf it logs, and
the arm lines a server caches give the same VW input as rendering them per call."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from bandit import Arm, LoggedDecision, Policy, ProductFeatures
from bandit.vw_format import arm_lines, to_vw

ARMS = tuple(
    Arm(f"v{i}", style, "control" if i == 0 else "rules", "m", i % 3, i, "g1")
    for i, style in enumerate(["control", "concise", "bullets", "story", "technical"])
)
PRODUCT = ProductFeatures("p1", "lamps")
CONTEXT = {"device": "mobile", "segment": "loyal", "hour": "13"}


def trained_policy(holdout: float, seed: int = 7) -> Policy:
    """An epsilon-greedy policy taught that arm 2 pays: its pmf is far from uniform."""
    policy = Policy("--cb_explore_adf --epsilon 0.3 -q UA", holdout=holdout, seed=seed)
    for k in range(300):
        chosen = k % len(ARMS)
        logged = LoggedDecision(CONTEXT, PRODUCT, ARMS, chosen, 1.0 / len(ARMS))
        policy.learn(logged, 1.0 if chosen == 2 else 0.0)
    return policy


@pytest.mark.parametrize("holdout", [0.0, 0.2])
def test_sampled_frequencies_match_the_logged_mixture_pmf(holdout: float) -> None:
    policy = trained_policy(holdout)
    n = 20_000
    choices = [
        policy.choose(CONTEXT, PRODUCT, ARMS, 0, rendered_arms=arm_lines(ARMS)) for _ in range(n)
    ]
    pmf = choices[0].pmf
    assert all(c.pmf == pmf for c in choices)  # predicting does not move the model
    assert math.isclose(sum(pmf), 1.0, rel_tol=1e-9)
    assert max(pmf) > 0.5  # far from uniform, so a wrong sampler would show
    counts = Counter(c.index for c in choices)
    for i, p in enumerate(pmf):
        sd = math.sqrt(n * p * (1 - p))  # binomial; 5 sd: a false alarm ~ 1 in 1.7 million
        assert abs(counts[i] - n * p) <= 5 * sd + 1, (i, counts[i], n * p, sd)
    for c in choices[:200]:
        assert c.probability == pmf[c.index]
    served_control = sum(c.policy == "control" for c in choices)
    sd = math.sqrt(n * holdout * (1 - holdout))
    assert abs(served_control - n * holdout) <= 5 * sd + 1
    assert all(c.index == 0 for c in choices if c.policy == "control")


def test_equal_seeds_draw_equally_and_other_seeds_differently() -> None:
    a, b, c = trained_policy(0.2, seed=1), trained_policy(0.2, seed=1), trained_policy(0.2, seed=2)
    draw = lambda p: [p.choose(CONTEXT, PRODUCT, ARMS).index for _ in range(200)]  # noqa: E731
    first = draw(a)
    assert first == draw(b)
    assert first != draw(c)


def test_cached_arm_lines_give_the_same_example_as_rendering_them() -> None:
    rendered = arm_lines(ARMS)
    label = (3, 1.0, 0.25)
    assert to_vw(CONTEXT, PRODUCT, ARMS) == to_vw(CONTEXT, PRODUCT, ARMS, rendered_arms=rendered)
    assert to_vw(CONTEXT, PRODUCT, ARMS, label) == to_vw(
        CONTEXT, PRODUCT, ARMS, label, rendered_arms=rendered
    )
    assert to_vw(CONTEXT, PRODUCT, ARMS, label)[4].startswith("0:-1.0:0.25 |A ")
