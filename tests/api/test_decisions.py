"""Serving decisions: shape, 404, fallback without a model, holdout share, hot reload, and
every decision published to Kafka."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import QueryParams

from api.app import create_app
from api.routes.decisions import query_dict
from bandit import Policy
from core.ledger import snapshots
from core.settings import Settings
from tests.conftest import within

DECISION_FIELDS = {
    "decision_id",
    "product_id",
    "variant_id",
    "text",
    "style",
    "policy",
    "probability",
    "model_version",
    "activated",
    "token",
}


def _save_model(sessions: sessionmaker[Session], settings: Settings) -> int:
    """A fresh (untrained) model snapshot, as the learner would save one; returns its version."""
    policy = Policy(settings.vw_args)
    try:
        return snapshots.save(sessions, policy.save(), last_seq=0, vw_args=settings.vw_args)
    finally:
        policy.close()


def test_decision_json_shape_and_fallback_without_a_model(
    client: TestClient, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    r = client.get(
        f"/v1/products/{product.product_id}/variant?device=mobile&segment=new",
        headers=headers["serve"],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == DECISION_FIELDS
    assert re.fullmatch(r"[0-9a-f]{32}", body["decision_id"])
    assert body["product_id"] == product.product_id
    # No snapshot yet: the control copy, deterministically.
    assert body["policy"] == "fallback"
    assert body["variant_id"] == product.control_id
    assert body["probability"] == 1.0
    assert body["model_version"] == 0
    assert body["text"].startswith("A steel desk lamp")
    assert body["style"] == "original"
    assert body["activated"] is True
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", body["token"])


def test_unknown_product_is_404(client: TestClient, headers: dict[str, dict[str, str]]) -> None:
    for r in (
        client.get("/v1/products/nope/variant", headers=headers["serve"]),
        client.post("/v1/decisions", json={"product_id": "nope"}, headers=headers["serve"]),
    ):
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "product_not_found"
        assert r.json()["error"]["details"] == {"product_id": "nope"}


def test_product_created_after_start_is_served(
    client: TestClient,
    seed: Callable[..., Any],
    headers: dict[str, dict[str, str]],
    wait_until: Callable[..., None],
) -> None:
    def decide() -> Any:
        return client.post("/v1/decisions", json={"product_id": "late"}, headers=headers["serve"])

    assert decide().status_code == 404
    late = seed("late")
    # The unknown id is remembered until the next catalog refresh (0.2 s here), then served.
    wait_until(lambda: decide().status_code == 200, timeout_s=5.0, what="the new product")
    assert decide().json()["variant_id"] in late.variant_ids


def test_bad_context_is_422_naming_the_field(
    client: TestClient, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    r = client.post(
        "/v1/decisions",
        json={"product_id": product.product_id, "context": {"device": {"nested": 1}}},
        headers=headers["serve"],
    )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert any(d["field"].startswith("body.context.device") for d in error["details"])
    r = client.post("/v1/decisions", json={"context": {}}, headers=headers["serve"])
    assert r.status_code == 422
    assert [d["field"] for d in r.json()["error"]["details"]] == ["body.product_id"]
    long_value = "x" * 300
    r = client.get(
        f"/v1/products/{product.product_id}/variant?ref={long_value}", headers=headers["serve"]
    )
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "query.ref"


def test_holdout_share_and_logged_probabilities(
    api_settings: Settings,
    sessions: sessionmaker[Session],
    product: Any,
    headers: dict[str, dict[str, str]],
) -> None:
    holdout, n = 0.3, 600
    settings = api_settings.model_copy(update={"holdout": holdout, "seed": 11})
    _save_model(sessions, settings)
    with TestClient(create_app(settings)) as client:
        bodies = [
            client.post(
                "/v1/decisions",
                json={"product_id": product.product_id, "context": {"hour": i % 24}},
                headers=headers["serve"],
            ).json()
            for i in range(n)
        ]
    assert {b["model_version"] for b in bodies} == {1}
    assert {b["policy"] for b in bodies} <= {"bandit", "control"}
    control = [b for b in bodies if b["policy"] == "control"]
    sd = math.sqrt(n * holdout * (1 - holdout))
    assert abs(len(control) - n * holdout) < 4 * sd, (len(control), n * holdout, sd)
    assert all(b["variant_id"] == product.control_id for b in control)
    # The control variant's logged probability includes the holdout's share.
    for b in bodies:
        assert 0 < b["probability"] <= 1
        if b["variant_id"] == product.control_id:
            assert b["probability"] >= holdout - 1e-9


def test_hot_reload_changes_model_version_without_blocking(
    client: TestClient,
    api_settings: Settings,
    sessions: sessionmaker[Session],
    product: Any,
    headers: dict[str, dict[str, str]],
    wait_until: Callable[..., None],
) -> None:
    def decide() -> dict[str, Any]:
        r = client.post(
            "/v1/decisions",
            json={"product_id": product.product_id, "context": {"device": "tablet"}},
            headers=headers["serve"],
        )
        assert r.status_code == 200, r.text
        return r.json()

    assert decide()["model_version"] == 0
    versions: list[int] = []
    saver = threading.Thread(target=lambda: versions.append(_save_model(sessions, api_settings)))
    saver.start()
    seen: list[dict[str, Any]] = []
    wait_until(lambda: seen.append(decide()) or seen[-1]["model_version"] == 1, what="v1")
    saver.join()
    assert versions == [1]
    assert seen[-1]["policy"] in {"bandit", "control"}
    # Every answer while the reload happened was served: fallback before, the model after.
    assert {(b["model_version"], b["policy"] == "fallback") for b in seen} <= {
        (0, True),
        (1, False),
    }

    # A corrupt snapshot is skipped (logged); the next good one is picked up.
    snapshots.save(sessions, b"not a model", last_seq=0, vw_args=api_settings.vw_args)
    _save_model(sessions, api_settings)
    wait_until(lambda: decide()["model_version"] == 3, what="v3")
    assert client.get("/healthz").json()["model_version"] == 3


def test_serving_reads_the_ledger_while_a_writer_holds_it(
    api_settings: Settings,
    engine: Engine,
    sessions: sessionmaker[Session],
    product: Any,
    seed: Callable[..., Any],
    headers: dict[str, dict[str, str]],
    wait_until: Callable[..., None],
) -> None:
    """The model reloader and the catalog read the ledger beside a write in progress (the
    consumer's, most of the time): a new snapshot is loaded and a product not cached yet is
    served at once, not when the write ends (on SQLite a reader that took the write lock waited
    for it)."""
    settings = api_settings.model_copy(
        update={"model_reload_s": 3600.0, "catalog_refresh_s": 3600.0}  # only what the test asks
    )
    with TestClient(create_app(settings)) as client:
        resources = client.app_state["resources"]
        wait_until(lambda: len(resources.catalog) == 1, what="the catalog's first load")
        version = _save_model(sessions, settings)
        late = seed("late")
        with engine.connect() as writer, writer.begin() as write:
            writer.execute(text("DELETE FROM serving_modes"))  # a write, as the consumer's
            within(5.0, resources.policies.reload_once)
            assert resources.policies.version == version
            answer = within(
                5.0, lambda: client.get("/v1/products/late/variant", headers=headers["serve"])
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["variant_id"] in late.variant_ids
            write.rollback()


def test_decisions_are_published_to_kafka(
    client: TestClient,
    api_settings: Settings,
    product: Any,
    headers: dict[str, dict[str, str]],
    read_topic: Callable[..., list[tuple[int, bytes | None, bytes]]],
) -> None:
    served = [
        client.get(
            f"/v1/products/{product.product_id}/variant?device=mobile&n={i}",
            headers=headers["serve"],
        ).json()
        for i in range(5)
    ]
    messages = read_topic(api_settings.decisions_topic, expected=5)
    assert len(messages) == 5
    by_id = {json.loads(v)["decision_id"]: (k, json.loads(v)) for _, k, v in messages}
    assert set(by_id) == {s["decision_id"] for s in served}
    for s in served:
        key, message = by_id[s["decision_id"]]
        assert key == s["decision_id"].encode()
        assert message["variant_id"] == s["variant_id"]
        assert message["policy"] == s["policy"]
        assert message["probability"] == s["probability"]
        assert message["model_version"] == s["model_version"]
        assert message["actions"] == list(product.variant_ids)
        assert message["pmf"][message["actions"].index(s["variant_id"])] == s["probability"]
        assert message["context"]["device"] == "mobile"
        assert message["ts"] > 0
        assert "text" not in message


def test_the_page_view_route_keeps_the_frameworks_answers_where_the_fast_lane_stops(
    client: TestClient, product: Any, headers: dict[str, dict[str, str]]
) -> None:
    """`api.fastlane` answers GET /v1/products/{id}/variant before the middlewares. What it
    leaves to FastAPI keeps FastAPI's answers, the latency metric keeps the route's label, and
    OpenAPI still documents the route (`test_fastlane`: the lane's answers against the whole
    stack's)."""
    path = f"/v1/products/{product.product_id}/variant"
    for _ in range(3):
        assert client.get(path, headers=headers["serve"]).status_code == 200
    metrics = client.get("/metrics").text
    label = 'method="GET",route="/v1/products/{product_id}/variant",status="2xx"'
    count = re.search(r"copyloop_request_seconds_count\{" + re.escape(label) + r"\} (\S+)", metrics)
    assert count is not None and float(count.group(1)) == 3.0

    long_id = "p" * 129  # over the route's max_length: FastAPI's validation error
    r = client.get(f"/v1/products/{long_id}/variant", headers=headers["serve"])
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "path.product_id"

    assert client.head(path, headers=headers["serve"]).status_code == 405  # GET only, as before

    refused = client.get(path)  # no key: the route's refusal, through the app's handler
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"]["code"] == "unauthorized"

    spec = client.get("/openapi.json").json()
    assert "get" in spec["paths"]["/v1/products/{product_id}/variant"]


QUERY_STRINGS = [
    "",
    "device=mobile&segment=new&hour=7",
    "device=mobile&device=desktop",  # the last one wins
    "a&b=&=c&&d==e&",  # no value, blank value, blank name, empty pairs, '=' in a value
    "q=caf%C3%A9&r=a+b&s=%2B%26%3D",  # escapes: decoded as Starlette decodes them
    "x=%ZZ&y=%",  # malformed escapes are kept
    "lang=fr;ch=1",  # ';' is not a separator
    "name=\xe9t\xe9",  # raw latin-1 bytes
]


@pytest.mark.parametrize("query", QUERY_STRINGS)
def test_the_routes_query_parse_equals_starlettes(query: str) -> None:
    raw = query.encode("latin-1")
    assert query_dict(raw) == dict(QueryParams(raw))
    assert list(query_dict(raw)) == list(dict(QueryParams(raw)))  # and keeps its order
