"""CPU cost of `api.publisher.Publisher` per decision at a paced rate, with and without lingering.

`linger_ms=0` is the publisher as first written: the thread takes whatever is queued the moment
one message arrives (at a few hundred decisions/s that is 1-3 messages), sends them and
`flush()`es: one produce request and kafka-python's per-request overhead per 1-3 decisions.
`--linger-ms` (50, the publisher's default now) collects more before the send + flush.

Publishes `--rate` messages/s for `--duration` s from this process (decision-sized values) to a
fresh tansu broker and reports this process's CPU per message, minus the pacing loop's own cost.

    .venv/bin/python bench/micro_publisher.py --rate 300 --duration 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid

from api.publisher import Publisher
from core.broker import EmbeddedBroker, ensure_topics, free_port


def paced(publish, rate: float, duration: float) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    value = b"x" * 380  # a decision message is ~380 bytes
    n = int(rate * duration)
    c0 = time.process_time()
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        publish("t", uuid.uuid4().hex, value)
    return time.process_time() - c0, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default="300,1000")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--linger-ms", type=float, default=50.0)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="copyloop-bench-pub-")
    port = free_port()
    print(f"# publisher CPU per message; load {os.getloadavg()}")
    with EmbeddedBroker(port) as broker:
        topic = f"pub{uuid.uuid4().hex[:6]}"
        ensure_topics(broker.bootstrap, [topic], 4)
        for rate in (float(r) for r in args.rate.split(",")):
            # The pacing loop alone (publish = no-op), to subtract.
            base_cpu, n = paced(lambda *_: None, rate, min(3.0, args.duration))
            base_per = base_cpu / n
            for name, linger in (
                ("linger_ms=0", 0),
                (f"linger_ms={args.linger_ms:g}", args.linger_ms),
            ):
                pub = Publisher(
                    broker.bootstrap,
                    f"{tmp}/{name}-{rate}",
                    queue_size=100_000,
                    linger_ms=int(linger),
                )
                pub.start()
                deadline = time.monotonic() + 20
                while not pub.stats().connected and time.monotonic() < deadline:
                    time.sleep(0.05)
                cpu, n = paced(
                    lambda t, k, v, pub=pub: pub.publish(topic, k, v), rate, args.duration
                )
                t0 = time.monotonic()
                while pub.stats().sent < n and time.monotonic() - t0 < 30:
                    time.sleep(0.01)
                sent = pub.stats().sent
                pub.close()
                per = (cpu / n - base_per) * 1e6
                print(
                    f"  {name:<20} rate {rate:6.0f}/s: {per:7.1f} µs CPU per message "
                    f"= {per * rate / 1e4:5.1f}% of a core; delivered {sent}/{n}; "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
