"""The ledger: products, variants, decisions, events, rewards, model snapshots and API keys.

Tables are in `tables`, engines and sessions in `sessions`, shared reads and idempotent writes in
`queries`. Schema changes go through Alembic (`copyloop db upgrade`, `core.migrations`).
"""

from core.ledger.sessions import is_sqlite, make_engine, make_sessionmaker, reading
from core.ledger.tables import (
    Activation,
    ApiKey,
    Base,
    Decision,
    Event,
    GeneratorVersion,
    JobLease,
    LedgerSecret,
    ModelSnapshot,
    Product,
    Reward,
    ServingMode,
    ShadowScore,
    Variant,
)

__all__ = [
    "Activation",
    "ApiKey",
    "Base",
    "Decision",
    "Event",
    "GeneratorVersion",
    "JobLease",
    "LedgerSecret",
    "ModelSnapshot",
    "Product",
    "Reward",
    "ServingMode",
    "ShadowScore",
    "Variant",
    "is_sqlite",
    "make_engine",
    "make_sessionmaker",
    "reading",
]
