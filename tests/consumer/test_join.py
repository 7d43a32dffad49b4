"""The join without Kafka, on real databases: idempotent ingest, windows closed exactly once,
rewards from the events inside each decision's span, whatever order things arrived in."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from consumer import LeaseLost
from consumer.join import close_expired_windows, closed_since, ingest, late_events
from core.ledger import Decision, Event, Reward

T0 = 1_767_000_000.25  # a decision time, epoch seconds
WINDOW, GRACE, SKEW = 1.0, 0.5, 2.0


@pytest.fixture
def settings(make_settings):
    return make_settings(reward_window_s=WINDOW, close_grace_s=GRACE, clock_skew_s=SKEW)


AFTER = T0 + WINDOW + GRACE + 0.01  # a `now` past the first decision's window and grace


def rewards(sessions):
    with sessions() as s:
        return {r.decision_id: r for r in s.scalars(select(Reward))}


def test_ingest_is_idempotent_and_first_write_wins(sessions, make_decision, make_event):
    d = make_decision("d1", T0)
    first = ingest(
        sessions,
        [d, d],
        [make_event("e1", "d1", "click", T0), make_event("e1", "d1", "purchase", T0, 9.0)],
    )
    again = ingest(
        sessions, [d], [make_event("e1", "d1", "purchase", T0), make_event("e2", "d1", "click", T0)]
    )

    assert (first.decisions_new, first.decisions_duplicate) == (1, 1)
    assert (first.events_new, first.events_duplicate) == (1, 1)
    assert (again.decisions_new, again.decisions_duplicate) == (0, 1)
    assert (again.events_new, again.events_duplicate) == (1, 1)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 1
        assert s.get(Event, "e1").type == "click"  # the first write of e1 won
        assert s.scalar(select(func.count()).select_from(Event)) == 2


def test_reward_counts_each_type_once_with_its_weight(
    sessions, settings, make_decision, make_event
):
    ingest(
        sessions,
        [make_decision("d1", T0), make_decision("d2", T0)],
        [
            make_event("c1", "d1", "click", T0 + 0.1),
            make_event("c2", "d1", "click", T0 + 0.2),
            make_event("a1", "d1", "add_to_cart", T0 + 0.3),
            make_event("b1", "d1", "purchase", T0 + 0.4, 10.0),
            make_event("b2", "d1", "purchase", T0 + 0.5, 5.5),
            make_event("b3", "d1", "purchase", T0 + 0.6),  # no value: revenue 0
        ],
    )

    closed = {c.decision_id: c for c in close_expired_windows(sessions, settings, AFTER)}

    d1 = closed["d1"]
    assert (d1.clicks, d1.add_to_carts, d1.purchases, d1.revenue) == (2, 1, 3, 15.5)
    assert d1.reward == 1.0 + 1.0 + 3.0  # the default weights, each type once
    assert closed["d2"].reward == 0.0  # no events: reward 0, closed all the same
    stored = rewards(sessions)
    assert (stored["d1"].reward, stored["d1"].revenue, stored["d2"].reward) == (5.0, 15.5, 0.0)


def test_reward_weights_come_from_settings(sessions, make_settings, make_decision, make_event):
    settings = make_settings(
        reward_window_s=WINDOW,
        close_grace_s=GRACE,
        reward_click=0.25,
        reward_add_to_cart=0.5,
        reward_purchase=4.0,
    )
    ingest(
        sessions,
        [make_decision("d1", T0), make_decision("d2", T0)],
        [
            make_event("c1", "d1", "click", T0),
            make_event("b1", "d1", "purchase", T0, 3.0),
            make_event("a1", "d2", "add_to_cart", T0),
        ],
    )

    closed = {c.decision_id: c.reward for c in close_expired_windows(sessions, settings, AFTER)}

    assert closed == {"d1": 4.25, "d2": 0.5}


def test_events_before_their_decision_are_joined(sessions, settings, make_decision, make_event):
    ingest(sessions, [], [make_event("c1", "d1", "click", T0 + 0.5)])
    ingest(sessions, [make_decision("d1", T0)], [])

    (closed,) = close_expired_windows(sessions, settings, AFTER)

    assert (closed.decision_id, closed.clicks, closed.reward) == ("d1", 1, 1.0)


def test_a_decision_arriving_after_its_window_is_closed_once_normally(
    sessions, settings, make_decision, make_event
):
    now = T0 + 3600.0  # the consumer lagged an hour behind
    ingest(sessions, [], [make_event("c1", "old", "click", T0 + 0.5)])
    assert close_expired_windows(sessions, settings, now) == []

    ingest(sessions, [make_decision("old", T0)], [])
    (closed,) = close_expired_windows(sessions, settings, now)
    ingest(sessions, [make_decision("old", T0)], [])  # redelivered after closing

    assert (closed.decision_id, closed.seq, closed.reward) == ("old", 1, 1.0)
    assert close_expired_windows(sessions, settings, now + 1) == []
    assert list(rewards(sessions)) == ["old"]


def test_span_bounds_are_inclusive(sessions, settings, make_decision, make_event):
    eps = 1e-3
    cases = {
        "at_lower": T0 - SKEW,
        "below_lower": T0 - SKEW - eps,
        "at_upper": T0 + WINDOW,
        "above_upper": T0 + WINDOW + eps,
    }
    ingest(
        sessions,
        [make_decision(name, T0) for name in cases],
        [make_event(f"e-{name}", name, "click", ts) for name, ts in cases.items()],
    )

    closed = {c.decision_id: c.clicks for c in close_expired_windows(sessions, settings, AFTER)}

    assert closed == {"at_lower": 1, "below_lower": 0, "at_upper": 1, "above_upper": 0}


def test_a_window_closes_only_after_its_grace(sessions, settings, make_decision):
    ingest(sessions, [make_decision("d1", T0)], [])
    due = T0 + WINDOW + GRACE

    assert close_expired_windows(sessions, settings, due) == []  # `now` must be past it
    assert [c.decision_id for c in close_expired_windows(sessions, settings, due + 0.01)] == ["d1"]


def test_windows_close_exactly_once_with_consecutive_seq(sessions, settings, make_decision):
    # Out of order on purpose: closing orders by (ts, decision_id).
    ingest(
        sessions,
        [
            make_decision("b", T0 + 1),
            make_decision("a", T0 + 1),
            make_decision("z", T0),
            make_decision("late", T0 + 100),
        ],
        [],
    )

    first = close_expired_windows(sessions, settings, AFTER + 1, limit=2)
    second = close_expired_windows(sessions, settings, AFTER + 1)
    third = close_expired_windows(sessions, settings, AFTER + 1)
    fourth = close_expired_windows(sessions, settings, AFTER + 200)

    assert [(c.seq, c.decision_id) for c in first] == [(1, "z"), (2, "a")]
    assert [(c.seq, c.decision_id) for c in second] == [(3, "b")]
    assert third == []
    assert [(c.seq, c.decision_id) for c in fourth] == [(4, "late")]
    with sessions() as s:
        assert sorted(s.scalars(select(Reward.seq))) == [1, 2, 3, 4]
        assert s.scalar(select(func.count()).where(Decision.closed_at.is_(None))) == 0


def test_a_fenced_closer_writes_nothing(sessions, settings, make_decision):
    ingest(sessions, [make_decision("d1", T0), make_decision("d2", T0 + 0.5)], [])
    close_expired_windows(sessions, settings, AFTER, expected_last_seq=0)  # closes d1: seq 1

    with pytest.raises(LeaseLost, match="the reward chain is at seq 1, this learner at 0"):
        close_expired_windows(sessions, settings, AFTER + 1, expected_last_seq=0)

    assert list(rewards(sessions)) == ["d1"]
    assert [
        c.decision_id
        for c in close_expired_windows(sessions, settings, AFTER + 1, expected_last_seq=1)
    ] == ["d2"]


def test_late_events_are_kept_and_never_counted(sessions, settings, make_decision, make_event):
    ingest(
        sessions,
        [make_decision("d1", T0)],
        [
            make_event("in", "d1", "click", T0 + 0.5),
            make_event("too-late-ts", "d1", "purchase", T0 + WINDOW + 5, 99.0),
            make_event("too-early-ts", "d1", "add_to_cart", T0 - SKEW - 5),
        ],
        received_at=T0 + 0.6,
    )
    (closed,) = close_expired_windows(sessions, settings, AFTER)
    # In its span, but it reached the ledger after the window was closed.
    ingest(sessions, [], [make_event("after-close", "d1", "purchase", T0 + 0.7, 5.0)])
    assert close_expired_windows(sessions, settings, AFTER + 100) == []

    late = {e.event_id: e.reason for e in late_events(sessions, settings)}

    assert (closed.clicks, closed.add_to_carts, closed.purchases, closed.reward) == (1, 0, 0, 1.0)
    assert late == {
        "too-late-ts": "outside_window",
        "too-early-ts": "outside_window",
        "after-close": "after_close",
    }
    assert rewards(sessions)["d1"].revenue == 0.0
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == 4  # all kept


def test_closed_since_replays_in_seq_order(sessions, settings, make_decision, make_event):
    ingest(
        sessions,
        [make_decision(f"d{i}", T0 + i * 0.001, chosen=i % 3) for i in range(5)],
        [make_event("c3", "d3", "click", T0)],
    )
    closed = close_expired_windows(sessions, settings, AFTER + 1)

    replay = closed_since(sessions, after_seq=2)

    assert replay == closed[2:]
    assert [c.chosen for c in replay] == [2, 0, 1]
    assert closed_since(sessions, after_seq=2, limit=1) == closed[2:3]
    assert closed_since(sessions, after_seq=5) == []
