"""`api.workers.WorkerPool` with real processes: connections spread over the workers, a killed
worker is replaced on its socket without a refused connection, SIGTERM stops every worker
through the app's shutdown, and a failed start-up stops the pool instead of looping.

The pool serves a tiny ASGI app (written to `tmp_path`) that answers with its process id, so
each connection says which worker accepted it."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from uvicorn.config import STARTUP_FAILURE

from api.workers import WorkerPool, balanced, bound_sockets
from core.broker import free_port, wait_for_port

APP = """
import asyncio, os, pathlib

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("POOL_TEST_FAIL"):
                    await send({"type": "lifespan.startup.failed", "message": "refused"})
                    return
                slow = pathlib.Path(os.environ["POOL_TEST_DIR"], "slow")
                if os.environ.get("POOL_TEST_SLOW_S"):
                    try:  # the first worker here starts slowly, the others at once
                        os.close(os.open(slow, os.O_CREAT | os.O_EXCL))
                    except FileExistsError:
                        pass
                    else:
                        await asyncio.sleep(float(os.environ["POOL_TEST_SLOW_S"]))
                        slow.with_name("slow-started").touch()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                pathlib.Path(os.environ["POOL_TEST_DIR"], f"stopped-{os.getpid()}").touch()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = str(os.getpid()).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

RUN = (
    "import sys, uvicorn; from api.workers import WorkerPool; "
    "sys.exit(WorkerPool(uvicorn.Config('pool_app:app', host='127.0.0.1', port={port}, "
    "lifespan='on', log_level='info'), {n}).run())"
)

pytestmark = pytest.mark.skipif(not balanced(), reason="SO_REUSEPORT balances on Linux only")


class Pool:
    def __init__(self, tmp: Path, n: int = 2, fail: bool = False, slow_s: float = 0.0) -> None:
        (tmp / "pool_app.py").write_text(APP)
        self.tmp, self.n, self.port = tmp, n, free_port()
        env = {**os.environ, "PYTHONPATH": f"{tmp}{os.pathsep}{os.getcwd()}"}
        env["POOL_TEST_DIR"] = str(tmp)
        if fail:
            env["POOL_TEST_FAIL"] = "1"
        if slow_s:
            env["POOL_TEST_SLOW_S"] = str(slow_s)
        self.log = open(tmp / "pool.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUN.format(port=self.port, n=n)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def workers(self) -> list[psutil.Process]:
        children = psutil.Process(self.proc.pid).children()
        return [c for c in children if any("spawn_main" in part for part in c.cmdline())]

    def wait_ready(self) -> None:
        wait_for_port("127.0.0.1", self.port, 60)
        deadline = time.monotonic() + 60
        while len(set(ask_many(self.port, 4 * self.n))) < self.n:  # every worker answers
            assert time.monotonic() < deadline, (self.tmp / "pool.log").read_text()
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    p = Pool(tmp_path)
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


def ask_many(port: int, n: int, timeout: float = 60.0) -> list[int]:
    """Open `n` connections at once, then ask each which process serves it."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=timeout) for _ in range(n)]
    pids = []
    try:
        for conn in conns:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        for conn in conns:
            data = b""
            while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
                chunk = conn.recv(4096)
                assert chunk, "connection closed before the answer"
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200"), head
            pids.append(int(body))
    finally:
        for conn in conns:
            conn.close()
    return pids


def test_sockets_share_the_port_with_reuseport() -> None:
    sockets = bound_sockets("127.0.0.1", 0, 3)
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(sockets) == 3 and len(ports) == 1
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
    finally:
        for s in sockets:
            s.close()


def test_connections_reach_only_the_sockets_whose_worker_listens() -> None:
    # A worker's server listens once its app has started; until then no connection may wait
    # on its socket: the kernel hashes them over the listening ones only.
    sockets = bound_sockets("127.0.0.1", 0, 2)
    port = sockets[0].getsockname()[1]
    try:
        with pytest.raises(ConnectionRefusedError):  # nobody serves yet
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        sockets[1].listen()
        clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(16)]
        sockets[1].settimeout(2)
        accepted = [sockets[1].accept()[0] for _ in clients]  # all 16 on the listening one
        for conn in clients + accepted:
            conn.close()
    finally:
        for s in sockets:
            s.close()


def test_a_busy_port_fails_the_start(tmp_path: Path) -> None:
    import uvicorn

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody else may bind the port
    taken.listen()
    try:
        config = uvicorn.Config("pool_app:app", host="127.0.0.1", port=taken.getsockname()[1])
        assert WorkerPool(config, 2).run() == STARTUP_FAILURE
    finally:
        taken.close()


def test_no_connection_waits_on_a_worker_still_starting(tmp_path: Path) -> None:
    # One worker's app takes 10 s to start. Meanwhile the port answers from the other one
    # only: when the pool listened on every socket at once, about half of these connections
    # were hashed to the starting worker and waited for it (a 5 s client timeout gave up).
    p = Pool(tmp_path, slow_s=10.0)
    try:
        wait_for_port("127.0.0.1", p.port, 60)
        answered_by = set(ask_many(p.port, 32, timeout=4.0))
        assert not (tmp_path / "slow-started").exists(), "asked too late to show anything"
        assert len(answered_by) == 1
        p.wait_ready()  # and then both serve
    finally:
        p.stop()


def test_connections_opened_at_once_spread_over_the_workers(pool: Pool) -> None:
    # 64 connections opened together, as a load balancer's pool does. On one shared socket
    # the first worker awake could take them all (0/64 was seen); hashed over a socket per
    # worker, fewer than 12 on either side has a probability below 1e-6.
    per_worker = Counter(ask_many(pool.port, 64))
    assert set(per_worker) == {w.pid for w in pool.workers()}
    assert min(per_worker.values()) >= 12, per_worker


def test_a_killed_worker_is_replaced_and_no_connection_is_refused(pool: Pool) -> None:
    victim = pool.workers()[0]
    victim.kill()
    victim.wait(10)
    # Connections hashed to the dead worker's socket wait in its backlog (the pool keeps the
    # socket open) until its successor accepts them: every one is answered.
    pids = Counter(ask_many(pool.port, 64))
    assert victim.pid not in pids
    live = {w.pid for w in pool.workers()}
    assert len(live) == pool.n and set(pids) == live, (pids, live)


def test_sigterm_stops_every_worker_through_the_apps_shutdown(pool: Pool) -> None:
    workers = {w.pid for w in pool.workers()}
    pool.proc.send_signal(signal.SIGTERM)
    assert pool.proc.wait(60) == 0
    stopped = {int(p.name.split("-")[1]) for p in pool.tmp.glob("stopped-*")}
    assert stopped == workers
    assert not any(psutil.pid_exists(pid) for pid in workers)


def test_a_worker_that_cannot_start_stops_the_pool(tmp_path: Path) -> None:
    p = Pool(tmp_path, fail=True)
    try:
        assert p.proc.wait(60) == STARTUP_FAILURE
        assert "failed to start; stopping" in (tmp_path / "pool.log").read_text()
    finally:
        p.stop()


def test_a_port_another_server_listens_on_is_refused_not_shared() -> None:
    """Two `copyloop serve` on one port would split its connections between two ledgers:
    the second is refused, as without `SO_REUSEPORT`."""
    other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]
    try:
        with pytest.raises(OSError) as refused:
            bound_sockets("127.0.0.1", port, 2)
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        other.close()
    sockets = bound_sockets("127.0.0.1", port, 2)  # free again: bound
    for s in sockets:
        s.close()


def test_workers_of_a_pool_killed_with_sigkill_stop_and_free_the_port(tmp_path: Path) -> None:
    """A pool killed alone (the OOM killer's pick, a `kill -9` of its pid) takes its workers
    with it (SIGTERM: a graceful stop), so that the pool started in its place binds the port
    instead of finding it held by unsupervised workers."""
    first = Pool(tmp_path)
    try:
        first.wait_ready()
        workers = first.workers()
        assert len(workers) == 2
        first.proc.kill()
        first.proc.wait()
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [w.pid for w in alive]
        assert all((tmp_path / f"stopped-{w.pid}").exists() for w in gone)  # graceful
        second = subprocess.run(
            [
                sys.executable,
                "-c",
                "from api.workers import bound_sockets; "
                f"[s.close() for s in bound_sockets('127.0.0.1', {first.port}, 2)]",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 0, second.stderr
    finally:
        first.stop()
