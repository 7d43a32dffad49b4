"""Bad input at the edge: body size (413) and nesting (422 naming where) limits, ids the consumer
would refuse refused by the API with the same reason, the key checked before the body is parsed,
and OpenAPI that states the limits the server applies."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.app import TELEMETRY_OFF, create_app, fastapi_telemetry
from api.cors import StorefrontCors
from consumer.errors import BadMessage
from consumer.records import decode_event
from core.settings import Settings

BODY_ROUTES = [
    "/v1/decisions",
    "/v1/events",
    "/v1/products",
    "/v1/products/lamp-1/variants",
]


@pytest.fixture
def small_client(api_settings: Settings) -> Iterator[TestClient]:
    """An app that reads at most 4 kB of body."""
    with TestClient(create_app(api_settings.model_copy(update={"max_body_bytes": 4096}))) as c:
        yield c


def test_a_body_over_the_limit_is_413_declared_or_streamed(
    small_client: TestClient, headers: dict[str, dict[str, str]]
) -> None:
    big = json.dumps({"event_id": "e", "decision_id": "d", "type": "click", "x": "y" * 10_000})
    r = small_client.post("/v1/events", content=big, headers=headers["events"])
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    assert r.json()["error"]["details"]["max_bytes"] == 4096

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(10):
            yield b" " * 1000

    r = small_client.post("/v1/events", content=chunks(), headers=headers["events"])
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "body_too_large"
    ok = {"event_id": "e1", "decision_id": "d1", "type": "click"}
    assert small_client.post("/v1/events", json=ok, headers=headers["events"]).status_code == 202


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_deep_json_is_422_naming_where(
    client: TestClient, headers: dict[str, dict[str, str]], product: Any, route: str
) -> None:
    for body, where in (
        (b"[" * 2000 + b"]" * 2000, "body" + "[0]" * 32),  # beyond what orjson parses
        (b'{"a":' * 3000 + b"1" + b"}" * 3000, "body" + ".a" * 32),
        (b'{"context": {"a": ' + b"[" * 40 + b"]" * 40 + b"}}", "body.context.a" + "[0]" * 30),
    ):
        r = client.post(route, content=body, headers=headers["admin"])
        assert r.status_code == 422, (route, r.text)
        error = r.json()["error"]
        assert error["details"][0]["field"] == where
        assert "nested deeper than 32" in error["message"]


BAD_IDS = [
    ("e\x00vil", "must not contain control characters"),
    ("tab\there", "must not contain control characters"),
    ("x" * 129, "at most 128 characters"),
    ("", "at least 1 character"),
]


@pytest.mark.parametrize(("event_id", "reason"), BAD_IDS)
def test_ids_the_consumer_refuses_are_refused_over_http_alike(
    client: TestClient, headers: dict[str, dict[str, str]], event_id: str, reason: str
) -> None:
    event = {"event_id": event_id, "decision_id": "d1", "type": "click"}
    with pytest.raises(BadMessage) as refused:
        decode_event(json.dumps(event).encode())
    assert f"event_id: {reason}" in str(refused.value) or reason in str(refused.value)
    r = client.post("/v1/events", json=event, headers=headers["events"])
    assert r.status_code == 422
    [bad] = r.json()["error"]["details"]
    assert bad["index"] == 0 and "event_id" in bad["reason"] and reason in bad["reason"]
    r = client.post(
        "/v1/decisions",
        json={"product_id": "lamp-1", "context": {"k": "v\x00"}},
        headers=headers["serve"],
    )
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "body.context.k"


@pytest.mark.parametrize("route", [*BODY_ROUTES, "/v1/decisions/d1/activate"])
def test_the_key_is_checked_before_the_body_is_parsed(
    client: TestClient, headers: dict[str, dict[str, str]], route: str
) -> None:
    malformed = b'{"product_id": '
    r = client.post(route, content=malformed)
    assert r.status_code == 401, r.text
    r = client.post(route, content=malformed, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401, r.text
    r = client.post(route, content=malformed, headers=headers["analyst"])
    assert r.status_code == 403, r.text
    r = client.post(route, content=malformed, headers=headers["admin"])
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "body"


def test_openapi_states_the_limits_the_server_applies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    def body_schema(path: str) -> dict[str, Any]:
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return content["schema"]  # type: ignore[no-any-return]

    decision = body_schema("/v1/decisions")
    assert decision["required"] == ["product_id"]
    pid = decision["properties"]["product_id"]
    assert (pid["minLength"], pid["maxLength"]) == (1, 128) and "pattern" in pid
    assert decision["properties"]["context"]["maxProperties"] == 64
    event = body_schema("/v1/events")["anyOf"][0]
    for name in ("event_id", "decision_id"):
        field = event["properties"][name]
        assert (field["minLength"], field["maxLength"]) == (1, 128)
        assert field["pattern"] == "^[^\\u0000-\\u001F\\u007F]+$"
    assert event["properties"]["value"]["anyOf"][0]["minimum"] == 0
    assert "413" in spec["paths"]["/v1/events"]["post"]["responses"]


def test_openapi_refuses_what_the_server_refuses(
    client: TestClient, headers: dict[str, dict[str, str]]
) -> None:
    """Bodies schemathesis generated as valid from the schema and the server refused (422):
    context keys with control characters, `ts` out of range, blank product fields."""
    spec = client.get("/openapi.json").json()["paths"]

    def body_schema(path: str) -> dict[str, Any]:
        schema = spec[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return schema.get("anyOf", [schema])[0]  # type: ignore[no-any-return]

    context = body_schema("/v1/decisions")["properties"]["context"]
    assert context["additionalProperties"] is False
    [key_pattern] = context["patternProperties"]
    assert re.search(key_pattern, "device") and not re.search(key_pattern, "de\x12vice")

    text, number = body_schema("/v1/events")["properties"]["ts"]["anyOf"][:2]
    assert (number["minimum"], number["maximum"]) == (946684800000, 7258118400000)
    for i, (ts, valid) in enumerate(
        [("2026-01-02T03:04:05Z", True), ("2026-01-02", True), ("1767323045000", True)]
        + [("0", False), ("1999-12-31", False), ("2026-13-01", False), ("tomorrow", False)]
    ):
        assert bool(re.search(text["pattern"], ts)) is valid, ts
        event = {"event_id": f"e{i}", "decision_id": "d1", "type": "click", "ts": ts}
        r = client.post("/v1/events", json=event, headers=headers["events"])
        assert r.status_code == (202 if valid else 422), (ts, r.text)

    product = body_schema("/v1/products")["properties"]
    for name in ("product_id", "title", "description"):
        pattern = product[name]["pattern"]
        assert re.search(pattern, "Desk lamp") and not re.search(pattern, " \t")
        assert not re.search(pattern, "lamp\x00")
        body = {"product_id": "p1", "title": "t", "description": "d", name: " \t"}
        r = client.post("/v1/products", json=body, headers=headers["admin"])
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == name


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"product_id": "p\x00", "title": "t", "description": "d"}, "product_id", "NUL"),
        ({"product_id": "p1", "title": "t\x00", "description": "d"}, "title", "NUL"),
        (
            {"product_id": "p2", "title": "t", "description": "d", "attributes": {"a": ["b\x00"]}},
            "attributes",
            "a: must not contain NUL",
        ),
    ],
)
def test_strings_postgresql_cannot_store_are_422_not_500(
    client: TestClient,
    headers: dict[str, dict[str, str]],
    product: Any,
    body: dict[str, Any],
    field: str,
    reason: str,
) -> None:
    r = client.post("/v1/products", json=body, headers=headers["admin"])
    assert r.status_code == 422
    [bad] = r.json()["error"]["details"]
    assert bad["field"] == field and reason in bad["reason"]
    text = {"text": "A steel lamp\x00 with 3 settings and a 2 m cord.", "style": "x"}
    r = client.post(
        f"/v1/products/{product.product_id}/variants", json=text, headers=headers["admin"]
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "text"


def test_an_activation_body_too_deep_or_too_big_is_4xx(
    client: TestClient, headers: dict[str, dict[str, str]], product: Any
) -> None:
    d = client.get(f"/v1/products/{product.product_id}/variant?defer=1", headers=headers["serve"])
    url = f"/v1/decisions/{d.json()['decision_id']}/activate"
    deep = client.post(url, content=b"[" * 2000 + b"]" * 2000, headers=headers["serve"])
    assert deep.status_code == 422, deep.text
    assert deep.json()["error"]["details"][0]["field"] == "body" + "[0]" * 32
    big = client.post(url, content=b'{"a":' * 3000 + b"1" + b"}" * 3000, headers=headers["serve"])
    assert big.status_code == 413, big.text
    assert big.json()["error"]["details"] == {"max_bytes": 4096}


def test_a_token_with_non_ascii_characters_is_refused_not_a_server_error(
    client: TestClient, headers: dict[str, dict[str, str]], product: Any
) -> None:
    """`hmac.compare_digest` raises on non-ASCII text; schemathesis found the 500."""
    d = client.get(f"/v1/products/{product.product_id}/variant?defer=1", headers=headers["serve"])
    decision_id = d.json()["decision_id"]
    url = f"/v1/decisions/{decision_id}/activate"
    event = {"event_id": "e1", "decision_id": decision_id, "type": "click", "token": "jeton-é"}
    for r in (
        client.post(url, json={"token": "é" * 22}, headers=headers["storefront"]),
        client.post(url, params={"token": "jeton-é"}, headers=headers["storefront"]),
        client.post("/v1/events", json=event, headers=headers["storefront"]),
    ):
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "invalid_token"


def test_an_html_route_documents_its_errors_as_the_json_they_are(
    client: TestClient, headers: dict[str, dict[str, str]]
) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/reports"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["text/html"]
    for status in ("401", "403", "422"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert list(responses[status]["content"]) == ["application/json"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    r = client.get("/reports?until=null", headers=headers["analyst"])
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["details"][0]["field"] == "query.until"


def test_fastapi_opentelemetry_is_on_only_where_the_operator_asks_for_it() -> None:
    assert fastapi_telemetry({}) == TELEMETRY_OFF
    assert fastapi_telemetry({"PATH": "/usr/bin", "COPYLOOP_API_WORKERS": "2"}) == TELEMETRY_OFF
    assert not any(TELEMETRY_OFF.values())
    assert fastapi_telemetry({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) is None
    assert fastapi_telemetry({"FASTAPI_OTEL_AUTO_CONFIGURE": "true"}) is None


@pytest.mark.parametrize(
    "answer_headers",
    [
        [],
        [(b"content-type", b"application/json")],
        [(b"vary", b"Accept")],
        [(b"vary", b"Accept"), (b"x-a", b"1"), (b"Vary", b"Cookie")],
    ],
)
@pytest.mark.parametrize(
    "request_headers",
    [
        [],
        [(b"origin", b"https://shop.example")],
        [(b"origin", b"https://elsewhere.example")],
        [(b"authorization", b"Bearer k")],
    ],
)
@pytest.mark.parametrize("origins", [["*"], ["https://shop.example"]])
def test_storefront_cors_answers_as_starlettes_cors_middleware(
    answer_headers: list[tuple[bytes, bytes]],
    request_headers: list[tuple[bytes, bytes]],
    origins: list[str],
) -> None:
    """The storefront routes' CORS (with its shortcut for requests without an `Origin`) sends
    what Starlette's `CORSMiddleware` sends, byte for byte."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(answer_headers)})
        await send({"type": "http.response.body", "body": b"{}"})

    def sent_by(app: ASGIApp) -> list[Message]:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/v1/products/p1/variant",
            "headers": list(request_headers),
        }
        messages: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            messages.append(message)

        asyncio.run(app(scope, receive, send))
        return messages

    ours = StorefrontCors(route, origins=origins)
    assert sent_by(ours) == sent_by(ours.cors)
