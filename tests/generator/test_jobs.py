"""generate_variants on a real ledger: tops products up, stores rejects with their reason, is
idempotent, and refuses what it cannot do with exact messages."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import SAMPLE_CATALOG, ProductIn, read_catalog, upsert_products, variant_id
from core.ledger import Variant
from core.settings import Settings
from generator import GeneratorError, UnknownProductError
from generator.jobs import GenerateReport, generate_variants

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def catalog(sessions: sessionmaker[Session]) -> list[ProductIn]:
    products = read_catalog(SAMPLE_CATALOG)[::16]  # one of each product type's first variant
    upsert_products(sessions, products)
    return products


def variants(sessions: sessionmaker[Session], **where: str) -> list[Variant]:
    with sessions() as s:
        query = select(Variant).filter_by(**where).order_by(Variant.variant_id)
        return list(s.scalars(query))


def snapshot(rows: list[Variant]) -> list[tuple[object, ...]]:
    return [(r.variant_id, r.status, r.text, r.reject_reason, r.created_at) for r in rows]


def test_tops_every_product_up_with_distinct_styles(
    sessions: sessionmaker[Session], make_settings: SettingsFactory, catalog: list[ProductIn]
) -> None:
    seen: list[tuple[int, int]] = []
    report = generate_variants(
        sessions, make_settings(), progress=lambda done, total: seen.append((done, total))
    )
    n = len(catalog)
    assert report == GenerateReport(products=n, created=4 * n, rejected=0, skipped=0)
    assert seen == [(i, n) for i in range(1, n + 1)]
    for product in catalog:
        rows = variants(sessions, product_id=product.product_id, source="rules")
        assert len(rows) == 4 and {r.status for r in rows} == {"active"}
        assert {r.style for r in rows} == {"concise", "bullets", "technical", "benefit"}
        for row in rows:
            assert row.variant_id == variant_id(row.product_id, row.text, row.style)
            assert row.generator_version == "rules-1" and row.reject_reason is None
            assert 20 <= len(row.text) <= 600


def test_rerunning_creates_nothing(
    sessions: sessionmaker[Session], make_settings: SettingsFactory, catalog: list[ProductIn]
) -> None:
    settings = make_settings()
    generate_variants(sessions, settings)
    before = snapshot(variants(sessions))
    report = generate_variants(sessions, settings)
    assert report == GenerateReport(products=0, created=0, rejected=0, skipped=len(catalog))
    assert snapshot(variants(sessions)) == before


def test_per_product_adds_the_missing_styles_first(
    sessions: sessionmaker[Session], make_settings: SettingsFactory, catalog: list[ProductIn]
) -> None:
    settings = make_settings(variants_per_product=2)
    first = generate_variants(sessions, settings, product_ids=[catalog[0].product_id])
    assert first == GenerateReport(products=1, created=2, rejected=0, skipped=0)
    more = generate_variants(sessions, settings, product_ids=[catalog[0].product_id], per_product=6)
    assert more.created == 4
    rows = variants(sessions, product_id=catalog[0].product_id, source="rules", status="active")
    styles = sorted(r.style for r in rows)
    assert set(styles) == {"concise", "bullets", "technical", "benefit", "story"}
    assert len(styles) == 6
    # Other products were not touched.
    assert variants(sessions, product_id=catalog[1].product_id, source="rules") == []


def test_rejected_candidates_are_stored_with_their_reason_once(
    sessions: sessionmaker[Session], make_settings: SettingsFactory, catalog: list[ProductIn]
) -> None:
    product = catalog[0]  # the Dutch oven: every text names its "cast iron"
    settings = make_settings(banned_terms=["iron"])
    report = generate_variants(sessions, settings, product_ids=[product.product_id])
    rejected = variants(sessions, product_id=product.product_id, status="rejected")
    assert report.rejected == len(rejected) > 0
    assert {r.reject_reason for r in rejected} == {"banned_term: iron"}
    again = generate_variants(sessions, settings, product_ids=[product.product_id])
    assert (again.created, again.rejected) == (0, 0)
    assert snapshot(variants(sessions, product_id=product.product_id, status="rejected")) == (
        snapshot(rejected)
    )


def test_description_change_keeps_generated_variants_apart_from_control(
    sessions: sessionmaker[Session], make_settings: SettingsFactory, catalog: list[ProductIn]
) -> None:
    generate_variants(sessions, make_settings(), product_ids=[catalog[0].product_id])
    upsert_products(sessions, [catalog[0].model_copy(update={"description": "New copy here."})])
    controls = variants(sessions, product_id=catalog[0].product_id, source="control")
    assert sorted(c.status for c in controls) == ["active", "retired"]
    assert len(variants(sessions, product_id=catalog[0].product_id, source="rules")) == 4


def test_unknown_products_and_backends_are_refused(
    sessions: sessionmaker[Session], make_settings: SettingsFactory, catalog: list[ProductIn]
) -> None:
    settings = make_settings()
    with pytest.raises(UnknownProductError) as caught:
        generate_variants(sessions, settings, product_ids=["nope", catalog[0].product_id, "gone"])
    assert str(caught.value) == "unknown product ids: gone, nope"
    with pytest.raises(GeneratorError) as unset:
        generate_variants(sessions, settings, backend="hf")
    assert str(unset.value) == (
        "the hf backend needs generator_model: set COPYLOOP_GENERATOR_MODEL to a local model "
        "directory (or the id of a model in the local cache)"
    )
    with pytest.raises(GeneratorError, match=r"^unknown generator backend 'gpt' \(expected"):
        generate_variants(sessions, settings, backend="gpt")
    with pytest.raises(ValueError, match=r"^per_product must be >= 1, got 0$"):
        generate_variants(sessions, settings, per_product=0)
    assert variants(sessions, source="rules") == []


def test_known_brands_are_read_from_the_catalog_on_every_database(
    sessions: sessionmaker[Session], catalog: list[ProductIn]
) -> None:
    from generator.jobs import known_brands

    upsert_products(sessions, [ProductIn(product_id="nb", title="T", description="D")])
    with sessions() as s:
        assert known_brands(s) == {str(p.attributes["brand"]) for p in catalog}
