"""The Kafka loop around `consumer.join`: a thin joiner, and an elected closer-learner.

    run_consumer(settings, stop)          # until `stop` is set; `main(settings)` adds signals
    python -m consumer.loop               # settings from the environment (COPYLOOP_*)

Joiner (every group member; this thread): poll a batch from `{prefix}.decisions` and
`{prefix}.events` (events and activations) → decode (bad messages become dead letters) →
`ingest` in one transaction →
publish the dead letters → commit the batch's offsets. Offsets are committed only after the
database commit and the dead-letter acknowledgement, so a crash anywhere redelivers the batch
and the idempotent ingest makes that harmless. A retriable failure (ledger or DLQ down) seeks
back to the batch's start and backs off exponentially; the next poll re-reads it.

The ingest and the dead letters of one batch run on a writer thread while this thread polls and
decodes the next one (at most one batch in each stage): the database's share of a message
(SQLite's C code, PostgreSQL's round trips) releases the GIL, so it overlaps Kafka's and the
decoding's (`bench/consume.py`). This thread still commits the offsets, after the batch is
written; when the write failed, it rewinds to that batch, past the one polled meanwhile.

Closer-learner (a thread; whoever holds the `learner` lease in the group does the work): close
the windows that the ingestion watermark (`consumer.watermark`) has passed, learn them in `seq`
order, snapshot. A crash loses nothing: the next holder loads the newest snapshot and replays.

Stopping (`stop` set, SIGTERM or SIGINT in `main`): the joiner finishes its batch, commits the
database and the offsets and leaves the group; the learner snapshots what it learned since the
last snapshot and releases the lease.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from sqlalchemy.orm import Session, sessionmaker

from consumer.dlq import DeadLetter, DeadLetterQueue
from consumer.errors import Backoff, BadBatch, BadMessage, ConsumerError
from consumer.join import ingest
from consumer.learner import ElectedLearner, StepReport
from consumer.records import (
    ActivationRecord,
    DecisionRecord,
    EventRecord,
    decode_decision,
    decode_events_message,
)
from consumer.watermark import IngestWatermark
from core.broker import cluster_id, ensure_topics
from core.ledger import make_engine, make_sessionmaker
from core.runtime import tune_gc
from core.settings import Settings, load_settings

log = logging.getLogger("consumer.loop")  # not "__main__" under python -m


@dataclass(frozen=True, slots=True)
class LoopTuning:
    """Knobs of the loop that operators rarely touch (times in seconds unless `_ms`)."""

    poll_timeout_ms: int = 200
    # Large batches: per batch the loop pays a transaction, an offset commit and a fetch
    # round; 2,000 records and 1 MiB per partition held it to ~21k messages/s, 20,000 and
    # 4 MiB gave ~29-33k (`bench/consume.py`). A batch the ledger refuses is bisected.
    max_poll_records: int = 20000
    max_partition_fetch_bytes: int = 4 * 1024 * 1024
    max_poll_interval_ms: int = 5000  # short: tansu and Kafka wait this long on a group join
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    # How stale the topic metadata may get. kafka-python's default (5 minutes) kept a consumer
    # idle for minutes after the embedded broker restarted empty: the topics are created again
    # (by the API or `up`) after the group rejoined with nothing to assign.
    metadata_max_age_ms: int = 3000
    lease_ttl_s: float = 10.0  # a crashed learner is replaced after at most this long
    close_interval_s: float = 0.25  # how often the learner looks for windows to close
    close_limit: int = 2000  # decisions closed per transaction
    max_backoff_s: float = 2.0  # below max_poll_interval: backing off must not cost the group


@dataclass(frozen=True, slots=True)
class Progress:
    """Counters since this process started (`last_seq`, `model_version` are the learner's)."""

    decisions: int = 0  # new decisions stored
    events: int = 0  # new events stored
    activations: int = 0  # new activations stored
    duplicates: int = 0  # redelivered or repeated decisions and events, ignored
    dead_lettered: int = 0
    closed: int = 0  # windows closed by this process
    learned: int = 0  # decisions taught to the model, replay included
    last_seq: int = 0
    model_version: int = 0
    watermark: float = 0.0


ProgressCallback = Callable[[Progress], None]


class _Progress:
    """Thread-safe counters; `on_progress` is called from the joiner and the learner threads."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._lock = threading.Lock()
        self._value = Progress()
        self._callback = callback

    def add(self, **changes: int) -> None:
        with self._lock:  # the callback too, so that it sees the counters only ever grow
            self._value = replace(
                self._value, **{k: getattr(self._value, k) + v for k, v in changes.items()}
            )
            if self._callback is not None:
                self._callback(self._value)

    def set_learner(self, last_seq: int, model_version: int, watermark: float) -> None:
        with self._lock:
            self._value = replace(
                self._value, last_seq=last_seq, model_version=model_version, watermark=watermark
            )


# -- joiner ------------------------------------------------------------------------------------
class _Joiner(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python is untyped
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        stop: threading.Event,
        progress: _Progress,
        tuning: LoopTuning,
    ) -> None:
        self._settings, self._sessions, self._stop = settings, sessions, stop
        self._progress, self._tuning = progress, tuning
        self._backoff = Backoff(tuning.max_backoff_s)
        self._pending: dict[TopicPartition, int] = {}  # DB-committed, not yet Kafka-committed
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            group_id=settings.consumer_group,
            client_id=f"copyloop-consumer-{os.getpid()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=tuning.max_poll_records,
            max_partition_fetch_bytes=tuning.max_partition_fetch_bytes,
            max_poll_interval_ms=tuning.max_poll_interval_ms,
            session_timeout_ms=tuning.session_timeout_ms,
            heartbeat_interval_ms=tuning.heartbeat_interval_ms,
            metadata_max_age_ms=tuning.metadata_max_age_ms,
            # Its metadata requests may create missing topics (with the broker's default
            # partition count): after the embedded broker restarted empty, a group that joined
            # while its topics were missing is not rebalanced by kafka-python 3.0 when they
            # reappear (tansu keeps the old leader), so the consumer must not wait for another
            # process to create them. Everyone else refuses (`refuse_topic_creation`).
        )
        self._dlq = DeadLetterQueue(settings.bootstrap, settings.dlq_topic)
        # One batch is written (ingest, dead letters) by this thread while the next is polled
        # and decoded; its offsets are committed once it is written.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="copyloop-ingest")
        # The batch being written, and the cluster whose log it was read from.
        self._writing: tuple[dict[TopicPartition, list[Any]], Future[_Written], str | None] | None
        self._writing = None
        self._cluster: str | None = None  # the cluster id the positions and offsets refer to
        self._next_end_check = 0.0  # monotonic time of the next `_restart_past_the_end`

    def run(self) -> None:
        self._consumer.subscribe(
            [self._settings.decisions_topic, self._settings.events_topic], listener=self
        )
        try:
            while not self._stop.is_set():
                batch = self._consumer.poll(timeout_ms=self._tuning.poll_timeout_ms)
                decoded = _decode(batch, self._settings.decisions_topic) if batch else None
                if not self._finish_write(rewind_too=batch):
                    continue  # rewound to the failed batch: this one is polled again after it
                if self._log_replaced():
                    continue  # `batch` may have been read at offsets of the lost log: dropped
                self._restart_past_the_end(batch)
                if decoded is not None:
                    future = self._writer.submit(self._write, decoded)
                    self._writing = (batch, future, self._cluster)
                elif self._pending:
                    self._commit({})
        finally:
            self._finish_write(rewind_too={})
            if self._pending:
                self._commit({})
            self._writer.shutdown()
            self._consumer.close(autocommit=False)
            self._dlq.close()

    def _finish_write(self, rewind_too: dict[TopicPartition, list[Any]]) -> bool:
        """Wait for the batch being written, then commit its offsets; False when it failed
        retriably: then it and `rewind_too` (polled meanwhile) are rewound, and backed off."""
        if self._writing is None:
            return True
        batch, written, cluster = self._writing
        self._writing = None
        try:
            stored, letters = written.result()
        except ConsumerError as exc:
            if cluster_id(self._consumer) != cluster:
                return True  # read from a log the broker lost: `_log_replaced` starts over
            self._retry_later(batch, exc, rewind_too)
            return False
        self._backoff.reset()
        self._progress.add(dead_lettered=letters, **stored)
        if cluster_id(self._consumer) == cluster:  # else its offsets mean nothing any more
            assigned = self._consumer.assignment()  # a rebalance meanwhile gave some away
            self._commit({tp: rs[-1].offset + 1 for tp, rs in batch.items() if tp in assigned})
        return True

    def _log_replaced(self) -> bool:
        """True when another cluster answers than the one this consumer's positions refer to:
        the embedded broker restarted and lost its log, and its new log starts at offset 0.
        Every assigned partition is then read again from its start, and offsets held for the
        old log are dropped. (A position beyond the new log's end would wait there for it to
        grow, as tansu does not answer OFFSET_OUT_OF_RANGE, and the first records re-sent to
        the new log would be skipped.) What was already ingested is ignored as duplicates;
        what the lost log held and the ledger lacks, the API re-sends (`api.publisher`)."""
        current = cluster_id(self._consumer)
        if current is None or current == self._cluster:
            return False
        previous, self._cluster = self._cluster, current
        if previous is None:
            return False  # the first metadata this consumer saw
        log.warning(
            "Kafka's cluster id changed from %s to %s: the broker lost its log; reading every "
            "partition again from its start",
            previous,
            current,
        )
        self._pending.clear()
        assigned = self._consumer.assignment()
        if assigned:
            self._consumer.seek_to_beginning(*assigned)
        return True

    def _write(self, batch: _Decoded) -> tuple[dict[str, int], int]:
        """The writer thread's part: ingest the batch (in halves, down to the refused messages,
        if the ledger refuses it), then publish its dead letters. Returns the counts stored and
        dead-lettered; raises `ConsumerError` when the batch must be read again (the ledger or
        the DLQ is down)."""
        decisions, events, activations, letters = batch
        stored = {"decisions": 0, "events": 0, "activations": 0, "duplicates": 0}
        parts: list[list[tuple[Any, _Record]]] = [[*decisions, *events, *activations]]
        while parts:
            part = parts.pop()
            try:
                self._ingest(part, stored)
                continue
            except BadBatch as exc:
                reason = str(exc)
            except ConsumerError:
                raise  # the ledger is unavailable: the whole batch is read again
            except Exception as exc:  # not the database's refusal, not its absence
                log.exception("ingesting %d messages failed unexpectedly", len(part))
                reason = _unexpected(exc)
            if len(part) == 1:  # this record alone: poison
                letters.append(_letter(part[0][0], reason))
            else:  # bisect: O(bad · log n) transactions, first half first (first write wins)
                log.warning("%s; ingesting the %d messages in halves", reason, len(part))
                half = len(part) // 2
                parts += [part[half:], part[:half]]
        self._dlq.publish(letters)
        return stored, len(letters)

    def _ingest(self, part: list[tuple[Any, _Record]], stored: dict[str, int]) -> None:
        """Ingest `part` (decoded records of any kind) in one transaction; add what it stored."""
        records = [r for _, r in part]
        result = ingest(
            self._sessions,
            [r for r in records if isinstance(r, DecisionRecord)],
            [r for r in records if isinstance(r, EventRecord)],
            [r for r in records if isinstance(r, ActivationRecord)],
            reward_window_s=self._settings.reward_window_s,
        )
        stored["decisions"] += result.decisions_new
        stored["events"] += result.events_new
        stored["activations"] += result.activations_new
        stored["duplicates"] += (
            result.decisions_duplicate + result.events_duplicate + result.activations_duplicate
        )

    def _retry_later(
        self,
        batch: dict[TopicPartition, list[Any]],
        exc: ConsumerError,
        polled_since: dict[TopicPartition, list[Any]],
    ) -> None:
        """Rewind to the batch's first offsets (the next poll re-reads it, and the batch
        `polled_since` after it) and back off."""
        delay = self._backoff.next()
        log.warning("%s (retriable=%s); retrying the batch in %.1fs", exc, exc.retriable, delay)
        for records_by_tp in (polled_since, batch):  # the failed batch's offsets come first
            for tp, records in records_by_tp.items():
                self._consumer.seek(tp, records[0].offset)
        self._stop.wait(delay)

    def _restart_past_the_end(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Read from its start any partition that this consumer would fetch beyond its end.
        On Kafka that cannot happen (the broker answers OFFSET_OUT_OF_RANGE and the consumer
        resets); tansu answers with nothing, so a position taken from the log the broker lost
        (an offset committed there in the moment before the restart showed) would wait until
        the new log grew past it, skipping what came before. Once a second, for partitions
        that returned nothing."""
        now = time.monotonic()
        if now < self._next_end_check:
            return
        self._next_end_check = now + 1.0
        past = []
        for tp in self._consumer.assignment() - batch.keys():
            try:
                end = self._consumer.highwater(tp)  # from the last fetch; None before one
                if end is None:
                    continue
                position = self._consumer.position(tp, 0)
            except KafkaError:  # revoked meanwhile, or no position yet
                continue
            if position is not None and position > end:
                past.append((tp, position, end))
        if past:
            log.warning(
                "positions beyond the end of the log (%s): the broker lost what this consumer "
                "read; reading those partitions again from their start",
                ", ".join(f"{tp.topic}[{tp.partition}] at {p} > {e}" for tp, p, e in past),
            )
            self._consumer.seek_to_beginning(*(tp for tp, _, _ in past))

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        self._pending.update(offsets)
        try:
            self._consumer.commit(
                {tp: OffsetAndMetadata(o, "", -1) for tp, o in self._pending.items()}
            )
            self._pending.clear()
        except CommitFailedError as exc:  # the group rebalanced: keep what is still ours
            assigned = self._consumer.assignment()
            self._pending = {tp: o for tp, o in self._pending.items() if tp in assigned}
            log.warning(
                "offset commit failed after a rebalance (%s); batch will be redelivered "
                "to the partitions' new owners, idempotently",
                exc,
            )
        except KafkaError as exc:
            log.warning("offset commit failed (%s); retrying with the next batch", exc)

    # ConsumerRebalanceListener. kafka-python runs these on its IO loop, where a blocking commit
    # would stall heartbeats. Offsets are committed after every database commit, so only a
    # failed commit can leave any behind; the partition's next owner re-ingests that batch
    # idempotently.
    def on_partitions_revoked(self, revoked: Any) -> None:
        lost = {tp: o for tp, o in self._pending.items() if tp in set(revoked)}
        if lost:
            log.info("partitions revoked with uncommitted offsets %s", lost)
        for tp in lost:
            self._pending.pop(tp, None)

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


_Decoded = tuple[
    list[tuple[Any, DecisionRecord]],
    list[tuple[Any, EventRecord]],
    list[tuple[Any, ActivationRecord]],
    list[DeadLetter],
]
_Written = tuple[dict[str, int], int]
_Record = DecisionRecord | EventRecord | ActivationRecord


def _decode(batch: dict[TopicPartition, list[Any]], decisions_topic: str) -> _Decoded:
    """A polled batch's records decoded, each kept beside its Kafka record; the bad ones as
    dead letters with their reason."""
    decisions: list[tuple[Any, DecisionRecord]] = []
    events: list[tuple[Any, EventRecord]] = []
    activations: list[tuple[Any, ActivationRecord]] = []
    letters: list[DeadLetter] = []
    for tp, records in batch.items():
        for r in records:
            try:
                if tp.topic == decisions_topic:
                    decisions.append((r, decode_decision(r.value, tp.partition)))
                    continue
                record = decode_events_message(r.value, r.timestamp)
                if isinstance(record, ActivationRecord):
                    activations.append((r, record))
                else:
                    events.append((r, record))
            except BadMessage as exc:
                letters.append(_letter(r, str(exc)))
            except Exception as exc:  # whatever one message does, it is poison
                letters.append(_letter(r, _unexpected(exc)))
    return decisions, events, activations, letters


def _unexpected(exc: BaseException) -> str:
    """A dead letter's reason for an error that decoding did not anticipate."""
    return f"unreadable message ({type(exc).__name__}: {str(exc)[:200] or 'no detail'})"


def _letter(record: Any, reason: str) -> DeadLetter:
    return DeadLetter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        key=record.key,
        value=record.value,
        reason=reason,
    )


# -- entry points ------------------------------------------------------------------------------
def run_consumer(
    settings: Settings,
    stop: threading.Event,
    on_progress: ProgressCallback | None = None,
    tuning: LoopTuning | None = None,
) -> None:
    """Join, reward and learn until `stop` is set. `on_progress` gets cumulative `Progress`
    (from the joiner and the learner threads: keep it quick and thread-safe)."""
    tuning = tuning or LoopTuning()
    ensure_topics(
        settings.bootstrap,
        [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
        settings.topic_partitions,
    )
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    progress = _Progress(on_progress)
    watermark: IngestWatermark | None = None
    learner: threading.Thread | None = None
    try:
        watermark = IngestWatermark(
            settings.bootstrap, settings.consumer_group, settings.events_topic
        )
        learner = threading.Thread(
            target=_elect(settings, sessions, stop, progress, tuning, watermark).run,
            name="copyloop-learner",
        )
        learner.start()
        _Joiner(settings, sessions, stop, progress, tuning).run()
    finally:
        stop.set()
        if learner is not None:
            learner.join()
        if watermark is not None:
            watermark.close()
        engine.dispose()


def _elect(
    settings: Settings,
    sessions: sessionmaker[Session],
    stop: threading.Event,
    progress: _Progress,
    tuning: LoopTuning,
    watermark: IngestWatermark,
) -> ElectedLearner:
    """The closer-learner of this process, closing windows against the ingestion watermark."""

    def report(step: StepReport) -> None:
        progress.set_learner(step.last_seq, step.model_version, watermark.value)
        progress.add(closed=step.closed, learned=step.learned)

    return ElectedLearner(
        sessions,
        settings,
        stop,
        clock=lambda: min(time.time(), watermark.advance()),
        lease_ttl_s=tuning.lease_ttl_s,
        interval_s=tuning.close_interval_s,
        close_limit=tuning.close_limit,
        max_backoff_s=tuning.max_backoff_s,
        on_step=report,
    )


def main(settings: Settings, tuning: LoopTuning | None = None) -> int:
    """`copyloop consume`: run until SIGTERM or SIGINT, then stop cleanly. Returns the exit code."""
    tune_gc()  # this process is the consumer's: see core.runtime
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signals are the main thread's
        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_consumer(settings, stop, tuning=tuning)
    except Exception:
        log.exception("consumer failed")
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m consumer.loop",
        description="Run the copyloop consumer; settings come from COPYLOOP_* variables.",
    )
    defaults = LoopTuning()
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=defaults.lease_ttl_s,
        help="seconds before a dead learner's lease can be taken over",
    )
    parser.add_argument(
        "--close-interval",
        type=float,
        default=defaults.close_interval_s,
        help="seconds between looks for windows to close",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    tuning = replace(defaults, lease_ttl_s=args.lease_ttl, close_interval_s=args.close_interval)
    return main(load_settings(), tuning)


if __name__ == "__main__":
    raise SystemExit(_cli())
