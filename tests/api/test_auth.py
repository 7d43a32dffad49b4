"""Who may call what: 401 for a missing/unknown/revoked key, 403 for another role, admin all."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from fastapi.security import HTTPBearer
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from api.auth import bearer_key, require
from api.keys import KeyCache
from core.keys import ROLES, create_key, hash_key, revoke_key
from core.ledger.tables import ApiKey

ALLOWED = {
    ("GET", "/v1/products/{pid}/variant"): {"serve", "storefront", "admin"},
    ("POST", "/v1/decisions"): {"serve", "storefront", "admin"},
    ("POST", "/v1/events"): {"events", "admin"},
    ("GET", "/v1/reports/uplift"): {"analyst", "admin"},
    ("GET", "/reports"): {"analyst", "admin"},
    ("POST", "/v1/products"): {"admin"},
    ("GET", "/v1/products/{pid}"): {"analyst", "admin"},
}


def _call(client: TestClient, method: str, path: str, pid: str, headers: dict[str, str]) -> Any:
    bodies: dict[str, Any] = {
        "/v1/decisions": {"product_id": pid, "context": {"device": "mobile"}},
        "/v1/events": {"event_id": "e-auth", "decision_id": "d-auth", "type": "click"},
        "/v1/products": {
            "product_id": "kettle-9",
            "title": "Kettle",
            "description": "A 1.7 l steel kettle.",
        },
    }
    return client.request(method, path.format(pid=pid), json=bodies.get(path), headers=headers)


def test_role_matrix(client: TestClient, product: Any, headers: dict[str, dict[str, str]]) -> None:
    wrong = []
    for (method, path), allowed in ALLOWED.items():
        for role in ROLES:
            r = _call(client, method, path, product.product_id, headers[role])
            expected_ok = role in allowed
            if expected_ok != (r.status_code < 300) or (not expected_ok and r.status_code != 403):
                wrong.append((method, path, role, r.status_code, r.text[:200]))
            if not expected_ok:
                error = r.json()["error"]
                if role == "storefront" and path == "/v1/events":
                    # Admitted by role, refused for the event's missing decision token.
                    assert error["code"] == "invalid_token"
                    assert error["details"] == [{"index": 0, "field": "token", "reason": "missing"}]
                    continue
                assert error["code"] == "forbidden"
                assert error["details"]["role"] == role
    assert wrong == []


def test_missing_unknown_or_malformed_key_is_401(client: TestClient, product: Any) -> None:
    for (method, path), _ in ALLOWED.items():
        for headers in (
            {},
            {"Authorization": "Bearer cl_not-a-key"},
            {"Authorization": "Basic dXNlcjpwYXNz"},
        ):
            r = _call(client, method, path, product.product_id, headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            body = r.json()
            assert set(body) == {"error"}
            assert body["error"]["code"] == "unauthorized"
            assert body["error"]["message"]
            assert r.headers["www-authenticate"] == "Bearer"


def test_revoked_key_is_401(
    client: TestClient, sessions: sessionmaker[Session], product: Any
) -> None:
    key = create_key(sessions, "serve")
    assert revoke_key(sessions, key)
    r = client.get(
        f"/v1/products/{product.product_id}/variant", headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 401


def test_health_metrics_and_docs_need_no_key(client: TestClient) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path


def test_only_the_hash_is_stored(sessions: sessionmaker[Session]) -> None:
    key = create_key(sessions, "analyst", label="bi")
    assert key.startswith("cl_") and len(key) > 40
    with sessions() as s:
        rows = s.scalars(select(ApiKey)).all()
    assert [(r.key_hash, r.role, r.label) for r in rows] == [(hash_key(key), "analyst", "bi")]
    assert all(key not in (r.key_hash + r.label) for r in rows)


def test_cache_answers_without_the_database_until_its_ttl(
    sessions: sessionmaker[Session],
) -> None:
    cache = KeyCache(sessions, ttl_s=60.0)
    key = create_key(sessions, "serve")
    assert cache.cached(hash_key(key)) == (False, None)
    assert cache.lookup(hash_key(key)) == "serve"
    revoke_key(sessions, key)
    assert cache.cached(hash_key(key)) == (True, "serve")  # within the TTL
    assert cache.lookup(hash_key(key)) is None  # a fresh read sees the revocation


class _HeldKeyReads:
    """Counts the ledger's reads of `api_keys` and holds each one until `release()`: a real
    query on the real database, paused so that concurrent callers meet it in flight."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.engine = sessions.kw["bind"]
        self.count = 0
        self.gate = threading.Event()
        event.listen(self.engine, "before_cursor_execute", self._before)

    def _before(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM api_keys" in statement:
            self.count += 1
            assert self.gate.wait(10)

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        event.remove(self.engine, "before_cursor_execute", self._before)


def test_callers_missing_a_key_share_one_read(sessions: sessionmaker[Session]) -> None:
    key_hash = hash_key(create_key(sessions, "storefront"))
    cache = KeyCache(sessions, ttl_s=60.0)
    reads = _HeldKeyReads(sessions)
    try:
        futures = [cache.read(key_hash) for _ in range(50)]  # the first read is held
        assert all(f is futures[0] for f in futures)
        reads.release()
        assert futures[0].result(10) == "storefront"
        assert reads.count == 1
        assert cache.cached(key_hash) == (True, "storefront")
    finally:
        reads.close()
        cache.close()


def test_a_key_in_use_is_read_again_in_the_background(sessions: sessionmaker[Session]) -> None:
    key = create_key(sessions, "serve")
    key_hash = hash_key(key)
    cache = KeyCache(sessions, ttl_s=60.0, refresh_ahead=0.0)  # every hit refreshes
    try:
        assert cache.read(key_hash).result(10) == "serve"
        revoke_key(sessions, key)
        reads = _HeldKeyReads(sessions)
        try:
            assert cache.cached(key_hash) == (True, "serve")  # and starts a read, held
            deadline = time.monotonic() + 10
            while reads.count == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            # Hits keep answering from the cache, and start no other read, while it is held.
            assert [cache.cached(key_hash) for _ in range(20)] == [(True, "serve")] * 20
            assert reads.count == 1
            reads.release()
            deadline = time.monotonic() + 10
            while cache.cached(key_hash) != (True, None) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert cache.cached(key_hash) == (True, None)  # the refresh saw the revocation
        finally:
            reads.close()
    finally:
        cache.close()


def test_bad_role_messages() -> None:
    with pytest.raises(
        ValueError, match=r"role must be one of serve, events, storefront, analyst, admin"
    ):
        create_key(None, "root")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown roles \['root'\]"):
        require("root")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer cl_abc",
        "bearer cl_abc",
        "BEARER  cl_abc  ",
        "Bearer",
        "Bearer ",
        "Basic cl_abc",
        "cl_abc",
        "Bearer a b",
    ],
)
def test_the_hot_routes_bearer_read_equals_fastapis(header: str | None) -> None:
    headers = [] if header is None else [(b"authorization", header.encode())]
    request = Request({"type": "http", "headers": headers})
    credentials = asyncio.run(HTTPBearer(auto_error=False)(request))
    assert bearer_key(header) == (credentials and credentials.credentials)
