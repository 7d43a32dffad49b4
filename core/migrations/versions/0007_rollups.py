"""report rollups: per-hour sufficient statistics of closed decisions, kept by the window closer

Revision ID: 0007_rollups
Revises: 0006_keys
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0007_rollups"
down_revision = "0006_keys"
branch_labels = None
depends_on = None

_SUMS = ("n", "clicks", "purchases")
_FLOATS = ("revenue", "revenue_sq")
_WEIGHTS = ("sw", "sw_click", "sw_purchase", "sw_revenue", "sw2")


def upgrade() -> None:
    # Key order = the report's grouping; on SQLite stored in that order (no rowid), so its
    # sums stream instead of sorting.
    op.create_table(
        "report_rollups",
        sa.Column("product_id", sa.String(length=128), nullable=False),
        sa.Column("variant_id", sa.String(length=64), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in _SUMS),
        *(sa.Column(c, sa.Float(), nullable=False) for c in _FLOATS + _WEIGHTS),
        sa.Column("not_activated", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("product_id", "variant_id", "policy", "hour"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "report_context_rollups",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("product_id", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in _SUMS),
        *(sa.Column(c, sa.Float(), nullable=False) for c in _FLOATS),
        sa.PrimaryKeyConstraint("key", "value", "policy", "product_id", "hour"),
        sqlite_with_rowid=False,
    )
    state = op.create_table(
        "report_rollup_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reward_window_s", sa.Float(), nullable=True),
        sa.Column("clock_skew_s", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # A ledger that already closed decisions needs a rebuild before the report can trust them.
    closed = op.get_bind().execute(sa.text("SELECT 1 FROM rewards LIMIT 1")).first()
    op.bulk_insert(
        state,
        [{"id": 1, "status": "stale" if closed else "empty", "updated_at": time.time()}],
    )


def downgrade() -> None:
    op.drop_table("report_rollup_state")
    op.drop_table("report_context_rollups")
    op.drop_table("report_rollups")
