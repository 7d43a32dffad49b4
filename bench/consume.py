"""Consumer ingestion throughput: the copyloop consumer vs kafka-python's raw drain of the same
data.

1. Starts a tansu broker on a free port, creates `{prefix}.decisions/.events/.events.dlq` with
   `--partitions` partitions each, and produces `--decisions` decisions and
   `--events-per-decision` events per decision (keyed by decision_id, event ts a few seconds after
   its decision; windows are 1800 s, so nothing closes: this measures ingestion, not learning),
   with 2 producer processes (setup, not timed).
2. Baseline (a): one kafka-python `KafkaConsumer` (fresh group, this process, the copyloop
   consumer's poll settings) drains both topics, decoding nothing; msgs/s.
3. (b): `python -m copyloop consume` (a subprocess, the real thing: joiner + elected learner) on a
   fresh ledger (SQLite file in a temp dir, or a fresh PostgreSQL database created on the server
   of `--database-url` and dropped at the end); this process polls the row counts every 0.2 s and
   then the group's committed offsets, until every row is in the ledger and every offset is
   committed.

With `--ledger-decisions N` the ledger already holds N decisions (and their events) of the two
days before, all closed (`reports.synthetic.fill`), as a production ledger does: its indexes are
that much larger, and an index keyed at random (by product) costs each insert a page of its own.

Rates are "steady" (first message/row seen → last) and "end-to-end" (process start or subscribe →
everything done, start-up and group join included). The ratio compares steady msgs/s.

    .venv/bin/python bench/consume.py --decisions 100000 --events-per-decision 1
    .venv/bin/python bench/consume.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/consume.py --ledger-decisions 300000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuMeter, git_rev, loadavg  # noqa: E402

from copyloop.runner import settings_env  # noqa: E402
from core.broker import EmbeddedBroker, ensure_topics, free_port  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402

DEVICES = ("mobile", "desktop", "tablet")
SEGMENTS = ("new", "returning", "loyal")
TYPES = ("click", "click", "click", "add_to_cart", "purchase")

#: Events per second (plus as many decisions) one consumer process should write (issue 12).
EVENTS_GOAL = 20_000
#: Shortest span a steady rate is computed over (rows are counted every 0.2 s).
MIN_STEADY_S = 0.5


def _rate(count: int, seconds: float) -> int | None:
    """`count` per second over `seconds`, or None when the span is too short to measure."""
    return round(count / seconds) if seconds >= MIN_STEADY_S else None


def decision_id(run: str, i: int) -> str:
    return f"{run}{i:024x}"


def _messages(run: str, lo: int, hi: int, epd: int, ts0: float) -> tuple[list, list]:
    decisions, events = [], []
    for i in range(lo, hi):
        did = decision_id(run, i)
        actions = [f"v_{(i * 7 + k) % 9973:016x}" for k in range(5)]
        pmf = [0.28, 0.18, 0.18, 0.18, 0.18]
        chosen = i % 5
        ts = ts0 + i * 1e-4
        d = {
            "decision_id": did,
            "product_id": f"kit-{i % 128:04d}",
            "variant_id": actions[chosen],
            "style": "concise",
            "policy": "bandit" if i % 10 else "control",
            "probability": pmf[chosen],
            "model_version": 1,
            "context": {
                "device": DEVICES[i % 3],
                "segment": SEGMENTS[i % 3 - 1],
                "locale": "en-US",
                "referrer": "search",
                "hour": str(i % 24),
            },
            "actions": actions,
            "pmf": pmf,
            "ts": ts,
        }
        decisions.append((did.encode(), json.dumps(d).encode()))
        for j in range(epd):
            e = {
                "event_id": f"e{did}-{j}",
                "decision_id": did,
                "type": TYPES[(i + j) % 5],
                "ts": int((ts + 2.0 + j) * 1000),
            }
            if e["type"] == "purchase":
                e["value"] = 19.99
            events.append((did.encode(), json.dumps(e).encode()))
    return decisions, events


def _produce_part(
    bootstrap: str, dtopic: str, etopic: str, run: str, lo: int, hi: int, epd: int, ts0: float
) -> None:
    from kafka import KafkaProducer

    decisions, events = _messages(run, lo, hi, epd, ts0)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=50,
        batch_size=512 * 1024,
        acks=1,
        max_in_flight_requests_per_connection=5,
    )
    # Decisions first, then their events, in chunks: what the API and storefront would interleave.
    chunk = 5000
    for k in range(0, len(decisions), chunk):
        for key, value in decisions[k : k + chunk]:
            producer.send(dtopic, key=key, value=value)
        for key, value in events[k * epd : (k + chunk) * epd]:
            producer.send(etopic, key=key, value=value)
    producer.flush()
    producer.close()


def produce(settings: Settings, run: str, n: int, epd: int, procs: int = 2) -> float:
    ts0 = time.time()
    bounds = [n * p // procs for p in range(procs + 1)]
    ctx = mp.get_context("spawn")
    workers = [
        ctx.Process(
            target=_produce_part,
            args=(
                settings.bootstrap,
                settings.decisions_topic,
                settings.events_topic,
                run,
                bounds[p],
                bounds[p + 1],
                epd,
                ts0,
            ),
        )
        for p in range(procs)
    ]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode:
            raise RuntimeError(f"producer exited with {w.exitcode}")
    return time.monotonic() - t0


def end_offsets(settings: Settings) -> dict:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=settings.bootstrap)
    try:
        tps = [
            TopicPartition(t, p)
            for t in (settings.decisions_topic, settings.events_topic)
            for p in range(settings.topic_partitions)
        ]
        return {(tp.topic, tp.partition): o for tp, o in c.end_offsets(tps).items()}
    finally:
        c.close()


# -- (a) kafka-python alone ----------------------------------------------------------------------
def raw_drain(settings: Settings, total: int, broker_pid: int, timeout_s: float) -> dict:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,  # consumer.loop.LoopTuning's values
        max_poll_interval_ms=5000,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    meter = CpuMeter({"broker": broker_pid}).start()
    c0 = time.process_time()
    t0 = time.monotonic()
    consumer.subscribe([settings.decisions_topic, settings.events_topic])
    seen = 0
    first = None
    nbytes = 0
    while seen < total and time.monotonic() - t0 < timeout_s:
        batch = consumer.poll(timeout_ms=200)
        for records in batch.values():
            if first is None:
                first = time.monotonic()
            seen += len(records)
            for r in records:
                nbytes += len(r.value)
    t1 = time.monotonic()
    consumer.close(autocommit=False)
    usage = meter.stop()
    steady = t1 - (first or t0)
    return {
        "messages": seen,
        "bytes": nbytes,
        "join_s": round((first or t1) - t0, 2),
        "steady_s": round(steady, 2),
        "steady_msgs_per_s": _rate(seen, steady),
        "e2e_msgs_per_s": round(seen / (t1 - t0)),
        "cpu_consumer": round(time.process_time() - c0, 2),
        **usage,
    }


# -- (b) the copyloop consumer -------------------------------------------------------------------
def counts(engine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    with engine.connect() as c:
        d = c.execute(text("SELECT count(*) FROM decisions")).scalar_one()
        e = c.execute(text("SELECT count(*) FROM events")).scalar_one()
    return int(d), int(e)


def prefill(db_url: str, n: int) -> tuple[int, int]:
    """Fill the ledger with `n` closed decisions and their events; returns the row counts."""
    from sqlalchemy import text

    from core.ledger import make_engine
    from reports.synthetic import fill

    engine = make_engine(db_url)
    try:
        fill(engine, n, n_products=128, seed=1)
        with engine.begin() as c:  # closed: nothing for the learner to close
            c.execute(text("UPDATE decisions SET closed_at = ts + 1800"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            pg = engine.dialect.name == "postgresql"
            c.exec_driver_sql("VACUUM ANALYZE" if pg else "ANALYZE")
        return counts(engine)
    finally:
        engine.dispose()


def committed(settings: Settings, tps: list) -> dict:
    """The group's committed offsets (a group member that never subscribes reads them)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
    )
    try:
        return {(t, p): c.committed(TopicPartition(t, p)) for t, p in tps}
    finally:
        c.close(autocommit=False)


def copyloop_ingest(
    settings: Settings,
    n_dec: int,
    n_ev: int,
    before: tuple[int, int],
    broker_pid: int,
    tmp: Path,
    timeout_s: float,
    profile: bool,
    gil: bool,
) -> dict:
    from sqlalchemy import create_engine

    engine = create_engine(settings.database_url)
    ends = end_offsets(settings)
    log = open(tmp / "consumer.log", "ab")  # noqa: SIM115
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "copyloop", "consume"],
        env={**os.environ, **settings_env(settings)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    meter = CpuMeter({"consumer": proc.pid, "broker": broker_pid}).start()
    spy = None
    first = all_rows = all_committed = None
    samples = []
    try:
        while time.monotonic() - t0 < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"consumer exited with {proc.returncode}; see {tmp}/consumer.log"
                )
            d, e = (total - held for total, held in zip(counts(engine), before, strict=True))
            now = time.monotonic()
            if first is None and d + e > 0:
                first = now
                if profile:
                    pyspy = str(Path(sys.executable).parent / "py-spy")
                    spy = subprocess.Popen(
                        [
                            pyspy,
                            "record",
                            "--nonblocking",
                            *(["--gil"] if gil else []),
                            "-r",
                            "100",
                            "-p",
                            str(proc.pid),
                            "--format",
                            "raw",
                            "-o",
                            str(tmp / "pyspy.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
            samples.append((round(now - t0, 2), d, e))
            if d >= n_dec and e >= n_ev:
                all_rows = now
                break
            time.sleep(0.2)
        if all_rows is None:
            raise RuntimeError(f"timeout: {samples[-1]} of {(n_dec, n_ev)}")
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(30)
        while time.monotonic() - t0 < timeout_s:
            got = committed(settings, list(ends))
            if all((got.get(k) or 0) >= v for k, v in ends.items()):
                all_committed = time.monotonic()
                break
            time.sleep(0.2)
        usage = meter.stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        engine.dispose()
    steady = all_rows - first  # type: ignore[operator]
    total = n_dec + n_ev
    res = {
        "decisions": n_dec,
        "events": n_ev,
        "startup_s": round(first - t0, 2),  # type: ignore[operator]
        "steady_s": round(steady, 2),
        "steady_msgs_per_s": _rate(total, steady),
        "steady_events_per_s": _rate(n_ev, steady),
        "e2e_s": round(all_rows - t0, 2),
        "e2e_msgs_per_s": round(total / (all_rows - t0)),
        "offsets_committed_after_s": round((all_committed or float("nan")) - t0, 2),
        "consumer_exit_code": code,
        "samples": samples[:: max(1, len(samples) // 40)],
        **usage,
    }
    if profile and (tmp / "pyspy.txt").exists():
        from serve import summarise_profile  # same summariser

        res["profile"] = summarise_profile(tmp / "pyspy.txt", top=20)
    return res


# -- databases -----------------------------------------------------------------------------------
def fresh_postgres(url: str) -> tuple[str, str]:
    """Create a fresh database on `url`'s server; returns (its URL, its name)."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    name = f"copyloop_bench_{uuid.uuid4().hex[:8]}"
    admin = u.set(drivername="postgresql", database=u.database or "postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return u.set(database=name).render_as_string(hide_password=False), name


def drop_postgres(url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    admin = u.set(drivername="postgresql", database=u.database or "postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=100_000)
    p.add_argument("--events-per-decision", type=int, default=1)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--database-url",
        help="PostgreSQL server URL (a fresh database is created); default: a fresh SQLite file",
    )
    p.add_argument(
        "--ledger-decisions",
        type=int,
        default=0,
        help="decisions (closed, with their events) the ledger holds before the run",
    )
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--profile", action="store_true", help="py-spy the consumer while it ingests")
    p.add_argument("--gil", action="store_true", help="py-spy --gil")
    p.add_argument("--skip-raw", action="store_true")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="copyloop-bench-consume-"))
    run = uuid.uuid4().hex[:8]
    pg_name = None
    if args.database_url:
        db_url, pg_name = fresh_postgres(args.database_url)
    else:
        db_url = f"sqlite:///{tmp / 'ledger.db'}"
    port = free_port()
    settings = load_settings(
        database_url=db_url,
        kafka_bootstrap=f"127.0.0.1:{port}",
        topic_prefix=f"bench{run}",
        topic_partitions=args.partitions,
        consumer_group=f"copyloop-bench-{run}",
        spool_dir=str(tmp / "spool"),
    )
    n_dec = args.decisions
    n_ev = n_dec * args.events_per_decision
    results: dict = {
        "args": vars(args),
        "git": git_rev(),
        "cores": os.cpu_count(),
        "database": db_url.split(":")[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    db_label = "postgresql" if pg_name else "sqlite"
    print(
        f"# consume bench: {n_dec} decisions + {n_ev} events, {args.partitions} partitions, "
        f"ledger {db_label}, cores={os.cpu_count()} git={results['git']} load={loadavg()}",
        flush=True,
    )
    broker = EmbeddedBroker(port).start()
    try:
        from core.migrations import upgrade

        upgrade(db_url)
        before = (0, 0)
        if args.ledger_decisions:
            t = time.perf_counter()
            before = prefill(db_url, args.ledger_decisions)
            print(
                f"# ledger holds {before[0]} decisions and {before[1]} events "
                f"({time.perf_counter() - t:.0f}s); load={loadavg()}",
                flush=True,
            )
        ensure_topics(
            settings.bootstrap,
            [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
            args.partitions,
        )
        took = produce(settings, run, n_dec, args.events_per_decision)
        total = n_dec + n_ev
        print(
            f"# produced {total} messages in {took:.1f}s ({total / took:.0f}/s, 2 processes); "
            f"load={loadavg()}",
            flush=True,
        )
        bpid = broker.process.pid  # type: ignore[union-attr]
        if not args.skip_raw:
            raw = raw_drain(settings, total, bpid, args.timeout)
            raw["load"] = loadavg()
            results["raw"] = raw
            print(
                f"(a) kafka-python raw drain: {raw['messages']} msgs, steady "
                f"{raw['steady_msgs_per_s']} msgs/s over {raw['steady_s']}s (join "
                f"{raw['join_s']}s; e2e {raw['e2e_msgs_per_s']}/s); cpu consumer="
                f"{raw['cpu_consumer']}s broker={raw['cpu_broker']}s; load={raw['load']}",
                flush=True,
            )
        ing = copyloop_ingest(
            settings, n_dec, n_ev, before, bpid, tmp, args.timeout, args.profile, args.gil
        )
        ing["load"] = loadavg()
        results["copyloop"] = ing
        print(
            f"(b) copyloop consumer -> {db_label}: steady {ing['steady_msgs_per_s']} msgs/s = "
            f"{ing['steady_events_per_s']} events/s (+ as many decisions) over "
            f"{ing['steady_s']}s; start-up {ing['startup_s']}s; e2e {ing['e2e_msgs_per_s']} "
            f"msgs/s; all offsets committed at {ing['offsets_committed_after_s']}s; "
            f"cpu consumer={ing['cpu_consumer']}s broker={ing['cpu_broker']}s; "
            f"exit={ing['consumer_exit_code']}; load={ing['load']}",
            flush=True,
        )
        if ing["steady_msgs_per_s"] is None:
            print(
                f"# the rows all arrived within {MIN_STEADY_S}s: too fast for a steady rate "
                "(rows are counted every 0.2 s); run more --decisions",
                flush=True,
            )
        elif "raw" in results and results["raw"]["steady_msgs_per_s"] is not None:
            ratio = ing["steady_msgs_per_s"] / results["raw"]["steady_msgs_per_s"]
            results["ratio_steady"] = round(ratio, 3)
            print(
                f"ratio copyloop / raw kafka-python (steady msgs/s): {ratio:.2f}; "
                f"events/s goal >= {EVENTS_GOAL}: "
                f"{'met' if ing['steady_events_per_s'] >= EVENTS_GOAL else 'missed'}",
                flush=True,
            )
        if "profile" in ing:
            prof = ing["profile"]
            print(
                f"# py-spy ({'GIL holder' if args.gil else 'active threads'}): "
                f"{prof['samples']} samples"
            )
            print("# top self frames %:")
            for name, v in prof["self_pct"]:
                print(f"  {v:5.1f}  {name}")
            print("# top inclusive frames %:")
            for name, v in prof["inclusive_pct"][:45]:
                print(f"  {v:5.1f}  {name}")
    finally:
        broker.stop()
        if pg_name:
            drop_postgres(args.database_url, pg_name)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(f"# done; load={loadavg()}; logs in {tmp}", flush=True)
        shutil.rmtree(tmp / "spool", ignore_errors=True)


if __name__ == "__main__":
    main()
