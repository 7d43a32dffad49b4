"""copyloop's real stack as a simulation `Server`: the code that serves and learns in production,
driven in simulated time instead of over HTTP and Kafka.

- Serving: `api.catalog_cache.CatalogCache` (refreshed on the loop's cadence), the
  `api.policy_holder.PolicyHolder` (reloads the newest snapshot) and `api.serving.choose` /
  `decision_message`, exactly as the decision routes call them.
- The message on the wire: the decision is encoded as the API publishes it and decoded by
  `consumer.records.decode_decision`; events are JSON decoded by `decode_event`.
- Learning: `consumer.join.ingest`, then the `consumer.learner.Learner`'s `close_and_learn` at
  the loop's watermark and `maybe_snapshot` on its clock, on a real SQLite ledger.
- New copy: `generator.manual.add_variants`, the guardrailed path behind
  `POST /v1/products/{id}/variants`.

Only Kafka and HTTP are left out: their delivery is what the loop's ingest cadence stands for.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.catalog_cache import CatalogCache
from api.policy_holder import PolicyHolder
from api.serving import choose, decision_message
from bandit import FairTrial
from consumer.join import ingest
from consumer.learner import Learner, restart
from consumer.records import DecisionRecord, decode_decision, decode_event
from copyloop.sim.engine import Happened, PageView, Timing
from core.catalog import SAMPLE_CATALOG, ProductIn, read_catalog, upsert_products
from core.ledger import Variant, make_engine, make_sessionmaker
from core.migrations import upgrade
from core.settings import Settings, load_settings
from generator.jobs import generate_variants
from generator.manual import add_variants

#: Rules candidates per product besides the control (the default `variants_per_product`).
VARIANTS_PER_PRODUCT = 4


def sample_products(n: int) -> list[ProductIn]:
    """`n` products of the sample catalog, the categories interleaved (so any `n` mixes them)."""
    products = read_catalog(SAMPLE_CATALOG)
    by_category: dict[str, list[ProductIn]] = {}
    for p in products:
        by_category.setdefault(p.category, []).append(p)
    columns = list(by_category.values())
    mixed = [col[i] for i in range(max(map(len, columns))) for col in columns if i < len(col)]
    return mixed[:n]


class LedgerTemplate:
    """A migrated SQLite ledger with `products` sample products and their rules variants, built
    once and copied for every run (generation is the slow part of setting one up)."""

    def __init__(self, products: int, directory: Path, seed: int = 0) -> None:
        self.path = directory / f"template-{products}.db"
        self.products = sample_products(products)
        if not self.path.exists():
            settings = load_settings(database_url=f"sqlite:///{self.path}", seed=seed)
            upgrade(settings.database_url)
            engine = make_engine(settings.database_url)
            sessions = make_sessionmaker(engine)
            upsert_products(sessions, self.products)
            generate_variants(sessions, settings, backend="rules", per_product=VARIANTS_PER_PRODUCT)
            engine.dispose()

    def catalog(self) -> dict[str, list[tuple[str, str, str]]]:
        """product_id → its active variants as (variant_id, text, style)."""
        engine = make_engine(f"sqlite:///{self.path}")
        with make_sessionmaker(engine)() as s:
            rows = s.execute(
                select(Variant.product_id, Variant.variant_id, Variant.text, Variant.style).where(
                    Variant.status == "active"
                )
            ).all()
        engine.dispose()
        out: dict[str, list[tuple[str, str, str]]] = {}
        for pid, vid, text, style in rows:
            out.setdefault(pid, []).append((vid, text, style))
        return out

    def copy_to(self, directory: Path) -> str:
        target = directory / "ledger.db"
        shutil.copyfile(self.path, target)
        return f"sqlite:///{target}"


def sim_settings(database_url: str, timing: Timing, seed: int, **overrides: Any) -> Settings:
    """copyloop's settings for a simulated run: the loop's cadence, no holdout (every policy is
    compared on all its decisions), everything else as configured (`overrides` win)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "reward_window_s": timing.window_s,
        "close_grace_s": timing.grace_s,
        "clock_skew_s": timing.skew_s,
        "snapshot_every_s": timing.snapshot_every_s,
        "model_reload_s": timing.reload_s,
        "catalog_refresh_s": timing.catalog_refresh_s,
        "holdout": 0.0,
        "seed": seed,
    }
    values.update(overrides)
    return load_settings(**values)


class CopyloopServer:
    """copyloop's serving and learning code on its own ledger (a copy of `template`)."""

    name = "copyloop"

    def __init__(
        self, template: LedgerTemplate, timing: Timing, seed: int, **settings: Any
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="copyloop-sim-"))
        url = template.copy_to(self._dir)
        self.settings = sim_settings(url, timing, seed, **settings)
        self._engine = make_engine(url)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self._engine)
        self._now = 0.0
        self.learner = Learner(self.sessions, self.settings, clock=lambda: self._now)
        self.learner.catch_up()
        self.holder = PolicyHolder(
            self.sessions,
            holdout=self.settings.holdout,
            seed=self.settings.seed,
            reload_s=self.settings.model_reload_s,
            fair_trial=FairTrial.of(self.settings),
            own_effect_z=self.settings.bandit_own_effect_z,
        )
        self.holder.reload_once()
        self.catalog = CatalogCache(self.sessions, self.settings.catalog_refresh_s)
        self.catalog.refresh()
        self._ids = np.random.default_rng([seed, 17])
        self._records: dict[str, DecisionRecord] = {}

    def choose(self, product_id: str, context: Mapping[str, str], now: float) -> PageView:
        entry = self.catalog.get(product_id)
        if entry is None:
            raise LookupError(f"product {product_id!r} is not servable")
        ctx = dict(context)
        choice = choose(entry, ctx, self.holder.policy)
        decision_id = uuid.UUID(bytes=self._ids.bytes(16), version=4).hex
        message = decision_message(entry, product_id, ctx, choice, decision_id, now)
        self._records[decision_id] = decode_decision(message)
        return PageView(
            decision_id,
            product_id,
            context,
            choice.variant_id,
            choice.probability,
            entry.variant_ids,
            now,
        )

    def ingest(self, views: Sequence[PageView], events: Sequence[Happened], now: float) -> None:
        decisions = [self._records.pop(v.decision_id) for v in views]
        records = [
            decode_event(
                orjson.dumps(
                    {
                        "event_id": e.event_id,
                        "decision_id": e.decision_id,
                        "type": e.type,
                        "ts": e.ts * 1000.0,
                        **({"value": e.value} if e.value is not None else {}),
                    }
                )
            )
            for e in events
        ]
        if decisions or records:
            ingest(self.sessions, decisions, records, received_at=now)

    def learn(self, now: float) -> None:
        self._now = now
        self.learner.close_and_learn(now)
        self.learner.maybe_snapshot()

    def reload(self, now: float) -> None:
        self.holder.reload_once()

    def refresh_catalog(self, now: float) -> None:
        self.catalog.refresh()

    def add_variant(self, product_id: str, text: str, style: str, now: float) -> str:
        (result,) = add_variants(self.sessions, self.settings, product_id, [(text, style)])
        if result.status != "active":
            raise ValueError(f"the new variant was refused: {result.reasons}")
        return result.variant_id

    def restart(self, now: float) -> None:
        """`copyloop model restart`, as an operator who knows the tastes changed runs it; the
        learner continues from the new version (as `ElectedLearner` does on its next round)."""
        restart(self.sessions, self.settings)
        self.learner.catch_up()

    def close(self) -> None:
        self.learner.close()
        self.catalog.close()
        self._engine.dispose()
        shutil.rmtree(self._dir, ignore_errors=True)
