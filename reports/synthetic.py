"""Synthetic decision logs with known truth, written straight into a ledger: for report tests
and `bench/report.py`. Not used by the running system.

Shoppers have a device and a segment; each variant style has a click rate per device; a click
turns into a purchase with `PURCHASE_GIVEN_CLICK`. The logging policy is the production mixture:
the control copy with probability `holdout`, else a context-dependent softmax over the variants'
true rates (so the bandit arm really is better). With `product_spread` > 0, each product's
click rates are multiplied by exp(spread·N(0, 1)) (drawn from a stream of their own): products
then differ, which a CUPED covariate can use. Some events arrive after their window and must
not count. `fill` returns what it wrote per arm: the outside ledger a report must equal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine, insert

from core.ledger.tables import Decision, Event, Product, Variant

STYLES = ("control", "concise", "bullets", "story")
DEVICES = ("mobile", "desktop")
SEGMENTS = ("new", "returning")
#: Click rate of each style (rows) on each device (columns).
CLICK_RATE = np.array([[0.05, 0.06], [0.09, 0.05], [0.07, 0.08], [0.04, 0.07]])
PURCHASE_GIVEN_CLICK = 0.25
LATE_SHARE = 0.02  # events that arrive after the attribution window


@dataclass
class Truth:
    """Per arm (`bandit`, `control`): impressions, clicks (decisions with a click in span),
    purchases, revenue; and per (product, variant) impressions."""

    arms: dict[str, dict[str, float]] = field(default_factory=dict)
    variants: dict[tuple[str, str], int] = field(default_factory=dict)
    start: float = 0.0
    end: float = 0.0


def fill(
    engine: Engine,
    n_decisions: int,
    *,
    n_products: int = 20,
    holdout: float = 0.1,
    seed: int = 0,
    start: float | None = None,
    span_s: float = 2 * 86400.0,
    window_s: float = 1800.0,
    batch: int = 50_000,
    product_spread: float = 0.0,
) -> Truth:
    """Write products, variants, `n_decisions` decisions and their events; return the truth."""
    rng = np.random.default_rng(seed)
    scale = np.exp(product_spread * np.random.default_rng([seed, 1]).standard_normal(n_products))
    start = time.time() - span_s - 2 * window_s if start is None else start
    now = time.time()
    products = [f"p{i:04d}" for i in range(n_products)]
    variant_ids = [[f"{p}-{s}" for s in STYLES] for p in products]
    with engine.begin() as c:
        c.execute(
            insert(Product),
            [
                dict(
                    product_id=p,
                    title=p,
                    category=f"c{i % 3}",
                    description=f"{p} text",
                    attributes={},
                    created_at=now,
                    updated_at=now,
                )
                for i, p in enumerate(products)
            ],
        )
        c.execute(
            insert(Variant),
            [
                dict(
                    variant_id=vid,
                    product_id=p,
                    text=f"{s} copy of {p}",
                    style=s,
                    source="control" if s == "control" else "rules",
                    status="active",
                    generator_version="" if s == "control" else "rules-1",
                    created_at=now,
                )
                for p, vids in zip(products, variant_ids, strict=True)
                for s, vid in zip(STYLES, vids, strict=True)
            ],
        )
    truth = Truth(
        arms={
            a: {"impressions": 0, "clicks": 0, "purchases": 0, "revenue": 0.0}
            for a in ("bandit", "control")
        },
        start=start,
        end=start + span_s,
    )
    k = len(STYLES)
    for lo in range(0, n_decisions, batch):
        m = min(batch, n_decisions - lo)
        prod = rng.integers(n_products, size=m)
        dev = rng.integers(2, size=m)
        seg = rng.integers(2, size=m)
        ts = np.sort(rng.uniform(start, start + span_s, size=m)) if m else np.zeros(0)
        logits = CLICK_RATE[:, dev].T * 40.0  # (m, k)
        vw = np.exp(logits - logits.max(axis=1, keepdims=True))
        vw /= vw.sum(axis=1, keepdims=True)
        pmf = (1 - holdout) * vw
        pmf[:, 0] += holdout
        is_control = rng.random(m) < holdout
        sampled = (rng.random((m, 1)) > np.cumsum(vw, axis=1)).sum(axis=1).clip(0, k - 1)
        chosen = np.where(is_control, 0, sampled)
        clicked = rng.random(m) < np.minimum(CLICK_RATE[chosen, dev] * scale[prod], 1.0)
        bought = clicked & (rng.random(m) < PURCHASE_GIVEN_CLICK)
        value = np.round(rng.uniform(5, 80, size=m), 2)
        late = rng.random(m) < LATE_SHARE
        decisions, events = [], []
        for i in range(m):
            did = f"d{lo + i:08d}"
            p, a = products[prod[i]], int(chosen[i])
            policy = "control" if is_control[i] else "bandit"
            decisions.append(
                dict(
                    decision_id=did,
                    product_id=p,
                    variant_id=variant_ids[prod[i]][a],
                    policy=policy,
                    probability=float(pmf[i, a]),
                    model_version=1,
                    context={"device": DEVICES[dev[i]], "segment": SEGMENTS[seg[i]]},
                    actions=variant_ids[prod[i]],
                    pmf=[float(x) for x in pmf[i]],
                    ts=float(ts[i]),
                    received_at=float(ts[i]),
                    partition=0,
                    closed_at=None,
                )
            )
            key = (p, variant_ids[prod[i]][a])
            truth.variants[key] = truth.variants.get(key, 0) + 1
            t = truth.arms[policy]
            t["impressions"] += 1
            if not clicked[i]:
                continue
            delay = window_s + 60.0 if late[i] else 30.0
            events.append(
                dict(
                    event_id=f"{did}-c",
                    decision_id=did,
                    type="click",
                    ts=float(ts[i]) + delay,
                    value=None,
                    received_at=now,
                )
            )
            if late[i]:
                continue
            t["clicks"] += 1
            if bought[i]:
                events.append(
                    dict(
                        event_id=f"{did}-p",
                        decision_id=did,
                        type="purchase",
                        ts=float(ts[i]) + 90.0,
                        value=float(value[i]),
                        received_at=now,
                    )
                )
                t["purchases"] += 1
                t["revenue"] += float(value[i])
        with engine.begin() as c:
            c.execute(insert(Decision), decisions)
            if events:
                c.execute(insert(Event), events)
    return truth
