"""Activation of deferred decisions: the storefront saw the copy.

`POST /v1/decisions/{decision_id}/activate` (serve or storefront key) answers 202 and publishes
an activation to `{prefix}.events` (keyed by the decision id, `core.messages.Activation`); the
consumer records it once and marks the decision activated if it came before the decision's
window ended (`consumer.join`). Repeating it changes nothing, so clients may retry freely.

The decision must be one this API issued: the request's `token` (`?token=` or a JSON body
`{"token": …}`, any content type, so a page can send it without a CORS preflight) proves it
at no cost; a wrong token is refused (403 `invalid_token`). Without a token, the decision must be
one this process served recently or one the ledger holds (waiting a few seconds for it when its
id says it is only seconds old: another worker served it and the consumer is storing it);
otherwise 404 `decision_not_found`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.auth import Authorized
from api.bodies import read_json
from api.decision_log import Kind
from api.deps import Resources
from api.errors import (
    AUTH_RESPONSES,
    BodyTooLarge,
    DecisionNotFound,
    ErrorResponse,
    InvalidRequest,
    InvalidToken,
)
from api.schemas import ActivationOut
from core.ids import minted_at
from core.ledger.tables import Decision
from core.messages import ACTIVATION, Activation

#: A body bigger than this is not an activation.
MAX_BODY = 4096
#: A token-less activation of a decision minted this recently (by its id's time) that another
#: process served waits up to `WAIT_S` for the ledger to hold it (`_stored`).
FRESH_S = 30.0
WAIT_S = 5.0
#: How far ahead of this host's clock a sibling API host's may have minted an id.
AHEAD_S = 5.0

router = APIRouter(tags=["decisions"])
ActivatorDep = Annotated[Resources, Depends(Authorized("serve", "storefront"))]


@router.post(
    "/v1/decisions/{decision_id}/activate",
    status_code=202,
    response_model=ActivationOut,
    responses={
        **AUTH_RESPONSES,
        404: {"model": ErrorResponse, "description": "Unknown decision (`decision_not_found`)."},
        413: {"model": ErrorResponse, "description": f"A body over {MAX_BODY} bytes."},
        429: {"model": ErrorResponse, "description": "Storefront key rate limited."},
    },
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"token": {"type": "string", "maxLength": 128}},
                    }
                }
            },
        }
    },
)
async def activate(
    decision_id: Annotated[str, Path(min_length=1, max_length=128)],
    request: Request,
    resources: ActivatorDep,
) -> ActivationOut:
    """Count a deferred decision as seen (idempotent; 202 whether or not it was deferred)."""
    token = request.query_params.get("token")
    if token is None:
        token = await _body_token(request)
    storefront = resources.storefront
    if token is not None:
        if not storefront.signer.verify(decision_id, token):
            raise InvalidToken(
                f"the token is not decision {decision_id!r}'s",
                {"field": "token", "decision_id": decision_id},
            )
    elif not storefront.recently_served(decision_id) and not await _stored(
        resources.reads, decision_id, wait=request.state.role != "storefront"
    ):
        raise DecisionNotFound(
            f"no decision {decision_id!r} was served here", {"decision_id": decision_id}
        )
    message = Activation.model_construct(type=ACTIVATION, decision_id=decision_id, ts=time.time())
    resources.publisher.publish(
        resources.settings.events_topic,
        decision_id,
        message.to_bytes(),
        Kind.ACTIVATION,  # kept in the log until the ledger holds the activation
        decision_id,
    )
    return ActivationOut(decision_id=decision_id)


async def _body_token(request: Request) -> str | None:
    """`token` of an optional JSON object body; 413 past `MAX_BODY`, 422 naming the field when
    it is malformed."""
    body = await request.body()
    if not body.strip():
        return None
    if len(body) > MAX_BODY:
        raise BodyTooLarge(
            f"an activation body holds at most {MAX_BODY} bytes", {"max_bytes": MAX_BODY}
        )
    parsed = await read_json(request)
    if not isinstance(parsed, dict):
        raise InvalidRequest('the body must be a JSON object like {"token": "…"}')
    token = parsed.get("token")
    if token is not None and not isinstance(token, str):
        raise InvalidRequest("`token` must be a string", [{"field": "body.token"}])
    return token


async def _stored(sessions: sessionmaker[Session], decision_id: str, *, wait: bool) -> bool:
    """Whether the ledger holds the decision; with `wait`, for one minted in the last `FRESH_S`
    (another worker or API process served it: the consumer stores it within about a second),
    whether it does within `WAIT_S`. Without the wait, a server that activated its copy at once
    reached the worker that had not served it half the time with 2 workers, and got 404. A
    publishable (storefront) key does not wait: its pages send the token (`client.js` does), and
    a public key must not buy 5 s of polling per request with made-up ids."""
    if await run_in_threadpool(_in_ledger, sessions, decision_id):
        return True
    if not wait:
        return False
    minted = minted_at(decision_id)
    if minted is None or not -FRESH_S <= minted - time.time() <= AHEAD_S:
        return False
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if await run_in_threadpool(_in_ledger, sessions, decision_id):
            return True
    return False


def _in_ledger(sessions: sessionmaker[Session], decision_id: str) -> bool:
    with sessions() as s:
        found = s.scalar(select(Decision.decision_id).where(Decision.decision_id == decision_id))
    return found is not None
