"""The ledger's tables (SQLAlchemy 2 declarative models).

Times are stored as float epoch seconds (`ts`, `*_at`): attribution windows are arithmetic on
them, in SQL, and both SQLite and PostgreSQL index doubles well. Every write that can be replayed
is keyed so that replaying it changes nothing: `event_id`, `decision_id`, `variant_id`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Product(Base):
    __tablename__ = "products"

    product_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(128), default="")
    description: Mapped[str] = mapped_column(Text)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Variant(Base):
    """One candidate text of a product. `status` is `active` (servable), `rejected` (failed a
    guardrail; `reject_reason` says which) or `retired` (was served, then withdrawn)."""

    __tablename__ = "variants"

    variant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    product_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("products.product_id", ondelete="CASCADE"), index=True
    )
    text: Mapped[str] = mapped_column(Text)
    style: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))  # control | rules | llm | manual
    status: Mapped[str] = mapped_column(String(16), default="active")
    reject_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    generator_version: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[float] = mapped_column(Float)
    retired_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_variants_product_status", "product_id", "status"),)


class Decision(Base):
    """One served impression, as published by the API and ingested by the consumer.

    `actions` is the full action set (variant ids, in the order VW saw them), `pmf` the
    probability of each under the logging policy (holdout included), `probability` that of the
    chosen one. `closed_at` is set once, when the attribution window is closed and the reward
    row written.

    `deferred` decisions start with `activated` false; the consumer sets it once an activation
    with `ts <= decision ts + reward window` reaches the open decision. Only activated decisions
    are impressions: reported, rewarded and learned from. A deferred decision closed while not
    activated gets no reward row (it is reported as `not_activated`).
    """

    __tablename__ = "decisions"

    decision_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(128))
    variant_id: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(16))  # bandit | control | fallback
    probability: Mapped[float] = mapped_column(Float)
    model_version: Mapped[int] = mapped_column(Integer)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    actions: Mapped[list[Any]] = mapped_column(JSON)
    pmf: Mapped[list[Any]] = mapped_column(JSON)
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    partition: Mapped[int] = mapped_column(Integer, default=0)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deferred: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    activated: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    __table_args__ = (
        # Open decisions only, in the closer's order (`consumer.join.close_expired_windows`).
        Index(
            "ix_decisions_open",
            "ts",
            "decision_id",
            postgresql_where=text("closed_at IS NULL"),
            sqlite_where=text("closed_at IS NULL"),
        ),
        # Per-product reads (the product stats route, exports). No wider index keyed by product:
        # each one costs every ingested decision a random leaf page (migration 0010).
        Index("ix_decisions_product", "product_id", "ts"),
        Index("ix_decisions_ts_policy_variant", "ts", "policy", "variant_id", "activated"),
    )


class Activation(Base):
    """The first activation of a decision (`POST /v1/decisions/{id}/activate`): `ts` is when
    the storefront activated it. Kept whether or not it came in time, or its decision was
    deferred; replays change nothing (first write wins)."""

    __tablename__ = "activations"

    decision_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)


class LedgerSecret(Base):
    """A secret every API process shares through the ledger, created once by the first one
    (`core.tokens`: the key that signs decision tokens, unless settings name one)."""

    __tablename__ = "ledger_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)


class Event(Base):
    """A storefront signal. Kept whatever its timing: `ts` decides whether it counts."""

    __tablename__ = "events"

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16))  # click | add_to_cart | purchase
    ts: Mapped[float] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    received_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_events_decision", "decision_id", "type"),
        Index("ix_events_ts", "ts"),
    )


class Reward(Base):
    """A closed decision's reward. `seq` orders learning: the model is the last snapshot plus a
    replay of the rewards with a larger `seq`, so it is assigned by the single window closer."""

    __tablename__ = "rewards"

    decision_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("decisions.decision_id"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    reward: Mapped[float] = mapped_column(Float)
    clicks: Mapped[int] = mapped_column(Integer, default=0)
    add_to_carts: Mapped[int] = mapped_column(Integer, default=0)
    purchases: Mapped[int] = mapped_column(Integer, default=0)
    revenue: Mapped[float] = mapped_column(Float, default=0.0)
    closed_at: Mapped[float] = mapped_column(Float)


class ModelSnapshot(Base):
    """A saved VW model: `version` increases by one per snapshot; `last_seq` is the last reward
    it has learned. `model` holds the bytes, or `path` names the file holding them. `source`
    says where it came from: `learned` (the learner), `rollback` (a copy of version `origin`),
    `import` (a model file; `origin` is the version it had where it was exported) or `restart`
    (an untrained model that learns only what it and later versions serve)."""

    __tablename__ = "model_snapshots"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    vw_args: Mapped[str] = mapped_column(Text)
    model: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16), default="learned", server_default="learned")
    origin: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ShadowScore(Base):
    """What each shadow explorer (`COPYLOOP_SHADOW_EXPLORERS`) would have served for a decision:
    `pmfs`, JSON text (written with orjson by the learner: the stdlib encoder behind a JSON
    column cost a fifth of its time), maps the explorer's arguments to its distribution over the
    decision's action set, holdout included, computed just before it learned the decision."""

    __tablename__ = "shadow_scores"

    decision_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    pmfs: Mapped[str] = mapped_column(Text)


class ServingMode(Base):
    """The serving mode's history: the newest row is the mode every API process serves in
    (`live`, or `apprentice` with `explore`, the share of decisions that follow the bandit);
    the report reads the history to know which decisions were logged in which mode."""

    __tablename__ = "serving_modes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mode: Mapped[str] = mapped_column(String(16))  # live | apprentice
    explore: Mapped[float] = mapped_column(Float)
    set_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    __tablename__ = "api_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Epoch seconds of the key's latest use, as the API last wrote it (at most once a minute).
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobLease(Base):
    """A named lease: whoever holds an unexpired row runs that job (window closing and learning,
    scheduler jobs). Renewed by its holder, taken over when it expires."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float)


class GeneratorVersion(Base):
    """One version of the generator: a base model plus (optionally) a fine-tuned adapter.

    `status` is `candidate` (trained, not yet gated), `shipped` (passed the gate; the newest
    shipped one generates), `rejected` (refused by the gate) or `rolled_back`. `data` describes
    what it was trained on, `metrics` what the gate measured, `gate_reason` why it shipped or not.
    """

    __tablename__ = "generator_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    backend: Mapped[str] = mapped_column(String(16))  # rules | hf
    base_model: Mapped[str] = mapped_column(Text, default="")
    adapter_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    parent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    gate_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    shipped_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ReportRollup(Base):
    """The uplift report's sufficient statistics of the closed decisions of one hour (`hour` =
    ⌊ts / 3600⌋), product, variant and policy: counts, outcome sums (`clicks`/`purchases` count
    decisions with at least one), Σrevenue², and the importance-weighted sums (w = 1 / logged
    probability) the SNIPS rates read. Maintained by the window closer in its transaction
    (`reports.rollups`); `copyloop db rollups --rebuild` recomputes it from the ledger."""

    __tablename__ = "report_rollups"
    #: Stored in key order on SQLite (no rowid): the report's per-(product, variant, policy)
    #: sums then stream through the table instead of sorting it (5x faster, measured).
    __table_args__ = {"sqlite_with_rowid": False}

    product_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    variant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    policy: Mapped[str] = mapped_column(String(16), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    clicks: Mapped[int] = mapped_column(BigInteger)
    purchases: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[float] = mapped_column(Float)
    revenue_sq: Mapped[float] = mapped_column(Float)
    sw: Mapped[float] = mapped_column(Float)
    sw_click: Mapped[float] = mapped_column(Float)
    sw_purchase: Mapped[float] = mapped_column(Float)
    sw_revenue: Mapped[float] = mapped_column(Float)
    sw2: Mapped[float] = mapped_column(Float)
    #: Deferred decisions closed without an activation in time: no impressions (n excludes them).
    not_activated: Mapped[int] = mapped_column(BigInteger)


class ReportContextRollup(Base):
    """Per hour, product, context key, context value (as the report renders it) and policy: the
    closed decisions' counts and outcome sums, for the report's per-context breakdown."""

    __tablename__ = "report_context_rollups"
    __table_args__ = {"sqlite_with_rowid": False}  # per (key, value, policy) sums stream

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)
    policy: Mapped[str] = mapped_column(String(16), primary_key=True)
    product_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    clicks: Mapped[int] = mapped_column(BigInteger)
    purchases: Mapped[int] = mapped_column(BigInteger)
    revenue: Mapped[float] = mapped_column(Float)
    revenue_sq: Mapped[float] = mapped_column(Float)


class ReportRollupState(Base):
    """One row (`id` 1) saying whether the rollups hold every closed decision: `status` is
    `empty` (no decision closed yet), `valid` (built with this `reward_window_s` and
    `clock_skew_s`) or `stale` (a ledger closed before the rollups existed, or a closer with other
    settings: the report scans until `copyloop db rollups --rebuild`). Writers of the rollups
    lock this row, so a rebuild, a closer and a late event never interleave."""

    __tablename__ = "report_rollup_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    reward_window_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    clock_skew_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
