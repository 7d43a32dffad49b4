"""`core.produce`: batches framed as kafka-python frames them, keys partitioned as Kafka's default
partitioner does, and rounds that a real broker stores and a consumer reads back whole."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError
from kafka.partitioner.default import murmur2 as kafka_murmur2
from kafka.record.default_records import DefaultRecordBatchBuilder

from core.broker import EmbeddedBroker, ensure_topics, refuse_topic_creation
from core.produce import MAX_BATCH_BYTES, BatchSender, default_partitions, encode_batch, murmur2

TS = 1_765_000_000_123


@pytest.mark.parametrize("count", [1, 2, 7, 300])
def test_a_batch_is_framed_byte_for_byte_as_kafka_python_frames_it(count: int) -> None:
    rng = random.Random(count)
    records = [
        (
            rng.randbytes(rng.randint(0, 140)),
            rng.randbytes(rng.choice([0, 5, 330, 20000])),
        )
        for _ in range(count)
    ]
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 30)
    for offset, (key, value) in enumerate(records):
        builder.append(offset, TS, key, value, [])
    assert encode_batch(records, TS) == bytes(builder.build())


def test_keys_hash_and_partition_as_kafkas_default_partitioner() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randint(0, 130)) for _ in range(3000)]
    keys += [uuid.UUID(int=rng.getrandbits(128)).hex.encode() for _ in range(500)]
    expected = [kafka_murmur2(k) & 0xFFFFFFFF for k in keys]
    assert murmur2(keys).tolist() == expected
    for count in (1, 2, 6, 7):
        assert default_partitions(keys, count).tolist() == [
            (h & 0x7FFFFFFF) % count for h in expected
        ]


@pytest.fixture()
def producer(broker: EmbeddedBroker) -> Iterator[KafkaProducer]:
    p = KafkaProducer(
        bootstrap_servers=broker.bootstrap,
        allow_auto_create_topics=False,
        max_block_ms=2000,
        max_in_flight_requests_per_connection=5,
    )
    refuse_topic_creation(p)
    yield p
    p.close()


def _read_all(
    bootstrap: str, topics: list[str], expected: int
) -> list[tuple[str, int, bytes, bytes]]:
    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        allow_auto_create_topics=False,
        consumer_timeout_ms=5000,
    )
    try:
        out = []
        for r in consumer:
            out.append((r.topic, r.partition, r.key, r.value))
            if len(out) >= expected:
                break
        return out
    finally:
        consumer.close()


def test_a_round_lands_whole_on_the_partitions_kafka_would_choose(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    topics = [f"produce-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    ensure_topics(broker.bootstrap, topics, 3)
    rng = random.Random(3)
    records = [
        (topics[i % 2], uuid.UUID(int=rng.getrandbits(128)).hex.encode(), b"v%d" % i)
        for i in range(500)
    ]
    delivered = BatchSender(producer).send(records, timeout_s=10)
    assert delivered == [True] * len(records)

    got = _read_all(broker.bootstrap, topics, len(records))
    assert sorted(got) == sorted(
        (t, (kafka_murmur2(k) & 0x7FFFFFFF) % 3, k, v) for t, k, v in records
    )
    # Each partition keeps the round's order.
    for topic in topics:
        for partition in range(3):
            sent = [
                v
                for t, k, v in records
                if t == topic and (kafka_murmur2(k) & 0x7FFFFFFF) % 3 == partition
            ]
            read = [v for t, p, _, v in got if t == topic and p == partition]
            assert read == sent


def test_a_partition_with_more_than_a_batch_gets_several(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    topic = f"produce-big-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], 1)
    value = b"x" * (MAX_BATCH_BYTES * 3 // 5)  # two never fit in one batch
    records = [(topic, b"k%d" % i, value + b"%d" % i) for i in range(3)]
    assert BatchSender(producer).send(records, timeout_s=10) == [True] * 3
    got = _read_all(broker.bootstrap, [topic], 3)
    assert [(k, v) for _, _, k, v in got] == [(k, v) for _, k, v in records]


def test_a_missing_topic_is_neither_sent_to_nor_created(
    broker: EmbeddedBroker, producer: KafkaProducer
) -> None:
    topic = f"produce-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KafkaTimeoutError):
        BatchSender(producer).send([(topic, b"k", b"v")], timeout_s=5)
    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, allow_auto_create_topics=False)
    try:
        assert not probe.partitions_for_topic(topic)
    finally:
        probe.close()
