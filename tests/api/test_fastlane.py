"""`api.fastlane`: the page-view route taken before the middlewares answers exactly as the
middlewares and FastAPI's route answer it. Each request goes once through the lane and once
through the whole stack (the same app, with its lane unset), and the two answers are compared:
status, every header, the body (for a served variant: every field but what is drawn anew)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.fastlane import PageViewLane, ServingApp
from core.messages import MAX_CONTEXT_CHARS
from core.settings import Settings

ALLOWED = "https://shop.example"
#: Fields of a served decision that differ between two page views (a new id, a new draw).
DRAWN = {"decision_id", "token", "variant_id", "text", "style", "probability", "policy"}


@pytest.fixture
def shop(api_settings: Settings) -> Iterator[TestClient]:
    """A client of an app whose storefront origins are a list (so CORS mirrors the allowed one
    and refuses others); server errors answered, not raised, as a server would."""
    settings = api_settings.model_copy(update={"cors_origins": [ALLOWED]})
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def _both(client: TestClient, path: str, headers: list[tuple[str, str]] | None = None) -> Any:
    """The answer through the lane, then through the whole stack."""
    app = client.app
    assert isinstance(app, ServingApp) and app.lane is not None
    lane = app.lane
    fast = client.get(path, headers=headers)
    app.lane = None
    try:
        full = client.get(path, headers=headers)
    finally:
        app.lane = lane
    return fast, full


def _same(fast: Any, full: Any) -> None:
    assert fast.status_code == full.status_code
    if fast.status_code == 200:  # each page view draws anew: its length differs
        assert fast.headers.keys() == full.headers.keys()
        assert {k: v for k, v in fast.headers.items() if k != "content-length"} == {
            k: v for k, v in full.headers.items() if k != "content-length"
        }
        a, b = fast.json(), full.json()
        assert list(a) == list(b)
        assert {k: v for k, v in a.items() if k not in DRAWN} == {
            k: v for k, v in b.items() if k not in DRAWN
        }
    else:
        assert fast.headers.multi_items() == full.headers.multi_items()
        assert fast.content == full.content


def test_the_lane_answers_as_the_middlewares_and_the_route_do(
    shop: TestClient, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    path = f"/v1/products/{product.product_id}/variant"
    serve = headers["serve"]["Authorization"]
    storefront_key = headers["storefront"]["Authorization"].split()[1]
    cases: list[tuple[str, list[tuple[str, str]], int]] = [
        (f"{path}?device=mobile&hour=7", [("Authorization", serve)], 200),
        (path, [("Authorization", serve), ("Origin", ALLOWED)], 200),
        (path, [("Authorization", serve), ("Origin", "https://elsewhere.example")], 200),
        (path, [("authorization", serve.replace("Bearer", "bearer"))], 200),
        (f"{path}?defer=1", [("Authorization", serve)], 200),
        (f"{path}?key={storefront_key}&device=desktop", [], 200),
        (f"{path}?key={storefront_key}", [("Origin", ALLOWED)], 200),
        (path, [("Authorization", headers["admin"]["Authorization"])], 200),
        (path, [], 401),
        (path, [("Origin", ALLOWED)], 401),
        (path, [("Authorization", "Bearer cl_nobody")], 401),
        (path, [("Authorization", "Basic dXNlcjpwYXNz")], 401),
        (f"{path}?key={serve.split()[1]}", [], 401),  # only storefront keys travel in the query
        (path, [("Authorization", headers["events"]["Authorization"])], 403),
        (path, [("Authorization", headers["events"]["Authorization"]), ("Origin", ALLOWED)], 403),
        (f"{path}?defer=maybe", [("Authorization", serve)], 422),
        (f"{path}?device={'x' * (MAX_CONTEXT_CHARS + 1)}", [("Authorization", serve)], 422),
        ("/v1/products/no-such-product/variant", [("Authorization", serve)], 404),
        ("/v1/products/no-such-product/variant", [("Origin", ALLOWED)], 401),
    ]
    classes: Counter[str] = Counter()
    for url, hdrs, status in cases:
        fast, full = _both(shop, url, hdrs)
        assert fast.status_code == status, (url, hdrs, fast.text)
        _same(fast, full)
        classes[f"{status // 100}xx"] += 2
    allowed = shop.get(path, headers=[("Authorization", serve), ("Origin", ALLOWED)])
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert "vary" in allowed.headers
    assert shop.get(path, headers=[("Authorization", serve)]).headers["vary"] == "Origin"
    classes["2xx"] += 2

    metrics = shop.get("/metrics").text
    for cls, n in classes.items():
        label = f'method="GET",route="/v1/products/{{product_id}}/variant",status="{cls}"'
        pattern = r"copyloop_request_seconds_count\{" + re.escape(label) + r"\} (\S+)"
        found = re.search(pattern, metrics)
        assert found is not None and float(found.group(1)) == n, cls


def test_a_storefront_key_is_limited_the_same_way_through_the_lane(
    api_settings: Settings, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    settings = api_settings.model_copy(
        update={"storefront_rate_per_s": 0.001, "storefront_burst": 2.0}
    )
    path = f"/v1/products/{product.product_id}/variant"
    storefront = [("Authorization", headers["storefront"]["Authorization"])]
    with TestClient(create_app(settings)) as client:
        fast, full = _both(client, path, storefront)  # the burst: one each
        _same(fast, full)
        fast, full = _both(client, path, storefront)
        assert fast.status_code == 429
        _same(fast, full)
        assert int(fast.headers["Retry-After"]) >= 1


def test_an_unexpected_error_is_answered_500_by_the_catch_all_handler(
    shop: TestClient, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    """As under the server-error middleware: the app's 500 answer, without CORS headers, the
    latency metric counting a 5xx."""
    resources = shop.app_state["resources"]

    def broken(_product_id: str) -> None:
        raise RuntimeError("the catalog broke")

    path = f"/v1/products/{product.product_id}/variant"
    hdrs = [("Authorization", headers["serve"]["Authorization"]), ("Origin", ALLOWED)]
    working = resources.catalog.get
    resources.catalog.get = broken
    try:
        fast, full = _both(shop, path, hdrs)
    finally:
        resources.catalog.get = working
    assert fast.status_code == 500
    assert "access-control-allow-origin" not in fast.headers
    _same(fast, full)
    assert shop.get(path, headers=hdrs).status_code == 200


def test_what_the_lane_leaves_to_fastapi(shop: TestClient) -> None:
    """HEAD, a body, a `root_path`, an over-long product id and other paths go through the
    whole stack."""
    app = shop.app
    assert isinstance(app, ServingApp)
    lane = app.lane
    assert isinstance(lane, PageViewLane)

    def scope(method: str = "GET", path: str = "/v1/products/p-1/variant", **more: Any) -> Any:
        return {"type": "http", "method": method, "path": path, "headers": [], **more}

    assert lane.product_id(scope()) == "p-1"
    assert lane.product_id(scope(root_path="")) == "p-1"
    assert lane.product_id(scope("HEAD")) is None
    assert lane.product_id(scope("POST")) is None
    assert lane.product_id(scope(headers=[(b"content-length", b"2")])) is None
    assert lane.product_id(scope(headers=[(b"transfer-encoding", b"chunked")])) is None
    assert lane.product_id(scope(root_path="/shop")) is None
    assert lane.product_id(scope(path="/v1/products/a/b/variant")) == "a/b"  # `%2F`, decoded
    assert lane.product_id(scope(path=f"/v1/products/{'p' * 129}/variant")) is None
    assert lane.product_id({"type": "lifespan"}) is None


def test_the_lane_is_off_when_fastapis_telemetry_is_on(
    api_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "copyloop-test")
    app = create_app(api_settings)
    assert isinstance(app, ServingApp) and app.lane is None
