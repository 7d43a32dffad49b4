"""Producing whole batches of keyed records to Kafka: one request per leader, no work per record.

    sender = BatchSender(producer)                        # a connected kafka-python KafkaProducer
    delivered = sender.send([(topic, key, value), …], timeout_s=5.0)   # a bool per record

Why not `KafkaProducer.send` per record: kafka-python builds each record in Python (the
partitioner's murmur2 alone is ~5 µs), and creates a future, a callback chain and accumulator
bookkeeping per record: 30-40 µs of CPU per decision in the API's publisher thread, holding the
serving process's GIL (`bench/serve.py`). Here a round's keys are hashed together (numpy), each
partition's records are framed as one RecordBatch (format v2, uncompressed, no producer id: what
kafka-python's own builder writes, byte for byte) and each leader gets one ProduceRequest, sent
on the producer's own connections (its IO loop runs the request; metadata, bootstrap and
reconnects stay the producer's): about half a microsecond per record.

Partitions are Kafka's default for keyed records (murmur2 of the key, positive, modulo the
partition count: the Java client's and kafka-python's choice), so a decision lands on the
partition number its events' producers pick.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.errors import for_code
from kafka.protocol.producer import ProduceRequest
from kafka.record.util import calc_crc32c, encode_varint
from kafka.structs import TopicPartition

log = logging.getLogger(__name__)

#: A record to send: (topic, key, value).
Record = tuple[str, bytes, bytes]

#: Most bytes of records framed into one batch (a broker refuses batches over its
#: `message.max.bytes`, 1 MiB by default); a partition with more gets several batches.
MAX_BATCH_BYTES = 512 * 1024

# RecordBatch v2 after baseOffset and batchLength: partitionLeaderEpoch, magic, crc,
# attributes, lastOffsetDelta, baseTimestamp, maxTimestamp, producerId, producerEpoch,
# baseSequence, record count.
_HEADER = struct.Struct(">ibIhiqqqhii")
_CRC_AT = 5  # after partitionLeaderEpoch and magic; the CRC covers what follows it
_MAGIC = 2
_M = np.uint32(0x5BD1E995)


def _encoded_varint(value: int) -> bytes:
    """Kafka's signed varint, as kafka-python encodes it."""
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


_SMALL = [_encoded_varint(i) for i in range(1 << 14)]  # every length and delta a round uses


def _varint(value: int) -> bytes:
    return _SMALL[value] if 0 <= value < len(_SMALL) else _encoded_varint(value)


def murmur2(keys: Sequence[bytes]) -> np.ndarray:
    """Kafka's murmur2 hash of each key (uint32), as the Java client and kafka-python compute
    it; keys of each length are hashed together."""
    out = np.empty(len(keys), dtype=np.uint32)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for length, idx in by_length.items():
        data = np.frombuffer(b"".join(keys[i] for i in idx), dtype=np.uint8)
        out[idx] = _murmur2_equal_length(data.reshape(len(idx), length), length)
    return out


def _murmur2_equal_length(data: np.ndarray, length: int) -> np.ndarray:
    h = np.full(len(data), (0x9747B28C ^ length) & 0xFFFFFFFF, dtype=np.uint32)
    blocks = length // 4
    words = np.ascontiguousarray(data[:, : blocks * 4]).view("<u4")
    with np.errstate(over="ignore"):
        for i in range(blocks):
            k = words[:, i] * _M
            k ^= k >> np.uint32(24)
            h = (h * _M) ^ (k * _M)
        tail = blocks * 4
        rest = length - tail
        if rest >= 3:
            h ^= data[:, tail + 2].astype(np.uint32) << np.uint32(16)
        if rest >= 2:
            h ^= data[:, tail + 1].astype(np.uint32) << np.uint32(8)
        if rest >= 1:
            h ^= data[:, tail].astype(np.uint32)
            h = h * _M
        h ^= h >> np.uint32(13)
        h = h * _M
        h ^= h >> np.uint32(15)
    return h


def default_partitions(keys: Sequence[bytes], count: int) -> np.ndarray:
    """The partition (0 … count-1) Kafka's default partitioner gives each key."""
    return (murmur2(keys) & np.uint32(0x7FFFFFFF)) % np.uint32(count)


def encode_batch(records: Sequence[tuple[bytes, bytes]], timestamp_ms: int) -> bytes:
    """One RecordBatch (v2, uncompressed, no producer id) of `(key, value)` records, all
    stamped `timestamp_ms`."""
    body = []
    for offset, (key, value) in enumerate(records):
        # attributes 0, timestamp delta 0, offset delta, key, value, no headers
        record = b"".join(
            (b"\x00\x00", _varint(offset), _varint(len(key)), key, _varint(len(value)), value)
        )
        body.append(_varint(len(record) + 1) + record + b"\x00")
    n = len(records)
    head = bytearray(
        _HEADER.pack(0, _MAGIC, 0, 0, n - 1, timestamp_ms, timestamp_ms, -1, -1, -1, n)
    )
    payload = head + b"".join(body)
    crc = calc_crc32c(memoryview(payload)[_CRC_AT + 4 :])
    struct.pack_into(">I", payload, _CRC_AT, crc)
    return struct.pack(">qi", 0, len(payload)) + bytes(payload)


class BatchSender:
    """Sends rounds of records through `producer`'s connections (`acks`: -1 all, 1 leader).

    Not thread-safe: one thread sends (the API's publisher thread).
    """

    def __init__(self, producer: KafkaProducer, acks: int = -1, timeout_ms: int = 5000) -> None:
        self._producer = producer
        self._metadata = producer._metadata  # ClusterMetadata: partitions and their leaders
        self._manager = producer._sender._client._manager  # the producer's connections
        self._net = producer._sender._client._net  # its IO loop, run by its sender thread
        self.acks = acks
        self.timeout_ms = timeout_ms

    def send(self, records: Sequence[Record], timeout_s: float) -> list[bool]:
        """Send `records`; returns, per record, whether a leader acknowledged it. What is
        not delivered (no leader known, a partition's error, no answer within `timeout_s`)
        is reported and left to the caller to send again."""
        delivered = [False] * len(records)
        deadline = time.monotonic() + timeout_s
        requests = self._requests(records)
        done = threading.Event()
        pending = [len(requests)]
        lock = threading.Lock()

        def finished(_: Any) -> None:
            with lock:
                pending[0] -= 1
                if pending[0] == 0:
                    done.set()

        futures = []
        for node, request, placed in requests:
            future = self._net.call_soon_with_future(self._produce(node, request))
            future.add_both(finished)
            futures.append((future, placed))
        if requests:
            done.wait(max(0.0, deadline - time.monotonic()))
        for future, placed in futures:
            if not future.is_done:
                log.warning("no answer to a produce request within %.1fs", timeout_s)
                continue
            if future.failed():
                log.warning("a produce request failed: %s", future.exception)
                continue
            self._settle(future.value, placed, delivered)
        return delivered

    def _requests(
        self, records: Sequence[Record]
    ) -> list[tuple[int, Any, dict[tuple[str, int], list[int]]]]:
        """(leader, ProduceRequest, the records each of its partitions carries), partitions
        chunked to `MAX_BATCH_BYTES` (one request per chunk index)."""
        by_topic: dict[str, list[int]] = {}
        for i, (topic, _, _) in enumerate(records):
            by_topic.setdefault(topic, []).append(i)
        # node -> chunk index -> (topic, partition) -> record indices
        plan: dict[int, list[dict[tuple[str, int], list[int]]]] = {}
        for topic, idx in by_topic.items():
            partitions = sorted(self._producer.partitions_for(topic))  # waits for metadata
            chosen = default_partitions([records[i][1] for i in idx], len(partitions))
            by_partition: dict[int, list[int]] = {}
            for i, p in zip(idx, chosen.tolist(), strict=True):
                by_partition.setdefault(partitions[p], []).append(i)
            for partition, members in by_partition.items():
                leader = self._metadata.leader_for_partition(TopicPartition(topic, partition))
                if leader is None or leader == -1:
                    log.warning("no leader known for %s[%d]", topic, partition)
                    self._metadata.request_update()
                    continue
                chunks = plan.setdefault(leader, [])
                for n, chunk in enumerate(_chunked(records, members)):
                    if n == len(chunks):
                        chunks.append({})
                    chunks[n][(topic, partition)] = chunk
        now_ms = int(time.time() * 1000)
        out = []
        for node, chunks in plan.items():
            for placed in chunks:
                out.append((node, self._request(records, placed, now_ms), placed))
        return out

    def _request(
        self, records: Sequence[Record], placed: dict[tuple[str, int], list[int]], now_ms: int
    ) -> Any:
        topic_cls = ProduceRequest.TopicProduceData
        partition_cls = topic_cls.PartitionProduceData
        by_topic: dict[str, list[Any]] = {}
        for (topic, partition), idx in placed.items():
            batch = encode_batch([(records[i][1], records[i][2]) for i in idx], now_ms)
            by_topic.setdefault(topic, []).append(partition_cls(index=partition, records=batch))
        return ProduceRequest(
            transactional_id=None,
            acks=self.acks,
            timeout_ms=self.timeout_ms,
            topic_data=[topic_cls(name=t, partition_data=p) for t, p in by_topic.items()],
            min_version=3,  # RecordBatch v2
            max_version=9,
        )

    async def _produce(self, node: int, request: Any) -> Any:
        """On the producer's IO loop: connect to `node` if need be, send, await the answer."""
        connection = await self._manager.get_connection(node)
        return await connection.send_request(request)

    def _settle(
        self, response: Any, placed: dict[tuple[str, int], list[int]], delivered: list[bool]
    ) -> None:
        for topic_response in response.responses:
            for answer in topic_response.partition_responses:
                idx = placed.get((topic_response.name, answer.index), [])
                if answer.error_code == 0:
                    for i in idx:
                        delivered[i] = True
                    continue
                log.warning(
                    "%s[%d] refused %d record(s): %s",
                    topic_response.name,
                    answer.index,
                    len(idx),
                    for_code(answer.error_code).__name__,
                )
                self._metadata.request_update()  # a moved leader, a re-created topic, …


def _chunked(records: Sequence[Record], members: list[int]) -> list[list[int]]:
    """`members` split where their records' bytes would pass `MAX_BATCH_BYTES`."""
    chunks: list[list[int]] = [[]]
    size = 0
    for i in members:
        n = len(records[i][1]) + len(records[i][2]) + 16
        if chunks[-1] and size + n > MAX_BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += n
    return chunks


__all__ = ["MAX_BATCH_BYTES", "BatchSender", "Record", "default_partitions", "encode_batch"]
