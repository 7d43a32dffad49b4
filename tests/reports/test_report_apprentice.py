"""The report's `apprentice` block on apprentice-mode logs whose truth is known (SQLite and
PostgreSQL): the estimate of live mode and the uplift of switching cover their true values, only
decisions logged in apprentice mode count, and JSON, CSV and HTML carry it."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session, sessionmaker

from core.ledger import ServingMode
from core.settings import Settings
from reports import to_csv, uplift_report
from reports.html import to_html
from reports.synthetic import CLICK_RATE, LATE_SHARE, fill

EXPLORE, HOLDOUT, N = 0.2, 0.1, 8000


def true_ctr(control_share: float) -> float:
    """CTR of serving the control with `control_share`, else the synthetic bandit (a softmax
    over the true click rates, per device; devices equally likely); late clicks never count."""
    total = 0.0
    for dev in (0, 1):
        b = np.exp(CLICK_RATE[:, dev] * 40.0)
        b /= b.sum()
        total += 0.5 * (
            control_share * CLICK_RATE[0, dev] + (1 - control_share) * b @ CLICK_RATE[:, dev]
        )
    return total * (1 - LATE_SHARE)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(holdout=HOLDOUT)


def test_apprentice_block_estimates_switching_to_live(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    start = 1_700_000_000.0
    span = 4 * 3600.0
    fill(engine, N, n_products=6, seed=5, start=start, span_s=span, holdout=1 - EXPLORE)
    switch = start + span / 4  # the first quarter was logged before apprentice mode was set
    with engine.begin() as c:
        c.execute(
            insert(ServingMode),
            [
                {"mode": "live", "explore": 0.05, "set_at": start - 10},
                {"mode": "apprentice", "explore": EXPLORE, "set_at": switch},
            ],
        )

    report = uplift_report(sessions, settings, ope_sample=N, greedy=False)

    block = report["apprentice"]
    assert block["available"] and block["mode"] == "apprentice" and block["explore"] == EXPLORE
    assert 0.7 * N < block["decisions"] < 0.8 * N  # three quarters of the span
    assert abs(block["exploring"] - EXPLORE * block["decisions"]) < 4 * np.sqrt(
        block["decisions"] * EXPLORE * (1 - EXPLORE)
    )
    ctr = block["metrics"]["ctr"]
    live, gain = ctr["live"]["dr"], ctr["uplift"]
    assert live["ci_low"] <= true_ctr(HOLDOUT) <= live["ci_high"], (live, true_ctr(HOLDOUT))
    truth_gain = true_ctr(HOLDOUT) - true_ctr(1 - EXPLORE)
    assert gain["ci_low"] <= truth_gain <= gain["ci_high"], (gain, truth_gain)
    assert gain["n"] == block["decisions"]
    json.dumps(report, allow_nan=False)
    rows = [line for line in to_csv(report).splitlines() if line.startswith("apprentice")]
    assert any("ctr" in line for line in rows), rows
    page = to_html(report)
    assert 'id="apprentice"' in page and f"{block['decisions']}" in page


def test_live_ledger_has_no_apprentice_estimate(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    fill(engine, 500, n_products=3, seed=2, holdout=HOLDOUT)

    block = uplift_report(sessions, settings, ope_sample=500, greedy=False)["apprentice"]

    assert block == {
        "mode": "live",
        "explore": None,
        "live_holdout": HOLDOUT,
        "estimator": "dr",
        "available": False,
        "decisions": 0,
        "exploring": 0,
        "note": "no apprentice-mode decisions in the report's sample",
    }
