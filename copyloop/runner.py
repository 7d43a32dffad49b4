"""`copyloop up`: the broker (unless Kafka is configured), the API, the consumer and the scheduler
as child processes of one supervisor, stopped together on Ctrl-C / SIGTERM.

Children read their settings from the environment, so the supervisor hands its own (possibly
overridden) settings down as `COPYLOOP_*` variables.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.broker import EmbeddedBroker, ensure_topics, wait_for_port
from core.migrations import upgrade
from core.settings import Settings

log = logging.getLogger(__name__)

ROLES = ("serve", "consume", "scheduler")


class RunnerError(RuntimeError):
    """A part failed to start or died."""


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that rebuilds `settings` in a child process."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        key = f"COPYLOOP_{name.upper()}"
        env[key] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


@dataclass
class Stack:
    """The running parts of one `up`. `start()` returns once the API answers."""

    settings: Settings
    roles: Iterable[str] = ROLES
    broker: EmbeddedBroker | None = field(default=None, init=False)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    log_dir: str | None = None

    def start(self, timeout_s: float = 60.0) -> Stack:
        settings = self.settings
        upgrade(settings.database_url)
        if settings.embedded_broker:
            self.broker = EmbeddedBroker(settings.embedded_broker_port).start()
            settings = settings.model_copy(update={"kafka_bootstrap": self.broker.bootstrap})
            self.settings = settings
        ensure_topics(
            settings.bootstrap,
            [settings.decisions_topic, settings.events_topic, settings.dlq_topic],
            settings.topic_partitions,
        )
        env = {**os.environ, **settings_env(settings)}
        for role in self.roles:
            out = None
            if self.log_dir:
                os.makedirs(self.log_dir, exist_ok=True)
                out = open(os.path.join(self.log_dir, f"{role}.log"), "ab")  # noqa: SIM115
            self.children[role] = subprocess.Popen(
                [sys.executable, "-m", "copyloop", role],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
            )
        if "serve" in self.children:
            try:
                wait_for_port(settings.api_host, settings.api_port, timeout_s)
            except Exception as exc:
                self.stop()
                raise RunnerError(f"the API did not start on port {settings.api_port}") from exc
        return self

    def check(self) -> None:
        """Raise if a part died."""
        for role, proc in self.children.items():
            code = proc.poll()
            if code is not None:
                raise RunnerError(f"{role} exited with code {code}")

    def stop(self, timeout_s: float = 20.0) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_until_signal(settings: Settings, shop_port: int | None = None) -> None:
    """Start everything and block until Ctrl-C / SIGTERM or until a part dies; with
    `shop_port`, also the demo shop page (`copyloop.shop`) on that port."""
    from copyloop.shop import open_shop

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Stack(settings) as stack:
        log.info("copyloop is up: API on http://%s:%d", settings.api_host, settings.api_port)
        shop = None if shop_port is None else open_shop(stack.settings, shop_port).start()
        try:
            if shop is not None:
                log.info("demo shop on %s (its counts: %sreport)", shop.url, shop.url)
            while not stop.wait(1.0):
                stack.check()
        finally:
            if shop is not None:
                shop.stop()
