"""The dead-letter topic `{prefix}.events.dlq`: where messages that can never be ingested go,
with the reason, so that one bad producer never stops the consumer.

Each dead letter is JSON, keyed like the original message:

    {"reason": "type: Input should be 'click', 'add_to_cart' or 'purchase'",
     "topic": "copyloop.events", "partition": 3, "offset": 1041, "timestamp": 1767323045000,
     "key": "d-42", "value": "<the original value as text>"}

`value` is the original bytes decoded as UTF-8; bytes that are not UTF-8 are kept exactly in
`value_b64` as well. Delivery is at least once: a batch retried after a failure may dead-letter
a message twice.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.errors import KafkaError

from consumer.errors import DeadLetterUnavailable


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused message: where it was read, its raw key and value, and why it was refused."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    reason: str

    def to_json(self) -> bytes:
        body: dict[str, object] = {
            "reason": self.reason,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "value": None if self.value is None else self.value.decode("utf-8", "replace"),
        }
        if self.value is not None:
            try:
                self.value.decode("utf-8")
            except UnicodeDecodeError:
                body["value_b64"] = base64.b64encode(self.value).decode("ascii")
        return json.dumps(body, ensure_ascii=False).encode()


class DeadLetterQueue:
    """A producer on the dead-letter topic; `publish` returns once every letter is acknowledged."""

    def __init__(self, bootstrap: str, topic: str, *, timeout_s: float = 10.0) -> None:
        self.topic = topic
        self._timeout_s = timeout_s
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="copyloop-consumer-dlq",
            acks="all",
            linger_ms=5,
            retries=5,
        )

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Send and wait for the broker's acknowledgement: offsets of these messages may only be
        committed afterwards. Raises `DeadLetterUnavailable` when Kafka refuses."""
        if not letters:
            return
        try:
            futures = [
                self._producer.send(self.topic, value=letter.to_json(), key=letter.key)
                for letter in letters
            ]
            self._producer.flush(timeout=self._timeout_s)
            for future in futures:
                future.get(timeout=self._timeout_s)
        except KafkaError as exc:
            raise DeadLetterUnavailable(f"cannot write to {self.topic}: {exc}") from exc

    def close(self) -> None:
        self._producer.close(timeout=self._timeout_s)


__all__ = ["DeadLetter", "DeadLetterQueue"]
