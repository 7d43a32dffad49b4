"""`ope.shadow`: each shadow explorer's off-policy estimate beside the live policy's.

A shadow explorer (`COPYLOOP_SHADOW_EXPLORERS`) shares the live model's regression and differs
in how it turns predicted costs into probabilities. The learner records, just before it learns
each decision, the distribution the shadow would have drawn from (the live holdout and fair
trial included: only the explorer differs) in `shadow_scores`. That is progressive validation:
every score comes from a model that had not yet seen the decision, as the live policy's own
logged pmf did. Each shadow is then a target policy of the counterfactual panel
(`ope.evaluate_target`: IPS, SNIPS and DR with the panel's cross-fitted reward model, 95%
normal intervals, support warnings), on the newest scored decisions of the window; the live
policy is evaluated on the same decisions (its weights are 1: the sample mean), so an operator
can compare them row by row and pick a better explorer from evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from reports.ope import Padded, SupportRules, evaluate_target, to_rows


def shadow_block(
    raw: Sequence[Any],
    explorers: Sequence[str],
    limit: int,
    groups: Mapping[str, str] | None = None,
    rules: SupportRules | None = None,
) -> dict[str, Any]:
    """The `ope.shadow` section from `queries.shadow_logged` rows; `explorers` are the settings'
    (explorers scored earlier but no longer configured are reported too)."""
    rules = rules or SupportRules()
    rows, kept = to_rows(raw)
    pmfs = [orjson.loads(raw[i].pmfs) if raw[i].pmfs else {} for i in kept]
    names = list(dict.fromkeys([*explorers, *(k for p in pmfs for k in p)]))
    head: dict[str, Any] = {
        "configured": list(explorers),
        "scoring": "progressive: each decision scored by the learner just before it learned it",
        "sample": {"n": len(rows), "limit": limit},
    }
    if not names:
        return {**head, "available": False, "note": "no shadow explorers configured"}
    if not rows:
        return {
            **head,
            "available": False,
            "note": "no decision in the window was scored by the shadow explorers yet (the "
            "learner scores a decision when its window closes)",
        }
    data = Padded.of(rows, groups)
    n, k = data.pmf.shape
    out: list[dict[str, Any]] = []
    for name in names:
        pi = np.zeros((n, k))
        defined = np.zeros(n, dtype=bool)
        for i, (row, p) in enumerate(zip(rows, pmfs, strict=True)):
            dist = p.get(name)
            if dist is not None and len(dist) == len(row.actions):
                pi[i, : len(dist)] = dist
                defined[i] = True
        out.append(
            {
                "explorer": name,
                "configured": name in explorers,
                **evaluate_target(data, pi, defined, rules),
            }
        )
    live = evaluate_target(data, data.pmf, np.ones(n, dtype=bool), rules)
    return {
        **head,
        "available": True,
        "live": {"label": "live policy (as logged)", **live},
        "explorers": out,
        "note": f"The {n} most recent decisions in the window scored by the shadow explorers; "
        "each estimate uses the logged propensities (IPS, SNIPS, DR), the live policy's on the "
        "same decisions",
    }
