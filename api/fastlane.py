"""The page-view route answered below the middlewares, without FastAPI's per-request machinery.

Every storefront page view calls `GET /v1/products/{id}/variant`. Under FastAPI, what lies
between the middlewares and the route's own work (the exception and exit-stack middlewares,
the router's matching, the request and response wrapping, solving the one dependency) cost
more than the route's own work (`bench/serve.py --micro`: in process, the route took 197 µs
against `/healthz`'s 124 µs, of which choosing, logging and answering are 28 µs).

`VariantFastLane` is the innermost middleware: for exactly that route (GET, a product id the
route accepts) it calls what the FastAPI route calls, `Authorized("serve", "storefront")` and
`variant_for_page_view`, and turns a refusal into its answer with the app's own exception
handlers, so the answer, its headers, the rate limits and the refusals are the route's. The
middlewares above it (CORS, latency metrics, body limit) see the request as before; the route
is set on the scope so that the latency metric keeps its label. The route stays declared in
FastAPI: OpenAPI documents it, and whatever the lane does not take (HEAD, an over-long product
id that FastAPI refuses with 422) goes there.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import Authorized
from api.routes.decisions import VARIANT_PATH, router, variant_for_page_view
from core.messages import ID_MAX

#: The route's path with its product id, as the router matches it (one segment, 1 to ID_MAX
#: long, the route's bounds: longer ones go to FastAPI, which refuses them with its validation
#: error).
_VARIANT = re.compile(rf"/v1/products/([^/]{{1,{ID_MAX}}})/variant")


class VariantFastLane:
    """Answers `GET /v1/products/{id}/variant` itself; passes everything else to `app`."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self._fastapi = fastapi_app
        self._auth = Authorized("serve", "storefront")
        self._route = next(r for r in router.routes if getattr(r, "path", None) == VARIANT_PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            _VARIANT.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "GET"
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        product_id = match.group(1)
        scope["route"] = self._route
        scope["path_params"] = {"product_id": product_id}
        request = Request(scope, receive)
        try:
            resources = await self._auth(request)
            response = await variant_for_page_view(product_id, request, resources)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise  # as under FastAPI: the server-error middleware answers 500
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Any:
        """The app's handler for `exc` (the closest class first), None for the catch-all one,
        which FastAPI leaves to its server-error middleware."""
        handlers = self._fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None


__all__ = ["VariantFastLane"]
