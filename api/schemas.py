"""Request and response bodies of the HTTP API (pydantic), as the contract and OpenAPI show them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# The context's and ids' rules are the consumer's too: one definition, in the base.
from core.messages import CONTEXT, Context, Id

__all__ = ["CONTEXT", "Context", "Id"]


class DecisionRequest(BaseModel):
    product_id: Id
    context: Context = Field(default_factory=dict)
    defer: bool = Field(
        False,
        description="Start not activated: the decision counts (and is learned from) only if "
        "`POST /v1/decisions/{id}/activate` arrives before its window ends.",
    )


class DecisionOut(BaseModel):
    """One served decision (the contract's decision JSON)."""

    decision_id: str = Field(description="UUIDv7 hex (time-ordered); events name it.")
    product_id: str
    variant_id: str
    text: str
    style: str
    policy: Literal["bandit", "control", "fallback"]
    probability: float = Field(description="Probability of this variant under the policy.")
    model_version: int = Field(description="Model snapshot version; 0 under the fallback.")
    activated: bool = Field(description="False for a deferred decision until it is activated.")
    token: str = Field(
        description="Signature of the decision id: a storefront key posts events about this "
        "decision only with it."
    )


class ActivationOut(BaseModel):
    decision_id: str
    activated: bool = True


class EventsAccepted(BaseModel):
    accepted: int


class UpsertOut(BaseModel):
    created: int
    updated: int
    unchanged: int


class VariantStats(BaseModel):
    """Outcomes of a variant's decisions: `clicks`/`add_to_carts`/`purchases` count decisions
    with at least one such event; `revenue` sums purchase values."""

    impressions: int = 0
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    ctr: float | None = None
    cvr: float | None = None


class VariantOut(BaseModel):
    variant_id: str
    text: str
    style: str
    source: str
    status: str
    reject_reason: str | None
    generator_version: str
    created_at: float
    retired_at: float | None
    stats: VariantStats


class ProductOut(BaseModel):
    product_id: str
    title: str
    category: str
    description: str
    attributes: dict[str, Any]
    created_at: float
    updated_at: float
    variants: list[VariantOut]


class PublisherOut(BaseModel):
    """The decision log and its shipping to Kafka (this API process's counters)."""

    connected: bool = Field(description="A Kafka producer is connected and the broker answers.")
    backlog: int = Field(description="Records read from the log that the ledger lacks yet.")
    unread_bytes: int = Field(description="Log bytes not yet read for shipping.")
    segments: int = Field(description="Log segments held by this process.")
    logged: int
    sent: int
    resent: int
    confirmed: int
    abandoned: int


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="`degraded`: Kafka unreachable (decisions wait in the log)."
    )
    model_version: int
    catalog_products: int
    publisher: PublisherOut
