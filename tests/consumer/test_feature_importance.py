"""Feature importance on a ledger where the context decides what sells (SQLite and PostgreSQL):
the model's weights are named by VW's invert-hash output, each group's retrained policy is
scored off-policy, and the section reaches JSON, CSV, HTML and `GET /v1/reports/features`."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from consumer.join import ingest
from consumer.learner import Learner
from core.keys import create_key
from reports import to_csv, uplift_report
from reports.features import feature_report
from reports.html import to_html

T0 = 1_767_000_000.0


@pytest.fixture
def settings(make_settings):
    return make_settings(
        reward_window_s=1.0, close_grace_s=0.5, clock_skew_s=1.0, snapshot_every_n=10_000
    )


def produce(sessions, catalog, make_decision, make_event, n):
    """Uniformly logged decisions: on mobile the second variant sells, on desktop the third."""
    rng = np.random.default_rng(4)
    products = sorted(catalog)
    decisions, events = [], []
    for i in range(n):
        pid = products[i % len(products)]
        actions = tuple(catalog[pid])
        chosen = int(rng.integers(len(actions)))
        device = ("mobile", "desktop")[int(rng.integers(2))]
        best = 1 if device == "mobile" else 2
        ts = T0 + i * 0.001
        decisions.append(make_decision(f"d{i:05d}", ts, pid, actions, chosen, {"device": device}))
        if rng.random() < (0.6 if chosen == best else 0.05):
            events.append(make_event(f"e{i}", f"d{i:05d}", "click", ts + 0.1))
    ingest(sessions, decisions, events)


@pytest.fixture
def learned(sessions, settings, seed_catalog, make_decision, make_event):
    catalog = seed_catalog(products=3, variants=3)
    learner = Learner(sessions, settings, close_limit=1000)
    learner.catch_up()
    produce(sessions, catalog, make_decision, make_event, 1500)
    while learner.close_and_learn(T0 + 100):
        pass
    learner.maybe_snapshot(force=True)
    learner.close()


def test_weights_and_groups_on_a_context_driven_ledger(learned, sessions, settings):
    out = feature_report(sessions, settings, sample=1200, top=500)

    assert out["model_version"] == 2
    assert out["sample"] == {
        "limit": 1200,
        "decisions": 1200,
        "trained_on": 800,
        "evaluated_on": 400,
        "note": out["sample"]["note"],
    }
    namespaces = {ns["namespace"] for ns in out["namespaces"]}
    assert {"U*T", "P*T", "T", "V", "U"} <= namespaces
    assert not any("A" in ns.split("*") for ns in namespaces)  # --ignore A
    features = out["features"]
    assert features == sorted(features, key=lambda w: -w["importance"])
    assert all(w["importance"] == abs(w["weight"]) for w in features)
    assert any(w["feature"].startswith("device=mobile*") for w in features)
    groups = {g["group"]: g for g in out["groups"]}
    assert groups["A"]["ope_without"] is None and groups["A"]["note"] == "ignored already"
    base = out["all_features"]["estimates"]["ctr"]["snips"]["value"]
    without_context = groups["U"]["ope_without"]["estimates"]["ctr"]["snips"]["value"]
    assert without_context < base  # the context decides what sells
    assert groups["U"]["snips_change"]["ctr"] == pytest.approx(without_context - base)
    for g in ("P", "T", "V"):
        assert groups[g]["ope_without"]["n"] == 400


def test_section_in_every_format_and_over_http(learned, sessions, settings):
    report = uplift_report(sessions, settings, ope_sample=1000, greedy=False, feature_sample=600)

    block = report["features"]
    assert block["sample"]["decisions"] == 600 and block["groups"]
    plain = uplift_report(sessions, settings, ope_sample=0, greedy=False)["features"]
    assert plain["groups"] == [] and plain["note"].startswith("Left out of this report")
    csv = to_csv(report)
    assert "\nfeature,U*T/device=" in csv and "\nfeature_group:U,ctr/snips" in csv
    page = to_html(report)
    assert 'id="feature-groups"' in page and 'data-group="U"' in page
    key = create_key(sessions, "analyst")
    with TestClient(create_app(settings)) as client:
        r = client.get(
            "/v1/reports/features",
            params={"sample": 600, "top": 5},
            headers={"Authorization": f"Bearer {key}"},
        )
        bad = client.get(
            "/v1/reports/features",
            params={"sample": 5},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["features"]) == 5
    assert set(body["features"][0]) == {"namespace", "feature", "importance", "weight"}
    assert {g["group"] for g in body["groups"]} == {"U", "P", "A", "T", "V"}
    assert all("ope_without" in g for g in body["groups"])
    assert bad.status_code == 422 and "sample" in bad.text
