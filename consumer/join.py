"""The join: decisions and events in, ledger writes out. Kafka-free, so it is tested directly.

Two verbs, each one database transaction:

- `ingest(sessions, decisions, events, activations)` stores a polled batch idempotently: a
  `decision_id` or an `event_id` seen before changes nothing (first write wins), so a batch
  redelivered after a crash is harmless. The loop commits Kafka offsets only after this returns.
  A deferred decision becomes `activated` in the same transaction once its activation (stored
  once per decision, whichever of the two arrived first) is in the ledger with `ts` no later
  than the decision's `ts + reward_window_s`, and only while the decision is open.
- `close_expired_windows(sessions, settings, now)` closes every open decision whose attribution
  window ended before `now - close_grace_s`, computes its reward from the events whose `ts` lies
  in `[ts - clock_skew_s, ts + reward_window_s]` (an SQL aggregate, so arrival order never
  matters), writes `Reward` rows with consecutive `seq` and marks the decisions closed.

`seq` is the learning order: the model is the newest snapshot plus a replay of the rewards after
its `last_seq` (`closed_since`). Events outside their decision's span, or that arrived after it
closed, are kept and listed by `late_events`, never learned from. A deferred decision that is
not activated when its window closes is closed without a reward row: kept, reported as
`not_activated`, never learned from.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import Table, and_, case, exists, false, func, or_, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from consumer.bulk import event_counts, insert_new, insert_rows
from consumer.errors import BadBatch, LeaseLost, ledger_errors
from consumer.records import ActivationRecord, DecisionRecord, EventRecord
from core.ledger.tables import Activation, Decision, Event, Reward
from core.settings import Settings
from reports import rollups
from reports.rollups import Outcome

#: Ids per IN list: far below SQLite's 32,766 bound parameters.
_CHUNK = 500
#: Decisions closed per transaction by default: bounds lock time and the learner's step.
DEFAULT_CLOSE_LIMIT = 2000
#: The Core tables behind the entities: `ingest` writes through them (see there why).
_DECISIONS = cast(Table, Decision.__table__)
_EVENTS = cast(Table, Event.__table__)
_REWARDS = cast(Table, Reward.__table__)
_ACTIVATIONS = cast(Table, Activation.__table__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one `ingest` call stored; duplicates are messages whose key was already there."""

    decisions_new: int
    decisions_duplicate: int
    events_new: int
    events_duplicate: int
    activations_new: int = 0
    activations_duplicate: int = 0


@dataclass(frozen=True, slots=True)
class ClosedDecision:
    """A decision whose window is closed, with its reward: what the learner replays, in `seq`
    order. `reward` is the sum of the reward weights of the event types present."""

    seq: int
    decision_id: str
    product_id: str
    variant_id: str
    context: Mapping[str, Any]
    actions: tuple[str, ...]
    probability: float
    reward: float
    clicks: int
    add_to_carts: int
    purchases: int
    revenue: float
    model_version: int = 0  # the model version that served it (0: none, the fallback)

    @property
    def chosen(self) -> int:
        """Index of the served variant in `actions` (VW's action order)."""
        return self.actions.index(self.variant_id)


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event kept but never learned: `reason` is `outside_window` or `after_close`."""

    event_id: str
    decision_id: str
    type: str
    ts: float
    received_at: float
    reason: str


def ingest(
    sessions: sessionmaker[Session],
    decisions: Sequence[DecisionRecord],
    events: Sequence[EventRecord],
    activations: Sequence[ActivationRecord] = (),
    *,
    received_at: float | None = None,
    reward_window_s: float | None = None,
) -> IngestResult:
    """Store a batch in one transaction, idempotently (`INSERT … ON CONFLICT DO NOTHING`), and
    activate the batch's open deferred decisions whose activation came in time.

    `reward_window_s` bounds an activation's lateness (`ts <= decision ts + reward_window_s`;
    the loop passes the setting); None accepts any activation that reaches an open decision.
    Raises `LedgerUnavailable` (retry later) or `BadBatch` (the database refused some row: the
    caller ingests the records in halves to find it).
    """
    now = time.time() if received_at is None else received_at
    decision_rows = [_decision_row(d, now) for d in _first_of_each(decisions, "decision_id")]
    event_rows = [_event_row(e, now) for e in _first_of_each(events, "event_id")]
    activation_rows = [
        {"decision_id": a.decision_id, "ts": a.ts, "received_at": now}
        for a in _first_of_each(activations, "decision_id")
    ]
    new_decisions = new_events = new_activations = 0
    try:
        with ledger_errors(), sessions.begin() as s:
            # executemany: SQLAlchemy batches it into multi-row INSERTs ("insertmanyvalues") and
            # RETURNING gives the keys actually inserted (rowcount is unreliable across drivers:
            # psycopg reports -1 per batch). Core tables, not the ORM entities: the ORM's bulk
            # path adds bookkeeping per row and merges RETURNING rows one by one (4x the cost
            # per message, measured on 2,000-message batches).
            new_decisions = insert_rows(s, _DECISIONS, decision_rows, skip_existing="decision_id")
            inserted = set(insert_new(s, _EVENTS, event_rows, "event_id"))
            new_events = len(inserted)
            # An in-span event of an already closed decision moves the report's rollups.
            rollups.add_late_events(s, [e for e in event_rows if e["event_id"] in inserted])
            if activation_rows:
                new_activations = insert_rows(
                    s, _ACTIVATIONS, activation_rows, skip_existing="decision_id"
                )
            # Either half of a pair may come first: look from both sides, in this transaction.
            touched = [r["decision_id"] for r in decision_rows if r["deferred"]]
            touched += [r["decision_id"] for r in activation_rows]
            if touched:
                _activate(s, touched, reward_window_s)
    except (sa_exc.IntegrityError, sa_exc.DataError) as exc:
        raise BadBatch(f"the ledger refused the batch: {str(exc).splitlines()[0]}") from exc
    return IngestResult(
        decisions_new=new_decisions,
        decisions_duplicate=len(decisions) - new_decisions,
        events_new=new_events,
        events_duplicate=len(events) - new_events,
        activations_new=new_activations,
        activations_duplicate=len(activations) - new_activations,
    )


def _activate(s: Session, decision_ids: Sequence[str], reward_window_s: float | None) -> int:
    """Mark activated the open, not yet activated decisions among `decision_ids` that have an
    activation in time; returns how many changed. Open only: a closed decision's fate (learned
    or not) is final, so the report never disagrees with what was learned."""
    in_time = [Activation.decision_id == Decision.decision_id]
    if reward_window_s is not None:
        in_time.append(Activation.ts <= Decision.ts + reward_window_s)
    changed = 0
    for chunk in _chunks(sorted(set(decision_ids)), _CHUNK):
        changed += len(
            s.execute(
                update(Decision)
                .where(
                    Decision.decision_id.in_(chunk),
                    Decision.activated == false(),
                    Decision.closed_at.is_(None),
                    exists().where(and_(*in_time)),
                )
                .values(activated=True)
                .returning(Decision.decision_id)
                .execution_options(synchronize_session=False)
            ).all()
        )
    return changed


#: What the learner needs of a decision: the closer and the replay read the same columns.
_LEARNED_COLUMNS = (
    Decision.decision_id,
    Decision.product_id,
    Decision.variant_id,
    Decision.context,
    Decision.actions,
    Decision.probability,
    Decision.model_version,
)


def close_expired_windows(
    sessions: sessionmaker[Session],
    settings: Settings,
    now: float,
    *,
    expected_last_seq: int | None = None,
    limit: int = DEFAULT_CLOSE_LIMIT,
) -> list[ClosedDecision]:
    """Close up to `limit` open decisions with `now > ts + reward_window_s + close_grace_s`,
    oldest first (`ts`, then `decision_id`), in one transaction; return the activated ones,
    rewarded, in `seq` order (a deferred decision never activated is closed without a reward).

    `now` is the time up to which the ledger is known to hold every event (the loop passes an
    ingestion watermark, never ahead of the wall clock). With `expected_last_seq`, the caller
    fences itself: if the newest `seq` in the ledger differs (another learner extended the
    chain), nothing is written and `LeaseLost` is raised. Concurrent closers also collide on
    the unique `seq` and on the reward's primary key; the loser gets `LeaseLost` too.
    """
    cutoff = now - settings.reward_window_s - settings.close_grace_s
    weights = settings.reward_weights
    try:
        with ledger_errors(), sessions.begin() as s:
            last_seq = s.scalar(select(func.coalesce(func.max(Reward.seq), 0))) or 0
            closed_at = time.time()  # after the first statement: SQLite's write lock is ours
            if expected_last_seq is not None and last_seq != expected_last_seq:
                raise LeaseLost(
                    f"the reward chain is at seq {last_seq}, this learner at {expected_last_seq}"
                )
            # Before counting events: an ingest that could add one to these decisions either
            # commits first (counted here) or waits and sees them closed (`add_late_events`).
            rollups.state(s, lock="update")
            # Closed and read in one statement: a SELECT … FOR UPDATE and then an UPDATE wrote
            # each row's tuple twice (the lock, the new version) and cost the closer two round
            # trips (`bench/learn.py`). Core rows through the connection: the ORM's result
            # machinery cost more per decision than the SQL did.
            oldest = (
                select(Decision.decision_id)
                .where(Decision.closed_at.is_(None), Decision.ts < cutoff)
                .order_by(Decision.ts, Decision.decision_id)
                .limit(limit)
                # PostgreSQL: an activation committed meanwhile waits, then finds them closed.
                .with_for_update()
                # Evaluated once: PostgreSQL may run an IN (… LIMIT n) subquery of an UPDATE
                # again and close more than `limit` (seen in tests/consumer/test_join.py).
                .cte("oldest")
                .prefix_with("MATERIALIZED")
            )
            closing = (
                update(Decision)
                .where(
                    Decision.decision_id.in_(select(oldest.c.decision_id)),
                    Decision.closed_at.is_(None),
                )
                .values(closed_at=closed_at)
                .returning(*_LEARNED_COLUMNS, Decision.activated, Decision.policy, Decision.ts)
            )
            # Sorted here: RETURNING keeps no order.
            due = sorted(s.connection().execute(closing).all(), key=_oldest_first)
            if not due:
                return []
            learned = [row for row in due if row.activated]
            skew, window = settings.clock_skew_s, settings.reward_window_s
            counts = event_counts(s, [(r.decision_id, r.ts - skew, r.ts + window) for r in learned])
            closed = []
            for seq, row in enumerate(learned, start=last_seq + 1):
                clicks, carts, purchases, revenue = counts.get(row.decision_id, (0, 0, 0, 0.0))
                reward = (
                    (weights["click"] if clicks else 0.0)
                    + (weights["add_to_cart"] if carts else 0.0)
                    + (weights["purchase"] if purchases else 0.0)
                )
                closed.append(_closed(row, seq, reward, clicks, carts, purchases, revenue))
            insert_rows(s, _REWARDS, [_reward_row(c, closed_at) for c in closed])
            # The report's rollups take these decisions in the same transaction: exactly once.
            # Never-activated decisions are no impressions: the rollups count them apart.
            outcomes = [_outcome(r, c) for r, c in zip(learned, closed, strict=True)]
            contexts = [(r.decision_id, r.context) for r in learned]
            unseen = [(r.product_id, r.variant_id, r.policy, r.ts) for r in due if not r.activated]
            rollups.add_closed(s, settings, outcomes, contexts, unseen)
    except sa_exc.IntegrityError as exc:
        raise LeaseLost(f"another closer wrote these rewards first: {exc.orig}") from exc
    return closed


def _oldest_first(row: Any) -> tuple[float, str]:
    return row.ts, row.decision_id


def closed_since(
    sessions: sessionmaker[Session], after_seq: int, limit: int = DEFAULT_CLOSE_LIMIT
) -> list[ClosedDecision]:
    """The closed decisions with `seq > after_seq`, in `seq` order, at most `limit`: the replay
    that brings a snapshot up to date."""
    with ledger_errors(), sessions() as s:
        conn = s.connection()
        rows = conn.execute(
            select(
                Reward.seq,
                *_LEARNED_COLUMNS,
                Reward.reward,
                Reward.clicks,
                Reward.add_to_carts,
                Reward.purchases,
                Reward.revenue,
            )
            .join(Decision, Decision.decision_id == Reward.decision_id)
            .where(Reward.seq > after_seq)
            .order_by(Reward.seq)
            .limit(limit)
        ).all()
    return [
        _closed(r, r.seq, r.reward, r.clicks, r.add_to_carts, r.purchases, r.revenue) for r in rows
    ]


def _closed(
    row: Any,
    seq: int,
    reward: float,
    clicks: int,
    add_to_carts: int,
    purchases: int,
    revenue: float,
) -> ClosedDecision:
    """A closed decision from a row of `_LEARNED_COLUMNS` and its outcome."""
    return ClosedDecision(
        seq=seq,
        decision_id=row.decision_id,
        product_id=row.product_id,
        variant_id=row.variant_id,
        context=row.context or {},
        actions=tuple(row.actions),
        probability=row.probability,
        reward=reward,
        clicks=clicks,
        add_to_carts=add_to_carts,
        purchases=purchases,
        revenue=revenue,
        model_version=row.model_version or 0,
    )


def chain_tip(sessions: sessionmaker[Session]) -> int:
    """The newest reward's `seq` (0 when none is closed yet)."""
    with ledger_errors(), sessions() as s:
        return int(s.scalar(select(func.coalesce(func.max(Reward.seq), 0))) or 0)


def late_events(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    since: float | None = None,
    limit: int = 1000,
) -> list[LateEvent]:
    """Events of closed decisions that did not count: their `ts` is outside the decision's span
    (`outside_window`), or they reached the ledger after it closed (`after_close`). `since`
    filters on the event's receipt time. Oldest receipt first.

    An event committed while its decision was being closed, with a receipt time just before the
    closing time, is missed here; the ingestion watermark makes that window a rare race.
    """
    lower = Decision.ts - settings.clock_skew_s
    upper = Decision.ts + settings.reward_window_s
    outside = or_(Event.ts < lower, Event.ts > upper)
    stmt = (
        select(Event, case((outside, "outside_window"), else_="after_close").label("reason"))
        .join(Decision, Decision.decision_id == Event.decision_id)
        .where(
            Decision.closed_at.is_not(None),
            or_(outside, Event.received_at > Decision.closed_at),
        )
        .order_by(Event.received_at, Event.event_id)
        .limit(limit)
    )
    if since is not None:
        stmt = stmt.where(Event.received_at >= since)
    with ledger_errors(), sessions() as s:
        return [
            LateEvent(e.event_id, e.decision_id, e.type, e.ts, e.received_at, reason)
            for e, reason in s.execute(stmt).all()
        ]


def _decision_row(d: DecisionRecord, received_at: float) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id,
        "product_id": d.product_id,
        "variant_id": d.variant_id,
        "policy": d.policy,
        "probability": d.probability,
        "model_version": d.model_version,
        # Serialized as they are (orjson writes tuples as arrays): no copies per message.
        "context": d.context if type(d.context) is dict else dict(d.context),
        "actions": d.actions,
        "pmf": d.pmf,
        "ts": d.ts,
        "received_at": received_at,
        "partition": d.partition,
        "closed_at": None,
        "deferred": d.deferred,
        "activated": not d.deferred,
    }


def _event_row(e: EventRecord, received_at: float) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "decision_id": e.decision_id,
        "type": e.type,
        "ts": e.ts,
        "value": e.value,
        "received_at": received_at,
    }


def _reward_row(c: ClosedDecision, closed_at: float) -> dict[str, Any]:
    return {
        "decision_id": c.decision_id,
        "seq": c.seq,
        "reward": c.reward,
        "clicks": c.clicks,
        "add_to_carts": c.add_to_carts,
        "purchases": c.purchases,
        "revenue": c.revenue,
        "closed_at": closed_at,
    }


def _outcome(row: Any, c: ClosedDecision) -> Outcome:
    """A closing decision as the report counts it (`clicked`: any click in span, and so on)."""
    return Outcome(
        c.decision_id,
        c.product_id,
        c.variant_id,
        row.policy,
        row.ts,
        c.probability,
        int(c.clicks > 0),
        int(c.purchases > 0),
        c.revenue,
    )


def _first_of_each(records: Sequence[T], key: str) -> list[T]:
    """The records in order, keeping the first of each key (first write wins in a batch too)."""
    seen: set[str] = set()
    out = []
    for r in records:
        k = getattr(r, key)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = [
    "DEFAULT_CLOSE_LIMIT",
    "ClosedDecision",
    "IngestResult",
    "LateEvent",
    "chain_tip",
    "close_expired_windows",
    "closed_since",
    "ingest",
    "late_events",
]
