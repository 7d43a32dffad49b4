"""Feature importance: which features the bandit's model leans on, and what each group is worth.

Two views, both on a bounded sample (`sample`: the newest closed decisions of the window, by
learning order, so the report says exactly what it rests on):

- `features`: the newest model snapshot's weights named by VW's invert-hash output
  (`bandit.importance`) over the sample's page views; importance = |weight| (cost units per unit
  of the feature's value), per feature and interaction, with per-namespace totals.
- `groups`: per feature group (a VW namespace: U context, P product, T text shape, V variant
  identity, A style/source/version), the off-policy value of the policy retrained on the logs
  without it (`--ignore` it): the sample's older two thirds train a fresh model with the live
  arguments, the newest third is held out and scored with that model's exploration pmf and the
  live holdout (what would be deployed), by the counterfactual panel's estimators (IPS, SNIPS,
  DR, `ope.evaluate_target`). `all_features` is the same procedure with nothing left out, so a
  group matters where leaving it out lowers the value beyond the intervals.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.ledger import snapshots
from core.ledger.tables import Decision, Reward, Variant
from core.settings import Settings
from reports.ope import LoggedDecisionRow, Padded, SupportRules, evaluate_target
from reports.queries import LOGGED_COLUMNS, Filters, product_categories
from reports.reward_model import context_tokens

#: Closed decisions the feature report reads at most (the newest in the window).
DEFAULT_FEATURE_SAMPLE = 2000
#: Features listed (the largest weights); namespace totals count every feature.
DEFAULT_TOP = 100
#: Share of the sample (the older part) the retrained models learn from.
TRAIN_SHARE = 2 / 3


def closed_sample(s: Session, f: Filters, limit: int) -> list[Any]:
    """The newest `limit` closed randomized decisions in `f` with their rewards, oldest first."""
    rows = s.execute(
        select(
            *LOGGED_COLUMNS,
            Reward.seq,
            Reward.reward,
            Reward.clicks,
            Reward.purchases,
            Reward.revenue,
        )
        .join(Reward, Reward.decision_id == Decision.decision_id)
        .where(*f.where(), Decision.policy.in_(("bandit", "control")))
        .order_by(Reward.seq.desc())
        .limit(limit)
    ).all()
    return list(rows)[::-1]


def feature_report(
    sessions: sessionmaker[Session],
    settings: Settings,
    f: Filters | None = None,
    sample: int = DEFAULT_FEATURE_SAMPLE,
    top: int = DEFAULT_TOP,
) -> dict[str, Any]:
    """`{"features", "namespaces", "groups", "all_features", "sample", …}` (module docstring)."""
    from bandit import Arm, LoggedDecision, Policy, ProductFeatures  # VW: only when asked
    from bandit.importance import feature_weights
    from bandit.model_file import NAMESPACES
    from bandit.vw_format import arm_lines, to_vw

    f = f or Filters()
    with sessions() as s:
        raw = closed_sample(s, f, sample) if sample > 0 else []
        ids = sorted({str(a) for r in raw for a in r.actions or ()})
        arms: dict[str, Any] = {}
        for i in range(0, len(ids), 500):
            for v in s.scalars(select(Variant).where(Variant.variant_id.in_(ids[i : i + 500]))):
                arms[v.variant_id] = Arm.from_variant(
                    v.variant_id, v.text, v.style, v.source, v.generator_version
                )
        categories = product_categories(s, [r.product_id for r in raw])
    usable = [
        r
        for r in raw
        if r.actions and r.variant_id in r.actions and all(a in arms for a in r.actions)
    ]
    n_train = int(len(usable) * TRAIN_SHARE)
    train, held = usable[:n_train], usable[n_train:]
    out: dict[str, Any] = {
        "sample": {
            "limit": sample,
            "decisions": len(usable),
            "trained_on": len(train),
            "evaluated_on": len(held),
            "note": f"The newest {len(usable)} closed randomized decisions in the window (at "
            f"most {sample}); retrained models learn the older {len(train)} and are scored on "
            f"the newest {len(held)}",
        },
        "namespaces_legend": dict(NAMESPACES),
    }

    # Each arm's line is rendered once for the whole report: six models read the same sample.
    lines = dict(zip(arms, arm_lines(list(arms.values())), strict=True))

    def product(r: Any) -> Any:
        return ProductFeatures(r.product_id, categories.get(r.product_id, ""))

    def rendered(r: Any) -> list[str]:
        return [lines[a] for a in r.actions]

    def example(r: Any) -> list[str]:
        return to_vw(
            r.context or {}, product(r), [arms[a] for a in r.actions], rendered_arms=rendered(r)
        )

    # 1. the newest snapshot's own weights, named over the sample's page views
    snap = snapshots.load_latest(sessions)
    if snap is None:
        out.update(features=[], namespaces=[], model_version=None)
        out["features_note"] = "no model snapshot yet"
    else:
        policy = Policy(snap.vw_args, model=snap.model, version=snap.version)
        try:
            seen: dict[tuple[Any, ...], Any] = {}
            for r in usable:
                key = (r.product_id, tuple(r.actions), tuple(sorted((r.context or {}).items())))
                seen.setdefault(key, r)
            weights = feature_weights(policy, (example(r) for r in seen.values()))
        finally:
            policy.close()
        out["model_version"] = snap.version
        out.update(_weights(weights, top))
        out["features_note"] = (
            f"Model version {snap.version}: |weight| of each feature and interaction seen in "
            f"the {len(seen)} distinct page views of the sample (VW --invert_hash), largest "
            f"{top} listed; namespace totals over all of them"
        )

    # 2. each group left out, retrained on the older part, scored on the newest
    if len(train) < 10 or len(held) < 10:
        out["groups"] = []
        out["all_features"] = None
        out["groups_note"] = (
            f"too few closed decisions to retrain and score ({len(usable)} in the sample)"
        )
        return out
    rows = [_row(r) for r in held]
    data = Padded.of(rows)
    rules = SupportRules()
    ignored = _ignored(settings.vw_args)

    # What the six models read of each decision, built once: per training decision the logged
    # decision, its reward and its arms' lines; per held-out one the arguments of `scores`.
    lessons = [
        (
            LoggedDecision(
                context=r.context or {},
                product=product(r),
                arms=tuple(arms[a] for a in r.actions),
                chosen=list(r.actions).index(r.variant_id),
                probability=float(r.probability),
            ),
            float(r.reward),
            rendered(r),
        )
        for r in train
    ]
    exams = [(r.context or {}, product(r), [arms[a] for a in r.actions], rendered(r)) for r in held]

    def value_without(group: str | None) -> dict[str, Any]:
        args = settings.vw_args if group is None else f"{settings.vw_args} --ignore {group}"
        policy = Policy(args, seed=settings.seed, importance_cap=settings.bandit_importance_cap)
        try:
            for logged, reward, lines_of in lessons:
                policy.learn(logged, reward, rendered_arms=lines_of)
            pi = np.zeros_like(data.pmf)
            for i, (context, product_of, arms_of, lines_of) in enumerate(exams):
                pmf = policy.scores(context, product_of, arms_of, rendered_arms=lines_of)
                mixed = [(1.0 - settings.holdout) * p for p in pmf]
                mixed[0] += settings.holdout
                pi[i, : len(mixed)] = mixed
        finally:
            policy.close()
        return evaluate_target(data, pi, np.ones(len(held), dtype=bool), rules)

    baseline = value_without(None)
    groups: list[dict[str, Any]] = []
    for group, label in NAMESPACES.items():
        if group in ignored:
            groups.append(
                {"group": group, "label": label, "ope_without": None, "note": "ignored already"}
            )
            continue
        without = value_without(group)
        change = {
            metric: _diff(without["estimates"][metric]["snips"]["value"], per["snips"]["value"])
            for metric, per in baseline["estimates"].items()
        }
        groups.append(
            {"group": group, "label": label, "ope_without": without, "snips_change": change}
        )
    out["all_features"] = baseline
    out["groups"] = groups
    out["groups_note"] = (
        "Each group left out (--ignore), a fresh model trained on the sample's older part with "
        "the live arguments, scored on the newest part with its exploration pmf and the live "
        "holdout; snips_change = SNIPS without the group − SNIPS with all features"
    )
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ignored(vw_args: str) -> set[str]:
    """Namespaces the arguments already ignore.

    >>> sorted(_ignored("--cb_adf --ignore A -q UT --ignore V"))
    ['A', 'V']
    """
    tokens = vw_args.split()
    return {
        ch
        for flag, value in zip(tokens, tokens[1:], strict=False)
        if flag == "--ignore"
        for ch in value
    }


def _row(r: Any) -> LoggedDecisionRow:
    actions = tuple(str(a) for a in r.actions)
    return LoggedDecisionRow(
        actions=actions,
        pmf=tuple(float(p) for p in r.pmf),
        chosen=actions.index(r.variant_id),
        probability=float(r.probability),
        outcome=(float(r.clicks > 0), float(r.purchases > 0), float(r.revenue)),
        context=context_tokens(r.context if isinstance(r.context, dict) else None),
    )


def _weights(weights: Sequence[Any], top: int) -> dict[str, Any]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for w in weights:
        totals[w.namespace][0] += abs(w.weight)
        totals[w.namespace][1] += 1
    ranked = sorted(weights, key=lambda w: (-abs(w.weight), w.namespace, w.feature))
    return {
        "features": [
            {
                "namespace": w.namespace,
                "feature": w.feature,
                "importance": abs(w.weight),
                "weight": w.weight,
            }
            for w in ranked[:top]
        ],
        "namespaces": [
            {"namespace": ns, "importance": total, "features": int(n)}
            for ns, (total, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])
        ],
    }
