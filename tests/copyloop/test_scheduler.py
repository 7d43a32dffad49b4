"""The scheduler's lifecycle jobs on a real ledger: leases keep two schedulers from running the
same job, clear losers are retired (never the control, never below two active), challengers top
the product up again, and the fine-tuning job says why it is not due."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from copyloop import scheduler
from core.catalog import CONTROL_SOURCE, SAMPLE_CATALOG, read_catalog
from core.ledger import JobLease, Variant
from core.settings import Settings
from generator.jobs import GenerateReport
from generator.winners import RetireReport
from tests.generator.synthetic import Ledger

SettingsFactory = Callable[..., Settings]


def test_two_concurrent_schedulers_never_run_the_same_job_twice(
    sessions: sessionmaker[Session],
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[tuple[str, str]] = []
    running: dict[str, int] = {}
    overlap: list[str] = []
    lock = threading.Lock()

    def job(name: str) -> scheduler.Job:
        def run(_sessions: sessionmaker[Session], _settings: Settings) -> object:
            holder = threading.current_thread().name
            with lock:
                runs.append((name, holder))
                running[name] = running.get(name, 0) + 1
                if running[name] > 1:
                    overlap.append(name)
            time.sleep(0.05)
            with lock:
                running[name] -= 1
            return holder

        return run

    monkeypatch.setattr(scheduler, "JOBS", {f"job{i}": job(f"job{i}") for i in range(4)})
    settings = make_settings()
    start = threading.Barrier(2)

    def loop(holder: str) -> None:
        start.wait()
        for _ in range(3):
            scheduler.tick(sessions, settings, holder)

    threads = [threading.Thread(target=loop, args=(h,), name=h) for h in ("s1", "s2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert overlap == []
    owners = {name: {h for n, h in runs if n == name} for name in scheduler.JOBS}
    assert all(len(who) == 1 for who in owners.values()), owners  # one owner per job
    assert sorted(n for n, _ in runs) == sorted([f"job{i}" for i in range(4)] * 3)
    # a clean shutdown gives the leases up, so the other scheduler takes over at once
    for holder in ("s1", "s2"):
        scheduler.release_all(sessions, holder)
    with sessions() as s:
        assert s.scalars(select(JobLease)).all() == []


def test_retire_then_challengers_then_finetune_not_due(
    sessions: sessionmaker[Session], make_settings: SettingsFactory
) -> None:
    catalog = read_catalog(SAMPLE_CATALOG)
    ledger = Ledger(sessions, seed=21)
    a, b = catalog[0], catalog[16]
    # a: control, one fine variant, two clear losers → both losers go (4 active → 2 left)
    arms_a = ledger.product(
        a, [("concise", "Fine copy one."), ("story", "Loser copy two."), ("bullets", "Loser 3.")]
    )
    truth_a = dict(zip(arms_a, (0.20, 0.22, 0.02, 0.03), strict=True))
    ledger.serve(a.product_id, arms_a, 3000, [0.25] * 4, truth_a)
    # b: control and one clear loser → kept: a product keeps two active variants
    arms_b = ledger.product(b, [("concise", "Only other copy.")])
    ledger.serve(b.product_id, arms_b, 2000, [0.5, 0.5], {arms_b[0]: 0.3, arms_b[1]: 0.02})

    settings = make_settings(winner_min_exposure=200, variants_per_product=3)
    report = scheduler.retire_job(sessions, settings)
    assert isinstance(report, RetireReport)
    assert report.retired == {a.product_id: sorted(arms_a[2:], key=lambda v: truth_a[v])}
    assert report.kept == 1
    with sessions() as s:
        rows = {v.variant_id: v for v in s.scalars(select(Variant))}
    for vid in arms_a[2:]:
        assert rows[vid].status == "retired" and rows[vid].retired_at is not None
        assert rows[vid].reject_reason.startswith("losing_to_control: reward 0.0")
    assert rows[arms_a[0]].status == rows[arms_a[1]].status == "active"
    assert rows[arms_b[0]].status == rows[arms_b[1]].status == "active"
    assert scheduler.retire_job(sessions, settings).retired == {}  # idempotent

    made = scheduler.challengers_job(sessions, settings)
    assert made == GenerateReport(products=1, created=2, rejected=0, skipped=0)
    with sessions() as s:
        active = s.scalars(
            select(Variant).where(
                Variant.product_id == a.product_id,
                Variant.status == "active",
                Variant.source != CONTROL_SOURCE,
            )
        ).all()
    assert len(active) == 3 and {v.source for v in active} == {"rules"}
    assert scheduler.challengers_job(sessions, settings) == "no product lost variants"

    assert scheduler.finetune_job(sessions, settings) == (
        "skipped: generator_backend is not hf (or no generator_model)"
    )
    hf = make_settings(generator_backend="hf", generator_model="var/none", finetune_min_winners=2)
    assert scheduler.finetune_job(sessions, hf) == "skipped: 0 new winners, 2 needed"


def test_scheduler_settings_are_validated(make_settings: SettingsFactory) -> None:
    with pytest.raises(ValueError, match="retire_keep_active"):
        make_settings(retire_keep_active=1)
    with pytest.raises(ValueError, match="finetune_min_winners"):
        make_settings(finetune_min_winners=1)
