"""`api.wire`: a response goes out in one write, and nothing about HTTP changes (pipelining,
streaming, closing after the answer), on a real uvicorn server and real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from api.wire import CoalescingHttpToolsProtocol, CoalescingTransport
from core.broker import free_port, wait_for_port


class _Recorded(asyncio.Transport):
    """A transport that keeps what it was asked to write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 9)}.get(name, default)


def _in_loop(body: Any) -> None:
    async def main() -> None:
        await body(asyncio.get_running_loop())

    asyncio.run(main())


def test_the_writes_of_one_loop_turn_go_out_as_one_in_order() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw = _Recorded()
        t = CoalescingTransport(raw, loop)
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(bytearray(b"body"))
        t.writelines([b"-", memoryview(b"end")])
        assert raw.writes == []  # nothing before the turn ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody-end"]
        t.write(b"next")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert raw.writes[1:] == [b"next"]
        assert t.get_extra_info("peername") == ("127.0.0.1", 9)  # the rest is the real one's

    _in_loop(body)


def test_close_sends_what_waits_first_and_abort_drops_it() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        raw = _Recorded()
        t = CoalescingTransport(raw, loop)
        t.write(b"last answer")
        t.close()
        assert raw.writes == [b"last answer"] and raw.closed
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert raw.writes == [b"last answer"]  # the scheduled flush finds nothing

        raw = _Recorded()
        t = CoalescingTransport(raw, loop)
        t.write(b"never sent")
        t.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert raw.writes == [] and raw.closed

    _in_loop(body)


async def _app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    body = f"answer to {scope['path']}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=CoalescingHttpToolsProtocol, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for_port("127.0.0.1", port, 20)
    yield port
    srv.should_exit = True
    thread.join(10)


def _read_all(sock: socket.socket, until: bytes | None = None, timeout_s: float = 5) -> bytes:
    """Read until `until` has been seen (or, without it, until the server closes)."""
    data = b""
    deadline = time.monotonic() + timeout_s
    sock.settimeout(timeout_s)
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if until is not None and until in data:
            break
    return data


def test_pipelined_requests_are_answered_in_order(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"".join(f"GET /r{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3)))
        data = _read_all(sock, until=b"answer to /r2")
    answers = [data.find(f"answer to /r{i}".encode()) for i in range(3)]
    assert -1 not in answers and answers == sorted(answers), data
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3


def test_a_streamed_body_arrives_whole_and_in_order(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_all(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"


def test_connection_close_sends_the_answer_before_closing(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = _read_all(sock)  # ends at the server's close
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"answer to /bye")
