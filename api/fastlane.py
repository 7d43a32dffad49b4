"""The page-view route answered above the middlewares, without the framework's per-request layers.

Every storefront page view calls `GET /v1/products/{id}/variant`. Under FastAPI, what lies
around the route's own work (the server-error, telemetry, body-limit, CORS, latency and
exception middlewares, each wrapping `send`; the router's matching; the request and response
wrapping; solving the one dependency) cost more than the work: in process, the route took
216 µs of which choosing, logging and answering are 66 (`bench/serve.py --micro-only`), and
under load every piece costs about twice that (caches shared with the other processes).

`ServingApp` is the FastAPI app with one difference: its `__call__` hands exactly that route
(GET, a product id the route accepts, no request body, no `root_path`) to `PageViewLane`,
which does what the layers would have done, in one frame: the key check (`api.auth.key_role`),
the route's work (`api.routes.decisions.page_view`), the answer as a Starlette `Response`,
the storefront CORS headers (`api.cors`: `Vary: Origin` without an `Origin`, Starlette's
`CORSMiddleware` with one), the latency metric under the route's label, a refusal answered by
the app's own exception handlers, and anything unexpected answered 500 by the app's catch-all
handler (outside CORS, as the server-error middleware answers it) and raised again for the
server to log. Everything else goes through FastAPI as before: HEAD, an over-long product id
(FastAPI's validation error), a GET with a body. The route stays declared in FastAPI, so
OpenAPI documents it, and with FastAPI's OpenTelemetry instrumentation on (`api.app`) the lane
is off so that every request gets its span.
"""

from __future__ import annotations

import functools
import inspect
import re
import time
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.auth import Authorized, bearer_key, key_role
from api.cors import append_vary
from api.deps import Resources
from api.metrics import Metrics
from api.routes.decisions import JSON, VARIANT_PATH, VARIANT_ROUTE, page_view, query_dict, router
from core.messages import ID_MAX

#: The route's path with its product id, as the router matches it (1 to ID_MAX characters, `/`
#: included, the route's bounds: longer ones go to FastAPI, which refuses them with its
#: validation error).
_VARIANT = re.compile(rf"/v1/products/(.{{1,{ID_MAX}}})/variant")
#: Request headers that announce a body: such a GET goes through the body limit and FastAPI.
_BODY = (b"content-length", b"transfer-encoding")


class PageViewLane:
    """Answers one `GET /v1/products/{id}/variant` as the middlewares and the route would."""

    def __init__(self, app: FastAPI, metrics: Metrics, cors: CORSMiddleware) -> None:
        self._app = app
        self._metrics = metrics
        self._cors = cors
        self._allowed = Authorized("serve", "storefront").allowed
        self._route = next(r for r in router.routes if getattr(r, "path", None) == VARIANT_PATH)

    def product_id(self, scope: Scope) -> str | None:
        """The product id when the lane answers this request, else None."""
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return None
        match = _VARIANT.fullmatch(scope["path"])
        if match is None or any(name in _BODY for name, _ in scope["headers"]):
            return None
        return match.group(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, product_id: str) -> None:
        start = time.perf_counter()
        scope["app"] = self._app
        scope["route"] = self._route
        scope["path_params"] = {"product_id": product_id}
        authorization = None
        origin = False
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"origin":
                origin = True
        status = 500
        try:
            try:
                response = await self._respond(scope, receive, product_id, authorization)
            except Exception as exc:  # as the server-error middleware: 500, then raise
                await self._unexpected(scope, receive, send, exc)
                raise
            status = response.status_code
            if origin or not append_vary(response.raw_headers):
                send = functools.partial(
                    self._cors.send, send=send, request_headers=Headers(scope=scope)
                )
            await response(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - start
            self._metrics.timed("GET", VARIANT_ROUTE, f"{status // 100}xx", elapsed)

    async def _respond(
        self, scope: Scope, receive: Receive, product_id: str, authorization: str | None
    ) -> Response:
        """The answer, or the refusal of the app's handler for what was raised; raises what
        only the catch-all handler takes."""
        try:
            return await self._answer(scope, product_id, authorization)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            return await _handled(handler, Request(scope, receive), exc)

    async def _answer(self, scope: Scope, product_id: str, authorization: str | None) -> Response:
        resources: Resources = scope["state"]["resources"]
        params = query_dict(scope["query_string"])
        header_key = bearer_key(authorization)
        client = scope.get("client")
        await key_role(
            resources,
            header_key,
            None if header_key else params.get("key"),
            client[0] if client else "",
            self._allowed,
        )
        return Response(await page_view(resources, product_id, params), media_type=JSON)

    def _handler(self, exc: Exception) -> Any:
        """The app's handler for `exc` (the closest class first), None for the catch-all one,
        which FastAPI leaves to its server-error middleware."""
        handlers = self._app.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None

    async def _unexpected(self, scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
        """The server-error middleware's answer: the app's handler for 500 or `Exception`, sent
        as it is (no CORS headers), or Starlette's plain one."""
        handlers = self._app.exception_handlers
        handler = handlers.get(500) or handlers.get(Exception)
        if handler is None:
            response = Response("Internal Server Error", 500, media_type="text/plain")
        else:
            response = await _handled(handler, Request(scope, receive), exc)
        await response(scope, receive, send)


async def _handled(handler: Any, request: Request, exc: Exception) -> Response:
    """An exception handler's answer (the app's are async; a plain function runs on a thread,
    as Starlette runs it)."""
    if inspect.iscoroutinefunction(handler):
        response: Response = await handler(request, exc)
    else:
        response = await run_in_threadpool(handler, request, exc)
    return response


class ServingApp(FastAPI):
    """FastAPI, with the page-view route taken by `lane` (when set) before the middlewares."""

    lane: PageViewLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lane
        if lane is not None:
            product_id = lane.product_id(scope)
            if product_id is not None:
                await lane(scope, receive, send, product_id)
                return
        await super().__call__(scope, receive, send)


__all__ = ["PageViewLane", "ServingApp"]
