"""Deferred decisions in the join, on real databases: only an activation that reaches an open
decision with `ts` inside its window makes it an impression; the rest are closed without a
reward, reported as `not_activated` and never learned from; replays change nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from consumer.errors import BadMessage
from consumer.join import close_expired_windows, closed_since, ingest
from consumer.records import ActivationRecord, decode_events_message
from core.ledger import Activation, Decision, Reward
from core.ledger.presence import held_ids
from core.messages import Activation as ActivationMessage
from reports.uplift import uplift_report

T0 = 1_767_000_000.25
WINDOW, GRACE, SKEW = 1.0, 0.5, 2.0
AFTER = T0 + WINDOW + GRACE + 0.01


@pytest.fixture
def settings(make_settings):
    return make_settings(reward_window_s=WINDOW, close_grace_s=GRACE, clock_skew_s=SKEW)


def deferred(make_decision, decision_id, ts=T0, chosen=1):
    return make_decision(decision_id, ts, chosen=chosen)._replace(deferred=True)


def flags(sessions):
    with sessions() as s:
        return {
            d.decision_id: (d.deferred, d.activated)
            for d in s.scalars(select(Decision).order_by(Decision.decision_id))
        }


def test_only_activations_in_time_make_impressions_and_learning(
    sessions, settings, make_decision, make_event
):
    decisions = [
        make_decision("plain", T0),  # not deferred: as before
        deferred(make_decision, "seen"),  # activated in time, clicked
        deferred(make_decision, "unseen"),  # never activated, clicked anyway
        deferred(make_decision, "too-late"),  # activated after its window ended
        deferred(make_decision, "at-end"),  # activated exactly at the window's end
    ]
    events = [make_event(f"c-{d.decision_id}", d.decision_id, "click", T0 + 0.2) for d in decisions]
    activations = [
        ActivationRecord("seen", T0 + 0.1),
        ActivationRecord("too-late", T0 + WINDOW + 0.01),
        ActivationRecord("at-end", T0 + WINDOW),
    ]
    result = ingest(sessions, decisions, events, activations, reward_window_s=WINDOW)
    assert (result.activations_new, result.activations_duplicate) == (3, 0)
    assert flags(sessions) == {
        "at-end": (True, True),
        "plain": (False, True),
        "seen": (True, True),
        "too-late": (True, False),
        "unseen": (True, False),
    }

    closed = close_expired_windows(sessions, settings, AFTER)

    assert sorted(c.decision_id for c in closed) == ["at-end", "plain", "seen"]
    assert [c.seq for c in closed] == [1, 2, 3]  # the chain has no holes
    assert all(c.reward == 1.0 for c in closed)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Reward)) == 3
        open_left = s.scalar(select(func.count()).where(Decision.closed_at.is_(None)))
    assert open_left == 0  # the unseen ones are closed too: never learned, never reopened
    assert [c.decision_id for c in closed_since(sessions, 0)] == [c.decision_id for c in closed]


def test_activation_before_its_decision_and_replays_count_once(sessions, settings, make_decision):
    act = ActivationRecord("d1", T0 + 0.3)
    first = ingest(sessions, [], [], [act, act], reward_window_s=WINDOW)  # decision not yet in
    assert (first.activations_new, first.activations_duplicate) == (1, 1)
    assert flags(sessions) == {}
    ingest(sessions, [deferred(make_decision, "d1")], [], [], reward_window_s=WINDOW)
    assert flags(sessions) == {"d1": (True, True)}
    again = ingest(
        sessions,
        [deferred(make_decision, "d1")],
        [],
        [ActivationRecord("d1", T0 + 0.9)],
        reward_window_s=WINDOW,
    )
    assert (again.decisions_new, again.activations_new, again.activations_duplicate) == (0, 0, 1)
    with sessions() as s:
        assert s.get(Activation, "d1").ts == T0 + 0.3  # the first activation is kept
    assert len(close_expired_windows(sessions, settings, AFTER)) == 1
    assert close_expired_windows(sessions, settings, AFTER + 10) == []


def test_an_activation_after_the_close_changes_nothing(sessions, settings, make_decision):
    ingest(sessions, [deferred(make_decision, "d1")], [], [], reward_window_s=WINDOW)
    assert close_expired_windows(sessions, settings, AFTER) == []  # closed, not learned
    # An activation stamped inside the window but ingested after the close (a spooled one):
    # the decision's fate is final, so the report keeps agreeing with what was learned.
    ingest(sessions, [], [], [ActivationRecord("d1", T0 + 0.1)], reward_window_s=WINDOW)
    assert flags(sessions) == {"d1": (True, False)}
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Reward)) == 0


def test_report_counts_impressions_and_not_activated_per_arm(
    sessions, settings, make_decision, make_event
):
    def served(decision_id, policy, chosen=1):
        return deferred(make_decision, decision_id, chosen=chosen)._replace(policy=policy)

    decisions = [
        served("b-seen", "bandit"),
        served("b-unseen-1", "bandit"),
        served("b-unseen-2", "bandit"),
        served("c-seen", "control", chosen=0),
        served("c-unseen", "control", chosen=0),
        make_decision("b-plain", T0)._replace(policy="bandit"),
    ]
    events = [make_event(f"e-{d.decision_id}", d.decision_id, "click", T0 + 0.2) for d in decisions]
    # Three days earlier, unclicked: a span of days, so the report reads the hourly rollups.
    decisions.append(make_decision("b-old", T0 - 3 * 86400)._replace(policy="bandit"))
    activations = [ActivationRecord("b-seen", T0 + 0.1), ActivationRecord("c-seen", T0 + 0.1)]
    ingest(sessions, decisions, events, activations, reward_window_s=WINDOW)

    before = uplift_report(sessions, settings, ope_sample=0, context_sample=0, greedy=False)
    assert before["arms"]["bandit"]["awaiting_activation"] == 2  # windows still open
    assert before["arms"]["bandit"]["not_activated"] == 0
    close_expired_windows(sessions, settings, AFTER)
    report = uplift_report(sessions, settings, ope_sample=0, context_sample=0, greedy=False)

    bandit, control = report["arms"]["bandit"], report["arms"]["control"]
    assert (bandit["impressions"], bandit["clicks"], bandit["not_activated"]) == (3, 2, 2)
    assert (control["impressions"], control["clicks"], control["not_activated"]) == (1, 1, 1)
    assert bandit["awaiting_activation"] == control["awaiting_activation"] == 0
    assert sum(v["impressions"] for v in report["variants"]) == 4
    assert report["rollups"]["used"], report["rollups"]
    # The rollups (kept by the closer) and a full scan of the decisions agree.
    scan = uplift_report(
        sessions, settings, ope_sample=0, context_sample=0, greedy=False, rollups=False
    )
    assert scan["arms"] == report["arms"]
    # A late click on a closed, never-activated decision moves nothing.
    ingest(sessions, [], [make_event("late", "b-unseen-1", "click", T0 + 0.3)], [])
    again = uplift_report(sessions, settings, ope_sample=0, context_sample=0, greedy=False)
    assert again["arms"] == report["arms"]


def test_activation_messages_decode_apart_from_events() -> None:
    value = ActivationMessage(type="activation", decision_id="d1", ts=T0 * 1000).to_bytes()
    assert decode_events_message(value) == ActivationRecord("d1", pytest.approx(T0))
    event = b'{"event_id": "e1", "decision_id": "d1", "type": "click", "ts": 1767000000250}'
    assert decode_events_message(event).event_id == "e1"
    with pytest.raises(BadMessage, match="ts: "):
        decode_events_message(b'{"type": "activation", "decision_id": "d1", "ts": "soon"}')


def test_the_api_log_learns_when_the_ledger_holds_an_activation(sessions) -> None:
    """The API's durable log keeps an activation until `activations` has its decision."""
    assert held_ids(sessions, {"activations": ["d1"]}) == {"activations": set()}
    ingest(sessions, [], [], [ActivationRecord("d1", T0)])
    assert held_ids(sessions, {"activations": ["d1", "d2"]}) == {"activations": {"d1"}}
