"""Export of decision logs in Vowpal Wabbit's DSJson format (`--cb_explore_adf --dsjson`), so
VW's own tools and other off-policy libraries can read copyloop's logs.

One JSON object per line, per closed decision (one with a reward row: the reward the bandit
learned; open decisions have no label yet and are not exported):

    {"_label_cost": -r, "_label_probability": p, "_label_Action": k + 1, "_labelIndex": k,
     "Version": "1", "EventId": decision_id, "Timestamp": ISO-8601 UTC,
     "a": [chosen + 1, then the other actions, 1-based], "p": [their probabilities, same order],
     "c": {"U": context, "P": product, "_multi": [{"A": …, "V": …} per action, logged order]},
     "VWState": {"m": model_version}, "policy": bandit|control|fallback, "ProductId": …}

Features are the names and values `bandit.vw_format` writes in the text format
(`device=mobile` with weight 1 in namespace `U`, `len: -1.2` in `T`, …: `arm_namespaces`), so a
model trained on the export hashes the same features as the live one. VW minimises cost, so
cost = −reward, as in the text format.

Errors: `ExportError` (base) ← `UnknownFormatError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bandit.features import Arm
from bandit.vw_format import arm_namespaces, token
from core.ledger.sessions import reading
from core.ledger.tables import Decision, Product, Reward, Variant

FORMATS = ("dsjson",)
BATCH = 5000


class ExportError(Exception):
    """Base of the export's errors."""


class UnknownFormatError(ExportError):
    """A format other than those in `FORMATS` was asked for."""


def dsjson_line(
    *,
    decision_id: str,
    ts: float,
    context: dict[str, Any],
    category: str,
    arms: list[Arm],
    pmf: list[float],
    chosen: int,
    probability: float,
    reward: float,
    model_version: int,
    policy: str,
    product_id: str,
) -> dict[str, Any]:
    """One decision as a DSJson object (a pure function; see the module docstring).

    >>> arms = [Arm("c", "story", "control", "m", 0, 0), Arm("v", "concise", "rules", "xs", 0, 1)]
    >>> d = dsjson_line(decision_id="d1", ts=0.0, context={"device": "mobile"}, category="lamps",
    ...     arms=arms, pmf=[0.3, 0.7], chosen=1, probability=0.7, reward=1.0, model_version=2,
    ...     policy="bandit", product_id="p1")
    >>> d["_label_Action"], d["_labelIndex"], d["a"], d["p"], d["_label_cost"]
    (2, 1, [2, 1], [0.7, 0.3], -1.0)
    >>> d["c"]["U"], d["Timestamp"]
    ({'device=mobile': 1}, '1970-01-01T00:00:00.000000Z')
    """
    order = [chosen] + [i for i in range(len(arms)) if i != chosen]
    shared = {token(k, v): 1 for k, v in sorted(context.items()) if v is not None}
    return {
        "_label_cost": -float(reward),
        "_label_probability": float(probability),
        "_label_Action": chosen + 1,
        "_labelIndex": chosen,
        "Version": "1",
        "EventId": decision_id,
        "Timestamp": datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "a": [i + 1 for i in order],
        "c": {
            "U": shared,
            "P": {token("category", category): 1},
            "_multi": [arm_namespaces(arm) for arm in arms],
        },
        "p": [float(pmf[i]) for i in order],
        "VWState": {"m": str(model_version)},
        "policy": policy,
        "ProductId": product_id,
    }


def iter_dsjson(
    sessions: sessionmaker[Session],
    since: float | None = None,
    until: float | None = None,
    product_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Closed decisions with `since <= ts < until` (optionally one product), oldest first, as
    DSJson objects. Decisions whose action set names a variant the ledger lacks are skipped."""
    stmt = (
        select(
            Decision.decision_id,
            Decision.ts,
            Decision.context,
            Decision.product_id,
            Decision.variant_id,
            Decision.actions,
            Decision.pmf,
            Decision.probability,
            Decision.model_version,
            Decision.policy,
            Reward.reward,
        )
        .join(Reward, Reward.decision_id == Decision.decision_id)
        .order_by(Decision.ts, Decision.decision_id)
    )
    if since is not None:
        stmt = stmt.where(Decision.ts >= since)
    if until is not None:
        stmt = stmt.where(Decision.ts < until)
    if product_id is not None:
        stmt = stmt.where(Decision.product_id == product_id)
    with reading(sessions) as s:  # one snapshot, however long; the consumer writes on
        arms = {
            v.variant_id: Arm.from_variant(
                v.variant_id, v.text, v.style, v.source, v.generator_version
            )
            for v in s.scalars(select(Variant))
        }
        categories = {p: c for p, c in s.execute(select(Product.product_id, Product.category))}
        for row in s.execute(stmt.execution_options(yield_per=BATCH)):
            actions = [str(a) for a in row.actions or ()]
            if row.variant_id not in actions or any(a not in arms for a in actions):
                continue
            yield dsjson_line(
                decision_id=row.decision_id,
                ts=row.ts,
                context=row.context or {},
                category=categories.get(row.product_id, ""),
                arms=[arms[a] for a in actions],
                pmf=list(row.pmf),
                chosen=actions.index(row.variant_id),
                probability=row.probability,
                reward=row.reward,
                model_version=row.model_version,
                policy=row.policy,
                product_id=row.product_id,
            )


def export(
    sessions: sessionmaker[Session],
    out: TextIO,
    fmt: str = "dsjson",
    since: float | None = None,
    until: float | None = None,
    product_id: str | None = None,
) -> int:
    """Write the export to `out`, one line per decision; return how many lines."""
    if fmt not in FORMATS:
        raise UnknownFormatError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    n = 0
    for obj in iter_dsjson(sessions, since, until, product_id):
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        n += 1
    return n
