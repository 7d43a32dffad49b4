"""copyloop's explorers and the fair trial: valid distributions, exact logged probabilities, the
floors new copy gets, and a model file that carries what they read."""

from __future__ import annotations

import math
from collections import Counter
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bandit import Arm, FairTrial, LoggedDecision, ModelMismatchError, Policy, ProductFeatures
from bandit.explore import OWN_FLAGS, EpsilonGreedy, InverseGap, parse_explorer, split_args
from bandit.model_file import MAGIC, Counts, ModelHeader, pack, unpack
from core.settings import OWN_EXPLORER_FLAGS, Settings

PRODUCT = ProductFeatures("p1", "lamps")
CONTEXT = {"device": "mobile"}
TEXTS = ["The original lamp copy.", "- bright\n- 2 m cord", "A warm glow for your evenings."]
ARMS = tuple(
    Arm.from_variant(f"v{i}", t, "s", "control" if i == 0 else "rules") for i, t in enumerate(TEXTS)
)

costs = st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=8)


@given(costs, st.integers(0, 10**6))
def test_inverse_gap_weighting_is_a_distribution_favouring_the_lowest_cost(
    c: list[float], learned: int
) -> None:
    pmf = InverseGap(10.0, 0.5).pmf(c, learned)
    assert math.isclose(sum(pmf), 1.0, abs_tol=1e-9)
    assert all(p > 0 for p in pmf)
    best = min(range(len(c)), key=c.__getitem__)
    assert pmf[best] >= max(pmf) - 1e-12


@given(costs, st.floats(0, 1))
def test_epsilon_greedy_is_a_distribution(c: list[float], eps: float) -> None:
    pmf = EpsilonGreedy(eps).pmf(c, 0)
    assert math.isclose(sum(pmf), 1.0, abs_tol=1e-9)
    assert min(pmf) >= eps / len(c) - 1e-12


@given(
    st.lists(st.floats(0.001, 1), min_size=2, max_size=8),
    st.lists(st.integers(0, 300), min_size=8, max_size=8),
    st.lists(st.integers(0, 300), min_size=8, max_size=8),
)
def test_the_fair_trial_keeps_a_distribution_and_lifts_young_arms(
    raw: list[float], exposures: list[int], missed: list[int]
) -> None:
    total = sum(raw)
    pmf = [p / total for p in raw]
    k = len(pmf)
    offered = [n + m for n, m in zip(exposures[:k], missed[:k], strict=True)]
    trial = FairTrial(exposure=100, floor=0.1, max_total=0.5)
    out = trial.apply(pmf, exposures[:k], offered)
    assert math.isclose(sum(out), 1.0, abs_tol=1e-9)
    floors = trial.floors(exposures[:k], offered)
    assert sum(floors) <= 0.5 + 1e-12
    assert trial.floors(exposures[:k], [max(offered)] * k) == [0.0] * k  # none arrived late
    if 0 < sum(floors) and not all(f > 0 for f in floors):
        assert all(o >= f - 1e-12 for o, f in zip(out, floors, strict=True))


def test_validation_messages_are_exact() -> None:
    with pytest.raises(ValueError, match=r"^gamma_scale must be > 0, got 0.0$"):
        InverseGap(0.0)
    with pytest.raises(ValueError, match=r"^epsilon must be in \[0, 1\], got 2.0$"):
        EpsilonGreedy(2.0)
    with pytest.raises(ValueError, match=r"^floor must be in \[0, 1\), got 1.0$"):
        FairTrial(100, 1.0)
    with pytest.raises(ValueError, match=r"^vw_args must contain --cb_adf or --cb_explore_adf"):
        Policy("--epsilon 0.1")
    with pytest.raises(ValueError, match=r"is not one of copyloop's explorers"):
        Policy("--cb_adf --bag 5")


def test_the_settings_know_which_explorers_are_copyloops() -> None:
    assert OWN_EXPLORER_FLAGS == OWN_FLAGS
    assert Settings(bandit_explorer="--squarecb --gamma_scale 3").vw_args.startswith(
        "--cb_adf --squarecb --gamma_scale 3 "
    )
    assert Settings(bandit_explorer="--bag 5").vw_args.startswith("--cb_explore_adf --bag 5 ")
    assert parse_explorer("--epsilon 0.2") == EpsilonGreedy(0.2)
    assert split_args("--cb_adf --epsilon 0.2 -q UT") == ("--epsilon 0.2", "--cb_adf -q UT")


def test_logged_probabilities_are_the_sampled_ones_with_the_trial() -> None:
    """With one young arm, the served frequencies match the logged pmf, floor included."""
    policy = Policy("--cb_adf --epsilon 0.1 -q UT", seed=3, fair_trial=FairTrial(50, 0.25))
    for k in range(200):  # v0 and v1 are seasoned, v2 arrives after them
        chosen = k % 2
        policy.learn(LoggedDecision(CONTEXT, PRODUCT, ARMS[:2], chosen, 0.5), float(chosen == 1))
    assert policy.exposure == {"v0": 100, "v1": 100}
    assert policy.offered == {"v0": 200, "v1": 200}
    n = 20_000
    choices = [policy.choose(CONTEXT, PRODUCT, ARMS) for _ in range(n)]
    pmf = choices[0].pmf
    assert pmf[2] >= 0.25  # never served: the whole floor
    counts = Counter(c.index for c in choices)
    for i, p in enumerate(pmf):
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[i] - n * p) <= 5 * sd + 1
    assert all(c.probability == pmf[c.index] for c in choices[:100])


def test_only_copy_that_arrived_late_is_put_on_trial() -> None:
    """A variant served rarely although it was on the page all along gets no floor (the
    explorer had its reasons); the same counts for a variant that arrived late do."""
    trial = FairTrial(60, 0.2)
    policy = Policy("--cb_adf --epsilon 0.05 -q UT", seed=1, fair_trial=trial)
    for k in range(400):  # v2 is offered throughout and served 4 times
        chosen = 2 if k % 100 == 0 else k % 2
        policy.learn(LoggedDecision(CONTEXT, PRODUCT, ARMS, chosen, 0.5), float(chosen == 1))
    assert policy.scores(CONTEXT, PRODUCT, ARMS)[2] < 0.05
    late = Policy("--cb_adf --epsilon 0.05 -q UT", seed=1, fair_trial=trial)
    for k in range(400):  # v2 arrives after 300 decisions and is served 4 times
        arms = ARMS if k >= 300 else ARMS[:2]
        chosen = 2 if k >= 300 and k % 25 == 0 else k % 2
        late.learn(LoggedDecision(CONTEXT, PRODUCT, arms, chosen, 0.5), float(chosen == 1))
    assert late.exposure["v2"] == 4
    assert late.scores(CONTEXT, PRODUCT, ARMS)[2] > 0.1


def test_a_loaded_model_reads_its_files_counts_until_it_learns() -> None:
    """A loaded policy serves from the file's count views; learning gives it its own counts
    (the file's, and the header's, stay as read), and a model loaded after it from the next
    snapshot counts the same as one loaded alone."""
    policy = Policy("--cb_adf --squarecb -q UT")
    for k in range(3):
        policy.learn(LoggedDecision(CONTEXT, PRODUCT, ARMS[:2], k % 2, 0.5), 1.0)
    first = Policy("--cb_adf --squarecb -q UT", model=policy.save())
    assert isinstance(first.exposure, Counts) and first.exposure == {"v0": 2, "v1": 1}
    first.learn(LoggedDecision(CONTEXT, PRODUCT, ARMS, 2, 0.5), 1.0)
    assert type(first.exposure) is dict and first.exposure == {"v0": 2, "v1": 1, "v2": 1}
    assert first.offered == {"v0": 4, "v1": 4, "v2": 1} and set(first.residual) == {
        "v0",
        "v1",
        "v2",
    }
    assert first.header is not None and first.header.exposure == {"v0": 2, "v1": 1}
    following = first.save()
    alone = Policy("--cb_adf --squarecb -q UT", model=following)
    after = Policy("--cb_adf --squarecb -q UT", model=following, previous=first)
    for name in ("exposure", "offered", "residual"):
        assert dict(getattr(after, name)) == dict(getattr(alone, name)) == getattr(first, name)
    assert after.costs(CONTEXT, PRODUCT, ARMS) == alone.costs(CONTEXT, PRODUCT, ARMS)


def test_the_model_file_carries_counts_and_refuses_other_features() -> None:
    policy = Policy("--cb_adf --squarecb -q UT")
    policy.learn(LoggedDecision(CONTEXT, PRODUCT, ARMS, 1, 0.5), 1.0)
    data = policy.save()
    assert data.startswith(MAGIC)
    again = Policy("--cb_adf --squarecb -q UT", model=data)
    assert (again.learned, again.exposure) == (1, {"v1": 1})
    assert again.offered == {a.variant_id: 1 for a in ARMS}
    assert again.costs(CONTEXT, PRODUCT, ARMS) == policy.costs(CONTEXT, PRODUCT, ARMS)
    header, vw_model = unpack(data)
    assert header is not None
    future = ModelHeader(header.vw_args, header.features + 1, 1, MappingProxyType({}))
    with pytest.raises(ModelMismatchError, match=r"feature definitions v3"):
        Policy("--cb_adf --squarecb -q UT", model=pack(future, vw_model))


def test_a_bare_vw_model_from_before_the_header_still_loads() -> None:
    old = Policy("--cb_explore_adf --epsilon 0.1 -q UA")
    old.learn(LoggedDecision(CONTEXT, PRODUCT, ARMS, 0, 0.5), 1.0)
    _, bare = unpack(old.save())
    loaded = Policy("--cb_explore_adf --epsilon 0.1 -q UA", model=bare)
    assert loaded.learned == 0
    assert loaded.scores(CONTEXT, PRODUCT, ARMS) == old.scores(CONTEXT, PRODUCT, ARMS)


def test_the_kept_own_effects_and_floors_follow_every_update() -> None:
    """`Policy._arm_terms` keeps each action set's own effects and floors until the model
    learns again: the served distribution equals the one worked out afresh from the costs and
    counts (`costs` reads the own effects anew), after every update, on both action sets."""
    trial = FairTrial(40, 0.2)
    policy = Policy("--cb_adf --squarecb -q UT", seed=2, fair_trial=trial, own_effect_z=0.5)

    def afresh(arms: tuple[Arm, ...]) -> list[float]:
        explorer = policy.explorer
        costs = policy.costs(CONTEXT, PRODUCT, arms)
        assert explorer is not None and costs is not None
        pmf = explorer.pmf(costs, policy.learned)
        exposures = [policy.exposure.get(a.variant_id, 0) for a in arms]
        offered = [policy.offered.get(a.variant_id, 0) for a in arms]
        return trial.apply(pmf, exposures, offered)

    lifted = 0
    for k in range(120):
        arms = ARMS if k >= 60 else ARMS[:2]  # v2 arrives late: a floor, shrinking as it serves
        for served in (ARMS, ARMS[:2]):
            for _ in range(2):  # the second from what was kept
                assert policy.scores(CONTEXT, PRODUCT, served) == afresh(served)
        lifted += policy.scores(CONTEXT, PRODUCT, ARMS)[2] > 0.2
        chosen = k % len(arms)
        policy.learn(LoggedDecision(CONTEXT, PRODUCT, arms, chosen, 0.5), float(chosen == 1))
    assert lifted > 0  # the floor was there to be kept
