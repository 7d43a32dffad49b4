"""Nothing acknowledged is lost, with real processes: the API (uvicorn, 2 workers) killed with
SIGKILL under traffic, the embedded broker restarted under traffic, and `copyloop up` killed with
SIGKILL together with every process it started. Each time, every decision answered 200 and every
event answered 202 ends up in the ledger (SQLite, and PostgreSQL when its URL is set)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select

from copyloop.runner import Stack, settings_env
from core.broker import EmbeddedBroker, free_port, wait_for_port
from core.catalog import ProductIn, upsert_products
from core.keys import create_key
from core.ledger import Decision, Event, make_engine, make_sessionmaker
from core.settings import Settings
from tests.processes import descendants, is_live

pytestmark = pytest.mark.timeout(600)


class Traffic:
    """Client threads posting decisions, and a click for every third one, against `base`;
    records what the API acknowledged. Refused connections (the API is down) are retried."""

    def __init__(self, base: str, keys: dict[str, str], product_ids: list[str], threads: int = 4):
        self.base, self.keys, self.product_ids = base, keys, product_ids
        self.decisions: set[str] = set()
        self.events: set[str] = set()
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, worker: int) -> None:
        serve = {"Authorization": f"Bearer {self.keys['serve']}"}
        events = {"Authorization": f"Bearer {self.keys['events']}"}
        i = 0
        with httpx.Client(base_url=self.base, timeout=5) as client:
            while not self._stop.is_set():
                i += 1
                pid = self.product_ids[(worker + i) % len(self.product_ids)]
                try:
                    r = client.post(
                        "/v1/decisions",
                        json={"product_id": pid, "context": {"w": worker}},
                        headers=serve,
                    )
                    if r.status_code != 200:
                        self._failed()
                        continue
                    decision_id = r.json()["decision_id"]
                    with self._lock:
                        self.decisions.add(decision_id)
                    if i % 3 == 0:
                        event_id = f"ev-{decision_id}"
                        body = {"event_id": event_id, "decision_id": decision_id, "type": "click"}
                        r = client.post("/v1/events", json=body, headers=events)
                        if r.status_code == 202:
                            with self._lock:
                                self.events.add(event_id)
                except httpx.HTTPError:
                    self._failed()
                    time.sleep(0.05)

    def _failed(self) -> None:
        with self._lock:
            self.failures += 1

    def wait_for(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        start = len(self.decisions)
        while len(self.decisions) < start + n:
            got = len(self.decisions) - start
            assert time.monotonic() < deadline, f"only {got} of {n} answered"
            time.sleep(0.05)


def _prepare(database_url: str, n_products: int = 4) -> tuple[dict[str, str], list[str]]:
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    ids = [f"dur-{i}" for i in range(n_products)]
    upsert_products(
        sessions,
        [
            ProductIn(
                product_id=pid,
                title=f"Lamp {i}",
                category="lighting",
                description=f"A steel desk lamp number {i} with 3 brightness settings.",
                attributes={"brand": "Lumo"},
            )
            for i, pid in enumerate(ids)
        ],
    )
    keys = {role: create_key(sessions, role) for role in ("serve", "events")}
    engine.dispose()
    return keys, ids


def _ledger(database_url: str) -> tuple[set[str], set[str]]:
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as s:
            return set(s.scalars(select(Decision.decision_id))), set(
                s.scalars(select(Event.event_id))
            )
    finally:
        engine.dispose()


def _wait_for_ledger(
    database_url: str,
    traffic: Traffic,
    stall_s: float = 120,
    stack: Stack | None = None,
    cap_s: float = 420,
) -> None:
    """Until the ledger holds every answered decision and accepted event. Fails when the ledger
    stops gaining rows for `stall_s` (a stuck consumer or a record never re-sent), or after
    `cap_s` in all: on a loaded machine catching up may take longer than a stall, never forever."""
    start = time.monotonic()
    last_missing, last_progress = -1, start
    while True:
        decisions, events = _ledger(database_url)
        missing_d, missing_e = traffic.decisions - decisions, traffic.events - events
        if not missing_d and not missing_e:
            print(f"ledger complete {time.monotonic() - start:.1f}s after the traffic stopped")
            return
        now = time.monotonic()
        missing = len(missing_d) + len(missing_e)
        if missing != last_missing:
            last_missing, last_progress = missing, now
        if now - last_progress > stall_s or now - start > cap_s:
            raise AssertionError(
                f"{len(missing_d)} of {len(traffic.decisions)} answered decisions and "
                f"{len(missing_e)} of {len(traffic.events)} accepted events never reached "
                f"the ledger (no progress for {now - last_progress:.0f}s, "
                f"{now - start:.0f}s in all)"
            )
        if stack is not None:
            stack.supervise()
        time.sleep(0.5)


def _serve(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """`copyloop serve` in its own process group (uvicorn's supervisor and its workers)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "copyloop", "serve"],
            env={**os.environ, **settings_env(settings)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for_port(settings.api_host, settings.api_port, 60)
    return proc


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _settings(database_url: str, bootstrap: str, tmp_path: Path, **overrides: object) -> Settings:
    prefix = f"dur{uuid.uuid4().hex[:8]}"
    values: dict[str, object] = {
        "database_url": database_url,
        "kafka_bootstrap": bootstrap,
        "topic_prefix": prefix,
        "consumer_group": f"{prefix}-consumer",
        "topic_partitions": 2,
        "spool_dir": str(tmp_path / "log"),
        "api_port": free_port(),
        "api_workers": 2,
        "log_resend_after_s": 3.0,
        "catalog_refresh_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def consumer_stack(request: pytest.FixtureRequest) -> Iterator[list[Stack]]:
    """Stacks started by a test, stopped at its end."""
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        stack.stop()


def test_sigkill_of_the_api_under_traffic_loses_no_answered_decision(
    database_url: str, broker: EmbeddedBroker, tmp_path: Path, consumer_stack: list[Stack]
) -> None:
    keys, ids = _prepare(database_url)
    settings = _settings(database_url, broker.bootstrap, tmp_path)
    consumer_stack.append(Stack(settings, roles=("consume",)).start())
    api = _serve(settings, tmp_path / "api.log")
    base = f"http://{settings.api_host}:{settings.api_port}"
    try:
        with Traffic(base, keys, ids) as traffic:
            traffic.wait_for(300)
            # One worker alone: uvicorn starts another; either adopts the dead one's log.
            worker = psutil.Process(api.pid).children()[0]
            worker.kill()
            traffic.wait_for(300)
            for _ in range(3):  # three kills of the whole API (supervisor and both workers)
                traffic.wait_for(300)
                _kill_group(api)
                time.sleep(0.5)
                api = _serve(settings, tmp_path / "api.log")
            traffic.wait_for(300)
        print(
            f"answered {len(traffic.decisions)} decisions, {len(traffic.events)} events; "
            f"{traffic.failures} refused while the API was down"
        )
        _wait_for_ledger(database_url, traffic, stack=consumer_stack[0])
    finally:
        _kill_group(api) if api.poll() is None else None


def test_embedded_broker_restarted_under_traffic_loses_nothing(
    database_url: str, tmp_path: Path, consumer_stack: list[Stack]
) -> None:
    keys, ids = _prepare(database_url)
    broker = EmbeddedBroker(free_port()).start()
    settings = _settings(database_url, broker.bootstrap, tmp_path)
    api = None
    try:
        stack = Stack(settings, roles=("consume",)).start()
        consumer_stack.append(stack)
        api = _serve(settings, tmp_path / "api.log")
        base = f"http://{settings.api_host}:{settings.api_port}"
        with Traffic(base, keys, ids) as traffic:
            traffic.wait_for(500)
            broker.stop()  # everything it held, acknowledged or not, is gone
            traffic.wait_for(200)  # answered meanwhile: the log holds them
            broker.start()
            for _ in range(20):
                stack.supervise()  # a consumer that gave up is started again
                time.sleep(0.1)
            traffic.wait_for(300)
        print(f"answered {len(traffic.decisions)} decisions, {len(traffic.events)} events")
        assert traffic.failures == 0  # serving never waited on the broker
        _wait_for_ledger(database_url, traffic, stack=stack)
    finally:
        if api is not None:
            _kill_group(api)
        broker.stop()


def _up(env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    with open(cwd / "up.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "copyloop", "up", "--port", str(port)],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port("127.0.0.1", port, 90)
    return proc


def test_sigkill_of_up_and_everything_it_started_loses_no_answered_decision(
    database_url: str, tmp_path: Path
) -> None:
    keys, ids = _prepare(database_url)
    port, broker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYLOOP_")}
    env.update(
        COPYLOOP_DATABASE_URL=database_url,
        COPYLOOP_EMBEDDED_BROKER_PORT=str(broker_port),
        COPYLOOP_SPOOL_DIR=str(tmp_path / "log"),
        COPYLOOP_LOG_RESEND_AFTER_S="3",
        COPYLOOP_CATALOG_REFRESH_S="0.5",
    )
    up = _up(env, port, tmp_path)
    try:
        with Traffic(f"http://127.0.0.1:{port}", keys, ids) as traffic:
            traffic.wait_for(600)
            # The whole tree at once, as a machine's OOM killer or a container stop might.
            tree = descendants(up.pid)
            for p in [up, *tree]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(tree, 10)
            up.wait(10)
            up = _up(env, port, tmp_path)
            traffic.wait_for(300)
        print(
            f"answered {len(traffic.decisions)} decisions, {len(traffic.events)} events; "
            f"{traffic.failures} refused while down"
        )
        _wait_for_ledger(database_url, traffic)
        # SIGKILL of `up` alone: its children follow it (no orphans holding the ports).
        children = descendants(up.pid)
        up.kill()
        up.wait(10)
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not [p for p in alive if is_live(p)], alive
    finally:
        if up.poll() is None:
            up.kill()


def test_up_restarts_a_killed_broker_and_loses_no_answered_decision(
    database_url: str, tmp_path: Path
) -> None:
    keys, ids = _prepare(database_url)
    port, broker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPYLOOP_")}
    env.update(
        COPYLOOP_DATABASE_URL=database_url,
        COPYLOOP_EMBEDDED_BROKER_PORT=str(broker_port),
        COPYLOOP_SPOOL_DIR=str(tmp_path / "log"),
        COPYLOOP_LOG_RESEND_AFTER_S="3",
        COPYLOOP_CATALOG_REFRESH_S="0.5",
    )
    up = _up(env, port, tmp_path)
    try:
        with Traffic(f"http://127.0.0.1:{port}", keys, ids) as traffic:
            traffic.wait_for(400)
            [tansu] = descendants(up.pid, "tansu")
            tansu.kill()  # everything the broker held is gone with it
            deadline = time.monotonic() + 30
            while not [p for p in descendants(up.pid, "tansu") if p.pid != tansu.pid]:
                assert time.monotonic() < deadline, "up did not start the broker again"
                time.sleep(0.2)
            traffic.wait_for(400)
        assert traffic.failures == 0  # serving never waited on the broker
        print(f"answered {len(traffic.decisions)} decisions, {len(traffic.events)} events")
        _wait_for_ledger(database_url, traffic)
        assert up.poll() is None
    finally:
        up.terminate()
        up.wait(60)
