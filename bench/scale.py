"""Scale-out: 1, 2, 3 consumer processes in one group on 6-partition topics, 2 API processes
serving from shared snapshots, PostgreSQL. Exact totals, and how the work spreads.

For each consumer count N (`--consumers 1,2,3`):
1. a fresh PostgreSQL database (created on the server of `--database-url`, dropped at the end),
   the sample catalog with rules variants, keys, and fresh topics with `--partitions` partitions
   on one tansu broker (started here); 2 `copyloop serve` processes (1 worker each) on two
   ports, both reading model snapshots from the same ledger and snapshot directory;
2. phase A (consumer capacity): `--backlog` decisions (real products and variants) and a click
   for half of them put on Kafka first, then N `copyloop consume` processes started at once
   drain them: "drain msg/s" counts from their start (group join included) to the last row;
3. phase B (the whole loop): `--threads` storefront threads ask both APIs (alternately) for
   `--decisions` decisions; for each answer an event producer sends a click (40 %) and a
   purchase (10 %) straight to Kafka;
4. waits until the ledger holds everything and every window (`--window-s`) is closed and
   learned, then compares: decisions, events, rewards (sequence 1…N) and the newest snapshot's
   learned sequence must equal the producers' record exactly; and both APIs must serve the
   newest snapshot.

Work per consumer: the partitions of its final assignment and the messages in them (ledger rows
by the decision's partition; an event shares its decision's key and so its partition number),
and its CPU seconds (start-up included). The member holding the learner's lease also closes
windows and learns, so it uses more CPU than the others.

    .venv/bin/python bench/scale.py                       # PostgreSQL on 127.0.0.1, 1,2,3 consumers
    .venv/bin/python bench/scale.py --decisions 6000 --consumers 1,3

Writes bench/results/scale.json (and prints a table).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from _common import cpu_seconds, git_rev, loadavg, prepare_ledger  # noqa: E402
from kafka import KafkaProducer  # noqa: E402
from sqlalchemy import create_engine, func, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from copyloop.runner import settings_env  # noqa: E402
from core.broker import EmbeddedBroker, ensure_topics, free_port, wait_for_port  # noqa: E402
from core.ledger import make_engine, make_sessionmaker  # noqa: E402
from core.ledger.tables import Decision, Event, ModelSnapshot, Product, Reward  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEVICES = ("mobile", "desktop", "tablet")


def _database(admin_url: str) -> tuple[str, str]:
    name = f"copyloop_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), name


def _drop(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _assigned(log: Path) -> list[str] | None:
    """The member's latest assignment, from its "assigned [...]" log line."""
    lines = re.findall(r"assigned (\[.*\])$", log.read_text(errors="replace"), re.M)
    return None if not lines else [str(tp) for tp in ast.literal_eval(lines[-1])]


def _wait_assignment(logs: list[Path], partitions: int, topics: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = [_assigned(log) for log in logs]
        if all(g is not None for g in got):
            flat = [tp for g in got for tp in g or []]
            if len(flat) == len(set(flat)) == partitions * topics and all(got):
                return
        time.sleep(0.5)
    raise RuntimeError(f"the group never settled: {[_assigned(log) for log in logs]}")


class Producers:
    """Storefront threads plus an event producer; their record of what was acknowledged."""

    def __init__(
        self,
        bases: list[str],
        keys: dict[str, str],
        settings: Settings,
        products: list[str],
        decisions: int,
        threads: int,
        seed: int,
    ) -> None:
        self.bases, self.keys, self.settings = bases, keys, settings
        self.products, self.decisions, self.threads, self.seed = products, decisions, threads, seed
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # decision_id → API index
        self.events: dict[str, str] = {}  # event_id → decision_id (acknowledged by Kafka)
        self.failed = 0
        self.versions: list[Counter[int]] = [Counter() for _ in bases]
        self._next = 0

    def run(self) -> float:
        producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap, acks="all", linger_ms=5)
        futures: list[Any] = []
        started = time.monotonic()
        workers = [
            threading.Thread(target=self._storefront, args=(i, producer, futures))
            for i in range(self.threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        serve_s = time.monotonic() - started
        producer.flush(60)
        for event_id, decision_id, future in futures:
            future.get(30)  # raises if Kafka refused it: the benchmark is then void
            self.events[event_id] = decision_id
        producer.close()
        return serve_s

    def _take(self) -> int | None:
        with self.lock:
            if self._next >= self.decisions:
                return None
            self._next += 1
            return self._next - 1

    def _storefront(self, index: int, producer: KafkaProducer, futures: list[Any]) -> None:
        rng = np.random.default_rng(self.seed + index)
        clients = [httpx.Client(base_url=b, timeout=10) for b in self.bases]
        auth = {"Authorization": f"Bearer {self.keys['serve']}"}
        try:
            while (n := self._take()) is not None:
                api = n % len(clients)
                body = {
                    "product_id": self.products[int(rng.integers(len(self.products)))],
                    "context": {"device": DEVICES[int(rng.integers(len(DEVICES)))]},
                }
                r = clients[api].post("/v1/decisions", json=body, headers=auth)
                if r.status_code != 200:
                    with self.lock:
                        self.failed += 1
                    continue
                out = r.json()
                did = out["decision_id"]
                with self.lock:
                    self.acked[did] = api
                    self.versions[api][int(out.get("model_version") or 0)] += 1
                ts = int(time.time() * 1000)
                draws = rng.random(2)
                for kind, p, value in (("click", 0.4, None), ("purchase", 0.1, 25.0)):
                    if draws[0 if kind == "click" else 1] < p:
                        event = {
                            "event_id": f"{did}:{kind[0]}",
                            "decision_id": did,
                            "type": kind,
                            "ts": ts,
                            "value": value,
                        }
                        future = producer.send(
                            self.settings.events_topic,
                            key=did.encode(),
                            value=json.dumps(event).encode(),
                        )
                        with self.lock:
                            futures.append((event["event_id"], did, future))
        finally:
            for c in clients:
                c.close()


def backlog(
    settings: Settings, sessions: Any, n: int, seed: int
) -> tuple[set[str], dict[str, str]]:
    """`n` decisions (real products and variants, as the API would publish them) and a click for
    half of them, produced straight to Kafka by one producer. Returns what Kafka acknowledged:
    (decision ids, {event_id: decision_id})."""
    from core.ledger.tables import Variant

    rng = np.random.default_rng(seed)
    arms: dict[str, list[tuple[str, str]]] = {}
    with sessions() as s:
        rows = s.execute(
            select(Variant.product_id, Variant.variant_id, Variant.style).where(
                Variant.status == "active"
            )
        )
        for pid, vid, style in rows:
            arms.setdefault(pid, []).append((vid, style))
    products = sorted(arms)
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap, acks=1, linger_ms=20, batch_size=256 * 1024
    )
    futures = []
    run = uuid.uuid4().hex[:8]
    now = time.time()
    for i in range(n):
        pid = products[int(rng.integers(len(products)))]
        actions = arms[pid]
        chosen = int(rng.integers(len(actions)))
        did = f"b{run}{i:016x}"
        d = {
            "decision_id": did,
            "product_id": pid,
            "variant_id": actions[chosen][0],
            "style": actions[chosen][1],
            "policy": "bandit",
            "probability": 1.0 / len(actions),
            "model_version": 1,
            "context": {"device": DEVICES[i % 3]},
            "actions": [a for a, _ in actions],
            "pmf": [1.0 / len(actions)] * len(actions),
            "ts": now,
        }
        value = json.dumps(d).encode()
        futures.append(
            (did, None, producer.send(settings.decisions_topic, key=did.encode(), value=value))
        )
        if rng.random() < 0.5:
            e = {
                "event_id": f"{did}:c",
                "decision_id": did,
                "type": "click",
                "ts": int(now * 1000) + 500,
            }
            value = json.dumps(e).encode()
            futures.append(
                (
                    did,
                    e["event_id"],
                    producer.send(settings.events_topic, key=did.encode(), value=value),
                )
            )
    producer.flush(120)
    decisions: set[str] = set()
    events: dict[str, str] = {}
    for did, event_id, future in futures:
        future.get(30)  # raises if Kafka refused it: the run is then void
        if event_id is None:
            decisions.add(did)
        else:
            events[event_id] = did
    producer.close()
    return decisions, events


def run_once(
    n_consumers: int, args: argparse.Namespace, broker: EmbeddedBroker, workdir: Path
) -> dict[str, Any]:
    url, dbname = _database(args.database_url)
    prefix = f"s{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        database_url=url,
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=prefix,
        consumer_group=f"{prefix}-group",
        topic_partitions=args.partitions,
        api_workers=1,
        reward_window_s=args.window_s,
        close_grace_s=0.5,
        clock_skew_s=1.0,
        snapshot_every_s=1.0,
        model_reload_s=0.5,
        catalog_refresh_s=1.0,
        spool_dir=str(workdir / prefix / "spool"),
        snapshot_dir=str(workdir / "snapshots" / prefix),
        seed=args.seed,
    )
    procs: dict[str, subprocess.Popen[bytes]] = {}
    engine = make_engine(url)
    try:
        keys = prepare_ledger(settings)
        sessions = make_sessionmaker(engine)
        with sessions() as s:
            products = sorted(s.scalars(select(Product.product_id)))
        ensure_topics(
            settings.bootstrap,
            [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
            args.partitions,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("COPYLOOP_")}
        env.update(settings_env(settings))
        logs = workdir / prefix
        logs.mkdir(parents=True, exist_ok=True)
        # Phase A: a backlog on Kafka before any consumer runs, then N consumers started at
        # once drain it: group join included, as after a deploy or an outage.
        t_produce = time.monotonic()
        b_decisions, b_events = backlog(settings, sessions, args.backlog, args.seed)
        produced_s = time.monotonic() - t_produce
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            with open(logs / f"serve{i}.log", "wb") as out:
                procs[f"serve{i}"] = subprocess.Popen(
                    [sys.executable, "-m", "copyloop", "serve", "--port", str(port)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        for port in ports:
            wait_for_port("127.0.0.1", port, 120)
        consumer_logs = [logs / f"consume{i}.log" for i in range(n_consumers)]
        t_backlog = time.monotonic()
        for i, log in enumerate(consumer_logs):
            with open(log, "wb") as out:
                procs[f"consume{i}"] = subprocess.Popen(
                    [sys.executable, "-m", "copyloop", "consume"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        cpu0 = dict.fromkeys(procs, 0.0)  # CPU seconds include each process's start-up
        _wait_assignment(consumer_logs, args.partitions, 2, 120)
        settled_s = time.monotonic() - t_backlog
        drained_at = _wait(
            sessions,
            lambda st: st["decisions"] >= len(b_decisions) and st["events"] >= len(b_events),
            args.timeout_s,
        )
        # Phase B: page views through both APIs (events straight to Kafka).
        producers = Producers(
            [f"http://127.0.0.1:{p}" for p in ports],
            keys,
            settings,
            products,
            args.decisions,
            args.threads,
            args.seed,
        )
        t0 = time.monotonic()
        serve_s = producers.run()
        served = len(producers.acked)
        producers.acked.update({d: -1 for d in b_decisions})  # the record covers both phases
        producers.events.update(b_events)
        ingested_s = (
            _wait(
                sessions,
                lambda st: (
                    st["decisions"] >= len(producers.acked)
                    and st["events"] >= len(producers.events)
                ),
                args.timeout_s,
            )
            - t0
        )
        _wait(
            sessions,
            lambda st: st["open"] == 0 and st["learned"] == st["rewards"] == st["decisions"],
            args.timeout_s + args.window_s,
        )
        cpu = {k: round(cpu_seconds(p.pid) - cpu0[k], 2) for k, p in procs.items()}
        newest = _state(sessions)["version"]
        serving = _serving(ports, newest)
        verdict = _verdict(
            n_consumers, sessions, producers, consumer_logs, cpu, serve_s, ingested_s, settings
        )
        n_backlog = len(b_decisions) + len(b_events)
        verdict["served_per_s"] = round(served / serve_s, 1)
        verdict["newest_model_version"] = newest
        verdict["api_serving_version_after"] = serving
        verdict["backlog"] = {
            "decisions": len(b_decisions),
            "events": len(b_events),
            "produce_s": round(produced_s, 2),
            "group_settled_s": round(settled_s, 2),
            "drain_s": round(drained_at - t_backlog, 2),
            "drain_msgs_per_s": round(n_backlog / (drained_at - t_backlog), 1),
        }
        return verdict
    except Exception:
        for log in sorted((workdir / prefix).glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        engine.dispose()
        _drop(args.database_url, dbname)


def _state(sessions: Any) -> dict[str, int]:
    with sessions() as s:
        return {
            "decisions": s.scalar(select(func.count()).select_from(Decision)) or 0,
            "events": s.scalar(select(func.count()).select_from(Event)) or 0,
            "open": s.scalar(
                select(func.count()).select_from(Decision).where(Decision.closed_at.is_(None))
            )
            or 0,
            "rewards": s.scalar(select(func.count()).select_from(Reward)) or 0,
            "version": s.scalar(select(func.max(ModelSnapshot.version))) or 0,
            "learned": s.scalar(
                select(ModelSnapshot.last_seq).order_by(ModelSnapshot.version.desc()).limit(1)
            )
            or 0,
        }


def _serving(ports: list[int], newest: int, timeout_s: float = 15.0) -> list[int]:
    """The model version each API serves, once both reach `newest` (or as they stand)."""
    deadline = time.monotonic() + timeout_s
    while True:
        versions = [
            int(httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=5).json()["model_version"])
            for p in ports
        ]
        if all(v >= newest for v in versions) or time.monotonic() > deadline:
            return versions
        time.sleep(0.3)


def _wait(sessions: Any, done: Any, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done(_state(sessions)):
            return time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"not done after {timeout_s:.0f}s: {_state(sessions)}")


def _verdict(
    n: int,
    sessions: Any,
    producers: Producers,
    logs: list[Path],
    cpu: dict[str, float],
    serve_s: float,
    ingested_s: float,
    settings: Settings,
) -> dict[str, Any]:
    with sessions() as s:
        ledger_decisions = dict(s.execute(select(Decision.decision_id, Decision.partition)).all())
        ledger_events = dict(s.execute(select(Event.event_id, Event.decision_id)).all())
        seqs = sorted(s.scalars(select(Reward.seq)))
        learned = _state(sessions)["learned"]
    exact = (
        set(ledger_decisions) == set(producers.acked)
        and ledger_events == producers.events
        and seqs == list(range(1, len(ledger_decisions) + 1))
        and learned == len(seqs)
    )
    per_partition: Counter[int] = Counter(ledger_decisions.values())
    for did in ledger_events.values():
        per_partition[ledger_decisions.get(did, -1)] += 1
    members = []
    for i, log in enumerate(logs):
        tps = _assigned(log) or []
        parts = sorted({int(tp.split("[")[1].rstrip("]")) for tp in tps})
        members.append(
            {
                "consumer": i,
                "partitions": parts,
                "messages": sum(per_partition[p] for p in parts),
                "cpu_s": cpu[f"consume{i}"],
            }
        )
    messages = len(ledger_decisions) + len(ledger_events)
    return {
        "consumers": n,
        "exact": exact,
        "decisions_acked": len(producers.acked),
        "decisions_in_ledger": len(ledger_decisions),
        "events_accepted": len(producers.events),
        "events_in_ledger": len(ledger_events),
        "rewards": len(seqs),
        "learned_through_seq": learned,
        "failed_requests": producers.failed,
        "ingest_s": round(ingested_s, 2),
        "messages_per_s": round(messages / ingested_s, 1),
        "members": members,
        "api_cpu_s": [cpu["serve0"], cpu["serve1"]],
        "api_model_versions": [sorted(v) for v in producers.versions],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--database-url",
        default=os.environ.get(
            "COPYLOOP_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    ap.add_argument("--consumers", default="1,2,3")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--decisions", type=int, default=2000, help="through the APIs (phase B)")
    ap.add_argument("--backlog", type=int, default=12000, help="straight to Kafka (phase A)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--timeout-s", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="copyloop-scale-") as tmp:
        broker = EmbeddedBroker(free_port()).start()
        try:
            for n in (int(x) for x in args.consumers.split(",")):
                print(f"-- {n} consumer(s) …", file=sys.stderr, flush=True)
                runs.append(run_once(n, args, broker, Path(tmp)))
        finally:
            broker.stop()
    print(
        f"{'consumers':>9} {'exact':>6} {'decisions':>9} {'events':>7} {'drain msg/s':>11} "
        f"{'served/s':>9}  per consumer: partitions → messages (cpu s)"
    )
    for r in runs:
        spread = "; ".join(
            f"{m['partitions']} → {m['messages']} ({m['cpu_s']}s)" for m in r["members"]
        )
        print(
            f"{r['consumers']:>9} {str(r['exact']):>6} {r['decisions_in_ledger']:>9} "
            f"{r['events_in_ledger']:>7} {r['backlog']['drain_msgs_per_s']:>11} "
            f"{r['served_per_s']:>9}  {spread}"
        )
    out = {
        "command": " ".join(["bench/scale.py", *sys.argv[1:]]),
        "git": git_rev(),
        "cpus": os.cpu_count(),
        "loadavg_after": loadavg(),
        "database": "postgresql",
        "partitions": args.partitions,
        "api_processes": 2,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not all(r["exact"] for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
