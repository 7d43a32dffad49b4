"""Benchmark of the uplift report over a large synthetic ledger, on SQLite and PostgreSQL.

Builds N decisions (+ their click/purchase events, ~7% of decisions get one) with
`reports.synthetic.fill` in a fresh, migrated ledger, closes their windows with the consumer's
own closer (`close_expired_windows`, which keeps the report's rollups; all but the last
`--open` decisions, which stay open: the report reads those directly), saves an untrained
model snapshot (so the counterfactual panel scores its greedy policy too), then times
`uplift_report` (JSON) with every section, as the HTML page and `copyloop report` ask for it
(the off-policy panel over `--ope-sample` decisions and the feature section over
`--feature-sample`), read from the rollups, the same report by a full scan (`rollups=False`;
the two must agree: arm counts, and the sampled sections field for field), the report without
the feature section (the JSON route's default), both again without the sections that score
fixed-size samples with VW (`ope_sample=0, feature_sample=0`: what the rollups serve), and the
HTML rendering, next to two baselines measured
on the same database in the same run: `SELECT COUNT(*) FROM decisions` and a plain full
aggregate `SELECT policy, COUNT(*), SUM(probability) FROM decisions GROUP BY policy`.
Reports read through the read-only engine, as the API and `copyloop report` do. Last, a writer
beside one report (a lease renewal every 10 ms, what the consumer's closer writes, in its own
process): the longest one write waited, with the report on the read-only engine and, as the
baseline, on a writable one (on SQLite its transaction takes the write lock: what the report
did before); with `--export`, the same beside `copyloop export` of the whole ledger.

    .venv/bin/python bench/report.py --decisions 1000000 --backend sqlite,postgresql
    .venv/bin/python bench/report.py --decisions 100000 --keep /tmp/ledger.db   # reuse a file
    .venv/bin/python bench/report.py --backend postgresql --pg-keep copyloop_report_1m

PostgreSQL: a fresh database on the server of `--pg-url` (default the CI's
postgresql+psycopg://postgres@127.0.0.1:5432/test), dropped afterwards; with `--pg-keep NAME`
the database NAME, filled when it does not exist yet and kept (like `--keep` for SQLite).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.ledger import leases, make_engine, make_sessionmaker, snapshots
from core.migrations import upgrade
from core.settings import load_settings
from reports import uplift_report
from reports.export import export as write_export
from reports.html import to_html
from reports.synthetic import fill

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _timed(fn: Any, repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


#: A writer beside a report: the lease renewal the consumer's closer makes, every 10 ms, until
#: SIGTERM; prints "ready" after its first write, then its longest wait.
_WRITER = """
import json, signal, sys, time
from sqlalchemy.exc import OperationalError
from core.ledger import leases, make_engine, make_sessionmaker
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
sessions = make_sessionmaker(make_engine(sys.argv[1]))
waits, failed = [], []
while not stop:
    t = time.perf_counter()
    try:
        leases.acquire(sessions, "bench-writer", "bench", 60.0)
    except OperationalError as exc:  # SQLite: locked past the 30 s busy timeout
        failed.append(str(exc.orig))
    waits.append(time.perf_counter() - t)
    if len(waits) == 1:
        print("ready", flush=True)
    time.sleep(0.01)
out = {"writes": len(waits), "longest_s": max(waits), "failed": len(failed)}
print(json.dumps(out | {"errors": sorted(set(failed))}), flush=True)
"""


def writer_beside(url: str, report: Callable[[], Any]) -> dict[str, Any]:
    """How long `report()` took, and the longest a writer in another process waited for one
    write meanwhile (and how many of its writes failed)."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        t = time.perf_counter()
        report()
        took = time.perf_counter() - t
        proc.send_signal(signal.SIGTERM)
        out = json.loads(proc.stdout.readline())
    finally:
        proc.wait(30)
    return {
        "took_s": round(took, 2),
        "writes": out["writes"],
        "longest_write_s": round(out["longest_s"], 3),
        "failed_writes": out["failed"],
        "errors": out["errors"],
    }


def close_windows(sessions: Any, settings: Any, truth: Any, n: int, still_open: int) -> int:
    """Close every window but those of the last `still_open` decisions (by ts)."""
    from consumer.join import close_expired_windows

    with sessions() as s:
        last = s.execute(
            text("SELECT ts FROM decisions ORDER BY ts DESC LIMIT 1 OFFSET :k"),
            {"k": max(still_open, 1) - 1},
        ).scalar()
    now = (last if still_open else truth.end + 1.0) + settings.reward_window_s
    now += settings.close_grace_s
    closed = 0
    while batch := close_expired_windows(sessions, settings, now, limit=20_000):
        closed += len(batch)
    return closed


def run(
    url: str,
    n: int,
    repeat: int,
    fill_db: bool,
    ope_sample: int,
    still_open: int,
    feature_sample: int = 2000,
    export: bool = False,
) -> dict[str, Any]:
    upgrade(url)  # a kept ledger follows the code's migrations
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    read_engine = make_engine(url, read_only=True)
    reads = make_sessionmaker(read_engine)  # the reports' (the API's and the CLI's)
    settings = load_settings(database_url=url)
    out: dict[str, Any] = {"backend": engine.dialect.name, "decisions": n}
    try:
        if fill_db:
            t = time.perf_counter()
            truth = fill(engine, n, n_products=128, seed=1)
            out["fill_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            out["closed"] = close_windows(sessions, settings, truth, n, still_open)
            out["close_s"] = round(time.perf_counter() - t, 1)
            from bandit import Policy

            policy = Policy(settings.vw_args)
            snapshots.save(sessions, policy.save(), 0, settings.vw_args)
            policy.close()
        # Steady state, as autovacuum / a periodic ANALYZE would leave it: statistics, and on
        # PostgreSQL a visibility map, so index-only scans need no heap fetches.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql(
                "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
            )
        with engine.connect() as c:
            count_t, _ = _timed(lambda: c.execute(text("SELECT COUNT(*) FROM decisions")).all(), 3)
            agg_t, _ = _timed(
                lambda: c.execute(
                    text("SELECT policy, COUNT(*), SUM(probability) FROM decisions GROUP BY policy")
                ).all(),
                3,
            )
            events = c.execute(text("SELECT COUNT(*) FROM events")).scalar()
        out["events"] = events
        every: dict[str, Any] = {"ope_sample": ope_sample, "feature_sample": feature_sample}
        report_t, report = _timed(lambda: uplift_report(reads, settings, **every), repeat)
        html_t, html = _timed(lambda: to_html(report), 1)
        no_feat_t, _ = _timed(lambda: uplift_report(reads, settings, ope_sample=ope_sample), repeat)
        no_ope_t, _ = _timed(lambda: uplift_report(reads, settings, ope_sample=0), 1)
        full_t, full = _timed(lambda: uplift_report(reads, settings, rollups=False, **every), 1)
        # What the rollups serve: every section but the sampled ones (the counterfactual panel
        # and the feature section score samples of fixed size with VW, whatever N).
        core: dict[str, Any] = {"ope_sample": 0, "feature_sample": 0}
        core_t, _ = _timed(lambda: uplift_report(reads, settings, **core), repeat)
        core_full_t, _ = _timed(lambda: uplift_report(reads, settings, rollups=False, **core), 1)
        assert report["rollups"]["used"], report["rollups"]
        assert (
            report["arms"]["bandit"]["impressions"] + report["arms"]["control"]["impressions"] == n
        )
        for arm in ("bandit", "control"):  # floats may differ in their last bits, counts never
            fast, slow = report["arms"][arm], full["arms"][arm]
            assert [fast[k] for k in ("impressions", "clicks", "purchases")] == [
                slow[k] for k in ("impressions", "clicks", "purchases")
            ]
            assert abs(fast["revenue"] - slow["revenue"]) <= 1e-6 * max(1.0, slow["revenue"])
        for section in ("ope", "apprentice", "features"):  # the same samples, scored alike
            assert report[section] == full[section], section
        beside, beside_writable = (
            {
                kind: writer_beside(url, partial(uplift_report, on, settings, **every, **kw))
                for kind, kw in (("report", {}), ("full_scan", {"rollups": False}))
            }
            for on in (reads, sessions)
        )
        if export:  # `copyloop export` of the whole ledger, to /dev/null
            with open(os.devnull, "w") as sink:
                out["writer_beside_export"] = {
                    name: writer_beside(url, partial(write_export, on, sink, "dsjson"))
                    for name, on in (("read_only_engine", reads), ("writable_engine", sessions))
                }
        leases.release(sessions, "bench-writer", "bench")
        with engine.connect() as c:
            rollup_rows = c.execute(text("SELECT COUNT(*) FROM report_rollups")).scalar()
            still = c.execute(text("SELECT COUNT(*) FROM decisions WHERE closed_at IS NULL"))
            open_decisions = still.scalar()
        count_s, agg_s, report_s = min(count_t), min(agg_t), statistics.median(report_t)
        out.update(
            {
                "load": loadavg(),
                "count_s": round(count_s, 3),
                "full_aggregate_s": round(agg_s, 3),
                "report_s": round(report_s, 2),
                "report_runs_s": [round(x, 2) for x in report_t],
                "report_without_features_s": round(statistics.median(no_feat_t), 3),
                "report_without_ope_s": round(no_ope_t[0], 2),
                "full_scan_s": round(full_t[0], 2),
                "report_without_samples_s": round(statistics.median(core_t), 3),
                "full_scan_without_samples_s": round(core_full_t[0], 2),
                "open_decisions": open_decisions,
                "rollup_rows": rollup_rows,
                "html_render_s": round(html_t[0], 3),
                "html_bytes": len(html),
                "ope_sample": ope_sample,
                "feature_sample": feature_sample,
                "ratio_to_count": round(report_s / count_s, 1),
                "ratio_to_full_aggregate": round(report_s / agg_s, 2),
                "writer_beside_report": beside,
                "writer_beside_report_on_a_writable_engine": beside_writable,
            }
        )
        return out
    finally:
        engine.dispose()
        read_engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=1_000_000)
    ap.add_argument("--backend", default="sqlite,postgresql")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ope-sample", type=int, default=10_000)
    ap.add_argument(
        "--feature-sample",
        type=int,
        default=2_000,
        help="Decisions the feature section reads (the HTML page's and CLI's default).",
    )
    ap.add_argument(
        "--open", type=int, default=10_000, help="Decisions (the most recent) left open."
    )
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--keep", help="SQLite file to build once and reuse (not deleted)")
    ap.add_argument("--pg-keep", help="PostgreSQL database to build once and reuse (not dropped)")
    ap.add_argument(
        "--export",
        action="store_true",
        help="also time `copyloop export` of the whole ledger with a writer beside it",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    results = []
    for backend in args.backend.split(","):
        if backend == "sqlite":
            if args.keep:
                path = Path(args.keep)
                results.append(
                    run(
                        f"sqlite:///{path}",
                        args.decisions,
                        args.repeat,
                        not path.exists(),
                        args.ope_sample,
                        args.open,
                        args.feature_sample,
                        args.export,
                    )
                )
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    url = f"sqlite:///{tmp}/ledger.db"
                    results.append(
                        run(
                            url,
                            args.decisions,
                            args.repeat,
                            True,
                            args.ope_sample,
                            args.open,
                            args.feature_sample,
                            args.export,
                        )
                    )
        elif backend == "postgresql":
            name = args.pg_keep or f"copyloop_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                exists = c.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).scalar()
                if not exists:
                    c.exec_driver_sql(f'CREATE DATABASE "{name}"')
            url = make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
            try:
                results.append(
                    run(
                        url,
                        args.decisions,
                        args.repeat,
                        not exists,
                        args.ope_sample,
                        args.open,
                        args.feature_sample,
                        args.export,
                    )
                )
            finally:
                if not args.pg_keep:
                    with admin.connect() as c:
                        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.dispose()
        else:
            raise SystemExit(f"unknown backend {backend!r}")
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
