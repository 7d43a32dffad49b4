"""Deferred decisions through the real Kafka loop: activations replayed count once, and a
consumer killed with SIGKILL mid-stream and restarted learns exactly the decisions activated in
time, once each, and closes the others without a reward."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from sqlalchemy import func, select

from core.broker import ensure_topics
from core.ledger import Activation, Decision, Reward
from core.messages import Activation as ActivationMessage
from core.messages import Decision as DecisionMessage
from reports.uplift import uplift_report

REPO = Path(__file__).resolve().parents[2]
WINDOW, GRACE, SKEW = 1.0, 2.0, 0.5


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def count(sessions, *where, what=Decision) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(what).where(*where)) or 0


def start_consumer(settings, log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "COPYLOOP_DATABASE_URL": settings.database_url,
        "COPYLOOP_KAFKA_BOOTSTRAP": settings.bootstrap,
        "COPYLOOP_TOPIC_PREFIX": settings.topic_prefix,
        "COPYLOOP_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "COPYLOOP_CONSUMER_GROUP": settings.consumer_group,
        "COPYLOOP_REWARD_WINDOW_S": str(WINDOW),
        "COPYLOOP_CLOSE_GRACE_S": str(GRACE),
        "COPYLOOP_CLOCK_SKEW_S": str(SKEW),
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "consumer.loop", "--lease-ttl", "2", "--close-interval", "0.1"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def produce(producer, settings, catalog, n, rng) -> tuple[dict[str, str], list[bytes]]:
    """`n` decisions, 4 in 5 deferred, each clicked; a deferred one is activated in time (about
    half, some activations sent twice), late (a tenth) or never. Returns each decision's fate
    (`plain`, `seen`, `late`, `unseen`) and the activation messages sent."""
    products = sorted(catalog)
    t0 = time.time()
    fates: dict[str, str] = {}
    activations: list[bytes] = []
    for i in range(n):
        did = f"d{i:05d}"
        pid = products[i % len(products)]
        actions = catalog[pid]
        ts = t0 + i * 0.02  # windows come due over 12 s: the kill lands mid-learning
        defer = rng.random() < 0.8
        fate = (
            "plain" if not defer else str(rng.choice(["seen", "late", "unseen"], p=[0.5, 0.1, 0.4]))
        )
        fates[did] = fate
        message = DecisionMessage(
            decision_id=did,
            product_id=pid,
            variant_id=actions[i % len(actions)],
            policy="bandit",
            probability=1.0 / len(actions),
            model_version=1,
            context={"device": "mobile"},
            actions=actions,
            pmf=[1.0 / len(actions)] * len(actions),
            ts=ts,
            activated=not defer,
        )
        producer.send(settings.decisions_topic, message.to_bytes(), key=did.encode())
        click = {"event_id": f"{did}-c", "decision_id": did, "type": "click", "ts": ts * 1000 + 50}
        producer.send(settings.events_topic, json.dumps(click).encode(), key=did.encode())
        if fate in ("seen", "late"):
            at = ts + (0.2 if fate == "seen" else WINDOW + 0.2)
            value = ActivationMessage(type="activation", decision_id=did, ts=at * 1000).to_bytes()
            for _ in range(1 + (rng.random() < 0.3)):
                producer.send(settings.events_topic, value, key=did.encode())
                activations.append(value)
    producer.flush()
    return fates, activations


@pytest.mark.timeout(400)
def test_killed_consumer_learns_each_activated_decision_once(
    kafka_settings, sessions, seed_catalog, tmp_path
):
    settings = kafka_settings.model_copy(
        update={"reward_window_s": WINDOW, "close_grace_s": GRACE, "clock_skew_s": SKEW}
    )
    catalog = seed_catalog(products=4, variants=3)
    ensure_topics(
        settings.bootstrap,
        [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
        settings.topic_partitions,
    )
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=5)
    n = 600
    log_path = tmp_path / "consumer.log"
    try:
        fates, activations = produce(producer, settings, catalog, n, np.random.default_rng(3))
        learned = {d for d, f in fates.items() if f in ("plain", "seen")}
        first = start_consumer(settings, log_path)
        try:
            wait_for(lambda: count(sessions, what=Reward) > 0, 120, "the first rewards")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        killed_at = count(sessions, what=Reward)
        # Every activation again, as a publisher retrying after a lost acknowledgement would.
        for value in activations:
            key = json.loads(value)["decision_id"].encode()
            producer.send(settings.events_topic, value, key=key)
        producer.flush()
        second = start_consumer(settings, log_path)
        try:
            wait_for(
                lambda: count(sessions, Decision.closed_at.is_not(None)) == n, 180, "every close"
            )
            time.sleep(GRACE)  # redeliveries, if any, would land now
        finally:
            second.send_signal(signal.SIGTERM)
            code = second.wait(60)
    finally:
        producer.close()
    assert code == 0, log_path.read_text()[-3000:]
    assert 0 < killed_at < len(learned)  # the kill fell in the middle of the learning

    with sessions() as s:
        rewards = s.execute(select(Reward.decision_id, Reward.seq).order_by(Reward.seq)).all()
        activated = set(s.scalars(select(Decision.decision_id).where(Decision.activated)))
        stored_activations = s.scalar(select(func.count()).select_from(Activation))
    assert [seq for _, seq in rewards] == list(range(1, len(learned) + 1))
    assert {d for d, _ in rewards} == learned == activated
    assert stored_activations == sum(1 for f in fates.values() if f in ("seen", "late"))
    report = uplift_report(sessions, settings, ope_sample=0, context_sample=0, greedy=False)
    bandit = report["arms"]["bandit"]
    assert bandit["impressions"] == bandit["clicks"] == len(learned)
    assert bandit["not_activated"] == sum(1 for f in fates.values() if f in ("late", "unseen"))
    assert bandit["awaiting_activation"] == 0
