"""A small HTTP/1.1 load generator, run as its own process (so it never shares the server's GIL).

Open loop (`--rate R`): request i is due at `start + i / R` whatever the server does; its latency
is measured from that due time, not from when a connection became free (no coordinated
omission). Up to `--connections` keep-alive connections; a request waits for a free one.
Closed loop (`--rate 0`): `--connections` clients each send the next request when the previous
answer arrived.

The client is raw asyncio streams on uvloop (no httpx): about 20-40 µs of client CPU per request,
so it stays far from being the bottleneck at the rates used here. Prints one JSON line.

    python bench/loadgen.py --port P --paths-file F --key K --rate 1000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
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


async def open_loop(port: int, reqs: list[bytes], rate: float, duration: float, conns: int) -> dict:
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(conns):
        idle.put_nowait(await _connect(port))
    total = int(rate * duration)
    lat = np.zeros(total)  # 0 = not finished
    status_bad = 0
    errors = 0
    pending: set[asyncio.Task] = set()

    async def one(i: int, due: float) -> None:
        nonlocal status_bad, errors
        conn = await idle.get()
        try:
            status = await conn.call(reqs[i % len(reqs)])
            if status != 200:
                status_bad += 1
            lat[i] = time.perf_counter() - due
            idle.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            lat[i] = np.nan
            idle.put_nowait(await _connect(port))

    # perf_counter, not loop.time(): uvloop's clock has millisecond resolution and is cached
    # per loop iteration.
    start = time.perf_counter() + 0.05
    i = 0
    max_lag = 0.0
    while i < total:
        now = time.perf_counter()
        while i < total and start + i / rate <= now:
            max_lag = max(max_lag, now - (start + i / rate))
            t = asyncio.ensure_future(one(i, start + i / rate))
            pending.add(t)
            t.add_done_callback(pending.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    # Requests still waiting 5 s after the last one was due are given up on (counted, and their
    # latency is at least the time waited: reported as unfinished, not hidden).
    _done, late = await asyncio.wait(pending, timeout=5.0) if pending else (set(), set())
    unfinished = len(late)
    for t in late:
        t.cancel()
    elapsed = min(time.perf_counter(), start + duration + 5.0) - start
    finished = lat[(lat != 0) & ~np.isnan(lat)]
    res = _summary(finished, len(finished), elapsed, status_bad, errors, rate)
    res["unfinished"] = unfinished
    res["generator_max_lag_ms"] = round(max_lag * 1000, 2)  # how late it sent (its own lag)
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
        res = asyncio.run(open_loop(args.port, reqs, args.rate, args.duration, args.connections))
    else:
        res = asyncio.run(closed_loop(args.port, reqs, args.duration, args.connections))
    res["pid"] = os.getpid()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
