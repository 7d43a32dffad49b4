"""The analyst statistics in the report, on a real ledger (SQLite and PostgreSQL): CUPED from
the pre-period, sequential intervals, low-ESS flags, buckets sized from the span, the greedy
model scored only on decisions it did not learn from, and no NaN anywhere."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from bandit import Policy
from consumer.join import close_expired_windows
from core.ledger import snapshots
from core.ledger.tables import Decision, Reward
from core.settings import Settings
from reports import to_csv, uplift_report
from reports.html import to_html
from reports.pre_period import PRE_SHARE
from reports.synthetic import Truth, fill


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def spread(engine: Engine) -> Truth:
    """20,000 decisions over 8 hours on 20 products whose click rates differ (so a product's
    pre-period rate predicts a decision's outcome)."""
    return fill(engine, 20_000, n_products=20, seed=21, span_s=8 * 3600.0, product_spread=1.0)


def _count(sessions: sessionmaker[Session], lo: float, hi: float) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).where(Decision.ts >= lo, Decision.ts < hi)) or 0)


def _width(u: dict[str, Any]) -> float:
    return float(u["ci_high"] - u["ci_low"])


def test_cuped_uses_the_pre_period_before_since(
    spread: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    since = spread.start + 4 * 3600.0
    report = uplift_report(sessions, settings, since=since, ope_sample=0)
    pre = report["cuped"]["pre_period"]
    assert pre["source"] == "before_since" and pre["until"] == since
    assert pre["impressions"] == _count(sessions, pre["since"], since) > 5000
    ctr = report["uplift"]["ctr"]
    c = ctr["cuped"]
    assert set(c) >= {"relative", "ci_low", "ci_high", "variance_reduction"}
    assert c["theta"] > 0.3 and c["variance_reduction"] > 0.01
    assert _width(c) < _width(ctr)
    assert c["relative"] == pytest.approx(ctr["relative"], abs=0.5 * _width(ctr))
    # The interval and p-value agree for the adjusted lift too.
    assert (c["p_value"] < 0.05) == (not c["abs_ci_low"] <= 0 <= c["abs_ci_high"])
    json.dumps(report, allow_nan=False)


def test_cuped_without_since_uses_the_first_part_and_keeps_the_population(
    spread: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    report = uplift_report(sessions, settings, ope_sample=0)
    pre = report["cuped"]["pre_period"]
    assert pre["source"] == "first_part"
    with sessions() as s:
        lo, hi = s.execute(select(func.min(Decision.ts), func.max(Decision.ts))).one()
    assert pre["until"] == pytest.approx(lo + PRE_SHARE * (hi - lo))
    assert pre["impressions"] == _count(sessions, lo, pre["until"])
    for u in report["uplift"].values():
        c = u["cuped"]
        assert c["note"] is None and c["variance_reduction"] is not None
        # Same decisions as the plain lift: the adjustment moves it by a fraction of its width.
        assert abs(c["absolute"] - u["absolute"]) < 0.5 * (u["abs_ci_high"] - u["abs_ci_low"])


def test_cuped_on_one_product_changes_nothing(
    spread: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    since = spread.start + 4 * 3600.0
    report = uplift_report(sessions, settings, since=since, product_id="p0003", ope_sample=0)
    for u in report["uplift"].values():
        c = u["cuped"]
        assert c["theta"] == 0.0 and c["variance_reduction"] == 0.0
        assert c["relative"] == pytest.approx(u["relative"])
        assert c["ci_low"] == pytest.approx(u["ci_low"])


def test_no_pre_period_decisions_gives_null_cuped_with_a_reason(
    spread: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    report = uplift_report(sessions, settings, since=spread.start, ope_sample=0)
    assert report["cuped"]["pre_period"]["impressions"] == 0
    for u in report["uplift"].values():
        c = u["cuped"]
        assert c["note"] == "no decisions in the pre-period: no covariate"
        assert c["relative"] is None and c["variance_reduction"] is None
    json.dumps(report, allow_nan=False)


def test_sequential_intervals_everywhere_in_the_report(
    spread: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    fixed = uplift_report(sessions, settings, ope_sample=0)
    seq = uplift_report(sessions, settings, ope_sample=0, ci="sequential")
    assert (fixed["ci"], seq["ci"]) == ("fixed", "sequential")
    assert seq["intervals"]["kind"] == "sequential" and seq["intervals"]["target_n"] == 10_000
    for metric in ("ctr", "cvr", "revenue_per_impression"):
        f, s = fixed["uplift"][metric], seq["uplift"][metric]
        assert s["relative"] == f["relative"]
        assert _width(s) > 1.3 * _width(f) and s["p_value"] > f["p_value"]
        assert _width(s["cuped"]) > _width(f["cuped"])
    for fp, sp in zip(fixed["products"], seq["products"], strict=True):
        fu, su = fp["uplift"]["ctr"], sp["uplift"]["ctr"]
        if fu["abs_ci_low"] is not None:
            assert su["abs_ci_high"] - su["abs_ci_low"] > fu["abs_ci_high"] - fu["abs_ci_low"]
    last_f = fixed["timeseries"]["points"][-1]["cumulative_lift"]["ctr"]
    last_s = seq["timeseries"]["points"][-1]["cumulative_lift"]["ctr"]
    assert _width(last_s) > _width(last_f)
    rows = list(csv.DictReader(io.StringIO(to_csv(seq))))
    assert [r["key"] for r in rows if r["section"] == "intervals"] == ["sequential"]
    assert {r["key"] for r in rows if r["section"] == "uplift_cuped"} == {
        "ctr",
        "cvr",
        "revenue_per_impression",
    }
    html = to_html(seq)
    assert 'id="cuped"' in html and "always-valid" in html and 'id="cuped-chart"' in html
    with pytest.raises(ValueError, match=r"^ci must be one of fixed, sequential, got 'daily'$"):
        uplift_report(sessions, settings, ci="daily")


def test_a_one_decision_ledger_gives_valid_json(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    fill(engine, 1, n_products=1, seed=2, span_s=60.0)
    report = uplift_report(sessions, settings, ope_sample=10)
    text = json.dumps(report, allow_nan=False)  # NaN would raise here
    assert report["ope"]["sample"]["n"] == 1
    live = report["ope"]["policies"]["live"]["estimates"]["ctr"]["ips"]
    assert live["value"] is not None and live["ci_low"] is None
    assert "NaN" not in text and "Infinity" not in text
    assert "<svg" in to_html(report) and to_csv(report).startswith("section,key")


@pytest.mark.parametrize(
    ("span_s", "bucket", "most"),
    [(600.0, "minute", 11), (2 * 3600.0, "5 minutes", 25), (36 * 3600.0, "hour", 37)],
)
def test_buckets_follow_the_span(
    engine: Engine,
    sessions: sessionmaker[Session],
    settings: Settings,
    span_s: float,
    bucket: str,
    most: int,
) -> None:
    fill(engine, 600, n_products=2, seed=3, span_s=span_s)
    ts = uplift_report(sessions, settings, ope_sample=0, context_sample=0)["timeseries"]
    assert ts["bucket"] == bucket
    assert 0.75 * most <= len(ts["points"]) <= most
    assert sum(sum(a["impressions"] for a in p["arms"].values()) for p in ts["points"]) == 600


def test_thin_variant_rows_are_flagged_low_ess(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    fill(engine, 800, n_products=2, seed=4, span_s=3600.0)
    report = uplift_report(sessions, settings, ope_sample=0)
    flags = [(v["low_ess"], v["ess"]) for v in report["variants"]]
    assert any(low for low, _ in flags) and not all(low for low, _ in flags)
    assert all(low == (ess < report["low_ess_threshold"]) for low, ess in flags)
    for v in report["variants"]:
        for e in v["snips"].values():
            assert e["low_ess"] == v["low_ess"]
            if e["value"] is not None and e["ci_low"] is not None:
                assert 0.0 <= e["ci_low"] <= e["value"] <= e["ci_high"]
    rows = [r for r in csv.DictReader(io.StringIO(to_csv(report))) if r["section"] == "variant"]
    assert [r["low_ess"] == "True" for r in rows] == [low for low, _ in flags]
    html = to_html(report)
    thin = sum(low for low, _ in flags)
    assert f"{thin} of {len(flags)} variant rows rest on an effective sample size below 100" in html
    assert html.count('class="low-ess"') == thin


def test_greedy_is_scored_only_on_decisions_its_snapshot_did_not_learn(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Rewards get seq 1..N as their windows close. Snapshots at 60%, 90% and 100% of them:
    the newest learned every sampled decision and the 90% one holds out fewer than 500, so
    the 60% one is scored, on exactly the 40% it never saw."""
    n = 2000
    fill(engine, n, n_products=4, seed=6, span_s=3600.0)
    while close_expired_windows(sessions, settings, time.time()):
        pass
    with sessions() as s:
        seqs = sorted(s.scalars(select(Reward.seq)).all())
    assert len(seqs) == n
    policy = Policy(settings.vw_args)
    model = policy.save()
    policy.close()
    cuts = [seqs[int(0.6 * n) - 1], seqs[int(0.9 * n) - 1], seqs[-1]]
    versions = [snapshots.save(sessions, model, cut, settings.vw_args) for cut in cuts]
    report = uplift_report(sessions, settings, ope_sample=n)
    greedy = report["ope"]["policies"]["greedy"]
    assert greedy["available"] and greedy["scoring"] == "held_out"
    assert (greedy["model_version"], greedy["newest_version"]) == (versions[0], versions[2])
    assert greedy["held_out"] == greedy["n"] == n - int(0.6 * n)
    assert f"scored on the {n - int(0.6 * n)} of {n} sampled decisions" in greedy["note"]
    assert f"the newest version {versions[2]} held out fewer than 500" in greedy["note"]
    assert report["ope"]["policies"]["live"]["n"] == n  # the other targets use every decision
    rows = csv.DictReader(io.StringIO(to_csv(report)))
    ope_rows = [r for r in rows if r["section"] == "ope:greedy"]
    assert ope_rows and "held out" in ope_rows[0]["note"]


def test_greedy_with_one_snapshot_that_learned_everything_is_unavailable(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    fill(engine, 300, n_products=2, seed=7, span_s=3600.0)
    while close_expired_windows(sessions, settings, time.time()):
        pass
    with sessions() as s:
        last = s.scalar(select(func.max(Reward.seq)))
    policy = Policy(settings.vw_args)
    snapshots.save(sessions, policy.save(), int(last or 0), settings.vw_args)
    policy.close()
    greedy = uplift_report(sessions, settings, ope_sample=300)["ope"]["policies"]["greedy"]
    assert greedy["available"] is False
    assert greedy["note"] == (
        "every model snapshot learned from all 300 sampled decisions: none is held out to "
        "score the greedy policy on"
    )


def test_the_page_draws_a_metric_the_json_has_no_number_for_as_na(
    engine: Engine, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """A ledger's revenue can sum past the float range (values stored before the bound on
    purchase values): the JSON says null, and the page shows n/a instead of failing."""
    fill(engine, 200, n_products=2, seed=3, span_s=600.0)
    report = uplift_report(sessions, settings, ope_sample=50)
    for arm in ("bandit", "control"):
        report["arms"][arm]["revenue"] = report["arms"][arm]["revenue_per_impression"] = None
    rows = [*report["products"], *report["variants"], *report["generator_versions"]]
    assert rows
    for row in rows:
        row["revenue"] = None
    html = to_html(report)
    chart = html[html.index('data-metric="revenue_per_impression"') :]
    assert "n/a" in chart[: chart.index("</figure>")]
