"""Event ingestion over HTTP, for producers that cannot speak Kafka.

The body is one event or `{"events": [...]}` (at most `MAX_BATCH`). Every item is validated with
the consumer's own `EventIn` before anything is published, so a batch is atomic: one bad item
gives 422 naming each bad index and why, and nothing is accepted. A missing `ts` is filled with
the receipt time. Each event is published to `{prefix}.events` keyed by its decision id, with `ts`
in epoch milliseconds, so the consumer parses it with the same `EventIn`.

A `storefront` key (publishable, in web pages) may post only events that carry their decision's
`token` (`core.tokens`); one missing or wrong token refuses the batch (403 `invalid_token`,
naming each index). An `events` key is rate limited per key, per event (429 with
`Retry-After`); a storefront key per key and client address, one request plus one per extra event.
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
from api.deps import MetricsDep, PublisherDep, ResourcesDep, SettingsDep
from api.errors import AUTH_RESPONSES, ErrorResponse, InvalidRequest, InvalidToken, RateLimited
from api.schemas import EventsAccepted
from core.messages import TS_SCHEMA, EventIn, explain

MAX_BATCH = 1000

router = APIRouter(tags=["events"], dependencies=[Depends(require("events", "storefront"))])


def _event_schema() -> dict[str, Any]:
    schema = EventIn.model_json_schema()
    schema["properties"]["ts"] = {
        "anyOf": [*TS_SCHEMA["anyOf"], {"type": "null"}],
        "description": "ISO-8601 or epoch milliseconds (2000 to 2200); default: receipt time.",
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
        429: {"model": ErrorResponse, "description": "Rate limited; see `Retry-After`."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _body_schema()}},
        }
    },
)
async def ingest_events(
    request: Request,
    publisher: PublisherDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    resources: ResourcesDep,
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
    _check_storefront_tokens(request, resources, items, events)
    _rate_limit(request, resources, len(events))
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


def _check_storefront_tokens(
    request: Request, resources: ResourcesDep, items: list[Any], events: list[EventIn]
) -> None:
    """A storefront key's events must each carry their decision's token."""
    if request.state.role != "storefront":
        return
    signer = resources.storefront.signer
    forged = [
        {"index": i, "field": "token", "reason": "missing" if "token" not in item else "invalid"}
        for i, (item, event) in enumerate(zip(items, events, strict=True))
        if not signer.verify(event.decision_id, item.get("token"))
    ]
    if forged:
        where = ", ".join(str(f["index"]) for f in forged)
        raise InvalidToken(
            f"a storefront key posts only events that carry their decision's token (index "
            f"{where}); none was accepted",
            forged,
        )


def _rate_limit(request: Request, resources: ResourcesDep, n: int) -> None:
    """Per events key, per event; a storefront key pays one request already, plus the rest."""
    storefront = resources.storefront
    key_hash = request.state.key_hash
    if request.state.role == "storefront":
        client = request.client.host if request.client else ""
        wait = storefront.visitors.take((key_hash, client), n - 1) if n > 1 else 0.0
    else:
        wait = storefront.events.take(key_hash, n)
    if wait:
        raise RateLimited(f"{n} events exceed this key's rate; retry later", wait)
