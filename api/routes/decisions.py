"""Serving: choose a variant for one page view and publish the decision.

Both routes are `async def` on purpose: the VW workspace is not thread-safe, and running every
`choose` on the event loop thread serialises them without a lock (a predict is ~100 µs of CPU).
A cached product costs no database read; the decision is appended to the process's decision log
(one `write`, `api.decision_log`) before it is answered, never sent to Kafka on the request path.

The hot path is kept lean on purpose (each piece measured in BENCHMARKS.md): one dependency
(`ServingDep`: the key check, returning the app's resources) instead of one per resource, the
arms' VW lines rendered once per catalog refresh, and the answer encoded once with orjson and
returned as a `Response` (`response_model` still documents it).

`defer=1` (query) or `"defer": true` (body) serves a decision that starts not activated (see
`api.routes.activations`). The query string is the context, less two reserved names: `defer`,
and `key` (a publishable storefront key, `api.auth`).
"""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth import Authorized
from api.bodies import read_model
from api.catalog_cache import CatalogCache, CatalogEntry
from api.decision_log import Kind
from api.deps import Resources
from api.errors import AUTH_RESPONSES, ErrorResponse, InvalidRequest, ProductNotFound, field_errors
from api.schemas import CONTEXT, DecisionOut, DecisionRequest
from api.serving import choose, decision_message
from core.ids import new_id
from core.messages import ID_MAX

#: A `serve` or `storefront` (or `admin`) key; the app's resources.
ServingDep = Annotated[Resources, Depends(Authorized("serve", "storefront"))]
#: Query names that are not context.
RESERVED = ("defer", "key")
#: The page-view route (also answered by `api.fastlane`, above the middlewares). A product id
#: may hold `/` (storefront SKUs do; clients send it as `%2F`, which arrives decoded).
VARIANT_PATH = "/v1/products/{product_id:path}/variant"
#: Its template as OpenAPI and the latency metric name it.
VARIANT_ROUTE = "/v1/products/{product_id}/variant"
#: The answers' media type.
JSON = "application/json"
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}

router = APIRouter(
    tags=["decisions"],
    responses={
        **AUTH_RESPONSES,
        404: {"model": ErrorResponse, "description": "Unknown product (`product_not_found`)."},
    },
)


@router.get(VARIANT_PATH, response_model=DecisionOut)
async def variant_for_page_view(
    product_id: Annotated[str, Path(min_length=1, max_length=ID_MAX)],  # api.fastlane's bound too
    request: Request,
    resources: ServingDep,
) -> Response:
    """Serve one variant; every query parameter but `defer` and `key` is a context feature
    (`?device=mobile&…`); `defer=1` starts it not activated."""
    params = query_dict(request.scope["query_string"])
    return Response(await page_view(resources, product_id, params), media_type=JSON)


async def page_view(resources: Resources, product_id: str, params: dict[str, str]) -> bytes:
    """The page-view route's work after the key check (`params`: the query, `query_dict`;
    emptied of the reserved names): its answer's JSON, or the `ApiError` it answers."""
    reserved = {name: params.pop(name, None) for name in RESERVED}
    defer = _FLAGS.get((reserved["defer"] or "").lower())
    if defer is None:
        reason = f"must be 1/0/true/false, got {reserved['defer']!r}"
        raise InvalidRequest("invalid `defer`", [{"field": "query.defer", "reason": reason}])
    try:
        context = CONTEXT.validate_python(params)
    except ValidationError as exc:
        details = [{**d, "field": f"query.{d['field']}"} for d in field_errors(exc.errors())]
        raise InvalidRequest("invalid context in the query string", details) from None
    entry = await _entry(resources.catalog, product_id)
    return _decide(entry, product_id, context, resources, defer)


@router.post(
    "/v1/decisions",
    response_model=DecisionOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": DecisionRequest.model_json_schema()}},
        }
    },
)
async def decide(request: Request, resources: ServingDep) -> Response:
    """Serve one variant of `product_id` for the page view described by `context`."""
    body = await read_model(request, DecisionRequest)  # after the key check, never before
    entry = await _entry(resources.catalog, body.product_id)
    answer = _decide(entry, body.product_id, body.context, resources, body.defer)
    return Response(answer, media_type=JSON)


def query_dict(query_string: bytes) -> dict[str, str]:
    """The query string as `dict(request.query_params)` reads it (the last of repeated names
    wins, blank values kept), without building Starlette's multi-dict: a string with nothing
    escaped (no `%`, no `+`) is only split; anything else goes through `parse_qsl` as there."""
    text = query_string.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    params: dict[str, str] = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            params[name] = value
    return params


async def _entry(catalog: CatalogCache, product_id: str) -> CatalogEntry:
    entry = catalog.get(product_id)
    if entry is None and not catalog.known_missing(product_id):
        entry = await run_in_threadpool(catalog.load, product_id)  # a miss: read it once
    if entry is None:
        raise ProductNotFound(
            f"no servable product {product_id!r} (unknown, or without an active control variant)",
            {"product_id": product_id},
        )
    return entry


def _decide(
    entry: CatalogEntry,
    product_id: str,
    context: dict[str, Any],
    resources: Resources,
    defer: bool = False,
) -> bytes:
    """Choose, log the decision (durable before the answer), count it, and return the answer
    (`DecisionOut`'s JSON)."""
    choice = choose(entry, context, resources.policies.policy)
    decision_id = new_id()
    i = choice.index
    message = decision_message(
        entry, product_id, context, choice, decision_id, time.time(), activated=not defer
    )
    resources.publisher.publish(
        resources.settings.decisions_topic, decision_id, message, Kind.DECISION, decision_id
    )
    resources.storefront.served(decision_id)
    resources.metrics.decided(choice.policy)
    answer: dict[str, Any] = {  # the fields of DecisionOut, in its order
        "decision_id": decision_id,
        "product_id": product_id,
        "variant_id": choice.variant_id,
        "text": entry.texts[i],
        "style": entry.styles[i],
        "policy": choice.policy,
        "probability": choice.probability,
        "model_version": choice.model_version,
        "activated": not defer,
        "token": resources.storefront.signer.sign(decision_id),
    }
    return orjson.dumps(answer)
