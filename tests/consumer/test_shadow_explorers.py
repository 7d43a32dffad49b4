"""Shadow explorers learn beside the live model: the learner records what each would have
served before learning each decision (idempotently), and the report's `ope.shadow` estimates each
from those records beside the live policy, in JSON, CSV and HTML."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

from consumer.join import ingest
from consumer.learner import Learner
from core.ledger import Decision, ShadowScore
from reports import to_csv, uplift_report
from reports.html import to_html

T0 = 1_767_000_000.0
SHADOWS = "--epsilon 1.0; --squarecb --gamma_scale 10"


@pytest.fixture
def settings(make_settings):
    return make_settings(
        reward_window_s=1.0,
        close_grace_s=0.5,
        clock_skew_s=1.0,
        snapshot_every_n=10_000,
        shadow_explorers=SHADOWS,
        bandit_new_arm_exposure=0,  # no fair trial: `--epsilon 1.0` is then exactly uniform
        holdout=0.1,
    )


def produce(sessions, catalog, make_decision, make_event, n, start=0):
    """`n` uniformly logged decisions; the second variant is clicked with 0.5, others 0.1."""
    rng = np.random.default_rng(start)
    products = sorted(catalog)
    decisions, events = [], []
    for i in range(start, start + n):
        pid = products[i % len(products)]
        actions = tuple(catalog[pid])
        chosen = int(rng.integers(len(actions)))
        ts = T0 + i * 0.001
        decisions.append(make_decision(f"d{i:05d}", ts, pid, actions, chosen))
        if rng.random() < (0.5 if chosen == 1 else 0.1):
            events.append(make_event(f"e{i}", f"d{i:05d}", "click", ts + 0.1))
    ingest(sessions, decisions, events)


def test_shadows_are_scored_before_learning_and_estimated_in_the_report(
    sessions, settings, seed_catalog, make_decision, make_event
):
    assert settings.shadow_explorers == ["--epsilon 1.0", "--squarecb --gamma_scale 10"]
    catalog = seed_catalog(products=3, variants=3)
    learner = Learner(sessions, settings, close_limit=200)
    learner.catch_up()
    produce(sessions, catalog, make_decision, make_event, 900)
    while learner.close_and_learn(T0 + 100):
        pass
    learner.close()  # no snapshot since version 1: a restart replays all 900

    with sessions() as s:
        scores = {r.decision_id: json.loads(r.pmfs) for r in s.scalars(select(ShadowScore))}
    assert len(scores) == 900
    for pmfs in scores.values():
        assert set(pmfs) == set(settings.shadow_explorers)
        assert pmfs["--epsilon 1.0"] == pytest.approx([0.1 + 0.3, 0.3, 0.3], abs=1e-12)
        greedy = pmfs["--squarecb --gamma_scale 10"]
        assert sum(greedy) == pytest.approx(1.0) and greedy[0] >= 0.1
    late = [scores[f"d{i:05d}"]["--squarecb --gamma_scale 10"] for i in range(800, 900)]
    assert np.mean([p[1] for p in late]) > 0.5  # it learned that the second variant sells

    # a replay from an older snapshot rewrites nothing and fails on nothing
    again = Learner(sessions, settings, close_limit=200)
    assert again.catch_up() == 900
    again.close()
    with sessions() as s:
        again_scores = {r.decision_id: json.loads(r.pmfs) for r in s.scalars(select(ShadowScore))}
        assert again_scores == scores

    report = uplift_report(sessions, settings, ope_sample=2000, greedy=False)

    shadow = report["ope"]["shadow"]
    assert shadow["available"] and shadow["sample"]["n"] == 900
    by_name = {e["explorer"]: e for e in shadow["explorers"]}
    uniform = by_name["--epsilon 1.0"]["estimates"]["ctr"]["ips"]
    with sessions() as s:  # IPS by hand: r · π(a) / μ(a), μ = 1/3 as logged
        rows = s.execute(select(Decision.decision_id, Decision.variant_id, Decision.actions)).all()
    clicked = {e for e in _clicked(sessions)}
    terms = [(d in clicked) * (0.4 if v == a[0] else 0.3) * 3.0 for d, v, a in rows]
    assert uniform["value"] == pytest.approx(np.mean(terms), abs=1e-12)
    live = shadow["live"]["estimates"]["ctr"]["ips"]
    assert live["value"] == pytest.approx(len(clicked) / 900, abs=1e-12)
    learned = by_name["--squarecb --gamma_scale 10"]["estimates"]["ctr"]["snips"]
    assert learned["value"] > live["value"]  # the greedier explorer would have sold more
    assert learned["ci_low"] < learned["value"] < learned["ci_high"]
    csv_rows = [line for line in to_csv(report).splitlines() if line.startswith("ope.shadow")]
    assert any(line.startswith("ope.shadow:--epsilon 1.0,ctr/ips") for line in csv_rows)
    page = to_html(report)
    assert 'id="shadow"' in page and 'data-explorer="--squarecb --gamma_scale 10"' in page


def _clicked(sessions):
    from core.ledger import Event

    with sessions() as s:
        return s.scalars(select(Event.decision_id).where(Event.type == "click")).all()


def test_unknown_shadow_explorers_are_refused(make_settings):
    with pytest.raises(ValueError, match="shadow explorer '--bag 5'"):
        make_settings(shadow_explorers="--epsilon 0.1;--bag 5")
