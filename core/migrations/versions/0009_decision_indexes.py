"""decisions: the open decisions' index holds only them; drop ix_decisions_ts

`ix_decisions_open` was (closed_at, ts) over every decision, so the closer's "oldest open
decisions" scan ran along `ts` and filtered out the closed ones, more of them every batch: on
PostgreSQL a 100,000-decision backlog closed at 9k/s and slowing (`bench/learn.py`). Now it is
(ts, decision_id) WHERE closed_at IS NULL: the scan reads open decisions only, already in the
closer's order, and a closed decision leaves the index.

`ix_decisions_ts` was a prefix of ix_decisions_ts_policy_variant: every query that ranged over
`ts` alone can read the wider index, and the narrow one cost each ingested decision one more
b-tree insert (`bench/consume.py`).

Revision ID: 0009_decision_indexes
Revises: 0008_activations
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_decision_indexes"
down_revision = "0008_activations"
branch_labels = None
depends_on = None

_OPEN = sa.text("closed_at IS NULL")


def upgrade() -> None:
    op.drop_index("ix_decisions_ts", table_name="decisions")
    op.drop_index("ix_decisions_open", table_name="decisions")
    op.create_index(
        "ix_decisions_open",
        "decisions",
        ["ts", "decision_id"],
        postgresql_where=_OPEN,
        sqlite_where=_OPEN,
    )


def downgrade() -> None:
    op.drop_index("ix_decisions_open", table_name="decisions")
    op.create_index("ix_decisions_open", "decisions", ["closed_at", "ts"])
    op.create_index("ix_decisions_ts", "decisions", ["ts"])
