"""The scheduler: periodic jobs, each under a ledger lease so two schedulers never run the same
job at once. Today's job: generate candidate variants for products that have too few."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from copyloop.ledger import leases, make_engine, make_sessionmaker
from copyloop.settings import Settings

log = logging.getLogger(__name__)

Job = Callable[[sessionmaker[Session], Settings], object]


def generate_job(sessions: sessionmaker[Session], settings: Settings) -> object:
    from generator.jobs import generate_variants

    return generate_variants(sessions, settings)


JOBS: dict[str, Job] = {"generate": generate_job}


def tick(sessions: sessionmaker[Session], settings: Settings, holder: str) -> dict[str, object]:
    """Run each job whose lease this scheduler gets; returns what each job reported."""
    done: dict[str, object] = {}
    for name, job in JOBS.items():
        lease = f"scheduler:{name}"
        if not leases.acquire(
            sessions, lease, holder, ttl_s=max(60.0, 4 * settings.scheduler_interval_s)
        ):
            continue
        try:
            done[name] = job(sessions, settings)
        except Exception:
            log.exception("scheduler job %s failed", name)
        finally:
            leases.release(sessions, lease, holder)
    return done


def main(settings: Settings, stop: threading.Event | None = None) -> None:
    """Tick every `scheduler_interval_s` until `stop` is set (or SIGTERM/SIGINT)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    holder = f"{socket.gethostname()}:{os.getpid()}"
    try:
        while not stop.is_set():
            for name, result in tick(sessions, settings, holder).items():
                log.info("job %s: %s", name, result)
            stop.wait(settings.scheduler_interval_s)
    finally:
        engine.dispose()
