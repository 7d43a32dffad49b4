"""The publisher: Kafka down → decisions spooled durably, then re-published exactly once and in
order once Kafka is back; spool files of a dead process adopted; the spool's own guarantees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from api.publisher import Publisher
from api.spool import Record, Spool
from core.broker import EmbeddedBroker, free_port
from core.settings import Settings

Reader = Callable[..., list[tuple[int, bytes | None, bytes]]]


def _spooled(spool_dir: Path) -> list[Record]:
    records = []
    for path in sorted(spool_dir.glob("*.spool")):
        records.extend(Record.from_line(line) for line in path.read_bytes().splitlines())
    return records


def test_kafka_down_spools_then_republishes_exactly_once_in_order(
    api_settings: Settings,
    broker: EmbeddedBroker,
    product: Any,
    headers: dict[str, dict[str, str]],
    read_topic: Reader,
    wait_until: Callable[..., None],
) -> None:
    # One partition, so that "in order" is one sequence.
    settings = api_settings.model_copy(update={"topic_partitions": 1})
    dead = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    spool_dir = Path(settings.spool_dir)
    served = []
    with TestClient(create_app(dead)) as client:
        for i in range(30):
            r = client.post(
                "/v1/decisions",
                json={"product_id": product.product_id, "context": {"i": i}},
                headers=headers["serve"],
            )
            assert r.status_code == 200
            served.append(r.json()["decision_id"])
        ev = {"event_id": "e1", "decision_id": served[0], "type": "click"}
        assert client.post("/v1/events", json=ev, headers=headers["events"]).status_code == 202
        wait_until(lambda: client.get("/healthz").json()["publisher"]["spooled"] > 0)
        health = client.get("/healthz").json()
        assert health["status"] == "degraded"
        assert health["publisher"]["sent"] == 0
    # After a clean close everything is on disk, in the order it was served.
    spooled = _spooled(spool_dir)
    decisions = [r for r in spooled if r.topic == settings.decisions_topic]
    assert [r.key for r in decisions] == served
    assert [json.loads(r.value)["decision_id"] for r in decisions] == served
    assert [r.key for r in spooled if r.topic == settings.events_topic] == [served[0]]

    # A new process on a reachable Kafka adopts the spool, re-publishes it and removes it.
    with TestClient(create_app(settings)) as client:
        wait_until(lambda: not list(spool_dir.glob("*.spool")), timeout_s=30, what="spool drained")
        stats = client.get("/healthz").json()["publisher"]
        assert stats["backlog"] == 0 and stats["connected"]
    messages = read_topic(settings.decisions_topic, expected=30, settle_s=1.0)
    assert [k.decode() for _, k, _ in messages if k] == served  # exactly once, in order
    events = read_topic(settings.events_topic, expected=1, settle_s=0.5)
    assert [json.loads(v)["decision_id"] for _, _, v in events] == [served[0]]
    assert not list(spool_dir.iterdir())  # no .spool, no .pos left


def test_publish_never_blocks_and_a_full_queue_spills_to_the_spool(tmp_path: Path) -> None:
    publisher = Publisher(f"127.0.0.1:{free_port()}", tmp_path, queue_size=2)
    # Not started: the queue fills up and the rest goes straight to disk.
    for i in range(5):
        publisher.publish("t", f"k{i}", b"v")
    stats = publisher.stats()
    assert (stats.queued, stats.spooled, stats.backlog) == (2, 3, 5)
    assert [r.key for r in _spooled(tmp_path)] == ["k2", "k3", "k4"]
    publisher.start()
    publisher.close(timeout_s=30)  # Kafka unreachable: the queued ones are spooled too
    assert sorted(r.key for r in _spooled(tmp_path)) == [f"k{i}" for i in range(5)]


def test_orphaned_spool_of_a_dead_process_is_adopted(
    tmp_path: Path, broker: EmbeddedBroker, read_topic: Reader
) -> None:
    topic = f"orphan-{os.getpid()}-{free_port()}"
    code = (
        "import sys; from api.spool import Spool, Record; "
        "s = Spool(sys.argv[1]); "
        f"s.append([Record({topic!r}, f'k{{i}}', b'v') for i in range(3)]); "
        f"s.append([Record({topic!r}, 'k3', b'v')])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    publisher = Publisher(broker.bootstrap, tmp_path, topics=[topic]).start()
    try:
        messages = read_topic(topic, expected=4, settle_s=0.5)
    finally:
        publisher.close()
    assert [k for _, k, _ in messages] == [b"k0", b"k1", b"k2", b"k3"]
    assert not list(tmp_path.glob("*.spool"))


def test_a_live_writers_file_is_not_adopted(tmp_path: Path) -> None:
    writer = Spool(tmp_path)
    writer.append([Record("t", "k", b"v")])
    other = Spool(tmp_path)
    assert other.adopt_orphans() == 0  # its writer still holds the lock
    writer.close()
    assert other.adopt_orphans() == 1
    assert other.pending == 1


def test_drain_resumes_after_a_partial_send_and_skips_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([Record("t", f"k{i}", b"v") for i in range(5)])
    [path] = tmp_path.glob("*.spool")
    with open(path, "ab") as fh:
        fh.write(b'{"topic": "t", "key": "torn"')  # a crash mid-append
    got: list[str] = []

    def send_two_then_fail(batch: list[Record]) -> int:
        got.extend(r.key for r in batch[:2])
        return 2

    assert spool.drain(send_two_then_fail, chunk=10) == 2
    assert spool.pending == 3 and path.exists()

    def send_all(batch: list[Record]) -> int:
        got.extend(r.key for r in batch)
        return len(batch)

    assert spool.drain(send_all) == 3
    assert got == ["k0", "k1", "k2", "k3", "k4"]
    assert not list(tmp_path.iterdir())
    assert spool.pending == 0
