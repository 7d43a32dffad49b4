"""The Kafka loop on a real broker (tansu): bad messages dead-lettered with their reason,
duplicates counted once, and a consumer killed with SIGKILL mid-stream and restarted that still
rewards every decision exactly once and ends with the model a crash-free run would have."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata
from sqlalchemy import create_engine, func, select, text

from consumer.loop import LoopTuning, Progress, run_consumer
from core.broker import EmbeddedBroker, ensure_topics, free_port
from core.ledger import Decision as DecisionRow
from core.ledger import Event, ModelSnapshot, Reward, snapshots
from core.messages import Decision
from core.settings import Settings
from tests.reports.rollup_checks import assert_rollups_match_rebuild

REPO = Path(__file__).resolve().parents[2]
FAST = LoopTuning(lease_ttl_s=3.0, close_interval_s=0.1)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def decision_message(
    decision_id: str,
    ts: float,
    pid: str,
    actions: list[str],
    chosen: int,
    context: dict[str, object],
) -> bytes:
    n = len(actions)
    return Decision(
        decision_id=decision_id,
        product_id=pid,
        variant_id=actions[chosen],
        policy="bandit",
        probability=1.0 / n,
        model_version=1,
        context=context,
        actions=actions,
        pmf=[1.0 / n] * n,
        ts=ts,
    ).to_bytes()


def read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.topic_partitions)])
        consumer.seek_to_beginning()
        out: list = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def count(sessions, what) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(what)) or 0


@pytest.fixture
def producer(broker):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    yield p
    p.close()


def test_bad_messages_go_to_the_dlq_and_duplicates_count_once(
    kafka_settings, sessions, seed_catalog, producer
):
    settings = kafka_settings.model_copy(
        update={"reward_window_s": 1.0, "close_grace_s": 0.5, "clock_skew_s": 1.0}
    )
    catalog = seed_catalog(products=1, variants=3)
    ensure_topics(
        settings.bootstrap,
        [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
        settings.topic_partitions,
    )
    ts = time.time()
    ev = settings.events_topic
    producer.send(
        settings.decisions_topic,
        decision_message("d1", ts, "p0", catalog["p0"], 1, {"device": "mobile"}),
        key=b"d1",
    )
    for event_id, kind in (("e1", "click"), ("e1", "purchase"), ("e2", "add_to_cart")):
        body = {"event_id": event_id, "decision_id": "d1", "type": kind, "ts": ts * 1000 + 100}
        producer.send(ev, json.dumps(body).encode(), key=b"d1")
    garbage = {
        b"not json": "not JSON",
        b'{"event_id": "g1", "decision_id": "d1", "type": "like"}': "type: Input should be",
        b'{"event_id": "g2", "type": "click"}': "decision_id: Field required",
        b'{"event_id": "g3", "decision_id": "d1", "type": "click", "ts": "yesterday"}': "ts: must",
        # orjson refuses it and json.loads raises RecursionError (not a ValueError).
        b"[" * 2000 + b"]" * 2000: "nested too deeply",
    }
    for value in garbage:
        producer.send(ev, value, key=b"d1")
    producer.send(settings.decisions_topic, b'{"decision_id": "d2"}', key=b"d2")
    deep_decision = b'{"decision_id": "d3", "context": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    producer.send(settings.decisions_topic, deep_decision, key=b"d3")
    producer.flush()

    seen: list[Progress] = []
    stop = threading.Event()
    thread = threading.Thread(target=run_consumer, args=(settings, stop, seen.append, FAST))
    thread.start()
    try:
        wait_for(lambda: count(sessions, Reward) == 1, 60, "d1's reward")
        letters = [json.loads(r.value) for r in read_topic(settings, settings.dlq_topic, 7)]
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()

    assert len(letters) == 7
    by_value = {letter["value"]: letter for letter in letters}
    for value, reason in garbage.items():
        letter = by_value[value.decode()]
        assert reason in letter["reason"]
        assert (letter["topic"], letter["key"]) == (ev, "d1")
        assert isinstance(letter["offset"], int)
    assert "product_id: Field required" in by_value['{"decision_id": "d2"}']["reason"]
    assert by_value[deep_decision.decode()]["reason"]
    with sessions() as s:
        reward = s.get(Reward, "d1")
    # e1 twice (the second time as a purchase) counts once, as the click it was first.
    assert (reward.clicks, reward.add_to_carts, reward.purchases, reward.reward) == (1, 1, 0, 2.0)
    last = seen[-1]
    assert (last.decisions, last.events, last.duplicates, last.dead_lettered) == (1, 2, 1, 7)
    assert last.closed == 1
    final = snapshots.load_latest(sessions)
    assert final.last_seq == 1  # the graceful stop saved what was learned


def refuse_ids(sessions, table: str, column: str, prefix: str) -> None:
    """Make the ledger itself refuse rows whose `column` starts with `prefix`: a CHECK
    constraint on PostgreSQL, a trigger on SQLite (both raise an integrity error)."""
    with sessions.begin() as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(
                text(
                    f"ALTER TABLE {table} ADD CONSTRAINT test_refuse_{table} "
                    f"CHECK ({column} NOT LIKE '{prefix}%')"
                )
            )
        else:
            s.execute(
                text(
                    f"CREATE TRIGGER test_refuse_{table} BEFORE INSERT ON {table} "
                    f"WHEN NEW.{column} LIKE '{prefix}%' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )


def test_records_the_ledger_refuses_are_found_by_halving_and_dead_lettered_alone(
    kafka_settings, sessions, seed_catalog, producer, caplog
):
    settings = kafka_settings.model_copy(update={"reward_window_s": 3600.0})
    catalog = seed_catalog(products=1, variants=3)
    ensure_topics(
        settings.bootstrap,
        [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
        settings.topic_partitions,
    )
    refuse_ids(sessions, "decisions", "decision_id", "refused")
    refuse_ids(sessions, "events", "event_id", "refused")
    ts = time.time()
    n = 400
    refused = {"refused-d7", "refused-e0", "refused-e399"}
    for i in range(n):
        did = "refused-d7" if i == 7 else f"d{i}"
        body = decision_message(did, ts, "p0", catalog["p0"], i % 3, {"device": "mobile"})
        producer.send(settings.decisions_topic, body, key=did.encode())
        eid = f"refused-e{i}" if i in (0, n - 1) else f"e{i}"
        event = {"event_id": eid, "decision_id": did, "type": "click", "ts": ts * 1000 + 100}
        producer.send(settings.events_topic, json.dumps(event).encode(), key=did.encode())
    producer.flush()

    caplog.set_level(logging.WARNING, logger="consumer.loop")
    stop = threading.Event()
    thread = threading.Thread(target=run_consumer, args=(settings, stop, None, FAST))
    thread.start()
    try:
        letters = [json.loads(r.value) for r in read_topic(settings, settings.dlq_topic, 3, 90)]
        wait_for(lambda: count(sessions, Event) == n - 2, 60, "every accepted event")
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()

    ids = {
        json.loads(letter["value"]).get("event_id") or json.loads(letter["value"])["decision_id"]
        for letter in letters
    }
    assert ids == refused
    assert all("refused the batch" in letter["reason"] for letter in letters)
    assert count(sessions, DecisionRow) == n - 1
    assert count(sessions, Event) == n - 2
    halvings = [r for r in caplog.records if "in halves" in r.getMessage()]
    # Three bad records among 800: a few dozen smaller transactions, not 800 single ones.
    assert 0 < len(halvings) <= 3 * 11


def committed_offsets(settings: Settings, topic: str) -> list[int | None]:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    try:
        return [
            consumer.committed(TopicPartition(topic, p)) for p in range(settings.topic_partitions)
        ]
    finally:
        consumer.close(autocommit=False)


def test_offsets_wait_for_the_database_commit(kafka_settings, sessions, producer, caplog):
    ensure_topics(
        kafka_settings.bootstrap,
        [kafka_settings.decisions_topic, kafka_settings.events_topic, kafka_settings.dlq_topic],
        kafka_settings.topic_partitions,
    )
    for i in range(50):
        body = {"event_id": f"e{i}", "decision_id": f"d{i}", "type": "click"}
        producer.send(kafka_settings.events_topic, json.dumps(body).encode(), key=f"d{i}".encode())
    producer.flush()
    down = kafka_settings.model_copy(
        update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"}
    )

    stop = threading.Event()
    thread = threading.Thread(target=run_consumer, args=(down, stop, None, FAST))
    thread.start()

    def retries() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "consumer.loop" and "retrying" in r.message]

    try:  # it joins the group, polls, fails to ingest, backs off, polls again…
        wait_for(lambda: bool(retries()), 90, "the consumer to back off from the ledger")
    finally:
        stop.set()
        thread.join(60)
    assert all(o is None for o in committed_offsets(kafka_settings, kafka_settings.events_topic))
    assert "ledger unavailable" in retries()[0].message  # it did poll, and back off
    assert count(sessions, Event) == 0

    seen: list[Progress] = []
    stop = threading.Event()
    thread = threading.Thread(target=run_consumer, args=(kafka_settings, stop, seen.append, FAST))
    thread.start()
    try:
        wait_for(lambda: count(sessions, Event) == 50, 60, "the events, once the ledger is up")
    finally:
        stop.set()
        thread.join(60)
    assert sum(o or 0 for o in committed_offsets(kafka_settings, kafka_settings.events_topic)) == 50


def produce_decisions(bootstrap: str, topic: str, catalog, ids: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        ts = time.time()
        for i, decision_id in enumerate(ids):
            message = decision_message(decision_id, ts + i * 1e-3, "p0", catalog["p0"], 0, {})
            producer.send(topic, message, key=decision_id.encode())
        producer.flush()
    finally:
        producer.close()


def commit_offset(settings: Settings, topic: str, offset: int) -> None:
    """Commit `offset` for the group's partition 0 of `topic`, as a consumer would have."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close(autocommit=False)


def wait_ingested(sessions, settings: Settings, rows: int, offset: int, what: str) -> None:
    """Until the ledger holds `rows` decisions and the group committed `offset` on partition 0."""
    wait_for(lambda: count(sessions, DecisionRow) == rows, 60, what)
    wait_for(
        lambda: committed_offsets(settings, settings.decisions_topic) == [offset],
        30,
        f"offset {offset} committed",
    )


def restart_empty(broker: EmbeddedBroker, settings: Settings, catalog, new: list[str]) -> None:
    """Restart the broker (same port, empty, another cluster id), create the topics again and
    write `new` decisions to it, with the offset 120 of the lost log committed for the group
    (a commit in flight when the broker restarted lands there)."""
    old_cluster = broker.cluster_id
    broker.stop()
    broker.start()
    assert broker.cluster_id != old_cluster
    topics = [settings.decisions_topic, settings.events_topic, settings.dlq_topic]
    ensure_topics(settings.bootstrap, topics, 1)
    produce_decisions(settings.bootstrap, settings.decisions_topic, catalog, new)
    commit_offset(settings, settings.decisions_topic, 120)


def test_a_broker_restarted_empty_is_read_again_from_its_start(
    make_settings, sessions, seed_catalog, tmp_path
):
    """The embedded broker keeps its log in memory: restarted, it answers at the same address
    with empty topics and a new cluster id. A consumer 120 records into the old log must read
    the new one from offset 0, whatever offset it held or committed: tansu answers a fetch
    beyond a partition's end with nothing (not OFFSET_OUT_OF_RANGE), so a consumer at 120 would
    wait there and never read the new log's first 120 records. The consumer is stopped
    (SIGSTOP) while the broker restarts, so that it comes back to a new log already written."""
    catalog = seed_catalog(products=1, variants=3)
    with EmbeddedBroker(free_port()) as broker:
        settings = make_settings(kafka_bootstrap=broker.bootstrap, topic_partitions=1)
        topics = [settings.decisions_topic, settings.events_topic, settings.dlq_topic]
        ensure_topics(settings.bootstrap, topics, 1)
        old = [f"old-{i}" for i in range(120)]
        produce_decisions(settings.bootstrap, settings.decisions_topic, catalog, old)
        proc = start_consumer(settings, tmp_path / "consumer.log")
        try:
            wait_ingested(sessions, settings, 120, 120, "the first 120 decisions")
            proc.send_signal(signal.SIGSTOP)
            restart_empty(broker, settings, catalog, [f"new-{i}" for i in range(40)])
            proc.send_signal(signal.SIGCONT)
            wait_ingested(sessions, settings, 160, 40, "the new log's decisions")
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(30)
        assert proc.returncode == 0
        assert "cluster id changed" in (tmp_path / "consumer.log").read_text()


def test_a_consumer_started_on_a_broker_restarted_empty_reads_it_from_its_start(
    make_settings, sessions, seed_catalog, tmp_path
):
    """A consumer that never saw the lost log, started with an offset of it committed for its
    group (120, where the new log ends at 40), reads the new log from offset 0."""
    catalog = seed_catalog(products=1, variants=3)
    with EmbeddedBroker(free_port()) as broker:
        settings = make_settings(kafka_bootstrap=broker.bootstrap, topic_partitions=1)
        restart_empty(broker, settings, catalog, [f"new-{i}" for i in range(40)])
        proc = start_consumer(settings, tmp_path / "consumer.log")
        try:
            wait_ingested(sessions, settings, 40, 40, "the new log's decisions")
        finally:
            proc.terminate()
            proc.wait(30)
        assert proc.returncode == 0
        assert "positions beyond the end of the log" in (tmp_path / "consumer.log").read_text()


# -- SIGKILL mid-stream -------------------------------------------------------------------------
WINDOW, GRACE, SKEW = 1.0, 2.0, 0.5
#: Event offsets from the decision's ts: in the span, or outside it (never near a bound).
OFFSETS = (-SKEW - 0.3, -0.2, 0.05, 0.3, 0.9, WINDOW + 0.3)


def produce_stream(producer, settings, catalog, n, start, rng) -> dict[str, tuple]:
    """`n` decisions (ts spread over the next 10n ms, so windows come due a few at a time) with
    random events, some duplicated, some without ts; returns the expected reward fields."""
    products = sorted(catalog)
    t_start = time.time()
    expected = {}
    weights = settings.reward_weights
    for i in range(start, start + n):
        did = f"d{i:06d}"
        pid = products[i % len(products)]
        actions = catalog[pid]
        chosen = int(rng.integers(len(actions)))
        ts = t_start + (i - start) * 0.01
        context = {"device": ("mobile", "desktop")[int(rng.integers(2))]}
        producer.send(
            settings.decisions_topic,
            decision_message(did, ts, pid, actions, chosen, context),
            key=did.encode(),
        )
        counts = {"click": 0, "add_to_cart": 0, "purchase": 0}
        revenue = 0.0
        for k in range(int(rng.integers(0, 4))):
            kind = ("click", "add_to_cart", "purchase")[int(rng.integers(3))]
            body = {"event_id": f"{did}-{k}", "decision_id": did, "type": kind}
            if kind == "purchase":
                body["value"] = float(rng.integers(1, 100))
            if rng.random() < 0.2:  # no ts: the Kafka timestamp, set here, counts
                in_span, stamp = True, int(ts * 1000) + 200
            else:
                ts_ms = round((ts + OFFSETS[int(rng.integers(len(OFFSETS)))]) * 1000)
                body["ts"] = ts_ms
                in_span, stamp = ts - SKEW <= ts_ms / 1000.0 <= ts + WINDOW, None
            for _ in range(1 + (rng.random() < 0.1)):  # ~10% sent twice
                producer.send(
                    settings.events_topic,
                    json.dumps(body).encode(),
                    key=did.encode(),
                    timestamp_ms=stamp,
                )
            if in_span:
                counts[kind] += 1
                revenue += body.get("value", 0.0) if kind == "purchase" else 0.0
        reward = sum(weights[k] for k, c in counts.items() if c)
        expected[did] = (
            counts["click"],
            counts["add_to_cart"],
            counts["purchase"],
            revenue,
            reward,
        )
        if i % 200 == 0:
            producer.flush()
    producer.flush()
    return expected


def start_consumer(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "COPYLOOP_DATABASE_URL": settings.database_url,
        "COPYLOOP_KAFKA_BOOTSTRAP": settings.bootstrap,
        "COPYLOOP_TOPIC_PREFIX": settings.topic_prefix,
        "COPYLOOP_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "COPYLOOP_CONSUMER_GROUP": settings.consumer_group,
        "COPYLOOP_REWARD_WINDOW_S": str(settings.reward_window_s),
        "COPYLOOP_CLOSE_GRACE_S": str(settings.close_grace_s),
        "COPYLOOP_CLOCK_SKEW_S": str(settings.clock_skew_s),
        "COPYLOOP_SNAPSHOT_EVERY_S": str(settings.snapshot_every_s),
        "COPYLOOP_SNAPSHOT_EVERY_N": str(settings.snapshot_every_n),
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer.loop", "--lease-ttl", "2", "--close-interval", "0.1"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_a_consumer_killed_mid_stream_loses_nothing_and_learns_nothing_twice(
    kafka_settings, sessions, seed_catalog, producer, model_weights, from_scratch, tmp_path
):
    settings = kafka_settings.model_copy(
        update={
            "reward_window_s": WINDOW,
            "close_grace_s": GRACE,
            "clock_skew_s": SKEW,
            "snapshot_every_s": 1.0,
            "snapshot_every_n": 100_000,
        }
    )
    catalog = seed_catalog(products=4, variants=3)
    ensure_topics(
        settings.bootstrap,
        [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
        settings.topic_partitions,
    )
    rng = np.random.default_rng(7)
    n = 1000
    log_path = tmp_path / "consumer.log"

    expected = produce_stream(producer, settings, catalog, n, 0, rng)
    first = start_consumer(settings, log_path)

    # Freeze the consumer, look: a snapshot past seq 0 and rewards committed after it? Then kill
    # it in that state, which only snapshot + replay can repair; else let it run a little more.
    # (A plain engine reads: the ledger's own SQLite sessions would wait for the frozen writer.)
    reader = create_engine(settings.database_url)
    deadline = time.monotonic() + 90
    while True:
        first.send_signal(signal.SIGSTOP)
        with reader.connect() as c:
            killed_at = c.scalar(select(func.max(Reward.seq))) or 0
            snapped = c.scalar(
                select(ModelSnapshot.last_seq).order_by(ModelSnapshot.version.desc()).limit(1)
            )
        if snapped is not None and 0 < snapped < killed_at < n - 100:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            break
        first.send_signal(signal.SIGCONT)
        if time.monotonic() > deadline:
            first.kill()
            raise AssertionError(f"never caught rewards past a snapshot ({killed_at}, {snapped})")
        time.sleep(0.1)
    reader.dispose()

    expected |= produce_stream(producer, settings, catalog, n, n, rng)
    second = start_consumer(settings, log_path)
    try:
        wait_for(lambda: count(sessions, Reward) == 2 * n, 180, "every reward")
        time.sleep(GRACE + WINDOW)  # redeliveries, if any, would land now
    finally:
        second.send_signal(signal.SIGTERM)
        code = second.wait(60)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    catch_ups = re.findall(r"caught up to seq (\d+) \((\d+) replayed\)", log)
    # The restart loaded the snapshot and replayed exactly the rewards committed after it.
    assert catch_ups[1] == (str(killed_at), str(killed_at - snapped)), catch_ups

    with sessions() as s:
        rows = s.execute(select(Reward).order_by(Reward.seq)).scalars().all()
        snaps = s.execute(select(ModelSnapshot.version, ModelSnapshot.last_seq)).all()
    assert [r.seq for r in rows] == list(range(1, 2 * n + 1))  # no gap, no duplicate
    got = {
        r.decision_id: (r.clicks, r.add_to_carts, r.purchases, r.revenue, r.reward) for r in rows
    }
    assert got == expected
    assert sum(1 for e in expected.values() if e[4] > 0) > n // 2  # the test means something
    final = snapshots.load_latest(sessions)
    assert final.last_seq == 2 * n
    assert len(snaps) >= 3
    assert model_weights(final.model) == model_weights(from_scratch(final.vw_args))
    # The report's rollups, kept by both consumers in their closing transactions, hold every
    # decision once: equal to a rebuild from the ledger.
    assert assert_rollups_match_rebuild(sessions, settings) == 2 * n
