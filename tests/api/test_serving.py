"""`api.serving.decision_message` writes what `Decision.to_bytes()` writes, byte for byte, for
real choices (a real VW policy, the fallback, deferred decisions) and awkward contexts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from api.catalog_cache import CatalogCache, CatalogEntry
from api.serving import choose, decision_message
from bandit import Choice, Policy
from consumer.records import decode_decision
from core.messages import CONTEXT, Decision
from core.settings import Settings
from tests.api.conftest import SeededProduct

#: Values a context may hold that JSON writers are known to differ on.
AWKWARD: list[Any] = [
    "mobile",
    "naïve café ☕",
    'quote " backslash \\ slash /',
    "\x01\x1f control \t tab \n newline",
    "\u2028 line separator \u2029",
    "",
    0,
    -7,
    2**63 - 1,
    -(2**63),
    2**64 + 5,  # past 64 bits: orjson refuses it, the pydantic path writes it
    0.1 + 0.2,
    -0.0,
    1e-7,
    1e16,
    1e22,
    123456789012345680.0,
    5e-324,
    1.7976931348623157e308,
    True,
    False,
    None,
]


def _reference(
    entry: CatalogEntry,
    product_id: str,
    context: dict[str, Any],
    choice: Choice,
    decision_id: str,
    ts: float,
    activated: bool,
) -> bytes:
    """The message as `Decision` writes it, every field validated."""
    fields = {
        "decision_id": decision_id,
        "product_id": product_id,
        "variant_id": choice.variant_id,
        "style": entry.styles[choice.index],
        "policy": choice.policy,
        "probability": choice.probability,
        "model_version": choice.model_version,
        "context": context,
        "actions": list(entry.variant_ids),
        "pmf": list(choice.pmf),
        "ts": ts,
        "activated": activated,
    }
    return Decision.model_validate(fields).to_bytes()


def test_decision_message_is_decisions_json_byte_for_byte(
    sessions: sessionmaker[Session],
    seed: Callable[..., SeededProduct],
    make_settings: Callable[..., Settings],
) -> None:
    products = [seed(f"p{i}", extra=i % 4) for i in range(4)]
    catalog = CatalogCache(sessions, 3600)
    catalog.reload_products([p.product_id for p in products])
    policy = Policy(make_settings().vw_args, seed=5, version=3)
    rng = np.random.default_rng(11)
    for i in range(400):
        product = products[i % len(products)]
        entry = catalog.get(product.product_id)
        assert entry is not None
        keys = rng.choice(["device", "segment", "hour", "x", "ünï"], size=int(rng.integers(0, 4)))
        context = CONTEXT.validate_python(
            {str(k): AWKWARD[int(rng.integers(len(AWKWARD)))] for k in keys}
        )
        choice = choose(entry, context, policy if i % 5 else None)  # every 5th: the fallback
        ts = 1_765_000_000 + float(rng.random()) * 1e6
        activated = bool(i % 3)
        value = decision_message(entry, product.product_id, context, choice, f"d{i}", ts, activated)
        want = _reference(entry, product.product_id, context, choice, f"d{i}", ts, activated)
        assert value == want, (value, want)
        assert decode_decision(value).decision_id == f"d{i}"  # and the consumer reads it


def test_every_awkward_value_alone_is_written_as_pydantic_writes_it(
    sessions: sessionmaker[Session], seed: Callable[..., SeededProduct]
) -> None:
    product = seed("lamp", extra=2)
    catalog = CatalogCache(sessions, 3600)
    catalog.reload_products([product.product_id])
    entry = catalog.get(product.product_id)
    assert entry is not None
    choice = choose(entry, {}, None)
    for value in AWKWARD:
        context = CONTEXT.validate_python({"k": value})
        got = decision_message(entry, "lamp", context, choice, "d", 1.5, True)
        want = _reference(entry, "lamp", context, choice, "d", 1.5, True)
        assert got == want, (value, got, want)
