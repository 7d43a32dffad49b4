"""The processes a fault run starts, kills and restarts: each part (`copyloop broker`, `serve`,
`consume`, `scheduler`) or the whole of `copyloop up`, as an operator runs them.

Every process starts in its own session, so a kill is `killpg(SIGKILL)` of the whole group: the
uvicorn parent and its workers, or `up` with every child it started — what a container runtime,
the OOM killer or a power cut does. Killing only a parent would leave its children serving as
orphans, which is not a crash anyone needs to survive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from copyloop.runner import settings_env
from core.broker import free_port, wait_for_port
from core.settings import Settings, load_settings

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

#: Settings that turn the loop in seconds (short windows, frequent snapshots and reloads).
FAST: dict[str, object] = {
    "close_grace_s": 0.5,
    "clock_skew_s": 1.0,
    "snapshot_every_s": 0.5,
    "model_reload_s": 0.3,
    "catalog_refresh_s": 0.5,
    "scheduler_interval_s": 2.0,
    "topic_partitions": 2,
    "api_workers": 2,
}


@dataclass
class Part:
    """One process (group) of the stack, restartable."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.starts + 1} at {time.time():.3f}\n".encode())
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the whole group and reap the leader."""
        self.signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL what is left of the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Database:
    """A fresh ledger: a SQLite file, or a new PostgreSQL database dropped at the end."""

    kind: str
    workdir: Path
    url: str = ""
    _pg_admin: str | None = None
    _pg_name: str | None = None

    def create(self) -> str:
        if self.kind == "sqlite":
            self.url = f"sqlite:///{self.workdir / 'ledger.db'}"
            return self.url
        admin_url = os.environ.get("COPYLOOP_TEST_DATABASE_URL") or DEFAULT_PG_URL
        name = f"copyloop_f_{uuid.uuid4().hex[:10]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        admin.dispose()
        self._pg_admin, self._pg_name = admin_url, name
        self.url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        return self.url

    def drop(self) -> None:
        if self._pg_admin and self._pg_name:
            admin = create_engine(self._pg_admin, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)')
            admin.dispose()


@dataclass
class Stack:
    """A copyloop deployment under test: `parts` (broker, serve, consume, scheduler, each its own
    process) or `up` (one `copyloop up` with everything inside)."""

    layout: str
    database_url: str
    workdir: Path
    overrides: dict[str, object] = field(default_factory=dict)
    parts: dict[str, Part] = field(default_factory=dict)
    settings: Settings = field(init=False)

    def __post_init__(self) -> None:
        prefix = f"f{uuid.uuid4().hex[:8]}"
        broker_port = free_port()
        values: dict[str, object] = {
            **FAST,
            "database_url": self.database_url,
            "topic_prefix": prefix,
            "consumer_group": f"{prefix}-consumer",
            "spool_dir": str(self.workdir / "spool"),
            "snapshot_dir": str(self.workdir / "snapshots"),
            "api_host": "127.0.0.1",
            "api_port": free_port(),
            "embedded_broker_port": broker_port,
        }
        if self.layout == "parts":
            values["kafka_bootstrap"] = f"127.0.0.1:{broker_port}"
        values.update(self.overrides)
        self.settings = load_settings(**values)
        env = {k: v for k, v in os.environ.items() if not k.startswith("COPYLOOP_")}
        env.update(settings_env(self.settings))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "copyloop"]
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if self.layout == "up":
            names = {"up": ["up"]}
        else:
            names = {
                "broker": ["broker", "--port", str(broker_port)],
                "serve": ["serve"],
                "consume": ["consume"],
                "scheduler": ["scheduler"],
            }
        for name, args in names.items():
            self.parts[name] = Part(name, cmd + args, env, logs / f"{name}.log", self.workdir)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.settings.embedded_broker_port}"

    def start(self, timeout_s: float = 120.0) -> None:
        for name, part in self.parts.items():
            part.start()
            if name == "broker":
                wait_for_port("127.0.0.1", self.settings.embedded_broker_port, timeout_s)
        wait_for_port("127.0.0.1", self.settings.api_port, timeout_s)

    def api_part(self) -> Part:
        return self.parts["up" if self.layout == "up" else "serve"]

    def revive(self) -> list[str]:
        """Restart every part that died (the supervisor's job; `up` has none above it)."""
        revived = []
        for name, part in self.parts.items():
            if not part.alive():
                part.kill()  # reap the rest of its group
                part.start()
                revived.append(name)
        return revived

    def stop(self) -> None:
        for part in reversed(list(self.parts.values())):
            part.stop()
