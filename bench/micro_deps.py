"""What the decision route's dependency graph costs in FastAPI, in-process (no socket).

Three apps whose route does the same trivial work (return a small JSON object) and differ only in
how they reach the app's resources, as `api/routes/decisions.py` does today versus the proposed
shapes:

* `today`: `require("serve")` (HTTPBearer + resources) plus five `Annotated[..., Depends()]`
  parameters, each an async function of a shared `get_resources` dependency (the shape of
  api/deps.py), plus a `Request` parameter;
* `one_dep`: one dependency that checks the key and returns the resources;
* `no_dep`: no dependency: the route reads `request.state` and checks the header itself.

    .venv/bin/python bench/micro_deps.py
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer


@dataclass(frozen=True)
class Res:
    settings: object
    catalog: object
    policies: object
    publisher: object
    metrics: object
    keys: dict


RES = Res(object(), object(), object(), object(), object(), {"k": "serve"})
_bearer = HTTPBearer(auto_error=False)


async def get_resources(request: Request) -> Res:
    return request.state.resources


ResDep = Annotated[Res, Depends(get_resources)]


async def get_catalog(r: ResDep) -> object:
    return r.catalog


async def get_policies(r: ResDep) -> object:
    return r.policies


async def get_publisher(r: ResDep) -> object:
    return r.publisher


async def get_settings(r: ResDep) -> object:
    return r.settings


async def get_metrics(r: ResDep) -> object:
    return r.metrics


async def require_serve(
    r: ResDep, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    assert cred is not None and r.keys[cred.credentials] == "serve"
    return "serve"


def app_today() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/products/{product_id}/variant", dependencies=[Depends(require_serve)])
    async def route(
        product_id: str,
        request: Request,
        catalog: Annotated[object, Depends(get_catalog)],
        policies: Annotated[object, Depends(get_policies)],
        publisher: Annotated[object, Depends(get_publisher)],
        settings: Annotated[object, Depends(get_settings)],
        metrics: Annotated[object, Depends(get_metrics)],
    ) -> dict:
        return {"product_id": product_id, "n": len(request.query_params)}

    return app


async def serving(request: Request) -> Res:
    r: Res = request.state.resources
    auth = request.headers.get("authorization", "")
    assert r.keys[auth.removeprefix("Bearer ")] == "serve"
    return r


def app_one_dep() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/products/{product_id}/variant")
    async def route(product_id: str, request: Request, r: Annotated[Res, Depends(serving)]) -> dict:
        return {"product_id": product_id, "n": len(request.query_params)}

    return app


def app_no_dep() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/products/{product_id}/variant")
    async def route(product_id: str, request: Request) -> dict:
        await serving(request)
        return {"product_id": product_id, "n": len(request.query_params)}

    return app


async def bench(app: FastAPI, reps: int = 4000) -> float:
    headers = [(b"host", b"x"), (b"authorization", b"Bearer k")]

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    async def call() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/products/kit-0001/variant",
            "raw_path": b"/v1/products/kit-0001/variant",
            "query_string": b"device=mobile&segment=new&locale=en-US&referrer=search&hour=3",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {"resources": RES},
        }
        await app(scope, receive, send)

    for _ in range(300):
        await call()
    t0 = time.perf_counter()
    for _ in range(reps):
        await call()
    return (time.perf_counter() - t0) / reps * 1e6


def main() -> None:
    print(f"# FastAPI dependency shapes, µs per in-process request; load {os.getloadavg()}")
    for name, make in (
        ("today (6 deps + bearer)", app_today),
        ("one dependency", app_one_dep),
        ("no dependency", app_no_dep),
    ):
        best = min(asyncio.run(bench(make())) for _ in range(3))
        print(f"  {name:<28} {best:8.1f}")


if __name__ == "__main__":
    main()
