"""Prometheus metrics of one app, in the app's own registry (no process-global state).

Counters are incremented by the routes; the publisher's counters, the model version and the
catalog size are read at scrape time by a collector, so those parts know nothing of Prometheus.
Request latency is observed by a pure ASGI middleware, labelled by route template (not raw path,
which would give one series per product id).

With several uvicorn workers (`COPYLOOP_API_WORKERS` > 1) the launcher (`api.server.serve`)
gives them prometheus-client's multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` is set, and emptied,
before the workers start, so every counter and histogram lives in a per-process file and any
worker's `/metrics` answers the sum over all workers, dead ones included (a counter never goes
back). The live values (publisher counters, model version, catalog size) are mirrored into those
files by each worker every `MIRROR_EVERY_S`: counters by their increase, gauges one series per
live worker (`pid` label); a scrape marks workers that are gone as dead, dropping their gauges.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.background import Periodic
from api.publisher import PublisherStats

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MIRROR_EVERY_S = 1.0


def multiprocess_mode() -> bool:
    """Whether prometheus-client was imported with `PROMETHEUS_MULTIPROC_DIR` set (it picks its
    value class once, at import)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


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
        # The labelled children, found once per label values: prometheus-client's `labels()`
        # checks and joins the values and takes a lock on every call.
        self._decided: dict[str, Any] = {}
        self._timed: dict[tuple[str, str, str], Any] = {}
        self._live: _LiveCollector | None = None
        self._mirror: _LiveMirror | None = None
        self.multiprocess_dir = (
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") if (multiprocess_mode()) else None
        )

    def decided(self, policy: str) -> None:
        """Count one decision served by `policy`."""
        child = self._decided.get(policy)
        if child is None:
            child = self._decided[policy] = self.decisions.labels(policy)
        child.inc()

    def timed(self, method: str, route: str, status: str, seconds: float) -> None:
        """Observe one request's latency (`status`: its class, `2xx`…)."""
        key = (method, route, status)
        child = self._timed.get(key)
        if child is None:
            child = self._timed[key] = self.latency.labels(*key)
        child.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text of this process, or of all workers in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        if self._mirror is not None:
            self._mirror.step()  # this worker's live values as of now
        mark_dead_workers(self.multiprocess_dir)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def watch(
        self,
        publisher: Callable[[], PublisherStats],
        model_version: Callable[[], int],
        catalog_size: Callable[[], int],
    ) -> None:
        """Report these live values at each scrape (called once the lifespan built them)."""
        self.unwatch()
        self._live = _LiveCollector(publisher, model_version, catalog_size)
        if self.multiprocess_dir is None:
            self.registry.register(self._live)
        else:
            self._mirror = _LiveMirror(self._live, self.registry)
            self._mirror.start()

    def unwatch(self) -> None:
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]
        elif self._live is not None:
            self.registry.unregister(self._live)
        self._live = None


def mark_dead_workers(path: str) -> None:
    """Drop the live gauges of worker processes that no longer exist (their counters stay)."""
    pids = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        found = re.search(r"_(\d+)\.db$", name)
        if found:
            pids.add(int(found.group(1)))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # alive, someone else's


class _LiveMirror:
    """Copies a collector's values into multiprocess-mode metrics every `MIRROR_EVERY_S`:
    a counter by its increase since the last copy, a gauge as this worker's `liveall` series."""

    def __init__(self, source: Collector, registry: CollectorRegistry) -> None:
        self._source = source
        self._registry = registry
        self._counters: dict[str, tuple[Counter, float]] = {}
        self._gauges: dict[str, Gauge] = {}
        self._thread = Periodic(
            "metrics-mirror", MIRROR_EVERY_S, self.step, lambda: "mirrors again next second"
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._thread.close()
        self.step()

    def step(self) -> None:
        for family in self._source.collect():
            value = family.samples[0].value
            if family.type == "counter":
                counter, seen = self._counters.get(family.name) or (
                    Counter(family.name, family.documentation, registry=self._registry),
                    0.0,
                )
                if value > seen:
                    counter.inc(value - seen)
                self._counters[family.name] = (counter, max(seen, value))
            else:
                gauge = self._gauges.get(family.name)
                if gauge is None:
                    gauge = Gauge(
                        family.name,
                        family.documentation,
                        registry=self._registry,
                        multiprocess_mode="liveall",
                    )
                    self._gauges[family.name] = gauge
                gauge.set(value)


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
            # the template without converters (`{product_id}`, not `{product_id:path}`)
            path = getattr(route, "path_format", None) or "unmatched"
            self.metrics.timed(
                scope["method"], path, f"{status // 100}xx", time.perf_counter() - start
            )
