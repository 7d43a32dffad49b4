"""Shared fixtures: real databases (SQLite always, PostgreSQL when COPYLOOP_TEST_DATABASE_URL is
set), a real Kafka-protocol broker (tansu) for the session, settings pointing at both."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from copyloop.runner import Stack
from core.broker import EmbeddedBroker, free_port
from core.ledger import make_engine, make_sessionmaker
from core.migrations import upgrade
from core.settings import Settings, load_settings

PG_URL = os.environ.get("COPYLOOP_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])

T = TypeVar("T")


#: Settings that make the loop turn in seconds: short windows, frequent snapshots and reloads.
FAST_LOOP: dict[str, float] = {
    "reward_window_s": 1.5,
    "close_grace_s": 0.5,
    "clock_skew_s": 1.0,
    "snapshot_every_s": 0.5,
    "model_reload_s": 0.3,
    "catalog_refresh_s": 0.5,
}


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """`copyloop ARGS…` in a child process with `env`, as an operator runs it; asserts exit 0
    and returns its stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "copyloop", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-4000:])
    return out.stdout


def api_keys(env: dict[str, str], *roles: str) -> dict[str, str]:
    """A new API key per role, created through the CLI as an operator does."""
    return {r: cli(env, "keys", "create", "--role", r).strip().splitlines()[-1] for r in roles}


def wait_for_model(client: httpx.Client, stack: Stack, timeout_s: float = 60) -> None:
    """Until the API serves with a model (the consumer writes the first one at start)."""
    deadline = time.monotonic() + timeout_s
    while not client.get("/healthz").json().get("model_version"):
        assert time.monotonic() < deadline, "no model was ever loaded"
        stack.check()
        time.sleep(0.2)


def within(seconds: float, work: Callable[[], T]) -> T:
    """`work()`, run on a thread that must finish within `seconds` (work that waits for a
    SQLite lock waits up to the 30 s busy timeout)."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds}s"
    if errors:
        raise errors[0]
    return out[0]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty ledger: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        upgrade(url)
        yield url
        return
    assert PG_URL is not None
    name = f"copyloop_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One real Kafka-protocol broker for the whole test session; tests isolate by topic prefix."""
    with EmbeddedBroker(free_port()) as b:
        yield b


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on the test's ledger, with a unique topic prefix; keyword overrides win."""
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def build(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "database_url": database_url,
            "topic_prefix": prefix,
            "consumer_group": f"{prefix}-consumer",
            "spool_dir": str(tmp_path / "spool"),
            "topic_partitions": 2,
        }
        values.update(overrides)
        return load_settings(**values)

    return build


@pytest.fixture
def kafka_settings(make_settings: Callable[..., Settings], broker: EmbeddedBroker) -> Settings:
    return make_settings(kafka_bootstrap=broker.bootstrap)
