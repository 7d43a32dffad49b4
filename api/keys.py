"""The API's key cache: the role of a key hash, read from the ledger and remembered briefly.

Verified hashes are cached for `KeyCache.ttl_s` seconds so the hot path reads no database; a
revoked key therefore stops working within that TTL.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import ApiKey


class KeyCache:
    """Role of a key hash, read from the ledger and remembered for `ttl_s` seconds.

    Unknown keys are remembered too (for `negative_ttl_s`), in a bounded map, so a client
    retrying a bad key does not turn every request into a database read.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ttl_s: float = 10.0,
        negative_ttl_s: float = 2.0,
        max_entries: int = 10_000,
    ) -> None:
        self._sessions = sessions
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def cached(self, key_hash: str) -> tuple[bool, str | None]:
        """`(hit, role)`: whether the cache answers, and the role (None: unknown/revoked)."""
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        return True, entry[0]

    def lookup(self, key_hash: str) -> str | None:
        """Read the role from the ledger (blocking) and cache the answer."""
        with self._sessions() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        role = None if row is None or row.revoked else row.role
        ttl = self.ttl_s if role is not None else self.negative_ttl_s
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude but bounded; entries refill on demand
            self._entries[key_hash] = (role, time.monotonic() + ttl)
        return role
