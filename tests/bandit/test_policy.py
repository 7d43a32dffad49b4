"""The policy's sampling: what it serves is distributed exactly as the mixture pmf it logs, and
the arm lines a server caches give the same VW input as rendering them per call."""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter

import pytest
from vowpalwabbit import pyvw

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


@pytest.mark.parametrize(
    "args",
    ["--cb_adf --squarecb -q UT --power_t 0 -l 0.05", "--cb_explore_adf --epsilon 0.1 -q UT"],
)
def test_the_pylibvw_path_learns_and_predicts_as_pyvw_does(args: str) -> None:
    """`Policy` calls VW's binding directly (no pyvw `Example` wrappers): the same examples
    through pyvw's public API give the same model and the same predictions."""
    policy = Policy(args, seed=1)
    reference = pyvw.Workspace(f"{policy.workspace_args} --quiet")
    try:
        for k in range(200):
            context = {**CONTEXT, "device": "mobile" if k % 3 else "desktop"}
            logged = LoggedDecision(context, PRODUCT, ARMS, k % len(ARMS), 0.25)
            reward = float(k % len(ARMS) == k % 2)
            policy.learn(logged, reward)
            probability = max(0.25, 1.0 / policy.importance_cap) if policy.explorer else 0.25
            label = (logged.chosen, reward, probability)
            reference.learn(to_vw(context, PRODUCT, ARMS, label))
        assert policy.vw_model() == _saved(reference)  # before predicting: it moves counters
        expected = reference.predict(to_vw(CONTEXT, PRODUCT, ARMS))
        if policy.explorer is not None:
            assert policy.costs(CONTEXT, PRODUCT, ARMS) == [
                float(c) - policy.offset(a.variant_id) for c, a in zip(expected, ARMS, strict=True)
            ]
        else:
            total = float(sum(expected))
            assert policy.scores(CONTEXT, PRODUCT, ARMS) == [float(p) / total for p in expected]
    finally:
        reference.finish()
        policy.close()


def _saved(workspace: pyvw.Workspace) -> bytes:
    fd, path = tempfile.mkstemp()
    os.close(fd)
    try:
        workspace.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)
