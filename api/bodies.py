"""Reading JSON bodies: the size limit, the nesting limit, and one item or a batch.

Every route that takes a body reads it here, inside the handler, so the key is checked (by the
route's dependencies) before a byte of the body is parsed: a bad key with a malformed body is
401/403, not 422. Batch routes (`{"events": [...]}`, `{"products": [...]}`) validate each item
themselves to report every bad index at once.

Limits: `BodyLimit` (ASGI middleware) refuses a body over `max_body_bytes` with 413, from its
`Content-Length` before reading, or as soon as a streamed body passes the limit. `read_json`
refuses JSON nested deeper than `MAX_DEPTH` with 422 naming where (orjson itself stops at 1024,
and the standard library's parser raises RecursionError before that).
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BatchTooLarge, BodyTooLarge, InvalidRequest, error_response, field_errors

M = TypeVar("M", bound=BaseModel)

#: Deepest nesting of arrays and objects a body may have (the deepest legitimate body, a batch
#: of products with nested attributes, needs 5).
MAX_DEPTH = 32

#: JSON strings and the structural characters between them, for finding where a body that did
#: not parse is too deep (a regex scans at C speed; only tokens reach Python).
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:,]')


async def read_json(request: Request) -> Any:
    """The body as JSON, or `InvalidRequest` saying why not (and where, when too deep)."""
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        where = _too_deep_raw(raw)
        if where is not None:
            raise _too_deep(where) from None
        raise InvalidRequest(
            f"the body is not JSON: {exc}", [{"field": "body", "reason": str(exc)}]
        ) from None
    where = too_deep(data)
    if where is not None:
        raise _too_deep(where)
    return data


async def read_model(request: Request, model: type[M]) -> M:
    """The body as `model` (422 naming each bad field), read only after the dependencies ran."""
    body = await read_json(request)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = [{**d, "field": f"body.{d['field']}"} for d in field_errors(exc.errors())]
        fields = ", ".join(d["field"] for d in details)
        raise InvalidRequest(f"invalid request: {fields}", details) from None


def too_deep(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """The path of the first value nested deeper than `limit`, or None.

    >>> too_deep({"a": [[1]]}, limit=2), too_deep({"a": [1]}, limit=2)
    ('body.a[0]', None)
    """
    stack: list[tuple[Any, str, int]] = [(value, "body", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= limit:
                return path
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in item.items())
        elif isinstance(item, list):
            if depth >= limit:
                return path
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
    return None


def _too_deep_raw(raw: bytes, limit: int = MAX_DEPTH) -> str | None:
    """Where unparsed JSON first nests deeper than `limit` (None if it never does)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return None
    path: list[str] = ["body"]
    counters: list[int | None] = []  # per open container: array index, or None for an object
    key: str | None = None
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            if counters and counters[-1] is not None:
                path.append(f"[{counters[-1]}]")
            elif counters:
                path.append(f".{key}")
            if len(counters) >= limit:
                return "".join(path)
            counters.append(0 if token == b"[" else None)
        elif token in (b"]", b"}"):
            if counters:
                counters.pop()
                if counters:
                    path.pop()
        elif token == b",":
            if counters and counters[-1] is not None:
                counters[-1] += 1
        elif token == b":":
            continue
        elif counters and counters[-1] is None:
            key = token[1:-1].decode("utf-8", "replace")
    return None


def _too_deep(where: str) -> InvalidRequest:
    reason = f"nested deeper than {MAX_DEPTH} levels of arrays and objects"
    return InvalidRequest(f"{where}: {reason}", [{"field": where, "reason": reason}])


def batch_items(body: Any, key: str, max_items: int) -> list[Any]:
    """The items of a body: `[body]` for one object, `body[key]` for a batch (≤ `max_items`)."""
    if isinstance(body, dict) and key in body:
        items = body[key]
        if not isinstance(items, list):
            raise InvalidRequest(f"`{key}` must be a list", [{"field": key}])
        if len(items) > max_items:
            raise BatchTooLarge(
                f"a batch holds at most {max_items} {key}, got {len(items)}",
                {"max": max_items, "got": len(items)},
            )
        return items
    if isinstance(body, dict):
        return [body]
    raise InvalidRequest(f"the body must be an object or {{{json.dumps(key)}: [...]}}")


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413 (pure ASGI: nothing is buffered here)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(scope, receive, send, declared)
                    return
        seen = 0
        limit = self.max_bytes

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(_too_large(limit), {"max_bytes": limit})
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, declared: int) -> None:
        response = error_response(
            413,
            BodyTooLarge.code,
            _too_large(self.max_bytes),
            {"max_bytes": self.max_bytes, "content_length": declared},
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _too_large(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes"
