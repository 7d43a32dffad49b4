"""The decision log and its publisher: what is answered is in the log, a killed writer's log is
shipped by the next process, records leave the log only once the ledger holds them (and are sent
again while it does not), /healthz sees the broker go within seconds."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.decision_log import DecisionLog, Kind, LogRecord
from api.publisher import Publisher
from consumer.join import ingest
from consumer.records import decode_decision
from core.broker import EmbeddedBroker, free_port
from core.ledger.presence import held_ids
from core.messages import Decision
from core.settings import Settings

Reader = Callable[..., list[tuple[int, bytes | None, bytes]]]


def _logged(directory: Path) -> list[LogRecord]:
    """Every record in the segments under `directory` (adopted by a fresh reader)."""
    reader = DecisionLog(directory, fsync="never")
    records: list[LogRecord] = []
    for seg in reader.adopt_orphans():
        while batch := seg.read():
            records.extend(batch)
    reader.close()
    return records


def _decision(product_id: str = "p0") -> Decision:
    return Decision(
        decision_id=uuid.uuid4().hex,
        product_id=product_id,
        variant_id="v0",
        policy="bandit",
        probability=0.5,
        model_version=1,
        context={"device": "mobile"},
        actions=["v0", "v1"],
        pmf=[0.5, 0.5],
        ts=time.time(),
    )


def test_an_answered_decision_is_in_the_log_while_kafka_is_down_then_shipped(
    api_settings: Settings,
    product: Any,
    headers: dict[str, dict[str, str]],
    read_topic: Reader,
    wait_until: Callable[..., None],
) -> None:
    settings = api_settings.model_copy(update={"topic_partitions": 1})
    dead = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    served = []
    with TestClient(create_app(dead)) as client:
        for i in range(20):
            r = client.post(
                "/v1/decisions",
                json={"product_id": product.product_id, "context": {"i": i}},
                headers=headers["serve"],
            )
            assert r.status_code == 200
            served.append(r.json()["decision_id"])
        ev = {"event_id": "e1", "decision_id": served[0], "type": "click"}
        assert client.post("/v1/events", json=ev, headers=headers["events"]).status_code == 202
        health = client.get("/healthz").json()
        assert health["status"] == "degraded"
        assert health["publisher"]["logged"] == 21 and health["publisher"]["sent"] == 0
        # In the log before the answer: readable by another process right now.
        records = _logged(Path(settings.spool_dir))
        assert records == []  # ...but locked by the live writer, not adoptable
    records = _logged(Path(settings.spool_dir))
    assert [r.ident for r in records if r.kind == Kind.DECISION] == served
    assert [r.ident for r in records if r.kind == Kind.EVENT] == ["e1"]

    # The next process, on a reachable Kafka, adopts the log and ships it in order.
    with TestClient(create_app(settings)) as client:
        # A generous wait: once, with other test runs loading the machine, nothing had arrived
        # within the reader's default 20 s (alone it takes ~1 s).
        messages = read_topic(settings.decisions_topic, expected=20, settle_s=0.5, timeout_s=90)
        assert [k.decode() for _, k, _ in messages if k] == served
        events = read_topic(settings.events_topic, expected=1, settle_s=0.2)
        assert [json.loads(v)["event_id"] for _, _, v in events] == ["e1"]
        # Not yet in the ledger (no consumer runs here): the log keeps it all.
        assert list(Path(settings.spool_dir).glob("*.log"))
        assert client.get("/healthz").json()["publisher"]["backlog"] == 21


def test_records_stay_until_the_ledger_holds_them_and_are_resent_meanwhile(
    kafka_settings: Settings,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    read_topic: Reader,
    wait_until: Callable[..., None],
) -> None:
    topic = kafka_settings.decisions_topic
    log_dir = tmp_path / "log"
    publisher = Publisher(
        kafka_settings.bootstrap,
        DecisionLog(log_dir, segment_age_s=0.1),
        lambda wanted: held_ids(sessions, wanted),
        topics=[topic],
        resend_after_s=0.5,
        adopt_interval_s=0.1,
    ).start()
    try:
        decisions = [_decision() for _ in range(5)]
        for d in decisions:
            publisher.publish(topic, d.decision_id, d.to_bytes(), Kind.DECISION, d.decision_id)
        first = read_topic(topic, expected=5, settle_s=0.1)
        assert len(first) == 5
        # The ledger lacks them: each is sent again after `resend_after_s`.
        twice = read_topic(topic, expected=10, timeout_s=15, settle_s=0.1)
        assert len(twice) >= 10
        assert publisher.stats().resent >= 5
        assert list(log_dir.glob("*.log"))
        # The consumer's part, by hand: the ledger now holds them (duplicates stored once).
        ingest(sessions, [decode_decision(v) for _, _, v in twice], [])
        # The backlog figure is refreshed at the end of the publisher's round, after the prune.
        wait_until(
            lambda: not list(log_dir.iterdir()) and publisher.stats().backlog == 0,
            timeout_s=15,
            what="the log pruned",
        )
        stats = publisher.stats()
        assert (stats.backlog, stats.confirmed, stats.segments) == (0, 5, 0)
    finally:
        publisher.close()


_KILLED_WRITER = """
import os, signal, sys
from api.decision_log import DecisionLog, Kind
log = DecisionLog(sys.argv[1], fsync="never", segment_bytes=500)
for i in range(50):
    log.append(Kind.OTHER, sys.argv[2], f"k{i}", "", b"v%d" % i)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_log_is_shipped_by_the_next_process(
    tmp_path: Path, broker: EmbeddedBroker, read_topic: Reader
) -> None:
    topic = f"orphan-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), topic])
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob("*.log"))) > 1  # several segments (500 bytes each)
    publisher = Publisher(broker.bootstrap, DecisionLog(tmp_path), topics=[topic]).start()
    try:
        messages = read_topic(topic, expected=50, settle_s=0.5)
    finally:
        publisher.close()
    assert [k for _, k, _ in messages] == [f"k{i}".encode() for i in range(50)]
    assert not list(tmp_path.glob("*.log"))  # broker-acknowledged kinds: pruned once sent


def test_a_live_writers_segment_is_not_adopted_and_a_torn_tail_is_skipped(
    tmp_path: Path,
) -> None:
    writer = DecisionLog(tmp_path)
    writer.append(Kind.OTHER, "t", "k0", "", b"v")
    writer.append(Kind.OTHER, "t", "k1", "", b"v")
    other = DecisionLog(tmp_path)
    assert other.adopt_orphans() == []  # the writer holds its lock
    writer.close()
    [path] = tmp_path.glob("*.log")
    with open(path, "ab") as fh:
        fh.write(b"\xc1\x0b\x00\x00")  # a crash in the middle of a frame
    [seg] = other.adopt_orphans()
    assert [r.key for r in seg.read()] == ["k0", "k1"]
    assert seg.read() == [] and seg.read_pos == seg.size
    other.close()


def test_a_log_that_cannot_be_written_answers_503_and_nothing_else(
    api_settings: Settings, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    with TestClient(create_app(api_settings)) as client:
        shutil.rmtree(api_settings.spool_dir)  # no segment is open yet: the next one fails
        body = {"product_id": product.product_id}
        r = client.post("/v1/decisions", json=body, headers=headers["serve"])
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "log_unavailable"
        assert r.headers["retry-after"] == "1"
        ev = {"event_id": "e1", "decision_id": "d1", "type": "click"}
        assert client.post("/v1/events", json=ev, headers=headers["events"]).status_code == 503
        assert client.get("/healthz").json()["publisher"]["logged"] == 0


@pytest.mark.parametrize("traffic", [False, True])
def test_healthz_sees_the_broker_go_within_seconds(
    make_settings: Callable[..., Settings],
    wait_until: Callable[..., None],
    product: Any,
    headers: dict[str, dict[str, str]],
    traffic: bool,
) -> None:
    """Idle, or with decisions flowing (sends then hang on the vanished broker)."""
    broker = EmbeddedBroker(free_port()).start()
    try:
        settings = make_settings(kafka_bootstrap=broker.bootstrap)
        with TestClient(create_app(settings)) as client:

            def status() -> str:
                if traffic:
                    body = {"product_id": product.product_id}
                    r = client.post("/v1/decisions", json=body, headers=headers["serve"])
                    assert r.status_code == 200
                return str(client.get("/healthz").json()["status"])

            wait_until(lambda: status() == "ok", timeout_s=20)
            broker.stop()
            gone = time.monotonic()
            wait_until(lambda: status() == "degraded", timeout_s=5, what="degraded")
            print(f"degraded {time.monotonic() - gone:.1f}s after the broker stopped")
    finally:
        broker.stop()
