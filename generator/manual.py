"""A copywriter's own variants on a live product: added through the guardrails, retired by hand.

`add_variants` stores each text as `source = manual` (style as given), `active` when it passes
the guardrails the generated copy passes (length, banned terms, facts the product's data
supports, no near-duplicate of a sibling) and `rejected` with the reason otherwise. Hand-written
copy is held to the data like generated copy, except for spelled-out counts and loose
`Label: value` lines, which copywriters use freely (the catalog's own descriptions are checked
the same way). The API's catalog cache picks new variants up on its next refresh (a few seconds)
or at once when the route asks it to.

`retire_variant` withdraws one (reason `manual`): it is no longer served and its history stays.
The control (the product's original copy) cannot be retired: the holdout and the fallback
serve it.

Errors (all `generator.GeneratorError`): `UnknownProductError`, `UnknownVariantError`,
`ControlVariantError`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CONTROL_SOURCE, dialect_insert, variant_id
from core.ledger.tables import Product, Variant
from core.settings import Settings
from generator import GeneratorError, UnknownProductError
from generator.facts import FactSheet
from generator.guardrails import GuardrailParams, check
from generator.jobs import known_brands

#: The `source` of a copywriter's variant and its `generator_version`.
MANUAL_SOURCE = "manual"
MANUAL_VERSION = "manual"


class UnknownVariantError(GeneratorError, LookupError):
    """No such variant of that product."""


class ControlVariantError(GeneratorError):
    """The control variant (the original copy) cannot be retired."""


@dataclass(frozen=True, slots=True)
class ManualVariant:
    """What became of one submitted text: `status` is `active` or `rejected` (`reasons` say
    why); a text already stored for the product answers with its existing id and status."""

    variant_id: str
    status: str
    reasons: tuple[str, ...] = ()


def add_variants(
    sessions: sessionmaker[Session],
    settings: Settings,
    product_id: str,
    items: Sequence[tuple[str, str]],
) -> list[ManualVariant]:
    """Store `(text, style)` items as manual variants of `product_id`, in one transaction."""
    with sessions.begin() as s:
        product = s.get(Product, product_id)
        if product is None:
            raise UnknownProductError(f"unknown product id: {product_id}")
        facts = FactSheet.of(product)
        rows = s.execute(
            select(Variant.variant_id, Variant.text, Variant.status, Variant.reject_reason).where(
                Variant.product_id == product_id
            )
        ).all()
        known = {r.variant_id: r for r in rows}
        siblings = {r.variant_id: r.text for r in rows if r.status in ("active", "retired")}
        params = GuardrailParams.for_copywriters(settings, known_brands(s))
        now = time.time()
        out = []
        for text, style in items:
            vid = variant_id(product_id, text, style)
            if vid in known:
                row = known[vid]
                reasons = (row.reject_reason,) if row.reject_reason else ()
                out.append(ManualVariant(vid, row.status, reasons))
                continue
            verdict = check(text, facts, siblings, params)
            s.execute(
                dialect_insert(s, Variant)
                .values(
                    variant_id=vid,
                    product_id=product_id,
                    text=text,
                    style=style,
                    source=MANUAL_SOURCE,
                    status="active" if verdict.ok else "rejected",
                    reject_reason=verdict.reason,
                    generator_version=MANUAL_VERSION,
                    created_at=now,
                    retired_at=None,
                )
                .on_conflict_do_nothing(index_elements=["variant_id"])
            )
            if verdict.ok:
                siblings[vid] = text
                out.append(ManualVariant(vid, "active"))
            else:
                out.append(ManualVariant(vid, "rejected", (verdict.reason or "rejected",)))
    return out


def retire_variant(sessions: sessionmaker[Session], product_id: str, variant_id: str) -> bool:
    """Retire one variant (reason `manual`); False when it was retired already."""
    with sessions.begin() as s:
        row = s.scalar(
            select(Variant).where(
                Variant.variant_id == variant_id, Variant.product_id == product_id
            )
        )
        if row is None:
            raise UnknownVariantError(f"product {product_id!r} has no variant {variant_id!r}")
        if row.source == CONTROL_SOURCE:
            raise ControlVariantError(
                f"{variant_id!r} is the control (original copy) of {product_id!r}; "
                "change the product's description instead"
            )
        if row.status == "retired":
            return False
        s.execute(
            update(Variant)
            .where(Variant.variant_id == variant_id)
            .values(status="retired", reject_reason="manual", retired_at=time.time())
        )
        return True


__all__ = [
    "MANUAL_SOURCE",
    "ControlVariantError",
    "ManualVariant",
    "UnknownVariantError",
    "add_variants",
    "retire_variant",
]
