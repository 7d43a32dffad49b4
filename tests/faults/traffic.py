"""The storefront and the event producers of a fault run, and their own record of what copyloop
acknowledged: the truth the ledger is compared with.

A decision is *acknowledged* when the API answered 200 with its id; an event is *accepted* when
the API answered 202 or Kafka acknowledged the send. A request that got no answer (connection
refused mid-way, timeout) is *uncertain*: copyloop may or may not have kept it, so the ledger may
hold it or not, but nothing else. Each decision request carries a unique `rid` in its context so
that an uncertain decision is recognised in the ledger.

Events name their decision's time as `ts`, so whether an event is inside its window does not
depend on how long a fault delayed it. A share of events is sent twice (the same `event_id`, over
HTTP and over Kafka): the ledger must count it once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

DEVICES = ("mobile", "desktop", "tablet")


@dataclass
class Record:
    """What the producers know copyloop acknowledged. Thread-safe through `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: decision_id → (rid, monotonic time of the answer)
    acked: dict[str, tuple[str, float]] = field(default_factory=dict)
    uncertain_rids: set[str] = field(default_factory=set)
    #: event_id → (decision_id, type, value)
    accepted: dict[str, tuple[str, str, float | None]] = field(default_factory=dict)
    uncertain_events: set[str] = field(default_factory=set)
    #: event_id → "http" or "kafka": how it was first accepted
    channel: dict[str, str] = field(default_factory=dict)
    duplicates_sent: int = 0
    refused: int = 0  # connection refused, or answered but not 200/202
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        with self.lock:
            return {
                "decisions_acked": len(self.acked),
                "decisions_uncertain": len(self.uncertain_rids),
                "events_accepted": len(self.accepted),
                "events_uncertain": len(self.uncertain_events),
                "duplicates_sent": self.duplicates_sent,
                "refused": self.refused,
            }


class Traffic:
    """`threads` storefront threads, each a paced loop: a decision, then (by chance) events
    over HTTP or Kafka, some of them twice. Seeded: thread `i` draws from `seed + i`."""

    def __init__(
        self,
        base_url: str,
        bootstrap: str,
        events_topic: str,
        serve_key: str,
        events_key: str,
        products: list[str],
        record: Record,
        seed: int,
        threads: int = 2,
        rate_per_thread: float = 25.0,
        duplicate_share: float = 0.15,
        kafka_events: bool = True,
    ) -> None:
        self.base_url = base_url
        self.bootstrap = bootstrap
        self.events_topic = events_topic
        self.serve_auth = {"Authorization": f"Bearer {serve_key}"}
        self.events_auth = {"Authorization": f"Bearer {events_key}"}
        self.products = products
        self.record = record
        self.seed = seed
        self.rate = rate_per_thread
        self.duplicate_share = duplicate_share
        self.kafka_events = kafka_events
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"traffic-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    # -- one storefront thread --------------------------------------------------------------
    def _run(self, index: int) -> None:
        rng = np.random.default_rng(self.seed + index)
        producer: KafkaProducer | None = None
        client = httpx.Client(base_url=self.base_url, timeout=5.0)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                decided = self._decide(client, rng)
                if decided is not None:
                    producer = self._events(client, producer, rng, *decided)
                self._stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))
        except Exception as exc:  # noqa: BLE001 - a producer bug must show in the report
            with self.record.lock:
                self.record.errors.append(f"{threading.current_thread().name}: {exc!r}")
        finally:
            client.close()
            if producer is not None:
                producer.close(timeout=5)

    def _decide(self, client: httpx.Client, rng: np.random.Generator) -> tuple[str, float] | None:
        rid = uuid.uuid4().hex
        body = {
            "product_id": self.products[int(rng.integers(len(self.products)))],
            "context": {"rid": rid, "device": DEVICES[int(rng.integers(len(DEVICES)))]},
        }
        try:
            r = client.post("/v1/decisions", json=body, headers=self.serve_auth)
        except httpx.ConnectError:  # never reached a server: certainly not kept
            with self.record.lock:
                self.record.refused += 1
            self._stop.wait(0.2)
            return None
        except httpx.HTTPError:
            with self.record.lock:
                self.record.uncertain_rids.add(rid)
            self._stop.wait(0.2)
            return None
        if r.status_code != 200:
            with self.record.lock:
                self.record.refused += 1
            self._stop.wait(0.2)
            return None
        decision_id = r.json()["decision_id"]
        with self.record.lock:
            self.record.acked[decision_id] = (rid, time.monotonic())
        return decision_id, time.time()

    def _events(
        self,
        client: httpx.Client,
        producer: KafkaProducer | None,
        rng: np.random.Generator,
        decision_id: str,
        decided_at: float,
    ) -> KafkaProducer | None:
        draws = rng.random(4)
        events = []
        if draws[0] < 0.4:
            events.append({"event_id": f"{decision_id}:c", "type": "click"})
        if draws[1] < 0.1:
            value = round(float(rng.uniform(5, 80)), 2)
            events.append({"event_id": f"{decision_id}:p", "type": "purchase", "value": value})
        for event in events:
            event.update(decision_id=decision_id, ts=int(decided_at * 1000))
            via_kafka = self.kafka_events and draws[2] < 0.5
            sends = 2 if draws[3] < self.duplicate_share else 1
            for n in range(sends):
                if self.kafka_events and via_kafka != (n == 1):  # a duplicate goes the other way
                    producer = self._kafka(producer, event)
                else:
                    self._http(client, event)
            if sends == 2:
                with self.record.lock:
                    self.record.duplicates_sent += 1
        return producer

    def _http(self, client: httpx.Client, event: dict[str, object]) -> None:
        try:
            r = client.post("/v1/events", json=event, headers=self.events_auth)
        except httpx.ConnectError:
            with self.record.lock:
                self.record.refused += 1
            return
        except httpx.HTTPError:
            self._uncertain(event)
            return
        if r.status_code == 202:
            self._accepted(event, "http")
        else:
            with self.record.lock:
                self.record.refused += 1

    def _kafka(
        self, producer: KafkaProducer | None, event: dict[str, object]
    ) -> KafkaProducer | None:
        try:
            if producer is None:
                producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    request_timeout_ms=4000,
                    max_block_ms=4000,
                    retries=0,
                )
            key = str(event["decision_id"]).encode()
            producer.send(self.events_topic, key=key, value=json.dumps(event).encode()).get(6)
        except KafkaError:
            self._uncertain(event)
            if producer is not None:
                producer.close(timeout=1)
            return None  # reconnect on the next event
        self._accepted(event, "kafka")
        return producer

    def _accepted(self, event: dict[str, object], channel: str) -> None:
        value = event.get("value")
        with self.record.lock:
            self.record.channel.setdefault(str(event["event_id"]), channel)
            self.record.accepted[str(event["event_id"])] = (
                str(event["decision_id"]),
                str(event["type"]),
                float(value) if isinstance(value, int | float) else None,
            )
            self.record.uncertain_events.discard(str(event["event_id"]))

    def _uncertain(self, event: dict[str, object]) -> None:
        with self.record.lock:
            if str(event["event_id"]) not in self.record.accepted:
                self.record.uncertain_events.add(str(event["event_id"]))
