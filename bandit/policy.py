"""The policy: choose a variant per page view, learn from a closed decision.

The logging policy is a mixture: with probability `holdout` the control variant is served
(`policy = "control"`), otherwise VW's exploration distribution is sampled (`policy = "bandit"`).
The probability logged for the chosen variant is its probability under that mixture, which is
what learning and off-policy estimates need:

    p(a | x) = holdout * [a is control] + (1 - holdout) * pmf_vw(a | x)

A workspace is not thread-safe: one `Policy` serves one thread (the API's event loop); the
consumer owns its own.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vowpalwabbit import pyvw

from bandit.features import Arm, ProductFeatures
from bandit.vw_format import to_vw


class BanditError(Exception):
    """Base of the bandit's errors."""


class ModelLoadError(BanditError):
    """A model snapshot could not be loaded."""


@dataclass(frozen=True, slots=True)
class Choice:
    """What the policy served: the chosen arm's index in the action set and its probability."""

    index: int
    variant_id: str
    probability: float
    pmf: tuple[float, ...]
    policy: str  # bandit | control | fallback
    model_version: int


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """A served decision as logged: enough to replay it into VW."""

    context: Mapping[str, object]
    product: ProductFeatures
    arms: tuple[Arm, ...]
    chosen: int
    probability: float


class Policy:
    """A VW `--cb_explore_adf` workspace with a holdout, its own seeded RNG and a version."""

    def __init__(
        self,
        vw_args: str,
        *,
        holdout: float = 0.0,
        seed: int = 0,
        model: bytes | None = None,
        version: int = 0,
    ) -> None:
        if not 0.0 <= holdout <= 1.0:
            raise ValueError(f"holdout must be in [0, 1], got {holdout}")
        if "--cb_explore_adf" not in vw_args.split():
            raise ValueError(f"vw_args must contain --cb_explore_adf, got {vw_args!r}")
        self.vw_args = vw_args
        self.holdout = holdout
        self.version = version
        # A plain `random.Random`: numpy's per-call overhead is larger than the work on 4-6 arms.
        self._rng = random.Random(seed)
        self._vw = _workspace(vw_args, model)

    # -- serving ---------------------------------------------------------------------------
    def choose(
        self,
        context: Mapping[str, object],
        product: ProductFeatures,
        arms: Sequence[Arm],
        control_index: int = 0,
        *,
        rendered_arms: Sequence[str] | None = None,
    ) -> Choice:
        """Pick one of `arms` for this page view. `arms[control_index]` is the original copy.

        `rendered_arms` is `vw_format.arm_lines(arms)`, when the caller keeps it (the API's
        catalog does): then only the shared line is built per call.
        """
        n = len(arms)
        if n == 0:
            raise ValueError("arms must not be empty")
        if not 0 <= control_index < n:
            raise ValueError(f"control_index must be in [0, {n}), got {control_index}")
        scores = self._vw.predict(to_vw(context, product, arms, rendered_arms=rendered_arms))
        total = float(sum(scores))
        vw_pmf = [float(p) / total for p in scores]
        keep = 1.0 - self.holdout
        pmf = [keep * p for p in vw_pmf]
        pmf[control_index] += self.holdout
        rng = self._rng
        if rng.random() < self.holdout:
            index, policy = control_index, "control"
        else:
            index, policy = _sample(vw_pmf, rng.random()), "bandit"
        return Choice(
            index=index,
            variant_id=arms[index].variant_id,
            probability=pmf[index],
            pmf=tuple(pmf),
            policy=policy,
            model_version=self.version,
        )

    def scores(
        self, context: Mapping[str, object], product: ProductFeatures, arms: Sequence[Arm]
    ) -> list[float]:
        """VW's exploration pmf over `arms`, without the holdout and without sampling."""
        return [float(p) for p in self._vw.predict(to_vw(context, product, arms))]

    # -- learning --------------------------------------------------------------------------
    def learn(self, logged: LoggedDecision, reward: float) -> None:
        """Teach VW one closed decision (cost = -reward, weighted by 1 / probability)."""
        if not 0.0 < logged.probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], got {logged.probability}")
        label = (logged.chosen, float(reward), float(logged.probability))
        self._vw.learn(to_vw(logged.context, logged.product, logged.arms, label))

    # -- persistence -----------------------------------------------------------------------
    def save(self) -> bytes:
        """The model's bytes (VW's binary format, with its learning state)."""
        fd, path = tempfile.mkstemp(prefix="copyloop-vw-")
        os.close(fd)
        try:
            self._vw.save(path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            os.unlink(path)

    def close(self) -> None:
        self._vw.finish()


def _sample(pmf: Sequence[float], u: float) -> int:
    """The index `i` with `cdf[i-1] <= u < cdf[i]` for `u` in [0, 1); the last index with mass
    when rounding leaves the cdf just below `u`.

    >>> _sample([0.2, 0.5, 0.3], 0.1), _sample([0.2, 0.5, 0.3], 0.2), _sample([0.2, 0.8, 0.0], 1.0)
    (0, 1, 1)
    """
    cumulative = 0.0
    for i, p in enumerate(pmf):
        cumulative += p
        if u < cumulative:
            return i
    return max(i for i, p in enumerate(pmf) if p > 0)


def _workspace(vw_args: str, model: bytes | None) -> pyvw.Workspace:
    if model is None:
        return pyvw.Workspace(f"{vw_args} --quiet")
    fd, path = tempfile.mkstemp(prefix="copyloop-vw-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(model)
        return pyvw.Workspace(f"{vw_args} --quiet -i {path}")
    except Exception as exc:  # VW raises bare RuntimeErrors on unreadable models
        raise ModelLoadError(f"cannot load model: {exc}") from exc
    finally:
        os.unlink(path)
