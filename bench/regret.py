"""Which VW explorer should be the default? Cumulative regret on a simulated storefront.

Runs the real `bandit.Policy` (VW `--cb_explore_adf`) against shoppers whose click probability
depends on (device, segment) × style, with delayed learning in batches as the consumer does
(windows close in bulk), and prints each explorer's regret against the oracle and the ratio to
the baseline (uniform random serving), averaged over seeds.

    python bench/regret.py --rounds 20000 --seeds 3 [--explorers="--squarecb;--epsilon 0.1"]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from bandit import Arm, LoggedDecision, Policy, ProductFeatures

STYLES = ("original", "concise", "bullets", "technical", "benefit", "story")
DEVICES = ("mobile", "desktop", "tablet")
SEGMENTS = ("new", "returning", "loyal")


@dataclass(frozen=True)
class World:
    """Click probabilities per (product, device, segment, style)."""

    base: np.ndarray  # (products,)
    taste: np.ndarray  # (devices, segments, styles)

    @classmethod
    def make(cls, rng: np.random.Generator, products: int) -> World:
        taste = rng.lognormal(0.0, 0.5, size=(len(DEVICES), len(SEGMENTS), len(STYLES)))
        taste[..., 0] = 1.0  # the original copy is the reference
        return cls(base=rng.uniform(0.03, 0.08, size=products), taste=taste)

    def p_click(self, product: int, device: int, segment: int) -> np.ndarray:
        return np.minimum(0.95, self.base[product] * self.taste[device, segment])


def run(explorer: str, rounds: int, seed: int, products: int = 40, batch: int = 200) -> float:
    """Mean regret per round of `explorer` (or "uniform") over `rounds` page views."""
    rng = np.random.default_rng(seed)
    world = World.make(rng, products)
    arms = [
        tuple(
            Arm.from_variant(f"p{p}-{s}", s * 20, s, "control" if s == "original" else "rules")
            for s in STYLES
        )
        for p in range(products)
    ]
    policy = None
    if explorer != "uniform":
        policy = Policy(f"--cb_explore_adf {explorer} -q UA -q UV -q PA", holdout=0.0, seed=seed)
    pending: list[tuple[LoggedDecision, float]] = []
    regret = 0.0
    for t in range(rounds):
        p, d, s = int(rng.integers(products)), int(rng.integers(3)), int(rng.integers(3))
        probs = world.p_click(p, d, s)
        context = {"device": DEVICES[d], "segment": SEGMENTS[s]}
        product = ProductFeatures(f"p{p}", f"c{p % 5}")
        if policy is None:
            index, prob = int(rng.integers(len(STYLES))), 1.0 / len(STYLES)
        else:
            choice = policy.choose(context, product, arms[p])
            index, prob = choice.index, choice.probability
        reward = float(rng.random() < probs[index])
        regret += float(probs.max() - probs[index])
        if policy is not None:
            pending.append((LoggedDecision(context, product, arms[p], index, prob), reward))
            if len(pending) >= batch or t == rounds - 1:
                for logged, r in pending:
                    policy.learn(logged, r)
                pending.clear()
    return regret / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--explorers",
        default="--epsilon 0.05;--epsilon 0.1;--epsilon 0.2;--squarecb;--softmax --lambda 10;"
        "--bag 5 --epsilon 0.05;--cover 3",
        help='VW explorer arguments separated by ";" (pass as --explorers="…")',
    )
    args = ap.parse_args()
    args.explorers = [e.strip() for e in args.explorers.split(";") if e.strip()]
    baseline = np.mean([run("uniform", args.rounds, seed) for seed in range(args.seeds)])
    print(
        f"rounds={args.rounds} seeds={args.seeds}; baseline uniform random: "
        f"regret/round {baseline:.5f}"
    )
    print(f"{'explorer':28} {'regret/round':>13} {'ratio to uniform':>17} {'s/run':>7}")
    for explorer in args.explorers:
        t0 = time.perf_counter()
        r = np.mean([run(explorer, args.rounds, seed) for seed in range(args.seeds)])
        dt = (time.perf_counter() - t0) / args.seeds
        print(f"{explorer:28} {r:13.5f} {r / baseline:17.3f} {dt:7.1f}")


if __name__ == "__main__":
    main()
