"""`/v1/reports/uplift` and `/reports` over a ledger of synthetic decisions: the full report's
sections, its filters and the counterfactual panel's sample size over HTTP."""

from __future__ import annotations

import csv
import io

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from reports.synthetic import fill


def test_report_sections_filters_and_sample_size(
    client: TestClient, engine: Engine, headers: dict[str, dict[str, str]]
) -> None:
    truth = fill(engine, 1500, n_products=3, seed=4, span_s=10 * 86400.0)
    h = headers["analyst"]
    report = client.get("/v1/reports/uplift", params={"ope_sample": 300}, headers=h).json()
    for section in (
        "arms",
        "uplift",
        "srm",
        "products",
        "variants",
        "generator_versions",
        "contexts",
        "timeseries",
        "ope",
    ):
        assert section in report, section
    assert report["arms"]["control"]["impressions"] == truth.arms["control"]["impressions"]
    assert report["timeseries"]["bucket"] == "day"  # ten days: daily buckets
    assert report["ope"]["sample"]["n"] == 300 and report["ope"]["sample"]["sampled"]
    one = client.get(
        "/v1/reports/uplift", params={"product_id": "p0001", "ope_sample": 0}, headers=h
    ).json()
    assert [p["product_id"] for p in one["products"]] == ["p0001"]
    assert one["ope"]["sample"]["n"] == 0
    rows = list(
        csv.DictReader(
            io.StringIO(client.get("/v1/reports/uplift?format=csv&ope_sample=100", headers=h).text)
        )
    )
    assert {r["section"] for r in rows} >= {"arm", "variant", "context:device", "ope:live"}
    page = client.get("/reports", params={"product_id": "p0001"}, headers=h)
    assert page.status_code == 200 and 'id="cumulative-lift-chart"' in page.text
    r = client.get("/v1/reports/uplift?ope_sample=-1", headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "query.ope_sample"


def test_sequential_cuped_and_formats_over_http(
    client: TestClient, engine: Engine, headers: dict[str, dict[str, str]]
) -> None:
    truth = fill(engine, 3000, n_products=6, seed=8, span_s=6 * 3600.0, product_spread=1.0)
    h = headers["analyst"]
    since = str(truth.start + 3 * 3600.0)
    fixed = client.get("/v1/reports/uplift", params={"since": since}, headers=h).json()
    seq = client.get(
        "/v1/reports/uplift", params={"since": since, "ci": "sequential"}, headers=h
    ).json()
    assert (fixed["ci"], seq["ci"]) == ("fixed", "sequential")
    for metric in ("ctr", "cvr", "revenue_per_impression"):
        c = seq["uplift"][metric]["cuped"]
        assert set(c) >= {"relative", "ci_low", "ci_high", "variance_reduction"}
    f, s = fixed["uplift"]["ctr"], seq["uplift"]["ctr"]
    assert s["abs_ci_high"] - s["abs_ci_low"] > f["abs_ci_high"] - f["abs_ci_low"]
    assert seq["cuped"]["pre_period"]["source"] == "before_since"
    text = client.get(
        "/v1/reports/uplift", params={"ci": "sequential", "format": "csv"}, headers=h
    ).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["key"] for r in rows if r["section"] == "intervals"] == ["sequential"]
    cuped = {r["key"]: r for r in rows if r["section"] == "uplift_cuped"}
    assert set(cuped) == {"ctr", "cvr", "revenue_per_impression"}
    assert all(r["variance_reduction"] != "" for r in cuped.values())
    assert "low_ess" in rows[0]
    page = client.get("/reports", params={"ci": "sequential"}, headers=h)
    assert page.status_code == 200
    assert 'id="cuped"' in page.text and 'data-ci="sequential"' in page.text
    r = client.get("/v1/reports/uplift?ci=weekly", headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "query.ci"


def test_a_one_decision_report_is_served_as_json(
    client: TestClient, engine: Engine, headers: dict[str, dict[str, str]]
) -> None:
    """JSON has no NaN: a sample of one decision (no variance to compute) is served, with
    nulls where intervals cannot be computed."""
    fill(engine, 1, n_products=1, seed=9, span_s=60.0)
    r = client.get("/v1/reports/uplift", params={"ope_sample": 5}, headers=headers["analyst"])
    assert r.status_code == 200, r.text
    assert "NaN" not in r.text
    live = r.json()["ope"]["policies"]["live"]["estimates"]["ctr"]["snips"]
    assert live["ci_low"] is None and live["ci_high"] is None
