"""Decoding Kafka message values into the ledger-ready records that `consumer.join` ingests.

Kafka-free: bytes and the message's timestamp in, a frozen record out, or `BadMessage` with a
reason that the loop writes to the dead-letter topic. Validation here goes beyond the message
schemas in `core.messages` to what the ledger's columns can hold, because a row the database
refuses would otherwise poison a whole batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

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
    MAX_EVENT_VALUE,
    Activation,
    Decision,
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


# The records are named tuples: a frozen dataclass's __init__ sets each field through
# object.__setattr__, 0.86 µs for a decision's twelve against 0.17 µs, once per message.
class DecisionRecord(NamedTuple):
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


class EventRecord(NamedTuple):
    """A storefront event with its timestamp resolved (epoch seconds)."""

    event_id: str
    decision_id: str
    type: str
    ts: float
    value: float | None = None


class ActivationRecord(NamedTuple):
    """A deferred decision's activation (`core.messages.Activation`), `ts` in epoch seconds."""

    decision_id: str
    ts: float


def decode_decision(value: bytes | None, partition: int = 0) -> DecisionRecord:
    """Validate one `{prefix}.decisions` message value; raises `BadMessage` saying why."""
    if value is None:
        raise BadMessage("empty message (tombstone)")
    record = _fast_decision(value, partition)
    if record is not None:
        return record
    try:
        msg = Decision.model_validate_json(value)
    except ValidationError as exc:
        raise BadMessage(explain(exc)) from None
    problems = _decision_problems(
        msg.decision_id, msg.product_id, msg.variant_id, msg.actions, msg.pmf, msg.ts
    )
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


def _decision_problems(
    decision_id: str,
    product_id: str,
    variant_id: str,
    actions: Sequence[str],
    pmf: Sequence[float],
    ts: float,
) -> list[str]:
    """What the ledger refuses in a decision the schema accepts (the join needs `variant_id`
    among `actions`, one probability per action, and so on)."""
    problems = []
    if len(decision_id) > _DECISION_ID_MAX:
        problems.append(f"decision_id: longer than {_DECISION_ID_MAX} characters")
    if not 0 < len(variant_id) <= _VARIANT_ID_MAX:
        problems.append(f"variant_id: must have 1 to {_VARIANT_ID_MAX} characters")
    if not actions:
        problems.append("actions: must not be empty")
    elif variant_id not in actions:
        problems.append(f"variant_id: {variant_id!r} is not in actions")
    # min/max over map(): the loops run in C (every message is checked)
    lengths = list(map(len, actions))
    if lengths and not 0 < min(lengths) <= max(lengths) <= _VARIANT_ID_MAX:
        problems.append(f"actions: every id must have 1 to {_VARIANT_ID_MAX} characters")
    if len(pmf) != len(actions):
        problems.append(f"pmf: has {len(pmf)} entries for {len(actions)} actions")
    if pmf and not (all(map(math.isfinite, pmf)) and 0.0 <= min(pmf) and max(pmf) <= 1.0):
        problems.append("pmf: every probability must be in [0, 1]")
    if not (math.isfinite(ts) and _MIN_TS <= ts <= _MAX_TS):
        problems.append(f"ts: must be epoch seconds between 2000 and 2200, got {ts!r}")
    if "\x00" in decision_id or "\x00" in product_id or "\x00" in variant_id:
        problems.append("ids must not contain NUL characters")
    return problems


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
    record = _fast_event(value, kafka_timestamp_ms)
    if record is not None:
        return record
    try:
        event = parse_event(value)
    except ValueError as exc:
        raise BadMessage(str(exc)) from None
    return EventRecord(
        event_id=event.event_id,
        decision_id=event.decision_id,
        type=event.type,
        ts=_event_ts(event.ts, kafka_timestamp_ms),
        value=event.value,
    )


def _event_ts(ts: float | None, kafka_timestamp_ms: int | None) -> float:
    if ts is not None:
        return ts
    if kafka_timestamp_ms and kafka_timestamp_ms > 0:
        return kafka_timestamp_ms / 1000.0
    return time.time()


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


def _json_object(value: bytes) -> dict[str, Any] | None:
    """The message as a JSON object, or None (the schema's path explains the refusal)."""
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return d if type(d) is dict else None


def _fast_event(value: bytes, kafka_timestamp_ms: int | None) -> EventRecord | None:
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
        and (amount is None or (_number(amount) and 0 <= amount <= MAX_EVENT_VALUE))
    ):
        return None
    raw_ts = d.get("ts")
    if raw_ts is None:
        ts = _event_ts(None, kafka_timestamp_ms)
    elif not _number(raw_ts):
        return None  # strings (ISO-8601, digits) take the schema's path
    else:
        try:
            ts = parse_ts(raw_ts)
        except ValueError:
            return None
    return EventRecord(event_id, decision_id, kind, ts, None if amount is None else float(amount))


_POLICIES = frozenset(("bandit", "control", "fallback"))
_STR, _NUMBERS = frozenset((str,)), frozenset((int, float))  # not bool: the schema's path


def _fast_decision(value: bytes, partition: int) -> DecisionRecord | None:
    d = _json_object(value)
    if d is None:
        return None
    # JSON strings hold control characters only as escapes, so without a backslash (or a raw
    # DEL) in the message, none of its strings has one: one scan in C instead of one per string.
    plain = b"\\" not in value and b"\x7f" not in value
    try:
        decision_id, product_id, variant_id = d["decision_id"], d["product_id"], d["variant_id"]
        probability, model_version = d["probability"], d["model_version"]
        actions, pmf, ts, policy = d["actions"], d["pmf"], d["ts"], d["policy"]
    except KeyError:
        return None
    context = d.get("context", {})
    activated = d.get("activated", True)
    # The schema's checks and `_decision_problems`' in one expression, each at most once: what
    # orjson cannot produce (NaN, infinity; control characters in a plain message) is not
    # checked again (apart, the two cost `bench/consume.py`'s decision 17 % more time).
    if not (
        type(decision_id) is str
        and type(product_id) is str
        and type(variant_id) is str
        and 0 < len(decision_id) <= _DECISION_ID_MAX
        and 0 < len(product_id) <= ID_MAX
        and 0 < len(variant_id) <= _VARIANT_ID_MAX
        and (
            plain
            or (is_printable(decision_id) and is_printable(product_id) and "\x00" not in variant_id)
        )
        and type(policy) is str
        and policy in _POLICIES
        and _number(probability)
        and 0 < probability <= 1
        and type(model_version) is int
        and _number(ts)
        and _MIN_TS <= ts <= _MAX_TS
        and type(activated) is bool
        and type(actions) is list
        and type(pmf) is list
        and 0 < len(actions) == len(pmf)
        and set(map(type, actions)) == _STR
        and variant_id in actions
        and 0 < min(map(len, actions))
        and max(map(len, actions)) <= _VARIANT_ID_MAX
        and set(map(type, pmf)) <= _NUMBERS
        and 0.0 <= min(pmf)
        and max(pmf) <= 1.0
        and type(d.get("text", "")) is str
        and type(d.get("style", "")) is str
        and _clean_context(context, plain)
    ):
        return None  # the schema's path explains the refusal
    return DecisionRecord(
        decision_id,
        product_id,
        variant_id,
        policy,
        float(probability),
        model_version,
        context,
        tuple(actions),
        tuple(map(float, pmf)),
        float(ts),
        partition,
        not activated,
    )


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
