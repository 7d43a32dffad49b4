"""The fault suite's own judge: what the API's decision log still owes the ledger."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from api.decision_log import DecisionLog, Kind
from consumer.join import ingest
from consumer.records import decode_decision, decode_event
from core.messages import Decision
from tests.faults.check import owed


def test_the_log_owes_what_the_ledger_lacks_until_the_ledger_holds_it(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    # After a kill the ledger can stay quiet for longer than any fixed wait while the restarted
    # API is still starting: the wait must end on this count, not on the ledger's quiet.
    d = Decision(
        decision_id=uuid.uuid4().hex,
        product_id="p0",
        variant_id="v0",
        policy="bandit",
        probability=0.5,
        model_version=1,
        context={},
        actions=["v0", "v1"],
        pmf=[0.5, 0.5],
        ts=time.time(),
        activated=True,
    )
    event = json.dumps({"event_id": "e1", "decision_id": d.decision_id, "type": "click"}).encode()
    spool = tmp_path / "spool"
    log = DecisionLog(spool)
    log.append(Kind.DECISION, "t.decisions", d.decision_id, d.decision_id, d.to_bytes())
    log.append(Kind.EVENT, "t.events", d.decision_id, "e1", event)
    log.append(Kind.OTHER, "t.dlq", "k", "", b"{}")  # safe once the broker has it: never owed
    assert owed(sessions, spool) == 2  # the live writer's segment is read too
    log.close()
    ingest(sessions, [decode_decision(d.to_bytes())], [])
    assert owed(sessions, spool) == 1
    ingest(sessions, [], [decode_event(event)])
    assert owed(sessions, spool) == 0
