"""The greedy current model: the newest snapshot's favourite variant for each logged context.

VW scores the sampled decisions' own contexts and action sets (`Policy.scores`, its exploration
pmf); the greedy target picks the argmax. Decisions with a variant the ledger no longer knows
cannot be scored and are left out of the greedy target (the panel says how many were scored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger import snapshots
from core.ledger.tables import Variant
from reports.queries import product_categories


def greedy_actions(
    sessions: sessionmaker[Session], raw: Sequence[Any]
) -> tuple[list[int | None] | None, str]:
    """Per sampled ledger row (`queries.recent_logged`, same order as `ope.to_rows` keeps them),
    the index of the model's greedy action, and a note on what was scored."""
    from bandit import Arm, Policy, ProductFeatures  # VW is heavy: only when a report needs it

    snap = snapshots.load_latest(sessions)
    if snap is None:
        return None, "no model snapshot yet: the greedy policy cannot be evaluated"
    variant_ids = sorted({str(a) for r in raw for a in (r.actions or ())})
    arms: dict[str, Arm] = {}
    with sessions() as s:
        for i in range(0, len(variant_ids), 500):
            for v in s.scalars(
                select(Variant).where(Variant.variant_id.in_(variant_ids[i : i + 500]))
            ):
                arms[v.variant_id] = Arm.from_variant(
                    v.variant_id, v.text, v.style, v.source, v.generator_version
                )
        categories = product_categories(s, [r.product_id for r in raw])
    policy = Policy(snap.vw_args, model=snap.model, version=snap.version)
    out: list[int | None] = []
    # Page views repeat (product, context, action set): VW scores each distinct one once.
    seen: dict[tuple[Any, ...], int] = {}
    try:
        for r in raw:
            actions = tuple(str(a) for a in (r.actions or ()))
            if not actions or any(a not in arms for a in actions):
                out.append(None)
                continue
            context = r.context or {}
            key = (r.product_id, actions, tuple(sorted((k, str(v)) for k, v in context.items())))
            if key not in seen:
                product = ProductFeatures(r.product_id, categories.get(r.product_id, ""))
                scores = policy.scores(context, product, [arms[a] for a in actions])
                seen[key] = max(range(len(scores)), key=scores.__getitem__)
            out.append(seen[key])
    finally:
        policy.close()
    scored = sum(g is not None for g in out)
    return out, f"model version {snap.version}; {scored} of {len(out)} sampled decisions scored"
