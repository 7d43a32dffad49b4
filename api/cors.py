"""CORS for the storefront routes only, so that a shop's pages on another origin can call them.

Keys travel in a header or `?key=`, never in cookies, so no credentials are allowed. The other
routes (admin, reports) answer no preflight: a browser on another origin cannot read them.
"""

from __future__ import annotations

import re

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

#: The routes a web page calls with a publishable key (and the snippet itself).
STOREFRONT_PATHS = re.compile(
    r"^/v1/(products/[^/]+/variant|decisions|decisions/[^/]+/activate|events|client\.js)$"
)


class StorefrontCors:
    """Starlette's `CORSMiddleware` on `STOREFRONT_PATHS`; every other path passes untouched."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and STOREFRONT_PATHS.match(scope.get("path", "")):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


__all__ = ["STOREFRONT_PATHS", "StorefrontCors"]
