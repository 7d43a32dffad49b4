"""Reports (JSON, CSV, HTML, time parsing), health, metrics and the OpenAPI document."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient

from reports.window import BadWindow, parse_bound


def test_uplift_report_json_csv_and_html(
    client: TestClient, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    for _ in range(3):
        client.post(
            "/v1/decisions", json={"product_id": product.product_id}, headers=headers["serve"]
        )
    h = headers["analyst"]
    r = client.get(
        "/v1/reports/uplift",
        params={"since": "2020-01-01T00:00:00Z", "until": "4102444800", "product_id": "lamp-1"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert set(report["arms"]) >= {"bandit", "control"}
    assert report["filters"] == {
        "since": 1577836800.0,
        "until": 4102444800.0,
        "product_id": "lamp-1",
    }
    r = client.get("/v1/reports/uplift?format=csv", headers=h)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert next(csv.reader(io.StringIO(r.text)))[0] == "section"
    r = client.get("/reports", headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    r = client.get("/v1/reports/uplift?since=yesterday", headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "query.since"
    for query in ("since=nan", "since=2026-12-07&until=2026-12-06", "since=5&until=5"):
        r = client.get(f"/v1/reports/uplift?{query}", headers=h)
        assert r.status_code == 422, query
        [bad] = r.json()["error"]["details"]
        assert bad["field"] == ("query.since" if "nan" in query else "query.until"), query
    r = client.get("/v1/reports/features?since=2026-12-07&until=2026-12-06", headers=h)
    assert r.status_code == 422 and "must be after since" in r.json()["error"]["message"]
    r = client.get("/v1/reports/uplift?format=xml", headers=h)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "query.format"


def test_parse_time_units() -> None:
    assert parse_bound("1767323045", "since") == 1767323045.0
    assert parse_bound("1767323045500", "since") == 1767323045.5
    assert parse_bound("2026-01-02T03:04:05", "since") == 1767323045.0  # naive means UTC
    assert parse_bound(None, "since") is None
    with pytest.raises(BadWindow, match=r"until: expected ISO-8601 or epoch seconds"):
        parse_bound("soon", "until")


def test_healthz_and_metrics(
    client: TestClient, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    client.post("/v1/decisions", json={"product_id": product.product_id}, headers=headers["serve"])
    client.post(
        "/v1/events",
        json={"event_id": "m1", "decision_id": "d", "type": "click"},
        headers=headers["events"],
    )
    health = client.get("/healthz").json()
    assert set(health) == {"status", "model_version", "catalog_products", "publisher"}
    assert health["model_version"] == 0
    assert set(health["publisher"]) == {
        "connected",
        "backlog",
        "unread_bytes",
        "segments",
        "logged",
        "sent",
        "resent",
        "confirmed",
        "abandoned",
    }
    assert health["publisher"]["logged"] == 2
    text = client.get("/metrics").text
    assert 'copyloop_decisions_total{policy="fallback"} 1.0' in text
    assert "copyloop_events_accepted_total 1.0" in text
    assert "copyloop_model_version 0.0" in text
    assert "copyloop_publish_sent_total" in text and "copyloop_publish_logged_total" in text
    assert (
        'copyloop_request_seconds_count{method="POST",route="/v1/decisions",status="2xx"} 1.0'
        in text
    )


def test_openapi_documents_routes_models_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/products/{product_id}/variant",
        "/v1/decisions",
        "/v1/events",
        "/v1/reports/uplift",
        "/v1/products",
        "/v1/products/{product_id}",
        "/healthz",
        "/metrics",
    ):
        assert path in paths, path
    ok = paths["/v1/decisions"]["post"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/DecisionOut")
    assert "404" in paths["/v1/decisions"]["post"]["responses"]
    assert (
        "anyOf"
        in paths["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def test_unknown_path_and_method_use_the_error_shape(client: TestClient) -> None:
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.delete("/healthz")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
