"""API keys: creation, verification with a short-lived in-memory cache, and role checks.

A key is `cl_` + `secrets.token_urlsafe(32)`; the ledger stores only its SHA-256 hex digest, so a
leaked database does not leak usable keys. Roles: `serve`, `events`, `analyst`, `admin`; `admin`
may call every route. Verified hashes are cached for `KeyCache.ttl_s` seconds so the hot path reads
no database; a revoked key therefore stops working within that TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.deps import Resources, ResourcesDep
from api.errors import Forbidden, Unauthorized
from copyloop.ledger.tables import ApiKey

ROLES = ("serve", "events", "analyst", "admin")
KEY_PREFIX = "cl_"

_bearer_doc = "An API key: `Authorization: Bearer cl_…`"
_bearer = HTTPBearer(auto_error=False, description=_bearer_doc)


def hash_key(key: str) -> str:
    """SHA-256 hex digest of a key, as stored in `api_keys.key_hash`."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(sessions: sessionmaker[Session], role: str, label: str = "") -> str:
    """Store a new key of `role` (its hash only) and return the key itself, shown once."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with sessions.begin() as s:
        s.add(ApiKey(key_hash=hash_key(key), role=role, label=label, created_at=time.time()))
    return key


def revoke_key(sessions: sessionmaker[Session], key: str) -> bool:
    """Mark a key revoked; True when it existed. Caches forget it within their TTL."""
    with sessions.begin() as s:
        row = s.get(ApiKey, hash_key(key))
        if row is None:
            return False
        row.revoked = True
        return True


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


def require(*roles: str) -> Callable[..., Awaitable[str]]:
    """A dependency admitting keys of `roles` (and `admin`); returns the caller's role.

    Missing, unknown or revoked key → 401 `unauthorized`; a valid key of another role → 403
    `forbidden`. Async, so a cached key costs no thread hop on the hot path.
    """
    allowed = _allowed(roles)

    async def check(
        resources: ResourcesDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        return await _role(resources, credentials, allowed)

    return check


class Authorized(HTTPBearer):
    """The hot routes' one dependency: checks the bearer key like `require(*roles)` and returns
    the app's `Resources`.

    A sub-class of `HTTPBearer`, so OpenAPI documents the same `HTTPBearer` security scheme,
    while FastAPI resolves a single dependency per request: `require` plus one `Depends` per
    resource cost ~22 % of the API's time under load (BENCHMARKS.md).
    """

    def __init__(self, *roles: str) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer", description=_bearer_doc)
        self.allowed = _allowed(roles)

    async def __call__(self, request: Request) -> Resources:  # type: ignore[override]
        resources: Resources = request.state.resources
        await _role(resources, await super().__call__(request), self.allowed)
        return resources


async def _role(
    resources: Resources, credentials: HTTPAuthorizationCredentials | None, allowed: frozenset[str]
) -> str:
    """The caller's role, or `Unauthorized` / `Forbidden`. Async: a cached key costs no thread
    hop on the hot path."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    keys = resources.keys
    key_hash = hash_key(credentials.credentials)
    hit, role = keys.cached(key_hash)
    if not hit:
        role = await run_in_threadpool(keys.lookup, key_hash)
    if role is None:
        raise Unauthorized("unknown or revoked API key")
    if role not in allowed:
        raise Forbidden(
            f"a {role!r} key may not call this route; it needs one of {sorted(allowed)}",
            {"role": role, "allowed": sorted(allowed)},
        )
    return role


def _allowed(roles: tuple[str, ...]) -> frozenset[str]:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
    return frozenset(roles) | {"admin"}
