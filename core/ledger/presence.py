"""Which decisions and events the ledger already holds: how the API learns that what it logged
has come all the way through Kafka and the consumer, so that it may drop it from its log.

The API asks by primary key (`decision_id`, `event_id`, an activation's `decision_id`), a few
hundred ids per statement: the ledger itself is the truth, whatever happened to the broker in
between (the embedded broker keeps its log in memory, so a restart loses what it had
acknowledged but the consumer had not yet read).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from core.ledger.tables import Activation, Decision, Event

#: The primary key of each table the API asks about.
KEYS: dict[str, InstrumentedAttribute[str]] = {
    "decisions": Decision.decision_id,
    "events": Event.event_id,
    "activations": Activation.decision_id,
}

#: Ids per `IN (...)` list: well under SQLite's bound-parameter limit, one round trip each.
CHUNK = 500


def held_ids(
    sessions: sessionmaker[Session], wanted: Mapping[str, Sequence[str]]
) -> dict[str, set[str]]:
    """Of the ids in `wanted` (by table: `decisions`, `events`, `activations`), those the
    ledger holds."""
    with sessions() as s:
        return {table: _present(s, KEYS[table], ids) for table, ids in wanted.items() if ids}


def _present(s: Session, column: InstrumentedAttribute[str], ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(sorted(set(ids)), CHUNK):
        found.update(s.scalars(select(column).where(column.in_(chunk))))
    return found


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
