"""report indexes: covering indexes for the uplift report's grouped scans, events by time

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Per (product, variant, policy) counts and weight sums, in a window, from the index alone.
    op.create_index(
        "ix_decisions_report",
        "decisions",
        ["product_id", "variant_id", "policy", "ts", "probability"],
    )
    # Time buckets by policy and variant, from the index alone.
    op.create_index("ix_decisions_ts_policy_variant", "decisions", ["ts", "policy", "variant_id"])
    # A windowed report reads only the events near its window.
    op.create_index("ix_events_ts", "events", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_events_ts", table_name="events")
    op.drop_index("ix_decisions_ts_policy_variant", table_name="decisions")
    op.drop_index("ix_decisions_report", table_name="decisions")
