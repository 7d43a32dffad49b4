"""`core.ledger.presence.held_ids`: exactly the ids the ledger holds, on SQLite and PostgreSQL,
whatever the ids hold (quotes, backslashes, non-ASCII) and however many are asked."""

from __future__ import annotations

import time

from sqlalchemy.orm import Session, sessionmaker

from core.ledger.presence import CHUNK, held_ids
from core.ledger.tables import Activation, Decision, Event

ODD = ['it"s', "back\\slash", "caf\u00e9-\u2603", "semi;colon", "'quoted'", "%like_"]


def _decision(decision_id: str) -> Decision:
    return Decision(
        decision_id=decision_id,
        product_id="p",
        variant_id="v",
        policy="bandit",
        probability=0.5,
        model_version=1,
        context={},
        actions=["v"],
        pmf=[1.0],
        ts=0.0,
        received_at=0.0,
    )


def test_held_ids_answers_exactly_the_held_ones(sessions: sessionmaker[Session]) -> None:
    held = [f"d{i:06d}" for i in range(0, CHUNK + 300, 2)] + ODD  # more than a statement asks
    with sessions.begin() as s:
        s.add_all(_decision(d) for d in held)
        now = time.time()
        s.add(Event(event_id="e1", decision_id="d000000", type="click", ts=now, received_at=now))
        s.add(Activation(decision_id="d000002", ts=now, received_at=now))
    asked = [f"d{i:06d}" for i in range(CHUNK + 301)] + ODD + ["d000000", "nope", 'no"pe']
    found = held_ids(sessions, {"decisions": asked, "events": ["e1", "e2"], "activations": []})
    assert found == {
        "decisions": {d for d in asked if d in set(held)},
        "events": {"e1"},
    }
    assert held_ids(sessions, {"activations": ["d000002", "d000004"]}) == {
        "activations": {"d000002"}
    }
