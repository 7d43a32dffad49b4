"""The consumer: joins decisions and storefront events from Kafka, turns them into rewards exactly
once, and teaches the bandit.

- `consumer.join`: Kafka-free. `ingest` (idempotent batch writes), `close_expired_windows`
  (rewards with consecutive `seq`), `closed_since` (the replay), `late_events`.
- `consumer.records`: message values → `DecisionRecord` / `EventRecord`, or `BadMessage`.
- `consumer.learner`: `Learner`, the model kept equal to newest snapshot + replay, and
  `ElectedLearner`, which runs it in the one process holding the `learner` lease.
- `consumer.watermark`: `IngestWatermark`, the time up to which every event is in the ledger.
- `consumer.dlq`: the dead-letter topic.
- `consumer.loop`: `run_consumer(settings, stop)`, `main(settings)`; `python -m consumer.loop`.

Errors (each says whether retrying can help, `retriable`):

    ConsumerError
    ├── BadMessage             retriable=False  dead-lettered with its reason, committed past
    ├── BadBatch               retriable=False  the ledger refused a batch: ingest one by one
    ├── LedgerUnavailable      retriable=True   back off exponentially, commit no offsets
    ├── DeadLetterUnavailable  retriable=True   back off, commit no offsets
    └── LeaseLost              retriable=True   another learner moved the chain: catch up again
"""

from consumer.errors import (
    BadBatch,
    BadMessage,
    ConsumerError,
    DeadLetterUnavailable,
    LeaseLost,
    LedgerUnavailable,
)

__all__ = [
    "BadBatch",
    "BadMessage",
    "ConsumerError",
    "DeadLetterUnavailable",
    "LeaseLost",
    "LedgerUnavailable",
]
