"""The greedy current model: a model snapshot's favourite variant for each logged context, scored
only on decisions that snapshot had not learned from.

VW scores the sampled decisions' own contexts and action sets (`Policy.scores`, its exploration
pmf); the greedy target picks the argmax. A snapshot includes every reward with `seq ≤
last_seq` (the ledger's learning order), so a sampled decision is *held out* from it when its
reward has a larger seq or it has none yet (its window is still open). Scoring a model on the
decisions it was trained on flatters it (the demo showed greedy at 19.9% CTR against 6.7%
live), so the greedy target is defined only on held-out decisions: the newest snapshot's when
it leaves at least `min_held_out` of the sample held out, else the newest older snapshot that
does (its note says which, and how many). Decisions with a variant the ledger no longer knows
cannot be scored either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger.tables import ModelSnapshot, Variant
from reports.ope import Interned, columns
from reports.queries import product_categories

#: Held-out decisions the greedy target wants (or half the sample, when that is smaller).
MIN_HELD_OUT = 500


@dataclass(frozen=True, slots=True)
class GreedyScore:
    """Per sampled row the index of the model's greedy action (None: not scored), and what was
    scored: `model_version` (None: no snapshot), `newest_version`, `held_out` rows, `note`."""

    choices: list[int | None] | None
    model_version: int | None
    newest_version: int | None
    held_out: int
    note: str

    def describe(self) -> dict[str, Any]:
        return {
            "scoring": "held_out",
            "model_version": self.model_version,
            "newest_version": self.newest_version,
            "held_out": self.held_out,
        }


def held_out(seqs: Sequence[int | None], last_seq: int) -> list[bool]:
    """Which rows a snapshot with `last_seq` had not learned from.

    >>> held_out([None, 3, 7], 5)
    [True, False, True]
    """
    return [s is None or s > last_seq for s in seqs]


def _pick(
    s: Session, seqs: Sequence[int | None], need: int
) -> tuple[ModelSnapshot | None, int | None]:
    """The snapshot to score and the newest version: the newest if it holds out `need` rows,
    else the newest whose `last_seq` leaves `need` held out, else the oldest."""
    newest = s.scalar(select(ModelSnapshot).order_by(ModelSnapshot.version.desc()).limit(1))
    if newest is None:
        return None, None
    if sum(held_out(seqs, newest.last_seq)) >= need:
        return newest, newest.version
    learned = sorted((q for q in seqs if q is not None), reverse=True)
    missing = need - (len(seqs) - len(learned))  # learned rows that must be after last_seq
    bound = learned[missing - 1] if 0 < missing <= len(learned) else None
    older = None
    if bound is not None:
        older = s.scalar(
            select(ModelSnapshot)
            .where(ModelSnapshot.last_seq < bound)
            .order_by(ModelSnapshot.version.desc())
            .limit(1)
        )
    if older is None:
        older = s.scalar(select(ModelSnapshot).order_by(ModelSnapshot.last_seq).limit(1))
    return older, newest.version


def greedy_actions(
    sessions: sessionmaker[Session], raw: Sequence[Any], min_held_out: int = MIN_HELD_OUT
) -> GreedyScore:
    """The greedy choices on sampled ledger rows (`queries.recent_logged`, same order as
    `ope.to_rows` keeps them), held-out rows only (see the module docstring)."""
    from bandit import Arm, Policy, ProductFeatures  # VW is heavy: only when a report needs it

    sampled = list(map(columns(raw, ("seq", "product_id", "actions", "context")), raw))
    seqs = [row[0] for row in sampled]
    need = max(1, min(min_held_out, math.ceil(len(raw) / 2)))
    with sessions() as s:
        snap, newest = _pick(s, seqs, need)
        if snap is None:
            return GreedyScore(
                None, None, None, 0, "no model snapshot yet: the greedy policy cannot be evaluated"
            )
        version, last_seq, vw_args = snap.version, snap.last_seq, snap.vw_args
        model = snap.model if snap.model is not None else Path(snap.path or "").read_bytes()
        scored_rows = held_out(seqs, last_seq)
        variant_ids = sorted(
            {str(a) for row, h in zip(sampled, scored_rows, strict=True) if h for a in row[2] or ()}
        )
        arms: dict[str, Arm] = {}
        for i in range(0, len(variant_ids), 500):
            for v in s.scalars(
                select(Variant).where(Variant.variant_id.in_(variant_ids[i : i + 500]))
            ):
                arms[v.variant_id] = Arm.from_variant(
                    v.variant_id, v.text, v.style, v.source, v.generator_version
                )
        categories = product_categories(s, [row[1] for row in sampled])
    n_held = sum(scored_rows)
    if n_held == 0:
        return GreedyScore(
            None,
            version,
            newest,
            0,
            f"every model snapshot learned from all {len(raw)} sampled decisions: none is held "
            "out to score the greedy policy on",
        )
    from bandit.vw_format import arm_lines

    lines = dict(zip(arms, arm_lines(list(arms.values())), strict=True))  # once per arm
    policy = Policy(vw_args, model=model, version=version)
    out: list[int | None] = []
    # Page views repeat (product, context, action set): VW scores each distinct one once.
    seen: dict[tuple[Any, ...], int] = {}
    interned = Interned()  # 10,000 rows, a few hundred distinct action sets and contexts
    known: dict[tuple[str, ...], bool] = {}  # action set → every variant still in the ledger
    try:
        for (_, product_id, raw_actions, context), h in zip(sampled, scored_rows, strict=True):
            actions = interned.actions(raw_actions)
            ok = known.get(actions)
            if ok is None:
                ok = known[actions] = bool(actions) and all(a in arms for a in actions)
            if not h or not ok:
                out.append(None)
                continue
            context = context or {}
            key = (product_id, actions, interned.context_items(context))
            if key not in seen:
                product = ProductFeatures(product_id, categories.get(product_id, ""))
                scores = policy.scores(
                    context,
                    product,
                    [arms[a] for a in actions],
                    rendered_arms=[lines[a] for a in actions],
                )
                seen[key] = max(range(len(scores)), key=scores.__getitem__)
            out.append(seen[key])
    finally:
        policy.close()
    scored = sum(g is not None for g in out)
    note = (
        f"model version {version}: scored on the {scored} of {len(raw)} sampled decisions it had "
        "not learned from (held out)"
    )
    if version != newest:
        note += (
            f"; the newest version {newest} held out fewer than {need} of them, so the newest "
            "snapshot that does is scored"
        )
    return GreedyScore(out, version, newest, n_held, note)
