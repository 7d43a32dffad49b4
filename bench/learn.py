"""Learning throughput: how fast the learner closes windows, writes rewards and teaches VW, and
how soon a closed decision is in a saved snapshot.

A fresh ledger (SQLite in a temp dir, or a fresh PostgreSQL database) is filled with `--decisions`
decisions and their events (`reports.synthetic.fill`: 20 products, 5 variants each, contexts,
~7 % with events), all of whose windows are over. Then, timed:

- **copyloop**: `consumer.learner.Learner` as the elected learner runs it: `close_and_learn`
  (the SQL close of up to 2,000 windows per transaction, rewards with consecutive `seq`, VW
  learning each) and `maybe_snapshot` on its cadence, until every decision is learned. Reported:
  decisions learned/s, and the decision→snapshot latency (from a batch's close to the first
  snapshot that holds it: p50/p99/max).
  The process runs with the consumer's garbage-collector settings (`core.runtime.tune_gc`).
- **baseline**: pyvw learning the very same examples (the same VW arguments, the text lines
  rendered beforehand, no database): the ceiling VW itself sets in this process.

    .venv/bin/python bench/learn.py --decisions 200000
    .venv/bin/python bench/learn.py --decisions 200000 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

Writes `bench/results/learn.json` (or `--json PATH`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from bandit import Arm, LoggedDecision, Policy, ProductFeatures
from bandit.vw_format import to_vw
from consumer.learner import Learner
from core.ledger import Decision, Product, Reward, Variant, make_engine, make_sessionmaker
from core.migrations import upgrade
from core.runtime import tune_gc
from core.settings import load_settings
from reports.synthetic import fill

RESULTS = Path(__file__).resolve().parent / "results" / "learn.json"


def fresh_database(url: str | None, tmp: str) -> tuple[str, Any]:
    """A migrated empty ledger; returns (url, cleanup)."""
    if not url or url.startswith("sqlite"):
        path = Path(tmp) / "ledger.db"
        return f"sqlite:///{path}", lambda: None
    name = f"copyloop_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return str(make_url(url).set(database=name)), drop


def baseline(sessions: Any, vw_args: str, limit: int) -> float:
    """Examples/s of pyvw on the same decisions, rendered before the clock starts."""
    with sessions() as s:
        arms = {
            v.variant_id: Arm.from_variant(v.variant_id, v.text, v.style, v.source)
            for v in s.scalars(select(Variant))
        }
        categories = dict(s.execute(select(Product.product_id, Product.category)).all())
        rows = s.execute(
            select(Reward.reward, Decision).join(Decision).order_by(Reward.seq).limit(limit)
        ).all()
    examples = []
    for reward, d in rows:
        logged = LoggedDecision(
            d.context,
            ProductFeatures(d.product_id, categories[d.product_id]),
            tuple(arms[a] for a in d.actions),
            d.actions.index(d.variant_id),
            d.probability,
        )
        label = (logged.chosen, float(reward), logged.probability)
        examples.append(to_vw(logged.context, logged.product, logged.arms, label))
    policy = Policy(vw_args)
    vw = policy._vw  # the raw workspace: what VW alone costs
    started = time.perf_counter()
    for lines in examples:
        vw.learn(lines)
    elapsed = time.perf_counter() - started
    policy.close()
    return len(examples) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--decisions", type=int, default=200_000)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--json", type=Path, default=RESULTS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="copyloop-learn-") as tmp:
        url, cleanup = fresh_database(args.database_url, tmp)
        try:
            upgrade(url)
            engine = make_engine(url)
            sessions = make_sessionmaker(engine)
            start = time.time() - 3 * 86400
            fill(engine, args.decisions, start=start, span_s=86400.0, window_s=1800.0)
            settings = load_settings(database_url=url, reward_window_s=1800.0, close_grace_s=5.0)
            tune_gc()  # the collector's settings of the consumer process (`copyloop consume`)
            learner = Learner(sessions, settings)
            learner.catch_up()
            t0 = time.perf_counter()
            latencies: list[float] = []
            pending: list[float] = []  # close times of batches not yet in a snapshot
            while True:
                closed = learner.close_and_learn(time.time())
                if closed:
                    pending.append(time.perf_counter())
                if learner.maybe_snapshot(force=not closed) is not None:
                    now = time.perf_counter()
                    latencies.extend(now - t for t in pending)
                    pending.clear()
                if not closed:
                    break
            elapsed = time.perf_counter() - t0
            learned = learner.learned
            rate = learned / elapsed
            learner.close()
            base = baseline(sessions, settings.vw_args, min(learned, 100_000))
            engine.dispose()
        finally:
            cleanup()
    backend = make_url(url).get_backend_name()
    lat = sorted(latencies) or [0.0]
    result = {
        "benchmark": "learn",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load": os.getloadavg()[0],
        "database": backend,
        "decisions": args.decisions,
        "learned": learned,
        "seconds": elapsed,
        "copyloop_per_s": rate,
        "pyvw_alone_per_s": base,
        "ratio": rate / base,
        "snapshot_latency_p50_s": statistics.median(lat),
        "snapshot_latency_p99_s": lat[int(0.99 * (len(lat) - 1))],
        "snapshot_latency_max_s": lat[-1],
        "vw_args": settings.vw_args,
    }
    print(f"learning on {backend}, {learned:,} decisions (load {result['load']:.2f})")
    print(f"{'figure':40} {'copyloop':>12} {'baseline':>12} {'ratio':>7}")
    print(
        f"{'decisions learned/s (baseline: pyvw alone)':40} {rate:12,.0f} {base:12,.0f} "
        f"{rate / base:7.2f}"
    )
    print(
        f"{'closed → in a snapshot, p50 / p99 / max':40} "
        f"{result['snapshot_latency_p50_s']:.2f} / {result['snapshot_latency_p99_s']:.2f} / "
        f"{result['snapshot_latency_max_s']:.2f} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
