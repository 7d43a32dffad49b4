"""The API's errors and the one place that maps exceptions to JSON error responses.

Every error answer has the contract's shape::

    {"error": {"code": "<snake_case>", "message": "<what and why>", "details": ...}}

Routes and dependencies raise an `ApiError` subclass; FastAPI's validation errors, Starlette's
HTTP errors (unknown path, wrong method), the catalog's `CatalogError` (bad input: 422), the
decision log's `LogUnavailable` (503: nothing may be acknowledged) and anything unexpected
(500, logged) are mapped here too, so no other module builds an error
response.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.decision_log import LogUnavailable
from core.catalog import CatalogError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Base of the API's errors: an HTTP status, a snake_case code, a message, details."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] | None = None


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"


class Forbidden(ApiError):
    status_code, code = 403, "forbidden"


class InvalidToken(ApiError):
    """A storefront key without its decision's valid `token` (details name the items)."""

    status_code, code = 403, "invalid_token"


class RateLimited(ApiError):
    status_code, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(message, {"retry_after_s": seconds})
        self.headers = {"Retry-After": str(seconds)}


class DecisionNotFound(ApiError):
    status_code, code = 404, "decision_not_found"


class ProductNotFound(ApiError):
    status_code, code = 404, "product_not_found"


class VariantNotFound(ApiError):
    status_code, code = 404, "variant_not_found"


class ControlNotRetirable(ApiError):
    status_code, code = 409, "control_variant"


class InvalidRequest(ApiError):
    status_code, code = 422, "invalid_request"


class BatchTooLarge(ApiError):
    status_code, code = 413, "batch_too_large"


class BodyTooLarge(ApiError):
    status_code, code = 413, "body_too_large"


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """The JSON of every error answer (declared in OpenAPI for each route)."""

    error: ErrorBody


#: OpenAPI `responses=` entries for the errors every authenticated route can answer.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key."},
    403: {"model": ErrorResponse, "description": "The key's role may not call this route."},
    422: {"model": ErrorResponse, "description": "Invalid request; `details` names each field."},
}

#: `AUTH_RESPONSES` for a route whose own answer is not JSON: FastAPI documents a `model`'s
#: response in the route's media type, so these state the errors' JSON schema themselves.
AUTH_RESPONSES_NOT_JSON: dict[int | str, dict[str, Any]] = {
    status: {
        "description": response["description"],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for status, response in AUTH_RESPONSES.items()
}

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status_code: int, code: str, message: str, details: Any = None, headers: Any = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status_code, headers=headers)


def field_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic/FastAPI error dicts as `[{"field": "body.context.x", "reason": "..."}]`."""
    out = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        reason = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"field": loc, "reason": reason})
    return out


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else exc.headers
    return error_response(exc.status_code, exc.code, exc.message, exc.details, headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = field_errors(exc.errors())
    fields = ", ".join(d["field"] for d in details)
    return error_response(422, "invalid_request", f"invalid request: {fields}", details)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), None, exc.headers)


async def _catalog_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CatalogError)
    details = {"field": exc.field} if exc.field else None
    return error_response(422, "invalid_request", str(exc), details)


async def _log_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    log.error("refusing a request: %s", exc)
    return error_response(
        503,
        "log_unavailable",
        "the decision log cannot be written, so nothing can be acknowledged; retry shortly",
        headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; see the server log")


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the contract's JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(CatalogError, _catalog_error)
    app.add_exception_handler(LogUnavailable, _log_unavailable)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
