"""Generate candidate variants for the catalog and store them, accepted or rejected.

For each product that has fewer active non-control variants than wanted, the backend writes a
pool of candidates, styles least represented first; each is checked by the guardrails against
the product and its active variants (plus the ones accepted a moment earlier), and stored as
`active`, or as `rejected` with the reason. Variant ids are deterministic and the backend is
seeded per product, so a re-run finds the same texts already stored and creates nothing.

Each product is written in its own transaction: a long run keeps what it has done if it stops,
and inserts ignore conflicts, so two runs at once cannot fail on each other's rows.

The `hf` backend generates for many products at once (its prompts are batched on the GPU), so
the products are taken in chunks: one batched generation per chunk, then each product's pool is
checked and stored in its own transaction as above. It generates with the newest *shipped*
generator version of the configured model (its adapter applied, see `generator.versions`);
when there is none, the base model's version `hf-base-<hash>` is recorded, shipped. Every
variant records its generator version, and :func:`reject_counts` counts the rejects per version
and reason.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CONTROL_SOURCE, dialect_insert, variant_id
from core.ledger.tables import Product, Variant
from core.settings import Settings
from generator import GeneratorError, SettingError, UnknownProductError
from generator.facts import FactSheet, ProductLike
from generator.guardrails import GuardrailParams, check, reason_kind
from generator.rules import STYLES, Candidate, RulesGenerator
from generator.versions import base_version_name, ensure_base, newest_shipped

if TYPE_CHECKING:
    from generator.hf import GenerationStats, HFGenerator

log = logging.getLogger(__name__)

#: Extra candidates asked of the backend beyond the number wanted, to cover rejections.
POOL_SLACK = len(STYLES)


@dataclass(frozen=True, slots=True)
class GenerateReport:
    """`products`: products that needed variants; `created`: variants stored active;
    `rejected`: new candidates stored rejected; `skipped`: products that had enough;
    `stats`: the `hf` backend's throughput (None for rules); `generator_version`: the version
    that generated (`rules-1`, `hf-base-…`, a fine-tuned one); `failed`: the products the
    backend raised on, with the reason (one bad product never stops the others)."""

    products: int
    created: int
    rejected: int
    skipped: int
    #: (product_id, reason) of each product the backend failed on; the others went on.
    failed: tuple[tuple[str, str], ...] = ()
    # Informational: equal reports are equal whatever the timing or version they ran under.
    stats: GenerationStats | None = field(default=None, compare=False, repr=False)
    generator_version: str | None = field(default=None, compare=False)


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


def make_backend(
    name: str, settings: Settings, sessions: sessionmaker[Session] | None = None
) -> Backend:
    """The generator backend called `name`, built from `settings`.

    For `hf`, `settings.generator_model` names the model; with `sessions`, the newest shipped
    generator version of that model is used (its base version is recorded when there is none);
    without them, the base model under its base version name. Raises `GeneratorError` naming
    the setting when it is unset or the model cannot be loaded.
    """
    if name == "rules":
        return RulesGenerator(seed=settings.seed, max_chars=settings.max_variant_chars)
    if name == "hf":
        return _hf_backend(settings, sessions)
    raise GeneratorError(f"unknown generator backend {name!r} (expected rules or hf)")


def _hf_backend(settings: Settings, sessions: sessionmaker[Session] | None) -> HFGenerator:
    from generator.hf import HFGenerator

    model = settings.generator_model
    if not model:
        raise SettingError(
            "the hf backend needs generator_model: set COPYLOOP_GENERATOR_MODEL to a local model "
            "directory (or the id of a model in the local cache)"
        )
    current = None if sessions is None else newest_shipped(sessions, base_model=model)
    generator = HFGenerator.from_settings(
        model,
        settings,
        version=current.version if current else base_version_name(model),
        adapter_path=current.adapter_path if current else None,
    )
    if sessions is not None and current is None:
        # Recorded only now that the model has loaded: a model that cannot load gets no version.
        ensure_base(sessions, model)
    return generator


def generate_variants(
    sessions: sessionmaker[Session],
    settings: Settings,
    product_ids: Sequence[str] | None = None,
    backend: str | Backend | None = None,
    per_product: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerateReport:
    """Top up every product (or those in `product_ids`) to `per_product` active candidates.

    `backend` (a name, or a backend built already) and `per_product` default to
    `settings.generator_backend` and `settings.variants_per_product`; `progress(done, total)`
    is called after each product.
    Raises :class:`UnknownProductError` naming ids that are not in the ledger, and
    :class:`BackendUnavailableError` for a backend that cannot run here.
    """
    wanted = settings.variants_per_product if per_product is None else per_product
    if wanted < 1:
        raise ValueError(f"per_product must be >= 1, got {wanted}")
    generator = (
        backend
        if backend is not None and not isinstance(backend, str)
        else make_backend(backend or settings.generator_backend, settings, sessions)
    )
    with sessions() as session:
        products, active_counts = _load(session, product_ids)
        brands = known_brands(session)
    params = GuardrailParams.from_settings(settings, known_brands=brands)
    todo = [p for p in products if active_counts.get(p.product_id, 0) < wanted]
    created = rejected = done = 0
    stats = None
    failed: dict[str, str] = {}
    batched = getattr(generator, "generate_many", None)
    chunk = max(1, getattr(generator, "batch_size", 1)) if batched else 1
    for start in range(0, len(todo), chunk):
        products_now = todo[start : start + chunk]
        backend_now: Backend = generator
        if batched is not None:
            prefetched = _prefetch(generator, products_now, active_counts, wanted)
            if prefetched.stats is not None:
                stats = prefetched.stats if stats is None else stats + prefetched.stats
            failed.update(prefetched.failed)
            backend_now = prefetched
        for product in products_now:
            if product.product_id not in failed:
                try:
                    made, refused = _top_up(sessions, backend_now, product, wanted, params)
                except (SQLAlchemyError, KeyboardInterrupt):
                    raise  # the ledger or the operator: nothing to go on with
                except Exception as exc:  # a backend bug on one product's data
                    log.exception("generating for %s failed", product.product_id)
                    failed[product.product_id] = _reason(exc)
                else:
                    created += made
                    rejected += refused
            done += 1
            if progress is not None:
                progress(done, len(todo))
    return GenerateReport(
        products=len(todo),
        created=created,
        rejected=rejected,
        skipped=len(products) - len(todo),
        failed=tuple(sorted(failed.items())),
        stats=stats,
        generator_version=getattr(generator, "version", None),
    )


def _reason(exc: BaseException) -> str:
    """One line naming the exception: `IndexError: index out of range in self`."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


class _Prefetched:
    """A backend serving candidates generated beforehand in one batch: each product's pool,
    reordered to follow the styles asked for (least represented first), cut at `n`."""

    def __init__(
        self,
        pools: dict[str, Sequence[Candidate]],
        stats: GenerationStats | None,
        failed: dict[str, str] | None = None,
    ) -> None:
        self.pools = pools
        self.stats = stats
        self.failed = failed or {}

    def generate(self, product: ProductLike, styles: Sequence[str], n: int) -> list[Candidate]:
        pool = self.pools.get(product.product_id, ())
        rank: Counter[str] = Counter()
        keyed = []
        for position, candidate in enumerate(pool):
            order = styles.index(candidate.style) if candidate.style in styles else len(styles)
            keyed.append(((rank[candidate.style], order, position), candidate))
            rank[candidate.style] += 1
        return [c for _, c in sorted(keyed, key=lambda kc: kc[0])][:n]


def _prefetch(
    generator: Any, products: Sequence[_ProductData], active: dict[str, int], wanted: int
) -> _Prefetched:
    """One batched generation for `products`: a pool of `need + POOL_SLACK` each, all styles.

    When the batch fails, each product is generated alone, so one product the model cannot
    handle costs its own pool only; its reason is kept in `failed`."""
    from generator.hf import GenerationRequest

    requests = [
        GenerationRequest(p, STYLES, wanted - active.get(p.product_id, 0) + POOL_SLACK)
        for p in products
    ]
    try:
        result = generator.generate_many(requests)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if len(requests) == 1:
            log.exception("generating for %s failed", requests[0].product.product_id)
            return _Prefetched({}, None, {requests[0].product.product_id: _reason(exc)})
        log.warning("a batch of %d products failed (%s); one by one", len(requests), exc)
        pools: dict[str, Sequence[Candidate]] = {}
        failed: dict[str, str] = {}
        stats = None
        for product in products:
            one = _prefetch(generator, [product], active, wanted)
            pools.update(one.pools)
            failed.update(one.failed)
            if one.stats is not None:
                stats = one.stats if stats is None else stats + one.stats
        return _Prefetched(pools, stats, failed)
    pools = {r.product.product_id: c for r, c in zip(requests, result.candidates, strict=True)}
    return _Prefetched(pools, result.stats)


@dataclass(frozen=True, slots=True)
class VersionCounts:
    """What one generator version wrote: candidates by status (`active`, `retired`,
    `rejected`) and the rejects by reason code."""

    statuses: dict[str, int]
    rejects: dict[str, int]

    @property
    def pass_rate(self) -> float:
        """Share of its candidates that passed the guardrails (active or retired since)."""
        total = sum(self.statuses.values())
        return (total - self.statuses.get("rejected", 0)) / total if total else 0.0


def version_counts(sessions: sessionmaker[Session]) -> dict[str, VersionCounts]:
    """Non-control candidates per generator version (`rules-1`, `hf-base-…`, fine-tuned ones)."""
    statuses: defaultdict[str, Counter[str]] = defaultdict(Counter)
    rejects: defaultdict[str, Counter[str]] = defaultdict(Counter)
    with sessions() as session:
        rows = session.execute(
            select(Variant.generator_version, Variant.status, Variant.reject_reason, func.count())
            .where(Variant.source != CONTROL_SOURCE)
            .group_by(Variant.generator_version, Variant.status, Variant.reject_reason)
        )
        for version, status, reason, n in rows:
            statuses[version][status] += n
            if status == "rejected":
                rejects[version][reason_kind(reason)] += n
    return {
        v: VersionCounts(dict(sorted(statuses[v].items())), dict(sorted(rejects[v].items())))
        for v in sorted(statuses)
    }


def reject_counts(sessions: sessionmaker[Session]) -> dict[str, dict[str, int]]:
    """Rejected variants per generator version and reason code, e.g.
    `{"hf-base-…": {"unsupported_number": 12, "garbled": 40}, "rules-1": {"banned_term": 1}}`."""
    return {v: c.rejects for v, c in version_counts(sessions).items() if c.rejects}


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


def known_brands(session: Session) -> set[str]:
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
        # Near-duplicates are judged against every variant that was ever servable: the active
        # ones and the retired ones (a copy of a withdrawn loser is no new candidate).
        siblings = {r.variant_id: r.text for r in rows if r.status in ("active", "retired")}
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
