"""Reading JSON bodies that hold one item or a batch (`{"events": [...]}`, `{"products": [...]}`).

Those routes validate each item themselves, to report every bad index at once, so they read the
raw body here instead of letting FastAPI validate a union.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from api.errors import BatchTooLarge, InvalidRequest


async def read_json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None


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
