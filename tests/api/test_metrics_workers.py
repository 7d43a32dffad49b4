"""Two uvicorn workers, as `copyloop serve` runs them: `/metrics` from either one counts every
worker's requests, and a revoked key is refused by both within 10 s."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from copyloop.runner import settings_env
from core.broker import free_port, wait_for_port
from core.keys import create_key, hash_key, key_id, revoke_key_id
from core.settings import Settings


def _total(text: str, name: str) -> float:
    """Sum of a metric's samples in Prometheus text (all label sets)."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_metrics_add_up_across_two_workers_and_revocation_reaches_both(
    api_settings: Settings, sessions: sessionmaker[Session], product: Any, tmp_path: Any
) -> None:
    port = free_port()
    settings = api_settings.model_copy(update={"api_port": port, "api_workers": 2})
    env = {**os.environ, **settings_env(settings)}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "counter_999999.db").write_bytes(b"stale")  # a dead run's file
    key = create_key(sessions, "serve")
    auth = {"Authorization": f"Bearer {key}"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "copyloop", "serve"], env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port("127.0.0.1", port, 60)
        served = 0
        for i in range(60):  # a fresh connection each: the kernel spreads them over both workers
            r = httpx.get(
                f"{base}/v1/products/{product.product_id}/variant?i={i}", headers=auth, timeout=10
            )
            assert r.status_code == 200, r.text
            served += 1
        time.sleep(1.5)  # the live values' mirror runs every second
        pids, totals = set(), set()
        for _ in range(12):
            text = httpx.get(f"{base}/metrics", timeout=10).text
            totals.add(_total(text, "copyloop_decisions_total"))
            pids.update(re.findall(r'^copyloop_model_version\{pid="(\d+)"\}', text, re.M))
            assert _total(text, "copyloop_publish_logged_total") >= served
        assert totals == {served}, "each scrape must count both workers' decisions"
        assert len(pids) == 2, f"live gauges should show both workers, got {pids}"

        revoke_key_id(sessions, key_id(hash_key(key)))
        revoked_at = time.monotonic()
        refused_since, refused_in_a_row = None, 0
        while refused_in_a_row < 20:  # 20 fresh connections in a row refused: both workers
            assert time.monotonic() - revoked_at < 30, "a worker keeps serving a revoked key"
            r = httpx.get(f"{base}/v1/products/{product.product_id}/variant", headers=auth)
            if r.status_code != 401:
                refused_since, refused_in_a_row = None, 0
                continue
            refused_since = refused_since or time.monotonic()
            refused_in_a_row += 1
        assert refused_since is not None and refused_since - revoked_at < 10
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert not (tmp_path / "prom" / "counter_999999.db").exists()
