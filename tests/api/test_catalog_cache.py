"""`api.catalog_cache.CatalogCache.refresh`: the catalog is reloaded when its mark moved (each
way copyloop's writers change what is servable), not otherwise, and whatever the mark says every
`FULL_EVERY` looks."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.catalog_cache import FULL_EVERY, CatalogCache
from core.catalog import SAMPLE_CATALOG, read_catalog, upsert_products
from core.ledger.tables import Variant
from generator.manual import retire_variant


def test_a_refresh_reloads_the_catalog_when_it_changed_and_only_then(
    sessions: sessionmaker[Session],
) -> None:
    products = read_catalog(SAMPLE_CATALOG)[:3]
    first = products[0]
    pid = first.product_id
    upsert_products(sessions, products, now=1000.0)
    cache = CatalogCache(sessions, 3600)
    assert cache.refresh()  # the first load
    assert not cache.refresh()  # nothing moved: the rows are not read
    entry = cache.get(pid)
    assert entry is not None and len(entry.arms) == 1

    with sessions.begin() as s:  # a generated variant, as the generator's jobs store one
        s.add(
            Variant(
                variant_id="v_new",
                product_id=pid,
                text="Bold, bright and built to last.",
                style="concise",
                source="rules",
                status="active",
                created_at=1001.0,
            )
        )
    assert cache.refresh()
    assert cache.get(pid).variant_ids == (entry.variant_ids[0], "v_new")  # type: ignore[union-attr]

    assert retire_variant(sessions, pid, "v_new")
    assert cache.refresh()
    assert cache.get(pid).variant_ids == entry.variant_ids  # type: ignore[union-attr]

    upsert_products(sessions, [first.model_copy(update={"category": "garden"})], now=1002.0)
    assert cache.refresh()
    assert cache.get(pid).features.category == "garden"  # type: ignore[union-attr]

    upsert_products(sessions, [first.model_copy(update={"description": "A new story."})], 1003.0)
    assert cache.refresh()
    assert cache.get(pid).texts == ("A new story.",)  # type: ignore[union-attr]
    assert not cache.refresh()

    upsert_products(sessions, [first], now=1004.0)  # the old description back: revived
    assert cache.refresh()
    assert cache.get(pid).texts == (first.description,)  # type: ignore[union-attr]

    # A text edited in place, which copyloop's writers never do: the mark cannot see it, the
    # next full load takes it.
    with sessions.begin() as s:
        s.execute(update(Variant).where(Variant.product_id == pid).values(text="Edited."))
    for _ in range(FULL_EVERY - 1):
        assert not cache.refresh()
    assert cache.get(pid).texts == (first.description,)  # type: ignore[union-attr]
    assert cache.refresh()
    assert cache.get(pid).texts == ("Edited.",)  # type: ignore[union-attr]

    upsert_products(sessions, read_catalog(SAMPLE_CATALOG)[3:5], now=1005.0)  # new products
    assert cache.refresh()
    assert len(cache) == 5
