"""Generate candidate variants for the catalog and store them, accepted or rejected.

For each product that has fewer active non-control variants than wanted, the backend writes a
pool of candidates, styles least represented first; each is checked by the guardrails against
the product and its active variants (plus the ones accepted a moment earlier), and stored as
`active`, or as `rejected` with the reason. Variant ids are deterministic and the backend is
seeded per product, so a re-run finds the same texts already stored and creates nothing.

Each product is written in its own transaction: a long run keeps what it has done if it stops,
and inserts ignore conflicts, so two runs at once cannot fail on each other's rows.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from copyloop.catalog import CONTROL_SOURCE, dialect_insert, variant_id
from copyloop.ledger.tables import Product, Variant
from copyloop.settings import Settings
from generator import BackendUnavailableError, GeneratorError, UnknownProductError
from generator.facts import FactSheet, ProductLike
from generator.guardrails import GuardrailParams, check
from generator.rules import STYLES, Candidate, RulesGenerator

#: Extra candidates asked of the backend beyond the number wanted, to cover rejections.
POOL_SLACK = len(STYLES)


@dataclass(frozen=True, slots=True)
class GenerateReport:
    """`products`: products that needed variants; `created`: variants stored active;
    `rejected`: new candidates stored rejected; `skipped`: products that had enough."""

    products: int
    created: int
    rejected: int
    skipped: int


@dataclass(frozen=True, slots=True)
class _ProductData:
    """A detached copy of a product row (the generator reads it outside any session)."""

    product_id: str
    title: str
    category: str
    description: str
    attributes: dict[str, Any]


class Backend(Protocol):
    """What a generator backend offers: `n` candidates of `product` in the given styles."""

    def generate(self, product: ProductLike, styles: Sequence[str], n: int) -> list[Candidate]: ...


def make_backend(name: str, settings: Settings) -> Backend:
    """The generator backend called `name`, built from `settings`."""
    if name == "rules":
        return RulesGenerator(seed=settings.seed, max_chars=settings.max_variant_chars)
    if name == "hf":
        raise BackendUnavailableError(
            "the hf backend is not available yet (it is being built); use --backend rules"
        )
    raise GeneratorError(f"unknown generator backend {name!r} (expected rules or hf)")


def generate_variants(
    sessions: sessionmaker[Session],
    settings: Settings,
    product_ids: Sequence[str] | None = None,
    backend: str | None = None,
    per_product: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerateReport:
    """Top up every product (or those in `product_ids`) to `per_product` active candidates.

    `backend` and `per_product` default to `settings.generator_backend` and
    `settings.variants_per_product`; `progress(done, total)` is called after each product.
    Raises :class:`UnknownProductError` naming ids that are not in the ledger, and
    :class:`BackendUnavailableError` for a backend that cannot run here.
    """
    generator = make_backend(backend or settings.generator_backend, settings)
    wanted = settings.variants_per_product if per_product is None else per_product
    if wanted < 1:
        raise ValueError(f"per_product must be >= 1, got {wanted}")
    with sessions() as session:
        products, active_counts = _load(session, product_ids)
        brands = _known_brands(session)
    params = GuardrailParams.from_settings(settings, known_brands=brands)
    todo = [p for p in products if active_counts.get(p.product_id, 0) < wanted]
    created = rejected = 0
    for done, product in enumerate(todo, start=1):
        made, refused = _top_up(sessions, generator, product, wanted, params)
        created += made
        rejected += refused
        if progress is not None:
            progress(done, len(todo))
    return GenerateReport(
        products=len(todo), created=created, rejected=rejected, skipped=len(products) - len(todo)
    )


def _load(
    session: Session, product_ids: Sequence[str] | None
) -> tuple[list[_ProductData], dict[str, int]]:
    query = select(Product).order_by(Product.product_id)
    if product_ids is not None:
        query = query.where(Product.product_id.in_(list(product_ids)))
    products = [
        _ProductData(p.product_id, p.title, p.category, p.description, dict(p.attributes or {}))
        for p in session.scalars(query)
    ]
    if product_ids is not None:
        missing = sorted(set(product_ids) - {p.product_id for p in products})
        if missing:
            raise UnknownProductError(f"unknown product ids: {', '.join(missing)}")
    counts = select(Variant.product_id, func.count()).where(
        Variant.status == "active", Variant.source != CONTROL_SOURCE
    )
    if product_ids is not None:
        counts = counts.where(Variant.product_id.in_(list(product_ids)))
    active = {pid: n for pid, n in session.execute(counts.group_by(Variant.product_id))}
    return products, active


def _known_brands(session: Session) -> set[str]:
    """Every brand in the catalog, so a candidate naming another product's brand is caught."""
    brand = Product.attributes["brand"].as_string()
    return {b for b in session.scalars(select(brand).distinct()) if isinstance(b, str) and b}


def _top_up(
    sessions: sessionmaker[Session],
    generator: Backend,
    product: _ProductData,
    wanted: int,
    params: GuardrailParams,
) -> tuple[int, int]:
    """Generate, check and store candidates for one product; returns (created, rejected)."""
    with sessions.begin() as session:
        rows = session.execute(
            select(Variant.variant_id, Variant.text, Variant.style, Variant.source, Variant.status)
            .where(Variant.product_id == product.product_id)
            .order_by(Variant.created_at, Variant.variant_id)
        ).all()
        known = {r.variant_id for r in rows}
        siblings = {r.variant_id: r.text for r in rows if r.status == "active"}
        have = sum(1 for r in rows if r.status == "active" and r.source != CONTROL_SOURCE)
        need = wanted - have
        if need <= 0:
            return 0, 0
        coverage = Counter(r.style for r in rows if r.status == "active")
        styles = sorted(STYLES, key=lambda s: (coverage[s], STYLES.index(s)))
        facts = FactSheet.of(product)
        now = time.time()
        created = rejected = 0
        for candidate in generator.generate(product, styles, need + POOL_SLACK):
            if created >= need:
                break
            vid = variant_id(product.product_id, candidate.text, candidate.style)
            if vid in known:
                continue  # stored by an earlier run, accepted or not: never judged twice
            known.add(vid)
            verdict = check(candidate.text, facts, siblings, params)
            inserted = session.execute(
                dialect_insert(session, Variant)
                .values(
                    variant_id=vid,
                    product_id=product.product_id,
                    text=candidate.text,
                    style=candidate.style,
                    source=candidate.source,
                    status="active" if verdict.ok else "rejected",
                    reject_reason=verdict.reason,
                    generator_version=candidate.generator_version,
                    created_at=now,
                    retired_at=None,
                )
                .on_conflict_do_nothing(index_elements=["variant_id"])
                .returning(Variant.variant_id)
            ).scalar_one_or_none()
            if inserted is None:
                continue  # a concurrent run stored it first
            if verdict.ok:
                siblings[vid] = candidate.text
                created += 1
            else:
                rejected += 1
        return created, rejected
