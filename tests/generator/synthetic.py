"""Synthetic ledgers whose truth is known: products from the sample catalog, variants, and closed
decisions logged by a stochastic policy with known propensities and Bernoulli rewards."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from core.catalog import CONTROL_SOURCE, ProductIn, upsert_products, variant_id
from core.ledger import Decision, Reward, Variant


@dataclass
class Ledger:
    """Writes products, variants and closed decisions into a real ledger."""

    sessions: sessionmaker[Session]
    seed: int = 0
    seq: int = 0
    ts: float = field(default_factory=lambda: time.time() - 86400.0)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def product(self, product: ProductIn, variants: Sequence[tuple[str, str]]) -> list[str]:
        """Upsert `product` and add `variants` (style, text); returns [control id, *variant ids]."""
        upsert_products(self.sessions, [product])
        ids: list[str] = []
        with self.sessions.begin() as s:
            control = s.scalars(
                select(Variant.variant_id).where(
                    Variant.product_id == product.product_id,
                    Variant.source == CONTROL_SOURCE,
                    Variant.status == "active",
                )
            ).one()
            for style, text in variants:
                vid = variant_id(product.product_id, text, style)
                s.add(
                    Variant(
                        variant_id=vid,
                        product_id=product.product_id,
                        text=text,
                        style=style,
                        source="rules",
                        status="active",
                        generator_version="rules-1",
                        created_at=time.time(),
                    )
                )
                ids.append(vid)
        return [control, *ids]

    def serve(
        self,
        product_id: str,
        arms: Sequence[str],
        n: int,
        pmf: Sequence[float],
        reward_p: Mapping[str, float],
        context: Mapping[str, str] | None = None,
    ) -> None:
        """Log `n` closed decisions: arm drawn from `pmf`, reward 1 with `reward_p[arm]`."""
        probs = np.asarray(pmf, dtype=np.float64)
        chosen = self.rng.choice(len(arms), size=n, p=probs / probs.sum())
        clicks = self.rng.random(n)
        decisions, rewards = [], []
        for index, u in zip(chosen, clicks, strict=True):
            self.seq += 1
            self.ts += 1.0
            arm = arms[int(index)]
            reward = 1.0 if u < reward_p[arm] else 0.0
            did = uuid.uuid4().hex
            decisions.append(
                {
                    "decision_id": did,
                    "product_id": product_id,
                    "variant_id": arm,
                    "policy": "bandit",
                    "probability": float(probs[index]),
                    "model_version": 1,
                    "context": dict(context or {}),
                    "actions": list(arms),
                    "pmf": [float(p) for p in probs],
                    "ts": self.ts,
                    "received_at": self.ts,
                    "partition": 0,
                    "closed_at": self.ts + 1800.0,
                }
            )
            rewards.append(
                {
                    "decision_id": did,
                    "seq": self.seq,
                    "reward": reward,
                    "clicks": int(reward),
                    "add_to_carts": 0,
                    "purchases": 0,
                    "revenue": 0.0,
                    "closed_at": self.ts + 1800.0,
                }
            )
        with self.sessions.begin() as s:
            s.execute(insert(Decision), decisions)
            s.execute(insert(Reward), rewards)
