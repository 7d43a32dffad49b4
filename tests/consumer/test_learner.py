"""The learner's promise: the model equals the newest snapshot plus a replay of the rewards after
it, so a crash anywhere loses no learning and learns nothing twice."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from consumer import LeaseLost
from consumer.join import close_expired_windows, ingest
from consumer.learner import ElectedLearner, Learner, StepReport
from core.ledger import JobLease, ModelSnapshot, snapshots

T0 = 1_767_000_000.0


@pytest.fixture
def settings(make_settings):
    return make_settings(
        reward_window_s=1.0, close_grace_s=0.5, clock_skew_s=1.0, snapshot_every_n=10_000
    )


def produce(sessions, catalog, make_decision, make_event, n, start=0, seed=0):
    """`n` decisions over the catalog with random contexts and events; returns their ids."""
    rng = np.random.default_rng(seed + start)
    products = sorted(catalog)
    decisions, events = [], []
    for i in range(start, start + n):
        pid = products[i % len(products)]
        actions = tuple(catalog[pid])
        chosen = int(rng.integers(len(actions)))
        ctx = {"device": ("mobile", "desktop")[int(rng.integers(2))], "hour": int(rng.integers(3))}
        ts = T0 + i * 0.001
        decisions.append(make_decision(f"d{i:05d}", ts, pid, actions, chosen, ctx))
        for k, kind in enumerate(("click", "add_to_cart", "purchase")):
            if rng.random() < (0.5 if chosen == 1 else 0.2) / (k + 1):
                events.append(make_event(f"e{i}-{k}", f"d{i:05d}", kind, ts + 0.1, 10.0))
    ingest(sessions, decisions, events)
    return [d.decision_id for d in decisions]


def test_no_snapshot_means_an_untrained_one_is_saved_at_once(sessions, settings):
    learner = Learner(sessions, settings)

    assert learner.catch_up() == 0

    snap = snapshots.load_latest(sessions)
    assert (snap.version, snap.last_seq, snap.vw_args) == (1, 0, settings.vw_args)
    assert (learner.model_version, learner.last_seq) == (1, 0)
    learner.close()


def test_snapshot_plus_replay_equals_uninterrupted_learning(
    sessions, settings, seed_catalog, make_decision, make_event, model_weights, from_scratch
):
    catalog = seed_catalog(products=3, variants=3)
    first = Learner(sessions, settings, close_limit=70)
    first.catch_up()
    produce(sessions, catalog, make_decision, make_event, 150)
    while first.close_and_learn(T0 + 100):  # several transactions of at most 70
        pass
    assert first.maybe_snapshot(force=True) == 2
    produce(sessions, catalog, make_decision, make_event, 150, start=150)
    assert len(first.close_and_learn(T0 + 100)) == 70  # committed to the ledger, learned…
    first.close()  # …and the process dies before the next snapshot

    second = Learner(sessions, settings, close_limit=70)
    replayed = second.catch_up()
    while second.close_and_learn(T0 + 100):
        pass

    assert replayed == 70
    assert (second.last_seq, second.model_version) == (300, 2)
    assert second.learned == 70 + 80
    assert model_weights(second.policy.save()) == model_weights(from_scratch(settings.vw_args))
    assert second.maybe_snapshot(force=True) == 3
    final = snapshots.load_latest(sessions)
    assert final.last_seq == 300
    assert model_weights(final.model) == model_weights(from_scratch(settings.vw_args))
    second.close()


def test_snapshots_follow_the_cadence(
    sessions, make_settings, seed_catalog, make_decision, make_event
):
    settings = make_settings(
        reward_window_s=1.0, close_grace_s=0.5, snapshot_every_n=25, snapshot_every_s=3600
    )
    catalog = seed_catalog()
    learner = Learner(sessions, settings, close_limit=20)
    learner.catch_up()
    produce(sessions, catalog, make_decision, make_event, 45)

    learner.close_and_learn(T0 + 100)  # 20 unsaved
    assert learner.maybe_snapshot() is None
    learner.close_and_learn(T0 + 100)  # 40 unsaved
    assert learner.maybe_snapshot() == 2
    assert learner.maybe_snapshot(force=True) is None  # nothing new learned since
    learner.close_and_learn(T0 + 100)
    assert learner.maybe_snapshot(force=True) == 3

    with sessions() as s:
        assert list(s.scalars(select(ModelSnapshot.last_seq).order_by(ModelSnapshot.version))) == [
            0,
            40,
            45,
        ]
    learner.close()


def test_a_learner_behind_the_chain_is_fenced(
    sessions, settings, seed_catalog, make_decision, make_event
):
    catalog = seed_catalog()
    stale, current = Learner(sessions, settings), Learner(sessions, settings)
    stale.catch_up()
    current.catch_up()
    produce(sessions, catalog, make_decision, make_event, 10)
    assert len(current.close_and_learn(T0 + 100)) == 10
    produce(sessions, catalog, make_decision, make_event, 5, start=10)

    with pytest.raises(LeaseLost, match="the reward chain is at seq 10, this learner at 0"):
        stale.close_and_learn(T0 + 100)
    skipping = close_expired_windows(sessions, settings, T0 + 100, limit=2)[1:]  # seq 12 only
    with pytest.raises(LeaseLost, match="reward seq 12 does not follow 10"):
        current.learn(skipping)
    assert current.last_seq == 10

    stale.close()
    current.close()


def test_decisions_with_unknown_variants_are_rewarded_not_learned(
    sessions, settings, make_decision
):
    learner = Learner(sessions, settings)
    learner.catch_up()
    ingest(sessions, [make_decision("ghost", T0, "gone", ("x0", "x1"))], [])

    (closed,) = learner.close_and_learn(T0 + 100)

    assert (closed.decision_id, learner.last_seq, learner.learned, learner.skipped) == (
        "ghost",
        1,
        0,
        1,
    )
    learner.close()


def test_one_elected_learner_at_a_time_and_a_successor_catches_up(
    sessions, settings, seed_catalog, make_decision, make_event, model_weights, from_scratch
):
    catalog = seed_catalog()
    produce(sessions, catalog, make_decision, make_event, 60)

    def elect(stop, steps):
        return ElectedLearner(
            sessions,
            settings,
            stop,
            clock=lambda: T0 + 100,
            lease_ttl_s=2.0,
            interval_s=0.05,
            close_limit=25,
            on_step=steps.append,
        )

    stop_a, stop_b = threading.Event(), threading.Event()
    steps_a: list[StepReport] = []
    steps_b: list[StepReport] = []
    a = threading.Thread(target=elect(stop_a, steps_a).run)
    a.start()
    wait_for(lambda: steps_a and steps_a[-1].last_seq == 60, "the first learner")
    b = threading.Thread(target=elect(stop_b, steps_b).run)
    b.start()
    time.sleep(0.5)
    assert steps_b == []  # the lease is taken: the second one waits
    produce(sessions, catalog, make_decision, make_event, 40, start=60)
    wait_for(lambda: steps_a[-1].last_seq == 100, "the first learner again")

    stop_a.set()  # a clean stop: final snapshot, lease released
    a.join(10)
    produce(sessions, catalog, make_decision, make_event, 30, start=100)
    wait_for(lambda: steps_b and steps_b[-1].last_seq == 130, "the successor")
    stop_b.set()
    b.join(10)

    assert sum(s.closed for s in steps_a) == 100
    assert sum(s.closed for s in steps_b) == 30
    final = snapshots.load_latest(sessions)
    assert final.last_seq == 130
    assert model_weights(final.model) == model_weights(from_scratch(settings.vw_args))
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(JobLease)) == 0  # released


def wait_for(predicate, what, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_changed_arguments_train_a_new_model_on_the_logs_at_once(
    sessions,
    settings,
    make_settings,
    seed_catalog,
    make_decision,
    make_event,
    model_weights,
    from_scratch,
):
    """A warm start: the snapshot was trained with other arguments than the settings say, so
    the learner trains a fresh model with the new ones on every closed decision (the ledger is
    young) and saves it before serving anything; a restart then loads it instead of training
    again."""
    catalog = seed_catalog(products=3, variants=3)
    old = Learner(sessions, settings)
    old.catch_up()
    produce(sessions, catalog, make_decision, make_event, 120)
    while old.close_and_learn(T0 + 100):
        pass
    old.maybe_snapshot(force=True)
    old.close()
    changed = make_settings(
        reward_window_s=1.0, close_grace_s=0.5, clock_skew_s=1.0, bandit_explorer="--epsilon 0.1"
    )
    assert changed.vw_args != settings.vw_args

    fresh = Learner(sessions, changed)
    assert fresh.catch_up() == 120
    snap = snapshots.load_latest(sessions)
    assert (snap.vw_args, snap.last_seq, snap.version) == (changed.vw_args, 120, 3)
    assert model_weights(snap.model) == model_weights(from_scratch(changed.vw_args))
    fresh.close()
    again = Learner(sessions, changed)
    assert again.catch_up() == 0  # loaded, not retrained
    assert again.model_version == 3
    again.close()


def test_a_warm_start_learns_only_the_newest_closed_decisions(
    sessions, make_settings, seed_catalog, make_decision, make_event
):
    catalog = seed_catalog(products=2, variants=3)
    settings = make_settings(reward_window_s=1.0, close_grace_s=0.5, bandit_warm_start_max=50)
    first = Learner(sessions, settings)
    first.catch_up()
    produce(sessions, catalog, make_decision, make_event, 200)
    while first.close_and_learn(T0 + 100):
        pass
    first.close()
    with sessions.begin() as s:  # the only snapshot is lost: nothing usable to load
        s.query(ModelSnapshot).delete()
    second = Learner(sessions, settings)
    assert second.catch_up() == 50
    assert (second.last_seq, second.learned) == (200, 50)
    second.close()


def test_a_snapshot_whose_file_is_gone_means_a_warm_start(
    sessions, make_settings, seed_catalog, make_decision, make_event, tmp_path
):
    """The fault suite's `snapshot_missing`: the newest snapshot's row names a file that was
    deleted. The learner must warm-start from the logs, not fail on every restart."""
    catalog = seed_catalog(products=2, variants=3)
    settings = make_settings(
        reward_window_s=1.0,
        close_grace_s=0.5,
        snapshot_dir=str(tmp_path / "snapshots"),
        bandit_warm_start_max=50,
    )
    first = Learner(sessions, settings)
    first.catch_up()
    produce(sessions, catalog, make_decision, make_event, 80)
    while first.close_and_learn(T0 + 100):
        pass
    first.maybe_snapshot(force=True)
    first.close()
    for file in (tmp_path / "snapshots").glob("model-*.vw"):
        file.unlink()
    second = Learner(sessions, settings)
    assert second.catch_up() == 50
    assert second.last_seq == 80
    assert snapshots.load_latest(sessions).last_seq == 80  # the warm start was saved at once
    second.close()
