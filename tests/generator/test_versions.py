"""Generator versions on a real ledger: the newest shipped one is current, rollback goes back one
or to a named version, and refuses with exact messages when it has nowhere to go."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy.orm import Session, sessionmaker

from generator.versions import (
    VersionError,
    base_version_name,
    ensure_base,
    list_versions,
    newest_shipped,
    register,
    reject,
    rollback,
    ship,
)


def test_newest_shipped_is_current_and_rollback_steps_back(
    sessions: sessionmaker[Session],
) -> None:
    assert newest_shipped(sessions) is None
    with pytest.raises(VersionError, match=r"^no shipped generator version to roll back$"):
        rollback(sessions)
    base = ensure_base(sessions, "var/tiny", now=100.0)
    assert base.version == base_version_name("var/tiny") and base.adapter_path is None
    assert ensure_base(sessions, "var/tiny", now=999.0) == base  # idempotent
    v1 = register(
        sessions,
        version="hf-1",
        base_model="var/tiny",
        adapter_path="a/1",
        status="shipped",
        parent=base.version,
        now=200.0,
    )
    register(sessions, version="hf-2", base_model="var/tiny", status="rejected", now=300.0)
    v3 = register(sessions, version="hf-3", base_model="var/tiny", status="shipped", now=400.0)
    assert newest_shipped(sessions) == v3
    assert [v.version for v in list_versions(sessions)] == [base.version, "hf-1", "hf-2", "hf-3"]

    assert rollback(sessions).version == "hf-1"
    assert newest_shipped(sessions) == v1
    statuses = {v.version: v.status for v in list_versions(sessions)}
    assert statuses == {
        base.version: "shipped",
        "hf-1": "shipped",
        "hf-2": "rejected",
        "hf-3": "rolled_back",
    }

    # to a named version: re-shipped now, the one that was current is rolled back
    back = rollback(sessions, to="hf-3", now=500.0)
    assert back.version == "hf-3" and back.status == "shipped" and back.shipped_at == 500.0
    assert {v.version: v.status for v in list_versions(sessions)}["hf-1"] == "rolled_back"
    assert rollback(sessions).version == base.version


def test_rollback_refusals_change_nothing(sessions: sessionmaker[Session]) -> None:
    base = ensure_base(sessions, "m", now=1.0)
    with pytest.raises(
        VersionError,
        match=rf"^no earlier shipped generator version to roll back to from '{base.version}'$",
    ):
        rollback(sessions)
    with pytest.raises(VersionError, match=r"^unknown generator version 'nope'$"):
        rollback(sessions, to="nope")
    with pytest.raises(VersionError, match=rf"^generator version '{base.version}' is already"):
        rollback(sessions, to=base.version)
    assert newest_shipped(sessions) == base


def test_ship_reject_and_register_checks(sessions: sessionmaker[Session]) -> None:
    register(sessions, version="hf-a", base_model="m", now=1.0)
    with pytest.raises(VersionError, match=r"^generator version 'hf-a' already exists$"):
        register(sessions, version="hf-a", base_model="m")
    with pytest.raises(ValueError, match=r"^status must be one of candidate, shipped, rejected, "):
        register(sessions, version="hf-b", base_model="m", status="live")
    assert ship(sessions, "hf-a", now=5.0).shipped_at == 5.0
    assert newest_shipped(sessions).version == "hf-a"  # type: ignore[union-attr]
    rejected = reject(sessions, "hf-a", "bad")
    assert rejected.status == "rejected" and rejected.gate_reason == "bad"
    assert newest_shipped(sessions) is None


def test_cli_lists_versions_and_rolls_back(
    database_url: str, sessions: sessionmaker[Session]
) -> None:
    base = ensure_base(sessions, "var/m", now=1.0)
    register(
        sessions,
        version="hf-x",
        base_model="var/m",
        status="shipped",
        now=2.0,
        adapter_path="var/generator/hf-x",
        gate_reason="shipped (held-out NLL …)",
    )
    env = {**os.environ, "COPYLOOP_DATABASE_URL": database_url, "COPYLOOP_GENERATOR_MODEL": "var/m"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "copyloop", "generator", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    listed = cli("versions")
    assert listed.returncode == 0, listed.stderr
    assert base.version in listed.stdout and "hf-x" in listed.stdout
    assert "* " in listed.stdout.split("hf-x")[0].splitlines()[-1]  # hf-x is current
    rolled = cli("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout.strip() == f"current generator version: {base.version}"
    assert newest_shipped(sessions) == ensure_base(sessions, "var/m")
    again = cli("rollback", "--to", "hf-x")
    assert again.returncode == 0 and again.stdout.strip() == "current generator version: hf-x"
    bad = cli("rollback", "--to", "nope")
    assert bad.returncode == 2 and "unknown generator version 'nope'" in bad.stderr
