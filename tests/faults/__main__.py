"""The fault suite: `python -m tests.faults [--db sqlite|postgres] [--rounds N] [--seed S]
[--outage-s 30] [--layout parts|up|both]`.

Starts copyloop as real processes — `parts` (broker, `serve` with 2 workers, `consume`,
`scheduler`, each its own process) and/or `up` (one `copyloop up`) — on a fresh ledger, runs a
storefront and event producers against it that record what was acknowledged, and injects
`--rounds` seeded faults at random points while traffic flows (every kind of the layout at least
once when rounds allow; see tests/faults/inject.py). Then it stops the traffic, waits until
copyloop is quiet, and checks that the ledger equals the producers' record exactly
(tests/faults/check.py). It prints every injection and the verdict; exit 0 only on an exact
match in every layout. `--json PATH` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from core.catalog import SAMPLE_CATALOG
from core.keys import create_key
from core.ledger import make_engine, make_sessionmaker
from core.ledger.tables import Product
from core.migrations import upgrade
from tests.faults.check import compare, count_dead_letters, owed, quiesce
from tests.faults.inject import KINDS, Injector
from tests.faults.stack import Database, Stack
from tests.faults.traffic import Record, Traffic


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _seed_catalog(database_url: str, workdir: Path, products: int) -> None:
    """A few sample products with rules variants, through the CLI's own import path."""
    from core.catalog import read_catalog, upsert_products
    from core.settings import load_settings
    from generator.jobs import generate_variants

    lines = SAMPLE_CATALOG.read_text().splitlines()[:products]
    path = workdir / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    engine = make_engine(database_url)
    try:
        sessions = make_sessionmaker(engine)
        items = read_catalog(path)
        upsert_products(sessions, items)
        generate_variants(
            sessions,
            load_settings(database_url=database_url),
            product_ids=[p.product_id for p in items],
            backend="rules",
        )
    finally:
        engine.dispose()


def run_layout(
    layout: str,
    db: str,
    rounds: int,
    seed: int,
    outage_s: float,
    workdir: Path,
    kinds: list[str] | None = None,
) -> dict[str, Any]:
    """One layout's run: start, traffic, `rounds` faults drawn from `kinds` (default: all of the
    layout's), quiesce, compare."""
    rng = np.random.default_rng(seed)
    kinds_wanted = kinds
    database = Database(db, workdir)
    url = database.create()
    window = max(8.0, outage_s + 8.0)  # an event delayed by one outage still lands in its window
    stack = Stack(layout, url, workdir, {"reward_window_s": window, "seed": seed})
    engine = make_engine(url)
    try:
        upgrade(url)
        _seed_catalog(url, workdir, 5)
        sessions = make_sessionmaker(engine)
        serve_key, events_key = create_key(sessions, "serve"), create_key(sessions, "events")
        with sessions() as s:
            products = sorted(s.scalars(select(Product.product_id)))
        _say(f"== layout {layout}, {db}: ledger {url}, {len(products)} products, seed {seed}")
        stack.start()
        record = Record()
        traffic = Traffic(
            stack.base_url,
            stack.bootstrap,
            stack.settings.events_topic,
            serve_key,
            events_key,
            products,
            record,
            seed=seed,
            # `up` runs the embedded in-memory broker and a kill takes it down too: what Kafka
            # acknowledged and nobody consumed yet is gone with it, which no copyloop code can
            # prevent, so there events go over HTTP (copyloop's own promise) only.
            kafka_events=layout == "parts",
        )
        t0 = time.monotonic()
        traffic.start()
        injector = Injector(stack, rng, outage_s, t0, _say)
        kinds = [k for k in KINDS[layout] if kinds_wanted is None or k in kinds_wanted]
        plan = [str(k) for k in rng.permutation(kinds)][:rounds]
        plan += [str(rng.choice(kinds)) for _ in range(rounds - len(plan))]
        crashes: list[str] = []
        for kind in plan:
            _watch(stack, float(rng.uniform(1.5, 4.0)), crashes, t0)
            injector.inject(kind)
        _watch(stack, 4.0, crashes, t0)
        traffic.stop()
        _say(f"[{time.monotonic() - t0:7.2f}s] traffic stopped: {record.summary()}")
        spool = Path(stack.settings.spool_dir or "")
        quiet = quiesce(
            sessions, record, spool, window + 90, tick=lambda: _watch(stack, 0.0, crashes, t0)
        )
        _watch(stack, 0.0, crashes, t0)
        dead_letters = None
        if "broker" in stack.parts:
            dead_letters = count_dead_letters(stack.bootstrap, stack.settings.dlq_topic)
        verdict = compare(
            sessions, record, injector.injections, t0, injector.poison_sent, dead_letters
        )
        if not quiet:
            verdict.lines.insert(
                0,
                "copyloop did not quiesce in time (numbers as they stood; the decision log "
                f"still owed the ledger {owed(sessions, spool)} record(s))",
            )
        counts = {k: sum(1 for i in injector.injections if i.kind == k) for k in kinds}
        _say(
            f"injected: {counts}; duplicates sent: {record.duplicates_sent}; "
            f"parts that crashed on their own: {len(crashes)}"
        )
        for line in crashes:
            _say(f"  crash: {line}")
        for line in verdict.lines:
            _say(line)
        _say(f"numbers: {json.dumps(verdict.numbers)}")
        _say(f"== {layout}/{db}: {'EXACT MATCH' if verdict.ok else 'MISMATCH'}")
        if record.errors:
            _say(f"producer errors: {record.errors[:5]}")
        return {
            "layout": layout,
            "db": db,
            "ok": verdict.ok and quiet and not record.errors,
            "quiesced": quiet,
            "injected": counts,
            "injections": [asdict(i) for i in injector.injections],
            "crashes": crashes,
            "producers": record.summary(),
            "numbers": verdict.numbers,
            "lines": verdict.lines,
        }
    finally:
        stack.stop()
        engine.dispose()
        database.drop()


def _watch(stack: Stack, seconds: float, crashes: list[str], t0: float) -> None:
    """Wait `seconds`, restarting (once a second at most) any part that died on its own."""
    deadline = time.monotonic() + seconds
    while True:
        for name in stack.revive():
            crashes.append(f"{name} died on its own at {time.monotonic() - t0:.1f}s; restarted")
        if time.monotonic() >= deadline:
            return
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=12, help="faults injected per layout")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--outage-s", type=float, default=30.0, help="broker outage length")
    parser.add_argument("--layout", choices=("parts", "up", "both"), default="both")
    parser.add_argument(
        "--kinds",
        help="comma-separated fault kinds to draw from (default: all): "
        + ", ".join(k for ks in KINDS.values() for k in ks),
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    layouts = ["parts", "up"] if args.layout == "both" else [args.layout]
    kinds = args.kinds.split(",") if args.kinds else None
    if kinds:
        known = {k for ks in KINDS.values() for k in ks}
        if set(kinds) - known:
            parser.error(f"unknown kinds {sorted(set(kinds) - known)}; known: {sorted(known)}")
        layouts = [lay for lay in layouts if set(KINDS[lay]) & set(kinds)]
    results = []
    for layout in layouts:
        workdir = Path(tempfile.mkdtemp(prefix=f"copyloop-faults-{layout}-"))
        try:
            results.append(
                run_layout(layout, args.db, args.rounds, args.seed, args.outage_s, workdir, kinds)
            )
        finally:
            if args.keep:
                _say(f"logs kept in {workdir / 'logs'}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    ok = all(r["ok"] for r in results)
    _say("fault suite: " + ("every ledger matched exactly" if ok else "MISMATCH (see above)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
