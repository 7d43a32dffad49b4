"""The messages on Kafka, shared by the API (which produces them) and the consumer (which reads
them): a decision, a storefront event, and an activation. Events are validated here once, with
messages that name the field; the API maps a failure to 422, the consumer to the DLQ.

An activation (`POST /v1/decisions/{id}/activate`: the storefront saw the copy) travels on
`{prefix}.events`, keyed by its decision id like the decision's events, as
`{"type": "activation", "decision_id": …, "ts": <epoch ms>}`. The same topic on purpose: the
consumer's ingestion watermark, which keeps a window from closing while its events still wait
in Kafka, then covers activations too, and an activation shares its decision's partition.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EVENT_TYPES = ("click", "add_to_cart", "purchase")
#: `type` of an activation message on `{prefix}.events` (never an event type).
ACTIVATION = "activation"
EventType = Literal["click", "add_to_cart", "purchase"]

#: Epoch timestamps outside these bounds are refused: before 2000 or after 2200 is a unit error.
_MIN_TS, _MAX_TS = 946684800.0, 7258118400.0


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


Id = Annotated[str, Field(min_length=1, max_length=128)]


class EventIn(BaseModel):
    """One storefront event, as producers send it (Kafka value or HTTP body)."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    event_id: Id
    decision_id: Id
    type: EventType
    ts: float | None = Field(None, description="ISO-8601 or epoch ms; default: receipt time.")
    value: float | None = Field(None, ge=0, description="Revenue of a purchase (>= 0).")

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
    context: dict[str, Any] = Field(default_factory=dict)
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
        try:
            raw = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        except RecursionError:
            raise ValueError("not JSON this service reads: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ValueError(f"an event must be a JSON object, got {type(raw).__name__}")
    try:
        return EventIn.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(explain(exc)) from None
