"""The storefront's side of the API: deferred decisions and their activation, publishable keys
(decisions, activations, and events only with their decision's token), rate limits with
Retry-After, CORS on the storefront routes only, and the snippet."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.routes import activations
from consumer.join import ingest
from consumer.records import ActivationRecord, decode_decision, decode_events_message
from core.settings import Settings

Reader = Callable[..., list[tuple[int, bytes | None, bytes]]]
Headers = dict[str, dict[str, str]]


def _key(headers: Headers, role: str) -> str:
    return headers[role]["Authorization"].removeprefix("Bearer ")


def test_deferred_decisions_start_not_activated_and_activate_once_published(
    client: TestClient,
    product: Any,
    api_settings: Settings,
    headers: Headers,
    read_topic: Reader,
) -> None:
    pid = product.product_id
    got = client.get(f"/v1/products/{pid}/variant?device=mobile&defer=1", headers=headers["serve"])
    posted = client.post(
        "/v1/decisions", json={"product_id": pid, "defer": True}, headers=headers["serve"]
    )
    plain = client.get(f"/v1/products/{pid}/variant?defer=0", headers=headers["serve"])
    assert [r.status_code for r in (got, posted, plain)] == [200, 200, 200]
    assert [r.json()["activated"] for r in (got, posted, plain)] == [False, False, True]
    messages = {
        d.decision_id: d
        for d in (decode_decision(v) for _, _, v in read_topic(api_settings.decisions_topic, 3))
    }
    deferred = messages[got.json()["decision_id"]]
    assert deferred.deferred and deferred.context == {"device": "mobile"}  # `defer` is no context
    assert not messages[plain.json()["decision_id"]].deferred

    decision_id = got.json()["decision_id"]
    for body in (None, {"token": got.json()["token"]}):  # served here; then with its token
        r = client.post(
            f"/v1/decisions/{decision_id}/activate", json=body, headers=headers["serve"]
        )
        assert r.status_code == 202, r.text
        assert r.json() == {"decision_id": decision_id, "activated": True}
    published = [
        decode_events_message(v) for _, _, v in read_topic(api_settings.events_topic, expected=2)
    ]
    assert [type(a) for a in published] == [ActivationRecord, ActivationRecord]
    assert {a.decision_id for a in published} == {decision_id}


def test_activation_of_an_unknown_or_forged_decision_is_refused(
    client: TestClient, product: Any, headers: Headers
) -> None:
    r = client.post("/v1/decisions/nope/activate", headers=headers["serve"])
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "decision_not_found"
    d = client.get(f"/v1/products/{product.product_id}/variant?defer=1", headers=headers["serve"])
    forged = client.post(
        f"/v1/decisions/{d.json()['decision_id']}/activate",
        json={"token": "A" * 22},
        headers=headers["storefront"],
    )
    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "invalid_token"
    bad = client.get(
        f"/v1/products/{product.product_id}/variant?defer=maybe", headers=headers["serve"]
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["field"] == "query.defer"


def test_a_publishable_key_fetches_activates_and_posts_events_with_tokens_only(
    client: TestClient, product: Any, headers: Headers, read_topic: Reader, api_settings: Settings
) -> None:
    key = _key(headers, "storefront")
    pid = product.product_id
    d = client.get(f"/v1/products/{pid}/variant?defer=1&key={key}&device=mobile").json()
    assert d["activated"] is False
    activate = client.post(
        f"/v1/decisions/{d['decision_id']}/activate?key={key}",
        content=json.dumps({"token": d["token"]}),
        headers={"Content-Type": "text/plain"},  # as a page's sendBeacon sends it
    )
    assert activate.status_code == 202, activate.text
    event = {"event_id": "e1", "decision_id": d["decision_id"], "type": "click"}
    ok = client.post(f"/v1/events?key={key}", content=json.dumps({**event, "token": d["token"]}))
    assert ok.status_code == 202, ok.text
    published = [json.loads(v) for _, _, v in read_topic(api_settings.events_topic, expected=2)]
    assert [m.get("type") for m in published] == ["activation", "click"]
    assert "token" not in published[1]  # the token proves, it is not stored

    forged = client.post(
        "/v1/events",
        json={
            "events": [{**event, "token": d["token"]}, {**event, "event_id": "e2", "token": "x"}]
        },
        headers=headers["storefront"],
    )
    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "invalid_token"
    assert forged.json()["error"]["details"] == [
        {"index": 1, "field": "token", "reason": "invalid"}
    ]
    other = {**event, "decision_id": "someone-elses", "token": d["token"]}
    assert client.post("/v1/events", json=other, headers=headers["storefront"]).status_code == 403
    for method, path in (
        ("GET", "/v1/reports/uplift"),
        ("GET", f"/v1/products/{pid}"),
        ("POST", "/v1/products"),
        ("GET", "/reports"),
    ):
        r = client.request(method, path, headers=headers["storefront"], json={})
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
    # Only a publishable key may travel in the URL.
    r = client.get(f"/v1/products/{pid}/variant?key={_key(headers, 'serve')}")
    assert r.status_code == 401


@pytest.fixture
def limited(api_settings: Settings) -> Iterator[TestClient]:
    settings = api_settings.model_copy(
        update={
            "storefront_rate_per_s": 0.5,
            "storefront_burst": 3.0,
            "events_rate_per_s": 1.0,
            "events_burst": 1000.0,
        }
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_rate_limits_answer_429_with_retry_after(
    limited: TestClient, product: Any, headers: Headers
) -> None:
    path = f"/v1/products/{product.product_id}/variant"
    codes = [limited.get(path, headers=headers["storefront"]).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = limited.get(path, headers=headers["storefront"])
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) == 2  # one token at 0.5/s, rounded up
    assert limited.get(path, headers=headers["serve"]).status_code == 200  # serve keys: no limit

    batch = {
        "events": [{"event_id": f"e{i}", "decision_id": "d", "type": "click"} for i in range(1000)]
    }
    assert limited.post("/v1/events", json=batch, headers=headers["events"]).status_code == 202
    r = limited.post("/v1/events", json=batch["events"][0], headers=headers["events"])
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    # Another events key has its own bucket.
    assert (
        limited.post("/v1/events", json=batch["events"][0], headers=headers["admin"]).status_code
        == 202
    )


def test_cors_on_storefront_routes_only_and_the_snippet_needs_no_key(client: TestClient) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    for path in ("/v1/events", "/v1/decisions", "/v1/decisions/abc/activate"):
        r = client.options(path, headers=preflight)
        assert r.status_code == 200, path
        assert r.headers["access-control-allow-origin"] == "*"
    r = client.options("/v1/products", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    js = client.get("/v1/client.js", headers={"Origin": "https://shop.example"})
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("application/javascript")
    assert js.headers["access-control-allow-origin"] == "*"
    again = client.get("/v1/client.js", headers={"If-None-Match": js.headers["etag"]})
    assert again.status_code == 304


def test_a_tokenless_activation_waits_for_a_decision_another_process_served(
    client: TestClient,
    product: Any,
    headers: Headers,
    read_topic: Reader,
    api_settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    """With 2 workers, a page that activates at once reaches the worker that did not serve its
    decision half the time, before the consumer stored it: a fresh id waits for the ledger; an
    old or foreign id is refused at once."""
    d = client.get(f"/v1/products/{product.product_id}/variant?defer=1", headers=headers["serve"])
    decision_id = d.json()["decision_id"]
    [(_, _, message)] = read_topic(api_settings.decisions_topic, 1)
    resources = client.app_state["resources"]
    resources.storefront._recent.clear()  # as if a sibling worker had served it

    def store_later() -> None:
        time.sleep(0.5)
        ingest(sessions, [decode_decision(message)], [])

    storing = threading.Thread(target=store_later)
    storing.start()
    started = time.monotonic()
    r = client.post(f"/v1/decisions/{decision_id}/activate", headers=headers["serve"])
    storing.join()
    assert r.status_code == 202, r.text
    assert 0.4 < time.monotonic() - started < activations.WAIT_S

    started = time.monotonic()
    for old in ("0" * 12 + "7" + "0" * 3 + "8" + "0" * 15, uuid.uuid4().hex, "nope"):
        r = client.post(f"/v1/decisions/{old}/activate", headers=headers["serve"])
        assert r.status_code == 404, old
    # a publishable key does not wait either: its pages send the token
    fresh = client.get(
        f"/v1/products/{product.product_id}/variant?defer=1", headers=headers["serve"]
    )
    resources.storefront._recent.clear()
    r = client.post(
        f"/v1/decisions/{fresh.json()['decision_id']}/activate", headers=headers["storefront"]
    )
    assert r.status_code == 404
    assert time.monotonic() - started < 1.0  # no wait for ids not minted seconds ago


@pytest.mark.parametrize(("trusted", "separate"), [(None, True), ("10.9.9.9", False)])
def test_behind_a_trusted_proxy_each_visitor_has_its_own_bucket(
    api_settings: Settings,
    product: Any,
    headers: Headers,
    trusted: str | None,
    separate: bool,
) -> None:
    """Under uvicorn, as `copyloop serve` runs it: X-Forwarded-For from a trusted proxy (by
    default the loopback, as uvicorn's default) names the visitor the storefront limit counts;
    from an untrusted peer it is ignored, and every request counts against the peer."""
    import urllib.error
    import urllib.request

    import uvicorn

    from api.server import uvicorn_config
    from core.broker import free_port

    settings = api_settings.model_copy(
        update={
            "api_port": free_port(),
            "forwarded_allow_ips": trusted,
            "storefront_burst": 2.0,
            "storefront_rate_per_s": 0.01,
        }
    )
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        key = _key(headers, "storefront")
        url = f"http://127.0.0.1:{settings.api_port}/v1/products/{product.product_id}/variant"
        codes = []
        for visitor in range(4):
            request = urllib.request.Request(
                f"{url}?key={key}", headers={"X-Forwarded-For": f"203.0.113.{visitor}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    codes.append(answer.status)
            except urllib.error.HTTPError as refused:
                codes.append(refused.code)
        assert codes == ([200] * 4 if separate else [200, 200, 429, 429])
    finally:
        server.should_exit = True
        thread.join(timeout=20)
