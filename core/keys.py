"""API keys in the ledger: create, revoke, hash. The API's cache and role checks (`api.auth`)
and the CLI (`copyloop keys …`) both stand on this.

A key is `cl_` + `secrets.token_urlsafe(32)`; the ledger stores only its SHA-256 hex digest, so a
leaked database does not leak usable keys. Roles: `serve`, `events`, `storefront` (publishable:
safe in a web page; decisions, activations, and events that carry their decision's token),
`analyst`, `admin`; `admin` may call every route.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import ApiKey

ROLES = ("serve", "events", "storefront", "analyst", "admin")
KEY_PREFIX = "cl_"


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
