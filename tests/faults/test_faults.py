"""A short run of the fault suite per database (a few rounds, a 3 s broker outage): what CI can
afford of `python -m tests.faults`, which runs the long version.

Two scenarios are marked xfail (not strict) because they fail on main for work another branch
is landing, verified by running them: SIGKILL of the API (or of `up`) loses decisions that were
acknowledged but still waited in the publisher's in-memory queue (the durable decision log fixes
it), and a deeply nested JSON message crashes the consumer in a loop instead of costing one dead
letter (poison handling fixes it). Remove the marks when those land.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults.__main__ import run_layout

pytestmark = pytest.mark.timeout(900)

DATABASES = ["sqlite"] + (["postgres"] if os.environ.get("COPYLOOP_TEST_DATABASE_URL") else [])

DURABILITY = pytest.mark.xfail(
    strict=False,
    reason="on main an acknowledged decision waits in the publisher's memory queue (~50 ms) "
    "before it is durable: SIGKILL of the API or of `up` loses it (seen on main: 3 of 81 "
    "with 3 API kills, 2 of 27 with 3 `up` kills); the durable decision log (branch "
    "`durable`) fixes it",
)
POISON = pytest.mark.xfail(
    strict=False,
    reason="on main a 2000-level JSON list raises RecursionError in the consumer, which exits "
    "and restarts into the same message (seen: 0 of 10 dead letters, consumer crash loop); "
    "poison handling (branch `durable`) fixes it",
)


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


@DURABILITY
@pytest.mark.parametrize("db", DATABASES)
def test_sigkill_of_the_api_loses_no_acknowledged_decision(db: str, tmp_path: Path) -> None:
    _run("parts", db, ["kill_api"], 3, tmp_path)


@DURABILITY
@pytest.mark.parametrize("db", DATABASES)
def test_sigkill_of_up_loses_no_acknowledged_decision(db: str, tmp_path: Path) -> None:
    _run("up", db, ["kill_up"], 3, tmp_path)


@POISON
@pytest.mark.parametrize("db", DATABASES)
def test_poison_costs_one_dead_letter_each_and_nothing_else(db: str, tmp_path: Path) -> None:
    _run("parts", db, ["poison"], 1, tmp_path)
