"""The application factory: `create_app(settings)` and the lifespan that owns its resources.

Start-up builds, in order: the engines and sessions (the model reloader, the catalog cache, the
key look-ups, the publisher and the routes that only read use a read-only engine of their own:
on SQLite they neither wait for the consumer's write lock nor hold it off); the API-key cache;
the catalog cache (its first full load runs on its own thread; a request for a product not
loaded yet reads it once); the policy holder (one synchronous look for a snapshot, ~13 ms, then
a reloader thread); the decision log and its publisher (whose thread creates the Kafka topics,
so an unreachable Kafka never delays start-up); the storefront's token signer (its key from
settings or the ledger) and rate limiters. Shut-down stops them in reverse; the log keeps
whatever the ledger does not hold yet, for the next process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from api import errors
from api.bodies import BodyLimit
from api.catalog_cache import CatalogCache
from api.cors import StorefrontCors, storefront_cors
from api.decision_log import DecisionLog
from api.deps import Resources
from api.fastlane import PageViewLane, ServingApp
from api.keys import KeyCache
from api.metrics import LatencyMiddleware, Metrics
from api.policy_holder import PolicyHolder
from api.publisher import Publisher
from api.routes import (
    activations,
    client_js,
    decisions,
    events,
    features,
    health,
    models,
    products,
    reports,
    variants,
)
from api.storefront import Storefront
from bandit import FairTrial
from core.ledger import is_sqlite, make_engine, make_sessionmaker
from core.ledger.modes import Mode
from core.ledger.presence import held_ids
from core.settings import Settings
from core.tokens import load_signer

if TYPE_CHECKING:
    from fastapi.telemetry import TelemetryConfig

log = logging.getLogger(__name__)

#: FastAPI's own OpenTelemetry instrumentation, all of it off (see `fastapi_telemetry`).
TELEMETRY_OFF: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}


def fastapi_telemetry(environ: Mapping[str, str] = os.environ) -> TelemetryConfig | None:
    """FastAPI's OpenTelemetry instrumentation (request spans, metrics, error logs) as FastAPI
    sets it up (None: its defaults) where the operator asks for OpenTelemetry with an `OTEL_*`
    or `FASTAPI_OTEL_*` variable; off otherwise. Left on without a provider, FastAPI looked for
    one on every request: 4 % of the page-view route's time (in process, py-spy)."""
    if any(name.startswith(("OTEL_", "FASTAPI_OTEL_")) for name in environ):
        return None
    return TELEMETRY_OFF


def create_app(settings: Settings) -> FastAPI:
    """The copyloop HTTP API on `settings` (nothing starts until the lifespan runs)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Resources]]:
        resources = await run_in_threadpool(_start, settings, metrics)
        try:
            yield {"resources": resources}
        finally:
            await run_in_threadpool(_stop, resources)

    telemetry = fastapi_telemetry()
    app = ServingApp(
        title="copyloop",
        summary="Serve the product copy that sells; learn from storefront events.",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=telemetry,
    )
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    app.add_middleware(StorefrontCors, origins=settings.cors_origins)
    routers = (decisions, activations, events, products, variants, reports, features, models)
    for module in (*routers, health, client_js):
        app.include_router(module.router)
    if telemetry is TELEMETRY_OFF:  # with FastAPI's spans on, every request goes through it
        app.lane = PageViewLane(app, metrics, storefront_cors(app, settings.cors_origins))
    return app


def _start(settings: Settings, metrics: Metrics) -> Resources:
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    # A second engine only where reads need one (on PostgreSQL they never wait for a writer).
    read_engine = (
        make_engine(settings.database_url, read_only=True) if is_sqlite(engine) else engine
    )
    reads = make_sessionmaker(read_engine)
    catalog = CatalogCache(reads, settings.catalog_refresh_s)
    policies = PolicyHolder(
        reads,
        holdout=settings.holdout,
        seed=settings.seed,
        reload_s=settings.model_reload_s,
        fair_trial=FairTrial.of(settings),
        own_effect_z=settings.bandit_own_effect_z,
        mode=Mode(settings.mode, settings.apprentice_explore),
    )
    publisher = Publisher(
        settings.bootstrap,
        DecisionLog(settings.spool_dir, fsync=settings.log_fsync),
        lambda wanted: held_ids(reads, wanted),
        topics=[settings.decisions_topic, settings.events_topic, settings.dlq_topic],
        partitions=settings.topic_partitions,
        resend_after_s=settings.log_resend_after_s,
    )
    resources = Resources(
        settings=settings,
        engine=engine,
        read_engine=read_engine,
        sessions=sessions,
        reads=reads,
        catalog=catalog,
        policies=policies,
        publisher=publisher,
        keys=KeyCache(sessions, reads=reads),
        metrics=metrics,
        storefront=Storefront(load_signer(sessions, settings.token_secret), settings),
    )
    try:
        catalog.start()
        resources.keys.start()
        try:
            policies.reload_once()
        except SQLAlchemyError as exc:
            log.warning("no model loaded at start (%s); serving the control copy meanwhile", exc)
        policies.start()
        publisher.start()
        metrics.watch(publisher.stats, lambda: policies.version, lambda: len(catalog))
    except BaseException:
        _stop(resources)
        raise
    return resources


def _stop(resources: Resources) -> None:
    resources.metrics.unwatch()
    resources.policies.close()
    resources.catalog.close()
    resources.keys.close()
    resources.publisher.close()
    resources.engine.dispose()
    resources.read_engine.dispose()
