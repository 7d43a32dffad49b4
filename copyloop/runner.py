"""`copyloop up`: the broker (unless Kafka is configured), the API, the consumer and the scheduler
as child processes of one supervisor, stopped together on Ctrl-C / SIGTERM.

A part that exits on its own is started again after a back-off (1 s, doubling to 30 s; back to
1 s once it has run a minute), and the others keep running: a consumer that crashes never takes
the API down, and the API's decision log keeps every answered decision until the ledger holds
it, whatever happens to the broker meanwhile. Each child is asked (Linux `PR_SET_PDEATHSIG`)
to receive SIGTERM if the supervisor dies, so a killed `up` leaves no orphans holding its ports.

The consumer and the scheduler run `COPYLOOP_BACKGROUND_NICE` (10) lower in CPU priority than
the API: on shared cores a batch to ingest or a fine-tune then waits for the page views, rather
than the page views for it (open loop at 2,000 decisions/s on 2 cores, 7 alternating runs each:
p99 34 ms against 61, `bench/serve.py` starts its consumer the same way).

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from core.broker import EmbeddedBroker, die_with_parent, ensure_topics, wait_for_port
from core.migrations import upgrade
from core.settings import Settings

log = logging.getLogger(__name__)

ROLES = ("serve", "consume", "scheduler")
#: The parts whose work can wait for the page views: started `background_nice` lower.
BACKGROUND_ROLES = frozenset({"consume", "scheduler"})
#: Back-off before restarting a part that exited: first, cap; a run this long resets it.
RESTART_FIRST_S, RESTART_CAP_S, RESTART_RESET_S = 1.0, 30.0, 60.0


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


def child_setup(nice: int) -> Callable[[], None] | None:
    """The `preexec_fn` of a part: SIGTERM when the supervisor dies (`die_with_parent`), and its
    CPU priority `nice` lower than the supervisor's."""
    on_parent_death = die_with_parent()
    if not nice:
        return on_parent_death

    def setup() -> None:
        if on_parent_death is not None:
            on_parent_death()
        os.nice(nice)

    return setup


@dataclass
class _Restarts:
    """When a part last started, and how long to wait before starting it again."""

    started: float = 0.0
    delay_s: float = RESTART_FIRST_S
    due: float | None = None  # when the exited part is started again

    def exited(self, now: float) -> float:
        if now - self.started >= RESTART_RESET_S:
            self.delay_s = RESTART_FIRST_S
        self.due = now + self.delay_s
        delay, self.delay_s = self.delay_s, min(RESTART_CAP_S, self.delay_s * 2)
        return delay


@dataclass
class Stack:
    """The running parts of one `up`. `start()` returns once the API answers; `supervise()`
    restarts parts that exited."""

    settings: Settings
    roles: Iterable[str] = ROLES
    broker: EmbeddedBroker | None = field(default=None, init=False)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    log_dir: str | None = None
    _restarts: dict[str, _Restarts] = field(default_factory=dict, init=False)

    def start(self, timeout_s: float = 60.0) -> Stack:
        settings = self.settings
        upgrade(settings.database_url)
        if settings.embedded_broker:
            self.broker = EmbeddedBroker(settings.embedded_broker_port, die_with_parent=True)
            self.broker.start()
            settings = settings.model_copy(update={"kafka_bootstrap": self.broker.bootstrap})
            self.settings = settings
        self._ensure_topics()
        for role in self.roles:
            self._spawn(role)
        if "serve" in self.children:
            try:
                wait_for_port(settings.api_host, settings.api_port, timeout_s)
            except Exception as exc:
                self.stop()
                raise RunnerError(f"the API did not start on port {settings.api_port}") from exc
        return self

    def _ensure_topics(self) -> None:
        s = self.settings
        ensure_topics(
            s.bootstrap, [s.decisions_topic, s.events_topic, s.dlq_topic], s.topic_partitions
        )

    def _spawn(self, role: str) -> None:
        out = None
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, f"{role}.log"), "ab")  # noqa: SIM115
        self.children[role] = subprocess.Popen(
            [sys.executable, "-m", "copyloop", role],
            env={**os.environ, **settings_env(self.settings)},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            preexec_fn=child_setup(
                self.settings.background_nice if role in BACKGROUND_ROLES else 0
            ),
        )
        if out is not None:
            out.close()  # the child holds its own copy
        self._restarts.setdefault(role, _Restarts()).started = time.monotonic()

    def check(self) -> None:
        """Raise if a part died (for callers that do not supervise: tests, the demo)."""
        for role, proc in self.children.items():
            code = proc.poll()
            if code is not None:
                raise RunnerError(f"{role} exited with code {code}")

    def supervise(self) -> None:
        """Start again, after its back-off, each part that exited; the others run on."""
        now = time.monotonic()
        if self.broker is not None and not self.broker.running:
            restarts = self._restarts.setdefault("broker", _Restarts())
            if restarts.due is None:
                delay = restarts.exited(now)
                log.error("the embedded broker exited; starting it again in %.0fs", delay)
            elif now >= restarts.due:
                restarts.due = None
                try:
                    self.broker.start()
                    restarts.started = time.monotonic()
                    self._ensure_topics()
                    log.info("the embedded broker runs again (its log starts empty)")
                except Exception:
                    log.exception("the embedded broker did not start")
        for role, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            restarts = self._restarts[role]
            if restarts.due is None:
                delay = restarts.exited(now)
                log.error("%s exited with code %s; starting it again in %.0fs", role, code, delay)
            elif now >= restarts.due:
                restarts.due = None
                log.info("starting %s again", role)
                self._spawn(role)

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
    """Start everything and supervise it until Ctrl-C / SIGTERM; with `shop_port`, also the
    demo shop page (`copyloop.shop`) on that port."""
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
            while not stop.wait(0.5):
                stack.supervise()
        finally:
            if shop is not None:
                shop.stop()
