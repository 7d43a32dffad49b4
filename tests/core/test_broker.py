"""Topics are created by `ensure_topics` with the configured partition count, never by a
client's metadata request with the broker's default (tansu's is 4)."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError

from core.broker import EmbeddedBroker, ensure_topics, refuse_topic_creation


def _partitions(bootstrap: str, topic: str) -> set[int] | None:
    probe = KafkaConsumer(bootstrap_servers=bootstrap, allow_auto_create_topics=False)
    try:
        return probe.partitions_for_topic(topic)
    finally:
        probe.close()


def test_a_refusing_consumer_waits_for_the_topic_and_gets_its_partitions(
    broker: EmbeddedBroker,
) -> None:
    topic = f"refused-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=None, allow_auto_create_topics=False
    )
    try:
        refuse_topic_creation(consumer)
        consumer.subscribe([topic])
        for _ in range(5):  # several metadata refreshes for the subscribed topic
            consumer.poll(timeout_ms=100)
        assert not _partitions(broker.bootstrap, topic)

        ensure_topics(broker.bootstrap, [topic], 2)
        for _ in range(50):
            consumer.poll(timeout_ms=100)
            if consumer.assignment():
                break
        assert {tp.partition for tp in consumer.assignment()} == {0, 1}
    finally:
        consumer.close()


def test_a_refusing_producer_cannot_create_the_topic_it_sends_to(
    broker: EmbeddedBroker,
) -> None:
    topic = f"refused-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(
        bootstrap_servers=broker.bootstrap, allow_auto_create_topics=False, max_block_ms=1000
    )
    try:
        refuse_topic_creation(producer)
        with pytest.raises(KafkaTimeoutError):
            producer.send(topic, b"x").get(timeout=5)
    finally:
        producer.close()
    assert not _partitions(broker.bootstrap, topic)
    ensure_topics(broker.bootstrap, [topic], 2)
    assert _partitions(broker.bootstrap, topic) == {0, 1}
