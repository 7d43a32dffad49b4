"""The apprentice estimate by simulation with known truth: over 200 seeded apprentice-mode logs
(3,000 decisions, 10% exploring; rows as `queries.recent_logged` returns them),
the 95% intervals of live mode's value (DR) and of the uplift of switching cover the truth in
95% ± 3.5% of them (3.5% is 2.3 binomial standard deviations at 200), without visible bias."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from core.ledger.modes import Mode
from reports.apprentice import apprentice_block

#: Click rates of 3 variants (the control first) on 2 devices; the bandit's pmf per device.
THETA = np.array([[0.05, 0.12, 0.06], [0.08, 0.03, 0.11]])
BANDIT = np.array([[0.2, 0.6, 0.2], [0.25, 0.15, 0.6]])
EXPLORE, HOLDOUT, N = 0.1, 0.1, 3000
APPRENTICE = Mode("apprentice", EXPLORE, 0.0)


def truth(control_share: float) -> float:
    per_device = control_share * THETA[:, 0] + (1 - control_share) * (BANDIT * THETA).sum(axis=1)
    return float(per_device.mean())


def logs(seed: int) -> list[SimpleNamespace]:
    rng = np.random.default_rng(seed)
    device = rng.integers(2, size=N)
    pmf = EXPLORE * BANDIT[device]
    pmf[:, 0] += 1 - EXPLORE
    explores = rng.random(N) < EXPLORE
    sampled = (rng.random((N, 1)) > np.cumsum(BANDIT[device], axis=1)).sum(axis=1).clip(0, 2)
    chosen = np.where(explores, sampled, 0)
    clicked = rng.random(N) < THETA[device, chosen]
    actions = ["v0", "v1", "v2"]
    return [
        SimpleNamespace(
            ts=1.0 + i,
            policy="bandit" if explores[i] else "control",
            variant_id=actions[chosen[i]],
            actions=actions,
            pmf=[float(p) for p in pmf[i]],
            probability=float(pmf[i, chosen[i]]),
            clicked=int(clicked[i]),
            purchased=0,
            revenue=0.0,
            context={"device": ("mobile", "desktop")[device[i]]},
        )
        for i in range(N)
    ]


def test_live_value_and_switching_uplift_cover_the_truth() -> None:
    live_truth = truth(HOLDOUT)
    gain_truth = live_truth - truth(1 - EXPLORE)
    covered = {"live": 0, "gain": 0}
    errors = []
    seeds = 200
    for seed in range(seeds):
        block = apprentice_block(logs(seed), [APPRENTICE], APPRENTICE, HOLDOUT)
        ctr = block["metrics"]["ctr"]
        live, gain = ctr["live"]["dr"], ctr["uplift"]
        covered["live"] += live["ci_low"] <= live_truth <= live["ci_high"]
        covered["gain"] += gain["ci_low"] <= gain_truth <= gain["ci_high"]
        errors.append(live["value"] - live_truth)
    print(f"coverage over {seeds} logs: {covered}, mean error {np.mean(errors):+.5f}")
    for name, hits in covered.items():
        assert abs(hits / seeds - 0.95) <= 0.035, (name, hits / seeds)
    assert abs(np.mean(errors)) < 3 * np.std(errors) / np.sqrt(seeds)
