"""The ingestion watermark: a wall-clock time up to which every event written to Kafka is in the
ledger. The closer closes windows against it instead of the bare wall clock, so that a consumer
group that lags (a restart, a crash, a slow database) never closes a window whose events are
still waiting in Kafka.

How: note the end offsets of every `{prefix}.events` partition at time `t0` (a probe); once the
group's committed offsets reach them, everything produced before `t0` is in the ledger, because
the joiners commit offsets only after the database commit. The watermark is then `t0`, and a new
probe starts. It reads group offsets without joining the group, so it works in any process and
with any number of joiners. `close_grace_s` still covers events in flight to Kafka at `t0`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from core.broker import cluster_id, refuse_topic_creation

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Probe:
    t0: float
    ends: dict[TopicPartition, int]
    cluster: str | None  # the ends are offsets in this cluster's log


class IngestWatermark:
    """`advance()` returns the newest time known to be fully ingested (0.0 until the first)."""

    def __init__(self, bootstrap: str, group_id: str, topic: str) -> None:
        self._topic = topic
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id="copyloop-watermark",
            enable_auto_commit=False,
            # Asking for a missing topic's partitions must not create it with the broker's
            # default count (after the embedded broker restarted empty, say): `ensure_topics`.
            allow_auto_create_topics=False,
        )
        refuse_topic_creation(self._consumer)
        self._probe: _Probe | None = None
        self.value = 0.0

    def advance(self) -> float:
        """Check the pending probe, start a new one when it is met; Kafka errors keep the old
        value (closing simply waits)."""
        try:
            if self._probe is not None and self._probe.cluster != cluster_id(self._consumer):
                self._probe = None  # the broker lost the log its ends are offsets in
            if self._probe is None:
                self._probe = self._start_probe()
            if self._probe is not None and self._met(self._probe):
                self.value = max(self.value, self._probe.t0)
                self._probe = self._start_probe()
                if self._probe is not None and self._met(self._probe):  # an idle topic
                    self.value = max(self.value, self._probe.t0)
                    self._probe = None
        except KafkaError as exc:
            log.warning("ingestion watermark stuck at %.3f: %s", self.value, exc)
            self._probe = None
        return self.value

    def close(self) -> None:
        self._consumer.close(autocommit=False)

    def _start_probe(self) -> _Probe | None:
        t0 = time.time()
        partitions = self._consumer.partitions_for_topic(self._topic)
        if not partitions:
            return None
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        ends = {tp: int(offset) for tp, offset in self._consumer.end_offsets(tps).items()}
        return _Probe(t0, ends, cluster_id(self._consumer))

    def _met(self, probe: _Probe) -> bool:
        for tp, end in probe.ends.items():
            if end == 0:
                continue
            committed = self._consumer.committed(tp)
            if committed is None or committed < end:
                return False
        return True


__all__ = ["IngestWatermark"]
