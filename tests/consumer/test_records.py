"""Decoding Kafka values: what the ledger can hold gets through, the rest is refused with a reason
that names the field (the reason is what the dead-letter topic carries)."""

from __future__ import annotations

import json

import pytest

from consumer import BadMessage, LedgerUnavailable
from consumer.join import ingest
from consumer.records import decode_decision, decode_event
from core.ledger import make_engine, make_sessionmaker


def decision_json(**changes: object) -> bytes:
    body: dict[str, object] = {
        "decision_id": "d1",
        "product_id": "p1",
        "variant_id": "v2",
        "policy": "bandit",
        "probability": 0.5,
        "model_version": 3,
        "context": {"device": "mobile"},
        "actions": ["v1", "v2"],
        "pmf": [0.5, 0.5],
        "ts": 1767323045.123456,
    }
    body.update(changes)
    return json.dumps(body).encode()


def test_a_valid_decision_decodes_with_its_partition():
    record = decode_decision(decision_json(), partition=3)

    assert (record.decision_id, record.chosen, record.partition) == ("d1", 1, 3)
    assert record.ts == 1767323045.123456
    assert record.actions == ("v1", "v2")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"variant_id": "v9"}, "variant_id: 'v9' is not in actions"),
        ({"pmf": [1.0]}, "pmf: has 1 entries for 2 actions"),
        ({"pmf": [0.5, 1.5]}, "pmf: every probability must be in [0, 1]"),
        ({"actions": []}, "actions: must not be empty"),
        ({"decision_id": "d" * 65}, "decision_id: longer than 64 characters"),
        ({"ts": 1767323045123.0}, "ts: must be epoch seconds between 2000 and 2200, got 17673"),
        ({"probability": 0}, "probability: Input should be greater than 0"),
        ({"policy": "greedy"}, "policy: Input should be 'bandit', 'control' or 'fallback'"),
        ({"decision_id": "a\x00b"}, "decision_id: must not contain control characters"),
    ],
)
def test_a_bad_decision_is_refused_with_a_reason(changes, reason):
    with pytest.raises(BadMessage) as info:
        decode_decision(decision_json(**changes))

    assert reason in str(info.value)
    assert info.value.retriable is False


def test_an_event_without_ts_takes_the_kafka_timestamp():
    value = b'{"event_id": "e1", "decision_id": "d1", "type": "purchase", "value": 19.99}'

    event = decode_event(value, kafka_timestamp_ms=1767323045500)

    assert (event.ts, event.type, event.value) == (1767323045.5, "purchase", 19.99)


def test_an_event_ts_may_be_iso_or_epoch_ms():
    iso = decode_event(
        b'{"event_id": "e", "decision_id": "d", "type": "click", "ts": "2026-01-02T03:04:05Z"}', 1
    )
    ms = decode_event(
        b'{"event_id": "e", "decision_id": "d", "type": "click", "ts": 1767323045000}', 1
    )

    assert (iso.ts, ms.ts) == (1767323045.0, 1767323045.0)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "an event must be a JSON object, got list"),
        (b'{"event_id": "e", "decision_id": "d", "type": "view"}', "type: Input should be"),
        (
            b'{"event_id": "e", "decision_id": "d", "type": "purchase", "value": -1}',
            "value: Input should be greater than or equal to 0",
        ),
        (None, "empty message (tombstone)"),
    ],
)
def test_a_bad_event_is_refused_with_a_reason(value, reason):
    with pytest.raises(BadMessage) as info:
        decode_event(value, 1767323045000)

    assert reason in str(info.value)


def test_an_unreachable_ledger_is_retriable():
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(LedgerUnavailable) as info:
            ingest(make_sessionmaker(engine), [decode_decision(decision_json())], [])
    finally:
        engine.dispose()

    assert info.value.retriable is True


@pytest.mark.parametrize(
    "value",
    [
        b'{"event_id": "e1", "decision_id": "d1", "type": "click", "ts": 1767323045000}',
        b'{"event_id": "e1", "decision_id": "d1", "type": "purchase", "value": 20, "ts": 1.7e12}',
        b'{"event_id": " e1 ", "decision_id": "d1\\t", "type": "click"}',  # stripped
        b'{"event_id": "e1", "decision_id": "d1", "type": "click", "ts": "1767323045000"}',
        b'{"event_id": "e1", "decision_id": "d1", "type": "click", "ts": "2026-01-02T03:04:05"}',
        b'{"event_id": "e1", "decision_id": "d1", "type": "purchase", "value": "19.5"}',
        b'{"event_id": "e1", "decision_id": "d1", "type": "click", "extra": [1, {"a": null}]}',
        b'{"event_id": "e1", "decision_id": "d1", "type": "click", "value": null, "ts": null}',
    ],
)
def test_the_fast_event_decoder_agrees_with_the_schema(value: bytes) -> None:
    from core.messages import parse_event

    reference = parse_event(value)

    event = decode_event(value, kafka_timestamp_ms=1767323045500)

    assert (event.event_id, event.decision_id, event.type, event.value) == (
        reference.event_id,
        reference.decision_id,
        reference.type,
        reference.value,
    )
    assert event.ts == (reference.ts if reference.ts is not None else 1767323045.5)
    assert type(event.value) is type(reference.value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"event_id": "e1", "decision_id": "d1", "type": "view"}', "type: Input should be"),
        (b'{"event_id": "", "decision_id": "d1", "type": "click"}', "event_id: String should"),
        (b'{"event_id": "e1", "type": "click"}', "decision_id: Field required"),
        (b'{"event_id": "e1", "decision_id": "d1", "type": "click", "ts": 1}', "ts: is out of"),
        (b'{"event_id": "e1", "decision_id": "d1", "type": "purchase", "value": -1}', "value:"),
        (b'{"event_id": "e1", "decision_id": "d1", "type": "click", "value": NaN}', "value:"),
        (
            b'{"event_id": "e1", "decision_id": "d1", "type": "purchase", "value": 1.5e308}',
            "value: Input should be less than or equal to 1000000000000",
        ),
        (b'{"event_id": "e1", "decision_id": "d1", "type": true}', "type:"),
        (b"[1, 2]", "an event must be a JSON object, got list"),
        (b"\xff{", "not JSON"),
    ],
)
def test_a_bad_event_is_refused_with_the_schemas_reason(value: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as info:
        decode_event(value, 1)

    assert reason in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"probability": 1, "pmf": [0, 1], "ts": 1767323045},  # integers where floats go
        {"context": {"device": "mobile", "hour": 3, "new": True, "score": 0.5, "ref": None}},
        {"activated": False, "text": "Soft cotton.", "style": "concise", "extra": [1]},
        {"context": {" padded ": "x"}},  # the schema's path: keys are kept as sent
        {"decision_id": " d1 "},  # the schema's path: Decision does not strip ids
        {"probability": "0.5", "model_version": 3.0},  # strings and floats coerced by the schema
        {"activated": 1, "model_version": True, "pmf": [0.5, True]},  # the schema's bools
    ],
)
def test_the_fast_decision_decoder_agrees_with_the_schema(changes: dict[str, object]) -> None:
    from core.messages import Decision

    value = decision_json(**changes)
    reference = Decision.model_validate_json(value)

    record = decode_decision(value, partition=2)

    assert record.context == reference.context
    assert [type(v) for v in record.context.values()] == [
        type(v) for v in reference.context.values()
    ]
    assert (record.decision_id, record.product_id, record.variant_id, record.policy) == (
        reference.decision_id,
        reference.product_id,
        reference.variant_id,
        reference.policy,
    )
    assert (record.probability, record.model_version, record.ts) == (
        reference.probability,
        reference.model_version,
        reference.ts,
    )
    assert type(record.probability) is float and type(record.ts) is float
    assert record.actions == tuple(reference.actions)
    assert record.pmf == tuple(reference.pmf)
    assert all(type(p) is float for p in record.pmf)
    assert record.deferred is (not reference.activated)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"context": {"device": {"nested": 1}}}, "context.device: must be a string"),
        ({"context": {"k" * 65: "x"}}, "context.kkkk"),
        ({"context": {"device": "x" * 257}}, "context.device: must be at most 256"),
        ({"context": ["mobile"]}, "context: Input should be an object"),
        ({"context": None}, "context: Input should be an object"),
        ({"actions": ["v1", 2], "variant_id": "v1"}, "actions.1: Input should be a valid string"),
        ({"pmf": [0.5, "high"]}, "pmf.1: Input should be a valid number"),
    ],
)
def test_a_decision_the_fast_path_refuses_gets_the_schemas_reason(
    changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(BadMessage) as info:
        decode_decision(decision_json(**changes))

    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"decision_id": "d\x01"}, "decision_id: must not contain control characters"),
        ({"product_id": "p\n1"}, "product_id: must not contain control characters"),
        ({"context": {"dev\tice": "x"}}, "context.dev\tice.[key]: must not contain control"),
        ({"context": {"device": "mo\x00bile"}}, "context.device: must not contain NUL"),
    ],
)
def test_escaped_control_characters_take_the_schemas_path(changes, reason) -> None:
    value = decision_json(**changes)
    assert b"\\" in value  # JSON escapes them: the fast path's cue to look closer

    with pytest.raises(BadMessage) as info:
        decode_decision(value)

    assert reason in str(info.value)
