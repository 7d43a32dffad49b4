"""The serving decision, as one pure step: a catalog entry and a context in, the policy's choice
and the message to publish out. The decision routes call it per page view, and the learning
simulator (`copyloop.sim`) calls the very same code, so what it measures is what is served.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from api.catalog_cache import CatalogEntry
from bandit import Choice, Policy
from core.messages import Decision

log = logging.getLogger(__name__)


def choose(entry: CatalogEntry, context: dict[str, Any], policy: Policy | None) -> Choice:
    """The policy's choice, or the control variant (`fallback`) without a usable model."""
    if policy is not None:
        try:
            return policy.choose(
                context,
                entry.features,
                entry.arms,
                entry.control_index,
                rendered_arms=entry.arm_lines,
            )
        except Exception:  # a model that cannot score must not take serving down
            log.exception("model %d failed to choose; serving the control variant", policy.version)
    pmf = [0.0] * len(entry.arms)
    pmf[entry.control_index] = 1.0
    return Choice(
        index=entry.control_index,
        variant_id=entry.arms[entry.control_index].variant_id,
        probability=1.0,
        pmf=tuple(pmf),
        policy="fallback",
        model_version=0,
    )


def decision_message(
    entry: CatalogEntry,
    product_id: str,
    context: dict[str, Any],
    choice: Choice,
    decision_id: str,
    ts: float,
    activated: bool = True,
) -> bytes:
    """The decision's message value on `{prefix}.decisions` (`activated` false: deferred):
    `Decision.to_bytes()`, byte for byte (`tests/api/test_serving.py`).

    Every field is already valid (ids from the catalog, the context validated by the route, the
    policy's choice), so orjson writes `Decision`'s fields, in its order, straight from them:
    building the pydantic model and dumping it cost three times as much per page view.
    """
    fields: dict[str, Any] = {
        "decision_id": decision_id,
        "product_id": product_id,
        "variant_id": choice.variant_id,
        "style": entry.styles[choice.index],
        "policy": choice.policy,
        "probability": choice.probability,
        "model_version": choice.model_version,
        "context": context,
        "actions": entry.variant_ids,
        "pmf": choice.pmf,
        "ts": ts,
        "activated": activated,
    }
    try:
        return orjson.dumps(fields)
    except orjson.JSONEncodeError:  # an integer past 64 bits in the context: pydantic's JSON
        fields.update(actions=list(entry.variant_ids), pmf=list(choice.pmf))
        return Decision.model_construct(**fields).to_bytes()
