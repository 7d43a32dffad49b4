"""The servable catalog, in memory: per product its features, its arms and their texts.

Serving reads only this cache. A background thread looks every `refresh_s` seconds at the
catalog's mark (`catalog_mark`: two aggregate queries, which the database answers without
holding the serving process's GIL) and, when it moved, reloads every product with active
variants and swaps the whole map in one assignment, so readers never see a half refresh; every
`FULL_EVERY` looks it reloads whatever the mark says. A reload of the sample catalog's 128
products takes 55-150 ms of CPU under the GIL (ORM rows, arms rendered), which the page views of
that worker wait behind, and grows with the catalog: it ran every 5 s in every API worker.

A product missing from the cache (created since the last refresh) is read from the ledger once;
unknown ids are remembered until the next refresh so a flood of them costs no reads.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session, sessionmaker

from api.background import Periodic
from bandit import Arm, ProductFeatures
from bandit.vw_format import arm_lines
from core.ledger.tables import Product, Variant

log = logging.getLogger(__name__)

#: The control variant is always first in a product's action set.
CONTROL_INDEX = 0
#: Every this many refreshes the catalog is reloaded even when its mark did not move (a change
#: the mark cannot see: writers' clocks set back, a row edited outside copyloop's writers).
FULL_EVERY = 12


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One servable product: `arms[i]` is shown as `texts[i]` in style `styles[i]`; the control
    (original copy) is `arms[CONTROL_INDEX]`. `arm_lines` are the arms in VW's text format,
    rendered once here rather than on every page view."""

    features: ProductFeatures
    arms: tuple[Arm, ...]
    texts: tuple[str, ...]
    styles: tuple[str, ...]
    control_index: int = CONTROL_INDEX
    arm_lines: tuple[str, ...] = field(init=False)
    variant_ids: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arm_lines", arm_lines(self.arms))
        object.__setattr__(self, "variant_ids", tuple(a.variant_id for a in self.arms))


def build_entries(rows: Iterable[Any]) -> dict[str, CatalogEntry]:
    """Entries from `(product, active variant)` rows. A product without an active control
    variant is left out (logged): its holdout and fallback would have nothing to serve."""
    variants: dict[str, list[Variant]] = defaultdict(list)
    products: dict[str, Product] = {}
    for product, variant in rows:
        products[product.product_id] = product
        variants[product.product_id].append(variant)
    entries = {}
    for pid, found in variants.items():
        controls = [v for v in found if v.source == "control"]
        if not controls:
            log.warning("product %r has no active control variant; not servable", pid)
            continue
        control = max(controls, key=lambda v: (v.created_at, v.variant_id))
        others = sorted((v for v in found if v is not control), key=lambda v: v.variant_id)
        ordered = [control, *others]
        entries[pid] = CatalogEntry(
            features=ProductFeatures(pid, products[pid].category),
            arms=tuple(
                Arm.from_variant(v.variant_id, v.text, v.style, v.source, v.generator_version)
                for v in ordered
            ),
            texts=tuple(v.text for v in ordered),
            styles=tuple(v.style for v in ordered),
        )
    return entries


def catalog_mark(session: Session) -> tuple[Any, ...]:
    """What moves whenever the servable catalog changes through copyloop's writers: variants
    only ever get inserted (the total count), retired (the active count, the latest
    `retired_at`) or revived as a product's control (its product's `updated_at`, the latest
    `retired_at` of the control it replaces), and products inserted, updated or deleted
    (their count, the latest `updated_at`)."""
    variants = session.execute(
        select(
            func.count(),
            func.count(case((Variant.status == "active", 1))),
            func.max(Variant.created_at),
            func.max(Variant.retired_at),
        )
    ).one()
    products = session.execute(select(func.count(), func.max(Product.updated_at))).one()
    return (*variants, *products)


def _active_rows(product_ids: list[str] | None = None) -> Select[Product, Variant]:
    query = (
        select(Product, Variant)
        .join(Variant, Variant.product_id == Product.product_id)
        .where(Variant.status == "active")
    )
    if product_ids is not None:
        query = query.where(Product.product_id.in_(product_ids))
    return query


class CatalogCache:
    """product_id → `CatalogEntry`, refreshed in the background. Lookups are dict reads."""

    def __init__(
        self, sessions: sessionmaker[Session], refresh_s: float, max_missing: int = 100_000
    ) -> None:
        self._sessions = sessions
        self.refresh_s = refresh_s
        self.max_missing = max_missing
        self._entries: dict[str, CatalogEntry] = {}
        self._missing: set[str] = set()
        self._lock = threading.Lock()  # serialises writers; readers need none
        self._mark: tuple[Any, ...] | None = None  # `catalog_mark` of the last full load
        self._looks = 0  # refreshes since the last full load
        self._refresher = Periodic(
            "copyloop-catalog", refresh_s, self.refresh, lambda: "serving the previous catalog"
        )
        self.loaded = threading.Event()  # set after the first full load

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, product_id: str) -> CatalogEntry | None:
        """The cached entry, or None when the product is not cached (unknown or not yet read)."""
        return self._entries.get(product_id)

    def known_missing(self, product_id: str) -> bool:
        """True when the ledger said "no such servable product" since the last refresh."""
        return product_id in self._missing

    def load(self, product_id: str) -> CatalogEntry | None:
        """Read one product from the ledger (blocking), cache and return it; None if unknown."""
        self.reload_products([product_id])
        return self._entries.get(product_id)

    def reload_products(self, product_ids: list[str]) -> None:
        """Re-read these products now (after an upsert, or on a cache miss)."""
        with self._sessions() as s:
            found = build_entries(s.execute(_active_rows(product_ids)))
        with self._lock:
            entries = dict(self._entries)
            for pid in product_ids:
                entries.pop(pid, None)
            entries.update(found)
            self._entries = entries
            self._missing.difference_update(found)
            if len(self._missing) >= self.max_missing:
                self._missing.clear()
            self._missing.update(pid for pid in product_ids if pid not in found)

    def refresh(self) -> bool:
        """Reload every servable product and swap the map, when the catalog's mark moved since
        the last reload or `FULL_EVERY` looks went by. Returns whether it reloaded."""
        with self._sessions() as s:
            mark = catalog_mark(s)  # first: the rows read next are at least as new
            self._looks += 1
            if mark == self._mark and self._looks < FULL_EVERY:
                return False
            entries = build_entries(s.execute(_active_rows()))
        with self._lock:
            self._entries = entries
            self._missing = set()
            self._mark, self._looks = mark, 0
        self.loaded.set()
        return True

    def start(self) -> CatalogCache:
        self._refresher.start()
        return self

    def close(self) -> None:
        self._refresher.close()
