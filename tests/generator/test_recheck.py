"""Copy held to a product's data when the data changes: variants stating facts the new data
does not support are retired with the reason, the rest and the control stay, nothing else moves,
and the upserts run it (API: tests/api/test_variants.py; CLI: tests/copyloop/test_cli.py)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import ProductIn, upsert_products
from core.ledger import Variant
from core.settings import Settings
from generator.jobs import generate_variants
from generator.manual import add_variants
from generator.recheck import FACTS_CHANGED, retire_unsupported

SettingsFactory = Callable[..., Settings]

STEEL = ProductIn(
    product_id="lamp-1",
    title="Lumo Desk Lamp",
    category="home-lighting",
    description="A steel desk lamp with 3 brightness settings and a 2 m cord.",
    attributes={"brand": "Lumo", "material": "steel", "cord_length_m": 2},
)
ALUMINIUM = STEEL.model_copy(
    update={
        "description": "An aluminium desk lamp with 5 brightness settings and a 1.5 m cord.",
        "attributes": {"brand": "Lumo", "material": "aluminium", "cord_length_m": 1.5},
    }
)


def _variants(sessions: sessionmaker[Session]) -> dict[str, Variant]:
    with sessions() as s:
        return {v.variant_id: v for v in s.scalars(select(Variant))}


def test_copy_stating_the_old_data_is_retired_and_the_rest_stays(
    sessions: sessionmaker[Session], make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    upsert_products(sessions, [STEEL])
    generate_variants(sessions, settings, product_ids=["lamp-1"])
    [kept, stale_manual] = add_variants(
        sessions,
        settings,
        "lamp-1",
        [
            ("The Lumo lamp brings a calm, even light to any desk you work at.", "calm"),
            ("The Lumo desk lamp: steel, with a cord long enough for any desk.", "desk"),
        ],
    )
    before = _variants(sessions)
    assert kept.status == stale_manual.status == "active"

    assert retire_unsupported(sessions, settings, ["lamp-1"]) == []  # the data did not change
    result = upsert_products(sessions, [ALUMINIUM])
    assert result.updated_ids == ("lamp-1",)
    retired = retire_unsupported(sessions, settings, result.updated_ids)

    after = _variants(sessions)
    gone = {r.variant_id for r in retired}
    assert stale_manual.variant_id in gone and kept.variant_id not in gone
    for vid, v in after.items():
        if vid in gone:
            assert v.status == "retired" and v.retired_at is not None
            assert v.reject_reason is not None
            assert v.reject_reason.startswith(f"{FACTS_CHANGED}: unsupported_")
        elif vid in before:  # the old control went with the old description
            assert v.status == before[vid].status or v.source == "control"
    active = [v for v in after.values() if v.status == "active"]
    assert {v.source for v in active} >= {"control", "manual"}
    for v in active:  # what is still served says nothing the new data contradicts
        assert "steel" not in v.text.lower() and "2 m" not in v.text
    rules = [v for v in before.values() if v.source == "rules" and v.status == "active"]
    assert rules and all(v.variant_id in gone for v in rules if "steel" in v.text.lower())
    assert retire_unsupported(sessions, settings, ["lamp-1"]) == []  # nothing left to retire
