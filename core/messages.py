"""The messages on Kafka, shared by the API (which produces them) and the consumer (which reads
them): a decision, a storefront event, and an activation. Events are validated here once, with
messages that name the field; the API maps a failure to 422, the consumer to the DLQ.

What the API accepts and what the consumer stores are the same rules, defined once here: ids
(`Id`: 1 to 128 characters, no control characters, which the ledger cannot key or PostgreSQL
cannot store), and the page-view context (`Context`: flat scalars, bounded, no NUL). So an
event the API answered 202 is never dead-lettered by the consumer for its content.

An activation (`POST /v1/decisions/{id}/activate`: the storefront saw the copy) travels on
`{prefix}.events`, keyed by its decision id like the decision's events, as
`{"type": "activation", "decision_id": …, "ts": <epoch ms>}`. The same topic on purpose: the
consumer's ingestion watermark, which keeps a window from closing while its events still wait
in Kafka, then covers activations too, and an activation shares its decision's partition.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

EVENT_TYPES = ("click", "add_to_cart", "purchase")
#: `type` of an activation message on `{prefix}.events` (never an event type).
ACTIVATION = "activation"
EventType = Literal["click", "add_to_cart", "purchase"]

#: Epoch timestamps outside these bounds are refused: before 2000 or after 2200 is a unit error.
_MIN_TS, _MAX_TS = 946684800.0, 7258118400.0
#: What `parse_ts` accepts, as JSON schema for OpenAPI (the string pattern is a little narrower:
#: ISO-8601 dates and times in 2001-2199, or epoch milliseconds in digits).
TS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^((200[1-9]|20[1-9][0-9]|21[0-9]{2})"
            r"-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
            r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
            r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?|(9[5-9][0-9]{10}|[1-6][0-9]{12}))$",
        },
        {"type": "number", "minimum": _MIN_TS * 1000, "maximum": _MAX_TS * 1000},
    ]
}


def parse_ts(value: object) -> float:
    """Epoch seconds from ISO-8601 (naive means UTC) or epoch milliseconds (number or digits).

    >>> parse_ts("2026-01-02T03:04:05Z"), parse_ts(1767323045000), parse_ts("1767323045000.5")
    (1767323045.0, 1767323045.0, 1767323045.0005)
    """
    if isinstance(value, bool):
        raise ValueError("must be an ISO-8601 string or epoch milliseconds, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value) / 1000.0
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text) / 1000.0
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"must be ISO-8601 or epoch milliseconds, got {value!r}") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
    else:
        raise ValueError(f"must be an ISO-8601 string or epoch milliseconds, got {value!r}")
    if not math.isfinite(seconds) or not _MIN_TS <= seconds <= _MAX_TS:
        raise ValueError(
            f"is out of range (epoch milliseconds between 2000 and 2200), got {value!r}"
        )
    return seconds


ID_MAX = 128
MAX_CONTEXT_KEYS = 64
MAX_CONTEXT_KEY_CHARS = 64
MAX_CONTEXT_CHARS = 256
#: Largest purchase value: beyond any one purchase, and small enough that sums of billions of
#: them stay finite (two values near the float maximum summed to infinity, which the report
#: could only show as null).
MAX_EVENT_VALUE = 1e12
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The same rule as a JSON-schema pattern, for OpenAPI (ECMA regex syntax).
PRINTABLE_PATTERN = r"^[^\u0000-\u001F\u007F]+$"


def is_clean_id(value: object) -> bool:
    """What `Id` accepts, as a cheap check for the consumer's fast path.

    >>> is_clean_id("e-1"), is_clean_id("e\\x00"), is_clean_id(""), is_clean_id("x" * 129)
    (True, False, False, False)
    """
    return (
        type(value) is str
        and 0 < len(value) <= ID_MAX
        and value == value.strip()
        and not _CONTROL.search(value)
    )


def is_printable(value: str) -> bool:
    """No control character (NUL, tab, newline…) in `value`: what `Id` and context keys need."""
    return not _CONTROL.search(value)


def _printable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (NUL, tab, newline…)")
    return value


Id = Annotated[
    str,
    Field(min_length=1, max_length=ID_MAX, json_schema_extra={"pattern": PRINTABLE_PATTERN}),
    AfterValidator(_printable),
]

ContextKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_CONTEXT_KEY_CHARS,
        json_schema_extra={"pattern": PRINTABLE_PATTERN},
    ),
    AfterValidator(_printable),
]


def _context_scalar(value: Any) -> Any:
    """A context value must be a scalar VW can turn into one feature; one clear message if not."""
    if isinstance(value, str):
        if len(value) > MAX_CONTEXT_CHARS:
            raise ValueError(f"must be at most {MAX_CONTEXT_CHARS} characters, got {len(value)}")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ValueError(
        f"must be a string, a finite number, a boolean or null, got {type(value).__name__}"
    )


ContextValue = Annotated[
    Any,
    AfterValidator(_context_scalar),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "maxLength": MAX_CONTEXT_CHARS, "pattern": "^[^\\u0000]*$"},
                {"type": "number"},
                {"type": "boolean"},
                {"type": "null"},
            ]
        }
    ),
]
Context = Annotated[
    dict[ContextKey, ContextValue],
    Field(
        max_length=MAX_CONTEXT_KEYS,
        json_schema_extra={"additionalProperties": False},  # a key must match the key pattern
        description="Page-view features (device, segment, locale, hour, referrer, any key): "
        "flat, scalar values; each becomes a shared VW feature.",
        examples=[{"device": "mobile", "segment": "returning", "locale": "en-GB"}],
    ),
]
CONTEXT: TypeAdapter[dict[str, Any]] = TypeAdapter(Context)


class EventIn(BaseModel):
    """One storefront event, as producers send it (Kafka value or HTTP body)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    event_id: Id
    decision_id: Id
    type: EventType
    ts: float | None = Field(None, description="ISO-8601 or epoch ms; default: receipt time.")
    value: float | None = Field(
        None, ge=0, le=MAX_EVENT_VALUE, description="Revenue of a purchase (>= 0, <= 1e12)."
    )

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: object) -> float | None:
        return None if value is None else parse_ts(value)

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class Decision(BaseModel):
    """A served decision as published to `{prefix}.decisions` (key = decision_id)."""

    model_config = ConfigDict(extra="ignore")

    decision_id: Id
    product_id: Id
    variant_id: str
    text: str = ""
    style: str = ""
    policy: Literal["bandit", "control", "fallback"]
    probability: float = Field(gt=0, le=1)
    model_version: int
    context: Context = Field(default_factory=dict)
    actions: list[str]
    pmf: list[float]
    ts: float
    activated: bool = Field(
        True, description="False for a deferred decision: it counts once activated in time."
    )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude={"text"}).encode()


class Activation(BaseModel):
    """A deferred decision's copy was seen: `{prefix}.events`, key = decision_id."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    type: Literal["activation"]
    decision_id: Id
    ts: float = Field(description="ISO-8601 or epoch ms: when the storefront activated it.")

    @field_validator("ts", mode="before")
    @classmethod
    def _parse_ts(cls, value: object) -> float:
        return parse_ts(value)

    def to_bytes(self) -> bytes:
        """The message value, `ts` in epoch milliseconds like the events'."""
        body = {"type": ACTIVATION, "decision_id": self.decision_id, "ts": self.ts * 1000.0}
        return json.dumps(body, separators=(",", ":")).encode()


def explain(exc: ValidationError) -> str:
    """One line naming each bad field and why: `ts: must be ISO-8601 …; type: Input should be …`."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse_event(raw: bytes | str | dict[str, Any]) -> EventIn:
    """Decode and validate one event; raises ValueError with a reason naming the field."""
    if isinstance(raw, bytes | str):
        raw = _loads(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"an event must be a JSON object, got {type(raw).__name__}")
    try:
        return EventIn.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(explain(exc)) from None


def _loads(raw: bytes | str) -> Any:
    """JSON, or ValueError saying why not. Nesting is judged by orjson's fixed depth limit
    first, so the reason does not depend on how deep this Python's own parser can go (3.11's
    raises RecursionError near 1,000 levels; 3.13's parses far deeper)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise ValueError("not JSON this service reads: nested too deeply") from None
    try:  # for the standard library's wording of what is wrong, and where
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not JSON this service reads: nested too deeply") from None
