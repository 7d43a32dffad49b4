"""API keys in the ledger: create, revoke, hash. The API's cache and role checks (`api.auth`)
and the CLI (`copyloop keys …`) both stand on this.

A key is `cl_` + `secrets.token_urlsafe(32)`; the ledger stores only its SHA-256 hex digest, so a
leaked database does not leak usable keys. A key's public id (`copyloop keys list|revoke`) is the
first `KEY_ID_CHARS` hex digits of that digest: it names the key without revealing it, and keys
created before ids existed have one too. Roles: `serve`, `events`, `storefront`
(publishable: safe in a web page; decisions, activations, and events that carry their
decision's token), `analyst`, `admin`; `admin` may call every route.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import ApiKey

ROLES = ("serve", "events", "storefront", "analyst", "admin")
KEY_PREFIX = "cl_"
KEY_ID_CHARS = 12


class KeyIdError(ValueError):
    """A key id that names no key, or more than one."""


@dataclass(frozen=True)
class KeyInfo:
    """What `copyloop keys list` shows of a key: never the key, nor its full hash.

    Times are epoch seconds; `last_used_at` is None for a key never used, and lags the truth by
    up to a minute (the API writes it at most once a minute per key).
    """

    key_id: str
    role: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked: bool


def hash_key(key: str) -> str:
    """SHA-256 hex digest of a key, as stored in `api_keys.key_hash`.

    >>> hash_key("cl_x")[:12]
    '8f66f0082269'
    """
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


def key_id(key_hash: str) -> str:
    """The public id of the key whose hash is `key_hash`.

    >>> key_id(hash_key("cl_x"))
    '8f66f0082269'
    """
    return key_hash[:KEY_ID_CHARS]


def list_keys(sessions: sessionmaker[Session]) -> list[KeyInfo]:
    """Every key, oldest first, revoked ones included (marked)."""
    with sessions() as s:
        rows = s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.key_hash)).all()
        return [
            KeyInfo(
                key_id(r.key_hash), r.role, r.label, r.created_at, r.last_used_at, bool(r.revoked)
            )
            for r in rows
        ]


def revoke_key_id(sessions: sessionmaker[Session], kid: str) -> KeyInfo:
    """Revoke the key with public id `kid` (its full hash works too); returns it as it is now.

    Raises `KeyIdError` when `kid` matches no key or several (ids are hash prefixes). API
    processes refuse the key once their cache entry expires (`api.keys.KeyCache.ttl_s`).
    """
    kid = kid.strip().lower()
    if len(kid) < KEY_ID_CHARS or any(c not in "0123456789abcdef" for c in kid):
        raise KeyIdError(
            f"key id must be at least {KEY_ID_CHARS} hex digits (see `copyloop keys list`), "
            f"got {kid!r}"
        )
    with sessions.begin() as s:
        rows = s.scalars(select(ApiKey).where(ApiKey.key_hash.startswith(kid))).all()
        if not rows:
            raise KeyIdError(f"no key has id {kid!r} (see `copyloop keys list`)")
        if len(rows) > 1:
            raise KeyIdError(f"{len(rows)} keys have ids starting {kid!r}: give more digits")
        row = rows[0]
        row.revoked = True
        return KeyInfo(
            key_id(row.key_hash), row.role, row.label, row.created_at, row.last_used_at, True
        )


def record_key_use(sessions: sessionmaker[Session], used: Mapping[str, float]) -> None:
    """Write each key hash's latest use time, never moving a key's `last_used_at` backwards
    (API processes flush independently). One transaction for the batch."""
    if not used:
        return
    with sessions.begin() as s:
        for key_hash, at in used.items():
            s.execute(
                update(ApiKey)
                .where(ApiKey.key_hash == key_hash)
                .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < at))
                .values(last_used_at=at)
            )
