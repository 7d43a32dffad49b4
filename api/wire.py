"""One socket write per answer: uvicorn's HTTP protocol with its writes gathered per loop turn.

uvicorn writes a response's status line and headers, then its body, each with its own
`transport.write`, and uvloop sends each at once: every answer costs two `write` system calls
and two TCP segments, and wakes the client twice.

`CoalescingHttpToolsProtocol` hands uvicorn a transport whose writes wait until the current
turn of the event loop ends and then go out joined, in order, as one write. A response sent in
one step of its task (every response of this API: none streams) becomes one write; a streamed
one still goes out chunk by chunk, a turn later. Closing flushes first; anything else is the
real transport's. On 2 workers and 2 cores the page-view route answered 2,685 instead of 2,479
req/s with it, at 547 instead of 584 µs of API CPU per request (6 alternating pairs of fresh
stacks, closed loop, medians).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps `transport`: the writes of one loop turn go out as one, at the turn's end."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data) if type(data) is not bytes else data)

    def writelines(self, chunks: Any) -> None:
        for data in chunks:
            self.write(data)

    def flush(self) -> None:
        """Send what waits now (the end of a loop turn does it by itself)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


__all__ = ["CoalescingHttpToolsProtocol", "CoalescingTransport"]
