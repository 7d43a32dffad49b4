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
