"""The API's key cache: the role of a key hash, read from the ledger and remembered briefly.

Verified hashes are cached for `KeyCache.ttl_s` seconds so the hot path reads no database; a
revoked key therefore stops working within that TTL in every API process (the contract says
within 10 s; the TTL is half that).

One read per key at a time, and none on the request path while the key is in use: a request
that finds its entry past half its TTL still gets the cached role and starts a read in the
background (`refresh_ahead`), and requests that find no entry wait for one shared read. (When
every request past the expiry read the ledger itself, each expiry of the storefront's key sent
every request in flight to the thread pool at once: 25 threads per worker at 2,000/s, and
latency spikes every 5 s.)

The cache also notes when each key was last used — a dict store per request — and a thread
writes those times to the ledger every `last_used_every_s` seconds, one small transaction for
all keys, instead of a database write per request. Look-ups may go through a read-only engine
(`reads`, the API's: on SQLite a read then never waits for the consumer's write lock).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

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
        refresh_ahead: float = 0.5,
        reads: sessionmaker[Session] | None = None,
    ) -> None:
        self._sessions = sessions  # writes the last-used times
        self._reads = reads or sessions  # looks keys up
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        #: Share of the TTL after which a used entry is read again in the background.
        self.refresh_ahead = refresh_ahead
        # key hash -> (role, refresh after, expires at), monotonic times
        self._entries: dict[str, tuple[str | None, float, float]] = {}
        self._lock = threading.Lock()
        self._reading: dict[str, Future[str | None]] = {}  # one read in flight per key
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="copyloop-keys")
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
        """Stop the readers and the writer, and write what it had not yet written."""
        self._readers.shutdown(wait=True, cancel_futures=True)
        self._flusher.close()
        try:
            self.flush_last_used()
        except SQLAlchemyError as exc:
            log.warning("last-used times of %d keys not written (%s)", len(self._used), exc)

    def cached(self, key_hash: str) -> tuple[bool, str | None]:
        """`(hit, role)`: whether the cache answers, and the role (None: unknown/revoked).
        A hit past its refresh time starts one background read (`read`)."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return False, None
        role, refresh_at, expires_at = entry
        now = time.monotonic()
        if expires_at < now:
            return False, None
        if refresh_at < now and key_hash not in self._reading:
            self.read(key_hash)
        if role is not None:
            self._used[key_hash] = time.time()
        return True, role

    def read(self, key_hash: str) -> Future[str | None]:
        """The role read from the ledger on a background thread, and cached: the read in
        flight for `key_hash` if there is one, else a new one."""
        with self._lock:
            reading = self._reading.get(key_hash)
            if reading is None:
                reading = self._readers.submit(self._read_once, key_hash)
                self._reading[key_hash] = reading
        return reading

    def _read_once(self, key_hash: str) -> str | None:
        try:
            return self.lookup(key_hash)
        except SQLAlchemyError as exc:  # the waiting requests answer 503; a refresh keeps
            log.warning("cannot read an API key's role from the ledger (%s)", exc)  # the entry
            raise
        finally:
            with self._lock:
                self._reading.pop(key_hash, None)

    def lookup(self, key_hash: str) -> str | None:
        """Read the role from the ledger (blocking) and cache the answer."""
        with self._reads() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
        role = None if row is None or row.revoked else row.role
        ttl = self.ttl_s if role is not None else self.negative_ttl_s
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # crude but bounded; entries refill on demand
            self._entries[key_hash] = (role, now + ttl * self.refresh_ahead, now + ttl)
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
