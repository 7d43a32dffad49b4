"""The faults a run injects, each one logged with when it happened and what it touched.

- `kill_api`, `kill_consumer`, `kill_scheduler`, `kill_up`: SIGKILL of the process group, then a
  restart after a short seeded pause (the supervisor's part, played by the harness);
- `broker_outage`: the broker stopped (SIGSTOP) for `outage_s` while traffic flows, then resumed.
  The embedded broker keeps its log in memory, so stopping rather than killing it is what keeps
  this fault about Kafka being away, not about Kafka losing its data (`kill_up` covers that);
- `snapshot_corrupt` / `snapshot_missing`: the newest model snapshot file overwritten with
  garbage or deleted, then the consumer killed and the API restarted (SIGTERM, so this fault
  stays about snapshots, not about SIGKILL of the API) so that both must load a snapshot;
- `poison`: malformed messages put on `{prefix}.events` (deep JSON, NUL, bad types, not JSON…);
  each must cost exactly one dead letter and nothing else.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from tests.faults.stack import Stack

KINDS = {
    "parts": (
        "kill_api",
        "kill_consumer",
        "kill_scheduler",
        "broker_outage",
        "snapshot_corrupt",
        "snapshot_missing",
        "poison",
    ),
    "up": ("kill_up",),
}


def poison_messages(tag: str) -> list[tuple[str, bytes]]:
    """(what, value) pairs, each invalid in its own way; ids carry `tag` so none repeats."""
    deep_list = b"[" * 2000 + b"]" * 2000
    deep_dict = ('{"a":' * 3000 + "1" + "}" * 3000).encode()
    event = {"event_id": f"{tag}-x", "decision_id": f"{tag}-d", "type": "click"}
    return [
        ("deep JSON list (2000 levels)", deep_list),
        ("deep JSON object (3000 levels)", deep_dict),
        ("NUL in event_id", json.dumps({**event, "event_id": f"{tag}\u0000nul"}).encode()),
        ("event_id of the wrong type", json.dumps({**event, "event_id": 12345}).encode()),
        ("decision_id a list", json.dumps({**event, "decision_id": [f"{tag}-d"]}).encode()),
        ("unknown event type", json.dumps({**event, "type": "teleport"}).encode()),
        ("negative value", json.dumps({**event, "type": "purchase", "value": -3}).encode()),
        ("not JSON", b"\xff\xfe not json at all"),
        ("empty message", b""),
        ("JSON but not an object", b'"just a string"'),
    ]


@dataclass
class Injection:
    kind: str
    at_s: float  # seconds since the run's traffic started
    detail: str
    recovered_s: float | None = None  # when the touched parts were answering again


@dataclass
class Injector:
    stack: Stack
    rng: np.random.Generator
    outage_s: float
    t0: float
    log: Callable[[str], None]
    injections: list[Injection] = field(default_factory=list)
    poison_sent: int = 0

    def inject(self, kind: str) -> Injection:
        at = time.monotonic() - self.t0
        detail = getattr(self, f"_{kind}")()
        injection = Injection(kind, round(at, 2), detail, round(time.monotonic() - self.t0, 2))
        self.injections.append(injection)
        self.log(f"[{injection.at_s:7.2f}s] {kind}: {detail}")
        return injection

    def _pause(self) -> float:
        return float(self.rng.uniform(0.2, 2.0))

    def _kill_restart(self, name: str) -> str:
        part = self.stack.parts[name]
        pid = part.proc.pid if part.proc else "?"
        part.kill()
        pause = self._pause()
        time.sleep(pause)
        for other in self.stack.parts.values():  # a part stopped on purpose restarts too
            if not other.alive():
                other.start()
        return f"SIGKILL {name} pid {pid}; restarted after {pause:.1f}s"

    def _kill_api(self) -> str:
        return self._kill_restart("serve")

    def _kill_consumer(self) -> str:
        return self._kill_restart("consume")

    def _kill_scheduler(self) -> str:
        return self._kill_restart("scheduler")

    def _kill_up(self) -> str:
        return self._kill_restart("up")

    def _broker_outage(self) -> str:
        broker = self.stack.parts["broker"]
        broker.signal_group(signal.SIGSTOP)
        try:
            time.sleep(self.outage_s)
        finally:
            broker.signal_group(signal.SIGCONT)
        return f"broker stopped (SIGSTOP) for {self.outage_s:.0f}s, then resumed"

    def _newest_snapshot(self, wait_s: float = 30.0) -> Path | None:
        """The newest snapshot file, waiting for one to appear (after a fault removed them)."""
        deadline = time.monotonic() + wait_s
        while True:
            files = sorted(Path(self.stack.settings.snapshot_dir or "").glob("model-*.vw"))
            if files or time.monotonic() > deadline:
                return files[-1] if files else None
            time.sleep(0.5)

    def _snapshot_corrupt(self) -> str:
        newest = self._newest_snapshot()
        if newest is None:
            return "no snapshot file yet: nothing corrupted"
        size = newest.stat().st_size
        newest.write_bytes(self.rng.bytes(max(size, 64)))
        return f"{newest.name} overwritten with {size} random bytes; " + self._reload_both()

    def _snapshot_missing(self) -> str:
        newest = self._newest_snapshot()
        if newest is None:
            return "no snapshot file yet: nothing deleted"
        newest.unlink()
        return f"{newest.name} deleted; " + self._reload_both()

    def _reload_both(self) -> str:
        """Consumer SIGKILLed, API stopped gracefully: both start by loading a snapshot."""
        self.stack.parts["serve"].stop()
        return self._kill_restart("consume") + "; API restarted with SIGTERM"

    def _poison(self) -> str:
        tag = f"poison{len(self.injections)}"
        messages = poison_messages(tag)
        producer = KafkaProducer(bootstrap_servers=self.stack.bootstrap, acks="all")
        try:
            for i, (_, value) in enumerate(messages):
                key = f"{tag}-{i}".encode()
                producer.send(self.stack.settings.events_topic, key=key, value=value).get(10)
        finally:
            producer.close(timeout=5)
        self.poison_sent += len(messages)
        return f"{len(messages)} poison messages: " + "; ".join(what for what, _ in messages)
