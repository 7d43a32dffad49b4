"""Copy held to a product's data when the data changes.

A variant passed the guardrails against the product's facts as they were when it was written.
When an upsert changes the product (a new material, another cord length, a different brand),
copy that states the old facts would go on being served as if true. `retire_unsupported`
checks every active variant of the changed products but the control (which *is* the new
description) against the data as it is now, with the data checks alone (`check_facts`: the
ones the change can move; length, banned terms and near-duplicates were settled when the copy
was written), each source held as strictly as when it came in: generated copy as generation is,
a copywriter's as `generator.manual` is. What fails is retired, its reason
`facts_changed: <the check's reason>`, its history kept; the scheduler's `generate` job then
tops the product up with copy written from the new data.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CONTROL_SOURCE
from core.ledger.tables import Product, Variant
from core.settings import Settings
from generator.facts import FactSheet
from generator.guardrails import GuardrailParams, check_facts
from generator.jobs import known_brands
from generator.manual import MANUAL_SOURCE

#: The reason a retired variant records, before the failed check's own.
FACTS_CHANGED = "facts_changed"
#: Products per query.
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Retired:
    """One variant withdrawn because the product's data no longer supports it."""

    product_id: str
    variant_id: str
    reason: str


def retire_unsupported(
    sessions: sessionmaker[Session], settings: Settings, product_ids: Iterable[str]
) -> list[Retired]:
    """Retire the active variants of `product_ids` that their product's current data does not
    support (see the module docstring), in one transaction; returns what was retired."""
    ids = sorted(set(product_ids))
    if not ids:
        return []
    retired: list[Retired] = []
    with sessions.begin() as s:
        brands = known_brands(s)
        strict = GuardrailParams.from_settings(settings, brands)
        loose = GuardrailParams.for_copywriters(settings, brands)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            facts = {
                p.product_id: FactSheet.of(p)
                for p in s.scalars(select(Product).where(Product.product_id.in_(chunk)))
            }
            variants = s.execute(
                select(Variant.product_id, Variant.variant_id, Variant.text, Variant.source)
                .where(
                    Variant.product_id.in_(chunk),
                    Variant.status == "active",
                    Variant.source != CONTROL_SOURCE,
                )
                .order_by(Variant.product_id, Variant.variant_id)
            ).all()
            for v in variants:
                params = loose if v.source == MANUAL_SOURCE else strict
                verdict = check_facts(v.text, facts[v.product_id], params)
                if not verdict.ok:
                    reason = f"{FACTS_CHANGED}: {verdict.reason}"
                    retired.append(Retired(v.product_id, v.variant_id, reason))
        now = time.time()
        for r in retired:
            s.execute(
                update(Variant)
                .where(Variant.variant_id == r.variant_id)
                .values(status="retired", reject_reason=r.reason, retired_at=now)
            )
    return retired


__all__ = ["FACTS_CHANGED", "Retired", "retire_unsupported"]
