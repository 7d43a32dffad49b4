"""A small HTTP/1.1 load generator, run as its own process (so it never shares the server's GIL).

Open loop (`--rate R`): request i is due at `start + i / R` whatever the server does; its latency
is measured from that due time, not from when a connection became free (no coordinated
omission). Up to `--connections` keep-alive connections; a request waits for a free one.
Closed loop (`--rate 0`): `--connections` clients each send the next request when the previous
answer arrived.

The open loop's client is an asyncio protocol per connection on uvloop (no httpx, no task or stream
per request), and it wakes at most once a millisecond: it must not take the CPU of the server it
measures on the same cores. Prints one JSON line.

    python bench/loadgen.py --port P --paths-file F --key K --rate 1000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import time

import numpy as np


def _requests(paths: list[str], key: str, method: str, bodies: list[bytes] | None) -> list[bytes]:
    out = []
    for i, path in enumerate(paths):
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if key:
            head += f"Authorization: Bearer {key}\r\n"
        body = b""
        if bodies is not None:
            body = bodies[i % len(bodies)]
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        out.append(head.encode() + b"\r\n" + body)
    return out


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def call(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status


async def _connect(port: int) -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Conn(reader, writer)


class _Client(asyncio.Protocol):
    """One keep-alive connection of the open loop: sends a request, parses the answer's head and
    body as bytes arrive, then takes the next waiting request (`_OpenLoop.backlog`) or goes idle.
    No task, queue or stream per request: the generator must not take the CPU it measures."""

    def __init__(self, run: _OpenLoop) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.current = -1  # index of the request in flight
        self.due = 0.0
        self.need = -1  # bytes of the whole answer once its head is in, else -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.run.ready(self)

    def send(self, i: int, due: float) -> None:
        self.current, self.due = i, due
        assert self.transport is not None
        self.transport.write(self.run.reqs[i % len(self.run.reqs)])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            self.need = end + 4 + length
        if len(self.buf) < self.need:
            return
        status = int(self.buf[9:12])
        self.buf, self.need = self.buf[self.need :], -1
        i, self.current = self.current, -1
        self.run.finished(i, self.due, status)
        self.run.ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)


class _OpenLoop:
    """Requests fall due at `start + i / rate`; each goes out on an idle connection or waits in
    `backlog` for the first to free up. Latency counts from the due time."""

    def __init__(self, port: int, reqs: list[bytes], rate: float, duration: float) -> None:
        self.port, self.reqs, self.rate = port, reqs, rate
        self.total = int(rate * duration)
        self.lat = np.zeros(self.total)  # 0 = not finished
        self.done = 0
        self.status_bad = 0
        self.errors = 0
        # Idle connections, longest idle first: a request goes out on the connection that has
        # waited longest, so the load spreads over every connection (and every server worker
        # that accepted some), as many shoppers' browsers spread it. (A stack sent nearly every
        # request over the few connections freed last, often all on one worker.)
        self.idle: collections.deque[_Client] = collections.deque()
        self.backlog: collections.deque[tuple[int, float]] = collections.deque()
        self.all_done = asyncio.Event()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: _Client(self), "127.0.0.1", self.port)

    def dispatch(self, i: int, due: float) -> None:
        if self.idle:
            self.idle.popleft().send(i, due)
        else:
            self.backlog.append((i, due))

    def ready(self, client: _Client) -> None:
        if self.backlog:
            client.send(*self.backlog.popleft())
        else:
            self.idle.append(client)

    def finished(self, i: int, due: float, status: int) -> None:
        self.lat[i] = time.perf_counter() - due
        if status != 200:
            self.status_bad += 1
        self._count()

    def lost(self, client: _Client) -> None:
        if client in self.idle:
            self.idle.remove(client)
        if client.current >= 0:
            self.lat[client.current] = np.nan
            self.errors += 1
            self._count()
        if not self.all_done.is_set():
            asyncio.ensure_future(self.connect())

    def _count(self) -> None:
        self.done += 1
        if self.done >= self.total:
            self.all_done.set()


async def open_loop(
    port: int,
    reqs: list[bytes],
    rate: float,
    duration: float,
    conns: int,
    timeline: str | None = None,
) -> dict:
    run = _OpenLoop(port, reqs, rate, duration)
    for _ in range(conns):
        await run.connect()
    total = run.total
    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution and is cached
    # per loop iteration.
    start = time.perf_counter() + 0.05
    i = 0
    max_lag = 0.0
    while i < total:
        now = time.perf_counter()
        while i < total and start + i / rate <= now:
            max_lag = max(max_lag, now - (start + i / rate))
            run.dispatch(i, start + i / rate)
            i += 1
        if i < total:
            # The loop's timers have millisecond resolution: a shorter sleep returns at once and
            # the generator would spin, taking a core from the server it measures. It wakes at
            # most once a millisecond and sends what fell due (latency counts from due times).
            await asyncio.sleep(max(0.001, start + i / rate - time.perf_counter()))
    # Requests still unanswered 5 s after the last one was due are given up on (counted as
    # unfinished, not hidden).
    try:
        await asyncio.wait_for(run.all_done.wait(), timeout=5.0)
    except TimeoutError:
        pass
    run.all_done.set()  # no reconnects from here
    elapsed = min(time.perf_counter(), start + duration + 5.0) - start
    lat = run.lat
    finished = lat[(lat != 0) & ~np.isnan(lat)]
    res = _summary(finished, len(finished), elapsed, run.status_bad, run.errors, rate)
    res["unfinished"] = total - run.done
    res["generator_max_lag_ms"] = round(max_lag * 1000, 2)  # how late it sent (its own lag)
    if timeline:  # request i fell due at i / rate s: 0 = unfinished, NaN = connection lost
        np.save(timeline, lat)
        res["timeline_start"] = start  # perf_counter: CLOCK_MONOTONIC, shared by processes
    return res


async def closed_loop(port: int, reqs: list[bytes], duration: float, conns: int) -> dict:
    lats: list[list[float]] = [[] for _ in range(conns)]
    bad = [0] * conns
    clock = time.perf_counter
    stop_at = clock() + duration

    async def client(c: int) -> None:
        conn = await _connect(port)
        j = c
        while clock() < stop_at:
            t0 = clock()
            if await conn.call(reqs[j % len(reqs)]) != 200:
                bad[c] += 1
            lats[c].append(clock() - t0)
            j += conns

    start = clock()
    await asyncio.gather(*(client(c) for c in range(conns)))
    elapsed = clock() - start
    lat = np.array([x for part in lats for x in part])
    return _summary(lat, len(lat), elapsed, sum(bad), 0, 0.0)


def _summary(
    lat: np.ndarray, done: int, elapsed: float, bad: int, errors: int, rate: float
) -> dict:
    ms = lat * 1000.0
    pct = np.percentile(ms, [50, 90, 99, 99.9]) if len(ms) else [float("nan")] * 4
    return {
        "offered_rps": rate or None,
        "completed": int(done),
        "rps": done / elapsed if elapsed > 0 else 0.0,
        "p50_ms": float(pct[0]),
        "p90_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "p999_ms": float(pct[3]),
        "max_ms": float(ms.max()) if len(ms) else float("nan"),
        "non_200": int(bad),
        "errors": int(errors),
        "client_cpu_s": time.process_time(),
        "elapsed_s": elapsed,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--paths-file", required=True, help="one request path per line")
    p.add_argument("--bodies-file", help="one JSON body per line (then --method POST)")
    p.add_argument("--method", default="GET")
    p.add_argument("--key", default="")
    p.add_argument("--rate", type=float, default=0.0, help="requests/s; 0 = closed loop")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument(
        "--timeline",
        help="open loop: save each request's latency in seconds (.npy, in due order) here",
    )
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with open(args.paths_file) as fh:
        paths = [line.strip() for line in fh if line.strip()]
    bodies = None
    if args.bodies_file:
        with open(args.bodies_file, "rb") as fh:
            bodies = [line.strip() for line in fh if line.strip()]
    reqs = _requests(paths, args.key, args.method, bodies)
    if args.rate > 0:
        res = asyncio.run(
            open_loop(args.port, reqs, args.rate, args.duration, args.connections, args.timeline)
        )
    else:
        res = asyncio.run(closed_loop(args.port, reqs, args.duration, args.connections))
    res["pid"] = os.getpid()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
