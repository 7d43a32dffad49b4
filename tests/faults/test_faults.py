"""A short run of the fault suite per database (a few rounds, a 3 s broker outage): what CI can
afford of `python -m tests.faults`, which runs the long version.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.__main__ import run_layout

pytestmark = pytest.mark.timeout(900)

DATABASES = ["sqlite"] + (["postgres"] if os.environ.get("COPYLOOP_TEST_DATABASE_URL") else [])


def _run(layout: str, db: str, kinds: list[str], rounds: int, tmp_path: Path) -> None:
    result = run_layout(layout, db, rounds, 11, 3.0, tmp_path, kinds)
    assert result["ok"], "\n".join(result["lines"])
    assert sum(result["injected"].values()) == rounds


@pytest.mark.parametrize("db", DATABASES)
def test_consumer_scheduler_broker_and_snapshot_faults_lose_nothing(
    db: str, tmp_path: Path
) -> None:
    kinds = [
        "kill_consumer",
        "kill_scheduler",
        "broker_outage",
        "snapshot_missing",
        "snapshot_corrupt",
    ]
    _run("parts", db, kinds, 5, tmp_path)


@pytest.mark.parametrize("db", DATABASES)
def test_sigkill_of_the_api_loses_no_acknowledged_decision(db: str, tmp_path: Path) -> None:
    _run("parts", db, ["kill_api"], 3, tmp_path)


@pytest.mark.parametrize("db", DATABASES)
def test_sigkill_of_up_loses_no_acknowledged_decision(db: str, tmp_path: Path) -> None:
    _run("up", db, ["kill_up"], 3, tmp_path)


@pytest.mark.parametrize("db", DATABASES)
def test_poison_costs_one_dead_letter_each_and_nothing_else(db: str, tmp_path: Path) -> None:
    _run("parts", db, ["poison"], 1, tmp_path)
