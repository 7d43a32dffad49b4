"""Running the API under uvicorn: `serve(settings)` (what `copyloop serve` calls).

One worker runs the app built from `settings` in this process. Several workers need an import
string and a factory, so `settings` travel to the worker processes as JSON in the environment
variable `COPYLOOP_API_SETTINGS_JSON` (overrides given on the command line survive) and
`app_from_env` rebuilds them there.
"""

from __future__ import annotations

import os

import numpy as np
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from core.settings import Settings, load_settings

SETTINGS_ENV = "COPYLOOP_API_SETTINGS_JSON"


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
    return create_app(settings)


def serve(settings: Settings) -> None:
    """Serve the API on `settings.api_host:api_port` with `settings.api_workers` processes.

    The access log is off: latency and counts are in /metrics, and a log line per decision
    would cost more than the decision.
    """
    app: FastAPI | str
    if settings.api_workers > 1:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        app = "api.server:app_from_env"
    else:
        app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers if settings.api_workers > 1 else None,
        factory=settings.api_workers > 1,
        access_log=False,
        log_level="info",
    )


def main() -> None:
    serve(load_settings())
