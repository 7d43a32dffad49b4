"""Liveness (`/healthz`) and Prometheus metrics (`/metrics`); no authentication."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import CatalogDep, MetricsDep, PoliciesDep, PublisherDep
from api.schemas import HealthOut, PublisherOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
async def healthz(policies: PoliciesDep, publisher: PublisherDep, catalog: CatalogDep) -> HealthOut:
    """Alive; `degraded` within ~2 s of Kafka going away (decisions wait in the log)."""
    stats = publisher.stats()
    return HealthOut(
        status="ok" if stats.connected else "degraded",
        model_version=policies.version,
        catalog_products=len(catalog),
        publisher=PublisherOut(
            connected=stats.connected,
            backlog=stats.backlog,
            unread_bytes=stats.unread_bytes,
            segments=stats.segments,
            logged=stats.logged,
            sent=stats.sent,
            resent=stats.resent,
            confirmed=stats.confirmed,
            abandoned=stats.abandoned,
        ),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
