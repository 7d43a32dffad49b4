"""Event ingestion: 202 and published, atomic batches, batch limit, receipt-time default."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from core.messages import parse_event
from core.settings import Settings

Reader = Callable[..., list[tuple[int, bytes | None, bytes]]]


def _event(i: int, **kw: object) -> dict[str, object]:
    return {"event_id": f"e{i}", "decision_id": f"d{i % 3}", "type": "click", **kw}


def test_one_event_is_accepted_and_published_with_receipt_time(
    client: TestClient,
    api_settings: Settings,
    headers: dict[str, dict[str, str]],
    read_topic: Reader,
) -> None:
    before = time.time()
    r = client.post("/v1/events", json=_event(1), headers=headers["events"])
    after = time.time()
    assert r.status_code == 202
    assert r.json() == {"accepted": 1}
    [(_, key, value)] = read_topic(api_settings.events_topic, expected=1)
    assert key == b"d1"
    event = parse_event(value)  # the consumer's own parser reads it back
    assert (event.event_id, event.decision_id, event.type) == ("e1", "d1", "click")
    assert event.ts is not None and before - 0.01 <= event.ts <= after + 0.01


def test_a_batch_is_published_with_its_timestamps(
    client: TestClient,
    api_settings: Settings,
    headers: dict[str, dict[str, str]],
    read_topic: Reader,
) -> None:
    batch = [
        _event(0, ts="2026-01-02T03:04:05Z"),
        _event(1, ts=1767323045123),
        _event(2, type="purchase", value=19.99),
    ]
    r = client.post("/v1/events", json={"events": batch}, headers=headers["admin"])
    assert r.status_code == 202
    assert r.json() == {"accepted": 3}
    messages = read_topic(api_settings.events_topic, expected=3)
    events = {e.event_id: e for e in (parse_event(v) for _, _, v in messages)}
    assert sorted(events) == ["e0", "e1", "e2"]
    assert events["e0"].ts == 1767323045.0
    assert abs((events["e1"].ts or 0) - 1767323045.123) < 1e-6
    assert events["e2"].type == "purchase" and events["e2"].value == 19.99
    assert {k for _, k, _ in messages} == {b"d0", b"d1", b"d2"}


def test_a_bad_item_rejects_the_whole_batch(
    client: TestClient,
    api_settings: Settings,
    headers: dict[str, dict[str, str]],
    read_topic: Reader,
) -> None:
    batch = [
        _event(0),
        _event(1, type="view"),
        _event(2),
        {"event_id": "e3", "type": "click"},
        _event(4, ts="yesterday"),
        _event(5, value=-1),
    ]
    r = client.post("/v1/events", json={"events": batch}, headers=headers["events"])
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert [d["index"] for d in error["details"]] == [1, 3, 4, 5]
    reasons = {d["index"]: d["reason"] for d in error["details"]}
    assert reasons[1].startswith("type:")
    assert reasons[3] == "decision_id: Field required"
    assert reasons[4].startswith("ts: must be ISO-8601 or epoch milliseconds")
    assert reasons[5].startswith("value:")
    assert "none was accepted" in error["message"]
    # Nothing was published: a later good event is the only message on the topic.
    assert client.post("/v1/events", json=_event(9), headers=headers["events"]).status_code == 202
    messages = read_topic(api_settings.events_topic, expected=1, settle_s=1.0)
    assert [json.loads(v)["event_id"] for _, _, v in messages] == ["e9"]


def test_batch_limit_and_malformed_bodies(
    client: TestClient, headers: dict[str, dict[str, str]]
) -> None:
    h = headers["events"]
    r = client.post("/v1/events", json={"events": [_event(i) for i in range(1001)]}, headers=h)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "batch_too_large"
    assert r.json()["error"]["details"] == {"max": 1000, "got": 1001}
    r = client.post("/v1/events", json={"events": [_event(i) for i in range(1000)]}, headers=h)
    assert r.status_code == 202 and r.json() == {"accepted": 1000}
    for body in (b"{not json", b"[1, 2]", b'{"events": 3}'):
        r = client.post("/v1/events", content=body, headers=h)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "invalid_request"
    assert client.post("/v1/events", json={"events": []}, headers=h).json() == {"accepted": 0}
