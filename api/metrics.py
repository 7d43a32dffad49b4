"""Prometheus metrics of one app, in the app's own registry (no process-global state).

Counters are incremented by the routes; the publisher's counters, the model version and the
catalog size are read at scrape time by a collector, so those parts know nothing of Prometheus.
Request latency is observed by a pure ASGI middleware, labelled by route template (not raw path,
which would give one series per product id).

With several uvicorn workers each process has its own registry; scrape each worker, or run one
worker per container as docker/ does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.publisher import PublisherStats

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The app's registry and the metrics the routes update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "copyloop_decisions",
            "Decisions served, by policy.",
            ["policy"],
            registry=self.registry,
        )
        self.events = Counter(
            "copyloop_events_accepted", "Events accepted over HTTP.", registry=self.registry
        )
        self.latency = Histogram(
            "copyloop_request_seconds",
            "HTTP request latency by route and status class.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._live: _LiveCollector | None = None

    def watch(
        self,
        publisher: Callable[[], PublisherStats],
        model_version: Callable[[], int],
        catalog_size: Callable[[], int],
    ) -> None:
        """Report these live values at each scrape (called once the lifespan built them)."""
        self.unwatch()
        self._live = _LiveCollector(publisher, model_version, catalog_size)
        self.registry.register(self._live)

    def unwatch(self) -> None:
        if self._live is not None:
            self.registry.unregister(self._live)
            self._live = None


class _LiveCollector(Collector):
    def __init__(
        self,
        publisher: Callable[[], PublisherStats],
        model_version: Callable[[], int],
        catalog_size: Callable[[], int],
    ) -> None:
        self._publisher = publisher
        self._model_version = model_version
        self._catalog_size = catalog_size

    def describe(self) -> list[Metric]:
        return []  # values are only known at collect time

    def collect(self) -> Iterator[Metric]:
        stats = self._publisher()
        for name, value, doc in (
            ("logged", stats.logged, "Messages appended to the decision log."),
            ("sent", stats.sent, "Messages delivered to Kafka (re-sends included)."),
            ("resent", stats.resent, "Messages sent again because the ledger lacked them."),
            ("confirmed", stats.confirmed, "Logged messages found in the ledger."),
        ):
            yield CounterMetricFamily(f"copyloop_publish_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "copyloop_publish_backlog",
            "Logged messages the ledger lacks yet.",
            value=stats.backlog,
        )
        yield GaugeMetricFamily(
            "copyloop_publish_connected",
            "1 when a Kafka producer is connected.",
            value=int(stats.connected),
        )
        yield GaugeMetricFamily(
            "copyloop_model_version",
            "Version of the model served (0: fallback).",
            value=self._model_version(),
        )
        yield GaugeMetricFamily(
            "copyloop_catalog_products", "Servable products cached.", value=self._catalog_size()
        )


class LatencyMiddleware:
    """Observe each HTTP request's duration into `metrics.latency` (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], path, f"{status // 100}xx").observe(
                time.perf_counter() - start
            )
