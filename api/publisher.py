"""Publishing to Kafka off the request path, with a durable spool when Kafka is away.

`Publisher.publish(topic, key, value)` only puts the message on a bounded in-memory queue (or, if
the queue is full, appends it to the spool on disk); it never waits on Kafka. A background thread
takes batches from the queue and sends them with kafka-python (`acks=all`, batching), keyed by
`key` (the decision id). After the first message of a batch it lingers `linger_ms` collecting
more before it sends and flushes: a produce round costs the thread (and the serving process's
GIL) ~1 ms of CPU whatever its size, so at a few hundred decisions/s sending each one as it came
cost more than choosing it (BENCHMARKS.md).

When Kafka cannot be reached or a send fails, the undelivered messages are appended to the
`Spool` (fsync per batch); once a producer is connected again the spool is re-published in
order before any newer message, and each drained file is removed.
Spool files left by a previous process are adopted and re-published at start.

Delivery is at least once: a send whose acknowledgement was lost is spooled and sent again.
The consumer's writes are idempotent on `decision_id` / `event_id`, so a repeat changes nothing.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from api.spool import Record, Spool
from core.broker import BrokerError, ensure_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters since start: messages accepted by `publish`, delivered, written to the spool."""

    queued: int
    sent: int
    spooled: int
    backlog: int  # in the queue or the spool, not yet delivered
    connected: bool


class Publisher:
    """A Kafka producer thread behind a bounded queue, with a spool under `spool_dir`."""

    def __init__(
        self,
        bootstrap: str,
        spool_dir: str | Path,
        *,
        topics: Sequence[str] = (),
        partitions: int = 1,
        queue_size: int = 10_000,
        batch_size: int = 500,
        linger_ms: int = 50,
        connect_timeout_s: float = 3.0,
        flush_timeout_s: float = 15.0,
        max_backoff_s: float = 5.0,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.partitions = partitions
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000.0
        self.connect_timeout_s = connect_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.max_backoff_s = max_backoff_s
        self._producer_config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": "copyloop-api",
            "acks": "all",
            "linger_ms": 5,  # the thread lingers (linger_ms) and flushes each batch itself
            "batch_size": 256 * 1024,
            "compression_type": None,
            "max_block_ms": int(connect_timeout_s * 1000),
            "bootstrap_timeout_ms": int(connect_timeout_s * 1000),
            "reconnect_backoff_max_ms": 1000,
            "request_timeout_ms": 5000,
            "delivery_timeout_ms": int(flush_timeout_s * 1000) - 1000,
            # One request in flight keeps retries from reordering a partition.
            "max_in_flight_requests_per_connection": 1,
            "enable_idempotence": False,
            **(producer_config or {}),
        }
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=queue_size)
        self._spool = Spool(spool_dir)
        self._producer: KafkaProducer | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="copyloop-publisher", daemon=True)
        self._counts_lock = threading.Lock()
        self._queued = self._sent = self._spooled = 0
        self._backoff_s = 0.0
        self._next_connect = 0.0
        self._topics_ready = False
        self.closed = False

    # -- the request side ------------------------------------------------------------------------
    def publish(self, topic: str, key: str, value: bytes) -> None:
        """Hand one message over; never waits on Kafka (a full queue spills to the spool)."""
        record = Record(topic, key, value)
        if not self.closed:
            try:
                self._queue.put_nowait(record)
                with self._counts_lock:
                    self._queued += 1
                return
            except queue.Full:
                pass
        self._spool_records([record])

    def stats(self) -> PublisherStats:
        with self._counts_lock:
            queued, sent, spooled = self._queued, self._sent, self._spooled
        return PublisherStats(
            queued=queued,
            sent=sent,
            spooled=spooled,
            backlog=self._queue.qsize() + self._spool.pending,
            connected=self._producer is not None,
        )

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Publisher:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver (or spool) everything queued, flush the producer and stop the thread."""
        self.closed = True
        self._stop.set()
        if self._thread.ident is None:  # never started: spool what was queued
            self._spool_records(self._take_all())
            self._spool.close()
            return
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("publisher thread did not stop within %.0fs", timeout_s)
            return
        self._spool_records(self._take_all())  # published while the thread was finishing
        self._spool.close()

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._spool.adopt_orphans()
        except OSError:
            log.exception("cannot read the spool directory %s", self._spool.directory)
        while not self._stop.is_set():
            batch = self._take(timeout_s=0.05)
            try:
                self._step(batch)
            except Exception:  # e.g. the spool's disk is full: keep the thread alive
                log.exception("publisher step failed; up to %d message(s) lost", len(batch))
                self._drop_producer()
                time.sleep(0.1)
        self._finish()

    def _step(self, batch: list[Record]) -> None:
        if self._producer is None and time.monotonic() >= self._next_connect:
            self._connect()
        if self._producer is not None and self._spool.has_pending():
            self._drain_spool()
        if not batch:
            return
        if self._producer is None or self._spool.has_pending():
            self._spool_records(batch)  # keeps order: nothing overtakes the spool
        else:
            self._spool_records(batch[self._send(batch) :])

    def _finish(self) -> None:
        """On close: send what is queued if connected and nothing waits in the spool, else spool."""
        batch = self._take_all()
        if self._producer is not None and not self._spool.has_pending():
            delivered = self._send(batch)
            self._spool_records(batch[delivered:])
        else:
            self._spool_records(batch)
        self._drop_producer(timeout_s=self.flush_timeout_s)

    def _take(self, timeout_s: float) -> list[Record]:
        """Up to `batch_size` records: waits up to `timeout_s` for the first, then lingers
        `linger_s` for more unless the batch is full already (or the publisher is closing)."""
        try:
            batch = [self._queue.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        if self.linger_s > 0 and self._queue.qsize() + 1 < self.batch_size:
            self._stop.wait(self.linger_s)  # one wake-up per batch, not one per message
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _take_all(self) -> list[Record]:
        out: list[Record] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def _connect(self) -> None:
        try:
            _probe(self.bootstrap, self.connect_timeout_s)
            if self.topics and not self._topics_ready:
                ensure_topics(self.bootstrap, self.topics, self.partitions, self.connect_timeout_s)
                self._topics_ready = True
            self._producer = KafkaProducer(**self._producer_config)
        except (KafkaError, BrokerError, OSError) as exc:
            self._backoff_s = min(self.max_backoff_s, max(0.25, self._backoff_s * 2))
            self._next_connect = time.monotonic() + self._backoff_s
            log.warning(
                "Kafka at %s unreachable (%s); spooling, next try in %.1fs",
                self.bootstrap,
                exc,
                self._backoff_s,
            )
            return
        self._backoff_s = 0.0
        log.info("publisher connected to Kafka at %s", self.bootstrap)
        self._spool.adopt_orphans()

    def _send(self, records: Sequence[Record]) -> int:
        """Send and flush `records`; returns how many leading ones were delivered. On a failure
        the producer is dropped (reconnected later) and the rest is the caller's to spool."""
        producer = self._producer
        if producer is None or not records:
            return 0
        futures = []
        try:
            for r in records:
                futures.append(producer.send(r.topic, key=r.key.encode(), value=r.value))
            producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            log.warning("sending to Kafka failed (%s); spooling", exc)
        delivered = 0
        for future in futures:
            if not (future.is_done and future.succeeded()):
                break
            delivered += 1
        with self._counts_lock:
            self._sent += delivered
        if delivered < len(records):
            self._drop_producer()
            self._next_connect = time.monotonic() + max(0.25, self._backoff_s)
        return delivered

    def _drain_spool(self) -> None:
        try:
            n = self._spool.drain(self._send, chunk=self.batch_size)
        except OSError:
            log.exception("cannot drain the spool")
            return
        if n:
            log.info("re-published %d spooled message(s)", n)

    def _spool_records(self, records: Sequence[Record]) -> None:
        if not records:
            return
        self._spool.append(records)
        with self._counts_lock:
            self._spooled += len(records)

    def _drop_producer(self, timeout_s: float = 0.0) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("closing the Kafka producer: %s", exc)


def _probe(bootstrap: str, timeout_s: float) -> None:
    """Fail fast (OSError) when no bootstrap server accepts a TCP connection: the Kafka clients
    would otherwise spend their whole bootstrap timeout (30 s for the admin client) retrying."""
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{server.strip()}: {exc}")
    raise OSError("no bootstrap server answers (" + "; ".join(errors) + ")")
