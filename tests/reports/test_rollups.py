"""Report rollups (SQLite and PostgreSQL): the report read from the rollups plus the decisions
they do not hold equals the full scan field by field, on a ledger with closed and open
decisions, late in-span events of closed decisions, filters cutting hours in two; the rollups
the closer and ingest keep equal a rebuild, whatever is replayed; stale rollups are never
trusted."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from consumer.join import close_expired_windows, ingest
from consumer.records import ActivationRecord, DecisionRecord, EventRecord
from core.ledger.tables import Decision, Event, ReportRollupState
from core.settings import Settings
from reports import uplift_report
from reports.rollups import rebuild
from reports.synthetic import Truth, fill
from tests.reports.rollup_checks import assert_rollups_match_rebuild, assert_same, rollup_rows

N = 6000
SPAN_S = 40 * 3600.0


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def close_until(sessions: sessionmaker[Session], settings: Settings, now: float) -> int:
    closed = 0
    while batch := close_expired_windows(sessions, settings, now, limit=700):
        closed += len(batch)
    return closed


def odd_contexts(sessions: sessionmaker[Session], start: float) -> None:
    """Decisions whose contexts hold numbers, booleans, null, a nested object and a non-object:
    the rollups must render their values exactly as the full scan's JSON expansion does. Some
    name a variant missing from `variants` (its style reads `(unknown)`)."""
    contexts = [
        {"hour": 7, "ratio": 0.25, "vip": True},
        {"hour": 7, "vip": False, "nothing": None},
        {"nested": {"a": 1}, "list": [1, "x"]},
        {},
    ]
    records = [
        DecisionRecord(
            decision_id=f"odd{i}",
            product_id="p0000",
            variant_id="p0000-gone" if i % 4 == 2 else "p0000-concise",  # not in `variants`
            policy=("bandit", "control")[i % 2],
            probability=0.5,
            model_version=1,
            context=contexts[i % len(contexts)],
            actions=("p0000-control", "p0000-concise"),
            pmf=(0.5, 0.5),
            ts=start + 3 * 3600.0 + 60.0 * i,
        )
        for i in range(12)
    ]
    clicks = [
        EventRecord(f"odd{i}-c", f"odd{i}", "click", r.ts + 5.0) for i, r in enumerate(records)
    ]
    ingest(sessions, records, clicks[::3])


def deferred(sessions: sessionmaker[Session], settings: Settings, start: float) -> None:
    """Deferred decisions every 97 minutes over the 40 hours: a third activated in time, a
    third activated too late, a third never; all clicked. Only the first are impressions; the
    others are `not_activated` once closed, `awaiting_activation` while open."""
    records, events, activations = [], [], []
    for i in range(25):
        ts = start + 97 * 60.0 * i + 7.0
        records.append(
            DecisionRecord(
                decision_id=f"def{i}",
                product_id=f"p000{i % 6}",
                variant_id=f"p000{i % 6}-bullets",
                policy=("bandit", "control")[i % 2],
                probability=0.25,
                model_version=1,
                context={"device": "mobile"},
                actions=(f"p000{i % 6}-control", f"p000{i % 6}-bullets"),
                pmf=(0.75, 0.25),
                ts=ts,
                deferred=True,
            )
        )
        events.append(EventRecord(f"def{i}-c", f"def{i}", "click", ts + 20.0))
        if i % 3 == 0:
            activations.append(ActivationRecord(f"def{i}", ts + 5.0))
        elif i % 3 == 1:
            activations.append(ActivationRecord(f"def{i}", ts + settings.reward_window_s + 5.0))
    ingest(sessions, records, events, activations, reward_window_s=settings.reward_window_s)


@pytest.fixture
def ledger(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> tuple[Truth, float]:
    """6,000 synthetic decisions over 40 hours; those due by hour 25 closed by the real closer,
    then late in-span events for some closed decisions (a click for a decision without one, a
    second purchase for one with one) ingested; the rest open. Returns (truth, close time)."""
    truth = fill(engine, N, n_products=6, seed=11, start=1_700_000_000.0, span_s=SPAN_S)
    odd_contexts(sessions, truth.start)
    deferred(sessions, settings, truth.start)
    now = truth.start + 25 * 3600.0 + 1234.5
    assert close_until(sessions, settings, now) > N // 2
    with sessions() as s:
        closed = s.execute(
            select(Decision.decision_id, Decision.ts)
            .where(Decision.closed_at.is_not(None))
            .order_by(Decision.decision_id)
        ).all()
    late = []
    for i, (did, ts) in enumerate(closed[::40]):
        kind, value = (("click", None), ("purchase", 12.5), ("add_to_cart", None))[i % 3]
        late.append(EventRecord(f"{did}-late{i}", did, kind, ts + 60.0, value))
    late.append(EventRecord(f"{closed[0][0]}-outside", closed[0][0], "click", closed[0][1] + 1e5))
    ingest(sessions, [], late)
    return truth, now


def report_pair(sessions, settings, **kw):
    """The report from the rollups and by a full scan (the feature section, which reads a
    sample of closed decisions the same way in both, is left out: it trains VW models)."""
    kw = {"greedy": False, "ope_sample": 500, "feature_sample": 0, **kw}
    fast = uplift_report(sessions, settings, **kw)
    full = uplift_report(sessions, settings, rollups=False, **kw)
    return fast, full


def assert_reports_equal(fast: dict, full: dict) -> None:
    assert fast["rollups"]["used"] is True, fast["rollups"]
    assert full["rollups"] == {"used": False, "note": "full scan asked for"}
    for key in set(fast) | set(full):
        if key not in ("generated_at", "rollups"):
            assert_same(fast[key], full[key], key)


@pytest.mark.parametrize("ci", ["fixed", "sequential"])
def test_rollup_report_equals_the_full_scan(
    ledger: tuple[Truth, float], sessions: sessionmaker[Session], settings: Settings, ci: str
) -> None:
    truth, _ = ledger
    fast, full = report_pair(sessions, settings, ci=ci)
    assert_reports_equal(fast, full)
    impressions = fast["arms"]["bandit"]["impressions"] + fast["arms"]["control"]["impressions"]
    assert impressions == N + 12 + 9  # 9 deferred decisions were activated in time
    unseen = sum(fast["arms"][a]["not_activated"] for a in ("bandit", "control"))
    awaiting = sum(fast["arms"][a]["awaiting_activation"] for a in ("bandit", "control"))
    assert unseen > 0 and awaiting > 0 and unseen + awaiting == 16
    assert fast["contexts"]["vip"] and fast["contexts"]["nested"]  # the odd contexts are there
    assert fast["timeseries"]["bucket"] == "hour"
    styles = {s for p in fast["timeseries"]["points"] for s in p["bandit_by_style"]}
    assert "(unknown)" in styles and "concise" in styles


@pytest.mark.parametrize(
    "window",
    [
        (1234.5, 38 * 3600.0 + 77.7),  # partial hours at both ends, open decisions inside
        (3 * 3600.0, 30 * 3600.0),  # whole hours only
        (2 * 3600.0 + 11.0, None),  # since cuts an hour; no until
        (None, 24 * 3600.0 + 999.0),  # until inside the closed part
    ],
)
def test_windows_that_cut_hours_equal_the_full_scan(
    ledger: tuple[Truth, float],
    sessions: sessionmaker[Session],
    settings: Settings,
    window: tuple[float | None, float | None],
) -> None:
    truth, _ = ledger
    since, until = (None if w is None else truth.start + w for w in window)
    fast, full = report_pair(sessions, settings, since=since, until=until)
    assert_reports_equal(fast, full)
    assert fast["cuped"]["pre_period"]["impressions"] > 0
    fast, full = report_pair(sessions, settings, since=since, until=until, product_id="p0003")
    assert_reports_equal(fast, full)
    assert {p["product_id"] for p in fast["products"]} == {"p0003"}


def test_rollups_equal_a_rebuild_and_replays_change_nothing(
    ledger: tuple[Truth, float], sessions: sessionmaker[Session], settings: Settings
) -> None:
    truth, now = ledger
    before = rollup_rows(sessions)
    held = assert_rollups_match_rebuild(sessions, settings)
    with sessions() as s:
        closed = s.query(Decision).where(Decision.closed_at.is_not(None))
        assert held == closed.where(Decision.activated).count()  # impressions only
        assert closed.where(~Decision.activated).count() > 0  # and the rest counted apart
    # Replay: the same decisions and events again (a redelivered batch), closing again.
    with sessions() as s:
        rows = s.execute(select(Decision).where(Decision.closed_at.is_not(None)).limit(50))
        again = [
            DecisionRecord(
                d.decision_id,
                d.product_id,
                d.variant_id,
                d.policy,
                d.probability,
                1,
                d.context,
                tuple(d.actions),
                tuple(d.pmf),
                d.ts,
            )
            for d in rows.scalars()
        ]
        events = s.execute(
            select(Event).where(Event.decision_id.in_([d.decision_id for d in again]))
        )
        replayed = [
            EventRecord(e.event_id, e.decision_id, e.type, e.ts, e.value) for e in events.scalars()
        ]
    assert any(e.event_id.split("-")[-1].startswith("late") for e in replayed)
    ingest(sessions, again, replayed)
    assert close_until(sessions, settings, now) == 0
    assert_same(rollup_rows(sessions), before)
    # New late events for closed decisions move the rollups exactly as a rebuild sees them.
    ingest(
        sessions,
        [],
        [
            EventRecord(f"{d.decision_id}-buy", d.decision_id, "purchase", d.ts + 1.0, 3.25)
            for d in again
        ],
    )
    assert rollup_rows(sessions) != before
    assert_rollups_match_rebuild(sessions, settings)
    # Closing the rest keeps them exact too.
    assert close_until(sessions, settings, truth.end + 10 * 3600.0) > 0
    assert_rollups_match_rebuild(sessions, settings)
    fast, full = report_pair(sessions, settings)
    assert_reports_equal(fast, full)


def test_stale_or_other_window_rollups_are_not_trusted(
    ledger: tuple[Truth, float],
    sessions: sessionmaker[Session],
    settings: Settings,
    make_settings: Callable[..., Settings],
) -> None:
    truth, now = ledger
    wider = make_settings(reward_window_s=3600.0)
    report = uplift_report(sessions, wider, greedy=False, ope_sample=0, feature_sample=0)
    assert report["rollups"]["used"] is False
    assert "reward_window_s=1800" in report["rollups"]["note"]
    # A closer with another window stops keeping them and marks them stale.
    close_until(sessions, wider, truth.end + 10 * 3600.0)
    with sessions() as s:
        assert s.get(ReportRollupState, 1).status == "stale"
    report = uplift_report(sessions, settings, greedy=False, ope_sample=0, feature_sample=0)
    assert report["rollups"] == {
        "used": False,
        "note": "rollups are stale: run 'copyloop db rollups --rebuild'",
    }
    rebuild(sessions, wider)
    fast, full = report_pair(sessions, wider)
    assert_reports_equal(fast, full)


def test_a_ledger_closed_before_the_rollups_is_stale_until_rebuilt(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    fill(engine, 400, n_products=3, seed=3, start=1_700_000_000.0, span_s=3 * 86400.0)
    close_until(sessions, settings, 1_700_000_000.0 + 4 * 86400.0)
    with sessions.begin() as s:  # as migration 0007 finds a ledger that closed decisions
        s.execute(update(ReportRollupState).values(status="stale"))
    assert (
        uplift_report(sessions, settings, ope_sample=0, feature_sample=0)["rollups"]["used"]
        is False
    )
    assert rebuild(sessions, settings) == 400
    fast, full = report_pair(sessions, settings)
    assert_reports_equal(fast, full)
