"""Running the API under uvicorn: `serve(settings)` (what `copyloop serve` calls).

One worker runs the app built from `settings` in this process. Several workers need an import
string and a factory, so `settings` travel to the worker processes as JSON in the environment
variable `COPYLOOP_API_SETTINGS_JSON` (overrides given on the command line survive) and
`app_from_env` rebuilds them there; `api.workers.WorkerPool` runs them, each on its own
listening socket. Several workers also get prometheus-client's multiprocess
mode (`metrics_dir`), so each one's `/metrics` answers for all of them.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from api.app import create_app
from api.wire import CoalescingHttpToolsProtocol
from api.workers import WorkerPool
from core.runtime import tune_gc
from core.settings import Settings, load_settings

SETTINGS_ENV = "COPYLOOP_API_SETTINGS_JSON"
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def app_from_env() -> FastAPI:
    """The app factory uvicorn's workers call: settings from `SETTINGS_ENV`, else from the
    environment as usual."""
    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else load_settings()
    if settings.api_workers > 1:
        # Each worker draws its own random numbers: equal seeds would give every worker the
        # same holdout draws.
        seed = int(np.random.SeedSequence([settings.seed, os.getpid()]).generate_state(1)[0])
        settings = settings.model_copy(update={"seed": seed})
    tune_gc()  # this process is an API worker's: see core.runtime
    return create_app(settings)


def serve(settings: Settings) -> None:
    """Serve the API on `settings.api_host:api_port` with `settings.api_workers` processes.

    The access log is off: latency and counts are in /metrics, and a log line per decision
    would cost more than the decision.
    """
    if settings.api_workers <= 1:
        tune_gc()  # this process is the API's: see core.runtime
        _run(create_app(settings), settings)
        return
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    with metrics_dir():
        _run("api.server:app_from_env", settings)


def uvicorn_config(app: FastAPI | str, settings: Settings) -> uvicorn.Config:
    """How the API runs under uvicorn: the coalescing protocol, no access log, and the client
    address taken from X-Forwarded-For when the peer is a trusted proxy
    (`forwarded_allow_ips`), so that a storefront key is rate limited per visitor behind a
    load balancer."""
    return uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        factory=isinstance(app, str),
        access_log=False,
        log_level="info",
        http=CoalescingHttpToolsProtocol,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


def _run(app: FastAPI | str, settings: Settings) -> None:
    """One worker: uvicorn in this process. Several: a `WorkerPool` (a socket each)."""
    config = uvicorn_config(app, settings)
    if settings.api_workers <= 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:  # as uvicorn.run: the app or the socket failed
            raise SystemExit(STARTUP_FAILURE)
        return
    status = WorkerPool(config, settings.api_workers).run()
    if status:
        raise SystemExit(status)


@contextmanager
def metrics_dir() -> Iterator[str]:
    """`PROMETHEUS_MULTIPROC_DIR` for the workers about to start, emptied of an earlier run's
    files (which would add a dead run's counts to this one's): the operator's directory when
    set, else a temporary one removed at exit. Set before any worker imports prometheus-client,
    which reads it once."""
    given = os.environ.get(METRICS_DIR_ENV)
    path = given or tempfile.mkdtemp(prefix="copyloop-metrics-")
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ[METRICS_DIR_ENV] = path
    try:
        yield path
    finally:
        if not given:
            os.environ.pop(METRICS_DIR_ENV, None)
            shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    serve(load_settings())
