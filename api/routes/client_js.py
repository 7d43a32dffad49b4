"""`GET /v1/client.js`: the storefront snippet, a static file of this package (no auth).

It is read once at import of the route and served with a short public cache lifetime and an
ETag, so a new release reaches pages within minutes and repeat views cost a 304.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from fastapi import APIRouter, Request, Response

_SOURCE = resources.files("api").joinpath("static/client.js").read_bytes()
_ETAG = '"' + hashlib.sha256(_SOURCE).hexdigest()[:16] + '"'

router = APIRouter(tags=["storefront"])


@router.get(
    "/v1/client.js",
    response_class=Response,
    responses={200: {"content": {"application/javascript": {}}}},
)
async def client_js(request: Request) -> Response:
    """The storefront snippet (JavaScript, no dependencies); README's Storefront section."""
    headers = {"Cache-Control": "public, max-age=300", "ETag": _ETAG}
    if request.headers.get("if-none-match") == _ETAG:
        return Response(status_code=304, headers=headers)
    return Response(_SOURCE, media_type="application/javascript", headers=headers)
