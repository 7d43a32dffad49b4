"""activations: deferred decisions, the activations table, the ledger's shared secrets

Revision ID: 0008_activations
Revises: 0007_rollups
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_activations"
down_revision = "0007_rollups"
branch_labels = None
depends_on = None

_REPORT = ["product_id", "variant_id", "policy", "ts", "probability"]
_TS_POLICY = ["ts", "policy", "variant_id"]


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(
            sa.Column("deferred", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(
            sa.Column("activated", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    # The report counts activated decisions only: the covering indexes carry the flag so that
    # its grouped scans still read the index alone.
    op.drop_index("ix_decisions_report", table_name="decisions")
    op.create_index("ix_decisions_report", "decisions", [*_REPORT, "activated"])
    op.drop_index("ix_decisions_ts_policy_variant", table_name="decisions")
    op.create_index("ix_decisions_ts_policy_variant", "decisions", [*_TS_POLICY, "activated"])
    op.create_table(
        "activations",
        sa.Column("decision_id", sa.String(length=128), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("decision_id"),
    )
    op.create_table(
        "ledger_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("ledger_secrets")
    op.drop_table("activations")
    op.drop_index("ix_decisions_ts_policy_variant", table_name="decisions")
    op.create_index("ix_decisions_ts_policy_variant", "decisions", _TS_POLICY)
    op.drop_index("ix_decisions_report", table_name="decisions")
    op.create_index("ix_decisions_report", "decisions", _REPORT)
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("activated")
        batch.drop_column("deferred")
