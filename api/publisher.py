"""Shipping the decision log to Kafka, and keeping it until the ledger holds what it shipped.

`Publisher.publish(topic, key, value, kind, ident)` appends to the process's `DecisionLog`
(`api.decision_log`) and returns: the caller answers only after that, so an answered decision
survives the process being killed. It never waits on Kafka.

A background thread reads the log and sends what it read in rounds of up to `batch_size`
records gathered every `linger_ms`, each round one ProduceRequest per leader (`acks=all`) built
by `core.produce.BatchSender` on a kafka-python producer's connections (18.5 µs of CPU per
message for the whole thread against 45.7 µs through `KafkaProducer.send`, time the serving
process's GIL is not free: `bench/serve.py --micro-only`). A round has a fixed cost too, and the
broker and the consumer pay per request. At 2,000 decisions/s over 2 workers, 100 ms instead of
20 ms cut the API's CPU by 13 %, the broker's by 65 % and the consumer's by 17 %, and lowered
the p99 (`bench/serve.py`); a decision reaches Kafka ≤ ~0.1 s later, long durable in the log.

A record leaves the log only once it is safe. A decision, an event or an activation is safe when
the ledger holds its row (`core.ledger.presence.held_ids`, asked by primary key a few hundred
ids at a time), not merely when the broker acknowledged it: the embedded broker keeps its log in
memory and a restart loses what the consumer had not read yet. A record still missing from the
ledger `resend_after_s` after it was sent is sent again (and again after twice as long, …): the
consumer's writes are idempotent on `decision_id` / `event_id`, so a repeat changes nothing. A
lost connection to Kafka makes every unconfirmed record due for that check as soon as the
producer is back. Other kinds of records are safe once the broker acknowledged them. A segment
whose records are all safe is deleted.

Segments of dead processes (a killed worker, the previous run) are adopted every
`adopt_interval_s` and shipped the same way, from their `.pos` progress: records that an earlier
process had shipped are checked against the ledger first and re-sent only if missing.

`connected` turns false within about `probe_interval_s` of the broker going away: when nothing
was acknowledged for that long, the thread opens a TCP connection to the bootstrap servers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from api.decision_log import DecisionLog, Kind, LogRecord, Segment, decode, encode
from core.broker import BrokerError, ensure_topics, refuse_topic_creation
from core.produce import BatchSender

log = logging.getLogger(__name__)

#: `held({table: ids}) -> {table: the ids the ledger holds}` (`core.ledger.presence`).
HeldIds = Callable[[Mapping[str, Sequence[str]]], dict[str, set[str]]]
#: The ledger table that holds a record of each kind (other kinds: the broker's ack suffices).
TABLES = {Kind.DECISION: "decisions", Kind.EVENT: "events", Kind.ACTIVATION: "activations"}


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters since start (`logged`…`abandoned`) and the present state."""

    logged: int  # records appended to this process's log
    sent: int  # records acknowledged by the broker (re-sends included)
    resent: int  # records sent again: the ledger did not have them
    confirmed: int  # records found safe (in the ledger, or acknowledged for other kinds)
    abandoned: int  # records given up on after `give_up_after_s`
    backlog: int  # records read from the log and not yet safe
    unread_bytes: int  # log bytes not yet read by the thread
    segments: int
    connected: bool


class _Entry:
    """A record read from the log and not yet safe. `sent_at`: 0 not sent, -1 sent by an
    earlier process, else when (monotonic) it was last sent."""

    __slots__ = ("start", "end", "kind", "ident", "sent_at", "first_sent", "attempts", "check_at")

    def __init__(self, record: LogRecord, sent_before: bool) -> None:
        self.start: int = record.start
        self.end: int = record.end
        self.kind: Kind = record.kind
        self.ident: str = record.ident
        self.sent_at: float = -1.0 if sent_before else 0.0
        self.first_sent: float = time.monotonic() if sent_before else 0.0
        self.attempts: int = 0
        self.check_at: float = 0.0


class Publisher:
    """The log of one API process and the thread that ships it to Kafka."""

    def __init__(
        self,
        bootstrap: str,
        decision_log: DecisionLog,
        held: HeldIds | None = None,
        *,
        topics: Sequence[str] = (),
        partitions: int = 1,
        batch_size: int = 1000,
        linger_ms: int = 100,
        resend_after_s: float = 15.0,
        max_unconfirmed: int = 100_000,
        probe_interval_s: float = 1.0,
        sync_interval_s: float = 0.2,
        adopt_interval_s: float = 5.0,
        give_up_after_s: float = 86_400.0,
        connect_timeout_s: float = 3.0,
        flush_timeout_s: float = 15.0,
        max_backoff_s: float = 5.0,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.log = decision_log
        self._held = held
        self.topics = list(topics)
        self.partitions = partitions
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000.0
        self.resend_after_s = resend_after_s
        self.max_unconfirmed = max_unconfirmed
        self.probe_interval_s = probe_interval_s
        self.sync_interval_s = sync_interval_s
        self.adopt_interval_s = adopt_interval_s
        self.give_up_after_s = give_up_after_s
        self.connect_timeout_s = connect_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.max_backoff_s = max_backoff_s
        # The producer holds the connections, the metadata and the bootstrap; records go
        # through `core.produce.BatchSender` on its connections, not through its `send`.
        self._producer_config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": "copyloop-api",
            "acks": "all",
            "max_block_ms": int(connect_timeout_s * 1000),  # waiting for a topic's metadata
            "bootstrap_timeout_ms": int(connect_timeout_s * 1000),
            "reconnect_backoff_max_ms": 1000,
            "request_timeout_ms": 5000,
            # A round whose records outgrow one batch sends one request per batch, together.
            "max_in_flight_requests_per_connection": 5,
            "enable_idempotence": False,
            # `ensure_topics` creates them (again after a broker restart) with equal partition
            # counts; a broker default must never decide how decisions are partitioned.
            "allow_auto_create_topics": False,
            **(producer_config or {}),
        }
        self._producer: KafkaProducer | None = None  # connections, metadata, bootstrap
        self._sender: BatchSender | None = None  # sends through the producer's connections
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="copyloop-publisher", daemon=True)
        self._entries: dict[Segment, dict[int, _Entry]] = {}
        self._unsent: deque[tuple[Segment, LogRecord]] = deque()
        self._backoff_s = 0.0
        self._next_connect = 0.0
        self._last_ack = 0.0
        self._next_probe = 0.0
        self._next_sync = 0.0
        self._next_adopt = 0.0
        self._next_check = 0.0
        self._lost_connection = False
        self._backlog = 0  # records tracked and not yet safe, as of the thread's last round
        self._sending_since = 0.0  # when the send in progress started (0: none)
        self._counts = {"sent": 0, "resent": 0, "confirmed": 0, "abandoned": 0}

    # -- the request side ------------------------------------------------------------------------
    def publish(
        self, topic: str, key: str, value: bytes, kind: Kind = Kind.OTHER, ident: str = ""
    ) -> None:
        """Append one message to the log; returns once it is durable (`LogUnavailable` if it
        could not be written: the caller must not acknowledge it)."""
        self.log.append(kind, topic, key, ident, value)

    def publish_many(self, messages: Sequence[tuple[str, str, bytes, Kind, str]]) -> None:
        """`publish` each `(topic, key, value, kind, ident)`, all with one write: all are
        durable, or none is (`LogUnavailable`)."""
        self.log.append_many([encode(k, t, key, i, v) for t, key, v, k, i in messages])

    def stats(self) -> PublisherStats:
        segments = self.log.segments()
        return PublisherStats(
            logged=self.log.appended,
            sent=self._counts["sent"],
            resent=self._counts["resent"],
            confirmed=self._counts["confirmed"],
            abandoned=self._counts["abandoned"],
            backlog=self._backlog,
            unread_bytes=sum(max(0, s.size - s.read_pos) for s in segments),
            segments=len(segments),
            connected=self._producer is not None and not self._stalled(),
        )

    def _stalled(self) -> bool:
        """A send has waited for the broker's acknowledgement longer than `probe_interval_s`
        (kafka-python keeps retrying a vanished broker for up to its delivery timeout)."""
        since = self._sending_since
        return since > 0 and time.monotonic() - since > self.probe_interval_s

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Publisher:
        self._thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the thread (it sends what it read, if connected) and release the log; what is
        not confirmed stays on disk for the next process."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("publisher thread did not stop within %.0fs", timeout_s)
        self.log.close()

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self._step()
            except Exception:  # e.g. the disk went away: keep the thread alive, retry
                log.exception("publisher step failed; retrying")
                self._drop_producer()
                busy = False
            if not busy:
                self._stop.wait(self.linger_s)
        try:
            if self._producer is not None:
                self._send_batch()
            self._save_positions()
        except Exception:
            log.exception("publisher could not finish cleanly; the log keeps everything")
        self._drop_producer(timeout_s=self.flush_timeout_s)

    def _step(self) -> bool:
        """One round; True when there is more to send right away."""
        now = time.monotonic()
        if now >= self._next_adopt:
            self._next_adopt = now + self.adopt_interval_s
            self.log.rotate_if_old()
            for seg in self.log.adopt_orphans():
                self._entries[seg] = {}
        if self.log.fsync == "batch" and now >= self._next_sync:
            self._next_sync = now + self.sync_interval_s
            self.log.sync()
        if self._producer is None and now >= self._next_connect:
            self._connect()
        elif self._producer is not None and now >= self._next_probe:
            self._probe_liveness(now)
        busy = False
        if self._producer is not None:
            self._read()
            busy = self._send_batch()
        if now >= self._next_check:
            self._next_check = now + min(0.5, self.resend_after_s / 4)
            self._check()
            self._save_positions()
            self._prune()
        self._backlog = sum(len(e) for e in self._entries.values())
        return busy

    def _read(self) -> None:
        """Read new records into `_unsent`, one batch's worth, unless too many await the
        ledger (then shipping waits for the consumer: the log holds them meanwhile)."""
        if len(self._unsent) >= self.batch_size:
            return
        if sum(len(e) for e in self._entries.values()) >= self.max_unconfirmed:
            return
        for seg in self.log.segments():
            entries = self._entries.setdefault(seg, {})
            while len(self._unsent) < self.batch_size and seg.read_pos < seg.size:
                records = seg.read(limit_bytes=256 << 10)
                if not records:
                    break
                for r in records:
                    sent_before = r.start < seg.shipped
                    entry = _Entry(r, sent_before)
                    entries[r.start] = entry
                    if not sent_before:
                        self._unsent.append((seg, r))
            if len(self._unsent) >= self.batch_size:
                return

    def _send_batch(self) -> bool:
        """Send up to `batch_size` records from `_unsent`; True if more wait."""
        if not self._unsent or self._producer is None:
            return False
        batch = [self._unsent.popleft() for _ in range(min(self.batch_size, len(self._unsent)))]
        try:
            delivered = self._send([r for _, r in batch])
        except BaseException:  # never drop a popped record: its entry would wait unsent forever
            self._unsent.extendleft(reversed(batch))
            raise
        now = time.monotonic()
        failed = []
        for (seg, r), ok in zip(batch, delivered, strict=True):
            if not ok:
                failed.append((seg, r))
                continue
            entry = self._entries.get(seg, {}).get(r.start)
            if entry is None:
                continue
            if entry.kind == Kind.OTHER or self._held is None:
                del self._entries[seg][r.start]
                self._counts["confirmed"] += 1
                continue
            if entry.sent_at != 0.0:
                self._counts["resent"] += 1
            else:
                entry.first_sent = now
            entry.sent_at = now
            entry.attempts += 1
            entry.check_at = now + 0.1
        if failed:  # first in line again, in their order
            self._unsent.extendleft(reversed(failed))
            return False
        return bool(self._unsent)

    def _check(self) -> None:
        """Ask the ledger about sent records that are due; drop those it holds, re-send those
        it still lacks long after they were sent."""
        if self._held is None:
            return
        now = time.monotonic()
        due: list[tuple[Segment, _Entry]] = []
        for seg, entries in self._entries.items():
            for entry in entries.values():
                if entry.sent_at != 0.0 and entry.check_at <= now:
                    due.append((seg, entry))
                    if len(due) >= 20_000:
                        break
        if not due:
            return
        wanted: dict[str, list[str]] = {table: [] for table in TABLES.values()}
        for _, e in due:
            if e.kind in TABLES:
                wanted[TABLES[e.kind]].append(e.ident)
        try:
            found = self._held(wanted)
        except Exception as exc:  # the database is down: check again later
            log.warning("cannot ask the ledger what it holds (%s); keeping the log", exc)
            return
        resend: list[tuple[Segment, _Entry]] = []
        for seg, entry in due:
            if entry.ident in found.get(TABLES.get(entry.kind, ""), ()):
                del self._entries[seg][entry.start]
                self._counts["confirmed"] += 1
            elif now - entry.first_sent > self.give_up_after_s:
                log.error(
                    "%s %s never reached the ledger in %.0fs; giving up on it",
                    entry.kind.name.lower(),
                    entry.ident,
                    self.give_up_after_s,
                )
                del self._entries[seg][entry.start]
                self._counts["abandoned"] += 1
            elif entry.sent_at < 0 or now - entry.sent_at >= self._resend_delay(entry):
                resend.append((seg, entry))
                entry.check_at = float("inf")  # until it is sent again
            else:  # sent recently: look again soon, less often the longer it takes
                entry.check_at = now + min(5.0, max(0.25, (now - entry.sent_at) / 2))
        if resend:
            log.info("re-sending %d record(s) that the ledger does not hold", len(resend))
            self._unsent.extendleft(reversed([(s, _reread(s, e)) for s, e in resend]))

    def _resend_delay(self, entry: _Entry) -> float:
        return min(300.0, self.resend_after_s * 2.0 ** max(0, entry.attempts - 1))

    def _save_positions(self) -> None:
        for seg, entries in list(self._entries.items()):
            shipped = min([seg.read_pos, *(e.start for e in entries.values() if e.sent_at == 0.0)])
            confirmed = min([seg.read_pos, *entries.keys()])
            if (shipped, confirmed) != (seg.shipped, seg.confirmed):
                seg.shipped, seg.confirmed = shipped, confirmed
                try:
                    seg.save_positions()
                except OSError as exc:
                    log.warning("cannot save the progress of %s: %s", seg.path, exc)

    def _prune(self) -> None:
        for seg in self.log.segments():
            if seg.writing or seg.read_pos < seg.size or self._entries.get(seg):
                continue
            self._entries.pop(seg, None)
            self.log.remove(seg)

    # -- Kafka -----------------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            _probe(self.bootstrap, self.connect_timeout_s)
            if self.topics:  # again after each loss: a restarted embedded broker has none
                ensure_topics(self.bootstrap, self.topics, self.partitions, self.connect_timeout_s)
            self._producer = KafkaProducer(**self._producer_config)
            if not self._producer_config["allow_auto_create_topics"]:
                refuse_topic_creation(self._producer)
            acks = self._producer_config["acks"]
            self._sender = BatchSender(
                self._producer,
                acks=-1 if acks == "all" else int(acks),
                timeout_ms=self._producer_config["request_timeout_ms"],
            )
        except (KafkaError, BrokerError, OSError) as exc:
            self._backoff_s = min(self.max_backoff_s, max(0.25, self._backoff_s * 2))
            self._next_connect = time.monotonic() + self._backoff_s
            log.warning(
                "Kafka at %s unreachable (%s); the log keeps everything, next try in %.1fs",
                self.bootstrap,
                exc,
                self._backoff_s,
            )
            return
        self._backoff_s = 0.0
        self._last_ack = self._next_probe = time.monotonic()
        log.info("publisher connected to Kafka at %s", self.bootstrap)
        if self._lost_connection:
            # The broker may have lost what it acknowledged (the embedded one keeps memory
            # only): whatever the ledger still lacks is sent again at the next check.
            self._lost_connection = False
            for entries in self._entries.values():
                for entry in entries.values():
                    if entry.sent_at > 0 and entry.check_at != float("inf"):  # not queued
                        entry.sent_at, entry.check_at = -1.0, 0.0
            self._next_check = 0.0

    def _probe_liveness(self, now: float) -> None:
        self._next_probe = now + self.probe_interval_s
        if now - self._last_ack < self.probe_interval_s:
            return
        try:
            _probe(self.bootstrap, min(1.0, self.probe_interval_s))
        except OSError as exc:
            log.warning("Kafka at %s is gone (%s)", self.bootstrap, exc)
            self._drop_producer()
            return
        self._last_ack = now

    def _send(self, records: Sequence[LogRecord]) -> list[bool]:
        """Send `records` in one round (`core.produce.BatchSender`); returns, per record,
        whether the broker acknowledged it. When any was not, the producer is dropped
        (reconnected later, topics ensured again)."""
        sender = self._sender
        if sender is None or not records:
            return [False] * len(records)
        self._sending_since = time.monotonic()
        try:
            delivered = sender.send(
                [(r.topic, r.key.encode(), r.value) for r in records], self.flush_timeout_s
            )
        except (KafkaError, ValueError) as exc:  # ValueError: a topic just re-created by a
            # restarted broker, whose partitions the producer's metadata does not show yet
            log.warning("sending to Kafka failed (%s); the log keeps the records", exc)
            delivered = [False] * len(records)
        finally:
            self._sending_since = 0.0
        count = sum(delivered)
        self._counts["sent"] += count
        if count:
            self._last_ack = time.monotonic()
        if count < len(records):
            self._drop_producer()
            self._next_connect = time.monotonic() + max(0.25, self._backoff_s)
        return delivered

    def _drop_producer(self, timeout_s: float = 0.0) -> None:
        self._sender = None
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self._lost_connection = True
        try:
            producer.close(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("closing the Kafka producer: %s", exc)


def _reread(seg: Segment, entry: _Entry) -> LogRecord:
    """The record of `entry`, read again from its segment (values are not kept in memory)."""
    data = os.pread(seg.lock_fd, entry.end - entry.start, entry.start)
    [record], _ = decode(data, entry.start)
    return record


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
