"""`copyloop keys list|revoke` from the outside, and the API's side of them: last-used times
written in batches, a revoked key refused within 10 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.keys import KeyCache
from core.keys import create_key, hash_key, key_id, record_key_use
from core.ledger.tables import ApiKey
from core.settings import Settings


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "copyloop", "keys", *args],
        env={**os.environ, "COPYLOOP_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _listed(database_url: str) -> dict[str, dict[str, Any]]:
    out = _cli(database_url, "list", "--json")
    assert out.returncode == 0, out.stderr
    return {row["key_id"]: row for row in map(json.loads, out.stdout.splitlines())}


def test_list_shows_ids_roles_and_last_use_never_the_key(
    database_url: str, api_settings: Settings, product: Any
) -> None:
    made = _cli(database_url, "create", "--role", "serve")
    assert made.returncode == 0, made.stderr
    used = made.stdout.splitlines()[-1]
    idle = _cli(database_url, "create", "--role", "analyst").stdout.splitlines()[-1]
    before = time.time()
    with TestClient(create_app(api_settings)) as client:
        r = client.get(
            f"/v1/products/{product.product_id}/variant",
            headers={"Authorization": f"Bearer {used}"},
        )
        assert r.status_code == 200, r.text
    # The app's shut-down writes the last-used times it had not yet written.
    listed = _listed(database_url)
    assert set(listed) == {key_id(hash_key(used)), key_id(hash_key(idle))}
    row = listed[key_id(hash_key(used))]
    assert row["role"] == "serve" and not row["revoked"]
    assert before <= row["last_used_at"] <= time.time()
    assert listed[key_id(hash_key(idle))]["last_used_at"] is None
    table = _cli(database_url, "list")
    assert table.returncode == 0
    for text in (table.stdout, json.dumps(listed)):
        assert used not in text and idle not in text and hash_key(used) not in text
    assert key_id(hash_key(used)) in table.stdout and "never" in table.stdout


def test_revoked_key_is_refused_within_10_s(
    database_url: str, api_settings: Settings, product: Any
) -> None:
    key = _cli(database_url, "create", "--role", "serve").stdout.splitlines()[-1]
    path = f"/v1/products/{product.product_id}/variant"
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(api_settings)) as client:
        assert client.get(path, headers=auth).status_code == 200  # now cached
        out = _cli(database_url, "revoke", key_id(hash_key(key)))
        assert out.returncode == 0, out.stderr
        assert f"revoked {key_id(hash_key(key))} (serve)" in out.stdout
        revoked_at = time.monotonic()
        while client.get(path, headers=auth).status_code == 200:
            assert time.monotonic() - revoked_at < 10, "revoked key still served after 10 s"
            time.sleep(0.2)
        assert client.get(path, headers=auth).json()["error"]["code"] == "unauthorized"
    assert _listed(database_url)[key_id(hash_key(key))]["revoked"] is True


def test_revoke_bad_ids_exit_2_and_change_nothing(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    key = create_key(sessions, "events")
    for bad, says in (
        ("0" * 12, "no key has id"),
        ("abc", "at least 12 hex digits"),
        ("zz" * 8, "at least 12 hex digits"),
    ):
        out = _cli(database_url, "revoke", bad)
        assert out.returncode == 2, (bad, out.stderr)
        assert says in out.stderr
    with sessions() as s:
        assert s.scalar(select(ApiKey.revoked).where(ApiKey.key_hash == hash_key(key))) is False


def test_uses_are_written_in_one_batch_and_never_backwards(
    sessions: sessionmaker[Session],
) -> None:
    a, b = create_key(sessions, "serve"), create_key(sessions, "events")
    cache = KeyCache(sessions, last_used_every_s=3600)
    assert cache.lookup(hash_key(a)) == "serve"
    for _ in range(1000):  # the hot path: dict stores, no database writes
        assert cache.cached(hash_key(a)) == (True, "serve")
    with sessions() as s:
        assert s.scalar(select(ApiKey.last_used_at).where(ApiKey.key_hash == hash_key(a))) is None
    cache.flush_last_used()
    record_key_use(sessions, {hash_key(a): 1.0, hash_key(b): 2.0})  # a stale flush elsewhere
    with sessions() as s:
        times = {h: t for h, t in s.execute(select(ApiKey.key_hash, ApiKey.last_used_at))}
    assert times[hash_key(a)] is not None and times[hash_key(a)] > 1.0
    assert times[hash_key(b)] == 2.0
