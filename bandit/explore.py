"""Exploration that copyloop does itself, over VW's cost regression, with exact probabilities.

Why not VW's own `--cb_explore_adf --squarecb`: there, the regression behind the explorer is
`cb_type mtr`, which weights the served action's update by 1/p. A variant served with p = 0.02
then moves the model 50 times as far as one served greedily; on click-rate rewards that noise
dominates what the model learns (`bench/learning.py`: VW's squarecb at 0.80 of the oracle where
the same explorer over an unweighted regression reaches the table in BENCHMARKS.md). SquareCB's
own analysis (Foster & Rakhlin 2020, "Beyond UCB: Optimal and Efficient Contextual Bandits with
Regression Oracles") assumes an *unweighted* square-loss regression oracle, so copyloop runs VW
as that oracle (`--cb_adf --cb_type dm`: a direct-method regression of each served action's
cost) and draws from the inverse-gap-weighted distribution itself:

    p(a) = 1 / (K + γ · (ŷ(a) − ŷ(a*)))   for a ≠ a* = argmin ŷ,   p(a*) = 1 − Σ_{a≠a*} p(a)

with costs ŷ in reward units and γ = gamma_scale · n^gamma_exponent, n the decisions the model
has learned (VW's own schedule). `--epsilon ε` is ε-greedy over the same regression.

New copy gets a fair trial (`FairTrial`): a variant that arrived after its siblings and that
the model has seen served far fewer times than them gets a floor of probability (`floor` when it
was never served, shrinking as its exposure grows), taken proportionally from the others, so
that its own results can tell it apart from its look-alikes; meanwhile the policy learns its
own effect (`Policy.offset`). Every probability logged is the one sampled from, so off-policy
estimates stay exact.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

#: The flags copyloop's explorers take; any other explorer flag runs inside VW.
OWN_FLAGS = frozenset({"--squarecb", "--gamma_scale", "--gamma_exponent", "--epsilon"})
#: VW's explorer flags (for `--cb_explore_adf`); told apart from the model's own arguments.
VW_EXPLORER_FLAGS = frozenset(
    {
        "--squarecb",
        "--gamma_scale",
        "--gamma_exponent",
        "--epsilon",
        "--first",
        "--bag",
        "--cover",
        "--softmax",
        "--lambda",
        "--regcb",
        "--regcbopt",
        "--mellowness",
        "--elim",
        "--synthcover",
        "--psi",
        "--nounif",
        "--greedify",
        "--first_only",
        "--rnd",
    }
)


@dataclass(frozen=True, slots=True)
class InverseGap:
    """SquareCB's inverse gap weighting with γ = gamma_scale · learned^gamma_exponent."""

    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5

    def __post_init__(self) -> None:
        if self.gamma_scale <= 0:
            raise ValueError(f"gamma_scale must be > 0, got {self.gamma_scale}")
        if not 0.0 <= self.gamma_exponent <= 1.0:
            raise ValueError(f"gamma_exponent must be in [0, 1], got {self.gamma_exponent}")

    def pmf(self, costs: Sequence[float], learned: int) -> list[float]:
        """
        >>> [round(p, 3) for p in InverseGap(10.0, 0.5).pmf([0.0, -0.1, -0.05], learned=100)]
        [0.077, 0.798, 0.125]
        """
        gamma = self.gamma_scale * max(learned, 1) ** self.gamma_exponent
        k = len(costs)
        best = min(range(k), key=costs.__getitem__)
        pmf = [1.0 / (k + gamma * (c - costs[best])) for c in costs]
        pmf[best] = 0.0
        pmf[best] = 1.0 - sum(pmf)
        return pmf


@dataclass(frozen=True, slots=True)
class EpsilonGreedy:
    """The lowest cost with 1 − ε (ties share it), every action ε / K."""

    epsilon: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")

    def pmf(self, costs: Sequence[float], learned: int) -> list[float]:
        """
        >>> [round(p, 3) for p in EpsilonGreedy(0.1).pmf([0.0, -0.2, -0.2, 0.1], learned=0)]
        [0.025, 0.475, 0.475, 0.025]
        """
        k = len(costs)
        low = min(costs)
        ties = [c == low for c in costs]
        n = sum(ties)
        return [self.epsilon / k + ((1.0 - self.epsilon) / n if t else 0.0) for t in ties]


Explorer = InverseGap | EpsilonGreedy


class TrialSettings(Protocol):
    """The settings a `FairTrial` is made from (`core.settings.Settings` has them)."""

    bandit_new_arm_exposure: int
    bandit_new_arm_floor: float
    bandit_new_arm_behind: float


@dataclass(frozen=True, slots=True)
class FairTrial:
    """A floor for new copy: a variant that arrived late (its siblings were offered in
    decisions the model learned before it was) and is far behind them in exposure (served fewer
    times than `behind` × their mean, and fewer than `exposure`) gets `floor` when never served,
    shrinking linearly to nothing as it catches up with min(`behind` × siblings' mean,
    `exposure`) (by then its own results speak for it: `Policy.offset`).

    Arriving late tells new copy from copy the explorer rightly serves less: a poor variant on
    the page since its siblings were has had every chance, and lifting it again would only
    spend traffic on what is known to lose. Measured with bench/learning.py (5 seeds): on the
    context × text scenario (every variant there from the start) 0.83 of the oracle with the
    floor aimed at the siblings' mean and 0.87–0.88 with `behind` 0.25, 0.15 or 0.1 when the
    floor did not ask when a variant arrived; on new variants, 2×-better new copy took 95 % of
    its product's traffic with `behind` 0.15 and 58 % without a floor (BENCHMARKS.md). Variants
    of a product that is young as a whole need no floor: the explorer already spreads over
    them. So the extra exploration is at most about `exposure` decisions per late variant."""

    exposure: int = 60
    floor: float = 0.2
    max_total: float = 0.5
    behind: float = 0.15

    def __post_init__(self) -> None:
        if self.exposure < 0:
            raise ValueError(f"exposure must be >= 0, got {self.exposure}")
        if not 0.0 <= self.floor < 1.0:
            raise ValueError(f"floor must be in [0, 1), got {self.floor}")
        if not 0.0 <= self.max_total < 1.0:
            raise ValueError(f"max_total must be in [0, 1), got {self.max_total}")
        if not 0.0 < self.behind <= 1.0:
            raise ValueError(f"behind must be in (0, 1], got {self.behind}")

    @classmethod
    def of(cls, settings: TrialSettings) -> FairTrial | None:
        """The settings' trial for new copy (None when switched off), the same in the API, the
        learner and the simulator."""
        if settings.bandit_new_arm_exposure == 0 or settings.bandit_new_arm_floor == 0.0:
            return None
        return cls(
            settings.bandit_new_arm_exposure,
            settings.bandit_new_arm_floor,
            behind=settings.bandit_new_arm_behind,
        )

    def floors(self, exposures: Sequence[int], offered: Sequence[int]) -> list[float]:
        """Each arm's floor (0 for seasoned ones); together at most `max_total`. `exposures`:
        how often the model learned each arm served; `offered`: in how many learned decisions
        it could have been.

        >>> FairTrial(100, 0.2).floors([0, 50, 400, 400], [0, 850, 850, 850])  # 50: not far behind
        [0.2, 0.0, 0.0, 0.0]
        >>> FairTrial(100, 0.2).floors([30, 400, 400], [100, 830, 830])  # late, far behind: a lift
        [0.1, 0.0, 0.0]
        >>> FairTrial(100, 0.2).floors([30, 400, 400], [830, 830, 830])  # there all along
        [0.0, 0.0, 0.0]
        >>> FairTrial(100, 0.2).floors([0, 30, 30], [0, 60, 60])  # siblings not yet seasoned
        [0.2, 0.0, 0.0]
        >>> FairTrial(100, 0.2).floors([0, 0, 0], [0, 0, 0])  # a young product
        [0.0, 0.0, 0.0]
        """
        k = len(exposures)
        total_n, total_offered = sum(exposures), sum(offered)
        raw = []
        for n, o in zip(exposures, offered, strict=True):
            mean = (total_n - n) / (k - 1) if k > 1 else 0.0
            late = k > 1 and (total_offered - o) / (k - 1) - o >= 1.0
            target = min(float(self.exposure), self.behind * mean)
            raw.append(self.floor * (1.0 - n / target) if late and n < target else 0.0)
        total = sum(raw)
        if total > self.max_total:
            raw = [f * self.max_total / total for f in raw]
        return raw

    def apply(
        self, pmf: Sequence[float], exposures: Sequence[int], offered: Sequence[int]
    ) -> list[float]:
        """`pmf` with each new arm lifted by its floor, the mass taken proportionally from
        every arm: p'(a) = (1 − Σ f) · p(a) + f(a). Unchanged when every arm is on trial (the
        explorer already spreads over them) or none is.

        >>> trial = FairTrial(100, 0.2)
        >>> [round(p, 3) for p in trial.apply([0.9, 0.05, 0.05], [500, 0, 50], [600, 0, 600])]
        [0.72, 0.24, 0.04]
        >>> trial.apply([0.9, 0.1], [500, 300], [800, 800])
        [0.9, 0.1]
        """
        if self.floor == 0.0 or self.exposure == 0:
            return list(pmf)
        return self.lift(pmf, self.floors(exposures, offered))

    @staticmethod
    def lift(pmf: Sequence[float], floors: Sequence[float]) -> list[float]:
        """`apply` with the arms' `floors` worked out already.

        >>> FairTrial.lift([0.5, 0.5], [0.2, 0.0]), FairTrial.lift([0.5, 0.5], [0.2, 0.2])
        ([0.6000000000000001, 0.4], [0.5, 0.5])
        """
        total = sum(floors)
        if total == 0.0 or all(f > 0 for f in floors):
            return list(pmf)
        return [(1.0 - total) * p + f for p, f in zip(pmf, floors, strict=True)]


def parse_explorer(spec: str) -> Explorer | None:
    """copyloop's explorer for a spec of `OWN_FLAGS`, or None when the spec is VW's.

    >>> parse_explorer("--squarecb --gamma_scale 20")
    InverseGap(gamma_scale=20.0, gamma_exponent=0.5)
    >>> parse_explorer("--epsilon 0.05"), parse_explorer("--bag 5 --epsilon 0.05")
    (EpsilonGreedy(epsilon=0.05), None)
    """
    tokens = shlex.split(spec)
    flags = [t for t in tokens if t.startswith("--")]
    if not flags or any(f not in OWN_FLAGS for f in flags):
        return None
    values = _values(tokens)
    if "--squarecb" in values:
        return InverseGap(
            float(values.get("--gamma_scale") or 10.0),
            float(values.get("--gamma_exponent") or 0.5),
        )
    if "--epsilon" in values:
        return EpsilonGreedy(float(values["--epsilon"] or 0.05))
    return None


def split_args(args: str) -> tuple[str, str]:
    """`(explorer, rest)`: the explorer flags (with their values) and the model's arguments.

    >>> split_args("--cb_adf --squarecb --gamma_scale 5 -q UA --power_t 0")
    ('--squarecb --gamma_scale 5', '--cb_adf -q UA --power_t 0')
    """
    tokens = shlex.split(args)
    explorer: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in VW_EXPLORER_FLAGS:
            explorer.append(t)
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                explorer.append(tokens[i + 1])
                i += 1
        else:
            rest.append(t)
        i += 1
    return " ".join(explorer), " ".join(rest)


def _values(tokens: Sequence[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, t in enumerate(tokens):
        if t.startswith("--"):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            out[t] = nxt if nxt is not None and not nxt.startswith("--") else None
    return out
