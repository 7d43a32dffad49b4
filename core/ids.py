"""Random ids on the serving path: `new_id()` is a uuid4's hex, drawn from a pool of random bytes.

`uuid.uuid4().hex` asks the kernel for 16 random bytes on every call and builds a `UUID` object
to print it: 2.04 µs a decision, against 0.67 µs here (`bench/serve.py --micro-only`). The pool
reads 64 KiB from `os.urandom` at a time (4,096 ids) and sets the version and variant bits
itself, so the ids are the same 122 random bits in the same format. A forked child starts with
an empty pool: it never repeats its parent's ids.
"""

from __future__ import annotations

import os
import threading

_POOL_BYTES = 16 * 4096


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = b""
        self._at = 0

    def reset(self) -> None:
        self._bytes, self._at = b"", 0

    def take16(self) -> bytes:
        with self._lock:
            at = self._at
            if at + 16 > len(self._bytes):
                self._bytes, at = os.urandom(_POOL_BYTES), 0
            self._at = at + 16
            return self._bytes[at : at + 16]


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.reset)


def new_id() -> str:
    """A fresh uuid4 as 32 lower-case hex digits (what `uuid.uuid4().hex` gives)."""
    raw = bytearray(_pool.take16())
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


__all__ = ["new_id"]
