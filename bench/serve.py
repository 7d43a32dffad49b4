"""Serving throughput and latency of the decision routes, against `/healthz` on the same server.

Starts a fresh stack (embedded tansu broker on a free port, SQLite ledger in a temp dir, sample
catalog imported, rules variants generated, an untrained model snapshot saved so the API serves
`policy = bandit`), the API with `--workers N` uvicorn processes and, as in production, one
`copyloop consume`, started as `copyloop up` starts it (`COPYLOOP_BACKGROUND_NICE` lower in
CPU priority; it confirms the published decisions, so the API's publisher does not re-send them;
`--no-consumer` leaves it out: then every decision is re-sent on the publisher's schedule, in
the serving processes), then:

* closed loop, max throughput: `wrk -t1 -c<connections> --latency` (C, one thread; a Lua script
  rotates 2,000 product/context paths and sets the `Authorization` header), on `/healthz`
  (baseline), `GET /v1/products/{id}/variant?ctx…` and `POST /v1/decisions`;
* open loop at `--rate` req/s for `--duration` s: `bench/loadgen.py` in its own process (asyncio
  + uvloop raw HTTP/1.1, latency from each request's due time: no coordinated omission), on
  `/healthz` and the variant route;
* `--profile`: py-spy (`record --nonblocking`, 100 Hz) on the API process tree during one more
  closed-loop variant run; prints the top self and inclusive frames;
* `--micro`: the in-process pieces of one decision, timed in this process (µs per call);
* `--snapshot-every S` (open loop, and `--compare-to`): a new model snapshot every S seconds
  during each run, as the learner saves them while it learns, so every worker reloads it under
  load (`--snapshot-variants N`: with counts for N more variants, a large catalog's model).

Each result line carries the load average and the CPU seconds used by the API, the broker, the
consumer and the load generator during the run; ratios are to `/healthz` measured in the same run.

    .venv/bin/python bench/serve.py --workers 1 --rate 1000 --duration 20 --connections 16
    .venv/bin/python bench/serve.py --workers 1 --kafka-down --duration 10
    .venv/bin/python bench/serve.py --micro-only
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CpuMeter, git_rev, loadavg, prepare_ledger  # noqa: E402

from copyloop.demo import DEVICES, LOCALES, REFERRERS, SAMPLE_CATALOG, SEGMENTS  # noqa: E402
from copyloop.runner import child_setup, settings_env  # noqa: E402
from core.broker import EmbeddedBroker, ensure_topics, free_port, wait_for_port  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402

HERE = Path(__file__).resolve().parent


# -- the stack -----------------------------------------------------------------------------------
class ServeStack:
    """Broker (unless --kafka-down) + API subprocess on a fresh ledger."""

    def __init__(
        self,
        workers: int,
        kafka_down: bool,
        tmp: Path,
        consumer: bool = True,
        code_dir: Path | None = None,
    ) -> None:
        self.tmp = tmp
        self.code_dir = code_dir  # another checkout to run the API and the consumer from
        self.kafka_down = kafka_down
        self.with_consumer = consumer and not kafka_down
        overrides: dict[str, object] = {
            "database_url": f"sqlite:///{tmp / 'ledger.db'}",
            "spool_dir": str(tmp / "spool"),
            "api_port": free_port(),
            "api_workers": workers,
            "topic_prefix": f"bench{uuid.uuid4().hex[:6]}",
            "catalog_refresh_s": 30.0,
            "model_reload_s": 5.0,
        }
        if kafka_down:
            overrides["kafka_bootstrap"] = f"127.0.0.1:{free_port()}"  # nothing listens there
        else:
            overrides["embedded_broker_port"] = free_port()
        self.settings: Settings = load_settings(**overrides)
        self.broker: EmbeddedBroker | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.consumer: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeStack:
        s = self.settings
        self.keys = prepare_ledger(s)
        if not self.kafka_down:
            self.broker = EmbeddedBroker(s.embedded_broker_port).start()
            ensure_topics(
                s.bootstrap, [s.decisions_topic, s.events_topic, s.dlq_topic], s.topic_partitions
            )
        env = {**os.environ, **settings_env(s)}
        if self.code_dir is not None:  # `-m` puts the working directory first on the path
            env["PYTHONPATH"] = str(self.code_dir)
        if self.with_consumer:
            consumer_log = open(self.tmp / "consumer.log", "ab")  # noqa: SIM115
            self.consumer = subprocess.Popen(
                [sys.executable, "-m", "copyloop", "consume"],
                env=env,
                cwd=self.code_dir,
                stdout=consumer_log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_setup(s.background_nice),  # as `copyloop up` starts it
            )
        log = open(self.tmp / "api.log", "ab")  # noqa: SIM115
        self.api = subprocess.Popen(
            [sys.executable, "-m", "copyloop", "serve"],
            env=env,
            cwd=self.code_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(s.api_host, s.api_port, 60)
        self.base = f"http://{s.api_host}:{s.api_port}"
        # Wait until every worker serves from the model (not the fallback).
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=self.base, timeout=5) as c:
            while time.monotonic() < deadline:
                h = c.get("/healthz").json()
                if h.get("model_version") and h.get("catalog_products"):
                    break
                time.sleep(0.2)
            r = c.get(
                f"/v1/products/{self.product_ids()[0]}/variant",
                params={"device": "mobile"},
                headers={"Authorization": f"Bearer {self.keys['serve']}"},
            )
            r.raise_for_status()
            self.sample = r.json()
        return self

    def product_ids(self) -> list[str]:
        return [json.loads(x)["product_id"] for x in SAMPLE_CATALOG.read_text().splitlines() if x]

    def pids(self) -> dict[str, int]:
        out = {"api": self.api.pid}  # type: ignore[union-attr]
        if self.broker is not None and self.broker.process is not None:
            out["broker"] = self.broker.process.pid
        if self.consumer is not None:
            out["consumer"] = self.consumer.pid
        return out

    def health(self) -> dict:
        return httpx.get(self.base + "/healthz", timeout=5).json()

    def settle(self, timeout_s: float = 120.0) -> float:
        """Wait until the pipeline is idle: every decision of the runs before is in the ledger
        (each worker's publisher has nothing unread or unconfirmed), so that a run does not
        share the cores with the consumer catching up on the previous one's backlog. Returns
        the seconds waited."""
        start = time.monotonic()
        if self.consumer is None:
            return 0.0
        quiet = 0
        while quiet < 8 and time.monotonic() - start < timeout_s:  # answers from every worker
            p = self.health()["publisher"]
            quiet = quiet + 1 if p["backlog"] == 0 and p["unread_bytes"] == 0 else 0
            time.sleep(0.1)
        return round(time.monotonic() - start, 1)

    def stop(self) -> None:
        for proc in (self.api, self.consumer):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.broker is not None:
            self.broker.stop()


def _pick(rng: np.random.Generator, options: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*options, strict=True)
    w = np.asarray(weights) / sum(weights)
    return str(names[rng.choice(len(names), p=w)])


def workload(product_ids: list[str], n: int = 2000, seed: int = 1) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ctx = {
            "device": _pick(rng, DEVICES),
            "segment": _pick(rng, SEGMENTS),
            "locale": _pick(rng, LOCALES),
            "referrer": _pick(rng, REFERRERS),
            "hour": str(int(rng.integers(24))),
        }
        out.append((product_ids[int(rng.integers(len(product_ids)))], ctx))
    return out


def _variant_paths(work: list[tuple[str, dict]]) -> list[str]:
    """The page-view route's path with its context query, per (product, context)."""
    return [f"/v1/products/{pid}/variant?{urlencode(ctx)}" for pid, ctx in work]


# -- load: wrk (closed loop) ---------------------------------------------------------------------
def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_script(
    tmp: Path, name: str, key: str, paths: list[str], bodies: list[str] | None = None
) -> Path:
    lines = [f"local paths = {{{', '.join(_lua_str(p) for p in paths)}}}"]
    if bodies:
        lines.append(f"local bodies = {{{', '.join(_lua_str(b) for b in bodies)}}}")
        lines.append('wrk.method = "POST"')
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    lines.append("local i = 0")
    lines.append("request = function()")
    lines.append("  i = i + 1")
    if bodies:
        lines.append(
            "  return wrk.format(nil, paths[(i % #paths) + 1], nil, bodies[(i % #bodies) + 1])"
        )
    else:
        lines.append("  return wrk.format(nil, paths[(i % #paths) + 1])")
    lines.append("end")
    path = tmp / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNIT[m.group(2)]


def run_wrk(stack: ServeStack, script: Path, duration: float, connections: int) -> dict:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--latency",
        "-s",
        str(script),
        stack.base,
    ]
    meter = CpuMeter(stack.pids()).start()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wrk_cpu = 0.0
    out, _ = proc.communicate()
    usage = meter.stop()
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = ru.ru_utime + ru.ru_stime  # cumulative over finished children (informative)
    except Exception:
        pass
    res: dict = {"tool": "wrk", "raw_tail": out.strip().splitlines()[-14:]}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else float("nan")
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = _ms(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_200"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:(.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    m = re.search(r"(\d+) requests in", out)
    res["completed"] = int(m.group(1)) if m else 0
    res.update(usage)
    res["cum_children_cpu_s"] = round(wrk_cpu, 2)
    return res


# -- load: loadgen.py (open loop, or closed loop cross-check) -----------------------------------
class Snapshots:
    """While the block runs, a new model snapshot every `every_s` seconds (0: none), as the
    learner saves them while it learns; every API worker reloads each one. The first is the
    newest snapshot's model with counts for `variants` more variants (a large catalog's model
    file), each next one that model after 2,000 more learned decisions (`bench/model_file.py`:
    `learned_more`), all built before the block starts."""

    def __init__(self, settings: Settings, every_s: float, variants: int, duration: float) -> None:
        self.settings, self.every_s, self.variants = settings, every_s, variants
        self.count = int(duration / every_s) + 1 if every_s > 0 else 0
        self.saved = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Snapshots:
        if self.every_s > 0:
            self._models = self._build()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _build(self) -> list[bytes]:
        from model_file import learned_more, policy_with

        from bandit import Policy
        from core.ledger import make_engine, make_sessionmaker, snapshots

        engine = make_engine(self.settings.database_url)
        latest = snapshots.load_latest(make_sessionmaker(engine))
        engine.dispose()
        assert latest is not None
        self._latest = latest
        policy = Policy(latest.vw_args, model=latest.model)
        if self.variants:
            extra = policy_with(self.variants)
            policy.exposure = {**policy.exposure, **extra.exposure}
            policy.offered = {**policy.offered, **extra.offered}
            policy.residual = {**policy.residual, **extra.residual}
            extra.close()
        models = []
        for i in range(self.count):
            models.append(policy.save())
            following = learned_more(policy, 2000, seed=i)
            policy.close()
            policy = following
        policy.close()
        return models

    def _run(self) -> None:
        from core.ledger import make_engine, make_sessionmaker, snapshots

        s, latest = self.settings, self._latest
        engine = make_engine(s.database_url)
        sessions = make_sessionmaker(engine)
        while not self._stop.wait(self.every_s) and self.saved < len(self._models):
            model = self._models[self.saved]
            snapshots.save(sessions, model, latest.last_seq, latest.vw_args, s.snapshot_dir)
            self.saved += 1
        engine.dispose()


def run_loadgen(
    stack: ServeStack,
    paths_file: Path,
    key: str,
    rate: float,
    duration: float,
    connections: int,
    snapshot_every: float = 0.0,
    snapshot_variants: int = 0,
) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "loadgen.py"),
        "--port",
        str(stack.settings.api_port),
        "--paths-file",
        str(paths_file),
        "--key",
        key,
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--connections",
        str(connections),
    ]
    meter = CpuMeter(stack.pids()).start()
    with Snapshots(stack.settings, snapshot_every, snapshot_variants, duration) as snaps:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    usage = meter.stop()
    res = json.loads(out.strip().splitlines()[-1])
    if snapshot_every:
        res["snapshots_saved"] = snaps.saved
        res["model_version_after"] = stack.health()["model_version"]
    res["tool"] = "loadgen"
    res.update(usage)
    res["cpu_loadgen"] = round(res.pop("client_cpu_s"), 2)
    return res


# -- profiling -----------------------------------------------------------------------------------
def profile(
    stack: ServeStack, script: Path, duration: float, connections: int, out: Path, gil: bool = False
) -> dict:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen(
        [
            pyspy,
            "record",
            "--nonblocking",
            *(["--gil"] if gil else []),
            "-r",
            "100",
            "-d",
            str(int(duration)),
            "--subprocesses",
            "-p",
            str(stack.api.pid),
            "--format",
            "raw",
            "-o",
            str(raw),
        ],  # type: ignore[union-attr]
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    res = run_wrk(stack, script, duration - 2, connections)
    spy.wait(duration + 30)
    res["profile"] = summarise_profile(raw) if raw.exists() else {"error": spy.stderr.read()[-500:]}
    res["profile_file"] = str(raw)
    return res


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/file.py:line)"
    m = re.match(r"(.*?) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    fn, path = m.groups()
    parts = Path(path).parts
    for anchor in ("site-packages", "main"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1 :]
            break
    return f"{fn} ({'/'.join(parts[-3:])})"


def summarise_profile(raw: Path, top: int = 25) -> dict:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        threads[frames[0].split(" (")[0][:60]] += count
        names = [_frame_name(f) for f in frames[1:]] or [frames[0]]
        self_t[names[-1]] += count
        for name in set(names):
            incl[name] += count
    pct = lambda c: round(100.0 * c / max(total, 1), 1)  # noqa: E731
    return {
        "samples": total,
        "threads_pct": {k: pct(v) for k, v in threads.most_common(8)},
        "self_pct": [(k, pct(v)) for k, v in self_t.most_common(top)],
        "inclusive_pct": [(k, pct(v)) for k, v in incl.most_common(top * 2)],
    }


# -- micro-benchmark -----------------------------------------------------------------------------
def micro(settings: Settings, n: int = 5000) -> dict:
    """µs per call of each in-process piece of one decision."""
    import asyncio

    from api.catalog_cache import CatalogCache
    from api.decision_log import DecisionLog, Kind
    from api.metrics import Metrics
    from api.publisher import Publisher
    from api.routes.decisions import _decide
    from api.schemas import CONTEXT, DecisionOut
    from api.serving import decision_message
    from api.storefront import Storefront
    from bandit import Policy
    from bandit.policy import _predict_multi
    from bandit.vw_format import to_vw
    from core.ids import new_id
    from core.ledger import make_engine, make_sessionmaker, snapshots
    from core.messages import Decision
    from core.tokens import TokenSigner

    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    catalog = CatalogCache(sessions, 3600)
    pids = [json.loads(x)["product_id"] for x in SAMPLE_CATALOG.read_text().splitlines() if x]
    catalog.reload_products(pids)
    snap = snapshots.load_latest(sessions)
    assert snap is not None
    policy = Policy(snap.vw_args, holdout=settings.holdout, model=snap.model, version=snap.version)
    work = workload(pids, 1000)
    entries = [catalog.get(p) for p, _ in work]
    ctxs = [c for _, c in work]
    metrics = Metrics()
    res: dict[str, float] = {}

    def timeit(name: str, fn, reps: int = n) -> None:  # type: ignore[no-untyped-def]
        for i in range(min(200, reps)):
            fn(i)
        t0 = time.perf_counter()
        for i in range(reps):
            fn(i)
        res[name] = round((time.perf_counter() - t0) / reps * 1e6, 2)

    m = len(work)
    timeit("catalog.get", lambda i: catalog.get(work[i % m][0]))
    timeit(
        "CONTEXT.validate_python (query → context)", lambda i: CONTEXT.validate_python(ctxs[i % m])
    )
    timeit(
        "bandit.vw_format.to_vw",
        lambda i: to_vw(ctxs[i % m], entries[i % m].features, entries[i % m].arms),
    )
    lines = [to_vw(ctxs[i], entries[i].features, entries[i].arms) for i in range(m)]
    timeit("vw.predict (text lines, pyvw)", lambda i: policy._vw.predict(lines[i % m]))
    timeit(
        "policy.choose (to_vw + predict + sample)",
        lambda i: policy.choose(
            ctxs[i % m], entries[i % m].features, entries[i % m].arms, entries[i % m].control_index
        ),
    )
    timeit(
        "policy.choose, arm lines cached (what the route calls)",
        lambda i: policy.choose(
            ctxs[i % m],
            entries[i % m].features,
            entries[i % m].arms,
            entries[i % m].control_index,
            rendered_arms=entries[i % m].arm_lines,
        ),
    )

    # Pre-parsed examples instead of text: parse+predict+finish, and predicting on arm examples
    # parsed once (only the shared line parsed per call; VW's ADF reduction adds the shared
    # features to each arm and removes them again).
    def parsed(i: int) -> object:
        ex = policy._vw.parse(lines[i % m])
        out = policy._vw.predict(ex)
        policy._vw.finish_example(ex)
        return out

    timeit("vw parse + predict + finish_example (pyvw Examples)", parsed)
    joined = ["\n".join(lines[i]) for i in range(m)]
    timeit(
        "vw parse + predict + finish through pylibvw (what Policy calls)",
        lambda i: _predict_multi(policy._vw, joined[i % m]),
    )
    arm_examples = [policy._vw.parse(["shared |U x=1", *e.arm_lines])[1:] for e in entries[:50]]

    def reused(i: int) -> object:
        shared = policy._vw.parse([lines[i % 50][0], entries[i % 50].arm_lines[0]])
        out = policy._vw.predict([shared[0], *arm_examples[i % 50]])
        policy._vw.finish_example(shared)
        return out

    timeit("vw predict, arm Examples parsed once (shared parsed per call)", reused)
    timeit("uuid.uuid4().hex", lambda i: uuid.uuid4().hex)
    timeit("core.ids.new_id() (what the routes call)", lambda i: new_id())
    choice = policy.choose(ctxs[0], entries[0].features, entries[0].arms, 0)
    e0 = entries[0]

    def make_msg(i: int) -> Decision:  # as the route built it before decision_message's orjson
        return Decision.model_construct(
            decision_id=uuid.uuid4().hex,
            product_id="p",
            variant_id=choice.variant_id,
            style=e0.styles[choice.index],
            policy="bandit",
            probability=choice.probability,
            model_version=1,
            context=ctxs[i % m],
            actions=list(e0.variant_ids),
            pmf=list(choice.pmf),
            ts=time.time(),
        )

    timeit("baseline: Decision.model_construct(...) message build", make_msg)
    msg = make_msg(0)
    timeit("baseline: Decision.to_bytes (pydantic JSON)", lambda i: msg.to_bytes())
    timeit(
        "api.serving.decision_message (orjson; what the route calls)",
        lambda i: decision_message(e0, "p", ctxs[i % m], choice, "x" * 32, time.time()),
    )

    def make_out(i: int) -> bytes:
        return (
            DecisionOut(
                decision_id="x" * 32,
                product_id="p",
                variant_id=choice.variant_id,
                text=e0.texts[choice.index],
                style="s",
                policy="bandit",
                probability=choice.probability,
                model_version=1,
                activated=True,
                token="t" * 43,
            )
            .model_dump_json()
            .encode()
        )

    timeit("DecisionOut build + JSON", make_out)
    timeit("metrics.decisions.labels().inc()", lambda i: metrics.decisions.labels("bandit").inc())
    # The decision log's append (what makes an answer durable), under each fsync policy.
    payload = b"x" * 300
    for fsync in ("never", "batch", "always"):
        dlog = DecisionLog(f"{settings.spool_dir}-micro-{fsync}", fsync=fsync)  # type: ignore[arg-type]
        timeit(
            f"decision log append, fsync={fsync} (one write, 300-byte message)",
            lambda i, dlog=dlog: dlog.append(Kind.DECISION, "t", "k" * 32, "k" * 32, payload),
            reps=n if fsync != "always" else min(n, 500),
        )
        dlog.close()

    # The whole route body minus the framework: choose + message + log + response bytes.
    from types import SimpleNamespace

    pub2 = Publisher("127.0.0.1:1", DecisionLog(settings.spool_dir + "-micro2"))
    holder = SimpleNamespace(policy=policy)
    storefront = Storefront(TokenSigner(b"micro-bench-secret"), settings)
    resources = SimpleNamespace(
        policies=holder, publisher=pub2, settings=settings, metrics=metrics, storefront=storefront
    )
    timeit(
        "routes.decisions._decide (choose+message+log+response)",
        lambda i: _decide(entries[i % m], "p", ctxs[i % m], resources),  # type: ignore[arg-type]
    )
    pub2.close()

    from bandit.vw_format import shared_line

    timeit(
        "vw_format.shared_line only (per request now)",
        lambda i: shared_line(ctxs[i % m], entries[i % m].features),
    )

    # kafka-python computes CRC32C of every record batch it produces and (check_crcs=True) of
    # every batch it fetches; without the `crc32c` package it uses a pure-Python loop.
    from kafka.record import _crc32c as pycrc

    blob = os.urandom(16 * 1024)
    timeit(
        "kafka-python pure-Python crc32c, 16 KiB batch (~40 decisions)",
        lambda i: pycrc.crc(blob),
        reps=50,
    )
    try:
        import crc32c as ccrc

        timeit("crc32c package (C), 16 KiB batch", lambda i: ccrc.crc32c(blob), reps=2000)
    except ImportError:
        res["crc32c package (C), 16 KiB batch"] = "not installed"

    # The publisher thread's cost per message when Kafka is up: CPU of this process while a
    # started Publisher reads N logged messages and delivers them (core.produce.BatchSender);
    # the baseline: kafka-python's KafkaProducer.send per message, flushed every 200 (the
    # publisher's rounds at 2,000 decisions/s per worker).
    if settings.embedded_broker:
        pub3 = Publisher(
            settings.bootstrap,
            DecisionLog(settings.spool_dir + "-micro3"),
            topics=[settings.decisions_topic],
            partitions=settings.topic_partitions,
        ).start()
        deadline = time.monotonic() + 20
        while not pub3.stats().connected and time.monotonic() < deadline:
            time.sleep(0.05)
        value = msg.to_bytes()
        total = 20_000
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(total):
            pub3.publish(settings.decisions_topic, uuid.uuid4().hex, value)
        while pub3.stats().sent < total and time.perf_counter() - w0 < 60:
            time.sleep(0.01)
        c1, w1 = time.process_time(), time.perf_counter()
        res["publisher thread: CPU µs per delivered message (log read + core.produce)"] = round(
            (c1 - c0) / total * 1e6, 1
        )
        res["publisher thread: delivered msgs/s"] = round(pub3.stats().sent / (w1 - w0))
        pub3.close()
        from kafka import KafkaProducer

        kp = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
        keys = [uuid.uuid4().hex.encode() for _ in range(total)]
        kp.send(settings.decisions_topic, key=keys[0], value=value).get(timeout=10)
        c0 = time.process_time()
        for start in range(0, total, 200):
            for key in keys[start : start + 200]:
                kp.send(settings.decisions_topic, key=key, value=value)
            kp.flush()
        res["baseline: kafka-python KafkaProducer.send + flush per 200, CPU µs per message"] = (
            round((time.process_time() - c0) / total * 1e6, 1)
        )
        kp.close()

    # Whole ASGI app in-process (no socket): the decision route vs /healthz.
    from api.app import create_app

    app = create_app(settings)

    async def asgi_bench() -> None:
        from core.keys import create_key

        k = create_key(sessions, "serve", "micro")
        async with app.router.lifespan_context(app) as state:

            async def call(path: str, qs: str, headers: list) -> int:
                scope = {
                    "type": "http",
                    "asgi": {"version": "3.0"},
                    "http_version": "1.1",
                    "method": "GET",
                    "scheme": "http",
                    "path": path,
                    "raw_path": path.encode(),
                    "query_string": qs.encode(),
                    "root_path": "",
                    "headers": headers,
                    "client": ("127.0.0.1", 1),
                    "server": ("127.0.0.1", 80),
                    "state": dict(state or {}),
                }
                status = 0

                async def receive() -> dict:
                    return {"type": "http.request", "body": b"", "more_body": False}

                async def send(message: dict) -> None:
                    nonlocal status
                    if message["type"] == "http.response.start":
                        status = message["status"]

                await app(scope, receive, send)
                return status

            hdr = [(b"host", b"x"), (b"authorization", f"Bearer {k}".encode())]
            for name, mk in (
                ("ASGI in-process GET /healthz", lambda i: ("/healthz", "", [(b"host", b"x")])),
                (
                    "ASGI in-process GET /v1/products/{id}/variant",
                    lambda i: (
                        f"/v1/products/{work[i % m][0]}/variant",
                        urlencode(ctxs[i % m]),
                        hdr,
                    ),
                ),
            ):
                for i in range(300):
                    assert await call(*mk(i)) == 200
                reps = 3000
                t0 = time.perf_counter()
                for i in range(reps):
                    await call(*mk(i))
                res[name] = round((time.perf_counter() - t0) / reps * 1e6, 1)

    asyncio.run(asgi_bench())
    engine.dispose()
    return res


# -- main ----------------------------------------------------------------------------------------
def fmt(name: str, r: dict, base: dict | None) -> str:
    ratio = f"{r['rps'] / base['rps']:.2f}" if base else "1.00"
    extra = f"  unfinished={r['unfinished']}" if r.get("unfinished") else ""
    if "p999_ms" in r:
        extra += f"  p999 {r['p999_ms']:.2f} ms"
    if r.get("settled_before_s"):
        extra += f"  (settled {r['settled_before_s']}s before)"
    if r.get("snapshots_saved"):
        extra += f"  snapshots {r['snapshots_saved']} (model v{r['model_version_after']} after)"
    cpu = " ".join(f"{k[4:]}={v}s" for k, v in r.items() if k.startswith("cpu_"))
    return (
        f"{name:<38} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:6.2f}  p90 {r['p90_ms']:6.2f}  "
        f"p99 {r['p99_ms']:7.2f} ms  non200={r['non_200']}{extra}  x/healthz={ratio}  "
        f"cpu[{cpu}] wall={r['wall_s']}s  load={r['load']}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--rate",
        default="1000",
        help="open-loop offered rate(s) in req/s, comma-separated (e.g. 1000,250)",
    )
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--connections", type=int, default=16, help="closed-loop connections")
    p.add_argument(
        "--open-connections",
        type=int,
        default=64,
        help="connection pool of the open-loop generator",
    )
    p.add_argument(
        "--kafka-down",
        action="store_true",
        help="point the API at a dead port: decisions wait in the log, serving must not block",
    )
    p.add_argument(
        "--no-consumer",
        action="store_true",
        help="run no consumer: nothing confirms the decisions, the publisher re-sends them",
    )
    p.add_argument("--no-open", action="store_true", help="skip the open-loop runs")
    p.add_argument("--no-post", action="store_true", help="skip POST /v1/decisions")
    p.add_argument("--profile", action="store_true", help="py-spy the API during one more run")
    p.add_argument(
        "--gil",
        action="store_true",
        help="py-spy --gil: sample only the thread holding the GIL (where Python time "
        "goes), instead of every non-idle thread",
    )
    p.add_argument("--micro", action="store_true", help="also run the in-process micro-benchmark")
    p.add_argument("--micro-only", action="store_true")
    p.add_argument(
        "--compare-to",
        metavar="REV",
        help="only the open-loop variant runs, at each --rate, on fresh stacks of this checkout "
        "and of git revision REV (a temporary worktree), alternating, --repeat times",
    )
    p.add_argument("--repeat", type=int, default=2, help="rounds of --compare-to")
    p.add_argument(
        "--snapshot-every",
        type=float,
        default=0.0,
        metavar="S",
        help="open loop: save a new model snapshot every S seconds during each run, as the "
        "learner does while it learns (every worker reloads it); 0: one snapshot throughout",
    )
    p.add_argument(
        "--snapshot-variants",
        type=int,
        default=0,
        metavar="N",
        help="with --snapshot-every: counts for N more variants in each snapshot",
    )
    p.add_argument("--json", help="write all results here")
    args = p.parse_args()
    if args.compare_to:
        compare(args)
        return

    tmp = Path(tempfile.mkdtemp(prefix="copyloop-bench-serve-"))
    stack = ServeStack(
        1 if args.micro_only else args.workers, args.kafka_down, tmp, not args.no_consumer
    )
    results: dict = {
        "args": vars(args),
        "git": git_rev(),
        "cores": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"# serve bench: workers={stack.settings.api_workers} kafka_down={args.kafka_down} "
        f"consumer={stack.with_consumer} "
        f"cores={os.cpu_count()} git={results['git']} load={loadavg()} tmp={tmp}",
        flush=True,
    )
    try:
        if args.micro_only:
            prepare_ledger(stack.settings)
            if not args.kafka_down:
                stack.broker = EmbeddedBroker(stack.settings.embedded_broker_port).start()
                s = stack.settings
                ensure_topics(s.bootstrap, [s.decisions_topic], s.topic_partitions)
            results["micro"] = micro(stack.settings)
            results["micro_load"] = loadavg()
            _print_micro(results["micro"], results["micro_load"])
            return
        stack.start()
        print(
            f"# API up (pid {stack.api.pid}); sample decision: {json.dumps(stack.sample)}",  # type: ignore[union-attr]
            flush=True,
        )
        key = stack.keys["serve"]
        work = workload(stack.product_ids())
        variant_paths = _variant_paths(work)
        bodies = [json.dumps({"product_id": pid, "context": ctx}) for pid, ctx in work]
        health_script = wrk_script(tmp, "healthz", "", ["/healthz"])
        variant_script = wrk_script(tmp, "variant", key, variant_paths)
        post_script = wrk_script(tmp, "post", key, ["/v1/decisions"], bodies)
        (tmp / "variant_paths.txt").write_text("\n".join(variant_paths) + "\n")
        (tmp / "health_paths.txt").write_text("/healthz\n")

        # Warm-up (JIT-less Python still has caches, connection pools, the VW model pages).
        run_wrk(stack, variant_script, 3, args.connections)
        runs: dict[str, dict] = {}

        def record(name: str, r: dict, base: str | None) -> None:
            r["load"] = loadavg()
            r["settled_before_s"] = settled
            runs[name] = r
            print(fmt(name, r, runs.get(base) if base else None), flush=True)

        c = args.connections
        settled = stack.settle()
        record(
            f"closed c={c} GET /healthz (wrk)",
            run_wrk(stack, health_script, args.duration, c),
            None,
        )
        settled = stack.settle()
        record(
            f"closed c={c} GET variant (wrk)",
            run_wrk(stack, variant_script, args.duration, c),
            f"closed c={c} GET /healthz (wrk)",
        )
        if not args.no_post:
            settled = stack.settle()
            record(
                f"closed c={c} POST /v1/decisions (wrk)",
                run_wrk(stack, post_script, args.duration, c),
                f"closed c={c} GET /healthz (wrk)",
            )
        for r in [] if args.no_open else [float(x) for x in args.rate.split(",")]:
            settled = stack.settle()
            record(
                f"open {r:.0f}/s GET /healthz (loadgen)",
                run_loadgen(
                    stack,
                    tmp / "health_paths.txt",
                    "",
                    r,
                    args.duration,
                    args.open_connections,
                    args.snapshot_every,
                    args.snapshot_variants,
                ),
                None,
            )
            settled = stack.settle()
            record(
                f"open {r:.0f}/s GET variant (loadgen)",
                run_loadgen(
                    stack,
                    tmp / "variant_paths.txt",
                    key,
                    r,
                    args.duration,
                    args.open_connections,
                    args.snapshot_every,
                    args.snapshot_variants,
                ),
                f"open {r:.0f}/s GET /healthz (loadgen)",
            )
        health = stack.health()
        results["health_after"] = health
        print(f"# /healthz after the runs: {json.dumps(health)}", flush=True)
        if args.profile:
            prof = profile(stack, variant_script, args.duration, c, tmp / "pyspy", args.gil)
            prof["load"] = loadavg()
            runs["profile run (wrk + py-spy)"] = prof
            print(
                fmt(
                    "profiled closed GET variant (wrk)",
                    prof,
                    runs.get(f"closed c={c} GET /healthz (wrk)"),
                ),
                flush=True,
            )
            _print_profile(prof["profile"])
        results["runs"] = runs
        if args.micro:
            results["micro"] = micro(stack.settings)
            results["micro_load"] = loadavg()
            _print_micro(results["micro"], results["micro_load"])
    finally:
        stack.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(f"# done; load={loadavg()}; api log: {tmp / 'api.log'}", flush=True)


def compare(args: argparse.Namespace) -> None:
    """`--compare-to REV`: the open-loop variant route of this checkout and of REV, each on a
    fresh stack (new ledger, broker, consumer) per round, alternating so that both see the
    machine's moods; medians over the rounds and their ratio."""
    tmp = Path(tempfile.mkdtemp(prefix="copyloop-bench-compare-"))
    base_dir = tmp / "baseline"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(base_dir), args.compare_to],
        cwd=HERE.parent,
        check=True,
    )
    base_rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=base_dir, capture_output=True, text=True
    ).stdout.strip()
    sides = {f"copyloop {git_rev()}": None, f"baseline {base_rev}": base_dir}
    rates = [float(x) for x in args.rate.split(",")]
    print(f"# compare: {' vs '.join(sides)}; rates {rates}; load={loadavg()}", flush=True)
    runs: dict[str, list[dict]] = collections.defaultdict(list)
    try:
        for n in range(args.repeat):
            for label, code_dir in sides.items():
                stack = ServeStack(
                    args.workers, False, tmp / f"{n}-{code_dir is None}", True, code_dir
                )
                try:
                    stack.start()
                    paths = stack.tmp / "variant_paths.txt"
                    paths.write_text(
                        "\n".join(_variant_paths(workload(stack.product_ids()))) + "\n"
                    )
                    run_loadgen(  # warm-up, as before the main runs: caches, connections
                        stack, paths, stack.keys["serve"], 500, 3, args.open_connections
                    )
                    for rate in rates:
                        stack.settle()
                        r = run_loadgen(
                            stack,
                            paths,
                            stack.keys["serve"],
                            rate,
                            args.duration,
                            args.open_connections,
                            args.snapshot_every,
                            args.snapshot_variants,
                        )
                        r["load"] = loadavg()
                        runs[f"{rate:.0f}/s {label}"].append(r)
                        print(fmt(f"open {rate:.0f}/s {label} #{n + 1}", r, None), flush=True)
                finally:
                    stack.stop()
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(base_dir)], cwd=HERE.parent, check=False
        )
    summary = {}
    print("# medians over the rounds (copyloop / baseline):")
    for rate in rates:
        row = {}
        for label in sides:
            rs = runs[f"{rate:.0f}/s {label}"]
            row[label] = {
                k: float(np.median([r[k] for r in rs]))
                for k in (
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "p999_ms",
                    "cpu_api",
                    "cpu_consumer",
                    "cpu_broker",
                )
            }
        mine, base = (row[label] for label in sides)
        summary[f"{rate:.0f}/s"] = row
        pair = {k: f"{mine[k]:.1f} vs {base[k]:.1f}" for k in mine}
        print(
            f"  {rate:.0f}/s: served {pair['rps']}; p99 {pair['p99_ms']} ms "
            f"({mine['p99_ms'] / base['p99_ms']:.2f}); p999 {pair['p999_ms']} ms; CPU s: api "
            f"{pair['cpu_api']}, consumer {pair['cpu_consumer']}, broker {pair['cpu_broker']}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "runs": runs, "medians": summary}, indent=1)
        )
    shutil.rmtree(tmp, ignore_errors=True)


def _print_micro(micro_res: dict, load: str) -> None:
    print(f"# micro-benchmark (in this process, µs per call; load {load})")
    for k, v in micro_res.items():
        print(f"  {k:<72} {v:>9}")


def _print_profile(prof: dict) -> None:
    if "error" in prof:
        print("# py-spy failed:", prof["error"])
        return
    print(f"# py-spy: {prof['samples']} samples; threads % {prof['threads_pct']}")
    print("# top self (leaf) frames, % of samples:")
    for name, v in prof["self_pct"]:
        print(f"  {v:5.1f}  {name}")
    print("# top inclusive frames, % of samples:")
    for name, v in prof["inclusive_pct"]:
        print(f"  {v:5.1f}  {name}")


if __name__ == "__main__":
    main()
