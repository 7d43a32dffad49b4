"""Role checks of API keys: the dependencies that admit a route's roles.

Keys are created, revoked and hashed in `core.keys`; the API's cache of their roles is
`api.keys.KeyCache`. A publishable `storefront` key may also come as `?key=` (a web page's
`sendBeacon` cannot set headers, and a request without custom headers needs no CORS preflight);
every other role must use the header. A storefront key is rate limited per key and client
address here, before the route runs (429 with `Retry-After`). The caller's role and key hash
are left on `request.state` for routes that check more (events: tokens, per-key limits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from api.deps import Resources, ResourcesDep
from api.errors import Forbidden, RateLimited, Unauthorized
from core.keys import ROLES, hash_key

_bearer_doc = "An API key: `Authorization: Bearer cl_…`"
_bearer = HTTPBearer(auto_error=False, description=_bearer_doc)


def require(*roles: str) -> Callable[..., Awaitable[str]]:
    """A dependency admitting keys of `roles` (and `admin`); returns the caller's role.

    Missing, unknown or revoked key → 401 `unauthorized`; a valid key of another role → 403
    `forbidden`. Async, so a cached key costs no thread hop on the hot path.
    """
    allowed = _allowed(roles)

    async def check(
        request: Request,
        resources: ResourcesDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        return await _role(
            request, resources, credentials.credentials if credentials else None, allowed
        )

    return check


class Authorized(HTTPBearer):
    """The hot routes' one dependency: checks the bearer key like `require(*roles)` and returns
    the app's `Resources`.

    A sub-class of `HTTPBearer`, so OpenAPI documents the same `HTTPBearer` security scheme,
    while FastAPI resolves a single dependency per request: `require` plus one `Depends` per
    resource cost ~22 % of the API's time under load (BENCHMARKS.md).
    """

    def __init__(self, *roles: str) -> None:
        super().__init__(auto_error=False, scheme_name="HTTPBearer", description=_bearer_doc)
        self.allowed = _allowed(roles)

    async def __call__(self, request: Request) -> Resources:  # type: ignore[override]
        resources: Resources = request.scope["state"]["resources"]
        await _role(
            request, resources, bearer_key(request.headers.get("authorization")), self.allowed
        )
        return resources


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, read as `HTTPBearer` reads it (the
    scheme in any case, the key stripped), or None; without the credentials model `HTTPBearer`
    builds per request."""
    scheme, key = get_authorization_scheme_param(authorization)
    return key if key and scheme.lower() == "bearer" else None


async def _role(
    request: Request,
    resources: Resources,
    header_key: str | None,
    allowed: frozenset[str],
) -> str:
    """`key_role` for a route's request: the key of the `Authorization` header, else a `?key=`;
    the caller's role and key hash are left on `request.state`."""
    client = request.client.host if request.client else ""
    query_key = None if header_key else request.query_params.get("key")
    role, key_hash = await key_role(resources, header_key, query_key, client, allowed)
    request.state.role, request.state.key_hash = role, key_hash
    return role


async def key_role(
    resources: Resources,
    header_key: str | None,
    query_key: str | None,
    client: str,
    allowed: frozenset[str],
) -> tuple[str, str]:
    """The caller's role and key hash, or `Unauthorized` / `Forbidden` / `RateLimited`, from the
    bearer key of the `Authorization` header, else `query_key` (`?key=`); `client` is the
    caller's address (a storefront key's rate limit is per key and address). Async: a cached
    key costs no thread hop on the hot path."""
    in_query = False
    if header_key:
        key = header_key
    else:
        key = query_key or ""
        in_query = bool(key)
        if not key:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    keys = resources.keys
    key_hash = hash_key(key)
    hit, role = keys.cached(key_hash)
    if not hit:  # one read of the ledger, shared by every request waiting for this key
        role = await asyncio.wrap_future(keys.read(key_hash))
    if role is None:
        raise Unauthorized("unknown or revoked API key")
    if in_query and role != "storefront":
        raise Unauthorized(
            "only a publishable storefront key may travel as `?key=`; send this one as "
            "`Authorization: Bearer <key>`"
        )
    if role not in allowed:
        raise Forbidden(
            f"a {role!r} key may not call this route; it needs one of {sorted(allowed)}",
            {"role": role, "allowed": sorted(allowed)},
        )
    if role == "storefront":
        wait = resources.storefront.visitors.take((key_hash, client))
        if wait:
            raise RateLimited(
                "too many requests from this storefront key and address; retry later", wait
            )
    return role, key_hash


def _allowed(roles: tuple[str, ...]) -> frozenset[str]:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; roles are {', '.join(ROLES)}")
    return frozenset(roles) | {"admin"}
