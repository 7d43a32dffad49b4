"""The uplift report on a ledger of synthetic decisions whose truth is known (SQLite and
PostgreSQL): counts equal what was written, exactly; breakdowns add up; filters cut; the
counterfactual panel checks itself; the formats carry the same numbers."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from bandit import Policy
from core.ledger import snapshots
from core.settings import Settings
from reports import to_csv, uplift_report
from reports.html import to_html
from reports.synthetic import CLICK_RATE, LATE_SHARE, Truth, fill

N = 6000


@pytest.fixture
def truth(engine: Engine) -> Truth:
    return fill(engine, N, n_products=6, seed=7, span_s=36 * 3600.0)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


def test_counts_equal_the_outside_ledger(
    truth: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    report = uplift_report(sessions, settings, ope_sample=0)
    for arm in ("bandit", "control"):
        got, want = report["arms"][arm], truth.arms[arm]
        assert got["impressions"] == want["impressions"]
        assert got["clicks"] == want["clicks"]
        assert got["purchases"] == want["purchases"]
        assert got["revenue"] == pytest.approx(want["revenue"], abs=1e-6)
        assert got["ctr"] == pytest.approx(want["clicks"] / want["impressions"])
    assert report["arms"]["fallback"]["impressions"] == 0
    assert {(v["product_id"], v["variant_id"]): v["impressions"] for v in report["variants"]} == (
        truth.variants
    )
    assert set(report["uplift"]["ctr"]) >= {"relative", "absolute", "ci_low", "ci_high", "p_value"}
    assert report["srm"]["mismatch"] is False


def test_breakdowns_add_up(
    truth: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    report = uplift_report(sessions, settings, ope_sample=0)
    total = {k: sum(truth.arms[a][k] for a in truth.arms) for k in ("impressions", "clicks")}
    for rows in (report["products"], report["variants"], report["generator_versions"]):
        assert sum(r["impressions"] for r in rows) == total["impressions"]
        assert sum(r["clicks"] for r in rows) == total["clicks"]
    assert report["contexts_scope"]["complete"] is True
    assert set(report["contexts"]) == {"device", "segment"}
    for values in report["contexts"].values():
        assert sum(v["impressions"] for v in values) == total["impressions"]
        assert sum(v["clicks"] for v in values) == total["clicks"]
        assert sum(v["traffic_share"] for v in values) == pytest.approx(1.0)
    points = report["timeseries"]["points"]
    assert report["timeseries"]["bucket"] == "hour"
    assert 36 <= len(points) <= 38
    last = points[-1]["cumulative"]
    for arm in ("bandit", "control"):
        assert last[arm]["impressions"] == truth.arms[arm]["impressions"]
        assert last[arm]["clicks"] == truth.arms[arm]["clicks"]
    plain = {k: v for k, v in report["uplift"]["ctr"].items() if k != "cuped"}
    assert last and points[-1]["cumulative_lift"]["ctr"] == plain
    for p in points:
        if p["bandit_by_style"]:
            assert sum(p["bandit_by_style"].values()) == pytest.approx(1.0)
    by_product: dict[str, float] = {}
    for v in report["variants"]:
        assert v["rates_biased"] is True
        by_product[v["product_id"]] = by_product.get(v["product_id"], 0.0) + v["traffic_share"]
    assert all(share == pytest.approx(1.0) for share in by_product.values())


def test_snips_rates_of_the_control_copy_are_unbiased(
    truth: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """The original copy's rate in the bandit is biased (it is served mostly to the contexts
    where it does well, and by the holdout); its SNIPS rate estimates the rate had every page
    view shown it: mean over devices of its click rate, less the late clicks."""
    report = uplift_report(sessions, settings, ope_sample=0)
    control = next(g for g in report["generator_versions"] if g["generator_version"] == "(none)")
    est = control["snips"]["ctr"]
    true_rate = CLICK_RATE[0].mean() * (1 - LATE_SHARE)
    half_width = (est["ci_high"] - est["ci_low"]) / 2
    assert abs(est["value"] - true_rate) < 1.5 * half_width  # 3 standard errors


def test_filters_cut_every_section(
    truth: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    mid = (truth.start + truth.end) / 2
    full = uplift_report(sessions, settings, ope_sample=0)
    early = uplift_report(sessions, settings, until=mid, ope_sample=0)
    late = uplift_report(sessions, settings, since=mid, ope_sample=0)
    for arm in ("bandit", "control"):
        for key in ("impressions", "clicks", "purchases"):
            assert early["arms"][arm][key] + late["arms"][arm][key] == full["arms"][arm][key]
    assert early["filters"] == {"since": None, "until": mid, "product_id": None}
    assert all(p["start"] < mid for p in early["timeseries"]["points"])
    one = uplift_report(sessions, settings, product_id="p0002", ope_sample=200)
    want = sum(n for (p, _), n in truth.variants.items() if p == "p0002")
    assert sum(one["arms"][a]["impressions"] for a in ("bandit", "control")) == want
    assert {p["product_id"] for p in one["products"]} == {"p0002"}
    assert {v["product_id"] for v in one["variants"]} == {"p0002"}
    assert sum(v["impressions"] for v in one["contexts"]["device"]) == want
    assert one["ope"]["sample"]["n"] == 200 and one["ope"]["sample"]["sampled"] is True


def test_counterfactual_panel(
    truth: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    policy = Policy(settings.vw_args)
    snapshots.save(sessions, policy.save(), 0, settings.vw_args)
    policy.close()
    report = uplift_report(sessions, settings, ope_sample=N)
    ope = report["ope"]
    assert ope["sample"] == {
        "n": N,
        "randomized_decisions": N,
        "limit": N,
        "sampled": False,
        "note": f"all {N} randomized (bandit or control) decisions in the window",
    }
    assert set(ope["policies"]) == {"live", "control", "uniform", "greedy"}
    live = ope["policies"]["live"]
    clicks = sum(a["clicks"] for a in truth.arms.values())
    for est in ("ips", "snips", "dr"):
        e = live["estimates"]["ctr"][est]
        assert e["ci_low"] < e["value"] < e["ci_high"]
        if est == "dr":  # Σ_a μ(a|x) q̂(a) − q̂(a_i) averages to 0, not exactly 0
            assert abs(e["value"] - clicks / N) < 0.1 * (e["ci_high"] - e["ci_low"])
        else:  # every weight is 1: the sample mean, exactly
            assert e["value"] == pytest.approx(clicks / N, abs=1e-12)
    assert live["ess"] == pytest.approx(N)
    assert live["warning"] is None
    greedy = ope["policies"]["greedy"]
    assert greedy["available"] and greedy["n"] == N and "model version 1" in greedy["note"]
    assert "cross-fitted" in ope["reward_model"]
    # Always-control: the truth is the control copy's click rate averaged over devices.
    control = ope["policies"]["control"]["estimates"]["ctr"]
    true_rate = CLICK_RATE[0].mean() * (1 - LATE_SHARE)
    for est in ("ips", "snips", "dr"):
        e = control[est]
        assert abs(e["value"] - true_rate) < 1.5 * (e["ci_high"] - e["ci_low"])


def test_formats_carry_the_same_numbers(
    truth: Truth, sessions: sessionmaker[Session], settings: Settings
) -> None:
    report = uplift_report(sessions, settings, ope_sample=500)
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    arm = {r["key"]: r for r in rows if r["section"] == "arm"}
    assert int(arm["bandit"]["impressions"]) == truth.arms["bandit"]["impressions"]
    sections = {r["section"].split(":")[0] for r in rows}
    assert sections >= {
        "arm",
        "uplift",
        "srm",
        "product",
        "variant",
        "generator_version",
        "context",
        "timeseries",
        "ope",
    }
    html = to_html(report)
    for chart in ("lift-chart", "cumulative-lift-chart", "allocation-chart", "ope-chart"):
        assert f'id="{chart}"' in html
    assert f'<td class="impressions">{truth.arms["control"]["impressions"]}</td>' in html


def test_empty_ledger_reports_zeros(sessions: sessionmaker[Session], settings: Settings) -> None:
    report = uplift_report(sessions, settings)
    assert report["arms"]["bandit"]["impressions"] == 0
    assert report["timeseries"]["points"] == []
    assert report["contexts"] == {}
    assert report["ope"]["policies"]["live"]["warning"] == (
        "no logged decisions to evaluate this policy on"
    )
    assert "<svg" in to_html(report)
    assert to_csv(report).startswith("section,key,impressions")
