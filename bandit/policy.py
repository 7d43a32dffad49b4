"""The policy: choose a variant per page view, learn from a closed decision.

The logging policy is a mixture: with probability `holdout` the control variant is served
(`policy = "control"`), otherwise the bandit's exploration distribution is sampled
(`policy = "bandit"`). The probability logged for the chosen variant is its probability under
that mixture, which is what learning and off-policy estimates need:

    p(a | x) = holdout * [a is control] + (1 - holdout) * pmf(a | x)

`pmf` comes from one of two places, by the model's arguments:

- `--cb_adf …` (the default): VW regresses each action's cost (`cb_type dm`) and copyloop's
  explorer (`bandit.explore`: `--squarecb` inverse gap weighting or `--epsilon`, named among
  the arguments) turns the costs into probabilities;
- `--cb_explore_adf …`: VW's own explorer (`--bag`, `--cover`, `--softmax`, …) gives them.

Either way a `FairTrial` may lift variants the model has seen served few times (new copy) to a
floor. The model file (`bandit.model_file`) carries the arguments, the count of decisions
learned and each variant's exposure, so a snapshot alone determines what is served.

A workspace is not thread-safe: one `Policy` serves one thread (the API's event loop); the
consumer owns its own.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar, cast

import pylibvw
from vowpalwabbit import pyvw

from bandit.explore import Explorer, FairTrial, InverseGap, parse_explorer, split_args
from bandit.features import Arm, ProductFeatures
from bandit.model_file import FEATURES_VERSION, Counts, ModelHeader, pack, unpack
from bandit.vw_format import to_vw

V = TypeVar("V")

#: About how many of a variant's newest decisions its own effect rests on (`Policy.offset`).
RESIDUAL_HORIZON = 300.0
_KEEP = 1.0 - 1.0 / RESIDUAL_HORIZON
#: The prior on a variant's residual variance in `Policy.offset`: this many pseudo-decisions of
#: a Bernoulli's largest variance.
_PSEUDO_N, _PSEUDO_VARIANCE = 4.0, 0.25
#: Action sets whose own effects and floors a `Policy` keeps (`Policy._arm_terms`): more than a
#: catalog's products, a bound on memory.
_MAX_TERMS = 65_536


class BanditError(Exception):
    """Base of the bandit's errors."""


class ModelLoadError(BanditError):
    """A model snapshot could not be loaded."""


class ModelMismatchError(ModelLoadError):
    """A model file was written with other arguments or feature definitions than asked for."""


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
    """A VW contextual-bandit model with an explorer, a holdout, its own seeded RNG, a version,
    and the counts its explorer and fair trial read (decisions learned, exposure per variant)."""

    def __init__(
        self,
        vw_args: str,
        *,
        holdout: float = 0.0,
        seed: int = 0,
        model: bytes | None = None,
        version: int = 0,
        fair_trial: FairTrial | None = None,
        own_effect_z: float = 3.0,
        importance_cap: float = 1.0,
        previous: Policy | None = None,
    ) -> None:
        """`previous`: a policy loaded before from a file this `model` continues (the serving
        model this snapshot replaces): its file's counts are reused where they did not change
        (`model_file.unpack`), the same counts as without it, read faster."""
        if not 0.0 <= holdout <= 1.0:
            raise ValueError(f"holdout must be in [0, 1], got {holdout}")
        flags = vw_args.split()
        if "--cb_explore_adf" not in flags and "--cb_adf" not in flags:
            raise ValueError(f"vw_args must contain --cb_adf or --cb_explore_adf, got {vw_args!r}")
        self.vw_args = vw_args
        self.holdout = holdout
        self.version = version
        self.fair_trial = fair_trial
        if own_effect_z < 0:
            raise ValueError(f"own_effect_z must be >= 0, got {own_effect_z}")
        self.own_effect_z = own_effect_z
        if importance_cap < 1.0:
            raise ValueError(f"importance_cap must be >= 1, got {importance_cap}")
        # With copyloop's explorers VW regresses the served action's cost, unweighted by default
        # (`cb_type dm`), or weighted by 1/p capped at `importance_cap` (`cb_type mtr`): the
        # unweighted fit is biased against variants exploitation serves rarely (it adapts slowly
        # when tastes drift); the uncapped 1/p is unbiased but a click at p = 0.02 swings the
        # model 50-fold. bench/learning.py measured both (BENCHMARKS.md).
        self.importance_cap = importance_cap
        self.explorer: Explorer | None = None
        workspace_args = vw_args
        if "--cb_adf" in flags:
            spec, rest = split_args(vw_args)
            self.explorer = parse_explorer(spec) if spec else InverseGap()
            if self.explorer is None:
                raise ValueError(
                    f"{spec!r} is not one of copyloop's explorers (--squarecb, --epsilon); "
                    "VW's other explorers need --cb_explore_adf"
                )
            # Unweighted (`dm`) unless a cap above 1 asks for capped 1/p weights (`mtr`).
            cb_type = "dm" if importance_cap == 1.0 else "mtr"
            workspace_args = rest if "--cb_type" in rest.split() else f"{rest} --cb_type {cb_type}"
        before = previous.header if previous is not None else None
        header, vw_model = (None, None) if model is None else _unpack(model, before)
        # what the file said (its counts as read, not as learned since): the next load's base
        self.header: ModelHeader | None = header
        if header is not None and header.features != FEATURES_VERSION:
            raise ModelMismatchError(
                f"the model was trained on feature definitions v{header.features}, this copyloop "
                f"writes v{FEATURES_VERSION}"
            )
        self.learned = 0 if header is None else header.learned
        # the first version whose decisions this model learns (0: all; `ModelHeader`)
        self.learns_from = 0 if header is None else header.learns_from
        # The counts below are the file's own (read-only views: a serving model never learns)
        # until the policy first learns; then they become its dicts (`_own_counts`).
        # variant id → how many learned decisions served it
        self.exposure: Mapping[str, int] = {} if header is None else header.exposure
        # variant id → how many learned decisions offered it (served or not): new copy is copy
        # offered in fewer decisions than its siblings (`FairTrial`)
        self.offered: Mapping[str, int] = {} if header is None else header.offered
        # variant id → (Σ residual, Σ residual², Σ weight) of its learned decisions, each
        # older one weighted down so that about `RESIDUAL_HORIZON` of the newest count
        self.residual: Mapping[str, tuple[float, float, float]] = (
            {} if header is None else header.residual
        )
        # action set (variant ids) → each arm's own effect (`offset`; None with VW's explorers)
        # and fair-trial floor (None without a trial): they move only when the model learns
        self._terms: dict[tuple[str, ...], tuple[list[float] | None, list[float] | None]] = {}
        # A plain `random.Random`: numpy's per-call overhead is larger than the work on 4-6 arms.
        self._rng = random.Random(seed)
        self.workspace_args = workspace_args  # what VW itself was given (`bandit.importance`)
        self._vw = _workspace(workspace_args, vw_model)

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
        vw_pmf = self._pmf(to_vw(context, product, arms, rendered_arms=rendered_arms), arms)
        holdout = self.holdout  # read once: the API's reloader may change it (apprentice mode)
        keep = 1.0 - holdout
        pmf = [keep * p for p in vw_pmf]
        pmf[control_index] += holdout
        rng = self._rng
        if rng.random() < holdout:
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
        self,
        context: Mapping[str, object],
        product: ProductFeatures,
        arms: Sequence[Arm],
        *,
        rendered_arms: Sequence[str] | None = None,
    ) -> list[float]:
        """The exploration pmf over `arms`, without the holdout and without sampling
        (`rendered_arms` as in `choose`)."""
        return self._pmf(to_vw(context, product, arms, rendered_arms=rendered_arms), arms)

    def costs(
        self, context: Mapping[str, object], product: ProductFeatures, arms: Sequence[Arm]
    ) -> list[float] | None:
        """The regression's predicted cost (−reward) of each arm; None when VW explores itself
        (its predictions are then probabilities)."""
        if self.explorer is None:
            return None
        predicted = _predict_multi(self._vw, "\n".join(to_vw(context, product, arms)))
        return [float(c) - self.offset(a.variant_id) for c, a in zip(predicted, arms, strict=True)]

    def _pmf(self, lines: list[str], arms: Sequence[Arm]) -> list[float]:
        predicted = _predict_multi(self._vw, "\n".join(lines))
        offsets, floors = self._arm_terms(arms)
        if offsets is None or self.explorer is None:
            total = float(sum(predicted))
            pmf = [float(p) / total for p in predicted]
        else:
            costs = [float(c) - o for c, o in zip(predicted, offsets, strict=True)]
            pmf = self.explorer.pmf(costs, self.learned)
        if floors is not None:
            pmf = FairTrial.lift(pmf, floors)
        return pmf

    def _arm_terms(self, arms: Sequence[Arm]) -> tuple[list[float] | None, list[float] | None]:
        """Each arm's own effect (`offset`; None with VW's own explorers) and fair-trial floor
        (None without a trial), kept per action set until the model learns again: a serving
        model never does, and working them out per page view cost ~15 % of `choose`."""
        key = tuple(a.variant_id for a in arms)
        terms = self._terms.get(key)
        if terms is None:
            offsets = None if self.explorer is None else [self.offset(v) for v in key]
            trial = self.fair_trial
            floors = None if trial is None else trial.floors(*self._counts(arms))
            if len(self._terms) >= _MAX_TERMS:
                self._terms.clear()
            terms = self._terms[key] = (offsets, floors)
        return terms

    def _counts(self, arms: Sequence[Arm]) -> tuple[list[int], list[int]]:
        """Each arm's exposure and how many learned decisions offered it (`FairTrial`)."""
        exposure, offered = self.exposure, self.offered
        ids = [a.variant_id for a in arms]
        return [exposure.get(v, 0) for v in ids], [offered.get(v, 0) for v in ids]

    # -- learning --------------------------------------------------------------------------
    def learn(
        self,
        logged: LoggedDecision,
        reward: float,
        *,
        rendered_arms: Sequence[str] | None = None,
        shadows: Sequence[Explorer] = (),
    ) -> list[list[float]]:
        """Teach VW one closed decision (cost = −reward), and count it for the served variant:
        its exposure, and (with copyloop's explorers) the residual of its reward against what
        the model predicted for it before this update.

        Returns, per explorer in `shadows`, the distribution it would have drawn from over the
        decision's arms with the model as it was just before this update (its costs, own
        effects, counts and fair trial; no holdout): progressive validation of explorers that
        share this model's regression. Empty without `shadows` or with VW's own explorer."""
        if not 0.0 < logged.probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], got {logged.probability}")
        probability = float(logged.probability)
        if self.explorer is not None:  # the regression's weight 1/p, capped (see __init__)
            probability = max(probability, 1.0 / self.importance_cap)
        label = (logged.chosen, float(reward), probability)
        lines = to_vw(
            logged.context, logged.product, logged.arms, label, rendered_arms=rendered_arms
        )
        predicted = _learn_multi(self._vw, "\n".join(lines))
        shadow_pmfs: list[list[float]] = []
        if shadows and self.explorer is not None:  # before the counts below move
            costs = [
                float(c) - self.offset(a.variant_id)
                for c, a in zip(predicted, logged.arms, strict=True)
            ]
            counts = self._counts(logged.arms)
            for explorer in shadows:
                pmf = explorer.pmf(costs, self.learned)
                if self.fair_trial is not None:
                    pmf = self.fair_trial.apply(pmf, *counts)
                shadow_pmfs.append(pmf)
        self.learned += 1
        if self._terms:
            self._terms.clear()
        exposure, offered, residuals = self._own_counts()
        served = logged.arms[logged.chosen].variant_id
        exposure[served] = exposure.get(served, 0) + 1
        for arm in logged.arms:
            offered[arm.variant_id] = offered.get(arm.variant_id, 0) + 1
        if self.explorer is not None:  # predicted: each action's cost before the update
            residual = float(reward) + float(predicted[logged.chosen])
            total, squares, weight = residuals.get(served, (0.0, 0.0, 0.0))
            keep = _KEEP if weight >= RESIDUAL_HORIZON else 1.0  # tastes drift: forget slowly
            residuals[served] = (
                keep * total + residual,
                keep * squares + residual * residual,
                keep * weight + 1.0,
            )
        return shadow_pmfs

    def _own_counts(
        self,
    ) -> tuple[dict[str, int], dict[str, int], dict[str, tuple[float, float, float]]]:
        """The counts as this policy's own dicts, copied from the file's views the first time."""
        if type(self.exposure) is not dict:
            self.exposure = _as_dict(self.exposure)
        if type(self.offered) is not dict:
            self.offered = _as_dict(self.offered)
        if type(self.residual) is not dict:
            self.residual = _as_dict(self.residual)
        return (
            cast(dict[str, int], self.exposure),
            cast(dict[str, int], self.offered),
            cast(dict[str, tuple[float, float, float]], self.residual),
        )

    def offset(self, variant_id: str) -> float:
        """The variant's own effect in reward units: what its results say beyond what its
        features predict, counted only as far as the evidence carries it.

        With m the mean of its residuals over its n newest decisions (older ones fade once there
        are `RESIDUAL_HORIZON` of them, so a variant whose appeal changes is re-judged) and
        se² = s² / n their squared
        standard error (s² their variance, with 4 pseudo-observations of variance 0.25, a
        Bernoulli's largest, so that a handful of decisions cannot look certain), the effect is
        m shrunk toward 0 by the positive-part James–Stein factor
        max(0, 1 − z²·se²/m²): nothing until the variant is `own_effect_z` standard errors away
        from its look-alikes, most of m once it is well past that. A variant that beats its
        look-alikes shows it in tens of decisions; noise around them is not chased.
        """
        total, squares, n = self.residual.get(variant_id, (0.0, 0.0, 0.0))
        if n < 2:
            return 0.0
        mean = total / n
        variance = max(
            (squares + _PSEUDO_N * _PSEUDO_VARIANCE) / (n + _PSEUDO_N) - mean * mean, 1e-4
        )
        if mean == 0.0:
            return 0.0
        factor = 1.0 - self.own_effect_z**2 * variance / (n * mean * mean)
        return mean * factor if factor > 0.0 else 0.0

    # -- persistence -----------------------------------------------------------------------
    def vw_model(self) -> bytes:
        """VW's own binary model, without copyloop's header."""
        fd, path = tempfile.mkstemp(prefix="copyloop-vw-")
        os.close(fd)
        try:
            self._vw.save(path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            os.unlink(path)

    def save(self) -> bytes:
        """The model file: the header (`bandit.model_file`) and VW's binary model."""
        vw_model = self.vw_model()
        header = ModelHeader(
            vw_args=self.vw_args,
            features=FEATURES_VERSION,
            learned=self.learned,
            exposure=_frozen(self.exposure),
            residual=_frozen(self.residual),
            offered=_frozen(self.offered),
            learns_from=self.learns_from,
        )
        return pack(header, vw_model)

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


def _as_dict(counts: Mapping[str, V]) -> dict[str, V]:
    """A dict of `counts` (a file's `Counts` view copies itself fast)."""
    return counts.copy() if isinstance(counts, Counts) else dict(counts)


def _frozen(counts: Mapping[str, V]) -> Mapping[str, V]:
    """`counts` as a model file's header holds them: a file's view as it is (read-only), a
    dict as a read-only copy."""
    return counts if isinstance(counts, Counts) else MappingProxyType(dict(counts))


def _unpack(model: bytes, previous: ModelHeader | None) -> tuple[ModelHeader | None, bytes]:
    try:
        return unpack(model, previous)
    except ValueError as exc:
        raise ModelLoadError(f"cannot load model: {exc}") from exc


def _learn_multi(vw: pyvw.Workspace, text: str) -> list[float]:
    """Learn one multi-line example (`text`: its lines joined by newlines) and return the
    prediction VW made for it before the update (action scores, in action order).

    pyvw's own `parse`/`learn`/`get_prediction` wrap each line in a Python `Example` and look up
    the label and prediction types per call: 27 µs of every example's 34 µs, against 6.5 µs for
    the same calls on pylibvw, VW's own binding that pyvw wraps (same model bytes after; measured
    on the learner's 4-line examples, `bench/learn.py`)."""
    return _run_multi(vw, text, pylibvw.vw.learn_multi)


def _predict_multi(vw: pyvw.Workspace, text: str) -> list[float]:
    """VW's prediction for one multi-line example (action scores, or probabilities under
    `--cb_explore_adf`, in action order) through pylibvw, as `_learn_multi` learns: the
    serving path's VW call without pyvw's per-line `Example` wrappers."""
    return _run_multi(vw, text, pylibvw.vw.predict_multi)


def _run_multi(vw: pyvw.Workspace, text: str, run: Callable[..., object]) -> list[float]:
    examples = pylibvw.vw._parse(vw, text)
    try:
        run(vw, examples)
        scores: list[float] = examples[0].get_action_scores()
    finally:
        pylibvw.vw._finish_example_multi_ex(vw, examples)
    return scores


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
