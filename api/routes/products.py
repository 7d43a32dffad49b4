"""Catalog admin: upsert products (admin), read one product with its variants and their stats.

Writes go through `core.catalog.upsert_products` (which keeps one active control variant per
product), then `generator.recheck.retire_unsupported` withdraws copy that the changed products'
new data no longer supports; the serving cache re-reads the upserted products at once instead
of waiting for its next refresh. Database work runs in FastAPI's thread pool (sync `def` route,
`run_in_threadpool`), off the event loop that serves decisions.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError
from sqlalchemy import case, func, select, true
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import require
from api.bodies import batch_items, read_json
from api.deps import CatalogDep, ReadsDep, SessionsDep, SettingsDep
from api.errors import AUTH_RESPONSES, ErrorResponse, InvalidRequest, ProductNotFound
from api.schemas import ProductOut, UpsertOut, VariantOut, VariantStats
from core.catalog import ProductIn, describe_validation_error, upsert_products
from core.ledger.tables import Decision, Event, Product, Variant
from generator.recheck import retire_unsupported

MAX_BATCH = 1000

log = logging.getLogger(__name__)

router = APIRouter(tags=["products"], responses=AUTH_RESPONSES)


def _body_schema() -> dict[str, Any]:
    product = ProductIn.model_json_schema(ref_template="#/components/schemas/{model}")
    batch = {
        "type": "object",
        "title": "ProductBatch",
        "properties": {"products": {"type": "array", "items": product, "maxItems": MAX_BATCH}},
        "required": ["products"],
    }
    return {"anyOf": [product, batch]}


@router.post(
    "/v1/products",
    response_model=UpsertOut,
    dependencies=[Depends(require("admin"))],
    responses={413: {"model": ErrorResponse, "description": f"More than {MAX_BATCH} products."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _body_schema()}},
        }
    },
)
async def upsert(
    request: Request, sessions: SessionsDep, catalog: CatalogDep, settings: SettingsDep
) -> UpsertOut:
    """Create or update one product or `{"products": [...]}`; all or nothing."""
    items = batch_items(await read_json(request), "products", MAX_BATCH)
    products, bad = [], []
    for i, item in enumerate(items):
        try:
            products.append(ProductIn.model_validate(item))
        except ValidationError as exc:
            field, reason = describe_validation_error(exc)
            bad.append({"index": i, "field": field, "reason": reason})
    if bad:
        where = ", ".join(f"{b['index']} ({b['field']})" for b in bad)
        raise InvalidRequest(
            f"{len(bad)} of {len(items)} products are invalid: {where}; none was stored", bad
        )
    result = await run_in_threadpool(upsert_products, sessions, products)
    if result.updated_ids:  # copy that states the old data is withdrawn before it is served
        retired = await run_in_threadpool(
            retire_unsupported, sessions, settings, result.updated_ids
        )
        for r in retired:
            log.info("retired %s of %s: %s", r.variant_id, r.product_id, r.reason)
    await run_in_threadpool(catalog.reload_products, [p.product_id for p in products])
    return UpsertOut(created=result.created, updated=result.updated, unchanged=result.unchanged)


@router.get(
    "/v1/products/{product_id:path}",
    response_model=ProductOut,
    dependencies=[Depends(require("analyst"))],
    responses={404: {"model": ErrorResponse, "description": "Unknown product."}},
)
def read_product(
    product_id: Annotated[str, Path(min_length=1, max_length=128)], sessions: ReadsDep
) -> ProductOut:
    """The product, every variant (active, rejected, retired) and each variant's outcomes."""
    with sessions() as s:
        product = s.get(Product, product_id)
        if product is None:
            raise ProductNotFound(f"no product {product_id!r}", {"product_id": product_id})
        variants = s.scalars(
            select(Variant)
            .where(Variant.product_id == product_id)
            .order_by(Variant.created_at, Variant.variant_id)
        ).all()
        stats = variant_stats(s, product_id)
    return ProductOut(
        product_id=product.product_id,
        title=product.title,
        category=product.category,
        description=product.description,
        attributes=product.attributes,
        created_at=product.created_at,
        updated_at=product.updated_at,
        variants=[
            VariantOut(
                variant_id=v.variant_id,
                text=v.text,
                style=v.style,
                source=v.source,
                status=v.status,
                reject_reason=v.reject_reason,
                generator_version=v.generator_version,
                created_at=v.created_at,
                retired_at=v.retired_at,
                stats=stats.get(v.variant_id, VariantStats()),
            )
            for v in variants
        ],
    )


def variant_stats(session: Session, product_id: str) -> dict[str, VariantStats]:
    """Per variant of `product_id`: activated decisions (impressions), and those with ≥1 click /
    add-to-cart / purchase, plus purchase revenue (all events joined, whatever their timing)."""

    def has(kind: str) -> Any:
        return func.max(case((Event.type == kind, 1), else_=0))

    per_decision = (
        select(
            Event.decision_id,
            has("click").label("clicked"),
            has("add_to_cart").label("carted"),
            has("purchase").label("purchased"),
            func.sum(
                case((Event.type == "purchase", func.coalesce(Event.value, 0.0)), else_=0.0)
            ).label("revenue"),
        )
        .join(Decision, Decision.decision_id == Event.decision_id)
        .where(Decision.product_id == product_id, Decision.activated == true())
        .group_by(Event.decision_id)
        .subquery()
    )
    rows = session.execute(
        select(
            Decision.variant_id,
            func.count(),
            func.coalesce(func.sum(per_decision.c.clicked), 0),
            func.coalesce(func.sum(per_decision.c.carted), 0),
            func.coalesce(func.sum(per_decision.c.purchased), 0),
            func.coalesce(func.sum(per_decision.c.revenue), 0.0),
        )
        .outerjoin(per_decision, per_decision.c.decision_id == Decision.decision_id)
        .where(Decision.product_id == product_id, Decision.activated == true())
        .group_by(Decision.variant_id)
    ).all()
    out = {}
    for variant_id, n, clicks, carts, purchases, revenue in rows:
        out[variant_id] = VariantStats(
            impressions=n,
            clicks=int(clicks),
            add_to_carts=int(carts),
            purchases=int(purchases),
            revenue=float(revenue),
            ctr=clicks / n if n else None,
            cvr=purchases / n if n else None,
        )
    return out
