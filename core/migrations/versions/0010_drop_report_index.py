"""decisions: drop ix_decisions_report

The index (product_id, variant_id, policy, ts, probability, activated) covered the report's
grouped full scans. The report now sums per-hour rollups and reads directly only decision-time
ranges (`ix_decisions_ts_policy_variant`) and the open decisions (`ix_decisions_open`); the
per-product reads that remain (the product stats route, exports and counts by product) have
`ix_decisions_product`. Keyed by product first, the index took each ingested decision's row to a
random leaf page: on SQLite, inserting 20,000 decisions into a ledger of 200,000 cost 87–103 µs
of CPU a decision with it and 46–63 without (`bench/consume.py --ledger-decisions`).

Revision ID: 0010_drop_report_index
Revises: 0009_decision_indexes
"""

from alembic import op

revision = "0010_drop_report_index"
down_revision = "0009_decision_indexes"
branch_labels = None
depends_on = None

_REPORT = ["product_id", "variant_id", "policy", "ts", "probability", "activated"]


def upgrade() -> None:
    op.drop_index("ix_decisions_report", table_name="decisions")


def downgrade() -> None:
    op.create_index("ix_decisions_report", "decisions", _REPORT)
