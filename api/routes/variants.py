"""A copywriter's own variants on a live product (admin): add through the guardrails, retire.

`generator.manual` does the work (the same guardrails generated copy passes; the control cannot
be retired). The serving cache re-reads the product right after, so a new variant is served from
the next page view and a retired one no longer is — no restart, no waiting for the refresh. The
fair trial (`bandit.explore.FairTrial`) gives a new variant its first exposures.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from api.auth import require
from api.bodies import batch_items, read_json
from api.deps import CatalogDep, SessionsDep, SettingsDep
from api.errors import (
    AUTH_RESPONSES,
    ControlNotRetirable,
    ErrorResponse,
    InvalidRequest,
    ProductNotFound,
    VariantNotFound,
    field_errors,
)
from generator import UnknownProductError
from generator.manual import (
    ControlVariantError,
    UnknownVariantError,
    add_variants,
    retire_variant,
)

MAX_BATCH = 100

router = APIRouter(tags=["variants"], responses=AUTH_RESPONSES)

ProductId = Annotated[str, Path(min_length=1, max_length=128)]


class VariantIn(BaseModel):
    """One hand-written variant."""

    text: str = Field(
        min_length=1,
        max_length=10_000,
        pattern=r"^[^\x00]+$",  # PostgreSQL's text columns cannot hold NUL
        description="The copy, as shown.",
    )
    style: str = Field(
        "manual",
        min_length=1,
        max_length=32,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="A style name (letters, digits, `_`, `-`).",
    )


class ManualVariantOut(BaseModel):
    variant_id: str
    status: str = Field(description="`active` (served from the next page views) or `rejected`.")
    reasons: list[str] = Field(description="Why it was rejected (empty when active).")


class ManualVariantsOut(BaseModel):
    variants: list[ManualVariantOut]


class RetiredOut(BaseModel):
    variant_id: str
    status: str = "retired"
    changed: bool = Field(description="False when it was retired already.")


def _body_schema() -> dict[str, Any]:
    one = VariantIn.model_json_schema(ref_template="#/components/schemas/{model}")
    batch = {
        "type": "object",
        "title": "VariantBatch",
        "properties": {"variants": {"type": "array", "items": one, "maxItems": MAX_BATCH}},
        "required": ["variants"],
    }
    return {"anyOf": [one, batch]}


@router.post(
    "/v1/products/{product_id:path}/variants",
    status_code=201,
    response_model=ManualVariantsOut,
    dependencies=[Depends(require("admin"))],
    responses={
        404: {"model": ErrorResponse, "description": "Unknown product."},
        413: {"model": ErrorResponse, "description": f"More than {MAX_BATCH} variants."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _body_schema()}},
        }
    },
)
async def add(
    product_id: ProductId,
    request: Request,
    sessions: SessionsDep,
    settings: SettingsDep,
    catalog: CatalogDep,
) -> ManualVariantsOut:
    """Add `{"text", "style"}` or `{"variants": [...]}` (`source = manual`); each is checked by
    the guardrails and stored `active` or `rejected` with its reasons. All or nothing on bad
    input: one malformed item stores none."""
    items = batch_items(await read_json(request), "variants", MAX_BATCH)
    parsed: list[VariantIn] = []
    bad: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            parsed.append(VariantIn.model_validate(item))
        except ValidationError as exc:
            bad.extend({**d, "index": i} for d in field_errors(exc.errors()))
    if bad:
        raise InvalidRequest(f"{len(bad)} invalid field(s); no variant was stored", bad)
    try:
        results = await run_in_threadpool(
            add_variants, sessions, settings, product_id, [(v.text, v.style) for v in parsed]
        )
    except UnknownProductError:
        raise ProductNotFound(f"no product {product_id!r}", {"product_id": product_id}) from None
    await run_in_threadpool(catalog.reload_products, [product_id])
    return ManualVariantsOut(
        variants=[
            ManualVariantOut(variant_id=r.variant_id, status=r.status, reasons=list(r.reasons))
            for r in results
        ]
    )


@router.delete(
    "/v1/products/{product_id:path}/variants/{variant_id}",
    response_model=RetiredOut,
    dependencies=[Depends(require("admin"))],
    responses={
        404: {"model": ErrorResponse, "description": "Unknown product or variant."},
        409: {"model": ErrorResponse, "description": "The control variant cannot be retired."},
    },
)
async def retire(
    product_id: ProductId,
    variant_id: Annotated[str, Path(min_length=1, max_length=64)],
    sessions: SessionsDep,
    catalog: CatalogDep,
) -> RetiredOut:
    """Retire one variant (reason `manual`): no longer served, its history kept."""
    try:
        changed = await run_in_threadpool(retire_variant, sessions, product_id, variant_id)
    except UnknownVariantError as exc:
        raise VariantNotFound(
            str(exc), {"product_id": product_id, "variant_id": variant_id}
        ) from None
    except ControlVariantError as exc:
        raise ControlNotRetirable(str(exc), {"variant_id": variant_id}) from None
    await run_in_threadpool(catalog.reload_products, [product_id])
    return RetiredOut(variant_id=variant_id, changed=changed)
