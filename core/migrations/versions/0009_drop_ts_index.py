"""decisions: drop ix_decisions_ts, a prefix of ix_decisions_ts_policy_variant

Every query that ranged over `ts` alone can read the wider index; the narrow one only cost each
ingested decision one more b-tree insert (`bench/consume.py`).

Revision ID: 0009_drop_ts_index
Revises: 0008_activations
"""

from alembic import op

revision = "0009_drop_ts_index"
down_revision = "0008_activations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_decisions_ts", table_name="decisions")


def downgrade() -> None:
    op.create_index("ix_decisions_ts", "decisions", ["ts"], unique=False)
