"""The report's fixed-size samples, read and converted fast without changing what they hold
(SQLite and PostgreSQL): the shadow sample is the same whichever table drives its read, the
sample's values are converted once per distinct value without mixing values that render
differently, the reward model's design numbers features as a row-by-row pass does, and the
report leaves the cyclic garbage collector as it found it."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence

import numpy as np
import orjson
import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import Decision, ShadowScore
from core.settings import Settings
from reports import uplift_report
from reports.ope import Interned
from reports.queries import SHADOW_DRIVE_FACTOR, Filters, report_reader
from reports.reward_model import Design
from reports.synthetic import fill


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def newest_scored(sessions: sessionmaker[Session], limit: int) -> list[str]:
    """The `limit` newest randomized, activated decisions with shadow scores, read plainly."""
    with sessions() as s:
        rows = s.execute(
            select(Decision.decision_id, Decision.ts)
            .join(ShadowScore, ShadowScore.decision_id == Decision.decision_id)
            .where(Decision.activated.is_(True), Decision.policy.in_(("bandit", "control")))
        ).all()
    rows.sort(key=lambda r: (-r.ts, r.decision_id))
    return [r.decision_id for r in rows[:limit]]


def shadow_sample(sessions: sessionmaker[Session], settings: Settings, limit: int) -> list[str]:
    with report_reader(sessions, settings, Filters()) as q:
        return [r.decision_id for r in q.shadow_logged(limit)]


def test_shadow_sample_is_the_same_whichever_table_drives_the_read(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    fill(engine, 600, n_products=6, seed=3)
    assert shadow_sample(sessions, settings, 50) == []  # nothing scored: no rows
    with sessions() as s:
        ids = s.scalars(select(Decision.decision_id).order_by(Decision.ts)).all()
        pmfs = orjson.dumps({"--epsilon 0.1": [0.5, 0.5]}).decode()
        s.execute(insert(ShadowScore), [{"decision_id": d, "pmfs": pmfs} for d in ids[::3]])
        s.commit()
    scored = len(ids[::3])
    # 200 scored: a limit of 50 (at most 250 scored) drives the read from shadow_scores, a
    # limit of 30 (at most 150) walks the decisions newest first; both are the plain answer.
    for limit in (50, 30, 1000):
        assert (scored <= SHADOW_DRIVE_FACTOR * limit) == (limit != 30)
        assert shadow_sample(sessions, settings, limit) == newest_scored(sessions, limit)


def test_interned_conversions_keep_values_that_render_differently_apart() -> None:
    interned = Interned()
    contexts: list[dict[str, object]] = [
        {"x": 1},
        {"x": True},
        {"x": 1.0},
        {"x": 0.0},
        {"x": -0.0},
        {"x": "1"},
        {"x": [1, 2]},
        {"x": 1},
        {"x": None, "d": "m"},
    ]
    tokens = [interned.context(c) for c in contexts]
    assert tokens == [
        ("x=1",),
        ("x=True",),
        ("x=1.0",),
        ("x=0.0",),
        ("x=-0.0",),
        ("x=1",),
        ("x=[1, 2]",),
        ("x=1",),
        ("d=m",),
    ]
    assert interned.context(None) == () and interned.context(["x"]) == ()
    items = [interned.context_items(c) for c in contexts[:5]]
    assert items == [(("x", "1"),), (("x", "True"),), (("x", "1.0"),), (("x", "0.0"),)] + [
        (("x", "-0.0"),)
    ]
    assert [interned.actions(a) for a in (["a", 1], ["a", True], ["a", 1.0], None)] == [
        ("a", "1"),
        ("a", "True"),
        ("a", "1.0"),
        (),
    ]
    assert interned.actions(["v1", "v2"]) is interned.actions(("v1", "v2"))  # converted once


def row_by_row(
    contexts: Sequence[tuple[str, ...]], actions: Sequence[Sequence[str]], groups: dict[str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The design's id arrays numbered one row at a time (what `Design` did before it numbered
    each distinct context and action set once)."""
    n, k = len(contexts), max(len(a) for a in actions)
    t_max = max(len(c) for c in contexts)
    tokens: dict[str, int] = {}
    acts: dict[str, int] = {}
    grps: dict[str, int] = {}
    tok = np.full((n, max(t_max, 1)), -1, dtype=np.int64)
    act = np.full((n, k), -1, dtype=np.int64)
    grp = np.full((n, k), -1, dtype=np.int64)
    for i, (ctx, row) in enumerate(zip(contexts, actions, strict=True)):
        for j, token in enumerate(ctx):
            tok[i, j] = tokens.setdefault(token, len(tokens))
        for j, action in enumerate(row):
            act[i, j] = acts.setdefault(action, len(acts))
            grp[i, j] = grps.setdefault(groups.get(action, ""), len(grps))
    return tok, act, grp


def test_design_numbers_features_as_a_row_by_row_pass() -> None:
    rng = np.random.default_rng(5)
    pool_ctx = [("device=m", "seg=new"), ("device=d",), (), ("device=d", "seg=old", "ref=ad")]
    pool_acts = [("a", "b", "c"), ("c", "d"), ("e", "a", "f", "b"), ("g",)]
    contexts = [pool_ctx[i] for i in rng.integers(len(pool_ctx), size=300)]
    actions = [list(pool_acts[i]) for i in rng.integers(len(pool_acts), size=300)]
    groups = {"a": "concise", "b": "story", "d": "concise", "g": "bullets"}
    design = Design(contexts, actions, groups)
    tok, act, grp = row_by_row(contexts, actions, groups)
    assert np.array_equal(design.tok, tok)
    assert np.array_equal(design.act, act)
    assert np.array_equal(design.grp, grp)
    assert (design.n_tokens, design.n_actions, design.n_groups) == (5, 7, 4)


def test_the_report_leaves_the_cyclic_collector_as_it_found_it(
    sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert gc.isenabled()
    uplift_report(sessions, settings)
    assert gc.isenabled()
    gc.disable()
    try:
        uplift_report(sessions, settings)
        assert not gc.isenabled()
    finally:
        gc.enable()
