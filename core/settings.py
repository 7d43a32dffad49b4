"""Settings: read once at an entry point from the environment (and `.env`), then passed down.

Every variable is `COPYLOOP_<FIELD>` in upper case; CONTRACT.md lists the public ones and their
defaults. Nothing here is read at import time: call :func:`load_settings` in `main()`.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EMBEDDED_BOOTSTRAP = "127.0.0.1:9092"
#: The explorer flags copyloop implements itself (`bandit.explore.OWN_FLAGS`, which a test
#: holds equal to this; the base cannot import the bandit).
OWN_EXPLORER_FLAGS = frozenset({"--squarecb", "--gamma_scale", "--gamma_exponent", "--epsilon"})


class Settings(BaseSettings):
    """All of copyloop's configuration, with the contract's defaults."""

    model_config = SettingsConfigDict(
        env_prefix="COPYLOOP_", env_file=".env", extra="ignore", frozen=True
    )

    # storage
    database_url: str = Field(
        "sqlite:///./var/copyloop.db", description="SQLAlchemy URL of the ledger."
    )
    snapshot_dir: str | None = Field(
        None, description="Directory for model snapshot files; unset keeps them in the database."
    )

    # kafka
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers; unset runs the embedded broker."
    )
    embedded_broker_port: int = Field(9092, description="Port of the embedded broker.")
    topic_prefix: str = "copyloop"
    topic_partitions: int = Field(4, ge=1, description="Partitions of each topic (all equal).")
    consumer_group: str = "copyloop-consumer"

    # rewards
    reward_window_s: float = Field(1800.0, gt=0, description="Attribution window, seconds.")
    clock_skew_s: float = Field(
        120.0, ge=0, description="How much earlier than its decision an event's ts may read."
    )
    close_grace_s: float = Field(
        5.0,
        ge=0,
        description="Wall-clock delay after a window's end before it is closed, so that events "
        "still in flight (producer batching, consumer lag) are joined first.",
    )
    reward_click: float = Field(1.0, description="Reward of a decision with at least one click.")
    reward_add_to_cart: float = Field(1.0, description="Added for at least one add-to-cart.")
    reward_purchase: float = Field(3.0, description="Added for at least one purchase.")

    # bandit
    holdout: float = Field(0.1, description="Share of decisions served the control variant.")
    bandit_explorer: str = Field(
        "--squarecb --gamma_scale 0.7 --gamma_exponent 0.75",
        description="The explorer. copyloop's own, over VW's unweighted cost regression "
        "(`--cb_adf --cb_type dm`): `--squarecb [--gamma_scale G] [--gamma_exponent E]` or "
        "`--epsilon E`; any other VW explorer (`--bag 5`, `--cover 3`, `--softmax --lambda 10`…) "
        "runs inside VW's `--cb_explore_adf` (bench/learning.py compares them).",
    )
    bandit_interactions: str = Field(
        "UT PT",
        description="Space-separated namespace pairs crossed by VW (U=context, P=product, "
        "A=style, source, generator version, length class, T=text shape, V=variant id).",
    )
    bandit_extra_args: str = Field(
        "--power_t 0 -l 0.05 --ignore A",
        description="More VW arguments, appended verbatim. The default, chosen with "
        "bench/learning.py: a small, constant learning rate, and the style, source and "
        "generator version (namespace A) left to the variant's own effect rather than shared as "
        "features (a source shared by great and poor new copy misled the model).",
    )
    bandit_new_arm_exposure: int = Field(
        60,
        ge=0,
        description="A variant served fewer times than this among the decisions the model has "
        "learned is new copy on trial (0: no trial).",
    )
    bandit_new_arm_floor: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Least probability a variant on trial gets (all trials together at most "
        "half of a page view's).",
    )
    bandit_new_arm_behind: float = Field(
        0.15,
        gt=0,
        le=1,
        description="A variant that arrived after its siblings is on trial only while it is this "
        "far behind them: served fewer times than this share of their mean (chosen with "
        "bench/learning.py).",
    )
    bandit_own_effect_z: float = Field(
        3.0,
        ge=0,
        description="Standard errors by which a variant's results must differ from what its "
        "features predict before its own effect counts (copyloop's explorers; bandit.policy).",
    )
    bandit_importance_cap: float = Field(
        1.0,
        ge=1,
        description="Largest weight 1/p a served decision gets in the regression behind "
        "copyloop's explorers (1: unweighted; larger: less biased against rarely served copy, "
        "noisier).",
    )
    bandit_warm_start_max: int = Field(
        1_000_000,
        ge=0,
        description="When the bandit's arguments change, a new model is trained on up to this "
        "many of the newest closed decisions before it is served.",
    )
    snapshot_every_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between model snapshots (what was learned reaches serving this "
        "often; bench/learning.py measured what staleness costs).",
    )
    snapshot_every_n: int = Field(
        5000, ge=1, description="Learned decisions that force a snapshot sooner."
    )
    model_reload_s: float = Field(
        0.5, gt=0, description="How often the API looks for a newer model (and the mode)."
    )
    snapshot_keep_last: int = Field(
        100, ge=1, description="Model versions always kept: the newest this many."
    )
    snapshot_keep_days: float = Field(
        1.0,
        ge=0,
        description="Model versions that served in the last this many days are kept too (the "
        "newest one that loads always is); older ones are pruned by the learner.",
    )

    # controls
    mode: Literal["live", "apprentice"] = Field(
        "live",
        description="Initial serving mode (until `copyloop mode` stores one in the ledger): "
        "`apprentice` serves the control copy to all but `apprentice_explore` of page views.",
    )
    apprentice_explore: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Share of apprentice-mode decisions that follow the bandit.",
    )
    shadow_explorers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="`;`-separated explorers scored beside the live one (report `ope.shadow`): "
        "copyloop's own, `--squarecb [--gamma_scale G] [--gamma_exponent E]` or `--epsilon E`, "
        "over the live model's regression.",
    )
    seed: int = Field(0, description="Seed of every random generator that takes one.")

    # generator
    generator_backend: Literal["rules", "hf"] = "rules"
    generator_model: str | None = None
    generator_device: str | None = Field(
        None, description="torch device of the hf backend (default: cuda when there is one)."
    )
    generator_dtype: str | None = Field(
        None, description="torch dtype of the hf backend (default: bfloat16 on CUDA, else float32)."
    )
    generator_batch_size: int | None = Field(
        None, ge=1, description="Prompts per hf model call (default: 64 on CUDA, 8 on a CPU)."
    )
    generator_temperature: float = Field(
        0.8, ge=0, description="Sampling temperature of the hf backend (0: greedy decoding)."
    )
    generator_top_p: float = Field(
        0.95, gt=0, le=1, description="Nucleus sampling mass of the hf backend."
    )
    generator_static_cache: bool | None = Field(
        None,
        description="Decode with a static (preallocated) KV cache, which lets torch.compile keep "
        "one graph (default: on CUDA only).",
    )
    generator_compile: bool = Field(
        False,
        description="torch.compile the hf model's forward pass (CUDA; pays a warm-up per shape).",
    )
    variants_per_product: int = Field(4, ge=1, description="Candidates wanted per product.")
    banned_terms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "best in the world",
            "guaranteed",
            "miracle",
            "cure",
            "risk-free",
            "100% safe",
            "lowest price",
            "free",
        ],
        description="Terms no served copy may contain (case-insensitive, whole words).",
    )
    min_variant_chars: int = Field(20, ge=1)
    max_variant_chars: int = Field(600, ge=1)

    # api
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_workers: int = Field(
        2,
        ge=1,
        description="uvicorn worker processes for `serve`/`up` (bench/serve.py: 2 beat 1).",
    )
    forwarded_allow_ips: str | None = Field(
        None,
        description="Comma-separated addresses (or `*`) of the proxies whose X-Forwarded-For "
        "names the client: behind a load balancer, the storefront rate limit is per visitor only "
        "when the balancer's address is here (else every visitor shares its address and "
        "bucket). Unset: uvicorn's default, the FORWARDED_ALLOW_IPS variable or 127.0.0.1,::1.",
    )
    background_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How much lower than the API's the CPU priority (Unix `nice`) of the "
        "consumer and the scheduler started by `up` is: sharing cores with the API, their bursts "
        "of work (a batch to ingest, a fine-tune) wait for the page views instead of delaying "
        "them; 0 runs them at the API's priority.",
    )
    spool_dir: str = Field(
        "./var/spool",
        description="Directory of the API's append-only decision log: every decision and event "
        "is written here before it is answered, and kept until the ledger holds it (each API "
        "process writes its own segments; a restarted one ships those of dead processes).",
    )
    log_fsync: Literal["never", "batch", "always"] = Field(
        "batch",
        description="When the decision log is fsync'ed. Every answered decision survives the API "
        "process being killed whatever this says; it decides what a power cut may take: "
        "`never` (the OS writes back in its own time), `batch` (every 0.2 s, off the request "
        "path: at most that much), `always` (before each answer: nothing, at one disk sync per "
        "decision).",
    )
    log_resend_after_s: float = Field(
        15.0,
        gt=0,
        description="A logged decision or event that the ledger still lacks this long after it "
        "was sent to Kafka is sent again (then after twice as long, …); duplicates are harmless.",
    )
    catalog_refresh_s: float = Field(
        5.0,
        gt=0,
        description="How often the API looks for catalog changes (new, retired variants, product "
        "updates) and reloads the catalog when it changed; every 12th look it reloads anyway.",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest request body the API reads (413 beyond): a full batch of 1,000 "
        "events takes ~200 kB, of 1,000 products a few MB.",
    )

    # storefront: publishable keys, decision tokens, rate limits
    token_secret: str | None = Field(
        None,
        description="Key that signs each decision's `token` (HMAC-SHA256 of the decision id). "
        "Unset: a random one is created once and kept in the ledger (`ledger_secrets`), shared "
        "by every API process on that ledger. Changing it invalidates the tokens already out.",
    )
    storefront_rate_per_s: float = Field(
        20.0,
        gt=0,
        description="Requests per second a storefront key may make from one client address "
        "(token bucket; over it: 429 with Retry-After).",
    )
    storefront_burst: float = Field(
        60.0, ge=1, description="Requests a storefront key and address may make at once."
    )
    events_rate_per_s: float = Field(
        20_000.0,
        gt=0,
        description="Events per second one `events` key may post over HTTP (token bucket).",
    )
    events_burst: float = Field(
        40_000.0, ge=1000, description="Events one `events` key may post at once (≥ a batch)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Origins whose pages may call the storefront routes (comma-separated; "
        "`*`: any). Keys travel in headers or `?key=`, never cookies.",
    )

    # scheduler
    scheduler_interval_s: float = Field(30.0, gt=0, description="Seconds between scheduler ticks.")

    # lifecycle: winners, retirement, fine-tuning (scheduler jobs)
    winner_min_exposure: int = Field(
        100,
        ge=1,
        description="Closed decisions that must have served a variant, and its control, before "
        "it can be called a winner or retired.",
    )
    retire_keep_active: int = Field(
        2, ge=2, description="Active variants (control included) a product always keeps."
    )
    finetune_every_s: float = Field(
        86400.0, gt=0, description="Seconds between fine-tuning rounds of the hf generator."
    )
    finetune_min_winners: int = Field(
        8, ge=2, description="New winners (not in an earlier round) needed to fine-tune."
    )
    finetune_output_dir: str = Field(
        "./var/generator", description="Where fine-tuned adapters are written (<dir>/<version>)."
    )
    finetune_options: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Training knobs of every round (scheduler and CLI), as space-separated "
        "KEY=VALUE pairs of generator.finetune.FinetuneConfig, e.g. 'sft_steps=200 lora_r=16 "
        "target_modules=q_proj,v_proj'; the CLI's --set wins over them.",
    )

    @field_validator(
        "snapshot_dir",
        "kafka_bootstrap",
        "generator_model",
        "generator_device",
        "generator_dtype",
        "generator_batch_size",
        "generator_static_cache",
        "token_secret",
        "forwarded_allow_ips",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `COPYLOOP_KAFKA_BOOTSTRAP=` (what compose files write for `${VAR:-}`) means unset, not
        # an empty address: otherwise `up` would start no broker and then dial the default one.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("holdout")
    @classmethod
    def _holdout_in_unit(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"holdout must be in [0, 1], got {value}")
        return value

    @field_validator("shadow_explorers", mode="before")
    @classmethod
    def _split_explorers(cls, value: object) -> object:
        # `;`-separated, or JSON (what `runner.settings_env` hands a child process).
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [t.strip() for t in value.split(";") if t.strip()]
        return value

    @field_validator("shadow_explorers")
    @classmethod
    def _own_explorers(cls, value: list[str]) -> list[str]:
        for spec in value:
            flags = {t for t in spec.split() if t.startswith("-")}
            if (
                not flags
                or not flags <= OWN_EXPLORER_FLAGS
                or not flags
                & {
                    "--squarecb",
                    "--epsilon",
                }
            ):
                raise ValueError(
                    f"shadow explorer {spec!r}: expected --squarecb [--gamma_scale G] "
                    "[--gamma_exponent E] or --epsilon E (copyloop's explorers, which share the "
                    "live model's regression)"
                )
        return value

    @field_validator("banned_terms", "finetune_options", "cors_origins", mode="before")
    @classmethod
    def _split_lists(cls, value: object, info: ValidationInfo) -> object:
        # Environment variables are strings: accept JSON, or terms separated by commas (banned
        # terms hold spaces) or KEY=VALUE options separated by spaces (values hold commas).
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            spaced = info.field_name == "finetune_options"
            parts = value.split() if spaced else value.split(",")
            return [t.strip() for t in parts if t.strip()]
        return value

    @model_validator(mode="after")
    def _lengths_ordered(self) -> Settings:
        if self.min_variant_chars >= self.max_variant_chars:
            raise ValueError(
                f"min_variant_chars ({self.min_variant_chars}) must be below "
                f"max_variant_chars ({self.max_variant_chars})"
            )
        return self

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers to use: the configured ones or the embedded broker's."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.embedded_broker_port}"

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def decisions_topic(self) -> str:
        return f"{self.topic_prefix}.decisions"

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.events.dlq"

    @property
    def reward_weights(self) -> dict[str, float]:
        return {
            "click": self.reward_click,
            "add_to_cart": self.reward_add_to_cart,
            "purchase": self.reward_purchase,
        }

    @property
    def vw_args(self) -> str:
        """The bandit's full argument line: `--cb_adf` and copyloop's explorer, or
        `--cb_explore_adf` and VW's (see `bandit_explorer`)."""
        flags = {t for t in self.bandit_explorer.split() if t.startswith("--")}
        reduction = "--cb_adf" if flags and flags <= OWN_EXPLORER_FLAGS else "--cb_explore_adf"
        pairs = " ".join(f"-q {p}" for p in self.bandit_interactions.split() if p)
        return " ".join(
            part
            for part in (reduction, self.bandit_explorer, pairs, self.bandit_extra_args)
            if part
        )


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; keyword overrides win (tests, the demo)."""
    return Settings(**overrides)  # type: ignore[arg-type]
