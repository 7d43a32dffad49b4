"""Decoding Kafka message values into the ledger-ready records that `consumer.join` ingests.

Kafka-free: bytes and the message's timestamp in, a frozen record out, or `BadMessage` with a
reason that the loop writes to the dead-letter topic. Validation here goes beyond the message
schemas in `core.messages` to what the ledger's columns can hold, because a row the database
refuses would otherwise poison a whole batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from consumer.errors import BadMessage
from core.messages import (
    ACTIVATION,
    EVENT_TYPES,
    ID_MAX,
    MAX_CONTEXT_CHARS,
    MAX_CONTEXT_KEY_CHARS,
    MAX_CONTEXT_KEYS,
    Activation,
    Decision,
    EventIn,
    explain,
    is_clean_id,
    is_printable,
    parse_event,
    parse_ts,
)

#: Widths of the ledger's key columns (`core.ledger.tables`).
_DECISION_ID_MAX = 64
_VARIANT_ID_MAX = 64
#: A decision's `ts` (epoch seconds) outside 2000..2200 is a unit error (milliseconds, say).
_MIN_TS, _MAX_TS = 946684800.0, 7258118400.0
_EVENT_TYPES = frozenset(EVENT_TYPES)


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A served decision as the ledger stores it. `actions[chosen]` is the served variant."""

    decision_id: str
    product_id: str
    variant_id: str
    policy: str
    probability: float
    model_version: int
    context: Mapping[str, Any]
    actions: tuple[str, ...]
    pmf: tuple[float, ...]
    ts: float
    partition: int = 0
    deferred: bool = False

    @property
    def chosen(self) -> int:
        return self.actions.index(self.variant_id)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A storefront event with its timestamp resolved (epoch seconds)."""

    event_id: str
    decision_id: str
    type: str
    ts: float
    value: float | None = None


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    """A deferred decision's activation (`core.messages.Activation`), `ts` in epoch seconds."""

    decision_id: str
    ts: float


def decode_decision(value: bytes | None, partition: int = 0) -> DecisionRecord:
    """Validate one `{prefix}.decisions` message value; raises `BadMessage` saying why."""
    if value is None:
        raise BadMessage("empty message (tombstone)")
    msg: _FastDecision | Decision | None = _fast_decision(value)
    if msg is None:
        try:
            msg = Decision.model_validate_json(value)
        except ValidationError as exc:
            raise BadMessage(explain(exc)) from None
    problems = []
    if len(msg.decision_id) > _DECISION_ID_MAX:
        problems.append(f"decision_id: longer than {_DECISION_ID_MAX} characters")
    if not 0 < len(msg.variant_id) <= _VARIANT_ID_MAX:
        problems.append(f"variant_id: must have 1 to {_VARIANT_ID_MAX} characters")
    if not msg.actions:
        problems.append("actions: must not be empty")
    elif msg.variant_id not in msg.actions:
        problems.append(f"variant_id: {msg.variant_id!r} is not in actions")
    # min/max over map(): the loops run in C (every message is checked)
    lengths = list(map(len, msg.actions))
    if lengths and not 0 < min(lengths) <= max(lengths) <= _VARIANT_ID_MAX:
        problems.append(f"actions: every id must have 1 to {_VARIANT_ID_MAX} characters")
    if len(msg.pmf) != len(msg.actions):
        problems.append(f"pmf: has {len(msg.pmf)} entries for {len(msg.actions)} actions")
    if msg.pmf and not (
        all(map(math.isfinite, msg.pmf)) and 0.0 <= min(msg.pmf) and max(msg.pmf) <= 1.0
    ):
        problems.append("pmf: every probability must be in [0, 1]")
    if not (math.isfinite(msg.ts) and _MIN_TS <= msg.ts <= _MAX_TS):
        problems.append(f"ts: must be epoch seconds between 2000 and 2200, got {msg.ts!r}")
    if "\x00" in msg.decision_id or "\x00" in msg.product_id or "\x00" in msg.variant_id:
        problems.append("ids must not contain NUL characters")
    if problems:
        raise BadMessage("; ".join(problems))
    return DecisionRecord(
        decision_id=msg.decision_id,
        product_id=msg.product_id,
        variant_id=msg.variant_id,
        policy=msg.policy,
        probability=msg.probability,
        model_version=msg.model_version,
        context=msg.context,
        actions=tuple(msg.actions),
        pmf=tuple(msg.pmf),
        ts=msg.ts,
        partition=partition,
        deferred=not msg.activated,
    )


def decode_events_message(
    value: bytes | None, kafka_timestamp_ms: int | None = None
) -> EventRecord | ActivationRecord:
    """One `{prefix}.events` message: an event, or an activation (`"type": "activation"`).

    Activations are rare beside events and are told apart by a substring test first, so the
    events' fast path costs one `in` more."""
    if value is not None and b'"activation"' in value:
        try:
            msg = Activation.model_validate_json(value)
        except ValidationError as exc:
            if _type_of(value) == ACTIVATION:
                raise BadMessage(explain(exc)) from None
        else:
            if "\x00" in msg.decision_id:
                raise BadMessage("ids must not contain NUL characters")
            return ActivationRecord(decision_id=msg.decision_id, ts=msg.ts)
    return decode_event(value, kafka_timestamp_ms)


def _type_of(value: bytes) -> object:
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return d.get("type") if isinstance(d, dict) else None


def decode_event(value: bytes | None, kafka_timestamp_ms: int | None = None) -> EventRecord:
    """Validate one `{prefix}.events` message value. An event without `ts` takes the message's
    Kafka timestamp (its receipt time), or the wall clock when the message has none."""
    if value is None:
        raise BadMessage("empty message (tombstone)")
    event: _FastEvent | EventIn | None = _fast_event(value)
    if event is None:
        try:
            event = parse_event(value)
        except ValueError as exc:
            raise BadMessage(str(exc)) from None
    ts = event.ts
    if ts is None:
        ts = kafka_timestamp_ms / 1000.0 if kafka_timestamp_ms and kafka_timestamp_ms > 0 else None
    return EventRecord(
        event_id=event.event_id,
        decision_id=event.decision_id,
        type=event.type,
        ts=time.time() if ts is None else ts,
        value=event.value,
    )


# -- the fast paths --------------------------------------------------------------------------------
# `parse_event` (json.loads, then pydantic on the dict) costs ~4x orjson plus the checks below
# (measured on well-formed events). Well-formed messages (all of them in practice) are read with
# orjson and checked by hand; the checks accept a strict subset of what `EventIn` and `Decision`
# accept, giving the same values, so anything unusual (a wrong type, a string to coerce,
# whitespace to strip, not JSON) returns None and goes through the schema, which explains the
# problem for the DLQ. For decisions, `Decision.model_validate_json` runs a Python validator per
# id and per context key and value: 2.4x the time of orjson and the checks here (a decision with
# five context keys, `bench/consume.py`'s).


def _number(x: object) -> bool:
    return type(x) is float or type(x) is int


class _FastEvent:
    """The `core.messages.EventIn` fields `decode_event` reads."""

    __slots__ = ("event_id", "decision_id", "type", "ts", "value")

    def __init__(self, d: dict[str, Any], ts: float | None) -> None:
        self.event_id: str = d["event_id"]
        self.decision_id: str = d["decision_id"]
        self.type: str = d["type"]
        self.ts = ts
        value = d.get("value")
        self.value = None if value is None else float(value)


def _json_object(value: bytes) -> dict[str, Any] | None:
    """The message as a JSON object, or None (the schema's path explains the refusal)."""
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return d if type(d) is dict else None


def _fast_event(value: bytes) -> _FastEvent | None:
    d = _json_object(value)
    if d is None:
        return None
    try:
        event_id, decision_id, kind = d["event_id"], d["decision_id"], d["type"]
    except KeyError:
        return None
    amount = d.get("value")
    if not (
        is_clean_id(event_id)  # else the schema strips whitespace, or explains the refusal
        and is_clean_id(decision_id)
        and type(kind) is str
        and kind in _EVENT_TYPES
        and (amount is None or (_number(amount) and 0 <= amount and math.isfinite(amount)))
    ):
        return None
    raw_ts = d.get("ts")
    if raw_ts is None:
        return _FastEvent(d, None)
    if not _number(raw_ts):
        return None  # strings (ISO-8601, digits) take the schema's path
    try:
        return _FastEvent(d, parse_ts(raw_ts))
    except ValueError:
        return None


_POLICIES = frozenset(("bandit", "control", "fallback"))
_STR, _NUMBERS = frozenset((str,)), frozenset((int, float))  # not bool: the schema's path


class _FastDecision:
    """The `core.messages.Decision` fields `decode_decision` reads."""

    __slots__ = (
        "decision_id",
        "product_id",
        "variant_id",
        "policy",
        "probability",
        "model_version",
        "context",
        "actions",
        "pmf",
        "ts",
        "activated",
    )

    def __init__(self, d: dict[str, Any], context: dict[str, Any]) -> None:
        self.decision_id: str = d["decision_id"]
        self.product_id: str = d["product_id"]
        self.variant_id: str = d["variant_id"]
        self.policy: str = d["policy"]
        self.probability = float(d["probability"])
        self.model_version: int = d["model_version"]
        self.context = context
        self.actions: list[str] = d["actions"]
        self.pmf = tuple(map(float, d["pmf"]))
        self.ts = float(d["ts"])
        self.activated: bool = d.get("activated", True)


def _fast_decision(value: bytes) -> _FastDecision | None:
    d = _json_object(value)
    if d is None:
        return None
    # JSON strings hold control characters only as escapes, so without a backslash (or a raw
    # DEL) in the message, none of its strings has one: one scan in C instead of one per string.
    plain = b"\\" not in value and b"\x7f" not in value
    try:
        probability, model_version = d["probability"], d["model_version"]
        actions, pmf, ts, policy = d["actions"], d["pmf"], d["ts"], d["policy"]
        if not (_is_id(d["decision_id"], plain) and _is_id(d["product_id"], plain)):
            return None
        if type(d["variant_id"]) is not str:
            return None
    except KeyError:
        return None
    context = d.get("context", {})
    if not (
        type(policy) is str
        and policy in _POLICIES
        and _number(probability)
        and 0 < probability <= 1
        and type(model_version) is int
        and type(actions) is list
        and set(map(type, actions)) <= _STR
        and type(pmf) is list
        and set(map(type, pmf)) <= _NUMBERS
        and _number(ts)
        and type(d.get("activated", True)) is bool
        and type(d.get("text", "")) is str
        and type(d.get("style", "")) is str
        and _clean_context(context, plain)
    ):
        return None
    return _FastDecision(d, context)


def _is_id(value: object, plain: bool) -> bool:
    """What `core.messages.Id` accepts unchanged; `plain`: no string of the message can hold a
    control character."""
    return type(value) is str and 0 < len(value) <= ID_MAX and (plain or is_printable(value))


def _clean_context(context: object, plain: bool) -> bool:
    """Whether `core.messages.Context` accepts `context` unchanged (a strict subset of it)."""
    if type(context) is not dict or len(context) > MAX_CONTEXT_KEYS:
        return False
    for key, value in context.items():
        if not (0 < len(key) <= MAX_CONTEXT_KEY_CHARS and (plain or is_printable(key))):
            return False
        kind = type(value)
        if kind is str:
            if len(value) > MAX_CONTEXT_CHARS or (not plain and "\x00" in value):
                return False
        elif not (value is None or kind is bool or kind is int or kind is float):
            return False  # orjson's floats are finite: JSON has no NaN or infinity
    return True


__all__ = [
    "ActivationRecord",
    "DecisionRecord",
    "EventRecord",
    "decode_decision",
    "decode_event",
    "decode_events_message",
]
