"""The scheduler: periodic jobs, each under a ledger lease so two schedulers never run the same
job at once.

Jobs, in order each tick: `generate` (top up products that have too few variants), `retire`
(withdraw variants that clearly lose to their control), `challengers` (new candidates from the
newest shipped generator version where variants were retired), `finetune` (a fine-tuning round
of the `hf` generator when one is due: see :func:`generator.finetune.due`).

A job's lease is *kept* by the scheduler that runs it (renewed each tick, and by a heartbeat
while a long job runs), not released after each run: one live scheduler owns each job, another
takes it over only when the owner's lease expires (it died), and leases are released on a clean
shutdown. So two schedulers never run the same job, at once or one after the other."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger import leases, make_engine, make_sessionmaker
from core.settings import Settings

log = logging.getLogger(__name__)

Job = Callable[[sessionmaker[Session], Settings], object]


def generate_job(sessions: sessionmaker[Session], settings: Settings) -> object:
    from generator.jobs import generate_variants

    return generate_variants(sessions, settings)


def retire_job(sessions: sessionmaker[Session], settings: Settings) -> object:
    from generator.winners import current_params, retire_losers

    return retire_losers(
        sessions,
        current_params(sessions, settings.winner_min_exposure),
        keep_active=settings.retire_keep_active,
    )


def challengers_job(sessions: sessionmaker[Session], settings: Settings) -> object:
    """Top up the products that lost variants to retirement, with the current generator."""
    from generator.jobs import generate_variants

    products = _products_needing_challengers(sessions, settings.variants_per_product)
    if not products:
        return "no product lost variants"
    return generate_variants(sessions, settings, product_ids=products)


def finetune_job(sessions: sessionmaker[Session], settings: Settings) -> object:
    from generator.finetune import config_from_settings, due, main

    reason = due(sessions, settings)
    if reason is not None:
        return f"skipped: {reason}"
    return main(config_from_settings(settings), sessions, settings)


JOBS: dict[str, Job] = {
    "generate": generate_job,
    "retire": retire_job,
    "challengers": challengers_job,
    "finetune": finetune_job,
}


def lease_ttl(settings: Settings) -> float:
    return max(60.0, 4 * settings.scheduler_interval_s)


def tick(sessions: sessionmaker[Session], settings: Settings, holder: str) -> dict[str, object]:
    """Run each job whose lease this scheduler gets or holds; returns what each job reported."""
    done: dict[str, object] = {}
    ttl = lease_ttl(settings)
    for name, job in JOBS.items():
        lease = f"scheduler:{name}"
        if not leases.acquire(sessions, lease, holder, ttl_s=ttl):
            continue
        with _heartbeat(sessions, lease, holder, ttl):
            try:
                done[name] = job(sessions, settings)
            except Exception:
                log.exception("scheduler job %s failed", name)
    return done


def release_all(sessions: sessionmaker[Session], holder: str) -> None:
    """Give up every job lease `holder` has (a clean shutdown: others take over at once)."""
    for name in JOBS:
        leases.release(sessions, f"scheduler:{name}", holder)


@contextmanager
def _heartbeat(
    sessions: sessionmaker[Session], lease: str, holder: str, ttl: float
) -> Iterator[None]:
    """Renew `lease` every ttl/3 seconds while the body runs (a fine-tuning round can outlast
    the lease's ttl; without renewal another scheduler would take the job over mid-run)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            try:
                if not leases.acquire(sessions, lease, holder, ttl_s=ttl):
                    log.warning("lost lease %s while its job runs", lease)
            except Exception:
                log.exception("renewing lease %s failed", lease)

    thread = threading.Thread(target=renew, name=f"lease:{lease}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _products_needing_challengers(sessions: sessionmaker[Session], wanted: int) -> list[str]:
    """Products with a retired variant and fewer than `wanted` active non-control variants."""
    from core.catalog import CONTROL_SOURCE
    from core.ledger.tables import Variant

    with sessions() as s:
        retired = set(
            s.scalars(select(Variant.product_id).where(Variant.status == "retired").distinct())
        )
        if not retired:
            return []
        active = dict(
            s.execute(
                select(Variant.product_id, func.count())
                .where(
                    Variant.status == "active",
                    Variant.source != CONTROL_SOURCE,
                    Variant.product_id.in_(sorted(retired)),
                )
                .group_by(Variant.product_id)
            ).all()
        )
    return sorted(p for p in retired if active.get(p, 0) < wanted)


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
        try:
            release_all(sessions, holder)
        finally:
            engine.dispose()
