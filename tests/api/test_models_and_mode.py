"""`GET /v1/models` and the serving mode as a running API follows it: apprentice mode serves the
control copy to all but the exploring share, with the mixture's exact probabilities."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from bandit import Policy
from core.ledger import model_versions, modes, snapshots
from core.settings import Settings


def _save_model(sessions: sessionmaker[Session], settings: Settings) -> int:
    policy = Policy(settings.vw_args)
    try:
        return snapshots.save(sessions, policy.save(), last_seq=0, vw_args=settings.vw_args)
    finally:
        policy.close()


def test_models_lists_versions_for_analysts_only(
    client: TestClient,
    api_settings: Settings,
    sessions: sessionmaker[Session],
    headers: dict[str, dict[str, str]],
) -> None:
    _save_model(sessions, api_settings)
    _save_model(sessions, api_settings)

    r = client.get("/v1/models", headers=headers["analyst"])

    assert r.status_code == 200, r.text
    assert r.json() == {"versions": [v.to_json() for v in model_versions.list_versions(sessions)]}
    assert [v["version"] for v in r.json()["versions"]] == [2, 1]
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=headers["serve"]).status_code == 403


def _decide(client: TestClient, product: Any, headers: dict[str, str]) -> dict[str, Any]:
    r = client.post(
        "/v1/decisions", json={"product_id": product.product_id, "context": {}}, headers=headers
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_every_decision_follows_the_stored_mode_within_seconds(
    api_settings: Settings,
    sessions: sessionmaker[Session],
    product: Any,
    headers: dict[str, dict[str, str]],
) -> None:
    settings = api_settings.model_copy(update={"holdout": 0.1, "seed": 3, "model_reload_s": 0.2})
    _save_model(sessions, settings)  # untrained: the bandit's pmf is uniform over the 3 variants
    k = len(product.variant_ids)
    live = {"control": 0.1 + 0.9 / k, "other": 0.9 / k}
    apprentice = {"control": 0.95 + 0.05 / k, "other": 0.05 / k}
    with TestClient(create_app(settings)) as client:
        first = _decide(client, product, headers["serve"])
        assert first["model_version"] == 1
        modes.set_mode(sessions, modes.Mode("apprentice", 0.05))
        switched_at = time.monotonic()
        while True:  # follows within 5 s (the reloader looks every model_reload_s)
            body = _decide(client, product, headers["serve"])
            if body["variant_id"] == product.control_id and body["probability"] > 0.9:
                break
            assert time.monotonic() - switched_at < 5.0, "apprentice mode not followed in 5 s"
            time.sleep(0.05)
        bodies = [_decide(client, product, headers["serve"]) for _ in range(400)]
        modes.set_mode(sessions, modes.Mode("live", 0.05))
        time.sleep(1.0)
        back = [_decide(client, product, headers["serve"]) for _ in range(50)]

    control = [b for b in bodies if b["policy"] == "control"]
    assert 0.9 * 400 < len(control) < 0.99 * 400  # 0.95 expected; sd 4.4 decisions
    for b in bodies:  # the logged probability is the mixture's, exactly
        kind = "control" if b["variant_id"] == product.control_id else "other"
        assert b["probability"] == pytest.approx(apprentice[kind], abs=1e-12), b
        assert b["policy"] == "control" or kind == "other" or b["probability"] > 0.95
    for b in back:
        kind = "control" if b["variant_id"] == product.control_id else "other"
        assert b["probability"] == pytest.approx(live[kind], abs=1e-12), b


def test_mode_cli_prints_and_stores_the_mode(database_url: str) -> None:
    initial = {**os.environ, "COPYLOOP_DATABASE_URL": database_url, "COPYLOOP_MODE": "apprentice"}
    env = {
        **os.environ,
        "COPYLOOP_DATABASE_URL": database_url,
        "COPYLOOP_APPRENTICE_EXPLORE": "0.1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }

    def mode(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "copyloop", "mode", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    from_settings = subprocess.run(
        [sys.executable, "-m", "copyloop", "mode"],
        env={**initial, "PYTHONPATH": env["PYTHONPATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert from_settings.stdout == "apprentice\n"  # COPYLOOP_MODE: the initial value
    first = mode()
    assert (first.returncode, first.stdout) == (0, "live\n")
    assert "from the settings" in first.stderr
    assert mode("apprentice").stdout == "apprentice\n"
    now = mode()
    assert now.stdout == "apprentice\n" and "0.1 of decisions explore" in now.stderr
    bad = mode("shadow")
    assert bad.returncode == 2 and "shadow" in bad.stderr


def test_mode_values_are_validated() -> None:
    with pytest.raises(ValueError, match="explore must be in \\(0, 1\\], got 0.0"):
        modes.Mode("apprentice", 0.0)
    with pytest.raises(ValueError, match="mode must be one of live, apprentice, got 'off'"):
        modes.Mode("off", 0.05)
