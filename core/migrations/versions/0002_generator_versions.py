"""generator versions; decision ids up to 128 characters

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generator_versions",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("backend", sa.String(length=16), nullable=False),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("adapter_path", sa.Text(), nullable=True),
        sa.Column("parent", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("gate_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("shipped_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("version"),
    )
    with op.batch_alter_table("decisions") as batch:
        batch.alter_column(
            "decision_id", type_=sa.String(length=128), existing_type=sa.String(length=64)
        )
    with op.batch_alter_table("rewards") as batch:
        batch.alter_column(
            "decision_id", type_=sa.String(length=128), existing_type=sa.String(length=64)
        )


def downgrade() -> None:
    with op.batch_alter_table("rewards") as batch:
        batch.alter_column(
            "decision_id", type_=sa.String(length=64), existing_type=sa.String(length=128)
        )
    with op.batch_alter_table("decisions") as batch:
        batch.alter_column(
            "decision_id", type_=sa.String(length=64), existing_type=sa.String(length=128)
        )
    op.drop_table("generator_versions")
