"""Which decisions and events the ledger already holds: how the API learns that what it logged
has come all the way through Kafka and the consumer, so that it may drop it from its log.

The API asks by primary key (`decision_id`, `event_id`), a few hundred ids per statement: the
ledger itself is the truth, whatever happened to the broker in between (the embedded broker
keeps its log in memory, so a restart loses what it had acknowledged but the consumer had not
yet read).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from core.ledger.tables import Activation, Decision, Event

#: Ids per `IN (...)` list: well under SQLite's bound-parameter limit, one round trip each.
CHUNK = 500
#: An activation travels as an event record whose ident is this prefix and its decision id; it
#: is held once `activations` has the decision. NUL: no event id can start with it.
ACTIVATION_IDENT = "\x00activation:"


def held_ids(
    sessions: sessionmaker[Session], decision_ids: Sequence[str], event_ids: Sequence[str]
) -> tuple[set[str], set[str]]:
    """The subsets of `decision_ids` and `event_ids` that the ledger holds (an event id may be
    an activation's ident, `ACTIVATION_IDENT` + decision id)."""
    n = len(ACTIVATION_IDENT)
    plain = [e for e in event_ids if not e.startswith(ACTIVATION_IDENT)]
    activated = [e[n:] for e in event_ids if e.startswith(ACTIVATION_IDENT)]
    with sessions() as s:
        events = _present(s, Event.event_id, plain)
        if activated:
            found = _present(s, Activation.decision_id, activated)
            events |= {ACTIVATION_IDENT + d for d in found}
        return _present(s, Decision.decision_id, decision_ids), events


def _present(s: Session, column: InstrumentedAttribute[str], ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(sorted(set(ids)), CHUNK):
        found.update(s.scalars(select(column).where(column.in_(chunk))))
    return found


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
