"""The API's key cache: the role of a key hash, read from the ledger and remembered briefly.

Verified hashes are cached for `KeyCache.ttl_s` seconds so the hot path reads no database; a
revoked key therefore stops working within that TTL in every API process (the contract says
within 10 s; the TTL is half that).

The cache also notes when each key was last used — a dict store per request — and a thread
writes those times to the ledger every `last_used_every_s` seconds, one small transaction for
all keys, instead of a database write per request.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.background import Periodic
from core.keys import record_key_use
from core.ledger.tables import ApiKey

log = logging.getLogger(__name__)


class KeyCache:
    """Role of a key hash, read from the ledger and remembered for `ttl_s` seconds.

    Unknown keys are remembered too (for `negative_ttl_s`), in a bounded map, so a client
    retrying a bad key does not turn every request into a database read.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ttl_s: float = 5.0,
        negative_ttl_s: float = 2.0,
        max_entries: int = 10_000,
        last_used_every_s: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}
        self._flusher = Periodic(
            "key-last-used",
            last_used_every_s,
            self.flush_last_used,
            lambda: "last-used times are kept for the next try",
        )

    def start(self) -> None:
        """Start writing last-used times every `last_used_every_s` seconds."""
        self._flusher.start()

    def close(self) -> None:
        """Stop the writer and write what it had not yet written."""
        self._flusher.close()
        try:
            self.flush_last_used()
        except SQLAlchemyError as exc:
            log.warning("last-used times of %d keys not written (%s)", len(self._used), exc)

    def cached(self, key_hash: str) -> tuple[bool, str | None]:
        """`(hit, role)`: whether the cache answers, and the role (None: unknown/revoked)."""
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        if entry[0] is not None:
            self._used[key_hash] = time.time()
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
            if role is not None:
                self._used[key_hash] = time.time()
        return role

    def flush_last_used(self) -> None:
        """Write the noted last-used times (a failed write keeps them for the next try)."""
        with self._lock:
            used, self._used = self._used, {}
        if not used:
            return
        try:
            record_key_use(self._sessions, used)
        except BaseException:
            with self._lock:
                for key_hash, at in used.items():
                    self._used[key_hash] = max(at, self._used.get(key_hash, 0.0))
            raise
