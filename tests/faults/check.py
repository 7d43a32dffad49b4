"""After a fault run: wait until copyloop is quiet (its decision log owes the ledger nothing and
the ledger stopped changing), then compare the ledger with the producers' own record, exactly.

- decisions: every acknowledged decision is in the ledger; anything else there is a decision
  whose request got no answer (its `rid` is in the uncertain set);
- events: every accepted event is in the ledger once (the table's key makes "twice" impossible;
  what matters is that the rewards count each once); anything else there was uncertain;
- rewards: every ledger decision is closed with exactly one reward, the reward sequence is dense
  (1…N, so each was learned once, in order), the newest snapshot has learned through N, and each
  reward's counts equal the ledger's events of that decision that were on time;
- dead letters: exactly one per poison message.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.decision_log import SUFFIX, decode
from api.publisher import TABLES
from core.ledger.presence import held_ids
from core.ledger.tables import Decision, Event, ModelSnapshot, Reward
from tests.faults.inject import Injection
from tests.faults.traffic import Record


@dataclass
class Verdict:
    ok: bool
    lines: list[str] = field(default_factory=list)
    numbers: dict[str, object] = field(default_factory=dict)


def owed(sessions: sessionmaker[Session], spool_dir: Path) -> int:
    """How many decisions, events and activations in the API's decision log under `spool_dir`
    the ledger lacks: what copyloop still has to deliver, whether or not an API process is up
    to do it right now (a restarted API ships its predecessors' log only once it has started)."""
    wanted: dict[str, list[str]] = {table: [] for table in TABLES.values()}
    for path in spool_dir.glob(f"*{SUFFIX}"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # pruned meanwhile: the ledger held all of it
            continue
        for r in decode(data)[0]:
            if r.kind in TABLES:
                wanted[TABLES[r.kind]].append(r.ident)
    held = held_ids(sessions, wanted)
    return sum(len(set(ids) - held.get(table, set())) for table, ids in wanted.items())


def quiesce(
    sessions: sessionmaker[Session],
    record: Record,
    spool_dir: Path,
    timeout_s: float,
    tick: Callable[[], None] = lambda: None,
) -> bool:
    """Wait until the decision log owes the ledger nothing (`owed`), every acknowledged
    decision is stored and closed, the newest snapshot learned every reward, and nothing changed
    for 3 s. False on timeout (the check then says what is missing). `tick` runs every half
    second (the harness restarts crashed parts there).

    A quiet ledger alone does not mean copyloop is done: after a kill, the consumer can close
    and learn everything it has long before the restarted API (20 s and more to start on a
    loaded machine) ships the decisions its predecessor answered last; those were reported lost
    when the wait ended on 15 s of quiet."""
    deadline = time.monotonic() + timeout_s
    last: tuple[int, ...] | None = None
    stable_since = time.monotonic()
    with record.lock:
        acked = len(record.acked)
    while time.monotonic() < deadline:
        tick()
        try:
            with sessions() as s:
                state = (
                    s.scalar(select(func.count()).select_from(Decision)) or 0,
                    s.scalar(select(func.count()).select_from(Event)) or 0,
                    s.scalar(
                        select(func.count())
                        .select_from(Decision)
                        .where(Decision.closed_at.is_(None))
                    )
                    or 0,
                    s.scalar(select(func.max(Reward.seq))) or 0,
                    s.scalar(
                        select(ModelSnapshot.last_seq)
                        .order_by(ModelSnapshot.version.desc())
                        .limit(1)
                    )
                    or 0,
                )
            owing = owed(sessions, spool_dir)
        except Exception:  # noqa: BLE001 - the database may be restarting; try again
            time.sleep(1)
            continue
        if state != last:
            last, stable_since = state, time.monotonic()
        decisions, _, open_, max_seq, learned = state
        settled = open_ == 0 and learned == max_seq and not owing
        stable_s = time.monotonic() - stable_since
        # All acknowledged decisions in and learned; or, when some never arrive, long quiet.
        if settled and (stable_s >= 3 and decisions >= acked or stable_s >= 15):
            return True
        time.sleep(0.5)
    return False


def count_dead_letters(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        client_id=f"faults-{uuid.uuid4().hex[:6]}",
    )
    seen, quiet_since = 0, time.monotonic()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and time.monotonic() - quiet_since < 3:
            batch = consumer.poll(timeout_ms=200)
            n = sum(len(records) for records in batch.values())
            if n:
                seen, quiet_since = seen + n, time.monotonic()
    finally:
        consumer.close()
    return seen


def compare(
    sessions: sessionmaker[Session],
    record: Record,
    injections: list[Injection],
    t0: float,
    poison_sent: int,
    dead_letters: int | None,
) -> Verdict:
    v = Verdict(ok=True)

    def fail(line: str) -> None:
        v.ok = False
        v.lines.append("MISMATCH " + line)

    with sessions() as s:
        decisions = {
            d: (ctx or {}).get("rid")
            for d, ctx in s.execute(select(Decision.decision_id, Decision.context))
        }
        events = {
            e: (d, t, val, rec)
            for e, d, t, val, rec in s.execute(
                select(
                    Event.event_id, Event.decision_id, Event.type, Event.value, Event.received_at
                )
            )
        }
        rewards = {
            r.decision_id: (r.seq, r.clicks, r.purchases, r.revenue, r.closed_at)
            for r in s.scalars(select(Reward))
        }
        open_decisions = s.scalar(
            select(func.count()).select_from(Decision).where(Decision.closed_at.is_(None))
        )
        learned = s.scalar(
            select(ModelSnapshot.last_seq).order_by(ModelSnapshot.version.desc()).limit(1)
        )
    with record.lock:
        acked = dict(record.acked)
        uncertain_rids = set(record.uncertain_rids)
        accepted = dict(record.accepted)
        uncertain_events = set(record.uncertain_events)

    # -- decisions ---------------------------------------------------------------------------
    missing = sorted(set(acked) - set(decisions), key=lambda d: acked[d][1])
    extra = set(decisions) - set(acked)
    phantom = [d for d in extra if decisions[d] not in uncertain_rids]
    v.numbers.update(
        decisions_acked=len(acked),
        decisions_in_ledger=len(decisions),
        decisions_missing=len(missing),
        decisions_unanswered_but_kept=len(extra) - len(phantom),
    )
    if missing:
        fail(f"{len(missing)} of {len(acked)} acknowledged decisions are not in the ledger")
        for kind, n in _blame(missing, acked, injections, t0).items():
            v.lines.append(f"  {n} lost around {kind}")
        for d in missing[:5]:
            v.lines.append(f"  e.g. {d}, answered at {acked[d][1] - t0:.2f}s")
    if phantom:
        fail(f"{len(phantom)} ledger decisions were never requested by the producers")

    # -- events --------------------------------------------------------------------------------
    lost_events = [e for e in accepted if e not in events]
    strange = [e for e in events if e not in accepted and e not in uncertain_events]
    v.numbers.update(
        events_accepted=len(accepted),
        events_in_ledger=len(events),
        events_missing=len(lost_events),
    )
    lost_with_decision = sum(1 for e in lost_events if accepted[e][0] in missing)
    if lost_events:
        with record.lock:
            by_channel = Counter(record.channel.get(e, "?") for e in lost_events)
        fail(
            f"{len(lost_events)} of {len(accepted)} accepted events are not in the ledger "
            f"({lost_with_decision} of them belong to lost decisions; accepted over "
            f"{dict(by_channel)})"
        )
    if strange:
        fail(f"{len(strange)} ledger events were never sent by the producers")

    # -- rewards, learned once -----------------------------------------------------------------
    unrewarded = set(decisions) - set(rewards)
    seqs = sorted(r[0] for r in rewards.values())
    v.numbers.update(
        rewards=len(rewards), learned_through_seq=learned, open_decisions=open_decisions
    )
    if unrewarded:
        fail(f"{len(unrewarded)} ledger decisions have no reward (window never closed)")
    if seqs != list(range(1, len(seqs) + 1)):
        fail(f"reward seq is not 1..{len(seqs)}: a reward was skipped or written twice")
    if seqs and learned != seqs[-1]:
        fail(f"the newest snapshot learned through seq {learned}, the last reward is {seqs[-1]}")
    # An event stored well before its decision closed must be counted, one stored after it
    # must not (late); within a second of the close either is right (the close read a snapshot).
    sure: dict[str, Counter[str]] = defaultdict(Counter)
    maybe: dict[str, Counter[str]] = defaultdict(Counter)
    late = 0
    for d, t, _val, rec in events.values():
        r = rewards.get(d)
        if r is None:
            continue
        if rec > r[4] + 1.0:
            late += 1
        else:
            (sure if rec < r[4] - 1.0 else maybe)[d][t] += 1
    wrong = []
    for d, (_, clicks, purchases, _rev, _closed) in rewards.items():
        for kind, n in (("click", clicks), ("purchase", purchases)):
            if not sure[d][kind] <= n <= sure[d][kind] + maybe[d][kind]:
                wrong.append(d)
    v.numbers.update(late_events=late, rewards_wrong=len(wrong))
    if wrong:
        fail(f"{len(wrong)} rewards do not equal their decision's on-time events")

    # -- dead letters ----------------------------------------------------------------------------
    if dead_letters is not None:
        v.numbers.update(poison_sent=poison_sent, dead_letters=dead_letters)
        if dead_letters != poison_sent:
            fail(f"{poison_sent} poison messages gave {dead_letters} dead letters")
    return v


def _blame(
    missing: list[str],
    acked: dict[str, tuple[str, float]],
    injections: list[Injection],
    t0: float,
) -> dict[str, int]:
    """Each lost decision charged to the latest injection that began before its answer + 2 s
    (an answer given just before a kill is the typical loss), else to "no injection"."""
    out: Counter[str] = Counter()
    for d in missing:
        at = acked[d][1] - t0
        before = [i for i in injections if i.at_s <= at + 2.0]
        out[f"{before[-1].kind} at {before[-1].at_s:.1f}s" if before else "no injection"] += 1
    return dict(out)
