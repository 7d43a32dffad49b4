"""Winners and losers on synthetic ledgers whose truth is known, including one where the raw CTR
of adaptively allocated variants points at the wrong variant and the IPS bounds do not."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import SAMPLE_CATALOG, ProductIn, read_catalog
from core.ledger import Decision, ModelSnapshot, Reward, model_versions, snapshots
from generator.winners import (
    Comparison,
    WinnerParams,
    compare_variants,
    current_params,
    preference_pairs,
    select_winners,
    winners,
)
from tests.generator.synthetic import Ledger


@pytest.fixture(scope="module")
def catalog() -> list[ProductIn]:
    return read_catalog(SAMPLE_CATALOG)


def by_variant(comparisons: list[Comparison]) -> dict[str, Comparison]:
    return {c.variant_id: c for c in comparisons}


def test_adaptive_allocation_fools_raw_ctr_but_not_the_ips_bounds(
    sessions: sessionmaker[Session], catalog: list[ProductIn]
) -> None:
    # Mobile shoppers click far more than desktop ones. The policy sends A mostly to mobile and
    # B mostly to desktop. A is exactly as good as the control in each context; B is better in
    # both. Raw CTR: A ≈ 0.27, control ≈ 0.175, B ≈ 0.15 (A "wins", B "loses").
    # Truth ("always serve"): control 0.175, A 0.175, B 0.26.
    ledger = Ledger(sessions, seed=3)
    control, a, b = ledger.product(
        catalog[0], [("concise", "Variant A text here."), ("bullets", "Variant B text here.")]
    )
    truth = {
        "mobile": {control: 0.30, a: 0.30, b: 0.40},
        "desktop": {control: 0.05, a: 0.05, b: 0.12},
    }
    pmf = {"mobile": [0.1, 0.8, 0.1], "desktop": [0.1, 0.1, 0.8]}
    for device in ("mobile", "desktop"):
        ledger.serve(catalog[0].product_id, [control, a, b], 4000, pmf[device], truth[device])

    raw = _raw_ctr(sessions)
    assert raw[a] > raw[control] + 0.05 > raw[b] + 0.05  # the raw CTR would crown A

    comparisons = by_variant(compare_variants(sessions, WinnerParams(min_exposure=100)))
    ca, cb = comparisons[a], comparisons[b]
    assert abs(ca.estimate.value - 0.175) < 0.03 and abs(cb.estimate.value - 0.26) < 0.03
    assert abs(ca.control.value - 0.175) < 0.03
    assert not ca.wins and not ca.loses  # A is the control's equal: neither
    assert cb.wins and cb.confidence > 0.999
    assert cb.estimate.ci_low > cb.control.ci_high  # the rule: LCB above the control's UCB

    found = select_winners(sessions, WinnerParams(min_exposure=100))
    assert [w.variant_id for w in found] == [b]
    winner = found[0]
    assert winner.style == "bullets" and winner.text == "Variant B text here."
    assert winner.gain == pytest.approx(winner.estimate - winner.control_estimate)
    assert winner.ci_low == cb.estimate.ci_low


def test_min_exposure_holds_back_an_otherwise_clear_winner(
    sessions: sessionmaker[Session], catalog: list[ProductIn]
) -> None:
    ledger = Ledger(sessions, seed=4)
    control, a = ledger.product(catalog[1], [("story", "A story about this thing.")])
    ledger.serve(catalog[1].product_id, [control, a], 3000, [0.5, 0.5], {control: 0.1, a: 0.5})
    assert [w.variant_id for w in select_winners(sessions, WinnerParams(min_exposure=1000))] == [a]
    assert select_winners(sessions, WinnerParams(min_exposure=2000)) == []


def test_after_a_restart_only_the_decisions_since_are_judged(
    sessions: sessionmaker[Session], catalog: list[ProductIn]
) -> None:
    # Old tastes: A beats the control clearly. Then tastes flip (A falls below the control) and
    # the operator restarts the model: the jobs judge by the decisions since the restart.
    ledger = Ledger(sessions, seed=8)
    product = catalog[4].product_id
    control, a = ledger.product(catalog[4], [("story", "A story that sold once.")])
    ledger.serve(product, [control, a], 3000, [0.5, 0.5], {control: 0.1, a: 0.5})
    assert current_params(sessions, 100) == WinnerParams(min_exposure=100, since=None)
    assert [w.variant_id for w in select_winners(sessions, current_params(sessions, 100))] == [a]

    version = snapshots.save(sessions, b"fresh", 0, "--cb_adf", source="restart")
    restarted = ledger.ts + 0.5
    with sessions.begin() as s:
        s.execute(
            update(ModelSnapshot)
            .where(ModelSnapshot.version == version)
            .values(created_at=restarted)
        )
    ledger.serve(product, [control, a], 1500, [0.5, 0.5], {control: 0.3, a: 0.05})

    params = current_params(sessions, 100)
    assert params.since == restarted
    after = by_variant(compare_variants(sessions, params))[a]
    assert after.loses and after.exposure + after.control_exposure == 1500
    assert select_winners(sessions, params) == []
    # all of history still says A wins (3,000 old decisions outweigh 1,500 new ones)
    assert by_variant(compare_variants(sessions, WinnerParams(min_exposure=100)))[a].wins
    # a later, learned version does not move the cut; the newest restart's time is it
    snapshots.save(sessions, b"learned", 0, "--cb_adf")
    with sessions() as s:
        assert model_versions.restarted_at(s) == restarted


def test_a_clear_loser_loses_and_pairs_weigh_gain_by_confidence(
    sessions: sessionmaker[Session], catalog: list[ProductIn]
) -> None:
    ledger = Ledger(sessions, seed=5)
    product = catalog[2].product_id
    control, good, same, bad = ledger.product(
        catalog[2],
        [("concise", "Good text of it."), ("story", "Same text of it."), ("bullets", "Bad one.")],
    )
    p = {control: 0.15, good: 0.35, same: 0.15, bad: 0.02}
    ledger.serve(product, [control, good, same, bad], 6000, [0.25, 0.25, 0.25, 0.25], p)
    comparisons = compare_variants(sessions, WinnerParams(min_exposure=200))
    by = by_variant(comparisons)
    assert by[good].wins and not by[good].loses
    assert by[bad].loses and not by[bad].wins
    assert not by[same].wins and not by[same].loses
    assert [c.variant_id for c in comparisons] == [good, same, bad]  # best gain first

    pairs = preference_pairs(comparisons)
    assert {(q.chosen_text, q.rejected_text) for q in pairs} == {
        ("Good text of it.", by[good].control_text),
        ("Good text of it.", "Same text of it."),
        ("Good text of it.", "Bad one."),
    }
    assert all(q.prompt_style == "concise" and q.product_id == product for q in pairs)
    weight = {q.rejected_text: q.weight for q in pairs}
    # Gains ≈ 0.20 (vs control and "same"), 0.33 (vs "bad"); each confidence ≈ 1.
    assert weight["Bad one."] > weight["Same text of it."] > 0.1
    assert weight["Same text of it."] == pytest.approx(0.2, abs=0.05)


def test_nothing_wins_when_every_variant_equals_the_control(
    sessions: sessionmaker[Session], catalog: list[ProductIn]
) -> None:
    ledger = Ledger(sessions, seed=6)
    arms = ledger.product(catalog[3], [(s, f"Equal text number {s}.") for s in ("a", "b", "c")])
    ledger.serve(catalog[3].product_id, arms, 4000, [0.4, 0.2, 0.2, 0.2], dict.fromkeys(arms, 0.2))
    comparisons = compare_variants(sessions, WinnerParams(min_exposure=50))
    assert len(comparisons) == 3
    assert winners(comparisons) == [] and preference_pairs(comparisons) == []
    assert not any(c.loses for c in comparisons)
    assert all(0.0 < c.confidence < 1.0 and math.isfinite(c.gain_se) for c in comparisons)


def test_min_exposure_is_validated() -> None:
    with pytest.raises(ValueError, match=r"^min_exposure must be >= 1, got 0$"):
        WinnerParams(min_exposure=0)


def _raw_ctr(sessions: sessionmaker[Session]) -> dict[str, float]:
    with sessions() as s:
        rows = s.execute(
            select(Decision.variant_id, func.avg(Reward.reward))
            .join(Reward, Reward.decision_id == Decision.decision_id)
            .group_by(Decision.variant_id)
        ).all()
    return {vid: float(mean) for vid, mean in rows}
