"""controls: where each model snapshot came from (learned, rollback, import), the serving mode,
shadow explorers' scores

Revision ID: 0005_controls
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_controls"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_snapshots") as batch:
        batch.add_column(
            sa.Column("source", sa.String(16), nullable=False, server_default="learned")
        )
        batch.add_column(sa.Column("origin", sa.Integer(), nullable=True))
    op.create_table(
        "serving_modes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("explore", sa.Float(), nullable=False),
        sa.Column("set_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "shadow_scores",
        sa.Column("decision_id", sa.String(128), primary_key=True),
        sa.Column("pmfs", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("shadow_scores")
    op.drop_table("serving_modes")
    with op.batch_alter_table("model_snapshots") as batch:
        batch.drop_column("origin")
        batch.drop_column("source")
