"""The API's worker processes, each accepting on its own socket (`SO_REUSEPORT`).

uvicorn's supervisor binds one socket and every worker accepts from it: whichever worker wakes
first takes the whole backlog. A client that opens its keep-alive connections at once (a load
balancer, a CDN's pool, the benchmark's 64 connections) can land them all on one worker, which
then serves every request while the others idle: in 9 starts of 2 workers, 64 connections split
32/32 only 3 times, and 0/64 once (`bench/serve.py`, 4,000/s). With a socket per worker bound
with `SO_REUSEPORT`, Linux hashes each new connection to one of the sockets, so the workers get
about as many connections each, whoever is awake.

`WorkerPool(config, n).run()` binds the n sockets, starts one `uvicorn.Server` per socket in a
spawned process and, until SIGINT or SIGTERM, starts a fresh worker on the same socket when one
dies. A socket listens only once its worker's app has started (uvicorn's server calls `listen`
after the app's start-up), so while a worker starts, the kernel hashes new connections to the
workers that serve: had the pool listened on every socket at once, a connection hashed to a
worker still importing its app waited there for seconds, and a client with a 5 s timeout gave
up (`tests/test_durability.py`, on a slow machine). Once listening, a socket stays open in this
process, so when its worker dies its connections wait in the backlog for the replacement
instead of being refused. A worker that fails its start-up (uvicorn's `STARTUP_FAILURE`: the
app could not be built) stops the pool, as it would fail again. On stop, every worker gets
SIGTERM (uvicorn's graceful shutdown: the app's lifespan flushes the publisher) and is killed if
it has not exited within `config.timeout_graceful_shutdown` (or 30 s).

Where `SO_REUSEPORT` does not balance (not Linux) the pool shares one socket, as uvicorn does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from core.broker import die_with_parent

log = logging.getLogger("uvicorn.error")

#: A worker that lived less than this counts as failing: the next start in its slot waits
#: 1, 2, 4 … up to `MAX_RESTART_DELAY_S` seconds (an app that cannot be imported, say).
SHORT_LIFE_S = 10.0
MAX_RESTART_DELAY_S = 30.0
#: A worker given this long to exit after SIGTERM when the config sets no graceful timeout.
STOP_TIMEOUT_S = 30.0

_spawn = multiprocessing.get_context("spawn")


def balanced() -> bool:
    """True where a socket per worker spreads connections over the workers (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bound_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """`n` sockets bound to `host:port` with `SO_REUSEPORT` (one, shared, where that does not
    balance), not yet listening: each worker's server listens on its own when its app has
    started. Raises `OSError` when the address cannot be bound, or when another process
    serves on it: `SO_REUSEPORT` would otherwise let a second `copyloop serve` (another ledger,
    other settings) share the port with the first and take half its connections."""
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    if balanced() and port:
        with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)  # EADDRINUSE while anyone listens there, SO_REUSEPORT or not
    sockets: list[socket.socket] = []
    try:
        for _ in range(n if balanced() else 1):
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if balanced():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.set_inheritable(True)
            address = sock.getsockname()  # port 0: the others bind the port the first got
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _serve(config: uvicorn.Config, sock: socket.socket, pool_pid: int) -> None:
    """A worker process: uvicorn's server on the socket it was given, until the pool that
    started it dies (SIGTERM then: uvicorn's graceful shutdown). A pool killed with SIGKILL
    must not leave its workers serving unsupervised on the port, which the pool started in its
    place could then not bind."""
    on_parent_death = die_with_parent()
    if on_parent_death is not None:
        on_parent_death()
    if os.getppid() != pool_pid:  # the pool died before the request above took effect
        return
    config.configure_logging()  # a spawned process starts with logging unconfigured
    uvicorn.Server(config).run(sockets=[sock])


class WorkerPool:
    """`n` uvicorn workers for `config` (an import string app), a socket each."""

    def __init__(self, config: uvicorn.Config, n: int) -> None:
        self.config = config
        self.n = n
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._workers: list[SpawnProcess | None] = [None] * n
        self._started_at = [0.0] * n
        self._short_lives = [0] * n  # consecutive short lives per slot
        self._due = [0.0] * n  # when an empty slot gets its next worker (monotonic)

    def run(self) -> int:
        """Serve until SIGINT or SIGTERM (or a worker's failed start); the exit status."""
        try:
            self._sockets = bound_sockets(self.config.host, self.config.port, self.n)
        except OSError as exc:
            log.error("cannot bind %s:%s: %s", self.config.host, self.config.port, exc)
            return STARTUP_FAILURE
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        log.info(
            "Serving on http://%s:%d with %d workers (%s)",
            self.config.host,
            self._sockets[0].getsockname()[1],
            self.n,
            "a socket each" if len(self._sockets) > 1 else "one shared socket",
        )
        status = 0
        try:
            for slot in range(self.n):
                self._start(slot)
            while not self._stop.wait(0.25):
                status = self._replace_dead()
                if status:
                    break
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in self._sockets:
                sock.close()
        return status

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop.set()

    def _start(self, slot: int) -> None:
        sock = self._sockets[slot % len(self._sockets)]
        worker = _spawn.Process(
            target=_serve, args=(self.config, sock, os.getpid()), name=f"api-worker-{slot}"
        )
        worker.start()
        self._workers[slot] = worker
        self._started_at[slot] = time.monotonic()
        log.info("Started worker %d [%s]", slot, worker.pid)

    def _replace_dead(self) -> int:
        """Start a fresh worker in each slot whose worker exited (after a delay when it lived
        briefly); STARTUP_FAILURE when one failed its start-up (the pool stops), else 0."""
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                if worker.is_alive():
                    continue
                worker.join()
                if worker.exitcode == STARTUP_FAILURE:
                    log.error("Worker %d [%s] failed to start; stopping", slot, worker.pid)
                    return STARTUP_FAILURE
                short = now - self._started_at[slot] < SHORT_LIFE_S
                self._short_lives[slot] = self._short_lives[slot] + 1 if short else 0
                delay = 0.0
                if short:
                    delay = min(MAX_RESTART_DELAY_S, 2.0 ** (self._short_lives[slot] - 1))
                log.warning(
                    "Worker %d [%s] exited (code %s); starting another in %.0f s",
                    slot,
                    worker.pid,
                    worker.exitcode,
                    delay,
                )
                self._workers[slot] = None
                self._due[slot] = now + delay
            if now >= self._due[slot]:
                self._start(slot)
        return 0

    def _stop_all(self) -> None:
        live = [w for w in self._workers if w is not None and w.is_alive()]
        for worker in live:
            worker.terminate()  # SIGTERM: uvicorn shuts down gracefully
        timeout = self.config.timeout_graceful_shutdown or STOP_TIMEOUT_S
        deadline = time.monotonic() + timeout + 5.0
        for worker in live:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.error("Worker [%s] did not stop in time; killing it", worker.pid)
                worker.kill()
                worker.join()


__all__ = ["MAX_RESTART_DELAY_S", "SHORT_LIFE_S", "WorkerPool", "balanced", "bound_sockets"]
