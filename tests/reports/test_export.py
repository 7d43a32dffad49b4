"""`copyloop export --format dsjson`: closed decisions in VW's DSJson, read back by VW itself."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from vowpalwabbit import pyvw

from consumer.join import close_expired_windows
from core.ledger.tables import Decision, Reward
from core.settings import Settings
from reports.export import UnknownFormatError, export
from reports.synthetic import fill


def run(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COPYLOOP_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "copyloop", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


N = 400


@pytest.fixture
def closed(
    engine: Engine, sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> int:
    """N synthetic decisions, their windows closed by the consumer's own closer."""
    fill(engine, N, n_products=4, seed=5, span_s=3600.0)
    settings = make_settings()
    total = 0
    while batch := close_expired_windows(sessions, settings, time.time()):
        total += len(batch)
    assert total == N
    return total


def test_export_is_dsjson_that_vw_parses_and_learns(
    closed: int, database_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    out = tmp_path / "log.dsjson"
    r = run(database_url, "export", "--format", "dsjson", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"{N} decisions written" in r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == N
    first = json.loads(lines[0])
    with sessions() as s:
        d = s.get(Decision, first["EventId"])
        reward = s.scalar(select(Reward.reward).where(Reward.decision_id == d.decision_id))
    chosen = d.actions.index(d.variant_id)
    assert first["_labelIndex"] == chosen and first["_label_Action"] == chosen + 1
    assert first["_label_probability"] == d.probability
    assert first["_label_cost"] == -reward
    assert first["a"][0] == chosen + 1 and sorted(first["a"]) == list(range(1, len(d.actions) + 1))
    assert first["p"][0] == d.probability and sum(first["p"]) == pytest.approx(1.0)
    assert len(first["c"]["_multi"]) == len(d.actions)
    assert first["c"]["U"] == {f"{k}={v}": 1 for k, v in sorted(d.context.items())}

    # VW's own DSJson parser: every line becomes a shared example plus one per action, the
    # label sits on the chosen action.
    ws = pyvw.Workspace("--cb_explore_adf --dsjson --quiet -q UA")
    try:
        for line in lines[:50]:
            examples = ws.parse(line, labelType=pyvw.LabelType.CONTEXTUAL_BANDIT)
            assert len(examples) == 1 + len(json.loads(line)["a"])
            ws.learn(examples)
            ws.finish_example(examples)
        assert ws.get_weighted_examples() == 50
    finally:
        ws.finish()
    # And VW reading the file as its data source learns from every decision.
    ws = pyvw.Workspace(f"--cb_explore_adf --dsjson --quiet -q UA -d {out}")
    try:
        ws.run_parser()
        assert ws.get_weighted_examples() == N
        assert ws.get_sum_loss() < 0  # costs are −reward: some decisions were rewarded
    finally:
        ws.finish()


def test_export_filters_and_format_errors(
    closed: int, database_url: str, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s:
        ts = sorted(s.scalars(select(Decision.ts)).all())
    mid = ts[N // 2]
    buf = io.StringIO()
    assert export(sessions, buf, since=mid) == N - N // 2
    assert all(json.loads(x)["Timestamp"] for x in buf.getvalue().splitlines())
    r = run(database_url, "export", "--until", str(mid))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == N // 2
    r = run(database_url, "export", "--format", "csv")
    assert r.returncode == 2 and "--format" in r.stderr
    with pytest.raises(UnknownFormatError, match=r"^format must be one of dsjson, got 'csv'$"):
        export(sessions, io.StringIO(), "csv")


def test_open_decisions_are_not_exported(engine: Engine, sessions: sessionmaker[Session]) -> None:
    fill(engine, 20, n_products=2, seed=1, start=time.time())  # windows still open
    assert export(sessions, io.StringIO()) == 0
