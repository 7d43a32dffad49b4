"""The app's resources and the typed dependencies that hand them to routes.

The lifespan builds one `Resources` and yields it as lifespan state; Starlette copies that state
into every request, and `get_resources` reads it from there. No module-level globals. The
dependencies are `async def` so FastAPI calls them on the event loop, not via a thread hop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.catalog_cache import CatalogCache
from api.keys import KeyCache
from api.metrics import Metrics
from api.policy_holder import PolicyHolder
from api.publisher import Publisher
from api.storefront import Storefront
from core.settings import Settings


@dataclass(frozen=True)
class Resources:
    """Everything a request may need, built once per app by the lifespan."""

    settings: Settings
    engine: Engine
    read_engine: Engine  # `make_engine(read_only=True)` on SQLite, else `engine`
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]  # on `read_engine`: for what only reads
    catalog: CatalogCache
    policies: PolicyHolder
    publisher: Publisher
    keys: KeyCache
    metrics: Metrics
    storefront: Storefront


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(r: ResourcesDep) -> Settings:
    return r.settings


async def get_sessions(r: ResourcesDep) -> sessionmaker[Session]:
    return r.sessions


async def get_reads(r: ResourcesDep) -> sessionmaker[Session]:
    return r.reads


async def get_catalog(r: ResourcesDep) -> CatalogCache:
    return r.catalog


async def get_policies(r: ResourcesDep) -> PolicyHolder:
    return r.policies


async def get_publisher(r: ResourcesDep) -> Publisher:
    return r.publisher


async def get_metrics(r: ResourcesDep) -> Metrics:
    return r.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
#: Sessions for routes that only read (reports, stats, listings): on SQLite they do not wait for
#: the consumer's write lock, nor hold it off while they read.
ReadsDep = Annotated[sessionmaker[Session], Depends(get_reads)]
CatalogDep = Annotated[CatalogCache, Depends(get_catalog)]
PoliciesDep = Annotated[PolicyHolder, Depends(get_policies)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
