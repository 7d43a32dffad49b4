"""Event ingestion over HTTP, for producers that cannot speak Kafka.

The body is one event or `{"events": [...]}` (at most `MAX_BATCH`). Every item is validated with
the consumer's own `EventIn` before anything is published, so a batch is atomic: one bad item
gives 422 naming each bad index and why, and nothing is accepted. A missing `ts` is filled with
the receipt time. Each event is published to `{prefix}.events` keyed by its decision id, with `ts`
in epoch milliseconds, so the consumer parses it with the same `EventIn`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from api.auth import require
from api.bodies import batch_items, read_json
from api.decision_log import Kind
from api.deps import MetricsDep, PublisherDep, SettingsDep
from api.errors import AUTH_RESPONSES, ErrorResponse, InvalidRequest
from api.schemas import EventsAccepted
from core.messages import EventIn, explain

MAX_BATCH = 1000

router = APIRouter(tags=["events"], dependencies=[Depends(require("events"))])


def _event_schema() -> dict[str, Any]:
    schema = EventIn.model_json_schema()
    schema["properties"]["ts"] = {
        "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}],
        "description": "ISO-8601 or epoch milliseconds; default: receipt time.",
    }
    return schema


def _body_schema() -> dict[str, Any]:
    event = _event_schema()
    batch = {
        "type": "object",
        "title": "EventBatch",
        "properties": {"events": {"type": "array", "items": event, "maxItems": MAX_BATCH}},
        "required": ["events"],
    }
    return {"anyOf": [event, batch]}


@router.post(
    "/v1/events",
    status_code=202,
    response_model=EventsAccepted,
    responses={
        **AUTH_RESPONSES,
        413: {"model": ErrorResponse, "description": f"More than {MAX_BATCH} events."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _body_schema()}},
        }
    },
)
async def ingest_events(
    request: Request, publisher: PublisherDep, settings: SettingsDep, metrics: MetricsDep
) -> EventsAccepted:
    """Accept one event or a batch; all or nothing."""
    items = batch_items(await read_json(request), "events", MAX_BATCH)
    received_ms = time.time() * 1000.0
    events, bad = [], []
    for i, item in enumerate(items):
        try:
            events.append(EventIn.model_validate(item))
        except ValidationError as exc:
            bad.append({"index": i, "reason": explain(exc)})
    if bad:
        where = ", ".join(str(b["index"]) for b in bad)
        raise InvalidRequest(
            f"{len(bad)} of {len(items)} events are invalid (index {where}); none was accepted",
            bad,
        )
    messages = []
    for event in events:
        payload = {
            "event_id": event.event_id,
            "decision_id": event.decision_id,
            "type": event.type,
            "ts": received_ms if event.ts is None else event.ts * 1000.0,
            "value": event.value,
        }
        value = json.dumps(payload, separators=(",", ":")).encode()
        messages.append(
            (settings.events_topic, event.decision_id, value, Kind.EVENT, event.event_id)
        )
    publisher.publish_many(messages)  # durable, all of them, before the 202
    metrics.events.inc(len(events))
    return EventsAccepted(accepted=len(events))
