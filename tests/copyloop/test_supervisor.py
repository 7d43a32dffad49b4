"""`copyloop up` supervises its parts on the real broker: a poison message costs one dead letter
and nothing else (the consumer keeps its pid, the API keeps answering), and a consumer that
crashes is started again while the API never stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from core.broker import free_port, wait_for_port
from tests.processes import descendants

pytestmark = pytest.mark.timeout(300)


def _consumers(up: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The live `copyloop consume` children of `up`."""
    return descendants(up.pid, "consume")


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_poison_costs_one_dead_letter_and_a_crashed_consumer_is_restarted(
    tmp_path: Path,
) -> None:
    port, broker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYLOOP_")}
    env.update(
        COPYLOOP_DATABASE_URL=f"sqlite:///{tmp_path / 'up.db'}",
        COPYLOOP_EMBEDDED_BROKER_PORT=str(broker_port),
        COPYLOOP_SPOOL_DIR=str(tmp_path / "log"),
    )
    with open(tmp_path / "up.log", "ab") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "copyloop", "up", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    bootstrap = f"127.0.0.1:{broker_port}"
    try:
        wait_for_port("127.0.0.1", port, 90)
        health = f"http://127.0.0.1:{port}/healthz"
        _wait(lambda: len(_consumers(up)) == 1, 30, "the consumer")
        [consumer] = _consumers(up)

        # Poison on the events topic: orjson refuses it, json.loads raises RecursionError.
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send("copyloop.events", b"[" * 2000 + b"]" * 2000, key=b"d1")
        producer.flush()
        producer.close()
        dlq = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        dlq.assign([TopicPartition("copyloop.events.dlq", p) for p in range(4)])
        dlq.seek_to_beginning()
        letters: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while not letters and time.monotonic() < deadline:
            for records in dlq.poll(timeout_ms=200).values():
                letters.extend(json.loads(r.value) for r in records)
        dlq.close()
        assert len(letters) == 1 and "nested too deeply" in str(letters[0]["reason"])
        time.sleep(2)  # a crash loop would show by now
        assert [p.pid for p in _consumers(up)] == [consumer.pid]
        assert httpx.get(health, timeout=5).status_code == 200

        # A crashed consumer is started again; the API answers throughout.
        consumer.kill()
        answers = []
        deadline = time.monotonic() + 30
        while not [p for p in _consumers(up) if p.pid != consumer.pid]:
            assert time.monotonic() < deadline, "the consumer was not started again"
            answers.append(httpx.get(health, timeout=5).status_code)
            time.sleep(0.2)
        assert answers and set(answers) == {200}
        assert up.poll() is None
    finally:
        up.terminate()
        up.wait(60)
